//! The cache sharded over Raft groups: three sharded nodes over real gRPC
//! on 127.0.0.1 host cache groups; keys of every type (with TTLs) are
//! written to the first node's single group, two nodes join, and a
//! rebalance moves two thirds of the slots, keys included, to new groups.
//! Every key is then in the group that owns its slot with its value and
//! TTL, and in no other group; the group it left refuses it.

use bytes::Bytes;
use raftify::{ReadFn, Start, Storage};
use raftify_cache::{key_slot, CacheEntry, CacheSlotMover, CacheState, Op, Reply};
use raftify_core::{unix_ms, AbstractLogEntry, Payload};
use raftify_grpc::{GrpcConfig, RaftClient};
use raftify_shard::{plan, testkit, Observed, Settings, ShardHost};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type Host = ShardHost<CacheEntry, CacheState>;

const WAIT: Duration = Duration::from_secs(90);

/// A read query is a command's arguments as a JSON array of strings.
fn reader() -> ReadFn<CacheState> {
    Arc::new(|s: &CacheState, q: &[u8]| {
        let args: Vec<String> = serde_json::from_slice(q)?;
        let argv: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
        Payload::encode(&s.read(&argv))
    })
}

async fn read(c: &RaftClient, group: u64, args: &[&str]) -> Reply {
    let q = serde_json::to_vec(args).unwrap();
    let out = c.for_group(group).read(q).await.unwrap();
    <Reply as Payload>::decode(&out).unwrap()
}

async fn write(c: &RaftClient, group: u64, args: &[&str]) -> Reply {
    let entry = CacheEntry {
        clock_ms: unix_ms(),
        op: Op::Exec {
            commands: vec![args
                .iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect()],
            transaction: false,
            watched: Vec::new(),
        },
    };
    let out = c
        .for_group(group)
        .propose(entry.encode().unwrap())
        .await
        .unwrap();
    <Reply as Payload>::decode(&out).unwrap()
}

async fn start(id: Option<u64>, start: Start) -> Host {
    let spec = testkit::spec(
        id,
        start,
        "127.0.0.1:0",
        Storage::Memory,
        Settings::default(),
        false,
    );
    let make = Arc::new(|_| CacheState::new());
    let mover = CacheSlotMover { chunk: 1000 };
    ShardHost::start(spec, make, Some(reader()), Some(Arc::new(mover)))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_keys_move_with_their_slots() {
    let first = start(Some(1), Start::Single).await;
    let addr1 = first.raft_addr().to_string();
    wait_for("group 1", || async { first.group(1).await })
        .await
        .wait_for_leader(WAIT)
        .await
        .unwrap();
    let client = RaftClient::new([addr1.clone()], GrpcConfig::default()).unwrap();
    let mut strings = BTreeMap::new();
    for i in 0..200 {
        let (k, v) = (format!("s{i}"), format!("v{i}"));
        assert_eq!(write(&client, 1, &["set", &k, &v]).await, Reply::Ok);
        strings.insert(k, v);
    }
    // Other types, a hash tag (both keys move together), a TTL.
    write(&client, 1, &["rpush", "{user:7}:log", "a", "b", "c"]).await;
    write(&client, 1, &["hset", "{user:7}:profile", "name", "ada"]).await;
    write(&client, 1, &["sadd", "set", "x", "y"]).await;
    write(&client, 1, &["zadd", "z", "1.5", "m"]).await;
    write(&client, 1, &["set", "ttl", "t", "ex", "3600"]).await;

    let join = || testkit::join(&addr1);
    let second = start(None, join()).await;
    let third = start(None, join()).await;
    let hosts = [&first, &second, &third];
    first.rebalance();
    let p = wait_for("a balanced placement", || async {
        let p = first.placement().borrow().clone();
        let mut observed = Observed::default();
        for &g in p.groups().keys() {
            for h in hosts {
                let r = h.group(g).await?;
                observed
                    .leaders
                    .insert(g, r.wait_for_leader(WAIT).await.ok()?);
            }
        }
        if p.groups().len() == 3 && plan(&p, &observed).is_none() {
            Some(p)
        } else {
            first.rebalance();
            None
        }
    })
    .await;
    assert!(p.moving().is_none());

    let owner = |key: &str| p.owner(key_slot(key.as_bytes()));
    let moved = strings.keys().filter(|k| owner(k) != 1).count();
    assert!(moved > 100, "two thirds of the keys moved: {moved}");
    for (k, v) in &strings {
        for &g in p.groups().keys() {
            let got = read(&client, g, &["get", k]).await;
            if g == owner(k) {
                assert_eq!(got, Reply::Bulk(Bytes::from(v.clone())), "{k} in {g}");
            } else if g == 1 {
                // Group 1 gave the slot away: a client routed by an old
                // placement is told to ask again, not answered "missing".
                let slot = key_slot(k.as_bytes());
                let again =
                    format!("TRYAGAIN slot {slot} is moving or moved to another group; try again");
                assert_eq!(got, Reply::Error(again), "{k} in {g}");
            } else {
                assert_eq!(got, Reply::Nil, "{k} in {g}");
            }
        }
    }
    let g = owner("{user:7}:log");
    assert_eq!(g, owner("{user:7}:profile"));
    assert_eq!(
        read(&client, g, &["lrange", "{user:7}:log", "0", "-1"]).await,
        Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b"), Reply::bulk("c")])
    );
    assert_eq!(
        read(&client, g, &["hget", "{user:7}:profile", "name"]).await,
        Reply::bulk("ada")
    );
    assert_eq!(
        read(&client, owner("set"), &["scard", "set"]).await,
        Reply::Int(2)
    );
    assert_eq!(
        read(&client, owner("z"), &["zscore", "z", "m"]).await,
        Reply::Double(1.5)
    );
    let Reply::Int(ttl) = read(&client, owner("ttl"), &["ttl", "ttl"]).await else {
        panic!("ttl is an integer")
    };
    assert!((3500..=3600).contains(&ttl), "the TTL moved along: {ttl}");
    // No group is left with frozen slots: each accepts writes to the
    // slots it owns.
    for (k, _) in strings.iter().take(20) {
        assert_eq!(
            write(&client, owner(k), &["set", k, "new"]).await,
            Reply::Ok
        );
    }

    for h in [third, second, first] {
        h.shutdown().await;
    }
}
