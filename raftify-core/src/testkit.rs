//! Helpers for testing raftify clusters in one process (feature `testkit`).
//!
//! A [`Cluster`] runs real nodes (real async loops, real raft-rs) over an
//! [`InProcNetwork`], on any [`LogStore`] a factory provides, so the same
//! scenarios run on [`MemStore`] here and on LMDB in `raftify-storage`.
//! Every wait is bounded and fails with a message naming what it waited for.

use crate::{
    AbstractLogEntry, AbstractStateMachine, Bootstrap, BoxError, Config, Error, InProcNetwork,
    LogStore, MemStore, Raft, Result,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The commands of the test key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCmd {
    /// Set a key; outputs the previous value.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Remove a key; outputs the previous value.
    Delete {
        /// Key.
        key: String,
    },
    /// Set `key` to `new` if it currently equals `expected`; outputs
    /// `"ok"` or `"mismatch"`.
    Cas {
        /// Key.
        key: String,
        /// Expected current value (`None`: absent).
        expected: Option<String>,
        /// New value.
        new: String,
    },
    /// Adds 1 to the integer at `key` (absent: 0); outputs the new value.
    /// Not idempotent: applied twice, it counts twice.
    Incr {
        /// Key.
        key: String,
    },
    /// Always fails in `apply` (to test error propagation).
    Fail,
}

impl AbstractLogEntry for KvCmd {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(self)?)
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A replicated `BTreeMap<String, String>` that also records the order in
/// which entries were applied (to check every node applied the same
/// sequence).
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    /// The data.
    pub map: BTreeMap<String, String>,
    /// Number of user entries applied (including restored ones).
    pub applied: u64,
}

#[async_trait::async_trait]
impl AbstractStateMachine<KvCmd> for KvStore {
    type Output = Vec<u8>;

    fn size_bytes(&self) -> Option<u64> {
        Some(
            self.map
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum(),
        )
    }

    async fn apply(&mut self, entry: KvCmd) -> Result<Vec<u8>, BoxError> {
        self.applied += 1;
        Ok(match entry {
            KvCmd::Put { key, value } => {
                self.map.insert(key, value).unwrap_or_default().into_bytes()
            }
            KvCmd::Delete { key } => self.map.remove(&key).unwrap_or_default().into_bytes(),
            KvCmd::Cas { key, expected, new } => {
                if self.map.get(&key) == expected.as_ref() {
                    self.map.insert(key, new);
                    b"ok".to_vec()
                } else {
                    b"mismatch".to_vec()
                }
            }
            KvCmd::Incr { key } => {
                let n = match self.map.get(&key) {
                    Some(v) => v.parse::<u64>()? + 1,
                    None => 1,
                };
                self.map.insert(key, n.to_string());
                n.to_string().into_bytes()
            }
            KvCmd::Fail => return Err("the Fail command always fails".into()),
        })
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(&(&self.map, self.applied))?)
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        let (map, applied) = serde_json::from_slice(&snapshot)?;
        self.map = map;
        self.applied = applied;
        Ok(())
    }
}

/// A node of the test cluster.
pub type Node = Raft<KvCmd, KvStore>;

/// Makes (or reopens) the store of node `id`.
pub type StoreFactory = Arc<dyn Fn(u64) -> Arc<dyn LogStore> + Send + Sync>;

/// A factory of [`MemStore`]s that hands back the same store when a node
/// restarts.
pub fn mem_factory() -> StoreFactory {
    let stores: Mutex<HashMap<u64, Arc<MemStore>>> = Mutex::new(HashMap::new());
    Arc::new(move |id| {
        let mut s = stores.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(id)
            .or_insert_with(|| Arc::new(MemStore::new()))
            .clone() as Arc<dyn LogStore>
    })
}

/// The configuration test nodes use: 20 ms ticks, elections after
/// 200–400 ms, small snapshots.
pub fn test_config(id: u64) -> Config {
    let mut c = Config::new(id);
    c.tick_interval = Duration::from_millis(20);
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c.proposal_timeout = Duration::from_secs(5);
    c.read_timeout = Duration::from_secs(3);
    c.conf_change_timeout = Duration::from_secs(10);
    c.snapshot_threshold = 0;
    c
}

/// Logs to stderr at info when `RAFTIFY_TEST_LOG` is set, else discards.
pub fn test_logger() -> slog::Logger {
    if std::env::var_os("RAFTIFY_TEST_LOG").is_some() {
        crate::default_logger()
    } else {
        crate::discard_logger()
    }
}

