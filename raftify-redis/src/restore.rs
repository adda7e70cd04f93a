//! `--restore-wal-from` and `--restore-snapshot-from` with `--sharded`:
//! the keys of a single-group node (its WAL directory, a store
//! directory's latest snapshot, or a snapshot file such as `RAFT SNAPSHOT
//! READ` gives) loaded into a new sharded cluster.
//!
//! A single-group restore resumes the old cluster from its log (its
//! membership included); a sharded cluster's groups have memberships of
//! their own, so here the *data* is carried over instead:
//!
//! 1. the data dir must be new: a marker, `restoring` (naming the
//!    source), is written (synced) before anything else;
//! 2. the source is restored into a scratch directory exactly as a
//!    single-group node restores it, and a node of its own (no peers, no
//!    port) applies it up to the commit index the source recorded —
//!    sessions and all. A source stopped cleanly recorded everything it
//!    acknowledged; a crashed or running one may hold entries past the
//!    commit index it had written (raftify writes it lazily): those are
//!    not restored, and the node says how many;
//! 3. once the sharded node runs — alone: other nodes join after it
//!    serves — every key goes to the group owning its slot, in entries of
//!    at most [`IMPORT_BYTES`] (`Migrate::Import`, as a slot move
//!    imports: it replaces keys of the same name, so an entry sent again
//!    changes nothing);
//! 4. `restored` replaces `restoring` (synced). Until then the node
//!    serves no client: a node stopped half-way imports again at its next
//!    start with the same `--restore-*` flag, and refuses to start without
//!    it.
//!
//! The source's users (`ACL SETUSER`) go to the metadata group, where a
//! sharded cluster keeps them (every node's), each as `reset` then its
//! rules: given again after a restart, the same user.

use bytes::Bytes;
use raftify::Restore;
use raftify_cache::migrate::{export_parts, IMPORT_BYTES};
use raftify_cache::{migrate_step, CacheEntry, CacheState, Migrate, Op, Reply};
use raftify_core::{Bootstrap, Config, InProcNetwork, Raft};
use raftify_shard::ShardHost;
use raftify_storage::{restore_wal_from, restore_wal_snapshot_from, LmdbOptions};
use slog::{info, warn, Logger};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The file in a sharded node's data dir that says its restore is done.
pub const MARKER: &str = "restored";

/// The file that says a restore into the data dir began (and from what).
pub const BEGUN: &str = "restoring";

/// How long the scratch node may go without applying anything before
/// the restore fails.
const APPLY: Duration = Duration::from_secs(120);

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
    /// The data dir is not one a restore may write into.
    #[error("{0}")]
    DataDir(String),
    /// The cluster is not the new, lone node a restore imports into.
    #[error("{0}")]
    Cluster(String),
    /// A user of the source could not be set in the metadata group.
    #[error("cannot restore ACL user {user}: {reason}")]
    Users {
        /// The user.
        user: String,
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

/// What a sharded node's start does about a restore.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// No restore asked, none pending: start as usual.
    None,
    /// The restore was done earlier: start as usual.
    Done,
    /// Restore (first time, or again after a stop half-way).
    Import,
}

