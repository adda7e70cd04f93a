//! Test harness: `cache-service` processes started with the environment a
//! StatefulSet pod gets (`HOSTNAME=cache-N`, `HA_HOSTS` of every pod),
//! on loopback ports, in temp dirs; a blocking HTTP client; bounded waits.
#![allow(dead_code)]

pub use raftify_core::testkit::{free_port, wait_for};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the tests wait for anything.
pub const T: Duration = Duration::from_secs(30);
/// The raft tick the pods run with (an election timeout of 500 ms).
pub const TICK_MS: u64 = 50;

/// The election timeout of the test pods.
pub fn election_timeout() -> Duration {
    Duration::from_millis(TICK_MS * 10)
}

/// An answer: status, body, and whether it was marked stale.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub stale: bool,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP request; a connection failure is `None`.
pub fn http(method: &str, url: &str, body: &[u8]) -> Option<Answer> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let r = match agent.request(method, url).send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(_)) => return None,
    };
    let status = r.status();
    let stale = r.header("x-cache-stale") == Some("true");
    let body = r.into_string().unwrap_or_default();
    Some(Answer {
        status,
        body,
        stale,
    })
}

/// One pod: a `cache-service` process.
pub struct Pod {
    pub ordinal: usize,
    pub http: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub data_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Pod {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn get(&self, path: &str) -> Option<Answer> {
        http("GET", &self.url(path), b"")
    }

    pub fn put(&self, path: &str, body: &[u8]) -> Option<Answer> {
        http("PUT", &self.url(path), body)
    }

    /// Whether `/ready` answers 200.
    pub fn ready(&self) -> bool {
        self.get("/ready").is_some_and(|a| a.status == 200)
    }

    /// The members this pod's node lists (from `/health`).
    pub fn members(&self) -> Vec<u64> {
        self.get("/health")
            .map(|a| a.json())
            .and_then(|j| {
                j["members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|v| v.as_u64()).collect())
            })
            .unwrap_or_default()
    }

    /// (Re)starts the process with its environment.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache-service"));
        // Its own working directory: no stray `.env` is read.
        let cwd = self.log.parent().expect("the log's dir").to_path_buf();
        cmd.env_clear()
            .current_dir(cwd)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn cache-service"));
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits for the exit (bounded).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        raftify_reliability::process::terminate(self.child.take()?, T)
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, ...) to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            raftify_reliability::process::signal(c, sig);
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces `HA_HOSTS` (a scaled StatefulSet's new template).
    pub fn set_hosts(&mut self, hosts: &str) {
        for (k, v) in &mut self.env {
            if k == "HA_HOSTS" {
                *v = hosts.to_string();
            }
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // A stopped process is resumed so that SIGKILL's wait returns.
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// A StatefulSet of pods on loopback.
pub struct StatefulSet {
    pub dir: tempfile::TempDir,
    pub raft_ports: Vec<u16>,
    pub pods: Vec<Pod>,
    pub durable: bool,
}

impl StatefulSet {
    /// `replicas` pods (in memory, or with a `DATA_DIR` each when
    /// `durable`), started at once, not yet waited for.
    pub fn start(replicas: usize, durable: bool) -> StatefulSet {
        let mut s = StatefulSet {
            dir: tempfile::tempdir().expect("temp dir"),
            raft_ports: vec![],
            pods: vec![],
            durable,
        };
        for _ in 0..replicas {
            s.raft_ports.push(free_port());
        }
        let hosts = s.hosts(replicas);
        for i in 0..replicas {
            let mut pod = s.pod(i, &hosts);
            pod.start();
            s.pods.push(pod);
        }
        s
    }

    /// `HA_HOSTS` for the first `n` pods.
    pub fn hosts(&self, n: usize) -> String {
        self.raft_ports[..n]
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn pod(&self, ordinal: usize, hosts: &str) -> Pod {
        let http = format!("127.0.0.1:{}", free_port());
        let data_dir = self
            .durable
            .then(|| self.dir.path().join(format!("data-{ordinal}")));
        let mut env = vec![
            ("HA_MODE".to_string(), "true".to_string()),
            ("HA_HOSTS".to_string(), hosts.to_string()),
            ("HOSTNAME".to_string(), format!("cache-{ordinal}")),
            (
                "CACHE_AUTH_TOKEN".to_string(),
                "test-token-0123456789".to_string(),
            ),
            ("LISTEN_ADDR".to_string(), http.clone()),
            ("RAFTIFY_TICK_MS".to_string(), TICK_MS.to_string()),
            ("RAFTIFY_NO_SYNC".to_string(), "true".to_string()),
        ];
        if let Some(d) = &data_dir {
            env.push(("DATA_DIR".to_string(), d.display().to_string()));
        }
        Pod {
            ordinal,
            http,
            child: None,
            log: self.dir.path().join(format!("cache-{ordinal}.log")),
            data_dir,
            env,
        }
    }

    /// Adds pods up to `replicas` with `HA_HOSTS` of that many (a scale-up).
    pub fn scale_up(&mut self, replicas: usize) {
        while self.raft_ports.len() < replicas {
            self.raft_ports.push(free_port());
        }
        let hosts = self.hosts(replicas);
        for i in self.pods.len()..replicas {
            let mut pod = self.pod(i, &hosts);
            pod.start();
            self.pods.push(pod);
        }
    }

    /// Waits until every running pod is ready; panics with the logs if not.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + T;
        loop {
            let mut all = true;
            for p in &mut self.pods {
                if p.child.is_some() {
                    assert!(p.running(), "cache-{} exited:\n{}", p.ordinal, p.log_text());
                    all &= p.ready();
                }
            }
            if all {
                return;
            }
            if Instant::now() > deadline {
                panic!("pods not ready in time:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        self.pods
            .iter()
            .map(|p| format!("--- cache-{} ---\n{}", p.ordinal, p.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
