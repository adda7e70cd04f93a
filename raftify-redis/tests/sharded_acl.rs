//! ACL users on `raftify-redis --sharded`: kept by the metadata group, so
//! a user set on one node authenticates on every node (a node restarted
//! after a SIGKILL, and one that joins later, too), a read-only user is
//! refused writes everywhere, and a user deleted anywhere is gone
//! everywhere.

mod common;

use common::{free_port, show, wait_for, Client, Node, T};

/// `AUTH user pass` on a new connection to `n`: the reply, and the
/// connection.
fn auth(n: &Node, user: &str, pass: &str) -> (String, Client) {
    let mut c = n.client();
    let r = show(&c.cmd(&["AUTH", user, pass]));
    (r, c)
}

#[test]
fn users_set_on_one_node_authenticate_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = common::sharded_three(dir.path(), &["--no-sync"]);
    let mut admin = nodes[1].client();
    assert_eq!(
        show(&admin.cmd(&["ACL", "SETUSER", "reader", "on", ">rpass", "~*", "+@read"])),
        "+OK"
    );
    assert_eq!(
        show(&admin.cmd(&["ACL", "SETUSER", "app", "on", ">apass", "~*", "+@all"])),
        "+OK"
    );
    let bad = show(&admin.cmd(&["ACL", "SETUSER", "x", "sometimes"]));
    assert!(
        bad.starts_with("-ERR Error in ACL SETUSER modifier"),
        "{bad}"
    );

    // Every node knows them (each reads its own copy: wait for it). The
    // ACL is checked before routing: a refusal is the same everywhere.
    for (i, n) in nodes.iter().enumerate() {
        wait_for("the users on every node", T, || {
            (auth(n, "reader", "rpass").0 == "+OK").then_some(())
        });
        let (r, mut app) = auth(n, "app", "apass");
        assert_eq!(r, "+OK");
        let (r, mut reader) = auth(n, "reader", "rpass");
        assert_eq!(r, "+OK");
        if i == 0 {
            // Node 1 hosts the only group (no rebalance asked).
            assert_eq!(show(&app.cmd(&["SET", "k", "v"])), "+OK");
            assert_eq!(show(&reader.cmd(&["GET", "k"])), "$v");
        }
        let refused = show(&reader.cmd(&["SET", "k", "w"]));
        assert!(refused.starts_with("-NOPERM"), "{refused}");
        assert!(auth(n, "reader", "wrong").0.starts_with("-WRONGPASS"));
        let list = show(&n.client().cmd(&["ACL", "LIST"]));
        assert!(
            list.contains("user app on #") && list.contains("user reader on #"),
            "{list}"
        );
        assert!(!list.contains("apass"), "passwords are kept hashed only");
    }

    // A node SIGKILLed and restarted has them from its own data; a node
    // that joins later gets them from the metadata group.
    let port: u16 = nodes[2].port;
    let raft = nodes[2].raft.clone();
    let join = nodes[0].raft.clone();
    nodes[2].kill();
    let data = dir.path().join("n3");
    nodes[2] = Node::spawn(
        0,
        port,
        &raft,
        &data,
        &["--sharded", "--no-sync", "--join", &join],
    );
    let raft4 = format!("127.0.0.1:{}", free_port());
    let args = ["--sharded", "--no-sync", "--join", join.as_str()];
    nodes.push(Node::spawn(
        0,
        free_port(),
        &raft4,
        &dir.path().join("n4"),
        &args,
    ));
    for n in &nodes[2..] {
        wait_for("the users after a restart and a join", T, || {
            (auth(n, "app", "apass").0 == "+OK").then_some(())
        });
    }

    // Deleted on one node, gone on all.
    assert_eq!(
        show(&nodes[0].client().cmd(&["ACL", "DELUSER", "reader"])),
        ":1"
    );
    for n in &nodes {
        wait_for("the user gone on every node", T, || {
            auth(n, "reader", "rpass")
                .0
                .starts_with("-WRONGPASS")
                .then_some(())
        });
    }
}
