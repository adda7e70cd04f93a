//! The embedded cache in one process: single-node API behaviour, then
//! three-node clusters over real gRPC on loopback (TTL expiry, bounds,
//! notifications, locks, every quorum-loss mode).

use raftify_cache::embedded::{
    Cache, CacheBuilder, CacheConfig, CacheError, Consistency, QuorumLoss, WriteAck,
};
use raftify_cache::{Change, ChangeKind};
use raftify_core::testkit::{free_port, test_logger};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::{timeout, Instant};

/// How long a test waits for anything.
const T: Duration = Duration::from_secs(20);
/// Raft tick of the test clusters: a 200 ms election timeout.
const TICK: Duration = Duration::from_millis(20);

fn caches(b: CacheBuilder) -> CacheBuilder {
    b.cache("default", CacheConfig::new())
        .cache(
            "sessions",
            CacheConfig::new()
                .ttl(Duration::from_secs(60))
                .max_entries(10_000),
        )
        .cache("small", CacheConfig::new().max_entries(5))
        .logger(test_logger())
        .tick(TICK)
}

async fn single() -> Cache {
    caches(Cache::builder()).build().await.unwrap()
}

/// Polls `f` every 10 ms until it answers `Some`, for at most `T`.
async fn wait_for<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + T;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ready(c: &Cache) {
    let mut h = c.health();
    timeout(T, h.wait_for(|h| h.ready()))
        .await
        .expect("ready in time")
        .expect("health channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_counters_and_bad_input() {
    // Used at once after the start: the first call waits for the quorum.
    let c = single().await;
    c.put("default", "user:1", &("alice", 42u32)).await.unwrap();
    let v: Option<(String, u32)> = c.get("default", "user:1").await.unwrap();
    assert_eq!(v, Some(("alice".to_string(), 42)));
    // The wrong type: a typed error, and the value is still there.
    match c.get::<Vec<bool>>("default", "user:1").await {
        Err(CacheError::Deserialize { cache, key, .. }) => {
            assert_eq!((cache.as_str(), key.as_str()), ("default", "user:1"))
        }
        other => panic!("{other:?}"),
    }
    let again: Option<(String, u32)> = c.get("default", "user:1").await.unwrap();
    assert!(again.is_some());
    assert!(matches!(
        c.put("nope", "k", &1).await,
        Err(CacheError::UnknownCache(_))
    ));
    assert_eq!(c.incr("default", "n", 5).await.unwrap(), 5);
    assert_eq!(c.incr("default", "n", -7).await.unwrap(), -2);
    assert!(matches!(
        c.incr("default", "user:1", 1).await,
        Err(CacheError::Rejected(_))
    ));
    assert!(!c
        .compare_and_swap("default", "cas", Some(&1), &2)
        .await
        .unwrap());
    assert!(c
        .compare_and_swap("default", "cas", None, &1)
        .await
        .unwrap());
    assert!(c
        .compare_and_swap("default", "cas", Some(&1), &2)
        .await
        .unwrap());
    assert_eq!(c.get::<i32>("default", "cas").await.unwrap(), Some(2));
    let first: String = c
        .get_or_insert_with("default", "once", || "first".to_string())
        .await
        .unwrap();
    let second: String = c
        .get_or_insert_with("default", "once", || "second".to_string())
        .await
        .unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("first", "first"));
    assert!(c.delete("default", "once").await.unwrap());
    assert!(!c.delete("default", "once").await.unwrap());
    assert_eq!(c.get::<String>("default", "once").await.unwrap(), None);
    // The sessions cache's default TTL applies to a plain put.
    c.put("sessions", "s", &1).await.unwrap();
    let expiry = c
        .raft()
        .stale_read(|sm| {
            sm.named()
                .cache(b"sessions")
                .and_then(|n| n.expire_at(b"s"))
        })
        .await;
    let now = raftify_core::unix_ms();
    assert!(
        expiry.is_some_and(|t| t > now + 55_000 && t <= now + 60_000),
        "{expiry:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_ends_an_entry_and_subscribers_see_every_change_in_order() {
    let c = single().await;
    ready(&c).await;
    let mut changes = c.subscribe();
    c.put_with_ttl("default", "t", &"v", Duration::from_millis(150))
        .await
        .unwrap();
    c.put("default", "k", &1).await.unwrap();
    c.delete("default", "k").await.unwrap();
    wait_for("the TTL to end", || async {
        c.get::<String>("default", "t")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let mut seen = vec![];
    while seen.len() < 4 {
        let ch = timeout(T, changes.recv()).await.unwrap().unwrap();
        seen.push((String::from_utf8_lossy(&ch.key).into_owned(), ch.kind));
    }
    assert_eq!(
        seen,
        vec![
            ("t".into(), ChangeKind::Put),
            ("k".into(), ChangeKind::Put),
            ("k".into(), ChangeKind::Delete),
            ("t".into(), ChangeKind::Expire),
        ]
    );
    let mut listener = c.listen("news");
    c.notify("news", "hello").await.unwrap();
    assert_eq!(timeout(T, listener.recv()).await.unwrap().unwrap(), "hello");
    c.shutdown().await;
}

/// A three-node cluster of the embedded cache over loopback gRPC.
struct Trio {
    nodes: BTreeMap<u64, Cache>,
}

impl Trio {
    async fn start(modes: [QuorumLoss; 3]) -> Trio {
        Trio::start_with(|id, b| b.on_quorum_loss(modes[id as usize - 1])).await
    }

    /// Three nodes, each builder changed by `f(id, builder)`.
    async fn start_with(f: impl Fn(u64, CacheBuilder) -> CacheBuilder) -> Trio {
        let members: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let builds = (1..=3u64).map(|id| {
            let b = f(id, caches(Cache::builder()).cluster(id, members.clone()));
            async move { b.build().await.unwrap() }
        });
        let started = futures_join(builds.collect()).await;
        let nodes: BTreeMap<u64, Cache> = started.into_iter().map(|c| (c.id(), c)).collect();
        for c in nodes.values() {
            ready(c).await;
        }
        Trio { nodes }
    }

    fn leader(&self) -> u64 {
        self.nodes[&1].health().borrow().leader.expect("a leader")
    }

    async fn stop(&mut self, id: u64) {
        if let Some(c) = self.nodes.remove(&id) {
            c.shutdown().await;
        }
    }

    async fn shutdown(mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
    }
}

/// Runs the futures concurrently (all nodes must start at once: each
/// waits for the others to elect a leader).
async fn futures_join<T: Send + 'static>(
    fs: Vec<impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Every change a receiver got until `n` of them, or `T`.
async fn collect(rx: &mut broadcast::Receiver<Change>, n: usize) -> Vec<Change> {
    let mut out = vec![];
    while out.len() < n {
        out.push(
            timeout(T, rx.recv())
                .await
                .expect("a change in time")
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_applies_the_same_changes_bounds_and_expiries_across_a_leader_kill() {
    let mut trio = Trio::start([QuorumLoss::Refuse; 3]).await;
    let mut subs: BTreeMap<u64, _> = trio
        .nodes
        .iter()
        .map(|(id, c)| (*id, c.subscribe()))
        .collect();
    let leader = trio.leader();
    let follower = *trio.nodes.keys().find(|id| **id != leader).unwrap();
    let f = trio.nodes[&follower].clone();
    // Writes through a follower; 12 keys into a cache bounded to 5.
    for i in 0..12 {
        f.put("small", format!("k{i:02}"), &i).await.unwrap();
    }
    f.put_with_ttl("default", "short", &1, Duration::from_millis(400))
        .await
        .unwrap();
    // 12 puts and 7 evictions, the put first in each entry.
    let mut logs = BTreeMap::new();
    for (id, rx) in subs.iter_mut() {
        logs.insert(*id, collect(rx, 20).await);
    }
    let first = &logs[&1];
    assert!(
        logs.values().all(|l| l == first),
        "every node saw the same changes"
    );
    let evicted: Vec<_> = first
        .iter()
        .filter(|c| c.kind == ChangeKind::Evict)
        .map(|c| String::from_utf8_lossy(&c.key).into_owned())
        .collect();
    assert_eq!(
        evicted,
        (0..7).map(|i| format!("k{i:02}")).collect::<Vec<_>>()
    );
    for c in trio.nodes.values() {
        let keys = c
            .raft()
            .stale_read(|sm| sm.named().cache(b"small").map(|n| n.len()))
            .await;
        assert_eq!(keys, Some(5), "node {} holds the bound", c.id());
    }
    // The leader goes; the TTL still ends, the same way on both survivors.
    trio.stop(leader).await;
    subs.remove(&leader);
    let mut expired = BTreeMap::new();
    for (id, rx) in subs.iter_mut() {
        let ch = collect(rx, 1).await.remove(0);
        assert_eq!((ch.kind, &ch.key[..]), (ChangeKind::Expire, &b"short"[..]));
        expired.insert(*id, ch.index);
    }
    let indexes: Vec<_> = expired.values().collect();
    assert_eq!(
        indexes[0], indexes[1],
        "expired by the same entry: {expired:?}"
    );
    for c in trio.nodes.values() {
        assert_eq!(c.get::<i32>("default", "short").await.unwrap(), None);
        assert_eq!(c.get::<i32>("small", "k11").await.unwrap(), Some(11));
    }
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_node_once_in_one_order() {
    let trio = Trio::start([QuorumLoss::Refuse; 3]).await;
    let mut listeners: Vec<_> = trio.nodes.values().map(|c| c.listen("jobs")).collect();
    let senders: Vec<Cache> = trio.nodes.values().cloned().collect();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                for i in 0..20 {
                    c.notify("jobs", format!("{}-{i}", c.id())).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut orders = vec![];
    for l in listeners.iter_mut() {
        let mut got = vec![];
        for _ in 0..60 {
            got.push(timeout(T, l.recv()).await.unwrap().unwrap());
        }
        assert!(l.try_recv().is_err(), "no message twice");
        orders.push(got);
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "one order everywhere"
    );
    let mut sorted = orders[0].clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 60, "each message once");
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_has_one_holder_and_a_later_holder_a_larger_token() {
    let trio = Trio::start([QuorumLoss::Refuse; 3]).await;
    let (a, b) = (trio.nodes[&1].clone(), trio.nodes[&2].clone());
    let lease = Duration::from_millis(600);
    let g1 = a.try_lock("job", lease).await.unwrap().expect("free");
    assert!(g1.is_held());
    assert!(b.try_lock("job", lease).await.unwrap().is_none(), "held");
    // Renewals keep it past its first lease.
    tokio::time::sleep(lease * 2).await;
    assert!(g1.is_held());
    assert!(b.try_lock("job", lease).await.unwrap().is_none(), "renewed");
    let t1 = g1.token();
    drop(g1);
    let g2 = timeout(T, b.lock("job", lease)).await.unwrap().unwrap();
    assert!(g2.token() > t1, "{} > {t1}", g2.token());
    assert!(g2.release().await.unwrap());
    assert!(matches!(
        a.try_lock("job", Duration::from_millis(1)).await,
        Err(CacheError::Rejected(_))
    ));
    trio.shutdown().await;
}

/// The survivor of a cluster that lost two nodes, in `mode`, and how long
/// after the loss its linearizable reads stopped being served.
async fn survivor(mode: QuorumLoss) -> (Cache, Trio, Duration) {
    let mut trio = Trio::start([mode; 3]).await;
    let c = trio.nodes[&1].clone();
    c.put("default", "k", &"before").await.unwrap();
    let et = c.election_timeout();
    let lost = Instant::now();
    trio.stop(2).await;
    trio.stop(3).await;
    // The node notices within 2 election timeouts.
    let mut h = c.health();
    timeout(T, h.wait_for(|h| h.leader.is_none()))
        .await
        .unwrap()
        .unwrap();
    let took = lost.elapsed();
    assert!(!c.ready());
    // Two election timeouts, with room for a loaded machine running
    // many clusters at once (the service's test holds the strict bound).
    assert!(
        took < 2 * et + Duration::from_millis(500),
        "{took:?} for {et:?}"
    );
    (c, trio, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_refuses_consensus_reads_and_writes_by_default() {
    let (c, trio, _) = survivor(QuorumLoss::Refuse).await;
    assert!(matches!(
        c.get::<String>("default", "k").await,
        Err(CacheError::Unavailable(_))
    ));
    assert!(matches!(
        c.put("default", "k", &"after").await,
        Err(CacheError::Unavailable(_))
    ));
    let local = c
        .get_with::<String>("default", "k", Consistency::Local)
        .await
        .unwrap();
    assert_eq!(
        (local.value.as_deref(), local.stale),
        (Some("before"), true)
    );
    c.shutdown().await;
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_can_serve_stale_data_marked_stale() {
    let (c, trio, _) = survivor(QuorumLoss::ServeStale).await;
    let read = c
        .get_with::<String>("default", "k", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!((read.value.as_deref(), read.stale), (Some("before"), true));
    assert!(matches!(
        c.incr("default", "n", 1).await,
        Err(CacheError::Unavailable(_))
    ));
    c.shutdown().await;
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_can_hide_every_entry_like_a_wipe() {
    let (c, trio, _) = survivor(QuorumLoss::Wipe).await;
    for consistency in [Consistency::Local, Consistency::Linearizable] {
        let read = c
            .get_with::<String>("default", "k", consistency)
            .await
            .unwrap();
        assert_eq!((read.value, read.stale), (None, true), "{consistency:?}");
    }
    c.shutdown().await;
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_configured_like_pods_form_a_cluster_over_mutual_tls() {
    let pki = raftify_grpc::testkit::TestPki::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca),
        file("node.pem", &pki.node_cert),
        file("node.key", &pki.node_key),
    );
    let other = file("other.pem", &pki.stranger_cert);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let hosts = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let env = |i: usize| -> BTreeMap<String, String> {
        [
            ("HA_MODE", "true".to_string()),
            ("HA_HOSTS", hosts.clone()),
            ("HOSTNAME", format!("cache-{i}")),
            ("CACHE_AUTH_TOKEN", "a-shared-secret-0123".to_string()),
            ("CACHE_TLS", "true".to_string()),
            ("CACHE_TLS_SERVER_CERT", cert.clone()),
            ("CACHE_TLS_SERVER_KEY", key.clone()),
            ("CACHE_TLS_CA_SERVER", ca.clone()),
            ("CACHE_TLS_CLIENT_CERT", cert.clone()),
            ("RAFTIFY_TICK_MS", "20".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    // A client certificate other than the server's is refused, by name.
    let mut bad = env(0);
    bad.insert("CACHE_TLS_CLIENT_CERT".into(), other);
    let e = raftify_cache::embedded::CacheBuilder::from_lookup(&|k: &str| bad.get(k).cloned())
        .err()
        .expect("refused");
    assert!(e.to_string().starts_with("CACHE_TLS_CLIENT_CERT: "), "{e}");
    let starts = (0..3).map(|i| {
        let vars = env(i);
        async move {
            let b =
                raftify_cache::embedded::CacheBuilder::from_lookup(&|k: &str| vars.get(k).cloned())
                    .unwrap();
            b.cache("default", CacheConfig::new())
                .logger(test_logger())
                .build()
                .await
                .unwrap()
        }
    });
    let nodes = futures_join(starts.collect()).await;
    for c in &nodes {
        ready(c).await;
    }
    nodes[2].put("default", "k", &"over TLS").await.unwrap();
    assert_eq!(
        nodes[0]
            .get::<String>("default", "k")
            .await
            .unwrap()
            .as_deref(),
        Some("over TLS")
    );
    for c in nodes {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_live_write_is_applied_on_every_live_member_when_it_returns() {
    let mut trio = Trio::start_with(|_, b| b.write_ack(WriteAck::AllLive)).await;
    let leader = trio.leader();
    let c = trio.nodes[&leader].clone();
    for i in 0..20 {
        c.put("default", format!("k{i}"), &i).await.unwrap();
        // Returned: every member has applied it; a local read sees it.
        for n in trio.nodes.values() {
            let got = n
                .get_with::<i32>("default", format!("k{i}"), Consistency::Local)
                .await
                .unwrap();
            assert_eq!(got.value, Some(i), "node {} after write {i}", n.id());
        }
    }
    // A member that is down is not waited for.
    let other = *trio.nodes.keys().find(|id| **id != leader).unwrap();
    trio.stop(other).await;
    let start = Instant::now();
    c.put("default", "after", &1).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_whose_clock_runs_ahead_ages_nothing() {
    use raftify_cache::{Bound, CacheEntry, NamedOp, Op};
    let trio = Trio::start([QuorumLoss::Refuse; 3]).await;
    let leader = trio.leader();
    let follower = *trio.nodes.keys().find(|id| **id != leader).unwrap();
    let (l, f) = (&trio.nodes[&leader], &trio.nodes[&follower]);
    l.put_with_ttl("default", "a", &1u32, Duration::from_secs(60))
        .await
        .unwrap();
    // A follower whose clock is an hour ahead takes a write: it stamps its
    // own clock, and the proposal is forwarded to the leader.
    let skewed = CacheEntry {
        clock_ms: raftify_core::unix_ms() + 3_600_000,
        op: Op::Named {
            cache: "default".into(),
            bound: Bound::default(),
            op: NamedOp::Put {
                key: "b".into(),
                value: "2".into(),
                ttl_ms: None,
                only_if_absent: false,
            },
        },
    };
    f.raft().propose(&skewed).await.unwrap();
    for c in trio.nodes.values() {
        let clock = c
            .raft()
            .linearizable_read(|sm| sm.keyspace().clock())
            .await
            .unwrap();
        assert!(
            clock < raftify_core::unix_ms() + 60_000,
            "node {}: the replicated clock follows the leader's, not the follower's: {clock}",
            c.id()
        );
        // With the follower's stamp the entry would have aged an hour.
        assert_eq!(
            c.get::<u32>("default", "a").await.unwrap(),
            Some(1),
            "node {}",
            c.id()
        );
        assert!(c
            .get_bytes("default", "b", Consistency::Linearizable)
            .await
            .unwrap()
            .value
            .is_some());
    }
    trio.shutdown().await;
}
