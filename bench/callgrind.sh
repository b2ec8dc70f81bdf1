#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable where wall-clock
# figures on a shared machine are not. Runs the proxy under valgrind with a `trustgate echo`
# backend, sends N and then 4N requests with h2load, and prints (I(4N) - I(N)) / 3N, so startup,
# handshakes and the entropy source cancel out.
#   bench/callgrind.sh [BIN] [h1|h2] [N]      # defaults: target/release/trustgate h2 1000
# CALLGRIND_KEEP=DIR keeps the two profiles there, for callgrind_annotate.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/trustgate}
mode=${2:-h2}
n=${3:-1000}
for tool in valgrind h2load; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind nghttp2-client)" >&2; exit 1; }
done
. "$root/bench/lab.sh"
count() {
  local requests=$1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.$requests" "$bin" run -c tg.toml >proxy.log 2>&1 &
  local pid=$!
  lab_wait_ready
  if [ "$mode" = h2 ]; then
    h2load -n "$requests" -c 10 -m 5 https://localhost:19443/api/small >h2load.log 2>&1
  else
    h2load --h1 -n "$requests" -c 10 https://localhost:19443/api/small >h2load.log 2>&1
  fi
  grep -q "$requests succeeded" h2load.log || { cat h2load.log >&2; exit 1; }
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  [ -z "${CALLGRIND_KEEP:-}" ] || cp "$work/cg.$requests" "$CALLGRIND_KEEP/"
  sed -n 's/^totals: //p' "$work/cg.$requests"
}
small=$(count "$n")
large=$(count $((4 * n)))
echo "$mode: $(( (large - small) / (3 * n) )) instructions per request ($(basename "$bin"), $n and $((4 * n)) requests)"
