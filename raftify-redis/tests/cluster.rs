//! A 3-node raftify-redis cluster driven over the Redis protocol: writes
//! on any node, linearizable reads everywhere, transactions, TTLs that end
//! on every node, and a leader SIGKILL under concurrent INCRs and
//! transactional appends with a checker (every acknowledged write present
//! exactly once; none reported failed that was applied).

mod common;

use common::workload::{check_writes, Writers};
use common::*;
use redis_protocol::resp2::types::BytesFrame as Frame;
use std::time::Duration;

#[test]
fn writes_on_any_node_are_read_everywhere_and_ttls_end_everywhere() {
    let c = Cluster::start(3, &["--no-sync"]);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    let mut f = c.node(follower).client();
    // A write on a follower is forwarded to the leader.
    assert_eq!(show(&f.cmd(&["SET", "k", "v"])), "+OK");
    assert_eq!(show(&f.cmd(&["INCRBY", "n", "5"])), ":5");
    for id in 1..=3 {
        let mut cl = c.node(id).client();
        assert_eq!(show(&cl.cmd(&["GET", "k"])), "$v", "node {id}");
        assert_eq!(show(&cl.cmd(&["GET", "n"])), "$5", "node {id}");
    }
    // A transaction is one entry: applied whole, in order.
    assert_eq!(show(&f.cmd(&["MULTI"])), "+OK");
    assert_eq!(show(&f.cmd(&["RPUSH", "l", "a"])), "+QUEUED");
    assert_eq!(show(&f.cmd(&["INCR", "k"])), "+QUEUED");
    assert_eq!(show(&f.cmd(&["RPUSH", "l", "b"])), "+QUEUED");
    assert_eq!(
        show(&f.cmd(&["EXEC"])),
        "[:1, -ERR value is not an integer or out of range, :2]"
    );
    // A refused command inside MULTI aborts EXEC.
    f.cmd(&["MULTI"]);
    assert!(show(&f.cmd(&["NOSUCH"])).starts_with("-ERR unknown command"));
    assert_eq!(
        show(&f.cmd(&["EXEC"])),
        "-EXECABORT Transaction discarded because of previous errors."
    );
    // WATCH: a transaction aborts (a null reply) when a watched key
    // changed since, on any node.
    let mut other = c.node(leader).client();
    assert_eq!(show(&f.cmd(&["WATCH", "w", "k"])), "+OK");
    assert_eq!(show(&other.cmd(&["SET", "w", "changed"])), "+OK");
    f.cmd(&["MULTI"]);
    f.cmd(&["SET", "w", "mine"]);
    assert_eq!(show(&f.cmd(&["EXEC"])), "(nil)");
    assert_eq!(show(&f.cmd(&["GET", "w"])), "$changed");
    assert_eq!(show(&f.cmd(&["WATCH", "w"])), "+OK");
    f.cmd(&["MULTI"]);
    f.cmd(&["SET", "w", "mine"]);
    assert_eq!(show(&f.cmd(&["EXEC"])), "[+OK]");
    assert_eq!(show(&other.cmd(&["GET", "w"])), "$mine");
    assert_eq!(show(&other.cmd(&["DEL", "w"])), ":1");
    // TTLs: expired on every node, by the replicated clock.
    assert_eq!(show(&f.cmd(&["SET", "t", "x", "PX", "300"])), "+OK");
    let ttl = f.cmd(&["PTTL", "t"]);
    assert!(
        matches!(ttl, Frame::Integer(ms) if ms > 0 && ms <= 300),
        "{ttl:?}"
    );
    for id in 1..=3 {
        let mut cl = c.node(id).client();
        wait_for(&format!("t to expire on node {id}"), T, || {
            (show(&cl.cmd(&["GET", "t"])) == "(nil)").then_some(())
        });
        assert_eq!(show(&cl.cmd(&["EXISTS", "t"])), ":0");
    }
    // And the leader deleted it (active expiry through the log).
    let mut l = c.node(leader).client();
    wait_for("the expired key to be deleted", T, || {
        (show(&l.cmd(&["DBSIZE"])) == ":3").then_some(())
    });
    assert_eq!(show(&l.cmd(&["LRANGE", "l", "0", "-1"])), "[$a, $b]");
}

