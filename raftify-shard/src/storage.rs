//! Where a sharded node keeps its replicas' logs.
//!
//! In its data dir `D`: every group, the metadata group (0) included, in
//! one shared environment `D/groups` ([`LmdbEnv`]: one LMDB environment,
//! one journal whose appends of different groups are synced together, one
//! checkpoint thread; each group's snapshot files in
//! `D/groups/groups/<id>`). A group an earlier version kept in a store of
//! its own (`D/meta`, `D/group-<id>`) is resumed from there (a data group
//! until the node no longer hosts it). In memory (tests): nothing on
//! disk.

use crate::host::ShardError;
use crate::placement::{GroupId, NodeId, META_GROUP};
use raftify::{LmdbEnv, LmdbError, LmdbStore};
use raftify::{NodeSpec, Storage};
use slog::{warn, Logger};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The journal segment size of a data group kept in a directory of its
/// own (an earlier version's layout): a store keeps two or three
/// zero-filled segments, and the store's default of 16 MiB would be
/// 48 MiB per replica.
const OWN_DIR_JOURNAL_SEGMENT: usize = 1 << 20;

/// How long a replica's removal keeps trying while its store is still
/// open (the replica's last users let go of it).
const REMOVE_FOR: Duration = Duration::from_secs(30);

/// A sharded node's storage of its replicas.
#[derive(Debug, Clone)]
pub(crate) enum ReplicaStorage {
    /// Everything in memory.
    Memory,
    /// In a data dir: its root, and the data groups' shared environment.
    Dir { root: PathBuf, env: Arc<LmdbEnv> },
}

impl ReplicaStorage {
    /// Opens the storage the node's template asks for: `Storage::Dir` (the
    /// shared environment is opened, or created, with the template's
    /// fsync and journal options) or `Storage::Memory`.
    pub(crate) fn open(template: &NodeSpec) -> Result<Self, ShardError> {
        match &template.storage {
            Storage::Memory => Ok(ReplicaStorage::Memory),
            Storage::Dir(root) => {
                let dir = root.join("groups");
                let env = LmdbEnv::open(&dir, raftify::lmdb_options(template)).map_err(|e| {
                    ShardError::Config(format!(
                        "cannot open the groups' store {}: {e}",
                        dir.display()
                    ))
                })?;
                Ok(ReplicaStorage::Dir {
                    root: root.clone(),
                    env,
                })
            }
            other => Err(ShardError::Config(format!(
                "a sharded node keeps its data in one dir (Storage::Dir), not {other:?}"
            ))),
        }
    }

    /// The storage of `group`'s replica, and the journal segment size to
    /// give it (`None`: the default).
    pub(crate) fn of(&self, group: GroupId) -> (Storage, Option<usize>) {
        match self {
            ReplicaStorage::Memory => (Storage::Memory, None),
            ReplicaStorage::Dir { env, .. } => match self.own_dir(group) {
                Some(dir) if group == META_GROUP => (Storage::Dir(dir), None),
                Some(dir) => (Storage::Dir(dir), Some(OWN_DIR_JOURNAL_SEGMENT)),
                None => (Storage::Shared(env.clone(), group), None),
            },
        }
    }

    /// The directory of its own an earlier version kept `group` in
    /// (`meta` for the metadata group), if it holds a store.
    fn own_dir(&self, group: GroupId) -> Option<PathBuf> {
        let ReplicaStorage::Dir { root, .. } = self else {
            return None;
        };
        let dir = match group {
            META_GROUP => root.join("meta"),
            g => root.join(format!("group-{g}")),
        };
        Some(dir).filter(|d| d.join("data.mdb").is_file())
    }

    /// What the groups' shared journal wrote so far (zero in memory).
    pub(crate) fn journal_stats(&self) -> raftify::JournalStats {
        match self {
            ReplicaStorage::Dir { env, .. } => env.journal_stats(),
            ReplicaStorage::Memory => Default::default(),
        }
    }

    /// Whether something of an earlier replica of `group` is stored here.
    pub(crate) fn holds(&self, group: GroupId) -> bool {
        match self {
            ReplicaStorage::Memory => false,
            ReplicaStorage::Dir { env, .. } => {
                self.own_dir(group).is_some() || env.holds(group).unwrap_or(true)
            }
        }
    }

