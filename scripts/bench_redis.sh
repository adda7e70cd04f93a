#!/usr/bin/env bash
# redis-benchmark against a 3-node raftify-redis cluster (fsync on, writes
# to the leader; reads linearizable, and READONLY-style with --openreads
# on a follower, in a second run of GET after restarting the nodes with
# that flag) and, in the same run, redis-server with
# appendfsync always (its durability twin) and redis-server without
# persistence. Prints one CSV line per (server, test, clients, pipeline):
#   server,test,clients,pipeline,requests_per_sec,p50_ms,p99_ms
# Usage: scripts/bench_redis.sh [CLIENTS...]   (default: 1 16 64)
# Env: PIPELINES (default "1 16"), REQUESTS (default 50000), TESTS
# (default "set,get"). Needs redis-server, redis-benchmark and a release
# build (cargo build --release -p raftify-redis).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/raftify-redis
[ -x "$bin" ] || { echo "build it first: cargo build --release -p raftify-redis" >&2; exit 1; }
clients=("${@:-1 16 64}")
read -r -a clients <<< "${clients[*]}"
pipelines=${PIPELINES:-"1 16"}
requests=${REQUESTS:-50000}
tests=${TESTS:-"set,get"}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# raftify-redis, 3 nodes.
declare -A rport
peers=""
for i in 1 2 3; do
    rport[$i]=$(port)
    raft[$i]="127.0.0.1:$(port)"
    peers+="${peers:+,}$i=${raft[$i]}"
done
declare -A npid
start_nodes() { # extra flags
    for i in 1 2 3; do
        "$bin" --id "$i" --port "${rport[$i]}" --raft-addr "${raft[$i]}" --peers "$peers" \
            --data-dir "$dir/n$i" "$@" >> "$dir/n$i.log" 2>&1 &
        npid[$i]=$!
        pids+=($!)
    done
}
start_nodes
# Redis, durable and not.
aof=$(port); mem=$(port)
mkdir -p "$dir/aof"
redis-server --port "$aof" --bind 127.0.0.1 --dir "$dir/aof" --save "" --appendonly yes --appendfsync always > /dev/null &
pids+=($!)
redis-server --port "$mem" --bind 127.0.0.1 --save "" --appendonly no > /dev/null &
pids+=($!)

wait_leader() {
    leader=""
    for _ in $(seq 1 200); do
        l=$(redis-cli -p "${rport[1]}" INFO raft 2>/dev/null | tr -d '\r' | sed -n 's/^raft_leader_id://p')
        if [ -n "$l" ] && [ "$l" != 0 ]; then leader=$l; break; fi
        sleep 0.1
    done
    [ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
}
wait_leader
for p in "$aof" "$mem"; do
    for _ in $(seq 1 100); do redis-cli -p "$p" PING > /dev/null 2>&1 && break; sleep 0.1; done
done

run() { # name port clients pipeline
    redis-benchmark -p "$2" -t "$tests" -c "$3" -P "$4" -d 100 -r 100000 -n "$requests" --csv 2>/dev/null |
        tail -n +2 | tr -d '"' | while IFS=, read -r test rps _avg _min p50 _p95 p99 _max; do
            echo "$1,$test,$3,$4,$rps,$p50,$p99"
        done
}

echo "server,test,clients,pipeline,requests_per_sec,p50_ms,p99_ms"
for c in "${clients[@]}"; do
    for p in $pipelines; do
        run raftify-redis "${rport[$leader]}" "$c" "$p"
        run redis-aof-always "$aof" "$c" "$p"
        run redis-no-persistence "$mem" "$c" "$p"
    done
done

# Stale reads: the same nodes restarted with --openreads, GET on a follower
# (the keys the runs above wrote are there).
if [[ ",$tests," == *",get,"* ]]; then
    for i in 1 2 3; do kill "${npid[$i]}"; wait "${npid[$i]}" 2>/dev/null || true; done
    start_nodes --openreads
    wait_leader
    follower=$(( leader % 3 + 1 ))
    for _ in $(seq 1 100); do
        [ "$(redis-cli -p "${rport[$follower]}" INFO raft 2>/dev/null | tr -d '\r' | sed -n 's/^raft_leader_id://p')" = "$leader" ] && break
        sleep 0.1
    done
    for c in "${clients[@]}"; do
        for p in $pipelines; do
            tests=get run raftify-redis-openreads "${rport[$follower]}" "$c" "$p"
        done
    done
fi