#[test]
fn a_leader_kill_loses_no_acknowledged_increment_or_append() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let addrs: Vec<String> = c.nodes.values().map(|n| n.addr()).collect();
    let writers = Writers::start(&addrs, 4);
    // Let them write, kill the leader, wait for a new one, let them write on.
    let mut probe = c.node(leader).client();
    wait_for("some increments", T, || {
        matches!(probe.cmd(&["GET", "counter"]), Frame::BulkString(b) if b.len() >= 2).then_some(())
    });
    c.nodes.get_mut(&leader).expect("leader").kill();
    let survivors: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    let mut p = c.node(survivors[0]).client();
    let before: i64 = match p.cmd(&["GET", "counter"]) {
        Frame::BulkString(b) => String::from_utf8_lossy(&b).parse().expect("a number"),
        other => panic!("{other:?}"),
    };
    wait_for("increments after the election", T, || {
        match p.cmd(&["GET", "counter"]) {
            Frame::BulkString(b) => {
                (String::from_utf8_lossy(&b).parse::<i64>().ok()? >= before + 100).then_some(())
            }
            _ => None,
        }
    });
    // The old leader comes back as a follower.
    c.restart(leader);
    let tallies = writers.stop();
    c.wait_leader();

    check_writes(&c.nodes.values().collect::<Vec<_>>(), &tallies);
}

#[test]
fn sigterm_stops_a_node_cleanly() {
    let mut c = Cluster::start(1, &["--no-sync"]);
    c.wait_leader();
    let mut cl = c.node(1).client();
    assert_eq!(show(&cl.cmd(&["SET", "a", "1"])), "+OK");
    let st = c
        .nodes
        .get_mut(&1)
        .expect("node")
        .terminate(T)
        .expect("exited");
    assert!(st.success(), "{}", c.node(1).log_text());
    assert!(c.node(1).log_text().contains("raftify-redis node stopped"));
    c.restart(1);
    c.wait_leader();
    let mut cl = c.node(1).client();
    assert_eq!(
        show(&cl.cmd(&["GET", "a"])),
        "$1",
        "kept across the restart"
    );
}

#[test]
fn cluster_commands_show_one_shard_led_by_the_leader_and_followers_redirect_cluster_clients() {
    let c = Cluster::start(3, &["--no-sync"]);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    let leader_addr = c.node(leader).addr();
    let mut f = c.node(follower).client();
    // Every member announces its client address through the log.
    let slots = wait_for("every member's address in CLUSTER SLOTS", T, || {
        let s = f.cmd(&["CLUSTER", "SLOTS"]);
        match &s {
            Frame::Array(shards) if matches!(shards.first(), Some(Frame::Array(x)) if x.len() == 5) => {
                Some(s)
            }
            _ => None,
        }
    });
    let Frame::Array(shards) = slots else {
        unreachable!()
    };
    let Frame::Array(shard) = &shards[0] else {
        panic!("{shards:?}")
    };
    assert_eq!(show(&shard[0]), ":0");
    assert_eq!(show(&shard[1]), ":16383");
    let Frame::Array(master) = &shard[2] else {
        panic!("{shard:?}")
    };
    assert_eq!(
        format!(
            "{}:{}",
            show(&master[0]).trim_start_matches('$'),
            show(&master[1]).trim_start_matches(':')
        ),
        leader_addr,
        "the leader is the master"
    );
    assert_eq!(show(&f.cmd(&["CLUSTER", "KEYSLOT", "foo"])), ":12182");
    // Keys per slot (written through a plain connection: forwarded).
    let mut plain = c.node(follower).client();
    assert_eq!(show(&plain.cmd(&["SET", "foo", "1"])), "+OK");
    assert_eq!(show(&plain.cmd(&["SET", "{foo}2", "2"])), "+OK");
    assert_eq!(show(&f.cmd(&["CLUSTER", "COUNTKEYSINSLOT", "12182"])), ":2");
    assert_eq!(show(&f.cmd(&["CLUSTER", "COUNTKEYSINSLOT", "0"])), ":0");
    let one = show(&f.cmd(&["CLUSTER", "GETKEYSINSLOT", "12182", "1"]));
    assert!(one == "[$foo]" || one == "[${foo}2]", "{one}");
    assert_eq!(
        show(&f.cmd(&["CLUSTER", "COUNTKEYSINSLOT", "16384"])),
        "-ERR Invalid slot"
    );
    assert_eq!(
        show(&f.cmd(&["CLUSTER", "GETKEYSINSLOT", "1", "-1"])),
        "-ERR Invalid slot or number of keys"
    );
    let info = show(&f.cmd(&["CLUSTER", "INFO"]));
    assert!(
        info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"),
        "{info}"
    );
    let nodes = show(&f.cmd(&["CLUSTER", "NODES"]));
    assert_eq!(nodes.matches("master").count(), 1, "{nodes}");
    assert_eq!(nodes.matches("slave").count(), 2, "{nodes}");
    assert!(nodes.contains("myself,slave"), "{nodes}");
    // This connection asked for the layout: a follower redirects its writes.
    assert_eq!(
        show(&f.cmd(&["SET", "foo", "bar"])),
        format!("-MOVED 12182 {leader_addr}")
    );
    // A plain connection's writes are forwarded instead.
    let mut plain = c.node(follower).client();
    assert_eq!(show(&plain.cmd(&["SET", "foo", "bar"])), "+OK");
    // redis-cli -c on a follower (when installed).
    if have("redis-cli") {
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &c.node(follower).port.to_string(), "GET", "foo"])
            .output()
            .expect("redis-cli");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bar");
    }
}