/// What to do at a start with data dir `dir` and `restore` (the flag, if
/// given). Begins the restore (the `restoring` marker, synced) when the
/// dir is new; refuses a dir holding data of its own, and a restore left
/// half-way without its flag or with another source.
pub fn plan(dir: &Path, restore: Option<&Restore>) -> Result<Plan, RestoreError> {
    let began = std::fs::read_to_string(dir.join(BEGUN)).ok();
    let done = dir.join(MARKER).is_file();
    let source = restore.map(describe);
    match (restore, began, done) {
        (_, _, true) => Ok(if restore.is_some() { Plan::Done } else { Plan::None }),
        (None, Some(from), false) => Err(RestoreError::DataDir(format!(
            "{} holds a restore from {} that did not finish: start again with the same --restore-* flag (or with a new data dir)",
            dir.display(),
            from.trim()
        ))),
        (None, None, false) => Ok(Plan::None),
        (Some(_), Some(from), false) if Some(from.trim()) == source.as_deref() => Ok(Plan::Import),
        (Some(_), Some(from), false) => Err(RestoreError::DataDir(format!(
            "{} holds an unfinished restore from {}, not from {}",
            dir.display(),
            from.trim(),
            source.unwrap_or_default()
        ))),
        (Some(_), None, false) => {
            // A temporary file a write cut short left (`.<name>.tmp`) is
            // not data.
            let holds = std::fs::read_dir(dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
            });
            if holds {
                return Err(RestoreError::DataDir(format!(
                    "{} already holds data: a restore starts a new cluster in a new data dir",
                    dir.display()
                )));
            }
            let text = format!("{}\n", source.unwrap_or_default());
            write_synced(dir, BEGUN, text.as_bytes())
                .map_err(|e| RestoreError::DataDir(format!("cannot write {}: {e}", dir.join(BEGUN).display())))?;
            Ok(Plan::Import)
        }
    }
}

/// Records the restore of `dir` done (`restored` written and synced, then
/// `restoring` removed).
pub fn mark_done(dir: &Path) -> std::io::Result<()> {
    write_synced(dir, MARKER, b"the restore into this data dir is done\n")?;
    std::fs::remove_file(dir.join(BEGUN))?;
    raftify_storage::sync_dir(dir).map_err(std::io::Error::other)
}

/// The flag's source, as the markers record it.
fn describe(r: &Restore) -> String {
    match r {
        Restore::WalFrom(p) => format!("--restore-wal-from {}", p.display()),
        Restore::SnapshotFrom(p) => format!("--restore-snapshot-from {}", p.display()),
    }
}

/// Writes `dir/name` durably (raftify-storage's atomic write: a
/// temporary file synced, renamed, the directory synced).
fn write_synced(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    raftify_storage::write_durable(&dir.join(name), data).map_err(std::io::Error::other)
}

