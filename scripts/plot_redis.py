#!/usr/bin/env python3
"""Plots scripts/bench_redis.sh's CSV: requests/s of SET and GET per client
count (pipeline 1), one bar per server.

    target/bench-venv/bin/python scripts/plot_redis.py docs/data/redis-bench.csv docs/bench-redis.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["pipeline"] == "1"]
    servers = list(dict.fromkeys(r["server"] for r in rows))
    clients = sorted({int(r["clients"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, test in zip(axes, ["SET", "GET"]):
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            values = []
            for c in clients:
                match = [float(r["requests_per_sec"]) for r in rows
                         if r["server"] == server and r["test"] == test and int(r["clients"]) == c]
                values.append(match[0] if match else 0.0)
            xs = [k + i * width for k in range(len(clients))]
            ax.bar(xs, values, width, label=server)
        ax.set_xticks([k + width * (len(servers) - 1) / 2 for k in range(len(clients))])
        ax.set_xticklabels([f"-c {c}" for c in clients])
        ax.set_title(f"{test} (redis-benchmark, -d 100, -P 1)")
        ax.set_ylabel("requests/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
