#!/usr/bin/env bash
# Issue #20's side-by-side: raftify's embedded cache against hiqlite's
# cache, both as 3 nodes in one process over their real network on
# 127.0.0.1, PUTs from the leader by N tasks, in turns in one run:
#   hiqlite default (in-memory cache WAL, synced every 200 ms)
#     against raftify non-durable (log in memory: cache_bench --memory),
#   hiqlite durable (WAL on disk, synced before each append is acknowledged)
#     against raftify durable (LMDB journal, fdatasync per write).
# Also states the disk's 4 KiB overwrite + fdatasync time, before and after.
# Prints CSV: system,mode,tasks,puts_per_sec,mean_us
# Usage: scripts/bench_hiqlite.sh [TASKS...]   (default: 4 16 64)
# Env: ROUNDS (default 2), SECS (raftify's seconds per level, default 3),
# KEYS (hiqlite's PUTs per level, default 20000).
# Builds hiqlite (benchmarks/hiqlite, not part of the workspace; needs a C
# compiler for aws-lc-sys) into target/hiqlite-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
levels=("${@:-4 16 64}")
read -r -a levels <<< "${levels[*]}"
rounds=${ROUNDS:-2}
secs=${SECS:-3}
keys=${KEYS:-20000}

cargo build --release -q -p raftify-cache --example cache_bench
(cd benchmarks/hiqlite && CARGO_TARGET_DIR=../../target/hiqlite-bench cargo build --release -q)
ours=target/release/examples/cache_bench
theirs=target/hiqlite-bench/release/hiqlite-bench

disk() { # 4 KiB overwrite + fdatasync, mean microseconds
    python3 scripts/disk_probe.py . 2 | cut -d" " -f2
}

ours_csv() { # mode, flags...
    local mode=$1; shift
    "$ours" "${levels[@]}" --secs "$secs" --ops put "$@" |
        awk -v m="$mode" '$1 == "put" { printf "raftify,%s,%s,%s,%s\n", m, $2, $3, $4 }'
}
theirs_csv() { # mode
    "$theirs" "$1" "${levels[@]}" --keys "$keys" |
        awk -F, -v m="$1" 'NR > 1 { printf "hiqlite,%s,%s,%s,%s\n", m, $1, $2, $3 }'
}

echo "# disk: 4 KiB overwrite + fdatasync $(disk) us (before)"
echo "system,mode,tasks,puts_per_sec,mean_us"
for _ in $(seq 1 "$rounds"); do
    theirs_csv default
    ours_csv non-durable --memory
    theirs_csv durable
    ours_csv durable
done
echo "# disk: 4 KiB overwrite + fdatasync $(disk) us (after)"