/// Generous bound for cluster-wide waits in tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process cluster of test nodes.
pub struct Cluster {
    /// The network, for fault injection.
    pub net: InProcNetwork,
    nodes: BTreeMap<u64, Node>,
    factory: StoreFactory,
    tweak: Arc<dyn Fn(&mut Config) + Send + Sync>,
}

impl Cluster {
    /// Starts nodes `1..=n` with static bootstrap on in-memory storage.
    pub async fn start(n: u64) -> Result<Cluster> {
        Self::start_with(n, mem_factory(), |_| {}).await
    }

    /// Starts nodes `1..=n` with static bootstrap on the factory's stores,
    /// each config passed through `tweak`.
    pub async fn start_with(
        n: u64,
        factory: StoreFactory,
        tweak: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Result<Cluster> {
        let mut cluster = Cluster {
            net: InProcNetwork::new(n),
            nodes: BTreeMap::new(),
            factory,
            tweak: Arc::new(tweak),
        };
        let members: BTreeMap<u64, String> =
            (1..=n).map(|id| (id, cluster.net.addr_of(id))).collect();
        for id in 1..=n {
            cluster
                .boot(id, Bootstrap::Members(members.clone()))
                .await?;
        }
        Ok(cluster)
    }

    async fn boot(&mut self, id: u64, bootstrap: Bootstrap) -> Result<()> {
        let mut config = test_config(id);
        (self.tweak)(&mut config);
        let node = Raft::builder(config, KvStore::default())
            .storage((self.factory)(id))
            .transport(self.net.transport(id))
            .bootstrap(bootstrap)
            .logger(test_logger())
            .start()
            .await?;
        self.net.register(id, node.handle().inbound());
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Node `id`; panics in tests when it is not running.
    pub fn node(&self, id: u64) -> &Node {
        match self.nodes.get(&id) {
            Some(n) => n,
            None => panic!("node {id} is not running"), // ok: test helper
        }
    }

    /// Ids of the running nodes.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Waits until every node in `among` sees the same leader, itself one of
    /// `among`, and returns it.
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.node(*id).handle().leader_id())
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if among.contains(l)
                    && leaders.iter().all(|x| *x == Some(*l))
                    && self.node(*l).handle().is_leader()
                {
                    return Ok(*l);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every node in `ids` has applied at least `index`.
    pub async fn wait_applied(&self, ids: &[u64], index: u64, timeout: Duration) -> Result<()> {
        for id in ids {
            let mut rx = self.node(*id).handle().subscribe();
            let wait = async move { rx.wait_for(|s| s.applied_index >= index).await.map(|_| ()) };
            match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(())) => {}
                _ => return Err(Error::Timeout(timeout)),
            }
        }
        Ok(())
    }

