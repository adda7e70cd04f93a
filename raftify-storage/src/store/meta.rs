//! The records of the `meta` database: format version, hard state,
//! snapshot reference, compaction offset and identity. Every value is
//! framed with a CRC-32 (see [`crate::codec::frame`]).

use super::txn::Fail;
use super::{LmdbStore, MetaDb, FORMAT_VERSION};
use crate::codec::{be_u64, decode_msg, encode_msg, frame, unframe};
use heed::{RoTxn, RwTxn};
use raftify_core::raft::eraftpb::{HardState, SnapshotMetadata};
use raftify_core::storage::{StorageResult, StoreIdentity};
use raftify_core::StorageError;

pub(super) const K_VERSION: &str = "format_version";
pub(super) const K_HARD_STATE: &str = "hard_state";
pub(super) const K_SNAP_META: &str = "snapshot_meta";
pub(super) const K_SNAP_FILE: &str = "snapshot_file";
pub(super) const K_SNAP_SEQ: &str = "snapshot_seq";
pub(super) const K_OFFSET: &str = "offset";
pub(super) const K_IDENTITY: &str = "identity";
/// Sequence number of the last journal record applied to LMDB.
pub(super) const K_WAL_SEQ: &str = "wal_seq";
/// The records a store (a group, in a shared environment) has of its own;
/// `format_version` and `wal_seq` are the environment's.
const OWN_RECORDS: [&str; 6] = [
    K_HARD_STATE,
    K_SNAP_META,
    K_SNAP_FILE,
    K_SNAP_SEQ,
    K_OFFSET,
    K_IDENTITY,
];

/// The metadata records, decoded.
#[derive(Default, Clone)]
pub(crate) struct Meta {
    pub(crate) hard_state: HardState,
    pub(crate) snap_meta: SnapshotMetadata,
    pub(crate) snap_file: Option<String>,
    pub(crate) snap_seq: u64,
    /// Index of the last compacted entry (entries start right after it).
    pub(crate) offset: u64,
    /// Term of the entry at `offset`.
    pub(crate) offset_term: u64,
}

/// Records [`FORMAT_VERSION`] in a new store's `meta` database.
pub(super) fn put_format_version(meta: &MetaDb, wtxn: &mut RwTxn) -> heed::Result<()> {
    meta.put(wtxn, K_VERSION, &frame(&FORMAT_VERSION.to_be_bytes()))
}

impl LmdbStore {
    /// The format version the store was created with.
    pub(super) fn read_format_version(&self, txn: &RoTxn) -> StorageResult<u32> {
        let version = self
            .root_meta_db
            .get(txn, K_VERSION)
            .map_err(|e| self.heed_err("read the format version", e))?
            .ok_or_else(|| self.corrupt("the format version record is missing"))?;
        unframe(version)
            .ok()
            .and_then(|b| b.try_into().ok().map(u32::from_be_bytes))
            .ok_or_else(|| self.corrupt("the format version record does not decode"))
    }

