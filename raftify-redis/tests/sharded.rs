//! `raftify-redis --sharded`, the seed's demo at test scale with the real
//! binary: keys written to one node; two more join with `--join`; `RAFT
//! REBALANCE` answers `+OK` at once and `RAFT REBALANCE STATUS` says
//! `done` when the groups, slots and leaders are spread; meanwhile a
//! cluster client (redis-rs) reading the keys never gets a wrong or
//! missing value; after it, `CLUSTER SLOTS` gives each node a third of the
//! slots to lead and every key reads back through the cluster client.

mod common;

use common::{cluster_connection, free_port, info_field, joined, show, wait_for, Node, T};
use redis::Commands;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 600;
/// The seed's demo: keys written to one node before two more join.
const DEMO_KEYS: usize = 100_000;
/// Counters the writer increments during a faulty rebalance.
const COUNTERS: usize = 48;

/// What the counter writer saw: per counter, increments acknowledged and
/// increments whose outcome is unknown (the connection broke after the
/// command was sent); redirections and `TRYAGAIN` (not executed) are
/// followed and retried.
#[derive(Default)]
struct Tally {
    acked: Vec<u64>,
    unknown: Vec<u64>,
    redirects: u64,
    /// `-ASK` answers followed (`ASKING` then the command, at the target).
    asks: u64,
    other_errors: Vec<String>,
}

