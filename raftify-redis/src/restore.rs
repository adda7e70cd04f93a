//! `--restore-wal-from` and `--restore-snapshot-from` with `--sharded`:
//! the keys of a single-group node (its WAL directory, a store
//! directory's latest snapshot, or a snapshot file such as `RAFT SNAPSHOT
//! READ` gives) loaded into a new sharded cluster.
//!
//! A single-group restore resumes the old cluster from its log (its
//! membership included); a sharded cluster's groups have memberships of
//! their own, so here the *data* is carried over instead:
//!
//! 1. the source is restored into a scratch directory exactly as a
//!    single-group node restores it, and a node of its own (no peers, no
//!    port) applies it up to its commit index — sessions and all, so the
//!    state is the one the old cluster acknowledged;
//! 2. once the sharded node runs, every key goes to the group owning its
//!    slot in rounds of at most [`ROUND_BYTES`] (as a slot move imports
//!    them: `Migrate::Import`, which replaces keys of the same name, so a
//!    round sent again changes nothing);
//! 3. a marker file in the data dir records the restore done; until it
//!    is written the node serves no client, so a node killed half-way
//!    restarted with the same command line imports again and then serves.
//!
//! Users (`ACL SETUSER`) of the source are not carried over (a sharded
//! cluster keeps its users in the metadata group): the node says so.

use raftify::Restore;
use raftify_cache::{migrate_step, CacheEntry, CacheState, Migrate, Reply};
use raftify_core::{Bootstrap, Config, InProcNetwork, Raft};
use raftify_shard::{ShardHost, SLOTS};
use raftify_storage::{restore_wal_from, restore_wal_snapshot_from, LmdbOptions};
use slog::{info, warn, Logger};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The file in a sharded node's data dir that says its restore is done.
pub const MARKER: &str = "restored";

/// The most (estimated) bytes of keys one import round carries.
pub const ROUND_BYTES: u64 = 4 << 20;

/// How long the scratch node may take to apply the source.
const APPLY: Duration = Duration::from_secs(600);

/// A restore's failure (the node does not start).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The source could not be restored or applied.
    #[error("cannot read the restore source {path}: {reason}")]
    Source {
        /// The source given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A round could not be imported into its group.
    #[error("cannot import slots {start}-{end} into group {group}: {reason}")]
    Import {
        /// The group.
        group: u64,
        /// First slot of the round.
        start: u16,
        /// Last slot of the round.
        end: u16,
        /// Why.
        reason: String,
    },
}

/// Whether the restore of the data dir `dir` was done (its marker is
/// there).
pub fn done(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Records the restore of `dir` done.
pub fn mark_done(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join(MARKER),
        b"the restore into this data dir is done\n",
    )
}

/// The state `restore`'s source holds, applied by a node of its own in
/// `scratch` (a directory that must not exist; removed afterwards).
pub async fn load(
    restore: &Restore,
    scratch: &Path,
    logger: &Logger,
) -> Result<CacheState, RestoreError> {
    let (path, restored) = match restore {
        Restore::WalFrom(p) => (p, restore_wal_from(p, scratch, LmdbOptions::default())),
        Restore::SnapshotFrom(p) => (
            p,
            restore_wal_snapshot_from(p, scratch, LmdbOptions::default()),
        ),
    };
    let fail = |reason: String| RestoreError::Source {
        path: path.clone(),
        reason,
    };
    let store = restored.map_err(|e| fail(e.to_string()))?;
    let state = apply(Arc::new(store), logger).await.map_err(fail);
    if let Err(e) = std::fs::remove_dir_all(scratch) {
        warn!(logger, "cannot remove the restore's scratch directory"; "dir" => %scratch.display(), "error" => %e);
    }
    state
}

