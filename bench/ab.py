#!/usr/bin/env python3
"""Splits a peers.sh raw table (.tsv) whose `custom` contestant alternated two binaries, one per
round (bench/ab.sh: odd rounds A, even rounds B), and prints, per metric, the medians of A, of B
and of each peer, and B/A: before and after measured in the same run, interleaved with the peers.

    bench/ab.py bench-results/peers-<date>.tsv [contestant-name]
"""
import statistics
import sys
from collections import defaultdict

METRICS = [
    "small_cpu_us", "big_cpu_us", "close_cpu_us", "resume_cpu_us", "h2_cpu_us",
    "small_rps", "big_rps", "close_rps", "h2_rps", "lat_p99_ms", "peak_rss_mib",
]


def main():
    path = sys.argv[1]
    ours = sys.argv[2] if len(sys.argv) > 2 else "trustgate"
    values = defaultdict(list)  # (who, metric) -> [values]
    for line in open(path):
        if line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 4:
            continue
        round_, who, metric, value = parts
        try:
            value = float(value)
        except ValueError:
            continue
        if who == ours:
            who = "A" if int(round_) % 2 == 1 else "B"
        values[(who, metric)].append(value)
    peers = sorted({w for (w, _) in values} - {"A", "B"})
    header = ["metric", "A", "B", "B/A"] + peers + ["B/best peer"]
    print("\t".join(header))
    for metric in METRICS:
        med = {w: statistics.median(values[(w, metric)]) for w in ["A", "B"] + peers if values[(w, metric)]}
        if "A" not in med or "B" not in med:
            continue
        lower_is_better = not metric.endswith("_rps")
        peer_values = [med[p] for p in peers if p in med]
        best = (min if lower_is_better else max)(peer_values) if peer_values else None
        row = [metric, f"{med['A']:.1f}", f"{med['B']:.1f}", f"{med['B'] / med['A']:.3f}"]
        row += [f"{med[p]:.1f}" if p in med else "-" for p in peers]
        row.append(f"{med['B'] / best:.3f}" if best else "-")
        print("\t".join(row))


if __name__ == "__main__":
    main()
