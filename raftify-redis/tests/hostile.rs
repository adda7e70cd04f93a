//! Bad input on the Redis port: each gets Redis's error or a closed
//! connection, and the server goes on serving everyone else. Also stock
//! `redis-cli` against the server.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends `bytes` on a fresh connection and reads until the server closes
/// it (or `wait` passes).
fn exchange_for(addr: &str, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// [`exchange_for`] for requests the server answers by closing.
fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    exchange_for(addr, bytes, T)
}

#[test]
fn malformed_and_oversized_requests_are_refused_and_others_served() {
    let c = Cluster::start(
        1,
        &[
            "--no-sync",
            "--proto-max-bulk-len",
            "1024",
            "--maxclients",
            "40",
        ],
    );
    c.wait_leader();
    let addr = c.node(1).addr();
    // A silent connection and one stopped mid-frame hold nobody up.
    let _silent = TcpStream::connect(&addr).expect("connect");
    let mut half = TcpStream::connect(&addr).expect("connect");
    half.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk")
        .expect("write");

    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n$99999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n+PING\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"SET k \"unterminated\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (bytes, want) in cases {
        let got = exchange(&addr, bytes);
        assert_eq!(
            String::from_utf8_lossy(&got),
            *want,
            "for {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // A line with no end, longer than any inline command: refused.
    let got = exchange(&addr, &vec![b'a'; 70 * 1024]);
    assert!(
        String::from_utf8_lossy(&got).starts_with("-ERR Protocol error: too big inline request")
    );
    // Binary garbage: errors (unknown commands, protocol errors), never a
    // crash: the server still answers below.
    for seed in 1..20u32 {
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = exchange_for(&addr, &garbage, Duration::from_millis(100));
    }

    // Pipelining: 10,000 commands in one write, replies in order.
    let mut cl = c.node(1).client();
    let mut batch = Vec::new();
    for i in 0..10_000 {
        batch.extend_from_slice(
            format!("*2\r\n$4\r\nECHO\r\n${}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
    }
    cl.stream.write_all(&batch).expect("pipeline");
    for i in 0..10_000 {
        assert_eq!(show(&cl.read().expect("reply")), format!("${i}"));
    }
    // Inline commands work (telnet, nc).
    let got = exchange(&addr, b"SET inline \"a b\"\r\nGET inline\r\nQUIT\r\n");
    assert_eq!(String::from_utf8_lossy(&got), "+OK\r\n$3\r\na b\r\n+OK\r\n");

    // More connections than --maxclients (40; three are open here): never
    // more served at once, the others told so and closed.
    let mut held: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    for s in &mut held {
        // Served ones answer PONG; refused ones were told at once.
        let _ = s.write_all(b"PING\r\n");
    }
    let (mut served, mut refused) = (0, 0);
    // All kept open until every answer is in: a closed one frees a slot.
    for s in &mut held {
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut b = [0u8; 64];
        let n = s.read(&mut b).unwrap_or(0);
        match String::from_utf8_lossy(&b[..n]).as_ref() {
            "+PONG\r\n" => served += 1,
            m if m.contains("max number of clients reached") => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let info = show(&cl.cmd(&["INFO", "clients"]));
    assert!(
        served <= 37,
        "{served} served at once with --maxclients 40; {info}"
    );
    assert_eq!(served + refused, 60);
    drop(held);
    // Still serving (the held connections are closed now).
    let mut cl = wait_for("a connection slot", T, || {
        let mut cl = Client::connect(&addr).ok()?;
        (show(&cl.call(&["PING"]).ok()?) == "+PONG").then_some(cl)
    });
    assert_eq!(show(&cl.cmd(&["SET", "k", "v"])), "+OK");
    drop(half);
}

#[test]
fn requirepass_refuses_commands_until_auth() {
    let c = Cluster::start(1, &["--no-sync", "--requirepass", "s3cret"]);
    let mut cl = c.node(1).client();
    assert!(show(&cl.cmd(&["GET", "k"])).starts_with("-NOAUTH"));
    assert!(show(&cl.cmd(&["AUTH", "wrong"])).starts_with("-WRONGPASS"));
    assert_eq!(show(&cl.cmd(&["AUTH", "s3cret"])), "+OK");
    assert_eq!(show(&cl.cmd(&["PING"])), "+PONG");
    // HELLO with AUTH authenticates and switches protocol at once.
    let mut c3 = c.node(1).client();
    let hello = c3.call(&["HELLO", "3", "AUTH", "default", "s3cret"]);
    assert!(hello.is_err() || !show(&hello.expect("reply")).starts_with('-'));
}

#[test]
fn redis_cli_talks_to_the_server() {
    if !have("redis-cli") {
        return;
    }
    let c = Cluster::start(1, &["--no-sync"]);
    c.wait_leader();
    let port = c.node(1).port.to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello world");
    assert_eq!(cli(&["RPUSH", "l", "a", "b"]), "2");
    assert_eq!(cli(&["LRANGE", "l", "0", "-1"]), "a\nb");
    assert_eq!(cli(&["-3", "HSET", "h", "f", "v"]), "1");
    assert_eq!(cli(&["DBSIZE"]), "3");
    assert!(cli(&["INFO", "raft"]).contains("raft_role:leader"));
    // redis-cli's interactive start-up asks COMMAND DOCS; piped input too.
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("printf 'PING\\nGET greeting\\n' | redis-cli -p {port}"),
        ])
        .output()
        .expect("pipe into redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG\nhello world"
    );
}

#[test]
fn acl_users_are_replicated_hashed_and_read_only_users_cannot_write() {
    let c = Cluster::start(3, &["--no-sync", "--requirepass", "admin"]);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    let mut admin = c.node(follower).client();
    assert_eq!(show(&admin.cmd(&["AUTH", "admin"])), "+OK");
    assert_eq!(show(&admin.cmd(&["SET", "k", "v"])), "+OK");
    assert_eq!(
        show(&admin.cmd(&[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">s3cret",
            "~*",
            "+@read",
            "+@transaction",
            "+acl|whoami"
        ])),
        "+OK"
    );
    assert!(show(&admin.cmd(&["ACL", "SETUSER", "bad", "bogus-rule"])).contains("Syntax error"));
    let list = show(&admin.cmd(&["ACL", "LIST"]));
    assert!(
        list.contains("user reader on #") && !list.contains("s3cret"),
        "only hashes: {list}"
    );
    assert_eq!(show(&admin.cmd(&["ACL", "WHOAMI"])), "$default");
    // The user exists on every node (through the log).
    for id in 1..=3 {
        let mut r = c.node(id).client();
        wait_for(&format!("the user on node {id}"), T, || {
            (show(&r.cmd(&["AUTH", "reader", "s3cret"])) == "+OK").then_some(())
        });
        assert_eq!(show(&r.cmd(&["ACL", "WHOAMI"])), "$reader");
        assert_eq!(show(&r.cmd(&["GET", "k"])), "$v");
        assert_eq!(
            show(&r.cmd(&["SET", "k", "x"])),
            "-NOPERM this user has no permissions to run the 'set' command"
        );
        assert!(show(&r.cmd(&["ACL", "SETUSER", "x", "on"])).starts_with("-NOPERM"));
        // Refused when queued; the transaction is then discarded.
        assert_eq!(show(&r.cmd(&["MULTI"])), "+OK");
        let queued = show(&r.cmd(&["INCR", "n"]));
        assert!(
            queued.starts_with("-NOPERM") && queued.contains("'incr'"),
            "{queued}"
        );
        assert_eq!(
            show(&r.cmd(&["EXEC"])),
            "-EXECABORT Transaction discarded because of previous errors."
        );
        assert!(show(&r.cmd(&["AUTH", "reader", "wrong"])).starts_with("-WRONGPASS"));
    }
    // Key patterns: a user limited to `svc:*` touches nothing else, in a
    // command, a transaction or a WATCH.
    assert_eq!(
        show(&admin.cmd(&["ACL", "SETUSER", "svc", "on", ">pw", "~svc:*", "+@all"])),
        "+OK"
    );
    let mut svc = c.node(leader).client();
    wait_for("the svc user", T, || {
        (show(&svc.cmd(&["AUTH", "svc", "pw"])) == "+OK").then_some(())
    });
    assert_eq!(show(&svc.cmd(&["SET", "svc:a", "1"])), "+OK");
    let denied = "-NOPERM No permissions to access a key";
    assert_eq!(show(&svc.cmd(&["GET", "k"])), denied);
    assert_eq!(
        show(&svc.cmd(&["MSET", "svc:b", "1", "other", "2"])),
        denied
    );
    assert_eq!(show(&svc.cmd(&["WATCH", "k"])), denied);
    svc.cmd(&["MULTI"]);
    assert_eq!(show(&svc.cmd(&["INCR", "svc:n"])), "+QUEUED");
    assert_eq!(show(&svc.cmd(&["INCR", "other"])), denied);
    assert_eq!(
        show(&svc.cmd(&["EXEC"])),
        "-EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(
        show(&svc.cmd(&["GET", "svc:n"])),
        "(nil)",
        "nothing applied"
    );
    let user = show(&admin.cmd(&["ACL", "GETUSER", "svc"]));
    assert!(user.contains("~svc:*"), "{user}");
    // Channel patterns: publish and subscribe within `news.*` only.
    assert_eq!(
        show(&admin.cmd(&["ACL", "SETUSER", "svc", "resetchannels", "&news.*"])),
        "+OK"
    );
    let no_channel = "-NOPERM No permissions to access a channel";
    wait_for("the channel rule on the leader", T, || {
        (show(&svc.cmd(&["PUBLISH", "chat", "x"])) == no_channel).then_some(())
    });
    assert!(matches!(
        svc.cmd(&["PUBLISH", "news.b", "x"]),
        Frame::Integer(_)
    ));
    let mut sub = c.node(leader).client();
    assert_eq!(show(&sub.cmd(&["AUTH", "svc", "pw"])), "+OK");
    assert_eq!(show(&sub.cmd(&["SUBSCRIBE", "chat"])), no_channel);
    assert_eq!(show(&sub.cmd(&["PSUBSCRIBE", "*"])), no_channel);
    assert_eq!(
        show(&sub.cmd(&["PSUBSCRIBE", "news.*"])),
        "[$psubscribe, $news.*, :1]"
    );
    assert_eq!(
        show(&sub.cmd(&["SUBSCRIBE", "news.a"])),
        "[$subscribe, $news.a, :2]"
    );
    // Its channels narrowed: the subscribed connection is closed (as Redis
    // disconnects it) at the next message it may no longer receive.
    assert_eq!(
        show(&admin.cmd(&["ACL", "SETUSER", "svc", "resetchannels", "&other"])),
        "+OK"
    );
    wait_for("the subscriber disconnected", T, || {
        admin.cmd(&["PUBLISH", "news.a", "late"]);
        // A message delivered before the change applied here, or the end.
        match sub.read() {
            Ok(_) => None,
            Err(_) => Some(()),
        }
    });
    assert_eq!(
        show(&admin.cmd(&["EXISTS", "other", "svc:n"])),
        ":0",
        "nothing of the refused"
    );

    // Deleted: no more logins.
    assert_eq!(show(&admin.cmd(&["ACL", "DELUSER", "reader"])), ":1");
    let mut r = c.node(leader).client();
    wait_for("the user to be gone", T, || {
        show(&r.cmd(&["AUTH", "reader", "s3cret"]))
            .starts_with("-WRONGPASS")
            .then_some(())
    });
    assert_eq!(
        show(&admin.cmd(&["GET", "k"])),
        "$v",
        "nothing was written by the reader"
    );
}
