#!/usr/bin/env bash
# Side-by-side HTTP benchmark: a 3-node memstore cluster (LMDB, fsync on)
# against a 3-member etcd cluster, both on 127.0.0.1, driven by the same
# load generator (wrk) at several concurrency levels.
#
#   scripts/bench_compare.sh [SECONDS] [CONNECTIONS...]
#   e.g. scripts/bench_compare.sh 10 1 16 64 256
#
# MEMSTORE_BIN=path measures that memstore binary (default: builds this tree's);
# MEMSTORE_ARGS adds flags to every memstore node; NO_ETCD=1 skips etcd.
# TARGET=leader (default) sends the load to each cluster's leader,
# TARGET=follower to one of its followers (writes then take one more hop in
# both systems); the script finds the node and says which one it used.
# OPS="put" (default "put get") limits the operations measured;
# IDEMPOTENCY_KEYS=1 gives every memstore PUT a unique Idempotency-Key.
# The disk's raw rate of 4 KiB write + fdatasync is measured first (3 s, in
# the work directory) and printed. FSYNC_STATS=1 also counts, during each
# memstore PUT run, every node's storage commits and explicit syncs (from
# /metrics) and fdatasync/fsync calls (perf tracepoints; needs perf and
# root), and prints the syncs per commit (TSV in fsync.tsv next to the
# results).
#
# Installs etcd-server and wrk from Debian when missing (needs root/apt).
# Prints a table and writes it as TSV to target/bench-compare/results.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-10}
shift || true
CONNS=("$@")
TARGET=${TARGET:-leader}
OPS=${OPS:-put get}
case "$TARGET" in leader|follower) ;; *) echo "TARGET must be leader or follower" >&2; exit 2 ;; esac
[ ${#CONNS[@]} -gt 0 ] || CONNS=(1 16 64 256)
OUT=$ROOT/target/bench-compare
WORK=$(mktemp -d /tmp/raftify-bench.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 ..." >&2
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need etcd etcd-server

# MEMSTORE_BIN: a memstore binary to measure instead of this tree's (to
# compare two builds in one sitting).
if [ -n "${MEMSTORE_BIN:-}" ]; then
  MEMSTORE=$MEMSTORE_BIN
else
  echo "building memstore (release) ..." >&2
  cargo build --release -q -p memstore
  MEMSTORE=$ROOT/target/release/memstore
fi
mkdir -p "$OUT"

wait_http() { # url
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  return 1
}

start_memstore() {
  local peers="1=127.0.0.1:61061,2=127.0.0.1:61062,3=127.0.0.1:61063"
  for i in 1 2 3; do
    # shellcheck disable=SC2086
    "$MEMSTORE" --id $i --peers "$peers" --web-server 127.0.0.1:1800$i \
      --data-dir "$WORK/memstore-$i" ${MEMSTORE_ARGS:-} >"$WORK/memstore-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do wait_http "http://127.0.0.1:1800$i/health"; done
}

start_etcd() {
  local cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
  for i in 1 2 3; do
    etcd --name e$i --data-dir "$WORK/etcd-$i" \
      --listen-client-urls http://127.0.0.1:${i}2379 --advertise-client-urls http://127.0.0.1:${i}2379 \
      --listen-peer-urls http://127.0.0.1:${i}2380 --initial-advertise-peer-urls http://127.0.0.1:${i}2380 \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      --log-level error >"$WORK/etcd-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do wait_http "http://127.0.0.1:${i}2379/health"; done
}

cat >"$WORK/memstore_put.lua" <<'LUA'
local n = 0
local threads = 0
local keyed = os.getenv("IDEMPOTENCY_KEYS") == "1"
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
request = function()
  n = n + 1
  local headers = nil
  if keyed then
    headers = {["Idempotency-Key"] = "bench-" .. tid .. "-" .. n}
  end
  return wrk.format("PUT", "/kv/key" .. (n % 100000), headers, string.rep("x", 100))
end
LUA
cat >"$WORK/memstore_get.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/kv/key" .. ((n % 1000) + 1))
end
LUA
# etcd's JSON gateway wants base64 keys and values: precompute them.
python3 - "$WORK" <<'PY'
import base64, sys
work = sys.argv[1]
val = base64.b64encode(b"x" * 100).decode()
keys = [base64.b64encode(f"key{i}".encode()).decode() for i in range(100000)]
with open(f"{work}/etcd_put.lua", "w") as f:
    f.write("local keys = {" + ",".join(f'"{k}"' for k in keys) + "}\n")
    f.write("local n = 0\nrequest = function()\n  n = n + 1\n")
    f.write(f'  local body = \'{{"key":"\' .. keys[(n % #keys) + 1] .. \'","value":"{val}"}}\'\n')
    f.write('  return wrk.format("POST", "/v3/kv/put", {["Content-Type"]="application/json"}, body)\nend\n')
with open(f"{work}/etcd_get.lua", "w") as f:
    f.write("local keys = {" + ",".join(f'"{k}"' for k in keys[1:1001]) + "}\n")
    f.write("local n = 0\nrequest = function()\n  n = n + 1\n")
    f.write("  local body = '{\"key\":\"' .. keys[(n % #keys) + 1] .. '\"}'\n")
    f.write('  return wrk.format("POST", "/v3/kv/range", {["Content-Type"]="application/json"}, body)\nend\n')
PY

run_wrk() { # system op conns url script
  local threads=$(( $3 < 2 ? 1 : 2 ))
  local out
  out=$(wrk -t$threads -c$3 -d${SECS}s --latency -s "$5" "$4" 2>&1)
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$1" "$2" "$3" "${rps:-0}" "${p50:-?}" "${p99:-?}" "${non2xx:-0}"
}

RESULTS=$OUT/results.tsv
printf "system\top\tconns\treq_per_s\tp50\tp99\tnon2xx\n" >"$RESULTS"

# The disk's raw sync rate, on the file system the nodes write to.
RAW_SYNC=$(python3 scripts/disk_probe.py "$WORK" 3 | cut -d" " -f1)
echo "disk: raw 4 KiB write + fdatasync: $RAW_SYNC/s" >&2
printf "raw_fdatasync_per_s\t%s\n" "$RAW_SYNC" >"$OUT/disk.tsv"

FSYNCS=$OUT/fsync.tsv
printf "conns\tnode\trole\tcommits\texplicit_syncs\tfdatasync_calls\tfsync_calls\tsyncs_per_commit\n" >"$FSYNCS"
metric() { # url name (0 when the binary does not export it)
  local v
  v=$(curl -fsS "$1/metrics" | awk -v n="$2" '{name=$1; sub(/\{.*/, "", name)} name==n {print $2}')
  echo "${v:-0}"
}
# Runs "$@" while perf counts each memstore node's sync calls.
with_fsync_stats() { # conns cmd...
  local conns=$1; shift
  if [ -z "${FSYNC_STATS:-}" ]; then "$@"; return; fi
  local i before_w=() before_s=() perfs=()
  for i in 1 2 3; do
    before_w[$i]=$(metric http://127.0.0.1:1800$i raftify_storage_writes_total)
    before_s[$i]=$(metric http://127.0.0.1:1800$i raftify_storage_syncs_total)
    perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync \
      -p "${PIDS[$((i-1))]}" -o "$WORK/perf-$i.csv" >/dev/null 2>&1 &
    perfs[$i]=$!
  done
  "$@"
  for i in 1 2 3; do kill -INT "${perfs[$i]}" 2>/dev/null || true; wait "${perfs[$i]}" 2>/dev/null || true; done
  for i in 1 2 3; do
    local w s fd fs role
    w=$(( $(metric http://127.0.0.1:1800$i raftify_storage_writes_total) - before_w[$i] ))
    s=$(( $(metric http://127.0.0.1:1800$i raftify_storage_syncs_total) - before_s[$i] ))
    fd=$(awk -F, '/sys_enter_fdatasync/ {print $1}' "$WORK/perf-$i.csv")
    fs=$(awk -F, '/sys_enter_fsync/ {print $1}' "$WORK/perf-$i.csv")
    role=follower; [ "$i" = "$leader" ] && role=leader
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$conns" "$i" "$role" "$w" "$s" "${fd:-?}" "${fs:-?}" \
      "$(python3 -c "import sys; w,f,g=sys.argv[1:]; print(f'{(int(f)+int(g))/int(w):.2f}' if w!='0' and f.isdigit() and g.isdigit() else '?')" "$w" "${fd:-x}" "${fs:-x}")" |
      tee -a "$FSYNCS" >&2
  done
}

echo "starting memstore cluster ..." >&2
start_memstore
curl -fsS -XPUT http://127.0.0.1:18001/kv/warmup -d x >/dev/null
leader=$(curl -fsS http://127.0.0.1:18001/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
node=$leader
[ "$TARGET" = follower ] && node=$(( leader % 3 + 1 ))
MEMSTORE_URL=http://127.0.0.1:1800$node
echo "memstore: node $leader leads; the load goes to node $node ($TARGET)" >&2
for op in $OPS; do
  for c in "${CONNS[@]}"; do
    if [ "$op" = put ]; then
      with_fsync_stats "$c" run_wrk memstore "$op" "$c" "$MEMSTORE_URL" "$WORK/memstore_$op.lua" | tee -a "$RESULTS"
    else
      run_wrk memstore "$op" "$c" "$MEMSTORE_URL" "$WORK/memstore_$op.lua" | tee -a "$RESULTS"
    fi
  done
done
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

if [ -n "${NO_ETCD:-}" ]; then
  echo "NO_ETCD set: memstore only" >&2
  exit 0
fi
echo "starting etcd cluster ..." >&2
start_etcd
curl -fsS -o /dev/null -XPOST http://127.0.0.1:12379/v3/kv/put -d '{"key":"d2FybXVw","value":"eA=="}'
ETCD_URL=
for i in 1 2 3; do
  role=$(curl -fsS -XPOST http://127.0.0.1:${i}2379/v3/maintenance/status -d '{}' |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("leader" if d.get("leader")==d.get("header",{}).get("member_id") else "follower")')
  if [ "$role" = "$TARGET" ] && [ -z "$ETCD_URL" ]; then ETCD_URL=http://127.0.0.1:${i}2379; echo "etcd: the load goes to e$i ($role)" >&2; fi
done
ETCD_URL=${ETCD_URL:-http://127.0.0.1:12379}
for op in $OPS; do
  for c in "${CONNS[@]}"; do
    run_wrk etcd "$op" "$c" "$ETCD_URL" "$WORK/etcd_$op.lua" | tee -a "$RESULTS"
  done
done

echo
python3 - "$RESULTS" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {(r["system"], r["op"], r["conns"]): r for r in rows}
print(f"{'op':<4} {'conns':>5} {'memstore req/s':>15} {'etcd req/s':>11} {'ratio':>6}   {'memstore p99':>12} {'etcd p99':>9}")
for op in ("put", "get"):
    for c in sorted({r["conns"] for r in rows}, key=int):
        m, e = by.get(("memstore", op, c)), by.get(("etcd", op, c))
        if not m or not e:
            continue
        mr, er = float(m["req_per_s"]), float(e["req_per_s"])
        ratio = mr / er if er else float("inf")
        print(f"{op:<4} {c:>5} {mr:>15.0f} {er:>11.0f} {ratio:>5.2f}x   {m['p99']:>12} {e['p99']:>9}")
PY

# Plots (matplotlib in a venv of its own, so the system stays untouched).
if [ -z "${NO_PLOTS:-}" ]; then
  VENV=$ROOT/target/bench-venv
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
  "$VENV/bin/python" scripts/plot_bench.py "$RESULTS" "$OUT"
fi