/// Increments `ctr:{i}` round-robin until `stop`, routing by `MOVED` from
/// any of `addrs` and following `ASK` (a plain client: a command is sent
/// again only when the server said it did not run it).
fn count_until(addrs: Vec<String>, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally {
        acked: vec![0; COUNTERS],
        unknown: vec![0; COUNTERS],
        ..Tally::default()
    };
    let mut route: std::collections::HashMap<String, String> = Default::default();
    let mut conns: std::collections::HashMap<String, redis::Connection> = Default::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let i = n % COUNTERS;
        n += 1;
        let key = format!("ctr:{i}");
        let mut tries = 0;
        let mut ask: Option<String> = None;
        loop {
            tries += 1;
            if tries > 200 || stop.load(Ordering::Relaxed) {
                break; // never sent, or sent and refused: nothing to count
            }
            let asking = ask.take();
            let addr = asking.clone().unwrap_or_else(|| {
                route
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| addrs[(n + tries) % addrs.len()].clone())
            });
            if !conns.contains_key(&addr) {
                let c = redis::Client::open(format!("redis://{addr}/"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)));
                match c {
                    Ok(c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        conns.insert(addr.clone(), c);
                    }
                    Err(_) => {
                        // Not connected, so not sent: try another node.
                        route.remove(&key);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
            let Some(con) = conns.get_mut(&addr) else {
                continue;
            };
            let r: redis::RedisResult<i64> = if asking.is_some() {
                redis::pipe()
                    .cmd("ASKING")
                    .ignore()
                    .cmd("INCR")
                    .arg(&key)
                    .query::<(i64,)>(con)
                    .map(|(v,)| v)
            } else {
                redis::cmd("INCR").arg(&key).query(con)
            };
            match r {
                Ok(_) => {
                    t.acked[i] += 1;
                    break;
                }
                Err(e) if e.kind() == redis::ErrorKind::Ask => {
                    t.asks += 1;
                    match e.redirect_node() {
                        Some((to, _)) => ask = Some(to.to_string()),
                        None => t.other_errors.push(format!("ASK without a target: {e}")),
                    }
                }
                Err(e) if e.kind() == redis::ErrorKind::Moved => {
                    t.redirects += 1;
                    if let Some((_, to)) = e.redirect_node() {
                        route.insert(key.clone(), to.to_string());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        redis::ErrorKind::TryAgain | redis::ErrorKind::ClusterDown
                    ) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    // Sent, and no answer: it may or may not have run.
                    t.unknown[i] += 1;
                    conns.remove(&addr);
                    route.remove(&key);
                    break;
                }
                Err(e) => {
                    // A definite error reply: the command did not run.
                    t.other_errors.push(e.to_string());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    t
}

/// Each counter is at least its acknowledged increments and at most those
/// plus the unknown ones (none lost, none applied twice), read through a
/// cluster client.
fn check_counters(t: &Tally, con: &mut redis::cluster::ClusterConnection) {
    for i in 0..COUNTERS {
        let v: Option<u64> = con.get(format!("ctr:{i}")).unwrap();
        let v = v.unwrap_or(0);
        assert!(
            t.acked[i] <= v && v <= t.acked[i] + t.unknown[i],
            "ctr:{i} is {v}: {} acknowledged, {} unknown",
            t.acked[i],
            t.unknown[i]
        );
    }
}

/// `DBSIZE` summed over `nodes` (each answers for the groups it leads).
fn dbsize_sum(nodes: &[&Node]) -> i64 {
    nodes
        .iter()
        .map(|n| match n.client().cmd(&["DBSIZE"]) {
            common::Frame::Integer(k) => k,
            other => panic!("DBSIZE: {}", show(&other)),
        })
        .sum()
}

/// Node 1 alone with KEYS keys, then two nodes joining it (no rebalance
/// yet): the three nodes and their raft addresses.
fn one_with_keys_two_joined(dir: &std::path::Path) -> ([Node; 3], [String; 3]) {
    one_with_keys_two_joined_with(dir, &[], KEYS)
}

/// [`one_with_keys_two_joined`] with `keys` keys (`key:<i>` =
/// `value:<i>`, written in pipelines of 500), every node started with
/// `flags` too.
fn one_with_keys_two_joined_with(
    dir: &std::path::Path,
    flags: &[&str],
    keys: usize,
) -> ([Node; 3], [String; 3]) {
    let raft1 = format!("127.0.0.1:{}", free_port());
    let port1 = free_port();
    let first: Vec<&str> = ["--sharded"].iter().chain(flags).copied().collect();
    let n1 = Node::spawn(1, port1, &raft1, &dir.join("n1"), &first);
    let mut c1 = n1.client();
    wait_for("the first node to serve writes", T, || {
        (show(&c1.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    for batch in (0..keys).collect::<Vec<_>>().chunks(500) {
        for i in batch {
            let (k, v) = (format!("key:{i}"), format!("value:{i}"));
            c1.send(&[b"SET", k.as_bytes(), v.as_bytes()]).unwrap();
        }
        for i in batch {
            assert_eq!(show(&c1.read().unwrap()), "+OK", "SET key:{i}");
        }
    }
    let join: Vec<&str> = ["--sharded", "--join", raft1.as_str()]
        .iter()
        .chain(flags)
        .copied()
        .collect();
    let raft2 = format!("127.0.0.1:{}", free_port());
    let raft3 = format!("127.0.0.1:{}", free_port());
    let n2 = Node::spawn(0, free_port(), &raft2, &dir.join("n2"), &join);
    let n3 = Node::spawn(0, free_port(), &raft3, &dir.join("n3"), &join);
    joined(&n1, &[&n2, &n3]);
    ([n1, n2, n3], [raft1, raft2, raft3])
}

/// The seed's demo: 100,000 keys on one node, two more join, a
/// rebalance; each node then leads a third of the slots, every key read
/// throughout and none lost.
#[test]
fn keys_on_one_node_spread_over_three_with_a_cluster_client_reading_throughout() {
    const KEYS: usize = DEMO_KEYS;
    let dir = tempfile::tempdir().unwrap();
    let ([n1, n2, n3], _) = one_with_keys_two_joined_with(dir.path(), &[], KEYS);
    let mut c1 = n1.client();
    // A multi-key command over several slots is refused as Redis Cluster
    // refuses it; within one hash tag it works.
    assert!(show(&c1.cmd(&["MSET", "a", "1", "b", "2"])).starts_with("-CROSSSLOT"));
    assert_eq!(show(&c1.cmd(&["MSET", "{t}a", "1", "{t}b", "2"])), "+OK");

    // A cluster client reads every key over and over while the rebalance
    // runs: a value is right or the read fails (TRYAGAIN, a redirection
    // being followed); never missing, never another key's.
    let urls: Vec<String> = [&n1, &n2, &n3]
        .iter()
        .map(|n| format!("redis://{}/", n.addr()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, urls) = (stop.clone(), urls.clone());
        std::thread::spawn(move || {
            let client = redis::cluster::ClusterClient::builder(urls)
                .retries(10)
                .build()
                .unwrap();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut con = client.get_connection().unwrap();
            while !stop.load(Ordering::Relaxed) {
                for i in (0..KEYS).step_by(97) {
                    match con.get::<_, Option<String>>(format!("key:{i}")) {
                        Ok(v) => {
                            assert_eq!(v, Some(format!("value:{i}")), "key:{i}");
                            ok += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
            }
            (ok, failed)
        })
    };

    assert_eq!(show(&c1.cmd(&["RAFT", "REBALANCE"])), "+OK");
    wait_for("the rebalance to finish", Duration::from_secs(120), || {
        let status = show(&c1.cmd(&["RAFT", "REBALANCE", "STATUS"]));
        let groups = info_field(&n1, "groups")?;
        (status.starts_with("$") && status.contains("done") && groups == "3").then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = reader.join().unwrap();
    assert!(ok > 0, "the reader read nothing ({failed} failures)");

    // CLUSTER SLOTS: three runs, each led by another node, a third each.
    let client = redis::cluster::ClusterClient::builder(urls)
        .retries(10)
        .build()
        .unwrap();
    let mut plain = redis::Client::open(format!("redis://{}/", n2.addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    let slots: Vec<(i64, i64, Vec<redis::Value>)> = wait_for("leaders spread", T, || {
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut plain).ok()?;
        let redis::Value::Array(runs) = v else {
            return None;
        };
        let mut out = Vec::new();
        let mut leaders = BTreeSet::new();
        for run in runs {
            let redis::Value::Array(fields) = run else {
                return None;
            };
            let (redis::Value::Int(a), redis::Value::Int(b)) = (&fields[0], &fields[1]) else {
                return None;
            };
            let redis::Value::Array(first) = &fields[2] else {
                return None;
            };
            leaders.insert(format!("{:?}", first[1]));
            out.push((*a, *b, fields[2..].to_vec()));
        }
        (out.len() == 3 && leaders.len() == 3).then_some(out)
    });
    for (a, b, nodes) in &slots {
        let n = b - a + 1;
        assert!((4915..=6007).contains(&n), "a third of 16384 (±10 %): {n}");
        // Its leader only: the other replicas lead groups of their own,
        // and a cluster client takes a node listed as a replica anywhere
        // for a replica everywhere.
        assert_eq!(nodes.len(), 1, "the leader alone");
    }
    let mut con = client.get_connection().unwrap();
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::cluster::cluster_pipe();
        for i in batch {
            pipe.get(format!("key:{i}"));
        }
        let values: Vec<Option<String>> = pipe.query(&mut con).unwrap();
        for (i, v) in batch.iter().zip(values) {
            assert_eq!(v, Some(format!("value:{i}")), "key:{i}");
        }
    }
    let _: () = con.set("after", "yes").unwrap();
    let after: String = con.get("after").unwrap();
    assert_eq!(after, "yes");
    // Removing a node that is not a member is refused, changing nothing.
    let refused = show(&c1.cmd(&["RAFT", "SERVER", "REMOVE", "99"]));
    assert!(refused.contains("node 99 is not a member"), "{refused}");
    // DBSIZE and KEYS answer for the groups each node leads: summed over
    // the nodes, every key once (KEYS, probe, {t}a, {t}b, after).
    let nodes = [&n1, &n2, &n3];
    let total = dbsize_sum(&nodes);
    assert_eq!(total, KEYS as i64 + 4);
    let mut all = BTreeSet::new();
    for n in nodes {
        let common::Frame::Array(keys) = n.client().cmd(&["KEYS", "key:*"]) else {
            panic!("KEYS is an array")
        };
        for k in keys {
            assert!(all.insert(show(&k)), "{} listed twice", show(&k));
        }
    }
    assert_eq!(all.len(), KEYS);
    // SCAN answers for the groups each node leads, small pages merged
    // across them: over the nodes, every key once.
    let mut scanned = BTreeSet::new();
    for n in nodes {
        let mut c = n.client();
        let mut cursor = "0".to_string();
        for page in 0.. {
            assert!(page < 10 * KEYS, "SCAN does not end");
            let common::Frame::Array(reply) =
                c.cmd(&["SCAN", &cursor, "MATCH", "key:*", "COUNT", "300"])
            else {
                panic!("SCAN answers an array");
            };
            cursor = show(&reply[0]).trim_start_matches('$').to_string();
            let common::Frame::Array(keys) = &reply[1] else {
                panic!("SCAN's keys are an array");
            };
            for k in keys {
                assert!(scanned.insert(show(k)), "{} scanned twice", show(k));
            }
            if cursor == "0" {
                break;
            }
        }
    }
    assert_eq!(scanned, all);

    // Pipelines, written at once to a plain connection: commands whose
    // keys share one group run together (one log entry), a run over
    // several groups command by command; either way the replies come in
    // order and every write lands.
    let mut piped = n2.client();
    let mut wire = Vec::new();
    let mut push = |args: &[&str]| {
        wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            wire.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    };
    for i in 0..150 {
        push(&["SET", &format!("{{pipe}}k{i}"), &format!("v{i}")]);
        push(&["GET", &format!("{{pipe}}k{i}")]);
    }
    for i in 0..150 {
        push(&["SET", &format!("mixed:{i}"), &format!("m{i}")]);
    }
    std::io::Write::write_all(&mut piped.stream, &wire).unwrap();
    for i in 0..150 {
        assert_eq!(show(&piped.read().unwrap()), "+OK", "{{pipe}}k{i}");
        assert_eq!(show(&piped.read().unwrap()), format!("$v{i}"));
    }
    for i in 0..150 {
        assert_eq!(show(&piped.read().unwrap()), "+OK", "mixed:{i}");
    }
    for i in 0..150 {
        let v: Option<String> = con.get(format!("mixed:{i}")).unwrap();
        assert_eq!(v, Some(format!("m{i}")));
    }

    // Left alone, every group sleeps on every node (INFO's `asleep=1`),
    // and a read and a write wake their group and are answered.
    wait_for("every group asleep", T, || {
        nodes
            .iter()
            .all(|n| {
                let info = show(&n.client().cmd(&["INFO", "sharding"]));
                let groups: Vec<&str> = info
                    .split("\\r\\n")
                    .chain(info.split("\r\n"))
                    .filter(|l| l.starts_with("group") && l.contains(":slots="))
                    .collect();
                !groups.is_empty() && groups.iter().all(|g| g.contains("asleep=1"))
            })
            .then_some(())
    });
    let v: Option<String> = con.get("key:7").unwrap();
    assert_eq!(v.as_deref(), Some("value:7"));
    let _: () = con.set("woken", "yes").unwrap();
    let woken: String = con.get("woken").unwrap();
    assert_eq!(woken, "yes");

    // FLUSHALL on a node empties the groups it leads; on every node,
    // everything.
    for n in nodes {
        assert_eq!(show(&n.client().cmd(&["FLUSHALL"])), "+OK");
    }
    let total = dbsize_sum(&nodes);
    assert_eq!(total, 0);
    let gone: Option<String> = con.get("key:1").unwrap();
    assert_eq!(gone, None);
}

/// Node 1 (the metadata leader, every group's first replica, the source
/// of every move) is SIGKILLed once the rebalance moves slots (or, if it
/// got past that before we looked, at whatever step it is).
/// During a move, a chunk of slots the target already holds is answered
/// `-ASK slot target` by the source, and the target serves the command
/// right after `ASKING` (as Redis Cluster's migrating and importing nodes
/// do): a writer following `ASK` and `MOVED` keeps incrementing counters
/// while the slots move in small rounds (`--move-chunk 64`), sees `ASK`,
/// and every counter ends at exactly its acknowledged increments.
#[test]
fn a_move_answers_ask_for_slots_the_target_holds_and_no_increment_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ([n1, n2, n3], _) =
        one_with_keys_two_joined_with(dir.path(), &["--move-chunk", "64"], KEYS);
    let mut c1 = n1.client();
    // ASKING holds for one command, and outside a move changes nothing.
    assert_eq!(show(&c1.cmd(&["ASKING"])), "+OK");
    assert_eq!(show(&c1.cmd(&["GET", "key:1"])), "$value:1");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let addrs: Vec<String> = [&n1, &n2, &n3].iter().map(|n| n.addr()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || count_until(addrs, stop))
    };
    // The writer is under way before the slots move.
    wait_for("the first increments", T, || {
        (show(&c1.cmd(&["GET", "ctr:0"])) != "(nil)").then_some(())
    });
    assert_eq!(show(&c1.cmd(&["RAFT", "REBALANCE"])), "+OK");
    wait_for("the rebalance to finish", Duration::from_secs(120), || {
        let status = show(&c1.cmd(&["RAFT", "REBALANCE", "STATUS"]));
        let groups = info_field(&n1, "groups")?;
        (status.contains("done") && groups == "3").then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let t = writer.join().unwrap();
    let acked: u64 = t.acked.iter().sum();
    eprintln!(
        "{acked} increments acknowledged, {} ASK followed, {} MOVED, errors {:?}",
        t.asks,
        t.redirects,
        t.other_errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(t.asks > 0, "no ASK seen while slots moved");
    assert!(t.other_errors.is_empty(), "{:?}", t.other_errors);
    assert_eq!(
        t.unknown.iter().sum::<u64>(),
        0,
        "no fault, no unknown outcome"
    );
    let mut con = cluster_connection(&[&n1, &n2, &n3]);
    check_counters(&t, &mut con);
    for i in (0..KEYS).step_by(11) {
        let v: Option<String> = con.get(format!("key:{i}")).unwrap();
        assert_eq!(v, Some(format!("value:{i}")));
    }
}

#[test]
fn a_node_killed_during_a_rebalance_comes_back_and_no_key_is_lost() {
    killed_during_a_rebalance(0);
}

/// Node 3 (a joined node: a replica of every group the slots move to, and
/// the leader of some) is SIGKILLed mid-move.
#[test]
fn a_target_replica_killed_during_a_move_comes_back_and_no_key_is_lost() {
    killed_during_a_rebalance(2);
}

/// Node `victim` (0-based) is SIGKILLed once the rebalance moves slots,
/// comes back from its data dir, and the rebalance finishes with every
/// key readable through a cluster client and every slot served; a writer
/// incrementing counters all along finds each counter at least its
/// acknowledged increments and at most those plus the unknown ones (no
/// acknowledged write lost, none applied twice).
fn killed_during_a_rebalance(victim: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, rafts) = one_with_keys_two_joined(dir.path());
    let mut c1 = nodes[0].client();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || count_until(addrs, stop))
    };
    assert_eq!(show(&c1.cmd(&["RAFT", "REBALANCE"])), "+OK");
    let at = wait_for("a slot move", Duration::from_secs(60), || {
        let status = show(&c1.cmd(&["RAFT", "REBALANCE", "STATUS"]));
        (status.contains("MoveSlots") || status.contains("Purge") || status.contains("done"))
            .then_some(status)
    });
    let port: u16 = nodes[victim]
        .addr()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap();
    nodes[victim].kill();
    eprintln!("node {} killed during: {at}", victim + 1);

    // It comes back from its data dir; the rebalance goes on (asked again
    // wherever the metadata leader now is) and finishes.
    let data = dir.path().join(format!("n{}", victim + 1));
    nodes[victim] = if victim == 0 {
        Node::spawn(1, port, &rafts[0], &data, &["--sharded"])
    } else {
        Node::spawn(
            0,
            port,
            &rafts[victim],
            &data,
            &["--sharded", "--join", &rafts[0]],
        )
    };
    let [n1, n2, n3] = &mut nodes;
    let nodes = [&*n1, &*n2, &*n3];
    wait_for(
        "the rebalance to finish after the kill",
        Duration::from_secs(120),
        || {
            for n in nodes {
                let _ = n.client().call(&["RAFT", "REBALANCE"]);
            }
            let done = nodes.iter().all(|n| {
                let status = show(&n.client().cmd(&["RAFT", "REBALANCE", "STATUS"]));
                info_field(n, "groups").as_deref() == Some("3")
                    && (status.contains("done") || !status.contains("moving"))
            });
            let led = |n: &&Node| info_field(n, "groups").is_some();
            (done && nodes.iter().all(led)).then_some(())
        },
    );
    let mut con = cluster_connection(&nodes);
    for i in 0..KEYS {
        let v: Option<String> = con.get(format!("key:{i}")).unwrap();
        assert_eq!(v, Some(format!("value:{i}")), "key:{i}");
    }
    stop.store(true, Ordering::Relaxed);
    let t = writer.join().unwrap();
    let (acked, unknown): (u64, u64) = (t.acked.iter().sum(), t.unknown.iter().sum());
    eprintln!(
        "counters: {acked} increments acknowledged, {unknown} unknown, {} redirects, {} error replies {:?}",
        t.redirects,
        t.other_errors.len(),
        t.other_errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(acked > 0, "the writer got nothing through");
    check_counters(&t, &mut con);
    // Every slot is owned by exactly one group, with a leader.
    let mut plain = redis::Client::open(format!("redis://{}/", n1.addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    let covered: i64 = wait_for("every slot served", T, || {
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut plain).ok()?;
        let redis::Value::Array(runs) = v else {
            return None;
        };
        let mut total = 0;
        for run in runs {
            let redis::Value::Array(f) = run else {
                return None;
            };
            let (redis::Value::Int(a), redis::Value::Int(b)) = (&f[0], &f[1]) else {
                return None;
            };
            total += b - a + 1;
        }
        Some(total)
    });
    assert_eq!(covered, 16384);
    n1.kill();
    n2.kill();
    n3.kill();
}