/// Runs a node over `store` until it applied its commit index; its state.
async fn apply(
    store: Arc<raftify_storage::LmdbStore>,
    logger: &Logger,
) -> Result<CacheState, String> {
    let mut config = Config::new(u64::MAX - 1);
    // Alone and unreachable: it never campaigns in time to matter.
    config.election_tick = 1_000_000;
    let node: Raft<CacheEntry, CacheState> = Raft::builder(config, CacheState::new())
        .storage(store)
        .transport(InProcNetwork::new(0).transport(u64::MAX - 1))
        .bootstrap(Bootstrap::None)
        .logger(logger.new(slog::o!("restore" => "scratch")))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + APPLY;
    let outcome = loop {
        match node.handle().status().await {
            Ok(s) if s.applied_index >= s.commit_index => break Ok(()),
            Ok(_) if tokio::time::Instant::now() < deadline => {}
            Ok(s) => {
                break Err(format!(
                    "applied {} of {} entries in {APPLY:?}",
                    s.applied_index, s.commit_index
                ))
            }
            Err(e) => break Err(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let state = match outcome {
        Ok(()) => Ok(node.stale_read(|sm| sm.clone()).await),
        Err(e) => Err(e),
    };
    node.handle().shutdown().await;
    state
}

/// Slot ranges of `state` of at most `max` estimated bytes each (a slot
/// larger than that alone), covering every slot holding anything.
pub fn rounds(state: &CacheState, max: u64) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    let mut open: Option<(u16, u64)> = None;
    for (slot, bytes) in state.keyspace().slot_bytes() {
        match open {
            Some((start, held)) if held + bytes <= max => open = Some((start, held + bytes)),
            Some((start, _)) => {
                out.push((start, slot - 1));
                open = Some((slot, bytes));
            }
            None => open = Some((slot, bytes)),
        }
    }
    if let Some((start, _)) = open {
        out.push((start, SLOTS - 1));
    }
    out
}

/// The raft addresses of `group`'s replicas, as the node's placement
/// has them.
fn group_addrs(host: &ShardHost<CacheEntry, CacheState>, group: u64) -> Vec<String> {
    let p = host.placement();
    let p = p.borrow();
    p.groups()
        .get(&group)
        .map(|g| {
            g.replicas
                .iter()
                .chain(&g.learners)
                .filter_map(|n| p.nodes().get(n).map(|i| i.raft_addr.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Imports every key of `state` into the groups owning their slots (the
/// node's placement), round by round; how many keys.
pub async fn import(
    host: &ShardHost<CacheEntry, CacheState>,
    state: &CacheState,
    logger: &Logger,
) -> Result<usize, RestoreError> {
    let users = state.users().len();
    if users > 0 {
        warn!(logger, "the restore source has ACL users; a sharded cluster keeps its own (ACL SETUSER again)"; "users" => users);
    }
    let mut keys = 0;
    for (start, end) in rounds(state, ROUND_BYTES) {
        // Split further where the placement gives the slots to groups of
        // their own.
        let runs: Vec<(u16, u16, u64)> = {
            let p = host.placement();
            let p = p.borrow();
            p.ranges()
                .into_iter()
                .filter_map(|(r, g)| {
                    let (a, b) = (r.start.max(start), r.end.min(end));
                    (a <= b).then_some((a, b, g))
                })
                .collect()
        };
        for (a, b, group) in runs {
            let fail = |reason: String| RestoreError::Import {
                group,
                start: a,
                end: b,
                reason,
            };
            let items = state.export_slots(a, b).map_err(|e| fail(e.to_string()))?;
            let import = Migrate::Import {
                start: a,
                end: b,
                items: items.into(),
            };
            let to = (group, group_addrs(host, group));
            match migrate_step(host.transport(), &to, import).await {
                Ok(Reply::Int(n)) => keys += usize::try_from(n).unwrap_or(0),
                Ok(other) => return Err(fail(format!("the group answered {other:?}"))),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    }
    info!(logger, "restored into the sharded cluster"; "keys" => keys);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn rounds_cover_every_slot_with_keys_within_the_bound() {
        let mut s = CacheState::new();
        let big = "x".repeat(1000);
        let mut commands = Vec::new();
        for i in 0..300 {
            let k = format!("k{i}");
            commands.push(vec![
                Bytes::from_static(b"set"),
                Bytes::from(k),
                Bytes::from(big.clone()),
            ]);
        }
        let entry = CacheEntry {
            clock_ms: 1,
            op: raftify_cache::Op::Exec {
                commands,
                transaction: false,
                watched: Vec::new(),
            },
        };
        s.apply_entry(1, &entry);
        let r = rounds(&s, 20_000);
        // Contiguous from the first slot holding keys to the last slot.
        let first = s.keyspace().slot_bytes().next().unwrap().0;
        assert_eq!(r.first().unwrap().0, first);
        assert_eq!(r.last().unwrap().1, SLOTS - 1);
        for w in r.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
        // Each round within the bound (no single slot is over it here).
        for &(a, b) in &r {
            let bytes: u64 = s
                .keyspace()
                .slot_bytes()
                .filter(|(x, _)| (a..=b).contains(x))
                .map(|(_, b)| b)
                .sum();
            assert!(bytes <= 20_000, "{a}-{b}: {bytes}");
        }
        assert!(r.len() >= 300 * 1000 / 20_000);
        assert!(rounds(&CacheState::new(), 1).is_empty());
    }
}
