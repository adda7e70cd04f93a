//! Real-process chaos: a cluster of real `memstore` processes (LMDB,
//! gRPC, HTTP) under concurrent HTTP load, with a seeded nemesis that
//! SIGKILLs and restarts nodes, SIGSTOPs and SIGCONTs them, restarts them
//! cleanly, and — when running as root with `ip netns` — partitions them,
//! each node living in its own network namespace on a private bridge, with
//! blackhole routes cutting links. The client history is checked for
//! linearizability, and every acknowledged write is read back at the end.
//!
//! The binary: `MEMSTORE_BIN` if set, else the `memstore-chaos-node` binary
//! this crate builds from `examples/memstore/src/main.rs` (see
//! [`memstore_bin`]).

use crate::history::{Checked, History, Op, Outcome, Ret};
use crate::netns::Netns;
use crate::rng::SimRng;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Finds the memstore binary: `MEMSTORE_BIN`, else `fallback` (the test
/// passes `env!("CARGO_BIN_EXE_memstore-chaos-node")`), else the
/// `memstore-chaos-node` or `memstore` next to the running executable's
/// target directory.
pub fn memstore_bin(fallback: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEMSTORE_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Some(f) = fallback {
        if Path::new(f).is_file() {
            return Some(PathBuf::from(f));
        }
    }
    let exe = std::env::current_exe().ok()?;
    for dir in exe.ancestors().skip(1).take(3) {
        for name in ["memstore-chaos-node", "memstore"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Seed of the nemesis and the workload.
    pub seed: u64,
    /// Nodes (3 or 5).
    pub nodes: u64,
    /// How long the load and the faults run.
    pub duration: Duration,
    /// Concurrent HTTP clients.
    pub clients: u64,
    /// Registers.
    pub keys: u64,
    /// Use network namespaces and partitions when possible (root + `ip`).
    pub netns: bool,
    /// Raft tick of the nodes, ms.
    pub tick_ms: u64,
}

impl ChaosOptions {
    /// Defaults for `seed`, running `duration`.
    pub fn new(seed: u64, duration: Duration) -> Self {
        ChaosOptions {
            seed,
            nodes: 3,
            duration,
            clients: 4,
            keys: 3,
            netns: true,
            tick_ms: 30,
        }
    }
}

/// Figures of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    /// Options of the run.
    pub options: ChaosOptions,
    /// Whether partitions ran in network namespaces (else loopback only).
    pub netns_used: bool,
    /// Why namespaces were not used, when they were not.
    pub netns_skipped: Option<String>,
    /// History figures.
    pub ops: Checked,
    /// The linearizability verdict.
    pub linearizable: Result<(), String>,
    /// Writes acknowledged (registers and unique keys).
    pub acked_writes: u64,
    /// Acknowledged unique-key writes read back missing or different.
    pub acked_lost: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Whether the cluster served a write and reads after the faults.
    pub recovered: Result<(), String>,
}

impl ChaosReport {
    /// Why the run fails (empty when it passes).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if let Err(e) = &self.linearizable {
            f.push(format!("[linearizability] {e}"));
        }
        if self.acked_lost > 0 {
            f.push(format!(
                "[no_lost_commits] {} acknowledged writes lost",
                self.acked_lost
            ));
        }
        if let Err(e) = &self.recovered {
            f.push(format!("[liveness] {e}"));
        }
        f
    }
}

// ----- a minimal HTTP/1.1 client ------------------------------------------

/// How an HTTP exchange ended.
#[derive(Debug)]
pub enum HttpResult {
    /// Could not connect: the request never left.
    NotSent(String),
    /// Sent, but no complete answer (reset, timeout): outcome unknown.
    NoAnswer(String),
    /// An answer.
    Answer(u16, Vec<u8>),
}

/// The client token the chaos nodes require on their HTTP API.
const CLIENT_TOKEN: &str = "chaos-client-token";

