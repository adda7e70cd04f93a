#!/usr/bin/env bash
# Runs the README's memstore cluster on this machine, in the background.
#
#   scripts/local-cluster.sh start              nodes 1-3 (--peers), plus any joined node
#                                               with data; waits until a leader is known
#   scripts/local-cluster.sh status             pid, alive, role, leader of every node
#   scripts/local-cluster.sh stop [N]           SIGTERM (all nodes, or node N), then SIGKILL
#   scripts/local-cluster.sh kill N             SIGKILL node N (the failover demo); waits
#                                               until the others agree on a leader
#   scripts/local-cluster.sh restart N [FLAGS]  node N again over its data dir (--id N);
#                                               FLAGS go to memstore (--restore-wal-from DIR)
#   scripts/local-cluster.sh join N [FLAGS]     a new node N joins through a running member
#                                               (FLAGS: --join-as-learner)
#
# Node N: raft (gRPC) on 127.0.0.1:RAFT_PORT_BASE+N, HTTP on
# 127.0.0.1:HTTP_PORT_BASE+N, data in DIR/node-N, log DIR/node-N.log, pid
# DIR/node-N.pid. Signals go only to the pid in a node's pid file, and only
# when that process is memstore over that node's data dir.
#
# Env: LOCAL_CLUSTER_DIR (default ./local-cluster), MEMSTORE_BIN (default
# target/release/memstore, under CARGO_TARGET_DIR if set), RAFT_PORT_BASE
# (60060), HTTP_PORT_BASE (8000), LOCAL_CLUSTER_TIMEOUT (seconds to wait
# for a node to come up or stop, 30). Needs curl.
set -euo pipefail

repo="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LOCAL_CLUSTER_DIR:-local-cluster}"
dir="${dir%/}"
raft_base="${RAFT_PORT_BASE:-60060}"
http_base="${HTTP_PORT_BASE:-8000}"
timeout="${LOCAL_CLUSTER_TIMEOUT:-30}"
initial=(1 2 3)

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

memstore_bin() {
    local bin="${MEMSTORE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/memstore}"
    [ -x "$bin" ] || die "no memstore binary at $bin: build it with
  cargo build --release -p memstore
from the repository root, or point MEMSTORE_BIN at one"
    echo "$bin"
}

command -v curl >/dev/null || die "curl is needed (to ask the nodes' HTTP API)"

raft_addr() { echo "127.0.0.1:$((raft_base + $1))"; }
http_addr() { echo "127.0.0.1:$((http_base + $1))"; }
node_dir() { echo "$dir/node-$1"; }
pid_file() { echo "$dir/node-$1.pid"; }
log_file() { echo "$dir/node-$1.log"; }

peers() {
    local n out=()
    for n in "${initial[@]}"; do out+=("$n=$(raft_addr "$n")"); done
    (IFS=,; echo "${out[*]}")
}

check_id() {
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || die "node id must be a positive number, not '$1'"
}

# The pid in node N's pid file if that process is alive and is memstore over
# node N's data dir (a pid file left by a node that died may name another
# process by now).
live_pid() {
    local f pid args
    f="$(pid_file "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
    [[ "$args" == *memstore* && "$args" == *"--data-dir $(node_dir "$1")"* ]] || return 1
    echo "$pid"
}

# Node ids that have a pid file, a data dir, or are initial members.
known_nodes() {
    local f n
    {
        printf '%s\n' "${initial[@]}"
        for f in "$dir"/node-*; do
            [ -e "$f" ] || continue
            n="${f##*/node-}"
            n="${n%.*}"
            [[ "$n" =~ ^[0-9]+$ ]] && echo "$n"
        done
    } | sort -n -u
}

# The first value of a field in a JSON object: json_field '{"role":"leader",...}' role
json_field() {
    tr ',{' '\n\n' <<<"$1" | sed -n "/^\"$2\":/{s/^\"$2\":\"\{0,1\}\([^\"}]*\).*/\1/p;q;}"
}

http_get() {
    curl -s --max-time 2 "http://$(http_addr "$1")$2" 2>/dev/null
}

healthy() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$(http_addr "$1")/health" 2>/dev/null |
        grep -q '^200$'
}

# Starts memstore for node N with the given flags, in the background.
spawn() {
    local n="$1" bin pid
    shift
    bin="$(memstore_bin)"
    if pid="$(live_pid "$n")"; then
        die "node $n already runs (pid $pid)"
    fi
    mkdir -p "$dir"
    echo "node $n: memstore $*"
    nohup "$bin" "$@" </dev/null >>"$(log_file "$n")" 2>&1 &
    echo $! >"$(pid_file "$n")"
}

# Waits (bounded) until node N answers GET /health: it runs and knows a leader.
wait_up() {
    local n="$1" deadline=$((SECONDS + timeout))
    until healthy "$n"; do
        if ! live_pid "$n" >/dev/null; then
            rm -f "$(pid_file "$n")"
            echo "local-cluster: node $n exited; the end of $(log_file "$n"):" >&2
            tail -n 15 "$(log_file "$n")" >&2
            exit 1
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            die "node $n did not report a leader within ${timeout}s; see $(log_file "$n")"
        sleep 0.1
    done
}

leader_seen_by() {
    json_field "$(http_get "$1" /status)" leader_id
}

