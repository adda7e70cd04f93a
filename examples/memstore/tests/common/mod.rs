//! A minimal blocking HTTP/1.1 client for tests (raw TCP, so tests can also
//! send malformed requests), and helpers shared by the test files.
#![allow(dead_code)]

mod cluster;
#[allow(unused_imports)]
pub use cluster::*;
pub mod tls;

use memstore::http::{AppState, HttpAuth, Latencies};
use memstore::store::HashStore;
use raftify_core::{Bootstrap, Config, InProcNetwork, MemStore, Raft};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes, returns the raw response (the server closes after it).
pub fn raw(addr: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    raw_with_timeout(addr, request, Duration::from_secs(20))
}

/// Like [`raw`], giving up reading after `timeout` (for peers that keep the
/// connection open, such as the gRPC port).
pub fn raw_with_timeout(addr: &str, request: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// One request with `Connection: close`.
pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<Resp> {
    request_with(addr, method, path, body, &[])
}

/// One request with `Connection: close` and extra header lines
/// (`"Authorization: Bearer t"`).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[&str],
) -> std::io::Result<Resp> {
    let out = raw(addr, &request_bytes(addr, method, path, body, headers))?;
    parse_response(&out)
}

/// The bytes of one request with `Connection: close`.
pub fn request_bytes(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[&str],
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for h in headers {
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    if body.first() == Some(&b'{') {
        req.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// A whole response, or an error naming what came back.
pub fn parse_response(out: &[u8]) -> std::io::Result<Resp> {
    parse(out).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(out)))
    })
}

fn parse(out: &[u8]) -> Option<Resp> {
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
    Some(Resp { status, body })
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

pub fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, b"").expect("GET failed")
}

pub fn put(addr: &str, path: &str, body: &[u8]) -> Resp {
    request(addr, "PUT", path, body).expect("PUT failed")
}

pub fn post(addr: &str, path: &str, body: &[u8]) -> Resp {
    request(addr, "POST", path, body).expect("POST failed")
}

pub fn delete(addr: &str, path: &str) -> Resp {
    request(addr, "DELETE", path, b"").expect("DELETE failed")
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A port no other test of this process was given, free when checked,
/// below the kernel's ephemeral range (one from `bind(:0)` can be handed
/// out again before the node binds it, e.g. to another node of the test).
pub use raftify_core::testkit::free_port;

/// A `memstore` process; SIGKILLed on drop if still running.
pub struct Node {
    pub id: u64,
    pub http: String,
    pub raft: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Node {
    pub fn spawn(id: u64, http: &str, raft: &str, dir: &Path, extra: &[&str]) -> Node {
        let log = dir.with_extension("log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_memstore"))
            .args([
                "--id",
                &id.to_string(),
                "--web-server",
                http,
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
            .expect("spawn memstore");
        Node {
            id,
            http: http.into(),
            raft: raft.into(),
            dir: dir.into(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout`
/// naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, timeout, f, String::new)
}

/// [`wait_for`], adding `context()` (node logs, say) to the panic message.
pub fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leader id a node reports through /status, when it knows one.
pub fn leader_of(http: &str) -> Option<u64> {
    let r = request(http, "GET", "/status", b"").ok()?;
    if r.status != 200 {
        return None;
    }
    r.json()["leader_id"].as_u64().filter(|l| *l != 0)
}

/// The `raftify-cli` binary, next to `memstore`'s.
///
/// `cargo test --workspace` (or `-p raftify-cli -p memstore`) builds it
/// before any test runs: raftify-cli has integration tests, and cargo
/// builds a package's binaries with them. Only `cargo test -p memstore`
/// alone leaves it unbuilt; then the first caller builds it as a fallback
/// (a build of its own, with its own feature resolution, so it compiles
/// many dependencies again — cargo does not hold its build lock while tests
/// run). An existing binary is used as it is: after changing raftify-cli,
/// test it with the workspace.
pub fn cli_path() -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let path = Path::new(env!("CARGO_BIN_EXE_memstore")).with_file_name("raftify-cli");
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "raftify-cli", "--bin", "raftify-cli"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for raftify-cli");
        assert!(status.success(), "building raftify-cli failed");
    }
    assert!(path.exists(), "raftify-cli not found at {}", path.display());
    path
}

/// The HTTP API's state over a single-node cluster in this process
/// (in-process network, memory storage) that has elected itself; values up
/// to 1 KiB. `state.raft.handle().shutdown()` stops it.
pub async fn single_node_state(auth: HttpAuth) -> AppState {
    let net = InProcNetwork::new(1);
    let mut config = Config::new(1);
    config.tick_interval = Duration::from_millis(20);
    let raft = Raft::builder(config, HashStore::default())
        .storage(Arc::new(MemStore::new()))
        .transport(net.transport(1))
        .bootstrap(Bootstrap::Single {
            addr: net.addr_of(1),
        })
        .logger(raftify_core::discard_logger())
        .start()
        .await
        .expect("start the node");
    net.register(1, raft.handle().inbound());
    raft.handle()
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("a leader");
    let latency = Arc::new(Latencies::register(&raft.handle().metrics_registry()));
    let server = raft.handle().server_metrics("http");
    AppState {
        raft,
        max_value_size: 1024,
        latency,
        auth,
        server,
    }
}

/// The samples of a `/metrics` text, parsed with a Prometheus text-format
/// parser: `(name, labels, value)`.
pub fn parse_metrics(text: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the metrics text parses");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                    f64::NAN
                }
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (s.metric, labels, value)
        })
        .collect()
}

/// The value of the sample `name` (any labels) in a `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    parse_metrics(text)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
}
