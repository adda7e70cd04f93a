#!/usr/bin/env python3
"""Plots bench_compare.sh results: throughput and p99 latency against the
number of connections, raftify (memstore) next to etcd.

    python3 scripts/plot_bench.py target/bench-compare/results.tsv docs/
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ms(v: str) -> float:
    """wrk latencies look like 1.23ms, 456.00us, 1.02s."""
    v = v.strip()
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * scale
    return float("nan")


def main() -> None:
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    out = sys.argv[2].rstrip("/")
    for op, title in (("put", "writes (PUT)"), ("get", "linearizable reads (GET)")):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for system, style in (("memstore", "o-"), ("etcd", "s--")):
            pts = sorted(
                (int(r["conns"]), float(r["req_per_s"]), ms(r["p99"]))
                for r in rows
                if r["system"] == system and r["op"] == op
            )
            if not pts:
                continue
            label = "raftify memstore" if system == "memstore" else "etcd"
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
        for ax, ylabel in ((ax1, "requests/s"), (ax2, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("connections")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend()
        ax2.set_yscale("log")
        fig.suptitle(f"3 nodes on one 2-core machine, fsync on: {title}")
        fig.tight_layout()
        path = f"{out}/bench-{op}.png"
        fig.savefig(path, dpi=110)
        print(path)


if __name__ == "__main__":
    main()
