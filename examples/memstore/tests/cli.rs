//! `raftify-cli` against real `memstore` processes: its view of a data
//! directory, its live commands, its error messages.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn cli_debug_persisted_json_matches_what_was_written() {
    let mut c = Cluster::start(1);
    c.wait_leader();
    for i in 0..10 {
        assert!(put_ok(&c.node(1).http, &format!("k{i}"), "v"));
    }
    let status = get(&c.node(1).http, "/status").json();
    let last = status["last_index"].as_u64().expect("last_index");
    c.nodes.get_mut(&1).expect("node").terminate(T);
    let cli = cli_path();
    let out = std::process::Command::new(&cli)
        .args(["debug", "persisted", "--json"])
        .arg(&c.node(1).dir)
        .output()
        .expect("run raftify-cli (build it with the workspace)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["last_index"].as_u64(), Some(last));
    assert_eq!(v["identity"]["node_id"], 1);
    let users = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("user")))
        .count();
    assert_eq!(users, 10, "{v}");
    // --decode memstore: the keys and values that were written.
    let out = std::process::Command::new(&cli)
        .args(["debug", "persisted", "--json", "--decode", "memstore"])
        .arg(&c.node(1).dir)
        .output()
        .expect("run raftify-cli");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let decoded: Vec<&serde_json::Value> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e.get("decoded"))
        .collect();
    let expect: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"op": "put", "key": format!("k{i}"), "value": "v"}))
        .collect();
    assert_eq!(decoded, expect.iter().collect::<Vec<_>>(), "{v}");
    let out = std::process::Command::new(&cli)
        .args(["debug", "persisted", "--decode", "memstore"])
        .arg(&c.node(1).dir)
        .output()
        .expect("run raftify-cli");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(r#"user put "k9" = "v""#), "{table}");
    // A codec of the user's: a program that gets each entry on stdin.
    let out = std::process::Command::new(&cli)
        .args(["debug", "persisted", "--json", "--decode-cmd", "wc -c"])
        .arg(&c.node(1).dir)
        .output()
        .expect("run raftify-cli");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // Each command is memstore's encoding of put "kN" = "v": a tag, the
    // key and the value, each after a 4-byte length: 12 bytes.
    let sizes: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| Some(e.get("decoded")?.as_str()?.trim()))
        .collect();
    assert_eq!(sizes, vec!["12"; 10], "{v}");
    // A missing dir is a clear error with its own exit code.
    let out = std::process::Command::new(&cli)
        .args(["debug", "persisted", "/nonexistent/raftify"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cli_path())
        .args(args)
        .output()
        .expect("run raftify-cli (build it with the workspace)")
}