# Node N with its data dir, as a member restarts: --id N, no --peers/--join.
restart() {
    local n="$1"
    shift
    local d
    d="$(node_dir "$n")"
    if [ ! -s "$d/data.mdb" ] && [[ " $* " != *" --restore-"* ]]; then
        die "$d holds no data: a member must not restart with a wiped directory (it would
forget what it acknowledged). Rebuild it from another node's log:
  $0 restart $n --restore-wal-from $(node_dir "$(other_than "$n")")"
    fi
    spawn "$n" --id "$n" --raft-addr "$(raft_addr "$n")" --web-server "$(http_addr "$n")" \
        --data-dir "$d" "$@"
    wait_up "$n"
}

# A running node other than N.
other_than() {
    local m
    for m in $(known_nodes); do
        if [ "$m" != "$1" ] && live_pid "$m" >/dev/null; then
            echo "$m"
            return 0
        fi
    done
    return 1
}

cmd_start() {
    local n started=()
    memstore_bin >/dev/null
    for n in $(known_nodes); do
        if live_pid "$n" >/dev/null; then
            continue
        elif [[ " ${initial[*]} " == *" $n "* ]]; then
            # An initial member: the same command every time; --peers only
            # matters on the first start (the data dir has the membership).
            spawn "$n" --id "$n" --peers "$(peers)" --web-server "$(http_addr "$n")" \
                --data-dir "$(node_dir "$n")"
        elif [ -s "$(node_dir "$n")/data.mdb" ]; then
            spawn "$n" --id "$n" --raft-addr "$(raft_addr "$n")" --web-server "$(http_addr "$n")" \
                --data-dir "$(node_dir "$n")"
        else
            continue
        fi
        started+=("$n")
    done
    for n in ${started[@]+"${started[@]}"}; do wait_up "$n"; done
    echo "leader: node $(leader_seen_by "${initial[0]}")"
}

cmd_status() {
    local n pid st
    for n in $(known_nodes); do
        if pid="$(live_pid "$n")"; then
            st="$(http_get "$n" /status || true)"
            if [ -z "$st" ]; then
                echo "node $n: pid $pid, alive, not answering on http $(http_addr "$n")"
                continue
            fi
            echo "node $n: pid $pid, alive, role $(json_field "$st" role), leader $(json_field "$st" leader_id), http $(http_addr "$n"), raft $(raft_addr "$n")"
        elif [ -e "$(node_dir "$n")" ] || [ -f "$(pid_file "$n")" ]; then
            echo "node $n: not running"
        fi
    done
}

# SIGTERM the given nodes together, wait (bounded) until they exit, then
# SIGKILL those still running.
stop_nodes() {
    local n pid deadline pids=() names=()
    for n in "$@"; do
        if pid="$(live_pid "$n")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$n")
        else
            rm -f "$(pid_file "$n")"
        fi
    done
    deadline=$((SECONDS + timeout))
    for i in ${pids[@]+"${!pids[@]}"}; do
        pid="${pids[$i]}"
        n="${names[$i]}"
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "local-cluster: node $n (pid $pid) ignored SIGTERM for ${timeout}s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$(pid_file "$n")"
        echo "node $n stopped"
    done
}

cmd_stop() {
    if [ $# -gt 0 ]; then
        check_id "$1"
        stop_nodes "$1"
    else
        # shellcheck disable=SC2046 # one id per word
        stop_nodes $(known_nodes)
    fi
}

# The leader every running node other than N reports, once they agree on
# one that is not N (bounded wait); fails when none is elected in time.
new_leader_without() {
    local n="$1" m l seen deadline=$((SECONDS + timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        seen=""
        for m in $(known_nodes); do
            [ "$m" != "$n" ] && live_pid "$m" >/dev/null || continue
            l="$(leader_seen_by "$m")"
            if [ -z "$l" ] || [ "$l" = 0 ] || [ "$l" = "$n" ] || { [ -n "$seen" ] && [ "$l" != "$seen" ]; }; then
                seen=none
                break
            fi
            seen="$l"
        done
        if [ -n "$seen" ] && [ "$seen" != none ]; then
            echo "$seen"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

cmd_kill() {
    local n="$1" pid deadline leader
    check_id "$n"
    pid="$(live_pid "$n")" || die "node $n is not running"
    kill -KILL "$pid"
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    rm -f "$(pid_file "$n")"
    if leader="$(new_leader_without "$n")"; then
        echo "node $n killed; node $leader leads"
    else
        echo "node $n killed; no node was elected leader within ${timeout}s (do a majority of the voters run?)"
    fi
}

cmd_join() {
    local n="$1" via got
    shift
    check_id "$n"
    [ ! -s "$(node_dir "$n")/data.mdb" ] ||
        die "$(node_dir "$n") already holds node $n: restart it with '$0 restart $n' (joining again would add another member)"
    via="$(other_than "$n")" || die "no node runs to join through: start the cluster first"
    spawn "$n" --join "$(raft_addr "$via")" --raft-addr "$(raft_addr "$n")" \
        --web-server "$(http_addr "$n")" --data-dir "$(node_dir "$n")" "$@"
    wait_up "$n"
    got="$(json_field "$(http_get "$n" /status)" id)"
    [ "$got" = "$n" ] || die "the cluster gave the new node id $got, not $n: stop it with
'$0 stop $n' and remove $(node_dir "$n") (ids are handed out in order)"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
start) [ $# -eq 0 ] || usage; cmd_start ;;
status) [ $# -eq 0 ] || usage; cmd_status ;;
stop) [ $# -le 1 ] || usage; cmd_stop "$@" ;;
kill) [ $# -eq 1 ] || usage; cmd_kill "$1" ;;
restart)
    [ $# -ge 1 ] || usage
    check_id "$1"
    restart "$@"
    ;;
join) [ $# -ge 1 ] || usage; cmd_join "$@" ;;
*) usage ;;
esac
