#!/usr/bin/env bash
# What exactly-once writes cost through memstore's HTTP API: PUT throughput
# with sessions off and on, in alternating rounds of the same run, on a
# fresh 3-node memstore cluster each time (LMDB, fsync on).
#
#   scripts/bench_sessions.sh [SECONDS] [ROUNDS] [CONNECTIONS]
#   e.g. scripts/bench_sessions.sh 10 3 64
#
# Two pairs, each "off" then "on":
#   follower  writes sent to a follower, forwarded to the leader plainly
#             (--no-forward-session) or in the follower's session (default);
#   leader    writes sent to the leader without, or with, a unique
#             Idempotency-Key header each (a keyed write, remembered 24 h).
# Prints every run and the median on/off ratio per pair; writes the runs
# as TSV to target/bench-sessions/results.tsv. Uses scripts/bench_compare.sh
# (which installs wrk when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-64}
OUT=$ROOT/target/bench-sessions
mkdir -p "$OUT"
echo "building memstore (release) ..." >&2
cargo build --release -q -p memstore
export MEMSTORE_BIN=$ROOT/target/release/memstore NO_ETCD=1 NO_PLOTS=1 OPS=put

RESULTS=$OUT/results.tsv
printf "round\tpair\tsessions\treq_per_s\tp50\tp99\tnon2xx\n" >"$RESULTS"
run() { # round pair sessions target memstore-args keyed
  local line
  line=$(TARGET=$4 MEMSTORE_ARGS=$5 IDEMPOTENCY_KEYS=$6 scripts/bench_compare.sh "$SECS" "$CONNS" 2>/dev/null |
    awk -F'\t' '$1=="memstore" && $2=="put"')
  [ -n "$line" ] || { echo "run $1 $2 $3 produced no result" >&2; exit 1; }
  printf "%s\t%s\t%s\t%s\n" "$1" "$2" "$3" "$(cut -f4- <<<"$line")" | tee -a "$RESULTS"
}
for r in $(seq 1 "$ROUNDS"); do
  run "$r" follower off follower --no-forward-session 0
  run "$r" follower on follower "" 0
  run "$r" leader off leader "" 0
  run "$r" leader on leader "" 1
done

python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(f"\n{'pair':<9} {'round':>5} {'off req/s':>10} {'on req/s':>10} {'on/off':>7}")
for pair in ("follower", "leader"):
    ratios = []
    for r in sorted({x["round"] for x in rows}, key=int):
        get = lambda s: next(float(x["req_per_s"]) for x in rows
                             if x["round"] == r and x["pair"] == pair and x["sessions"] == s)
        off, on = get("off"), get("on")
        ratios.append(on / off if off else 0.0)
        print(f"{pair:<9} {r:>5} {off:>10.0f} {on:>10.0f} {ratios[-1]:>7.2f}")
    print(f"{pair:<9} median on/off ratio {statistics.median(ratios):.2f}")
PY
