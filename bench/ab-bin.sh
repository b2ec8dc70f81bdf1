#!/usr/bin/env bash
# Alternates two trustgate binaries, one per proxy start (peers.sh starts the proxy once a round).
n=$(cat /tmp/ab.count 2>/dev/null || echo 0); echo $((n + 1)) > /tmp/ab.count
if [ $((n % 2)) = 0 ]; then bin=$AB_A; else bin=$AB_B; fi
echo "round $((n + 1)): $bin" >> /tmp/ab.log
exec "$bin" "$@"
