//! Test harness: `raftify-redis` processes on ephemeral ports in temp dirs,
//! a blocking RESP client (frames decoded by `redis-protocol`), and
//! bounded waits.
#![allow(dead_code)]

pub mod workload;

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode_bytes_mut;
pub use redis_protocol::resp2::types::BytesFrame as Frame;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the tests wait for anything.
pub const T: Duration = Duration::from_secs(20);

pub use raftify_core::testkit::{free_port, wait_for};

/// Whether a program is on the PATH; with `RAFTIFY_REQUIRE_REDIS=1` (CI) a
/// missing one fails the test instead of skipping it.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("RAFTIFY_REQUIRE_REDIS").as_deref() != Ok("1"),
            "{program} is required (RAFTIFY_REQUIRE_REDIS=1): apt-get install redis-server redis-tools"
        );
        eprintln!("skipped: {program} is not installed");
    }
    found
}

/// A blocking RESP2 client.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(T))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
        })
    }

    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)
    }

    pub fn read(&mut self) -> std::io::Result<Frame> {
        loop {
            match decode_bytes_mut(&mut self.buf) {
                Ok(Some((f, _, _))) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(format!("bad reply: {e}"))),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One command, its reply.
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Frame> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&args)?;
        self.read()
    }

    /// One command; panics on I/O errors.
    pub fn cmd(&mut self, args: &[&str]) -> Frame {
        self.call(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

/// A field of a node's `INFO` (`name:value` lines), if present.
pub fn info_field(node: &Node, field: &str) -> Option<String> {
    let info = show(&node.client().cmd(&["INFO"]));
    info.split("\\r\\n")
        .chain(info.split("\r\n"))
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
}

/// A reply as text, for comparisons and messages: `+OK`, `:1`, `$v`,
/// `(nil)`, `-ERR ...`, `[a, b]`.
pub fn show(f: &Frame) -> String {
    match f {
        Frame::SimpleString(s) => format!("+{}", String::from_utf8_lossy(s)),
        Frame::Error(e) => format!("-{e}"),
        Frame::Integer(i) => format!(":{i}"),
        Frame::BulkString(b) => format!("${}", String::from_utf8_lossy(b)),
        Frame::Null => "(nil)".into(),
        Frame::Array(items) => format!(
            "[{}]",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A `raftify-redis` process; SIGKILLed on drop if still running.
pub struct Node {
    pub id: u64,
    /// The address clients reach it at (127.0.0.1 but in a namespace).
    pub host: String,
    pub port: u16,
    pub raft: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// `--requirepass`, when given: the harness authenticates with it.
    pub password: Option<String>,
}

impl Node {
    /// Spawns node `id` (0: no `--id`, for a node that joins).
    pub fn spawn(id: u64, port: u16, raft: &str, dir: &Path, extra: &[&str]) -> Node {
        Node::spawn_in(None, "127.0.0.1", id, port, raft, dir, extra)
    }

    /// [`Node::spawn`] inside network namespace `ns` (`ip netns exec`,
    /// which execs the server: the child's pid is the server's), serving
    /// clients on `host:port`.
    pub fn spawn_in(
        ns: Option<&str>,
        host: &str,
        id: u64,
        port: u16,
        raft: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Node {
        let log = dir.with_extension("log");
        let out = std::fs::File::create(&log).expect("log file");
        let bin = env!("CARGO_BIN_EXE_raftify-redis");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        // Id 0: none given (a node joining with --join gets one).
        if id != 0 {
            cmd.args(["--id", &id.to_string()]);
        }
        let child = cmd
            .args([
                "--bind",
                host,
                "--port",
                &port.to_string(),
                "--raft-addr",
                raft,
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(["--tick-ms", "30"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("spawn raftify-redis");
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        Node {
            id,
            host: host.into(),
            port,
            raft: raft.into(),
            dir: dir.into(),
            child: Some(child),
            log,
            password,
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn client(&self) -> Client {
        let addr = self.addr();
        wait_for(&format!("node {} to take connections", self.id), T, || {
            Client::connect(&addr).ok()
        })
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        raftify_reliability::process::terminate(self.child.take()?, timeout)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The leader this node reports (`INFO raft`), if any.
    pub fn leader(&self) -> Option<u64> {
        let mut c = Client::connect(&self.addr()).ok()?;
        c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .ok()?;
        if let Some(p) = &self.password {
            c.call(&["AUTH", p]).ok()?;
        }
        let Frame::BulkString(info) = c.call(&["INFO", "raft"]).ok()? else {
            return None;
        };
        let text = String::from_utf8_lossy(&info).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("raft_leader_id:"))?
            .trim()
            .parse()
            .ok()?;
        (id != 0).then_some(id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes 1..=n bootstrapping one cluster.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    pub peers: String,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u64, u16, String)> = (1..=n)
            .map(|id| (id, free_port(), format!("127.0.0.1:{}", free_port())))
            .collect();
        let peers = ports
            .iter()
            .map(|(id, _, raft)| format!("{id}={raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        for (id, port, raft) in &ports {
            let mut args = vec!["--peers", &peers];
            args.extend_from_slice(extra);
            nodes.insert(
                *id,
                Node::spawn(*id, *port, raft, &dir.path().join(format!("n{id}")), &args),
            );
        }
        Cluster { nodes, peers, dir }
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    /// The leader every running node agrees on. On timeout the panic
    /// shows what each node reported and the end of its log (a node that
    /// could not start, e.g. its port taken, says why there).
    pub fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + T;
        loop {
            let seen: Vec<(u64, Option<u64>)> = self
                .nodes
                .values()
                .filter(|n| n.child.is_some())
                .map(|n| (n.id, n.leader()))
                .collect();
            if let Some((_, Some(l))) = seen.first() {
                if seen.iter().all(|(_, x)| x == &Some(*l)) && self.nodes[l].child.is_some() {
                    return *l;
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .values()
                    .map(|n| {
                        let text = n.log_text();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        format!("--- node {} log (end):\n{}", n.id, tail.join("\n"))
                    })
                    .collect();
                panic!(
                    "timed out waiting for a leader every node agrees on; leaders reported: {seen:?}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn follower_of(&self, leader: u64) -> u64 {
        *self
            .nodes
            .keys()
            .find(|id| **id != leader && self.nodes[id].child.is_some())
            .expect("a running follower")
    }

    /// Restarts a stopped node on its ports and data dir.
    pub fn restart(&mut self, id: u64) {
        let old = self.nodes.remove(&id).expect("node");
        let args = ["--peers", self.peers.as_str()];
        let n = Node::spawn(id, old.port, &old.raft, &old.dir, &args);
        drop(old);
        self.nodes.insert(id, n);
    }
}

/// Waits until `first`'s placement has every node of `joining` (their
/// logs in the panic otherwise).
pub fn joined(first: &Node, joining: &[&Node]) {
    let want = (joining.len() + 1).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while info_field(first, "nodes").as_deref() != Some(want.as_str()) {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = joining.iter().map(|n| n.log_text()).collect();
            panic!("the nodes did not join: {}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A sharded cluster of three nodes in `dir`, every node started with
/// `--sharded` and `flags`: node 1 alone, serving writes, then two nodes
/// joining it (no rebalance asked).
pub fn sharded_three(dir: &Path, flags: &[&str]) -> Vec<Node> {
    let raft1 = format!("127.0.0.1:{}", free_port());
    let first: Vec<&str> = ["--sharded"].iter().chain(flags).copied().collect();
    let n1 = Node::spawn(1, free_port(), &raft1, &dir.join("n1"), &first);
    wait_for("node 1 to serve", T, || {
        (show(&n1.client().cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    let join: Vec<&str> = ["--sharded", "--join", raft1.as_str()]
        .iter()
        .chain(flags)
        .copied()
        .collect();
    let mut nodes = vec![n1];
    for i in 2..=3 {
        let raft = format!("127.0.0.1:{}", free_port());
        nodes.push(Node::spawn(
            0,
            free_port(),
            &raft,
            &dir.join(format!("n{i}")),
            &join,
        ));
    }
    joined(&nodes[0], &[&nodes[1], &nodes[2]]);
    nodes
}

/// A redis-rs cluster connection seeded with `nodes`.
pub fn cluster_connection(nodes: &[&Node]) -> redis::cluster::ClusterConnection {
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("redis://{}/", n.addr()))
        .collect();
    let client = redis::cluster::ClusterClient::builder(urls)
        .retries(20)
        .build()
        .unwrap();
    client.get_connection().unwrap()
}
