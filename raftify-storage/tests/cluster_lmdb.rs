//! raftify-core's cluster scenarios, run on LMDB stores in temp dirs: the
//! same file as core's in-memory run. Even-numbered nodes run without
//! fsync (their appends run inline on the runtime, see
//! `LogStore::inline_appends`), the others with fsync (commits durable with
//! the next one's sync): every scenario mixes both write paths.

use raftify_core::testkit::StoreFactory;
use raftify_core::LogStore;
use raftify_storage::{LmdbOptions, LmdbStore};
use std::sync::Arc;
use std::time::Duration;

fn factory() -> StoreFactory {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    Arc::new(move |id| {
        let path = dir.path().join(format!("node-{id}"));
        // A restarted node reopens its dir; the previous incarnation's last
        // handles may still be dropping, so a held lock is waited for.
        let opts = LmdbOptions::new()
            .map_size(64 << 20)
            .no_sync(id % 2 == 0)
            .lock_wait(Duration::from_secs(5));
        match LmdbStore::open(&path, opts) {
            Ok(store) => Arc::new(store) as Arc<dyn LogStore>,
            Err(e) => panic!("cannot open {}: {e}", path.display()), // ok: test helper
        }
    })
}

#[path = "../../raftify-core/tests/scenarios/mod.rs"]
mod scenarios;
