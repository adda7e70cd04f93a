//! Sharded nodes over real gRPC on 127.0.0.1: the seed's demo at small
//! scale. Keys are written to one node; two more join; a rebalance gives
//! every node a replica of every group and one group to lead, moving a
//! third of the slots (and their keys) to each new group; every key stays
//! readable from the group that owns its slot, and only there.

use async_trait::async_trait;
use raftify::{ReadFn, Start, Storage};
use raftify_core::testkit::{KvCmd, KvStore};
use raftify_core::{AbstractLogEntry, BoxError};
use raftify_grpc::{GrpcConfig, RaftClient};
use raftify_shard::{
    key_slot, plan, testkit, GroupTransport, Observed, Settings, ShardHost, SlotMover, SlotRange,
    SLOTS,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type Host = ShardHost<KvCmd, KvStore>;

const WAIT: Duration = Duration::from_secs(90);

/// `get:<key>` → the value; `scan:<a>-<b>` → JSON pairs of the keys whose
/// slot is in `a..=b`.
fn reader() -> ReadFn<KvStore> {
    Arc::new(|s: &KvStore, q: &[u8]| {
        let q = std::str::from_utf8(q)?;
        if let Some(key) = q.strip_prefix("get:") {
            return Ok(s.map.get(key).cloned().unwrap_or_default().into_bytes());
        }
        let (a, b) = q
            .strip_prefix("scan:")
            .and_then(|r| r.split_once('-'))
            .ok_or("unknown query")?;
        let range = SlotRange::new(a.parse()?, b.parse()?).ok_or("bad range")?;
        let pairs: Vec<(&String, &String)> = s
            .map
            .iter()
            .filter(|(k, _)| range.contains(key_slot(k.as_bytes())))
            .collect();
        Ok(serde_json::to_vec(&pairs)?)
    })
}

/// Copies a range's keys with the client API: read on the source, put on
/// the target; purging deletes them from the source.
struct KvMover;

impl KvMover {
    fn client(group: u64, addrs: Vec<String>) -> Result<RaftClient, BoxError> {
        Ok(RaftClient::new(addrs, GrpcConfig::default())?.for_group(group))
    }

    async fn scan(c: &RaftClient, slots: SlotRange) -> Result<Vec<(String, String)>, BoxError> {
        let q = format!("scan:{}-{}", slots.start, slots.end).into_bytes();
        Ok(serde_json::from_slice(&c.read(q).await?)?)
    }
}

#[async_trait]
impl SlotMover for KvMover {
    async fn copy(
        &self,
        _: &dyn GroupTransport,
        from: (u64, Vec<String>),
        to: (u64, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError> {
        let (src, dst) = (Self::client(from.0, from.1)?, Self::client(to.0, to.1)?);
        for (key, value) in Self::scan(&src, slots).await? {
            dst.propose(KvCmd::Put { key, value }.encode()?).await?;
        }
        Ok(())
    }

    async fn purge(
        &self,
        _: &dyn GroupTransport,
        from: (u64, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError> {
        let src = Self::client(from.0, from.1)?;
        for (key, _) in Self::scan(&src, slots).await? {
            src.propose(KvCmd::Delete { key }.encode()?).await?;
        }
        Ok(())
    }
}

async fn start(id: Option<u64>, start: Start) -> Host {
    start_at(id, start, "127.0.0.1:0", Storage::Memory).await
}

async fn start_at(id: Option<u64>, start: Start, addr: &str, storage: Storage) -> Host {
    start_with(id, start, addr, storage, None).await
}

async fn start_with(
    id: Option<u64>,
    start: Start,
    addr: &str,
    storage: Storage,
    dead_after: Option<Duration>,
) -> Host {
    let mut spec = testkit::spec(id, start, addr, storage, Settings::default(), false);
    spec.dead_after = dead_after;
    let make = Arc::new(|_| KvStore::default());
    ShardHost::start(spec, make, Some(reader()), Some(Arc::new(KvMover)))
        .await
        .unwrap()
}

async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testkit::wait_for(what, WAIT, f).await
}

/// Writes `n` keys `{prefix}{i}` to the groups owning them (by `p`; all
/// to group 1 when `p` is `None`); what was written.
async fn write_keys(
    client: &RaftClient,
    p: Option<&raftify_shard::Placement>,
    prefix: &str,
    n: usize,
) -> BTreeMap<String, String> {
    let mut written = BTreeMap::new();
    for i in 0..n {
        let (key, value) = (format!("{prefix}{i}"), format!("value of {prefix}{i}"));
        let group = p.map_or(1, |p| p.owner(key_slot(key.as_bytes())));
        let put = KvCmd::Put {
            key: key.clone(),
            value: value.clone(),
        };
        let c = client.for_group(group);
        c.propose(put.encode().unwrap()).await.unwrap();
        written.insert(key, value);
    }
    written
}

/// Waits until every host runs the replicas the placement gives it, with
/// the members it records, and the planner has nothing left to do; asks
/// for a rebalance meanwhile. The placement and the leaders seen.
async fn balanced(hosts: &[&Host]) -> (raftify_shard::Placement, Observed) {
    wait_for("a balanced placement", || async {
        let p = hosts[0].placement().borrow().clone();
        let mut observed = Observed::default();
        for (&g, info) in p.groups() {
            if !info.learners.is_empty() {
                return None;
            }
            for h in hosts.iter().filter(|h| info.replicas.contains(&h.id())) {
                let r = h.group(g).await?;
                let members = r.members().await.ok()?;
                let ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
                if ids != info.replicas.iter().copied().collect::<Vec<_>>() {
                    return None;
                }
                observed
                    .leaders
                    .insert(g, r.wait_for_leader(WAIT).await.ok()?);
            }
        }
        if plan(&p, &observed).is_some() {
            for h in hosts {
                h.rebalance();
            }
            return None;
        }
        Some((p, observed))
    })
    .await
}

/// Every key of `written` readable from the group owning its slot, and
/// from no other group.
async fn check_keys(
    client: &RaftClient,
    p: &raftify_shard::Placement,
    written: &BTreeMap<String, String>,
) {
    for (key, value) in written {
        let owner = p.owner(key_slot(key.as_bytes()));
        for &g in p.groups().keys() {
            let got = client
                .for_group(g)
                .read(format!("get:{key}").into_bytes())
                .await
                .unwrap();
            let want = if g == owner { value.as_bytes() } else { b"" };
            assert_eq!(got, want, "{key} in group {g} (owner {owner})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_one_node_spread_over_three_after_a_rebalance() {
    let first = start(Some(1), Start::Single).await;
    let addr1 = first.raft_addr().to_string();
    let g1 = wait_for("group 1", || async { first.group(1).await }).await;
    g1.wait_for_leader(WAIT).await.unwrap();
    let client = RaftClient::new([addr1.clone()], GrpcConfig::default()).unwrap();
    let written = write_keys(&client, None, "key-", 300).await;

    let join = || testkit::join(&addr1);
    let second = start(None, join()).await;
    let third = start(None, join()).await;
    let hosts = [&first, &second, &third];
    assert_eq!(
        hosts.iter().map(|h| h.id()).collect::<Vec<_>>().len(),
        3,
        "three nodes"
    );
    first.rebalance();
    wait_for("the rebalance to finish", || async {
        let s = first.rebalance_status();
        s.starts_with("done").then_some(())
    })
    .await;

    // The placement is balanced: what the planner says no more to do
    // about (asked again if an election moved a leader meanwhile).
    let (p, observed) = balanced(&hosts).await;
    assert_eq!(p.groups().len(), 3, "{p:?}");
    let counts = p.slot_counts();
    assert!(
        counts
            .values()
            .all(|&c| c.abs_diff(usize::from(SLOTS) / 3) <= 1),
        "{counts:?}"
    );
    let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
    for l in observed.leaders.values() {
        *leads.entry(*l).or_default() += 1;
    }
    assert_eq!(leads.len(), 3, "each node leads one group: {leads:?}");

    // Every key is in the group that owns its slot, and only there.
    check_keys(&client, &p, &written).await;

    for h in [third, second, first] {
        h.shutdown().await;
    }
}

/// A free port on 127.0.0.1 (for a node that restarts at the same
/// address).
fn free_addr() -> String {
    format!("127.0.0.1:{}", raftify_core::testkit::free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_cut_short_by_a_node_stopping_resumes_and_its_data_comes_back() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let disk = |i: usize| Storage::Dir(dirs[i].path().to_path_buf());
    let addr1 = free_addr();
    let first = start_at(Some(1), Start::Single, &addr1, disk(0)).await;
    let g1 = wait_for("group 1", || async { first.group(1).await }).await;
    g1.wait_for_leader(WAIT).await.unwrap();
    let client = RaftClient::new([addr1.clone()], GrpcConfig::default()).unwrap();
    let written = write_keys(&client, None, "k", 200).await;
    // Every group's log is in one shared environment (one journal), the
    // metadata group's too, not a directory each.
    let root = dirs[0].path();
    let segments = std::fs::read_dir(root.join("groups/wal")).unwrap().count();
    assert!((1..=3).contains(&segments), "{segments}");
    assert!(root.join("groups/groups/0/snap").is_dir());
    assert!(root.join("groups/groups/1/snap").is_dir());
    assert!(!root.join("group-1").exists() && !root.join("meta").exists());
    let join = || testkit::join(&addr1);
    let second = start_at(None, join(), "127.0.0.1:0", disk(1)).await;
    let third = start_at(None, join(), "127.0.0.1:0", disk(2)).await;

    // The metadata leader (node 1) stops in the middle of the rebalance:
    // once a second group exists, before the slots have moved.
    first.rebalance();
    wait_for("a second group", || async {
        (first.placement().borrow().groups().len() >= 2).then_some(())
    })
    .await;
    // A handle keeps its replica's storage open, and the host its
    // metadata group's: let go of both.
    drop(g1);
    first.shutdown().await;
    drop(first);

    // The rest elect a metadata leader, which takes the rebalance over as
    // far as it can without node 1; node 1 comes back from its data dir at
    // the same address, with its replicas, and the rebalance finishes.
    second.rebalance();
    third.rebalance();
    let first = start_at(Some(1), Start::Single, &addr1, disk(0)).await;
    let hosts = [&first, &second, &third];
    let (p, _) = balanced(&hosts).await;
    assert_eq!(p.groups().len(), 3, "{p:?}");
    let client = RaftClient::new(
        hosts.iter().map(|h| h.raft_addr().to_string()),
        GrpcConfig::default(),
    )
    .unwrap();
    check_keys(&client, &p, &written).await;
    // The nodes that joined received their replicas' snapshots through a
    // spool file in their data dir, not in memory; none is left over.
    for dir in &dirs[1..] {
        let spool = dir.path().join("incoming-snapshots");
        let left = std::fs::read_dir(&spool).map(|d| d.count());
        assert_eq!(left.ok(), Some(0), "{}", spool.display());
    }

    for h in [third, second, first] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gone_for_good_is_replaced_and_no_key_is_lost() {
    let first = start(Some(1), Start::Single).await;
    let addr1 = first.raft_addr().to_string();
    wait_for("group 1", || async { first.group(1).await })
        .await
        .wait_for_leader(WAIT)
        .await
        .unwrap();
    let join = || testkit::join(&addr1);
    let second = start(None, join()).await;
    let third = start(None, join()).await;
    let hosts = [&first, &second, &third];
    first.rebalance();
    let (p, _) = balanced(&hosts).await;
    assert_eq!(p.groups().len(), 3);
    let client = RaftClient::new([addr1.clone()], GrpcConfig::default()).unwrap();
    let written = write_keys(&client, Some(&p), "k", 200).await;

    // Node 3 dies and will not come back: marked to leave, its replicas
    // and its share of the groups go to the two others (two replicas per
    // group now, two groups), keys and all.
    let gone = third.id();
    third.shutdown().await;
    first.mark_leaving(gone).await.unwrap();
    let hosts = [&first, &second];
    let (p, _) = balanced(&hosts).await;
    assert!(!p.nodes().contains_key(&gone), "{p:?}");
    assert_eq!(p.groups().len(), 2, "{p:?}");
    for info in p.groups().values() {
        assert_eq!(info.replicas.len(), 2);
        assert!(!info.replicas.contains(&gone));
    }
    let meta = first.meta().members().await.unwrap();
    assert!(meta.members.iter().all(|m| m.id != gone), "{meta:?}");
    check_keys(&client, &p, &written).await;

    for h in [second, first] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_dead_after_is_replaced_unasked_and_used_again_when_back() {
    let dead_after = Some(Duration::from_secs(2));
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let disk = |i: usize| Storage::Dir(dirs[i].path().to_path_buf());
    let addrs: Vec<String> = (0..4).map(|_| free_addr()).collect();
    let first = start_with(Some(1), Start::Single, &addrs[0], disk(0), dead_after).await;
    wait_for("group 1", || async { first.group(1).await })
        .await
        .wait_for_leader(WAIT)
        .await
        .unwrap();
    let join = || testkit::join(&addrs[0]);
    let second = start_with(None, join(), &addrs[1], disk(1), dead_after).await;
    let third = start_with(None, join(), &addrs[2], disk(2), dead_after).await;
    let fourth = start_with(None, join(), &addrs[3], disk(3), dead_after).await;
    first.rebalance();
    let (p, _) = balanced(&[&first, &second, &third, &fourth]).await;
    assert_eq!(p.groups().len(), 4, "{p:?}");
    let gone = fourth.id();
    assert!(!p.groups_of(gone).is_empty());
    let client = RaftClient::new(addrs[..3].to_vec(), GrpcConfig::default()).unwrap();
    let written = write_keys(&client, Some(&p), "k", 200).await;

    // Node 4 stops. Nobody asks for a rebalance: after `dead_after` the
    // metadata leader marks it down and gives its groups a replica on the
    // others (each group still 3 replicas, all up; still 4 groups).
    fourth.shutdown().await;
    drop(fourth);
    let hosts = [&first, &second, &third];
    let p = wait_for("node 4's replicas replaced", || async {
        let p = first.placement().borrow().clone();
        if !p.nodes().get(&gone)?.down || !p.groups_of(gone).is_empty() {
            return None;
        }
        for (&g, info) in p.groups() {
            for h in hosts.iter().filter(|h| info.replicas.contains(&h.id())) {
                let members = h.group(g).await?.members().await.ok()?;
                let ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
                if ids != info.replicas.iter().copied().collect::<Vec<_>>() {
                    return None;
                }
            }
        }
        Some(p)
    })
    .await;
    assert_eq!(p.groups().len(), 4, "{p:?}");
    for info in p.groups().values() {
        assert_eq!(info.replicas.len(), 3, "{p:?}");
    }
    check_keys(&client, &p, &written).await;

    // Node 4 comes back (same address, its data dir): marked up, and a
    // rebalance gives it replicas again.
    let fourth = start_with(None, join(), &addrs[3], disk(3), dead_after).await;
    assert_eq!(fourth.id(), gone);
    wait_for("node 4 marked up", || async {
        let p = first.placement().borrow().clone();
        (!p.nodes().get(&gone)?.down).then_some(())
    })
    .await;
    first.rebalance();
    let (p, _) = balanced(&[&first, &second, &third, &fourth]).await;
    assert!(!p.groups_of(gone).is_empty(), "{p:?}");
    check_keys(&client, &p, &written).await;

    for h in [fourth, third, second, first] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_grown_past_its_size_limit_is_split_by_the_rebalance() {
    // ~20 bytes per key, 200 keys: ~4 KB against a 1.5 KB limit.
    let settings = Settings {
        max_group_bytes: 1500,
        ..Settings::default()
    };
    let spec = testkit::spec(
        Some(1),
        Start::Single,
        "127.0.0.1:0",
        Storage::Memory,
        settings,
        false,
    );
    let make = Arc::new(|_| KvStore::default());
    let host: Host = ShardHost::start(spec, make, Some(reader()), Some(Arc::new(KvMover)))
        .await
        .unwrap();
    wait_for("group 1", || async { host.group(1).await })
        .await
        .wait_for_leader(WAIT)
        .await
        .unwrap();
    let client = RaftClient::new([host.raft_addr().to_string()], GrpcConfig::default()).unwrap();
    let written = write_keys(&client, None, "k", 200).await;
    let bytes: u64 = written
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    let want = bytes.div_ceil(1500) as usize;
    assert!(want >= 3, "{bytes} bytes");

    host.rebalance();
    let p = wait_for("the groups to grow with their data", || async {
        let p = host.placement().borrow().clone();
        let done = host.rebalance_status().starts_with("done") && p.groups().len() >= want;
        done.then_some(p)
    })
    .await;
    let counts = p.slot_counts();
    assert!(
        counts
            .values()
            .all(|&c| c.abs_diff(16384 / p.groups().len()) <= 1),
        "{counts:?}"
    );
    check_keys(&client, &p, &written).await;
    host.shutdown().await;
}
