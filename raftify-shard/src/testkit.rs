//! Helpers for tests and examples of sharded nodes (feature `testkit`).

use crate::placement::Settings;
use crate::ShardSpec;
use raftify::{NodeSpec, Start, Storage};
use std::future::Future;
use std::time::Duration;

/// The spec of a test node on 127.0.0.1 (`addr`, port 0 for any) with
/// `storage`, started as `start`, rebalancing by itself when `auto`.
pub fn spec(
    id: Option<u64>,
    start: Start,
    addr: &str,
    storage: Storage,
    settings: Settings,
    auto: bool,
) -> ShardSpec {
    let mut node = NodeSpec::new();
    node.id = id;
    node.raft_addr = Some(addr.into());
    node.storage = storage;
    node.start = start;
    node.logger = raftify_core::testkit::test_logger();
    ShardSpec {
        node,
        client_addr: "127.0.0.1:1".into(),
        settings,
        auto_rebalance: auto,
        dead_after: None,
        on_broadcast: None,
        shared: None,
    }
}

/// Joining the cluster of the node whose raft address is `addr`.
pub fn join(addr: &str) -> Start {
    Start::Join {
        via: vec![addr.to_string()],
        as_learner: false,
    }
}

/// Polls `f` every 100 ms until it gives a value; panics naming `what`
/// after `timeout`.
#[allow(clippy::panic)]
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