#[test]
fn a_message_published_on_any_node_reaches_subscribers_on_every_node_in_order() {
    let c = Cluster::start(3, &["--no-sync"]);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    let mut subs: Vec<Client> = (1..=3).map(|id| c.node(id).client()).collect();
    for s in &mut subs {
        assert_eq!(
            show(&s.cmd(&["SUBSCRIBE", "news", "other"])),
            "[$subscribe, $news, :1]"
        );
        assert_eq!(
            show(&s.read().expect("second confirmation")),
            "[$subscribe, $other, :2]"
        );
        assert_eq!(
            show(&s.cmd(&["PSUBSCRIBE", "n*"])),
            "[$psubscribe, $n*, :3]"
        );
        // In RESP2 a subscribed connection only (un)subscribes and pings.
        assert!(show(&s.cmd(&["GET", "k"])).starts_with("-ERR Can't execute 'get'"));
        assert_eq!(show(&s.cmd(&["PING"])), "[$pong, $]");
    }
    let mut publisher = c.node(follower).client();
    for i in 0..20 {
        // Each subscriber gets it twice (the channel and the pattern); the
        // reply counts this node's receivers.
        let got = publisher.cmd(&["PUBLISH", "news", &format!("m{i}")]);
        assert!(matches!(got, Frame::Integer(n) if n >= 0), "{got:?}");
    }
    for (n, s) in subs.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < 40 {
            let f = s.read().expect("a message");
            seen.push(show(&f));
        }
        let direct: Vec<&String> = seen.iter().filter(|m| m.starts_with("[$message")).collect();
        let expected: Vec<String> = (0..20)
            .map(|i| format!("[$message, $news, $m{i}]"))
            .collect();
        assert_eq!(
            direct.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            expected.iter().map(String::as_str).collect::<Vec<_>>(),
            "subscriber on node {}",
            n + 1
        );
        assert_eq!(
            seen.iter()
                .filter(|m| m.starts_with("[$pmessage, $n*, $news"))
                .count(),
            20
        );
    }
    // Unsubscribing from everything leaves subscribed mode.
    let s = &mut subs[0];
    assert_eq!(show(&s.cmd(&["PUNSUBSCRIBE"])), "[$punsubscribe, $n*, :2]");
    assert_eq!(show(&s.cmd(&["UNSUBSCRIBE"])), "[$unsubscribe, $news, :1]");
    assert_eq!(
        show(&s.read().expect("second")),
        "[$unsubscribe, $other, :0]"
    );
    assert_eq!(show(&s.cmd(&["PING"])), "+PONG");
}

