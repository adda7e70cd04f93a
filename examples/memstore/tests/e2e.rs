//! End-to-end: real `memstore` processes on ephemeral loopback ports, real
//! LMDB dirs, real gRPC, SIGKILL and SIGTERM.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn static_cluster_survives_leader_sigkill_and_the_old_leader_catches_up() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);

    // Writes through a follower are forwarded; reads anywhere are linearizable.
    let mut acked = Vec::new();
    for i in 0..30 {
        let key = format!("k{i}");
        assert!(
            put_ok(&c.node(follower).http, &key, &format!("v{i}")),
            "write {i} via follower failed"
        );
        acked.push(key);
    }
    assert_eq!(
        get_value(&c.node(leader).http, "k29", false).as_deref(),
        Some("v29")
    );
    // They reached the leader through the follower's forwarder (ProposeBatch).
    let metrics = get(&c.node(follower).http, "/metrics").text();
    let forwarded = metric_value(&metrics, "raftify_forwarded_proposals_total");
    assert!(forwarded >= Some(30.0), "{metrics}");
    // The leader publishes each follower's progress (on its next tick):
    // both caught up with its log.
    let scrape = |c: &Cluster, id: u64| get(&c.node(id).http, "/metrics").text();
    wait_for("the leader's per-peer metrics", T, || {
        let m = scrape(&c, leader);
        let last = metric_value(&m, "raftify_last_index")?;
        let peers: Vec<_> = parse_metrics(&m)
            .into_iter()
            .filter(|(n, _, v)| n == "raftify_peer_match_index" && *v == last)
            .collect();
        (peers.len() == 2).then_some(())
    });
    // Connections are counted per server (this scrape is one of them).
    let m = scrape(&c, leader);
    let open = |server: &str| {
        parse_metrics(&m)
            .into_iter()
            .find(|(n, l, _)| {
                n == "raftify_connections" && l.get("server").map(String::as_str) == Some(server)
            })
            .map(|(_, _, v)| v)
    };
    assert!(open("http") >= Some(1.0), "{m}");
    assert!(open("grpc") >= Some(1.0), "{m}");
    // Raft traffic is counted per peer, in messages and bytes.
    let to_follower = |name: &str| {
        parse_metrics(&m)
            .into_iter()
            .find(|(n, l, _)| n == name && l.get("peer") == Some(&follower.to_string()))
            .map(|(_, _, v)| v)
    };
    assert!(
        to_follower("raftify_messages_sent_total") > Some(0.0),
        "{m}"
    );
    assert!(
        to_follower("raftify_message_sent_bytes_total") > Some(0.0),
        "{m}"
    );
    assert!(
        to_follower("raftify_message_received_bytes_total") > Some(0.0),
        "{m}"
    );
    let before = scrape(&c, follower);
    let term_before = metric_value(&before, "raftify_term").expect("term");
    let changes_before =
        metric_value(&before, "raftify_leader_changes_total").expect("leader changes");

    c.nodes.get_mut(&leader).expect("leader").kill();
    let killed_at = Instant::now();
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    // A new leader serves writes within a few seconds.
    wait_for("a write accepted by the new leader", T, || {
        put_ok(&c.node(new_leader).http, "after", "kill").then_some(())
    });
    assert!(
        killed_at.elapsed() < Duration::from_secs(8),
        "failover took {:?}",
        killed_at.elapsed()
    );
    // The metrics follow: a new leader, a higher term, one more leader
    // change seen by the surviving follower; a snapshot is counted.
    let m = scrape(&c, new_leader);
    assert_eq!(metric_value(&m, "raftify_is_leader"), Some(1.0), "{m}");
    assert!(metric_value(&m, "raftify_term") > Some(term_before), "{m}");
    let other = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != new_leader)
        .expect("the third node");
    let o = scrape(&c, other);
    assert_eq!(
        metric_value(&o, "raftify_leader_id"),
        Some(new_leader as f64),
        "{o}"
    );
    if other == follower {
        assert!(
            metric_value(&o, "raftify_leader_changes_total") > Some(changes_before),
            "{o}"
        );
    }
    let snaps = metric_value(&m, "raftify_snapshots_created_total").unwrap_or(0.0);
    assert_eq!(
        request(&c.node(new_leader).http, "POST", "/snapshot", b"")
            .map(|r| r.status)
            .ok(),
        Some(200)
    );
    let m = scrape(&c, new_leader);
    assert_eq!(
        metric_value(&m, "raftify_snapshots_created_total"),
        Some(snaps + 1.0),
        "{m}"
    );
    assert!(
        metric_value(&m, "raftify_snapshot_size_bytes") > Some(0.0),
        "{m}"
    );
    for (i, key) in acked.iter().enumerate() {
        assert_eq!(
            get_value(&c.node(new_leader).http, key, false),
            Some(format!("v{i}")),
            "acknowledged {key} lost"
        );
    }

    // The killed node restarts from its dir and catches up.
    c.restart(leader, &[]);
    wait_for("the restarted node to catch up", T, || {
        (get_value(&c.node(leader).http, "after", true).as_deref() == Some("kill")).then_some(())
    });
    assert_eq!(
        get_value(&c.node(leader).http, "k0", true).as_deref(),
        Some("v0")
    );
}

