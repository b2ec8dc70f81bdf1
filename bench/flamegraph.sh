#!/usr/bin/env bash
# Where the proxy's CPU goes under load: `perf record` of the proxy (pinned to CPU 1; backend and
# load generator on CPU 0) while wrk (h1) or h2load (h2) drives 13-byte GETs, then a flame graph
# (inferno) and the top frames by self time.
#   bench/flamegraph.sh [BIN] [h1|h2] [SECONDS]   # defaults: target/release/trustgate h1 10
# Frames need frame pointers: build BIN with
#   CARGO_TARGET_DIR=target-prof CARGO_PROFILE_RELEASE_DEBUG=true \
#     RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release
# Output: bench-results/flame-<mode>.svg, .top.txt (frames by self time) and .share.txt (by kind)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/target/release/trustgate}")
mode=${2:-h1}
seconds=${3:-10}
for tool in perf wrk h2load inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || {
    echo "needs $tool (apt-get install linux-perf wrk nghttp2-client; cargo install inferno)" >&2
    exit 1
  }
done
out=$root/bench-results
mkdir -p "$out"
LAB_BACKEND_CPU=0 . "$root/bench/lab.sh"
RUST_LOG=warn taskset -c 1 "$bin" run -c tg.toml >proxy.log 2>&1 &
pid=$!
lab_wait_ready
url=https://localhost:19443/api/small
load() {
  if [ "$mode" = h2 ]; then
    taskset -c 0 h2load -D "$1" -c 10 -m 5 "$url" | grep -E '^(finished|requests):'
  else
    taskset -c 0 wrk -t1 -c10 -d"${1}s" "$url" | grep -E 'Requests/sec'
  fi
}
load 1 >/dev/null
perf record -e cpu-clock -F 2000 -g -p "$pid" -o perf.data -- sleep "$seconds" 2>perf.log &
recorder=$!
load "$seconds"
wait "$recorder"
perf script -i perf.data 2>/dev/null | inferno-collapse-perf --all >stacks.folded
inferno-flamegraph --title "trustgate $mode, 13-byte GETs" <stacks.folded >"$out/flame-$mode.svg"
perf report -i perf.data --no-children --sort dso,sym --percent-limit 0.7 --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' >"$out/flame-$mode.top.txt" || true
python3 "$root/bench/flame_share.py" stacks.folded | tee "$out/flame-$mode.share.txt"
head -25 "$out/flame-$mode.top.txt"
echo "flame graph: $out/flame-$mode.svg"