#[test]
fn a_snapshot_read_through_raft_snapshot_read_restores_a_new_node() {
    let c = Cluster::start(1, &["--no-sync"]);
    c.wait_leader();
    let mut cl = c.node(1).client();
    for i in 0..100 {
        assert_eq!(
            show(&cl.cmd(&["SET", &format!("k{i}"), &format!("v{i}")])),
            "+OK"
        );
    }
    let Frame::Integer(index) = cl.cmd(&["RAFT", "SNAPSHOT", "NOW"]) else {
        panic!("RAFT SNAPSHOT NOW answers the index");
    };
    let Frame::Array(list) = cl.cmd(&["RAFT", "SNAPSHOT", "LIST"]) else {
        panic!("LIST is an array");
    };
    assert_eq!(list.len(), 1, "one stored snapshot");
    let Frame::Array(fields) = &list[0] else {
        panic!("a snapshot is a map");
    };
    let field = |name: &str| {
        let at = fields.iter().position(|f| show(f) == format!("${name}"));
        fields[at.expect(name) + 1].clone()
    };
    assert_eq!(field("index"), Frame::Integer(index));
    let id = show(&field("id"))[1..].to_string();
    assert!(id.ends_with(&format!("-{index}")), "{id}");
    let Frame::BulkString(file) = cl.cmd(&["RAFT", "SNAPSHOT", "READ", &id]) else {
        panic!("READ answers the file");
    };
    // Ranges put together are the whole file.
    let mut parts = Vec::new();
    for offset in (0..file.len() + 700).step_by(700) {
        let r = cl.cmd(&["RAFT", "SNAPSHOT", "READ", &id, &offset.to_string(), "700"]);
        let Frame::BulkString(b) = r else {
            panic!("{r:?}")
        };
        parts.extend_from_slice(&b);
    }
    assert_eq!(parts, file.to_vec());
    let wrong = show(&cl.cmd(&["RAFT", "SNAPSHOT", "READ", "9-99999"]));
    assert!(wrong.starts_with("-ERR no snapshot 9-99999"), "{wrong}");
    let bad = show(&cl.cmd(&["RAFT", "SNAPSHOT", "READ", &id, "-1", "5"]));
    assert!(bad.starts_with("-ERR"), "{bad}");

    // The file is a backup: a new node starts from it.
    let backup = c.dir.path().join("backup.snap");
    std::fs::write(&backup, &file).unwrap();
    let restored = Node::spawn(
        1,
        free_port(),
        &format!("127.0.0.1:{}", free_port()),
        &c.dir.path().join("restored"),
        &[
            "--no-sync",
            "--restore-snapshot-from",
            backup.to_str().unwrap(),
        ],
    );
    let mut r = wait_for("the restored node serving", T, || {
        let mut r = Client::connect(&restored.addr()).ok()?;
        (show(&r.call(&["GET", "k99"]).ok()?) == "$v99").then_some(r)
    });
    assert_eq!(show(&r.cmd(&["DBSIZE"])), ":100");
}

