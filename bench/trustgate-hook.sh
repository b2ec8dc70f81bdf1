#!/usr/bin/env bash
# peers.sh hook for trustgate (our copy of ../shared/bench/hooks/trustgate-hook.sh), configured only
# from the PROXY_* variables: strict verification as always, access logs off (as the peers run),
# and PROXY_WORKERS runtime threads ([server] workers).
#   bench/vs-peers.sh, or by hand:
#   PROXY_CMD="exec bash $PWD/bench/trustgate-hook.sh" PROXY_NAME=trustgate \
#     TRUSTGATE_BIN=$PWD/target/release/trustgate ../shared/bench/peers.sh
set -euo pipefail
: "${PROXY_LISTEN:?}" "${PROXY_TLS_CERT:?}" "${PROXY_TLS_KEY:?}" "${PROXY_BACKEND_CA:?}" "${PROXY_ROUTES:?}" "${PROXY_WORKDIR:?}"
bin=${TRUSTGATE_BIN:?set TRUSTGATE_BIN to the release binary}
conf=$PROXY_WORKDIR/trustgate.toml
{
  printf '[server]\nlisten = "%s"\ncert = "%s"\nkey = "%s"\nworkers = %s\n\n' \
    "$PROXY_LISTEN" "$PROXY_TLS_CERT" "$PROXY_TLS_KEY" "${PROXY_WORKERS:-1}"
  printf '[upstream_tls]\nca = "%s"\n\n[log]\naccess = false\n' "$PROXY_BACKEND_CA"
  for r in $PROXY_ROUTES; do            # "PREFIX=https://HOST:PORT"; the path is forwarded unchanged
    prefix=${r%%=*} origin=${r#*=}; p=${prefix%/}
    printf '\n[[route]]\nprefix = "%s"\nupstream = "%s%s"\n' "$p" "$origin" "$p"
  done
} >"$conf"
export RUST_LOG=${RUST_LOG:-warn}
exec "$bin" run -c "$conf"