    fn get_meta<'t>(&self, txn: &'t RoTxn, key: &str) -> StorageResult<Option<&'t [u8]>> {
        self.get_record(txn, self.meta_db, &self.meta_key(key), key)
    }

    /// Record `name` of the environment itself (not of a group).
    fn get_root<'t>(&self, txn: &'t RoTxn, name: &str) -> StorageResult<Option<&'t [u8]>> {
        self.get_record(txn, self.root_meta_db, name, name)
    }

    fn get_record<'t>(
        &self,
        txn: &'t RoTxn,
        db: MetaDb,
        stored: &str,
        key: &str,
    ) -> StorageResult<Option<&'t [u8]>> {
        let raw = db
            .get(txn, stored)
            .map_err(|e| self.heed_err(&format!("read metadata record `{key}`"), e))?;
        match raw {
            None => Ok(None),
            Some(raw) => unframe(raw)
                .map(Some)
                .map_err(|e| self.corrupt(format!("metadata record `{key}`: {e}"))),
        }
    }

    pub(crate) fn read_meta(&self, txn: &RoTxn) -> StorageResult<Meta> {
        let mut meta = Meta::default();
        if let Some(b) = self.get_meta(txn, K_HARD_STATE)? {
            meta.hard_state = decode_msg(b)
                .map_err(|e| self.corrupt(format!("metadata record `{K_HARD_STATE}`: {e}")))?;
        }
        if let Some(b) = self.get_meta(txn, K_SNAP_META)? {
            meta.snap_meta = decode_msg(b)
                .map_err(|e| self.corrupt(format!("metadata record `{K_SNAP_META}`: {e}")))?;
        }
        if let Some(b) = self.get_meta(txn, K_SNAP_FILE)? {
            let name = std::str::from_utf8(b)
                .ok()
                .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "metadata record `{K_SNAP_FILE}` is not a file name"
                    ))
                })?;
            meta.snap_file = Some(name.to_string());
        }
        if let Some(b) = self.get_meta(txn, K_SNAP_SEQ)? {
            meta.snap_seq = be_u64(b, 0).filter(|_| b.len() == 8).ok_or_else(|| {
                self.corrupt(format!("metadata record `{K_SNAP_SEQ}` is malformed"))
            })?;
        }
        if let Some(b) = self.get_meta(txn, K_OFFSET)? {
            match (b.len(), be_u64(b, 0), be_u64(b, 8)) {
                (16, Some(i), Some(t)) => {
                    meta.offset = i;
                    meta.offset_term = t;
                }
                _ => return Err(self.corrupt(format!("metadata record `{K_OFFSET}` is malformed"))),
            }
        }
        Ok(meta)
    }

    /// The last journal record applied to LMDB (0: none).
    pub(super) fn read_wal_seq(&self, txn: &RoTxn) -> StorageResult<u64> {
        match self.get_root(txn, K_WAL_SEQ)? {
            None => Ok(0),
            Some(b) => be_u64(b, 0)
                .filter(|_| b.len() == 8)
                .ok_or_else(|| self.corrupt(format!("metadata record `{K_WAL_SEQ}` is malformed"))),
        }
    }

    pub(super) fn put_wal_seq(&self, wtxn: &mut RwTxn, seq: u64) -> Result<(), Fail> {
        self.root_meta_db
            .put(wtxn, K_WAL_SEQ, &frame(&seq.to_be_bytes()))
            .map_err(|e| self.fail(&format!("write metadata record `{K_WAL_SEQ}`"), e))
    }

    fn put_meta(&self, wtxn: &mut RwTxn, key: &str, payload: &[u8]) -> Result<(), Fail> {
        self.meta_db
            .put(wtxn, &self.meta_key(key), &frame(payload))
            .map_err(|e| self.fail(&format!("write metadata record `{key}`"), e))
    }

    /// Deletes every record of the store's own (all but the environment's
    /// format version and journal position): a group's, when it is
    /// deleted from a shared environment.
    pub(super) fn delete_own_records(&self, wtxn: &mut RwTxn) -> Result<(), Fail> {
        for key in OWN_RECORDS {
            self.meta_db
                .delete(wtxn, &self.meta_key(key))
                .map_err(|e| self.fail(&format!("delete metadata record `{key}`"), e))?;
        }
        Ok(())
    }

    pub(crate) fn put_hard_state(&self, wtxn: &mut RwTxn, hs: &HardState) -> Result<(), Fail> {
        let b = encode_msg(hs).map_err(StorageError::Invalid)?;
        self.put_meta(wtxn, K_HARD_STATE, &b)
    }

    pub(crate) fn put_offset(&self, wtxn: &mut RwTxn, index: u64, term: u64) -> Result<(), Fail> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&index.to_be_bytes());
        b[8..].copy_from_slice(&term.to_be_bytes());
        self.put_meta(wtxn, K_OFFSET, &b)
    }

    pub(crate) fn put_snapshot_ref(
        &self,
        wtxn: &mut RwTxn,
        meta: &SnapshotMetadata,
        file: &str,
        seq: u64,
    ) -> Result<(), Fail> {
        let b = encode_msg(meta).map_err(StorageError::Invalid)?;
        self.put_meta(wtxn, K_SNAP_META, &b)?;
        self.put_meta(wtxn, K_SNAP_FILE, file.as_bytes())?;
        self.put_meta(wtxn, K_SNAP_SEQ, &seq.to_be_bytes())
    }

    /// The recorded identity: node id (8 bytes, big-endian) then cluster id
    /// (UTF-8).
    pub(super) fn read_identity(&self, txn: &RoTxn) -> StorageResult<Option<StoreIdentity>> {
        let Some(b) = self.get_meta(txn, K_IDENTITY)? else {
            return Ok(None);
        };
        let node_id =
            be_u64(b, 0).ok_or_else(|| self.corrupt("the identity record is too short"))?;
        let cluster_id = std::str::from_utf8(&b[8..])
            .map_err(|_| self.corrupt("the identity record's cluster id is not UTF-8"))?
            .to_string();
        Ok(Some(StoreIdentity {
            node_id,
            cluster_id,
        }))
    }

    /// Records `identity` (encoded as [`LmdbStore::read_identity`] reads it).
    pub(super) fn put_identity(
        &self,
        wtxn: &mut RwTxn,
        identity: &StoreIdentity,
    ) -> Result<(), Fail> {
        let mut b = identity.node_id.to_be_bytes().to_vec();
        b.extend_from_slice(identity.cluster_id.as_bytes());
        self.put_meta(wtxn, K_IDENTITY, &b)
    }

    /// Removes the identity record, if any.
    pub(super) fn delete_identity(&self, wtxn: &mut RwTxn) -> Result<(), Fail> {
        self.meta_db
            .delete(wtxn, &self.meta_key(K_IDENTITY))
            .map(|_| ())
            .map_err(|e| self.fail("delete the identity record", e))
    }
}
