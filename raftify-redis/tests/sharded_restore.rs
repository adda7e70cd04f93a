//! `--restore-wal-from` / `--restore-snapshot-from` with `--sharded`: a
//! single-group node's keys loaded into a new sharded cluster — from its
//! WAL (every acknowledged write, after the snapshot too), or from its
//! snapshot (what the snapshot holds) — then served; the restore done
//! once (a restart with the same command line resumes); a restore on a
//! joining node refused.

mod common;

use common::{free_port, show, wait_for, Frame, Node, T};
use std::path::Path;
use std::time::Duration;

/// A single-group node in `dir` with keys `k0..k199` (`v<i>`), a list, a
/// counter and an ACL user `reader` (reads of `k*` keys), snapshotted, then
/// `late0..late19` written after the snapshot; stopped.
fn old_node(dir: &Path) {
    let raft = format!("127.0.0.1:{}", free_port());
    let mut n = Node::spawn(1, free_port(), &raft, dir, &[]);
    let mut c = n.client();
    wait_for("the old node to serve", T, || {
        (show(&c.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    for i in 0..200 {
        assert_eq!(
            show(&c.cmd(&["SET", &format!("k{i}"), &format!("v{i}")])),
            "+OK"
        );
    }
    assert_eq!(show(&c.cmd(&["RPUSH", "list", "a", "b", "c"])), ":3");
    for _ in 0..5 {
        c.cmd(&["INCR", "counter"]);
    }
    let reader = ["ACL", "SETUSER", "reader", "on", ">pw", "~k*", "+@read"];
    assert_eq!(show(&c.cmd(&reader)), "+OK");
    let Frame::Integer(_) = c.cmd(&["RAFT", "SNAPSHOT", "NOW"]) else {
        panic!("RAFT SNAPSHOT NOW");
    };
    for i in 0..20 {
        assert_eq!(show(&c.cmd(&["SET", &format!("late{i}"), "x"])), "+OK");
    }
    assert!(n
        .terminate(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
}

fn sharded(dir: &Path, restore: &[&str]) -> Node {
    let raft = format!("127.0.0.1:{}", free_port());
    let flags: Vec<&str> = ["--sharded"].iter().chain(restore).copied().collect();
    Node::spawn(1, free_port(), &raft, dir, &flags)
}

fn check_restored(n: &Node, with_late: bool) {
    let mut c = n.client();
    wait_for("the restored node to serve", T, || {
        (show(&c.cmd(&["GET", "k0"])) == "$v0").then_some(())
    });
    for i in 0..200 {
        assert_eq!(show(&c.cmd(&["GET", &format!("k{i}")])), format!("$v{i}"));
    }
    assert_eq!(show(&c.cmd(&["LRANGE", "list", "0", "-1"])), "[$a, $b, $c]");
    assert_eq!(show(&c.cmd(&["GET", "counter"])), "$5");
    let late = show(&c.cmd(&["GET", "late19"]));
    assert_eq!(late, if with_late { "$x" } else { "(nil)" });
    // probe, k0..k199, list, counter (+ late0..late19).
    let want = 203 + if with_late { 20 } else { 0 };
    assert_eq!(show(&c.cmd(&["DBSIZE"])), format!(":{want}"));
    // The source's user came along: it authenticates, reads its keys,
    // and may do nothing else.
    let mut r = n.client();
    assert_eq!(show(&r.cmd(&["AUTH", "reader", "pw"])), "+OK");
    assert_eq!(show(&r.cmd(&["GET", "k7"])), "$v7");
    let refused = [
        show(&r.cmd(&["SET", "k7", "x"])),
        show(&r.cmd(&["GET", "counter"])),
    ];
    assert!(
        refused.iter().all(|e| e.starts_with("-NOPERM")),
        "{refused:?}"
    );
    assert!(show(&r.cmd(&["AUTH", "reader", "wrong"])).starts_with("-WRONGPASS"));
}

#[test]
fn a_single_group_nodes_wal_or_snapshot_starts_a_sharded_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    old_node(&old);
    let old_arg = old.to_str().unwrap();

    // From the WAL: every acknowledged write.
    let wal = dir.path().join("from-wal");
    let mut n = sharded(&wal, &["--restore-wal-from", old_arg]);
    check_restored(&n, true);
    assert_eq!(show(&n.client().cmd(&["SET", "new", "1"])), "+OK");
    assert!(n
        .terminate(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    // The same command line again: resumed, not restored over.
    let n = sharded(&wal, &["--restore-wal-from", old_arg]);
    let mut c = n.client();
    wait_for("the node to serve again", T, || {
        (show(&c.cmd(&["GET", "new"])) == "$1").then_some(())
    });
    check_restored_again(&n);
    assert!(n.log_text().contains("restored before"), "{}", n.log_text());
    drop(n);

    // From the old node's snapshot (its store directory): what the
    // snapshot holds, not the later writes.
    let snap = dir.path().join("from-snapshot");
    let n = sharded(&snap, &["--restore-snapshot-from", old_arg]);
    check_restored(&n, false);
    drop(n);

    // A data dir holding a cluster of its own is not restored over.
    let mut over = sharded(&wal_used(dir.path()), &["--restore-wal-from", old_arg]);
    let exited = wait_for("the node to refuse a used data dir", T, || {
        over.child.as_mut()?.try_wait().ok()?
    });
    assert!(!exited.success());
    assert!(
        over.log_text().contains("already holds data"),
        "{}",
        over.log_text()
    );

    // A joining node refuses a restore.
    let mut joining = Node::spawn(
        0,
        free_port(),
        &format!("127.0.0.1:{}", free_port()),
        &dir.path().join("joining"),
        &[
            "--sharded",
            "--join",
            "127.0.0.1:1",
            "--restore-wal-from",
            old_arg,
        ],
    );
    let exited = wait_for("the joining node to refuse", T, || {
        joining.child.as_mut()?.try_wait().ok()?
    });
    assert!(!exited.success());
    assert!(
        joining
            .log_text()
            .contains("give --restore-* to its first node"),
        "{}",
        joining.log_text()
    );
}

/// The data dir of a sharded node started without a restore (and
/// stopped).
fn wal_used(root: &Path) -> std::path::PathBuf {
    let dir = root.join("used");
    let mut n = sharded(&dir, &[]);
    let mut c = n.client();
    wait_for("the node to serve", T, || {
        (show(&c.cmd(&["SET", "mine", "1"])) == "+OK").then_some(())
    });
    assert!(n
        .terminate(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    dir
}

/// After a restart: the restored keys, the list, and the key written
/// after the restore.
fn check_restored_again(n: &Node) {
    let mut c = n.client();
    assert_eq!(show(&c.cmd(&["GET", "k199"])), "$v199");
    assert_eq!(show(&c.cmd(&["GET", "late0"])), "$x");
    assert_eq!(show(&c.cmd(&["DBSIZE"])), ":224");
}
