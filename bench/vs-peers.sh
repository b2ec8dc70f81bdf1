#!/usr/bin/env bash
# The peer benchmark (../shared/bench/peers.sh: nginx, HAProxy, Apache, Caddy, trustgate, all
# verifying the backend strictly) with our hook, from the project's root:
#   bench/vs-peers.sh                                   # full: ~15 min
#   QUICK=1 bench/vs-peers.sh                           # quick: ~4 min
#   CONTESTANTS="nginx haproxy custom" TESTS="small h2" bench/vs-peers.sh
# Results go to ./bench-results/ (git-ignored): tables .md, .json, raw .tsv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_DIR:-$root/../shared/bench}
[ -f "$peers/peers.sh" ] || { echo "no peers.sh in $peers (set PEERS_DIR)" >&2; exit 1; }
cd "$root"
cargo build --release --quiet --bin trustgate
export TRUSTGATE_BIN="$root/target/release/trustgate"
export PROXY_CMD="exec bash '$root/bench/trustgate-hook.sh'"
export PROXY_NAME=${PROXY_NAME:-trustgate}
export CONTESTANTS=${CONTESTANTS:-"direct nginx haproxy apache caddy custom"}
export RESULTS_DIR=${RESULTS_DIR:-"$root/bench-results"}
export TOOLS_DIR=${TOOLS_DIR:-"$root/target/bench-tools"}
exec bash "$peers/peers.sh"