/// The state `restore`'s source holds, applied by a node of its own in
/// `scratch` (a directory that must not exist; removed afterwards).
pub async fn load(
    restore: &Restore,
    scratch: &Path,
    logger: &Logger,
) -> Result<CacheState, RestoreError> {
    // Thrown away afterwards: not synced.
    let opts = LmdbOptions::new().no_sync(true);
    let (path, restored) = match restore {
        Restore::WalFrom(p) => (p, restore_wal_from(p, scratch, opts)),
        Restore::SnapshotFrom(p) => (p, restore_wal_snapshot_from(p, scratch, opts)),
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
    // Given up only when applying stalls for APPLY (a large source takes
    // as long as it takes).
    let mut progress = (0, tokio::time::Instant::now());
    let outcome = loop {
        match node.handle().status().await {
            Ok(s) if s.applied_index >= s.commit_index => {
                if s.last_index > s.commit_index {
                    warn!(logger, "the restore source's log goes past the commit index it recorded (a crashed or running source): those entries are not restored";
                        "commit_index" => s.commit_index, "last_index" => s.last_index);
                }
                break Ok(());
            }
            Ok(s) if s.applied_index > progress.0 => {
                progress = (s.applied_index, tokio::time::Instant::now());
            }
            Ok(_) if progress.1.elapsed() < APPLY => {}
            Ok(s) => {
                break Err(format!(
                    "applied {} of {} entries, none for {APPLY:?}",
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

/// Imports every key of `state` into the groups owning their slots, round
/// by round; how many keys. The cluster must be this node alone, with no
/// slot moving (other nodes join once it serves).
pub async fn import(
    host: &ShardHost<CacheEntry, CacheState>,
    state: &CacheState,
    logger: &Logger,
) -> Result<usize, RestoreError> {
    // The placement's runs of slots, each its owner's.
    let (runs, alone) = {
        let p = host.placement();
        let p = p.borrow();
        let alone = p.nodes().len() == 1 && p.moving().is_none() && p.purging().is_empty();
        let runs: Vec<(u16, u16, u64)> = p
            .ranges()
            .into_iter()
            .map(|(r, g)| (r.start, r.end, g))
            .collect();
        (runs, alone)
    };
    if !alone {
        return Err(RestoreError::Cluster(
            "nodes joined or slots move before the restore finished: a restore imports into its first node alone (start the others once it serves)".into(),
        ));
    }
    let slots: Vec<(u16, u16)> = runs.iter().map(|&(a, b, _)| (a, b)).collect();
    let buckets = state.items_by_range(&slots);
    let mut keys = 0;
    for ((a, b, group), items) in runs.into_iter().zip(buckets) {
        let fail = |reason: String| RestoreError::Import {
            group,
            start: a,
            end: b,
            reason,
        };
        let to = (group, host.placement().borrow().group_addrs(group));
        for part in export_parts(&items, IMPORT_BYTES).map_err(|e| fail(e.to_string()))? {
            let import = Migrate::Import {
                start: a,
                end: b,
                items: part.into(),
            };
            match migrate_step(host.transport(), &to, import).await {
                Ok(Reply::Int(n)) => keys += usize::try_from(n).unwrap_or(0),
                Ok(other) => return Err(fail(format!("the group answered {other:?}"))),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    }
    let users = import_users(host, state).await?;
    info!(logger, "restored into the sharded cluster"; "keys" => keys, "users" => users);
    Ok(keys)
}

/// Sets the source's ACL users in the metadata group (see the module
/// docs); how many.
async fn import_users(
    host: &ShardHost<CacheEntry, CacheState>,
    state: &CacheState,
) -> Result<usize, RestoreError> {
    for (name, user) in state.users() {
        let entry = CacheEntry {
            clock_ms: raftify_core::unix_ms(),
            op: Op::SetUser {
                name: Bytes::copy_from_slice(name.as_bytes()),
                rules: user.as_rules(name),
                legacy: false,
            },
        };
        match crate::acl::propose_shared(host, &entry).await {
            Reply::Ok => {}
            other => {
                return Err(RestoreError::Users {
                    user: name.clone(),
                    reason: format!("the metadata group answered {other:?}"),
                })
            }
        }
    }
    Ok(state.users().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_begins_in_a_new_dir_resumes_with_its_flag_and_ends_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        let wal = Restore::WalFrom("/backup/a".into());
        let other = Restore::SnapshotFrom("/backup/b.snap".into());
        // No flag, nothing pending.
        assert_eq!(plan(&dir, None).unwrap(), Plan::None);
        // New dir (a temporary file of a write cut short is not data):
        // begun, marker synced.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".restoring.tmp"), b"x").unwrap();
        assert_eq!(plan(&dir, Some(&wal)).unwrap(), Plan::Import);
        assert!(dir.join(BEGUN).is_file());
        // Stopped half-way: the same flag imports again; none or another
        // source is refused.
        std::fs::create_dir_all(dir.join("groups")).unwrap();
        assert_eq!(plan(&dir, Some(&wal)).unwrap(), Plan::Import);
        let e = plan(&dir, None).unwrap_err().to_string();
        assert!(
            e.contains("did not finish") && e.contains("/backup/a"),
            "{e}"
        );
        let e = plan(&dir, Some(&other)).unwrap_err().to_string();
        assert!(
            e.contains("not from --restore-snapshot-from /backup/b.snap"),
            "{e}"
        );
        // Done: the flag is skipped, and not needed.
        mark_done(&dir).unwrap();
        assert!(!dir.join(BEGUN).exists());
        assert_eq!(plan(&dir, Some(&wal)).unwrap(), Plan::Done);
        assert_eq!(plan(&dir, None).unwrap(), Plan::None);
        // A dir holding data of its own is not restored over.
        let used = root.path().join("used");
        std::fs::create_dir_all(used.join("groups")).unwrap();
        let e = plan(&used, Some(&wal)).unwrap_err().to_string();
        assert!(e.contains("already holds data"), "{e}");
        assert!(!used.join(BEGUN).exists());
    }
}
