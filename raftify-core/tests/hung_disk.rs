//! A disk that stops answering: a store whose writes block (as an fsync
//! does) is written by the loop's writer thread, which cannot be
//! interrupted; the loop itself must then stop the node once the write has
//! taken `storage_timeout` (plus a tick) and fail what waits, rather than
//! hang every caller — without waiting for the hung thread again.

use raft::eraftpb::{Entry, Snapshot};
use raftify_core::storage::{StorageResult, StoreIdentity};
use raftify_core::testkit::{Cluster, KvCmd, StoreFactory, WAIT};
use raftify_core::{Error, LogStore, MemStore, Role, WriteBatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A [`MemStore`] that says its writes block, and whose writes hang while
/// `hung` is set (until it is cleared again).
struct HangingStore {
    inner: MemStore,
    hung: Arc<AtomicBool>,
}

impl HangingStore {
    fn wait_while_hung(&self) {
        while self.hung.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl LogStore for HangingStore {
    fn initial_state(&self) -> StorageResult<raft::RaftState> {
        self.inner.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>> {
        self.inner.entries(low, high, max_size)
    }
    fn term(&self, idx: u64) -> StorageResult<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> StorageResult<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> StorageResult<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> StorageResult<Snapshot> {
        self.inner.snapshot()
    }
    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        self.wait_while_hung();
        self.inner.write(batch)
    }
    fn save_snapshot(&self, snapshot: Snapshot) -> StorageResult<()> {
        self.inner.save_snapshot(snapshot)
    }
    fn compact(&self, index: u64) -> StorageResult<()> {
        self.inner.compact(index)
    }
    fn identity(&self) -> StorageResult<Option<StoreIdentity>> {
        self.inner.identity()
    }
    fn set_identity(&self, identity: &StoreIdentity) -> StorageResult<()> {
        self.inner.set_identity(identity)
    }
    fn blocking_writes(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_never_returns_stops_the_node_within_the_storage_timeout() {
    let hung = Arc::new(AtomicBool::new(false));
    let store = Arc::new(HangingStore {
        inner: MemStore::new(),
        hung: hung.clone(),
    });
    let factory: StoreFactory = Arc::new(move |_| store.clone() as Arc<dyn LogStore>);
    let limit = Duration::from_millis(600);
    let c = Cluster::start_with(1, factory, move |c| c.storage_timeout = limit)
        .await
        .unwrap();
    c.wait_leader(&[1], WAIT).await.unwrap();
    c.put("before", "1").await.unwrap();

    hung.store(true, Ordering::Release);
    let started = Instant::now();
    let r = c
        .node(1)
        .propose(&KvCmd::Put {
            key: "during".into(),
            value: "2".into(),
        })
        .await;
    // Proposed and written (never durably): its outcome is not known.
    assert!(
        matches!(r, Err(Error::Interrupted(_)) | Err(Error::Fatal(_))),
        "got {r:?}"
    );
    let handle = c.node(1).handle();
    let deadline = Instant::now() + WAIT;
    while handle.state().role != Role::Stopped {
        assert!(Instant::now() < deadline, "the node still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_secs(2),
        "stopped after {took:?}"
    );
    // The write ends once the disk answers; the thread then exits.
    hung.store(false, Ordering::Release);
    c.shutdown().await;
}
