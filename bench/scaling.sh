#!/usr/bin/env bash
# Does the proxy scale with [server] workers? Runs it with workers = 1 pinned to CPU 1 (as in
# peers.sh, "1p"), workers = 1 unpinned and workers = 2 (both CPUs), each under the same wrk load (2 threads, 20 connections,
# 13-byte GETs) for ROUNDS interleaved rounds, and prints per round: requests/s, the CPU the
# proxy, the backend and wrk each used (in cores, from /proc/<pid>/stat), and the proxy's CPU µs
# per request. On a 2-core machine the backend and wrk share the proxy's cores, so workers = 2
# cannot double the requests/s here; the CPU per request says whether the work itself scales
# (no lock or cross-thread cost growing with the second worker).
#   bench/scaling.sh [BIN] [SECONDS] [ROUNDS]      # defaults: target/release/trustgate 8 3
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/target/release/trustgate}")
seconds=${2:-8}
rounds=${3:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
. "$root/bench/lab.sh"
backend=$(jobs -p | tail -1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf 'round\tworkers\treq/s\tproxy cores\tbackend cores\twrk cores\tproxy µs/req\n'
for round in $(seq 1 "$rounds"); do
  # "1p": one worker pinned to CPU 1, as in peers.sh; "1" and "2" may run on either CPU.
  for setting in 1p 1 2; do
    workers=${setting%p}
    sed -i "s/^workers = .*/workers = $workers/" tg.toml
    pin=$([ "$setting" = 1p ] && echo "taskset -c 1" || true)
    RUST_LOG=warn $pin "$bin" run -c tg.toml >proxy.log 2>&1 &
    proxy=$!
    lab_wait_ready
    wrk -t2 -c20 -d1s https://localhost:19443/api/small >/dev/null
    p0=$(ticks "$proxy"); b0=$(ticks "$backend")
    wrk -t2 -c20 -d"${seconds}s" https://localhost:19443/api/small >wrk.log &
    sleep 0.5
    w0=$(ticks $!); wpid=$!
    wait_start=$(date +%s.%N)
    sleep $((seconds - 1))
    w1=$(ticks "$wpid"); wait_end=$(date +%s.%N)
    wait "$wpid"
    p1=$(ticks "$proxy"); b1=$(ticks "$backend")
    rps=$(awk '/Requests\/sec/ {print $2}' wrk.log)
    python3 - "$round" "$setting" "$rps" "$p0" "$p1" "$b0" "$b1" "$w0" "$w1" "$hz" "$seconds" "$wait_start" "$wait_end" <<'PY'
import sys
r, w, rps, p0, p1, b0, b1, w0, w1, hz, secs, s0, s1 = sys.argv[1:]
rps, hz, secs = float(rps), int(hz), float(secs)
proxy = (int(p1) - int(p0)) / hz / secs
backend = (int(b1) - int(b0)) / hz / secs
wrk = (int(w1) - int(w0)) / hz / (float(s1) - float(s0))
print(f"{r}\t{w}\t{rps:,.0f}\t{proxy:.2f}\t{backend:.2f}\t{wrk:.2f}\t{proxy * 1e6 / rps:.1f}")
PY
    kill -INT "$proxy"; wait "$proxy" 2>/dev/null || true
  done
done