/// One request with `Connection: close`, with the client token.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8], timeout: Duration) -> HttpResult {
    let sock: SocketAddr = match addr.parse() {
        Ok(s) => s,
        Err(e) => return HttpResult::NotSent(format!("bad address {addr}: {e}")),
    };
    let mut s = match TcpStream::connect_timeout(&sock, Duration::from_millis(500)) {
        Ok(s) => s,
        Err(e) => return HttpResult::NotSent(e.to_string()),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {CLIENT_TOKEN}\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if body.first() == Some(&b'{') {
        req.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    if let Err(e) = s.write_all(&req) {
        return HttpResult::NoAnswer(e.to_string());
    }
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        if out.is_empty() {
            return HttpResult::NoAnswer(e.to_string());
        }
    }
    parse(&out).unwrap_or_else(|| {
        HttpResult::NoAnswer(format!("bad response {:?}", String::from_utf8_lossy(&out)))
    })
}

fn parse(out: &[u8]) -> Option<HttpResult> {
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&out[..head_end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = out[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Some(HttpResult::Answer(status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..n)?);
        b = b.get(n + 2..)?;
    }
}

/// A write answer that certainly means "not applied".
fn certainly_not_applied(status: u16, body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    status == 400
        || status == 404
        || status == 413
        || (status == 503
            && (text.contains("not the leader")
                || text.contains("no leader is known")
                || text.contains("proposal dropped")
                || text.contains("too many pending")))
}

// ----- processes -------------------------------------------------------------

struct Proc {
    id: u64,
    http: String,
    raft: String,
    dir: PathBuf,
    ns: Option<String>,
    child: Option<Child>,
    stopped: bool,
}

impl Proc {
    fn start(&mut self, bin: &Path, peers: &str, tick_ms: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .ok();
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--id", &self.id.to_string()])
            .args(["--web-server", &self.http, "--raft-addr", &self.raft])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--peers", peers])
            .args(["--tick-ms", &tick_ms.to_string()])
            // Separate credentials: members use the peer token, the HTTP
            // front-end's forwarding goes through them too.
            .args(["--auth-token", CLIENT_TOKEN])
            .args(["--peer-token", "chaos-peer-token"])
            .args(["--snapshot-threshold", "200"])
            .stdin(Stdio::null());
        match log.and_then(|l| l.try_clone().ok().map(|c| (l, c))) {
            Some((a, b)) => {
                cmd.stdout(a).stderr(b);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        self.child = cmd.spawn().ok();
        self.stopped = false;
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            crate::process::signal(c, sig);
        }
    }

    fn kill(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
            self.stopped = false;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
            self.stopped = false;
        }
        if let Some(c) = self.child.take() {
            crate::process::terminate(c, Duration::from_secs(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn leader_of(http_addr: &str) -> Option<u64> {
    match http(http_addr, "GET", "/status", b"", Duration::from_secs(2)) {
        HttpResult::Answer(200, body) => serde_json::from_slice::<serde_json::Value>(&body).ok()?
            ["leader_id"]
            .as_u64()
            .filter(|l| *l != 0),
        _ => None,
    }
}

struct Shared {
    addrs: Vec<String>,
    history: History,
    acked: AtomicU64,
    unique: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
}

fn client(sh: Arc<Shared>, cid: u64, mut rng: SimRng, keys: u64) {
    let mut generation = 0;
    let mut n = 0;
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let t = Duration::from_secs(3);
    while !sh.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(rng.range(1, 20)));
        let addr = &sh.addrs[rng.below(sh.addrs.len() as u64) as usize];
        let thread = cid * 1_000_000 + generation;
        let key = format!("k{}", rng.below(keys));
        let roll = rng.below(20);
        if roll < 8 {
            let id = sh.history.invoke(thread, &key, Op::Read);
            match http(addr, "GET", &format!("/kv/{key}"), b"", t) {
                HttpResult::Answer(200, v) => {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    seen.insert(key, Some(v.clone()));
                    sh.history.end(id, Outcome::Ok(Ret::Read(Some(v))));
                }
                HttpResult::Answer(404, b) if String::from_utf8_lossy(&b).contains("not found") => {
                    seen.insert(key, None);
                    sh.history.end(id, Outcome::Ok(Ret::Read(None)));
                }
                _ => sh.history.end(id, Outcome::Failed),
            }
            continue;
        }
        n += 1;
        let value = format!("{cid}.{n}");
        if roll < 10 {
            // A unique key, read back at the end.
            let ukey = format!("u-{cid}-{n}");
            if let HttpResult::Answer(200, _) =
                http(addr, "PUT", &format!("/kv/{ukey}"), value.as_bytes(), t)
            {
                sh.acked.fetch_add(1, Ordering::Relaxed);
                sh.unique
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((ukey, value));
            }
            continue;
        }
        let (op, r) = if roll < 15 {
            let op = Op::Write(value.clone());
            let id = sh.history.invoke(thread, &key, op.clone());
            (
                (op, id),
                http(addr, "PUT", &format!("/kv/{key}"), value.as_bytes(), t),
            )
        } else {
            let expected = seen.get(&key).cloned().flatten();
            let op = Op::Cas(expected.clone(), value.clone());
            let id = sh.history.invoke(thread, &key, op.clone());
            let body = serde_json::json!({ "expected": expected, "value": value }).to_string();
            (
                (op, id),
                http(addr, "POST", &format!("/cas/{key}"), body.as_bytes(), t),
            )
        };
        let (op, id) = op;
        match r {
            HttpResult::Answer(200, body) => {
                sh.acked.fetch_add(1, Ordering::Relaxed);
                let ret = match op {
                    Op::Cas(..) => {
                        let ok = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["succeeded"].as_bool());
                        match ok {
                            Some(ok) => Ret::Cas(ok),
                            None => {
                                sh.history.end(id, Outcome::Unknown);
                                generation += 1;
                                continue;
                            }
                        }
                    }
                    _ => Ret::WriteOk,
                };
                if ret != Ret::Cas(false) {
                    seen.insert(key, Some(value));
                }
                sh.history.end(id, Outcome::Ok(ret));
            }
            HttpResult::NotSent(_) => sh.history.end(id, Outcome::Failed),
            HttpResult::Answer(status, body) if certainly_not_applied(status, &body) => {
                sh.history.end(id, Outcome::Failed)
            }
            _ => {
                sh.history.end(id, Outcome::Unknown);
                generation += 1;
            }
        }
    }
}

/// Runs a chaos run with the memstore binary `bin`.
pub fn run(bin: &Path, opts: ChaosOptions) -> ChaosReport {
    let mut rng = SimRng::new(opts.seed);
    let (netns, netns_skipped) = if opts.netns {
        match Netns::setup(opts.nodes) {
            Ok(n) => (Some(n), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, Some("disabled".to_string()))
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut procs: Vec<Proc> = (1..=opts.nodes)
        .map(|id| {
            let (http, raft, ns) = match &netns {
                Some(n) => (
                    format!("{}:8001", n.ip(id)),
                    format!("{}:60061", n.ip(id)),
                    Some(n.ns(id)),
                ),
                None => (
                    format!("127.0.0.1:{}", raftify_core::testkit::free_port()),
                    format!("127.0.0.1:{}", raftify_core::testkit::free_port()),
                    None,
                ),
            };
            Proc {
                id,
                http,
                raft,
                dir: dir.path().join(format!("node-{id}")),
                ns,
                child: None,
                stopped: false,
            }
        })
        .collect();
    let peers = procs
        .iter()
        .map(|p| format!("{}={}", p.id, p.raft))
        .collect::<Vec<_>>()
        .join(",");
    for p in &mut procs {
        p.start(bin, &peers, opts.tick_ms);
    }
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut up = false;
    while Instant::now() < deadline {
        if procs.iter().all(|p| leader_of(&p.http).is_some()) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sh = Arc::new(Shared {
        addrs: procs.iter().map(|p| p.http.clone()).collect(),
        history: History::new(),
        acked: AtomicU64::new(0),
        unique: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    if !up {
        let logs: Vec<String> = procs
            .iter()
            .map(|p| std::fs::read_to_string(p.dir.with_extension("log")).unwrap_or_default())
            .collect();
        return ChaosReport {
            options: opts,
            netns_used: netns.is_some(),
            netns_skipped,
            ops: Checked::default(),
            linearizable: Ok(()),
            acked_writes: 0,
            acked_lost: 0,
            faults,
            recovered: Err(format!(
                "the cluster never elected a leader; logs:\n{}",
                logs.join("\n---\n")
            )),
        };
    }
    let clients: Vec<_> = (1..=opts.clients)
        .map(|cid| {
            let sh = sh.clone();
            let r = rng.fork();
            let keys = opts.keys;
            std::thread::spawn(move || client(sh, cid, r, keys))
        })
        .collect();

    // The nemesis: at most a minority down (killed or stopped) at a time.
    let minority = ((opts.nodes - 1) / 2) as usize;
    let mut down: Vec<(usize, Instant, &'static str)> = Vec::new();
    let end = Instant::now() + opts.duration;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.range(200, 900)));
        // Bring back what is due.
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = down.into_iter().partition(|(_, at, _)| *at <= now);
        down = rest;
        for (i, _, kind) in due {
            match kind {
                "stop" => {
                    procs[i].signal(libc::SIGCONT);
                    procs[i].stopped = false;
                }
                _ => procs[i].start(bin, &peers, opts.tick_ms),
            }
        }
        let i = rng.below(opts.nodes) as usize;
        let back = now + Duration::from_millis(rng.range(300, 2500));
        let busy = down.iter().any(|(j, _, _)| *j == i);
        match rng.below(6) {
            0 | 1 if !busy && down.len() < minority => {
                procs[i].kill();
                down.push((i, back, "kill"));
                *faults.entry("sigkill").or_default() += 1;
            }
            2 if !busy && down.len() < minority => {
                procs[i].signal(libc::SIGSTOP);
                procs[i].stopped = true;
                down.push((i, back, "stop"));
                *faults.entry("sigstop").or_default() += 1;
            }
            3 if !busy && down.len() < minority => {
                procs[i].terminate();
                procs[i].start(bin, &peers, opts.tick_ms);
                *faults.entry("restart").or_default() += 1;
            }
            4 => {
                if let Some(n) = &netns {
                    // Cut one node off from the rest (both ways), or one way.
                    let a = i as u64 + 1;
                    let one_way = rng.chance(0.3);
                    for b in 1..=opts.nodes {
                        if b != a {
                            n.cut(a, b);
                            if !one_way {
                                n.cut(b, a);
                            }
                        }
                    }
                    *faults
                        .entry(if one_way {
                            "partition_one_way"
                        } else {
                            "partition"
                        })
                        .or_default() += 1;
                }
            }
            _ => {
                if let Some(n) = &netns {
                    n.heal();
                    *faults.entry("heal").or_default() += 1;
                }
            }
        }
    }
    // Faults stop.
    if let Some(n) = &netns {
        n.heal();
    }
    for (i, _, kind) in down {
        match kind {
            "stop" => {
                procs[i].signal(libc::SIGCONT);
                procs[i].stopped = false;
            }
            _ => procs[i].start(bin, &peers, opts.tick_ms),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    sh.stop.store(true, Ordering::Release);
    for c in clients {
        let _ = c.join();
    }

    // Recovery: a write through every node, and every acknowledged unique
    // write read back (linearizably) from some node.
    let mut recovered = Err("no node accepted a write within 30 s after the faults".to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    'outer: while Instant::now() < deadline {
        for p in &procs {
            if let HttpResult::Answer(200, _) = http(
                &p.http,
                "PUT",
                "/kv/chaos-probe",
                b"after",
                Duration::from_secs(3),
            ) {
                recovered = Ok(());
                break 'outer;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let unique = sh.unique.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut acked_lost = 0;
    if recovered.is_ok() {
        for (k, v) in &unique {
            let mut got = None;
            for attempt in 0..20 {
                let p = &procs[attempt % procs.len()];
                match http(
                    &p.http,
                    "GET",
                    &format!("/kv/{k}"),
                    b"",
                    Duration::from_secs(3),
                ) {
                    HttpResult::Answer(200, b) => {
                        got = Some(Some(String::from_utf8_lossy(&b).into_owned()));
                        break;
                    }
                    HttpResult::Answer(404, b)
                        if String::from_utf8_lossy(&b).contains("not found") =>
                    {
                        got = Some(None);
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            if got.as_ref() != Some(&Some(v.clone())) {
                acked_lost += 1;
                eprintln!("acknowledged write {k}={v} reads back as {got:?}");
            }
        }
    }
    for p in &mut procs {
        p.terminate();
    }
    let (ops, linearizable) = match sh.history.check() {
        Ok(c) => (c, Ok(())),
        Err(e) => (sh.history.stats(), Err(e)),
    };
    ChaosReport {
        options: opts,
        netns_used: netns.is_some(),
        netns_skipped,
        ops,
        linearizable,
        acked_writes: sh.acked.load(Ordering::Relaxed),
        acked_lost,
        faults,
        recovered,
    }
}