#[test]
fn raft_server_commands_change_membership() {
    let mut c = Cluster::start(3, &["--no-sync"]);
    let leader = c.wait_leader();
    let mut cl = c.node(c.follower_of(leader)).client();
    let list = show(&cl.cmd(&["RAFT", "SERVER", "LIST"]));
    assert_eq!(list.matches("$voter").count(), 3, "{list}");
    assert_eq!(show(&cl.cmd(&["SET", "k", "v"])), "+OK");
    // A fourth node waits to be added, as a learner, then is promoted.
    let (port, raft) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let four = Node::spawn(
        4,
        port,
        &raft,
        &c.dir.path().join("n4"),
        &["--no-sync", "--wait-to-be-added"],
    );
    c.nodes.insert(4, four);
    wait_for("node 4 to take connections", T, || {
        Client::connect(&c.node(4).addr()).ok()
    });
    assert_eq!(
        show(&cl.cmd(&["RAFT", "SERVER", "ADD", "4", &raft, "LEARNER"])),
        "+OK"
    );
    let mut n4 = c.node(4).client();
    wait_for("node 4 to catch up", T, || {
        (show(&n4.cmd(&["GET", "k"])) == "$v").then_some(())
    });
    assert_eq!(show(&cl.cmd(&["RAFT", "SERVER", "PROMOTE", "4"])), "+OK");
    let list = show(&cl.cmd(&["RAFT", "SERVER", "LIST"]));
    assert_eq!(list.matches("$voter").count(), 4, "{list}");
    assert!(show(&cl.cmd(&["RAFT", "SERVER", "ADD", "x", "y"])).starts_with("-ERR"));
    // Removed, it is no member any more, even after a restart.
    assert_eq!(show(&cl.cmd(&["RAFT", "SERVER", "REMOVE", "4"])), "+OK");
    c.nodes.get_mut(&4).expect("node 4").kill();
    let list = show(&cl.cmd(&["RAFT", "SERVER", "LIST"]));
    assert_eq!(list.matches("$voter").count(), 3, "{list}");
    assert!(!list.contains(":4,"), "{list}");
    assert_eq!(
        show(&cl.cmd(&["SET", "k2", "v2"])),
        "+OK",
        "the 3 members go on"
    );
    // Restarted on its old data dir under the same id, it does not come
    // back: no member lists it, it serves no write, the others go on.
    let four = Node::spawn(4, port, &raft, &c.dir.path().join("n4"), &["--no-sync"]);
    c.nodes.insert(4, four);
    let mut n4 = c.node(4).client();
    let refused = show(&n4.cmd(&["SET", "k3", "from-4"]));
    assert!(
        refused.starts_with("-CLUSTERDOWN") || refused.starts_with("-TRYAGAIN"),
        "a removed node refuses writes: {refused}"
    );
    for i in 0..50 {
        assert_eq!(show(&cl.cmd(&["SET", &format!("after{i}"), "v"])), "+OK");
    }
    let list = show(&cl.cmd(&["RAFT", "SERVER", "LIST"]));
    assert_eq!(list.matches("$voter").count(), 3, "{list}");
    assert!(!list.contains(":4,"), "{list}");
    assert_eq!(
        show(&cl.cmd(&["GET", "k3"])),
        "(nil)",
        "nothing from node 4"
    );
    let led = c.node(1).leader();
    assert!(led.is_some_and(|l| (1..=3).contains(&l)), "leader {led:?}");
}

