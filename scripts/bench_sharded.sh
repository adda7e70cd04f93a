#!/usr/bin/env bash
# Scale-out of raftify-redis on this machine: 3 nodes, fsync on, either one
# Raft group (`single`: --peers, redis-benchmark against the leader) or
# --sharded with N groups per node (rebalanced first; redis-benchmark
# --cluster). One line per client count: SET requests/s and p50; in
# sharded mode then each node's journal appends per fdatasync.
#
#   cargo build --release -p raftify-redis
#   scripts/bench_sharded.sh single 64 256; scripts/bench_sharded.sh 1 64 256
#
# EXTRA="--no-sync" adds flags to every node; PIPE=16 pipelines 16 commands
# per connection (redis-benchmark -P).
# Needs redis-benchmark and redis-cli (Debian: redis-tools). Ports are
# picked at random in 20000-40100; data in a temp dir, removed after.
set -u
B="${RAFTIFY_REDIS_BIN:-target/release/raftify-redis}"
mode=$1; shift
d=$(mktemp -d)
pids=()
base=$((20000 + RANDOM % 20000))
if [ "$mode" = single ]; then
  peers="1=127.0.0.1:$((base+101)),2=127.0.0.1:$((base+102)),3=127.0.0.1:$((base+103))"
  for i in 1 2 3; do $B --id $i --port $((base+i)) --raft-addr 127.0.0.1:$((base+100+i)) --peers $peers --data-dir $d/$i ${EXTRA:-} > $d/$i.log 2>&1 & pids+=($!); done
  sleep 3
  # the leader's port
  for i in 1 2 3; do if redis-cli -p $((base+i)) info raft | grep -q "raft_role:leader"; then port=$((base+i)); fi; done
  cl=""
else
  $B --sharded --id 1 --port $((base+1)) --raft-addr 127.0.0.1:$((base+101)) --data-dir $d/1 --groups-per-node $mode ${EXTRA:-} > $d/1.log 2>&1 & pids+=($!)
  sleep 2
  for i in 2 3; do $B --sharded --join 127.0.0.1:$((base+101)) --port $((base+i)) --raft-addr 127.0.0.1:$((base+100+i)) --data-dir $d/$i ${EXTRA:-} > $d/$i.log 2>&1 & pids+=($!); done
  for t in $(seq 1 100); do n=$(redis-cli -p $((base+1)) info | grep '^nodes:' | tr -d '\r' | cut -d: -f2); [ "$n" = 3 ] && break; sleep 0.2; done
  redis-cli -p $((base+1)) raft rebalance > /dev/null
  for t in $(seq 1 600); do s=$(redis-cli -p $((base+1)) raft rebalance status); g=$(redis-cli -p $((base+1)) info | grep '^groups:' | tr -d '\r' | cut -d: -f2); case "$s" in done*) [ "$g" = "$((3*mode))" ] && break;; esac; sleep 0.2; done
  port=$((base+1)); cl="--cluster"
fi
for c in "$@"; do
  r=$(redis-benchmark $cl -p "$port" -t set -n 100000 -c $c -P ${PIPE:-1} -r 100000 -d 100 -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1)
  echo "$mode c=$c $r"
done
if [ "$mode" != single ]; then
  # The writes each node's shared journal carried per fdatasync.
  for i in 1 2 3; do
    redis-cli -p $((base+i)) info sharding | tr -d '\r' | awk -F: -v n=$i '/^journal_syncs:/{s=$2} /^journal_appends:/{a=$2} END{if (s>0) printf "node %d: %d appends in %d syncs (%.2f per sync)\n", n, a, s, a/s}'
  done
fi
kill ${pids[@]} 2>/dev/null; wait 2>/dev/null
rm -rf $d
