#!/usr/bin/env bash
# A "binary" for bench/trustgate-hook.sh that alternates two trustgate builds, one per proxy start:
# peers.sh starts the proxy once per round, so odd rounds run $AB_A and even rounds $AB_B, each
# interleaved with the peers in the same run. bench/ab.py splits the results again.
#   AB_A=/tmp/trustgate-before AB_B=target/release/trustgate TRUSTGATE_BIN=bench/ab-bin.sh \
#     PROXY_CMD="exec bash $PWD/bench/trustgate-hook.sh" PROXY_NAME=trustgate ROUNDS=4 \
#     CONTESTANTS="nginx haproxy custom" ../shared/bench/peers.sh
set -euo pipefail
counter=${AB_COUNTER:-${TMPDIR:-/tmp}/trustgate-ab.count}
n=$(cat "$counter" 2>/dev/null || echo 0)
echo $((n + 1)) >"$counter"
if [ $((n % 2)) = 0 ]; then bin=${AB_A:?}; else bin=${AB_B:?}; fi
exec "$bin" "$@"