#[test]
fn a_full_restart_keeps_every_acknowledged_write_and_sigterm_exits_cleanly() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    for i in 0..50 {
        assert!(put_ok(&c.node(leader).http, &format!("k{i}"), "v"));
    }
    // A client that connected to each raft port and never sent a byte must
    // not hold the shutdown up (it used to, for the server's whole grace).
    let silent: Vec<std::net::TcpStream> = [1, 2, 3]
        .iter()
        .map(|id| std::net::TcpStream::connect(&c.node(*id).raft).expect("connect"))
        .collect();
    for id in [1, 2, 3] {
        let sent = Instant::now();
        let st = c
            .nodes
            .get_mut(&id)
            .expect("node")
            .terminate(T)
            .expect("exited after SIGTERM");
        let took = sent.elapsed();
        assert!(
            st.success(),
            "node {id} exited with {st:?} after SIGTERM: {}",
            c.node(id).log_text()
        );
        // It takes milliseconds; the bound leaves room for a loaded machine
        // but not for the 3 s grace period.
        assert!(
            took < Duration::from_secs(2),
            "node {id} took {took:?} to exit after SIGTERM: {}",
            c.node(id).log_text()
        );
        // Its last line is written before it exits (it used to be lost now
        // and then: the logger's queue was never flushed at exit).
        assert!(
            c.node(id).log_text().contains("memstore node stopped"),
            "{}",
            c.node(id).log_text()
        );
    }
    drop(silent);
    // Nothing listens any more (the raft loop and both servers stopped).
    assert!(request(&c.node(1).http, "GET", "/health", b"").is_err());
    for id in [1, 2, 3] {
        c.restart(id, &[]);
    }
    let leader = c.wait_leader();
    for i in 0..50 {
        assert_eq!(
            get_value(&c.node(leader).http, &format!("k{i}"), false).as_deref(),
            Some("v"),
            "k{i} lost"
        );
    }
    assert!(put_ok(&c.node(leader).http, "after", "restart"));
}