#[test]
fn maxmemory_refuses_or_evicts_on_every_node() {
    // noeviction: writes that add data get -OOM; deletes still work.
    let c = Cluster::start(1, &["--no-sync", "--maxmemory", "20kb"]);
    c.wait_leader();
    let mut cl = c.node(1).client();
    let value = "x".repeat(1000);
    let mut refused = None;
    for i in 0..100 {
        match show(&cl.cmd(&["SET", &format!("k{i}"), &value])) {
            r if r == "+OK" => {}
            r => {
                refused = Some((i, r));
                break;
            }
        }
    }
    let (at, reply) = refused.expect("a write refused under noeviction");
    assert!(at > 5, "refused too early: {at}");
    assert_eq!(
        reply,
        "-OOM command not allowed when used memory > 'maxmemory'."
    );
    assert_eq!(show(&cl.cmd(&["DEL", "k0", "k1"])), ":2");
    let info = show(&cl.cmd(&["INFO", "memory"]));
    assert!(
        info.contains("maxmemory:20480") && info.contains("maxmemory_policy:noeviction"),
        "{info}"
    );
    drop(c);

    // allkeys-lru: the least recently written keys go, on every node.
    let c = Cluster::start(
        3,
        &[
            "--no-sync",
            "--maxmemory",
            "50kb",
            "--maxmemory-policy",
            "allkeys-lru",
        ],
    );
    let leader = c.wait_leader();
    let mut cl = c.node(leader).client();
    for i in 0..200 {
        let r = show(&cl.cmd(&["SET", &format!("k{i}"), &value]));
        if r != "+OK" {
            // Over the limit by 10 %: the writer waits for the evictor.
            assert!(r.starts_with("-OOM"), "{r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for id in 1..=3 {
        let mut n = c.node(id).client();
        wait_for(&format!("eviction on node {id}"), T, || {
            let Frame::Integer(keys) = n.cmd(&["DBSIZE"]) else {
                return None;
            };
            (keys < 60).then_some(())
        });
        assert_eq!(
            show(&n.cmd(&["EXISTS", "k0"])),
            ":0",
            "the oldest key went first (node {id})"
        );
        assert_eq!(
            show(&n.cmd(&["EXISTS", "k199"])),
            ":1",
            "the newest key stays (node {id})"
        );
    }
}

/// Fills a node past `--maxmemory` with 1000-byte values under `key(i)`,
/// waiting for the evictor whenever writes are refused.
fn fill(cl: &mut Client, n: usize, key: impl Fn(usize) -> Vec<String>) {
    let value = "x".repeat(1000);
    for i in 0..n {
        let mut args: Vec<String> = vec!["SET".into()];
        args.extend(key(i));
        args.insert(2, value.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = show(&cl.cmd(&args));
        if r != "+OK" {
            assert!(r.starts_with("-OOM"), "{r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn lfu_keeps_the_hot_keys_and_volatile_policies_keep_keys_without_ttl() {
    let lfu = [
        "--no-sync",
        "--maxmemory",
        "50kb",
        "--maxmemory-policy",
        "allkeys-lfu",
    ];
    let c = Cluster::start(1, &lfu);
    c.wait_leader();
    let mut cl = c.node(1).client();
    assert_eq!(show(&cl.cmd(&["SET", "hot", "v"])), "+OK");
    for i in 0..200 {
        if i % 10 == 0 {
            for _ in 0..20 {
                assert_eq!(show(&cl.cmd(&["GET", "hot"])), "$v");
            }
        }
        fill(&mut cl, 1, |_| vec![format!("k{i}")]);
    }
    wait_for("eviction", T, || {
        let Frame::Integer(keys) = cl.cmd(&["DBSIZE"]) else {
            return None;
        };
        (keys < 60).then_some(())
    });
    assert_eq!(show(&cl.cmd(&["GET", "hot"])), "$v", "the hot key stays");
    assert_eq!(
        show(&cl.cmd(&["EXISTS", "k0"])),
        ":0",
        "a cold old key went"
    );
    let config = show(&cl.cmd(&["CONFIG", "GET", "maxmemory-policy"]));
    assert!(config.contains("allkeys-lfu"), "{config}");
    drop(c);

    for policy in ["volatile-lru", "volatile-lfu", "volatile-random"] {
        let c = Cluster::start(
            1,
            &[
                "--no-sync",
                "--maxmemory",
                "50kb",
                "--maxmemory-policy",
                policy,
            ],
        );
        c.wait_leader();
        let mut cl = c.node(1).client();
        fill(&mut cl, 20, |i| vec![format!("keep{i}")]);
        fill(&mut cl, 200, |i| {
            vec![format!("t{i}"), "EX".into(), "1000".into()]
        });
        wait_for(&format!("eviction under {policy}"), T, || {
            let Frame::Integer(keys) = cl.cmd(&["DBSIZE"]) else {
                return None;
            };
            (keys < 60).then_some(())
        });
        for i in 0..20 {
            let key = format!("keep{i}");
            assert_eq!(show(&cl.cmd(&["EXISTS", &key])), ":1", "{policy}: {key}");
        }
    }
}

/// RedisRaft's Jepsen findings as named cases: an old leader, paused while
/// the others elected a new one and took writes, never serves a stale
/// read when it resumes; a node restarted after a crash serves no read
/// older than the writes acknowledged before it.
#[test]
fn no_stale_read_from_a_paused_old_leader_or_after_a_restart() {
    let mut c = Cluster::start(3, &[]);
    let old = c.wait_leader();
    let mut cl = c.node(old).client();
    assert_eq!(show(&cl.cmd(&["SET", "x", "old"])), "+OK");
    let pid = c.node(old).child.as_ref().expect("running").id() as i32;
    // SAFETY: signals to a child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let survivors: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    let mut s = c.node(survivors[0]).client();
    let new = wait_for("a new leader", T, || {
        let l = c.node(survivors[0]).leader()?;
        (l != old && c.node(survivors[1]).leader() == Some(l)).then_some(l)
    });
    let mut w = c.node(new).client();
    assert_eq!(show(&w.cmd(&["SET", "x", "new"])), "+OK");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Right after it resumes (it may still believe it leads): linearizable
    // reads there give the new value, or an error — never "old".
    cl.stream.set_read_timeout(Some(T)).ok();
    for _ in 0..20 {
        match cl.call(&["GET", "x"]) {
            Ok(f) => {
                let r = show(&f);
                assert!(
                    r == "$new" || r.starts_with('-'),
                    "stale read from the old leader: {r}"
                );
            }
            Err(_) => cl = c.node(old).client(),
        }
    }
    assert_eq!(show(&s.cmd(&["GET", "x"])), "$new");
    // A crashed follower restarts: its first reads already see "new".
    let f = c.follower_of(new);
    c.nodes.get_mut(&f).expect("follower").kill();
    c.restart(f);
    let mut r = c.node(f).client();
    let first = wait_for("the restarted node to answer", T, || {
        let v = show(&r.call(&["GET", "x"]).ok()?);
        (!v.starts_with("-CLUSTERDOWN") && !v.starts_with("-TRYAGAIN")).then_some(v)
    });
    assert_eq!(first, "$new", "the restarted node's first read");
}

/// RedisRaft's Jepsen case "restart after a crash during a snapshot": a
/// node SIGKILLed right after `RAFT SNAPSHOT NOW` (while the state is
/// serialized), the moment its snapshot file appears (while it is being
/// written), or once the snapshot is saved and the log compacted, restarts
/// with every acknowledged key.
#[test]
fn a_node_killed_while_taking_a_snapshot_restarts_with_every_key() {
    let mut c = Cluster::start(1, &[]);
    c.wait_leader();
    let value = "v".repeat(100);
    let mut written = 0usize;
    let mut mid_write = 0;
    for round in 0..6 {
        let mut cl = c.node(1).client();
        // 10,000 more keys per round, in MSETs of 1,000.
        for _ in 0..10 {
            let keys: Vec<String> = (written..written + 1000).map(|i| format!("k{i}")).collect();
            let mut args = vec!["MSET"];
            for k in &keys {
                args.push(k);
                args.push(&value);
            }
            assert_eq!(show(&cl.cmd(&args)), "+OK");
            written += 1000;
        }
        let snap_dir = c.node(1).dir.join("snap");
        let writing = || {
            std::fs::read_dir(&snap_dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
        };
        cl.send(&[b"RAFT", b"SNAPSHOT", b"NOW"]).expect("send");
        match round % 3 {
            0 => {}
            1 => {
                // Poll without sleeping: the file exists for milliseconds.
                let deadline = std::time::Instant::now() + T;
                while !writing() && std::time::Instant::now() < deadline {
                    std::thread::yield_now();
                }
            }
            _ => {
                let r = cl.read().expect("RAFT SNAPSHOT NOW answers");
                assert!(matches!(r, Frame::Integer(_)), "{r:?}");
            }
        }
        c.nodes.get_mut(&1).expect("node 1").kill();
        mid_write += usize::from(writing());
        c.restart(1);
        let mut r = c.node(1).client();
        let n = wait_for(
            &format!("round {round}: the restarted node serving"),
            T,
            || match r.call(&["DBSIZE"]).ok()? {
                Frame::Integer(n) => Some(n),
                _ => None,
            },
        );
        assert_eq!(n as usize, written, "round {round}");
        for k in [0, written / 2, written - 1] {
            assert_eq!(
                show(&r.cmd(&["GET", &format!("k{k}")])),
                format!("${value}")
            );
        }
    }
    eprintln!("{mid_write} of 2 kills meant for the file write hit it");
}
