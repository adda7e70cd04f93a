#!/usr/bin/env python3
"""Plots PUT throughput against connections from a table of benchmark
rounds (one row per round, system and connection count), the median of the
rounds as a line and every round as a dot.

    target/bench-venv/bin/python scripts/plot_rounds.py docs/data/journal-rounds.tsv docs/bench-journal.png "title"

(The venv is the one scripts/bench_compare.sh makes for its plots.)
Columns used: round, system, conns, put_per_s.
"""
import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    out = sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else ""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system in dict.fromkeys(r["system"] for r in rows):
        points: dict[int, list[float]] = {}
        for r in rows:
            if r["system"] == system:
                points.setdefault(int(r["conns"]), []).append(float(r["put_per_s"]))
        xs = sorted(points)
        line = ax.plot(xs, [statistics.median(points[x]) for x in xs], "o-", label=system)
        for x in xs:
            ax.plot([x] * len(points[x]), points[x], ".", color=line[0].get_color(), alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("connections")
    ax.set_ylabel("PUT/s (median line, rounds as dots)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