#[test]
fn a_node_joins_dynamically_and_a_lost_node_is_rebuilt_from_a_wal_copy() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    for i in 0..20 {
        assert!(put_ok(&c.node(leader).http, &format!("k{i}"), "v"));
    }

    // --join through a follower's raft address; the id comes from the ticket.
    let follower = c.follower_of(leader);
    let http4 = format!("127.0.0.1:{}", free_port());
    let raft4 = format!("127.0.0.1:{}", free_port());
    let dir4 = c.dir.path().join("node-joined");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_memstore"))
        .args([
            "--web-server",
            &http4,
            "--raft-addr",
            &raft4,
            "--join",
            &c.node(follower).raft,
            "--tick-ms",
            "30",
        ])
        .arg("--data-dir")
        .arg(&dir4)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn joiner");
    let joined = Node {
        id: 4,
        http: http4.clone(),
        raft: raft4.clone(),
        dir: dir4,
        child: Some(child),
        log: "/dev/null".into(),
    };
    wait_for("the joined node to serve the data", T, || {
        (get_value(&http4, "k19", true).as_deref() == Some("v")).then_some(())
    });
    let cluster = get(&c.node(leader).http, "/cluster").json();
    let members = cluster["members"].as_array().expect("members").clone();
    assert_eq!(members.len(), 4, "{cluster}");
    assert!(
        members
            .iter()
            .any(|m| m["raft_addr"] == raft4.as_str() && m["role"] == "voter"),
        "{cluster}"
    );
    drop(joined);

    // The README's --join run again for the stopped node (a new data dir,
    // the same raft address): refused, saying how to restart node 4.
    let again_log = c.dir.path().join("joined-again.log");
    let out = std::fs::File::create(&again_log).expect("log");
    let mut again = std::process::Command::new(env!("CARGO_BIN_EXE_memstore"))
        .args(["--web-server", &http4, "--raft-addr", &raft4])
        .args(["--join", &c.node(follower).raft, "--tick-ms", "30"])
        .arg("--data-dir")
        .arg(c.dir.path().join("node-joined-again"))
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .expect("spawn joiner");
    let status = wait_for("the second join to be refused", T, || {
        again.try_wait().ok().flatten()
    });
    assert!(!status.success());
    let said = std::fs::read_to_string(&again_log).unwrap_or_default();
    assert!(said.contains("restart node 4"), "{said}");
    let cluster = get(&c.node(leader).http, "/cluster").json();
    assert_eq!(
        cluster["members"].as_array().map(Vec::len),
        Some(4),
        "{cluster}"
    );

    // Node 3 loses its disk; it is rebuilt from a copy of node 1's WAL.
    let victim = 3;
    c.nodes.get_mut(&victim).expect("node").kill();
    let victim_dir = c.node(victim).dir.clone();
    std::fs::remove_dir_all(&victim_dir).expect("wipe");
    let source = c
        .node(if leader == victim {
            c.follower_of(victim)
        } else {
            leader
        })
        .dir
        .clone();
    let src = source.to_string_lossy().into_owned();
    c.restart(victim, &["--restore-wal-from", &src]);
    wait_for("the rebuilt node to hold every write", T, || {
        (get_value(&c.node(victim).http, "k19", true).as_deref() == Some("v")).then_some(())
    });
    c.wait_leader();
}

#[test]
fn bad_requests_and_garbage_leave_every_node_serving() {
    let c = Cluster::start(3);
    let leader = c.wait_leader();
    for n in c.nodes.values() {
        assert_eq!(
            put(&n.http, "/kv/big", &vec![b'x'; 2 * 1024 * 1024]).status,
            413
        );
        assert_eq!(put(&n.http, "/kv/%C3%28", b"v").status, 400);
        assert_eq!(get(&n.http, "/nope").status, 404);
        let garbage: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 4, 1, 2, 3, 4],
        ];
        for g in garbage {
            let _ = raw_with_timeout(&n.raft, g, Duration::from_millis(500));
        }
    }
    let leader_after = c.wait_leader();
    for n in c.nodes.values() {
        assert!(
            put_ok(&n.http, "alive", &n.id.to_string()),
            "node {} stopped serving",
            n.id
        );
    }
    assert!(leader_after == leader || leader_after != 0);
}

/// The term a node reports through /status.
fn term_of(http: &str) -> Option<u64> {
    let r = request(http, "GET", "/status", b"").ok()?;
    (r.status == 200)
        .then(|| r.json()["term"].as_u64())
        .flatten()
}