    /// Proposes `cmd` through whichever node leads, retrying through
    /// elections until `WAIT`. Returns the output.
    pub async fn write(&self, cmd: KvCmd) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.nodes.values().find(|n| n.handle().is_leader());
            let result = match leader {
                Some(n) => n.propose(&cmd).await,
                None => Err(Error::NoLeader),
            };
            match result {
                Err(e) if e.class().may_retry(false) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// `Put` through the leader.
    pub async fn put(&self, key: &str, value: &str) -> Result<Vec<u8>> {
        self.write(KvCmd::Put {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    /// A node's map, read locally.
    pub async fn map_of(&self, id: u64) -> BTreeMap<String, String> {
        self.node(id).stale_read(|s| s.map.clone()).await
    }

    /// Waits until the nodes in `ids` hold identical maps with `min_len`
    /// keys or more.
    pub async fn wait_converged(
        &self,
        ids: &[u64],
        min_len: usize,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut maps = Vec::new();
            for id in ids {
                maps.push(self.map_of(*id).await);
            }
            if maps[0].len() >= min_len && maps.iter().all(|m| *m == maps[0]) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `id` and takes it off the network; its storage stays.
    pub async fn crash(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.handle().shutdown().await;
        }
    }

    /// Starts node `id` again over its storage.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.boot(id, Bootstrap::None).await
    }

    /// Starts a brand-new, empty node `id` (not yet a member).
    pub async fn start_empty(&mut self, id: u64) -> Result<()> {
        self.boot(id, Bootstrap::None).await
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in self.ids() {
            self.crash(id).await;
        }
    }
}

/// Throughput of a 3-node cluster in this process (the framework's own
/// overhead): `proposers` tasks each propose 16-byte entries to the leader
/// in a loop for `secs` seconds. Returns (proposals/s, mean latency in µs)
/// per level. Used by the `inproc_bench` examples of raftify-core (memory)
/// and raftify-storage (LMDB). `RAFTIFY_BENCH_PIPELINE=0` or `1` sets
/// [`Config::pipeline_writes`] (default: the store's choice);
/// `RAFTIFY_BENCH_SESSIONS=1` makes each proposer write in its own client
/// session (exactly-once writes), to measure what sessions cost.
pub async fn cluster_throughput(
    factory: StoreFactory,
    levels: &[usize],
    secs: f64,
) -> Result<Vec<(usize, f64, f64)>> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[derive(Default)]
    struct Counter(u64);

    #[async_trait::async_trait]
    impl AbstractStateMachine<Vec<u8>> for Counter {
        type Output = ();
        async fn apply(&mut self, _e: Vec<u8>) -> Result<(), BoxError> {
            self.0 += 1;
            Ok(())
        }
        async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            Ok(self.0.to_be_bytes().to_vec())
        }
        async fn restore(&mut self, s: Vec<u8>) -> Result<(), BoxError> {
            let b: [u8; 8] = s.as_slice().try_into()?;
            self.0 = u64::from_be_bytes(b);
            Ok(())
        }
    }

    let net = InProcNetwork::new(7);
    let members: BTreeMap<u64, String> = (1..=3).map(|i| (i, net.addr_of(i))).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut c = Config::new(id);
        c.tick_interval = Duration::from_millis(50);
        c.snapshot_threshold = 100_000;
        c.snapshot_log_retention = 10_000;
        // `RAFTIFY_BENCH_PIPELINE=0|1` overrides the store's default, to
        // compare both persistence paths in one run.
        c.pipeline_writes = std::env::var("RAFTIFY_BENCH_PIPELINE")
            .ok()
            .map(|v| v.trim() != "0");
        let n: Raft<Vec<u8>, Counter> = Raft::builder(c, Counter::default())
            .storage(factory(id))
            .transport(net.transport(id))
            .bootstrap(Bootstrap::Members(members.clone()))
            .logger(crate::discard_logger())
            .start()
            .await?;
        net.register(id, n.handle().inbound());
        nodes.push(n);
    }
    let leader_id = nodes[0].handle().wait_for_leader(WAIT).await?;
    let leader = nodes
        .iter()
        .find(|n| n.handle().id() == leader_id)
        .cloned()
        .ok_or(Error::NoLeader)?;
    let sessions = std::env::var("RAFTIFY_BENCH_SESSIONS").is_ok_and(|v| v.trim() == "1");
    let mut out = Vec::new();
    for &n in levels {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let micros = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (leader, stop, done, micros) =
                (leader.clone(), stop.clone(), done.clone(), micros.clone());
            tasks.push(tokio::spawn(async move {
                let entry = vec![0u8; 16];
                let session = match sessions {
                    true => leader.handle().session().await.ok(),
                    false => None,
                };
                while !stop.load(Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    let ok = match &session {
                        Some(s) => s.propose(entry.clone()).await.is_ok(),
                        None => leader.propose(&entry).await.is_ok(),
                    };
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                        micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        let start = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        let d = done.load(Ordering::Relaxed);
        let mean = micros.load(Ordering::Relaxed) as f64 / d.max(1) as f64;
        out.push((n, d as f64 / elapsed, mean));
    }
    for n in nodes {
        n.handle().shutdown().await;
    }
    Ok(out)
}

/// Parses `[LEVELS...] [--secs S]` for the throughput examples.
pub fn bench_args() -> (Vec<usize>, f64) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut secs = 3.0;
    let mut levels = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--secs" {
            secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
        } else if let Ok(n) = a.parse() {
            levels.push(n);
        }
    }
    if levels.is_empty() {
        levels = vec![1, 64, 256, 1024];
    }
    (levels, secs)
}

/// A port of 127.0.0.1 no other caller in this process was given, free
/// when checked, and below the kernel's ephemeral range: a port from
/// `bind(:0)` can be handed to an outgoing connection (a client's, a
/// peer's) between the check and the server's bind, and the server then
/// fails to start. Processes running at once start at different points.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65535);
    let (base, span) = (1024, low - 1024);
    let start = std::process::id() * 7919 % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below {low}");
        let port = (base + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` every 20 ms until it gives a value, or panics after `timeout`
/// naming `what` (blocking: for tests that drive processes or sockets).
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
