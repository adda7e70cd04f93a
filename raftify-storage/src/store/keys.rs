//! The keys of a store's records.
//!
//! A store alone in its environment keys its entries by index (8 bytes,
//! big-endian, so LMDB's byte order is index order) and its metadata by
//! record name. A group of a shared environment ([`super::LmdbEnv`])
//! keeps its records in the environment's group databases: entries keyed
//! by group then index (16 bytes), metadata by `<group>/<name>`. Every
//! read, range and delete of a store stays within its own keys.

use super::LmdbStore;
use raftify_core::storage::StorageResult;
use std::ops::{Bound, Deref};

/// An entry's key: the index, after the group in a shared environment.
#[derive(Clone, Copy)]
pub(crate) struct EntryKey {
    buf: [u8; 16],
    len: usize,
}

impl Deref for EntryKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A range of entry keys, as heed takes it.
pub(crate) type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

impl LmdbStore {
    /// The key of entry `idx`.
    pub(crate) fn entry_key(&self, idx: u64) -> EntryKey {
        let mut buf = [0u8; 16];
        match self.scope {
            None => {
                buf[..8].copy_from_slice(&idx.to_be_bytes());
                EntryKey { buf, len: 8 }
            }
            Some(group) => {
                buf[..8].copy_from_slice(&group.to_be_bytes());
                buf[8..].copy_from_slice(&idx.to_be_bytes());
                EntryKey { buf, len: 16 }
            }
        }
    }

    /// The first and last key of this store's entries (indexes 0 and
    /// `u64::MAX`), the bounds of every range over them.
    pub(crate) fn entry_bounds(&self) -> (EntryKey, EntryKey) {
        (self.entry_key(0), self.entry_key(u64::MAX))
    }

    /// The index a stored entry key names; a key of another length or
    /// group is damage.
    pub(crate) fn index_of(&self, key: &[u8]) -> StorageResult<u64> {
        let prefix = self.scope.map(u64::to_be_bytes);
        let (want, rest) = match &prefix {
            None => (8, key),
            Some(p) => (16, key.strip_prefix(&p[..]).unwrap_or(&[])),
        };
        match <[u8; 8]>::try_from(rest) {
            Ok(b) if key.len() == want => Ok(u64::from_be_bytes(b)),
            _ => Err(self.corrupt(format!(
                "a log entry is stored under a malformed key {key:02x?}"
            ))),
        }
    }

    /// The key of metadata record `name` (on the stack: metadata is read
    /// on every write and many reads).
    pub(crate) fn meta_key(&self, name: &str) -> MetaKey {
        use std::io::Write;
        let mut buf = [0u8; META_KEY_MAX];
        let mut rest = &mut buf[..];
        // The record names are short constants: never cut.
        let _ = match self.scope {
            None => rest.write_all(name.as_bytes()),
            Some(group) => write!(rest, "{group}/{name}"),
        };
        let len = META_KEY_MAX - rest.len();
        MetaKey { buf, len }
    }
}

/// Longest metadata key: a group id (20 digits), `/` and a record name.
const META_KEY_MAX: usize = 48;

/// A metadata record's key: its name, after `<group>/` in a shared
/// environment.
pub(crate) struct MetaKey {
    buf: [u8; META_KEY_MAX],
    len: usize,
}

impl Deref for MetaKey {
    type Target = str;

    fn deref(&self) -> &str {
        // Whole UTF-8 strings only are pushed.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}