/// What a node restarted over a wiped data dir does.
enum WipedOutcome {
    /// The leader it acknowledged entries to told it so: it stopped.
    Stopped(std::process::ExitStatus),
    /// A new leader (which never saw its acknowledgements) replicated the
    /// log to it again from the start.
    CaughtUp,
}

#[test]
fn a_node_restarted_with_a_wiped_dir_stops_with_a_clear_error_and_is_rebuilt() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    for i in 0..20 {
        assert!(put_ok(&c.node(leader).http, &format!("k{i}"), "v"));
    }
    let victim = c.follower_of(leader);
    let other = c
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader && *id != victim)
        .expect("a third node");
    // It holds (and so acknowledged) every write before it loses them.
    wait_for("the victim to hold every write", T, || {
        (get_value(&c.node(victim).http, "k19", true).as_deref() == Some("v")).then_some(())
    });
    let term = term_of(&c.node(leader).http).expect("the leader's term");
    c.nodes.get_mut(&victim).expect("node").kill();
    std::fs::remove_dir_all(&c.node(victim).dir).expect("wipe");
    // Restarted with the same flags over an empty dir, the node has lost
    // entries it acknowledged. raft-rs would panic ("to_commit out of
    // range") and raft cannot repair it: raftify stops the node with an
    // error that says what to do, and the process exits non-zero.
    //
    // Only the leader that counted its acknowledgements can tell: if an
    // election happens first (a loaded machine can miss heartbeats), the
    // new leader starts from nothing it knows of the victim and simply
    // replicates the whole log to it again. Both outcomes are checked.
    c.restart(victim, &[]);
    let (leader_http, other_http) = (c.node(leader).http.clone(), c.node(other).http.clone());
    let victim_http = c.node(victim).http.clone();
    let new_term = || {
        [&leader_http, &other_http]
            .iter()
            .filter_map(|h| term_of(h))
            .any(|t| t > term)
    };
    let logs: Vec<(u64, std::path::PathBuf)> =
        c.nodes.values().map(|n| (n.id, n.log.clone())).collect();
    let nodes = &mut c.nodes;
    let outcome = wait_for_or(
        "the wiped node to stop (or, after an election, to catch up)",
        T,
        || {
            if let Some(status) = nodes
                .get_mut(&victim)
                .and_then(|n| n.child.as_mut())
                .and_then(|ch| ch.try_wait().ok().flatten())
            {
                return Some(WipedOutcome::Stopped(status));
            }
            let caught_up =
                get_value(&victim_http, "k19", true).as_deref() == Some("v") && new_term();
            caught_up.then_some(WipedOutcome::CaughtUp)
        },
        || {
            logs.iter()
                .map(|(id, log)| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    format!("--- node {id} ---\n{text}")
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    match outcome {
        WipedOutcome::Stopped(status) => {
            assert!(!status.success());
            let log = c.node(victim).log_text();
            assert!(log.contains("lost acknowledged log entries"), "{log}");
            // It names memstore's flag, not the library function.
            assert!(log.contains("--restore-wal-from"), "{log}");
            assert!(!log.contains("panicked"), "{log}");
            c.nodes.get_mut(&victim).expect("node").child = None;
        }
        WipedOutcome::CaughtUp => {
            let log = c.node(victim).log_text();
            assert!(!log.contains("panicked"), "{log}");
            c.nodes.get_mut(&victim).expect("node").kill();
        }
    }
    // The rest of the cluster never noticed.
    assert!(put_ok(&c.node(leader).http, "k20", "v"));

    // The documented fix: rebuild its dir from a peer's WAL.
    std::fs::remove_dir_all(&c.node(victim).dir).ok();
    let source = c.node(leader).dir.to_string_lossy().into_owned();
    c.restart(victim, &["--restore-wal-from", &source]);
    wait_for("the rebuilt node to catch up", T, || {
        (get_value(&c.node(victim).http, "k20", true).as_deref() == Some("v")).then_some(())
    });
    let r = request(&c.node(victim).http, "PUT", "/kv/after", b"rebuild");
    assert!(
        matches!(&r, Ok(r) if r.status == 200),
        "{r:?}\n{}",
        c.node(victim).log_text()
    );
}

#[test]
fn a_node_with_a_corrupted_log_entry_exits_non_zero_saying_corrupt() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let marker = "CORRUPT-ME-7f3a9c1e5b";
    assert!(put_ok(&c.node(leader).http, "poison", marker));
    let victim = c.follower_of(leader);
    wait_for("the follower to apply the entry", T, || {
        (get_value(&c.node(victim).http, "poison", true).as_deref() == Some(marker)).then_some(())
    });
    // More writes after it: the entry is not the journal's last record
    // (a damaged last record is what a crash mid-write leaves, and is
    // dropped as unacknowledged; one followed by intact records is damage).
    assert!(put_ok(&c.node(leader).http, "after-poison", "v"));
    wait_for("the follower to apply the later entry", T, || {
        (get_value(&c.node(victim).http, "after-poison", true).as_deref() == Some("v"))
            .then_some(())
    });
    c.nodes.get_mut(&victim).expect("node").kill();
    // Flip one bit of the entry wherever its bytes are: in LMDB's file
    // (copy-on-write may have left older copies of the page too) and in
    // the journal, whichever holds it now.
    let dir = c.node(victim).dir.clone();
    let mut files = vec![dir.join("data.mdb")];
    if let Ok(rd) = std::fs::read_dir(dir.join("wal")) {
        files.extend(rd.flatten().map(|e| e.path()));
    }
    let mut flipped = 0;
    for path in files {
        let mut bytes = std::fs::read(&path).expect("read a store file");
        let mut at = 0;
        let mut here = 0;
        while let Some(i) = bytes[at..]
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
        {
            bytes[at + i + 3] ^= 0x01;
            here += 1;
            at += i + marker.len();
        }
        if here > 0 {
            std::fs::write(&path, bytes).expect("write a store file");
            flipped += here;
        }
    }
    assert!(flipped > 0, "the entry is in the store's files");

    // Restarted, the node re-applies its committed log and reads the
    // entry: it must stop, loudly, instead of staying up without its data.
    c.restart(victim, &[]);
    let started = Instant::now();
    let status = wait_for("the node with a corrupted entry to exit", T, || {
        c.nodes
            .get_mut(&victim)
            .and_then(|n| n.child.as_mut())
            .and_then(|ch| ch.try_wait().ok().flatten())
    });
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!status.success(), "{status:?}");
    let log = c.node(victim).log_text();
    assert!(log.to_lowercase().contains("corrupt"), "{log}");
    c.nodes.get_mut(&victim).expect("node").child = None;
    // The others go on.
    assert!(put_ok(&c.node(leader).http, "after", "v"));
}