    /// Whether the replica of `group` stored here was a voter of the group
    /// (its stored membership lists `node` as one): a replica of an
    /// earlier time, since taken away. A learner's data (a replica being
    /// added, restarted half-way) is not: the group's leader counts what it
    /// acknowledged. Unreadable: yes (the caller then starts afresh).
    pub(crate) fn was_voter(&self, group: GroupId, node: NodeId) -> bool {
        use raftify_core::LogStore;
        let state = match self {
            ReplicaStorage::Memory => return false,
            ReplicaStorage::Dir { env, .. } => match self.own_dir(group) {
                Some(dir) => LmdbStore::open_read_only(dir, Default::default())
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.initial_state().map_err(|e| e.to_string())),
                None => env
                    .group(group)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.initial_state().map_err(|e| e.to_string())),
            },
        };
        match state {
            Ok(st) => {
                let c = st.conf_state;
                c.voters.contains(&node) || c.voters_outgoing.contains(&node)
            }
            Err(_) => true,
        }
    }

    /// Deletes what is stored of `group`'s replica (stopped: its store is
    /// closing). A store still open is waited for, up to [`REMOVE_FOR`],
    /// off the async threads. Returns whether it is gone.
    pub(crate) async fn remove(&self, group: GroupId, logger: &Logger) -> bool {
        let ReplicaStorage::Dir { env, .. } = self else {
            return true;
        };
        if let Some(dir) = self.own_dir(group) {
            return match std::fs::remove_dir_all(&dir) {
                Ok(()) => true,
                Err(e) => {
                    warn!(logger, "cannot remove a replica's data"; "group" => group, "error" => %e);
                    false
                }
            };
        }
        let env = env.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + REMOVE_FOR;
            loop {
                match env.delete_group(group) {
                    Err(LmdbError::Locked { .. }) if Instant::now() < deadline => {}
                    other => return other,
                }
            }
        })
        .await;
        match removed
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(()) => true,
            Err(e) => {
                warn!(logger, "cannot remove a replica's data"; "group" => group, "error" => e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftify::{LmdbOptions, LmdbStore};

    /// A data dir with a group kept by an earlier version in a directory of
    /// its own: that group resumes from it, every other data group is in
    /// the shared environment, and a removal deletes either.
    #[tokio::test]
    async fn groups_of_an_earlier_layout_stay_where_they_are() {
        let root = tempfile::tempdir().unwrap();
        drop(LmdbStore::open(root.path().join("group-5"), LmdbOptions::new()).unwrap());
        let mut template = NodeSpec::new();
        template.storage = Storage::Dir(root.path().to_path_buf());
        let storage = ReplicaStorage::open(&template).unwrap();
        let logger = raftify_core::discard_logger();
        match storage.of(5) {
            (Storage::Dir(d), Some(OWN_DIR_JOURNAL_SEGMENT)) => {
                assert_eq!(d, root.path().join("group-5"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(storage.of(6), (Storage::Shared(_, 6), None)));
        // The metadata group: in the environment, unless an earlier
        // version's store of its own is there.
        assert!(matches!(
            storage.of(META_GROUP),
            (Storage::Shared(_, 0), None)
        ));
        drop(LmdbStore::open(root.path().join("meta"), LmdbOptions::new()).unwrap());
        assert!(
            matches!(storage.of(META_GROUP), (Storage::Dir(d), None) if d == root.path().join("meta"))
        );
        assert!(storage.holds(5));
        assert!(!storage.holds(6));
        assert!(storage.remove(5, &logger).await);
        assert!(!root.path().join("group-5").exists());
        assert!(matches!(storage.of(5), (Storage::Shared(_, 5), None)));
        // A group's records in the environment go the same way.
        let ReplicaStorage::Dir { env, .. } = &storage else {
            panic!("a dir");
        };
        let store = env.group(6).unwrap();
        raftify_core::LogStore::set_identity(
            &store,
            &raftify_core::storage::StoreIdentity {
                node_id: 1,
                cluster_id: "c".into(),
            },
        )
        .unwrap();
        drop(store);
        assert!(storage.holds(6));
        assert!(storage.remove(6, &logger).await);
        assert!(!storage.holds(6));
    }
}