#[test]
fn cli_live_commands_administer_a_running_cluster() {
    let c = Cluster::start(3);
    let leader = c.wait_leader();
    let any = c.node(c.follower_of(leader)).raft.clone();

    let out = cli(&["members", &any, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["leader_id"].as_u64(), Some(leader));
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3));

    let out = cli(&["leader", &any, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["leader_id"].as_u64(), Some(leader));

    let out = cli(&["debug", "node", &c.node(leader).raft, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["role"], "leader");

    let target = c.follower_of(leader);
    let out = cli(&["transfer-leader", &any, &target.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.wait_leader(), target);

    let out = cli(&["snapshot", &c.node(target).raft]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Membership administration, as the HTTP API offers it: a learner at an
    // address nothing listens on (the three others keep the quorum), its
    // promotion, its removal; then a real member leaves.
    // The members as `any` sees them, once `expect` holds (a follower
    // applies a change a moment after the leader answered).
    let members = |what: &str, expect: &dyn Fn(&[serde_json::Value]) -> bool| {
        wait_for(what, T, || {
            let out = cli(&["members", &any, "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let m = v["members"].as_array()?.clone();
            expect(&m).then_some(m)
        })
    };
    let nowhere = format!("127.0.0.1:{}", free_port());
    let ok = |args: &[&str]| {
        let out = cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Nothing answers at `nowhere`: the leader refuses to add it.
    let out = cli(&["add-learner", &any, "9", &nowhere]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("did not answer"), "{said}");
    // A node started to wait for its addition answers as node 9.
    let dir9 = tempfile::tempdir().expect("tempdir");
    let raft9 = format!("127.0.0.1:{}", free_port());
    let http9 = format!("127.0.0.1:{}", free_port());
    let mut node9 = Node::spawn(
        9,
        &http9,
        &raft9,
        &dir9.path().join("node-9"),
        &["--wait-to-be-added"],
    );
    let printed = wait_for("node 9 to be added", T, || {
        let out = cli(&["add-learner", &any, "9", &raft9]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(printed.contains("learner"), "{printed}");
    members("node 9 as a learner", &|m| {
        m.iter().any(|x| x["id"] == 9 && x["role"] == "learner")
    });
    ok(&["promote", &any, "9"]);
    members("node 9 as a voter", &|m| {
        m.iter().any(|x| x["id"] == 9 && x["role"] == "voter")
    });
    ok(&["remove", &any, "9"]);
    members("node 9 removed", &|m| m.iter().all(|x| x["id"] != 9));
    node9.kill();
    // Moving a member to another address is refused, exit code 1.
    let out = cli(&["add-voter", &any, &target.to_string(), &nowhere]);
    assert_eq!(out.status.code(), Some(1));
    let leaving = c.follower_of(target);
    ok(&["leave", &c.node(leaving).raft]);
    let m = members("the node to leave", &|m| {
        m.iter().all(|x| x["id"] != leaving)
    });
    assert_eq!(m.len(), 2);

    // An unreachable node: a one-line error and exit code 1, at once.
    let dead = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = cli(&["leader", &dead]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connection refused: nothing listens at"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // memstore's HTTP port instead of its raft port: said so, at once.
    let started = Instant::now();
    let out = cli(&["members", &c.node(target).http]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this looks like memstore's HTTP port; use the raft (gRPC) port"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // Wrong token: refused.
    let out = cli(&["members", &any, "--auth-token", "nope", "--timeout", "2"]);
    assert!(
        out.status.success(),
        "no token configured on the cluster: any token passes"
    );
}

/// A follower's restart must not lose the next messages to it: raft
/// messages to it go out on a new connection at once (not dropped with the
/// stale one, nor during a backoff), so a leadership transfer to it right
/// after the restart succeeds on its first `MsgTimeoutNow`. A lost one
/// shows in the logs as a leader that sent the message again (raft-rs gives
/// a transfer up after an election timeout and the loop asks again) to a
/// target that received fewer. Durations are not asserted: the new leader's
/// minimum tenure alone makes each transfer wait up to an election timeout.
#[test]
fn transfer_leader_to_a_node_that_just_restarted_succeeds_every_time() {
    const ROUNDS: usize = 8;
    let mut c = Cluster::start(3);
    let mut leader = c.wait_leader();
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let target = c.follower_of(leader);
        assert!(put_ok(&c.node(leader).http, &format!("r{round}"), "v"));
        c.nodes.get_mut(&target).expect("node").kill();
        c.restart(target, &[]);
        // As soon as its raft port takes connections again.
        let raft = c.node(target).raft.clone();
        wait_for("the restarted node's raft port", T, || {
            std::net::TcpStream::connect(&raft).ok()
        });
        let via = c.node(leader).raft.clone();
        let out = cli(&["transfer-leader", &via, &target.to_string()]);
        assert!(
            out.status.success(),
            "round {round}: transfer to node {target}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.node(target).log_text()
        );
        assert_eq!(c.wait_leader(), target, "round {round}");
        // Each log holds one life of its node: the leader's holds this
        // round's transfer only (it was last restarted as a target), the
        // target's starts at its restart.
        let sent = count_lines(
            &c.node(leader).log_text(),
            &format!("MsgTimeoutNow to {target}"),
        );
        let received = count_lines(
            &c.node(target).log_text(),
            &format!("received MsgTimeoutNow from {leader}"),
        );
        assert!(
            sent >= 1 && received >= 1,
            "round {round}: sent {sent}, received {received}\n{}",
            transfer_lines(&c)
        );
        if received < sent {
            lost.push((round, sent, received, transfer_lines(&c)));
        }
        leader = target;
    }
    // Before the fix most rounds lost one. One is left to a target whose
    // election outlived the transfer (a second `MsgTimeoutNow` reaching a
    // candidate is ignored, unlogged at info).
    assert!(
        lost.len() <= 1,
        "rounds with a lost MsgTimeoutNow: {lost:#?}"
    );
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// What each node logged about leadership transfers and elections.
fn transfer_lines(c: &Cluster) -> String {
    let mut out = String::new();
    for (id, n) in &c.nodes {
        for line in n.log_text().lines() {
            let l = line.to_ascii_lowercase();
            if l.contains("timeoutnow")
                || l.contains("campaign")
                || l.contains("transfer")
                || l.contains("election")
                || l.contains("became")
                || l.contains("starting")
            {
                out.push_str(&format!("node {id}: {line}\n"));
            }
        }
    }
    out
}

/// `top` in a pseudo-terminal (util-linux `script` provides one): it
/// redraws in place and shows the three members with the leader, and each
/// follower's match index and lag.
#[test]
fn top_shows_the_members_in_a_terminal() {
    let c = Cluster::start(3);
    let leader = c.wait_leader();
    let any = c.node(c.follower_of(leader)).raft.clone();
    let cmd = format!(
        "{} top {any} --iterations 2 --interval-ms 300",
        cli_path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .output()
        .expect("run script(1) (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // A terminal gets the clear-screen sequence before every frame.
    assert_eq!(text.matches("\x1b[H\x1b[2J").count(), 2, "{text:?}");
    let last_frame = text.rsplit("\x1b[H\x1b[2J").next().unwrap_or_default();
    let rows: Vec<&str> = last_frame
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next().is_some_and(|id| id.parse::<u64>().is_ok())
                && matches!(w.next(), Some("leader" | "voter"))
        })
        .collect();
    assert_eq!(rows.len(), 3, "{last_frame}");
    let leader_row = rows
        .iter()
        .find(|r| r.contains("leader"))
        .expect("a leader row");
    assert!(
        leader_row.trim_start().starts_with(&leader.to_string()),
        "{last_frame}"
    );
    // The leader's view: every member's match index, and a lag.
    assert!(rows.iter().all(|r| r.contains("replicate")), "{last_frame}");
    assert!(
        last_frame.contains(&format!("leader {leader}")),
        "{last_frame}"
    );
}

/// `watch` prints the leader, then the new one after the leader is killed
/// (going on through another member if the one it asks dies).
#[test]
fn watch_prints_leader_changes_as_they_happen() {
    use std::io::BufRead;
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let any = c.node(c.follower_of(leader)).raft.clone();
    let mut child = std::process::Command::new(cli_path())
        .args(["watch", &any, "--changes", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start raftify-cli watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(T).expect("watch prints the leader");
    assert!(first.contains(&format!("leader {leader} (")), "{first}");
    c.nodes.get_mut(&leader).expect("leader").kill();
    let new_leader = c.wait_leader();
    let deadline = Instant::now() + T;
    let mut seen = vec![first];
    while !seen
        .last()
        .is_some_and(|l| l.contains(&format!("leader {new_leader} (")))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("watch never printed leader {new_leader}: {seen:?}"),
        }
    }
    // Terms only grow along the lines.
    let terms: Vec<u64> = seen
        .iter()
        .filter_map(|l| {
            l.split("term ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(terms.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `raftify-cli snapshot ADDR --save FILE`: a backup over the network of a
/// node's LMDB snapshot (its own file, streamed from a mapping), from
/// which `--restore-snapshot-from` starts a new node holding every key,
/// and a whole cluster whose disks were lost.
#[test]
fn a_snapshot_saved_over_the_network_restores_a_node_and_a_whole_cluster() {
    let c = Cluster::start_with(3, &["--auth-token", "s3cret"]);
    let bearer = ["Authorization: Bearer s3cret"];
    let put = |http: &str, k: &str, v: &str| {
        let path = format!("/kv/{k}");
        request_with(http, "PUT", &path, v.as_bytes(), &bearer).is_ok_and(|r| r.status == 200)
    };
    let http = c.node(1).http.clone();
    wait_for("a write through node 1", T, || {
        put(&http, "first", "v").then_some(())
    });
    // 2 MB: the snapshot file streams from its mapping in several chunks.
    let value = |i: usize| format!("v{i}-{}", "x".repeat(40 * 1024));
    for i in 0..50 {
        assert!(put(&http, &format!("k{i}"), &value(i)));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.snap");
    let file_arg = file.to_str().expect("utf-8 path");
    let raft = c.node(2).raft.clone();
    // Without the token: refused, no file.
    let out = cli(&["snapshot", &raft, "--save", file_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!file.exists());
    let out = cli(&[
        "snapshot",
        &raft,
        "--save",
        file_arg,
        "--auth-token",
        "s3cret",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("saved the snapshot at index"), "{stdout}");
    let size = std::fs::metadata(&file).expect("the saved file").len();
    assert!(size > 2_000_000, "{size} bytes");
    // Only the file: the partial one was renamed into place.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["backup.snap"]);
    // A snapshot larger than the limit given is refused, leaving nothing.
    let small = dir.path().join("small.snap");
    let small_arg = small.to_str().expect("utf-8 path");
    let args = [
        "snapshot",
        &raft,
        "--save",
        small_arg,
        "--auth-token",
        "s3cret",
    ];
    let out = cli(&[&args[..], &["--max-snapshot-bytes", "100000"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("more than max_snapshot_size"), "{stderr}");
    let names = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(names, 1, "only backup.snap");
    assert!(stdout.contains(file_arg), "{stdout}");
    // A new node from the file alone (it holds the three members of the
    // snapshot's configuration, so alone it elects no leader: its local,
    // stale reads show what it holds).
    let restored_http = format!("127.0.0.1:{}", free_port());
    let restored_raft = format!("127.0.0.1:{}", free_port());
    // Initial members on new addresses: the restored data's win, and the
    // node says so.
    let moved = format!("1={restored_raft},2=127.0.0.1:1,3=127.0.0.1:2");
    let restored = Node::spawn(
        1,
        &restored_http,
        &restored_raft,
        &dir.path().join("restored"),
        &["--restore-snapshot-from", file_arg, "--peers", &moved],
    );
    wait_for_or(
        "the restored node serving every key",
        T,
        || {
            (0..50)
                .all(|i| {
                    let got = get_value(&restored_http, &format!("k{i}"), true);
                    got.as_deref() == Some(&*value(i))
                })
                .then_some(())
        },
        || restored.log_text(),
    );
    let log = restored.log_text();
    assert!(log.contains("the recorded address is used"), "{log}");
    drop(restored);
    // Every disk lost: the whole cluster comes back from the one file, each
    // member with its id and address.
    let members: Vec<(u64, String, String)> = c
        .nodes
        .values()
        .map(|n| (n.id, n.http.clone(), n.raft.clone()))
        .collect();
    let peers = c.peers.clone();
    drop(c);
    let _nodes: Vec<Node> = members
        .iter()
        .map(|(id, http, raft)| {
            let args = [
                "--peers",
                &peers,
                "--auth-token",
                "s3cret",
                "--restore-snapshot-from",
                file_arg,
            ];
            Node::spawn(
                *id,
                http,
                raft,
                &dir.path().join(format!("node-{id}")),
                &args,
            )
        })
        .collect();
    let http = members[0].1.clone();
    wait_for("a write through the restored cluster", T, || {
        put(&http, "after", "restore").then_some(())
    });
    for i in 0..50 {
        let r = request_with(&http, "GET", &format!("/kv/k{i}"), b"", &bearer).expect("GET");
        assert_eq!((r.status, r.text()), (200, value(i)), "k{i}");
    }
}