#[test]
fn silent_http_connections_are_closed_and_the_connection_cap_holds() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let node = Node::spawn(
        1,
        &http,
        &raft,
        &dir.path().join("n1"),
        &["--max-connections", "4"],
    );
    wait_for("the node to serve", T, || leader_of(&node.http));

    // Connections that send nothing take the slots; once the four are
    // taken, the next is closed at once instead of waiting. (Probing with a
    // short read: a held connection times out, a refused one reads EOF.)
    let mut buf = [0u8; 16];
    let mut silent = Vec::new();
    let started = Instant::now();
    loop {
        let mut c = std::net::TcpStream::connect(&http).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("the server sent {n} bytes unasked"),
            Err(_) => silent.push(c),
        }
        assert!(silent.len() <= 4, "more connections held than the cap");
    }
    assert!(!silent.is_empty(), "no connection was held");

    // Each silent connection is closed by the server within 15 s.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed, no data");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "silent connections held for {:?}",
        started.elapsed()
    );
    // The slots are free again: requests are served.
    assert_eq!(get(&http, "/health").status, 200);
    assert!(put_ok(&http, "k", "v"));
}

#[test]
fn a_data_dir_of_another_cluster_never_joins_this_one() {
    // The README's quick start leaves a single-node cluster in node 1's
    // dir; the walkthrough then starts three nodes with node 1 on that dir.
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<(String, String)> = (0..3)
        .map(|_| {
            (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            )
        })
        .collect();
    let d1 = dir.path().join("node-1");
    {
        let single = Node::spawn(1, &ports[0].0, &ports[0].1, &d1, &[]);
        wait_for("the single node to lead", T, || leader_of(&single.http));
        assert!(put_ok(&single.http, "mine", "1"));
    }
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, (_, raft))| format!("{}={raft}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    // Node 1 on that dir with --peers that share no other member refuses
    // to start, and says why (and which flag).
    let mut refused = Node::spawn(1, &ports[0].0, &ports[0].1, &d1, &["--peers", &peers]);
    let status = wait_for("node 1 to refuse to start", T, || {
        refused
            .child
            .as_mut()
            .and_then(|ch| ch.try_wait().ok().flatten())
    });
    assert!(!status.success(), "{status:?}");
    let said = refused.log_text();
    assert!(
        said.contains("another cluster") && said.contains("--peers"),
        "{said}"
    );
    // Nodes 2 and 3 form the new cluster and take writes.
    let mut nodes: Vec<Node> = ports
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, (http, raft))| {
            let d = dir.path().join(format!("node-{}", i + 1));
            Node::spawn(i as u64 + 1, http, raft, &d, &["--peers", &peers])
        })
        .collect();
    let leader = wait_for_or(
        "nodes 2 and 3 to elect a leader",
        T,
        || {
            let l = leader_of(&nodes[0].http)?;
            (l != 1 && leader_of(&nodes[1].http) == Some(l)).then_some(l)
        },
        || {
            nodes
                .iter()
                .map(|n| format!("--- node log:\n{}", n.log_text()))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    assert!(put_ok(&nodes[leader as usize - 2].http, "probe", "x"));
    // Node 1 started without --peers resumes its own one-node cluster at
    // the address the new cluster expects node 1 at: it never follows their
    // leader and never lists their members; their traffic is refused,
    // loudly.
    nodes.insert(0, Node::spawn(1, &ports[0].0, &ports[0].1, &d1, &[]));
    wait_for("a refusal to be logged", T, || {
        nodes
            .iter()
            .any(|n| n.log_text().contains("cluster ID mismatch"))
            .then_some(())
    });
    wait_for("node 1 to lead its own cluster", T, || {
        (leader_of(&nodes[0].http) == Some(1)).then_some(())
    });
    let c = get(&nodes[0].http, "/cluster").json();
    assert_eq!(c["members"].as_array().map(Vec::len), Some(1), "{c}");
    assert_eq!(get_value(&nodes[0].http, "probe", false), None);
    assert_eq!(
        get_value(&nodes[0].http, "mine", false).as_deref(),
        Some("1")
    );
    for n in &mut nodes {
        n.kill();
    }
}

#[test]
fn a_restore_checks_its_ports_first_and_runs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = || format!("127.0.0.1:{}", free_port());
    // A source WAL with data.
    let src = dir.path().join("source");
    let (http_a, raft_a) = (port(), port());
    let mut a = Node::spawn(1, &http_a, &raft_a, &src, &[]);
    wait_for("the source node to lead", T, || leader_of(&a.http));
    assert!(put_ok(&a.http, "kept", "yes"));
    let src_arg = src.to_string_lossy().into_owned();
    // A restore whose raft port is taken (the source node still runs
    // there) fails before it writes anything.
    let target = dir.path().join("restored");
    let mut busy = Node::spawn(
        1,
        &port(),
        &raft_a,
        &target,
        &["--restore-wal-from", &src_arg],
    );
    let status = wait_for("the restore to fail on the busy port", T, || {
        busy.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    });
    assert!(!status.success());
    assert!(
        busy.log_text().contains("cannot bind"),
        "{}",
        busy.log_text()
    );
    assert!(
        !target.join("data.mdb").exists(),
        "the failed restore wrote {}",
        target.display()
    );
    assert!(a.terminate(T).is_some_and(|s| s.success()));
    // On free ports it restores; started again with the same flags (a
    // supervisor's restart), it resumes and notes that the restore is done.
    let (http_b, raft_b) = (port(), port());
    for round in 0..2 {
        let mut b = Node::spawn(
            1,
            &http_b,
            &raft_b,
            &target,
            &["--restore-wal-from", &src_arg],
        );
        wait_for("the restored node to serve", T, || {
            (get_value(&b.http, "kept", false).as_deref() == Some("yes")).then_some(())
        });
        if round == 1 {
            assert!(
                b.log_text().contains("restore is skipped"),
                "{}",
                b.log_text()
            );
        }
        assert!(b.terminate(T).is_some_and(|s| s.success()));
    }
}

#[test]
fn an_idempotency_key_is_remembered_across_a_leader_sigkill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    let incr = |http: &str, key: &str| {
        let header = format!("Idempotency-Key: {key}");
        request_with(http, "POST", "/incr/n", b"5", &[&header])
    };
    let first = incr(&c.node(follower).http, "transfer-1").unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["value"].as_i64(), Some(5));

    c.nodes.get_mut(&leader).expect("leader").kill();
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    // The same key, at another node under another leader: the first
    // answer, and the counter unchanged.
    let other = c.follower_of(new_leader);
    for http in [&c.node(other).http, &c.node(new_leader).http] {
        let again = wait_for("the repeat answered", T, || {
            incr(http, "transfer-1").ok().filter(|r| r.status == 200)
        });
        assert_eq!(again.body, first.body, "{}", again.text());
    }
    assert_eq!(
        get_value(&c.node(other).http, "n", false).as_deref(),
        Some("5")
    );
    let next = incr(&c.node(new_leader).http, "transfer-2").unwrap();
    assert_eq!(next.json()["value"].as_i64(), Some(10), "{}", next.text());
}

/// `--log-format json`: every line on stderr is one JSON object with the
/// time, the level and the message, from the first line to the last.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let mut node = Node::spawn(
        1,
        &http,
        &raft,
        &dir.path().join("n1"),
        &["--log-format", "json"],
    );
    wait_for("the node to serve", T, || leader_of(&node.http));
    assert!(put_ok(&node.http, "k", "v"));
    let status = node.terminate(T).expect("the node stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let log = node.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "msg"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
    }
    assert!(log.contains("memstore node stopped"), "{log}");
}

/// At debug level, a write sent to a follower can be followed across
/// nodes: the follower logs its request id when it forwards it, the leader
/// when it proposes it.
#[test]
fn a_forwarded_write_carries_one_request_id_across_nodes() {
    let mut c = Cluster::start_with(3, &["--log-format", "json", "--log-level", "debug"]);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    assert!(put_ok(&c.node(follower).http, "traced", "v"));
    let ids = |id: u64, msg: &str| -> Vec<String> {
        c.node(id)
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == msg)
            .filter_map(|v| {
                let one = v["request_id"].as_str().map(str::to_string);
                one.or_else(|| v["request_ids"].as_str().map(str::to_string))
            })
            .flat_map(|s| s.split(',').map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    let forwarded = wait_for("the follower's forwarding log line", T, || {
        let v = ids(follower, "forwarding writes to the leader");
        (!v.is_empty()).then_some(v)
    });
    let id = forwarded.last().cloned().expect("a request id");
    assert!(id.contains('-'), "{id}");
    wait_for("the same request id in the leader's log", T, || {
        let on_leader = ids(leader, "proposing session writes");
        let single = ids(leader, "proposing a session write");
        (on_leader.contains(&id) || single.contains(&id)).then_some(())
    });
    for n in [1, 2, 3] {
        c.nodes.get_mut(&n).expect("node").kill();
    }
}

/// A client-token rotation by three rolling restarts (docs/SECURITY.md):
/// `--accept-token NEW` beside `--auth-token OLD`, then the clients and
/// the nodes move to NEW with OLD still accepted, then OLD is dropped.
/// A client writing all the while, to every node in turn, is never
/// refused (no 401): neither by a node on the other token nor through
/// a follower whose forward to the leader presents the other token.
#[test]
fn the_client_token_rotates_by_rolling_restarts_without_a_refusal() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let mut c = Cluster::start_with(3, &["--auth-token", "old-token"]);
    let https: Vec<String> = c.nodes.values().map(|n| n.http.clone()).collect();
    let token = Arc::new(Mutex::new("old-token"));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (token, stop, acked) = (token.clone(), stop.clone(), acked.clone());
        let https = https.clone();
        std::thread::spawn(move || {
            let mut refusals = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let http = &https[i as usize % https.len()];
                let t = *token.lock().unwrap_or_else(|p| p.into_inner());
                let header = format!("Authorization: Bearer {t}");
                let path = format!("/kv/w{i}");
                match request_with(http, "PUT", &path, b"v", &[&header]) {
                    Ok(r) if r.status == 200 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status == 401 => {
                        refusals.push(format!("{t} at {http}: {}", r.text()))
                    }
                    // A node restarting, an election: not a refusal.
                    _ => {}
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            refusals
        })
    };
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    // Each step's flags, the client tokens every node must accept during
    // it, and the token the writer moves to after it.
    type Step<'a> = (&'a [&'a str], &'a [&'a str], Option<&'static str>);
    let steps: [Step; 3] = [
        (
            &["--auth-token", "old-token", "--accept-token", "new-token"],
            &["old-token"],
            Some("new-token"),
        ),
        (
            &["--auth-token", "new-token", "--accept-token", "old-token"],
            &["old-token", "new-token"],
            None,
        ),
        (&["--auth-token", "new-token"], &["new-token"], None),
    ];
    // Every node up (its SIGTERM handler set) and serving before the first restart.
    for http in &https {
        wait_for_or(
            "a write through every node",
            T,
            || {
                let r = request_with(http, "PUT", "/kv/up", b"v", &[&bearer("old-token")]).ok()?;
                (r.status == 200).then_some(())
            },
            || c.logs(),
        );
    }
    for (flags, accepted, clients_move_to) in steps {
        for id in [1, 2, 3] {
            let st = c.nodes.get_mut(&id).expect("node").terminate(T);
            assert!(st.is_some_and(|s| s.success()), "node {id}: {st:?}");
            c.restart(id, flags);
            // Every mixed state, deterministically: a write through each
            // node (the restarted one, and through followers to whichever
            // leads) must be acknowledged, and never refused.
            for (http, t) in https
                .iter()
                .flat_map(|h| accepted.iter().map(move |t| (h, *t)))
            {
                wait_for_or(
                    "a write through every node",
                    T,
                    || {
                        let r = request_with(http, "PUT", "/kv/probe", b"v", &[&bearer(t)]).ok()?;
                        assert_ne!(r.status, 401, "{t} refused at {http}: {}", r.text());
                        (r.status == 200).then_some(())
                    },
                    || c.logs(),
                );
            }
        }
        if let Some(t) = clients_move_to {
            *token.lock().unwrap_or_else(|p| p.into_inner()) = t;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let refusals = writer.join().expect("writer");
    assert!(refusals.is_empty(), "refused mid-rotation: {refusals:?}");
    assert!(acked.load(Ordering::Relaxed) > 0, "no write acknowledged");
    // The rotation is over: the old token opens nothing, the new one does.
    for http in &https {
        let r = request_with(http, "PUT", "/kv/after", b"v", &[&bearer("old-token")]).unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        let r = request_with(http, "GET", "/kv/probe", b"", &[&bearer("new-token")]).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "v"));
    }
}
