//! Named caches: the embedded cache's data (`raftify_cache::Cache`), one
//! [`Keyspace`] per name, each bounded by entry count and bytes.
//!
//! Every write carries its cache's [`Bound`] and is applied the same way on
//! every node, evictions included: when a write takes a cache over its
//! bound, the entries written least recently go first (their order is the
//! log's, so every node evicts the same ones). Reads do not reorder them: a
//! read on one node is not replicated, and an order that depended on it
//! would differ between nodes.

use crate::entry::{Bound, NamedOp};
use crate::keyspace::{Keyspace, Value, PER_KEY};
use crate::reply::{errors, Reply};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What happened to an entry of a named cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Set (put, incr, a successful compare-and-swap).
    Put,
    /// Deleted by a user.
    Delete,
    /// Its TTL ran out (on the replicated clock).
    Expire,
    /// Evicted to keep its cache within its bound.
    Evict,
}

impl ChangeKind {
    /// `put`, `delete`, `expire` or `evict`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
            ChangeKind::Expire => "expire",
            ChangeKind::Evict => "evict",
        }
    }
}

/// One change to a named cache, as every node applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The log index of the entry that made it (changes of one entry share
    /// it; they come in the order they happened).
    pub index: u64,
    /// The cache.
    pub cache: Bytes,
    /// The key.
    pub key: Bytes,
    /// What happened.
    pub kind: ChangeKind,
    /// The new value ([`ChangeKind::Put`] only).
    pub value: Option<Bytes>,
}

/// Called with every change as it is applied (on every node, in log order).
pub type ChangeHook = Arc<dyn Fn(&Change) + Send + Sync>;

/// One named cache.
#[derive(Debug, Clone, Default)]
pub struct Named {
    keys: Keyspace,
    /// `(version, key)` of every entry: the least recently written first.
    order: imbl::OrdSet<(u64, Bytes)>,
}

impl Named {
    /// The entry's value, unless missing or expired.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        match &self.keys.get(key)?.value {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The entry's expiry (ms on the replicated clock), if it has one.
    pub fn expire_at(&self, key: &[u8]) -> Option<u64> {
        self.keys.get(key)?.expire_at()
    }

    /// Entries held (expired ones not yet deleted included).
    pub fn len(&self) -> usize {
        self.keys.raw_len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held (keys, values and [`PER_KEY`] per entry).
    pub fn used_bytes(&self) -> usize {
        self.keys.used_memory()
    }

    /// The keyspace (for snapshots).
    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    /// Sets the entry at log index `index` (its new version).
    fn set(&mut self, index: u64, key: Bytes, value: Bytes, expire_at: Option<u64>) {
        if let Some(old) = self.keys.insert(key.clone(), Value::Str(value), expire_at) {
            self.order.remove(&(old.version, key.clone()));
        }
        self.order.insert((index, key));
    }

    fn delete(&mut self, key: &Bytes) -> bool {
        match self.keys.remove(key) {
            Some(item) => {
                self.order.remove(&(item.version, key.clone()));
                true
            }
            None => false,
        }
    }

    /// Puts an entry back from a snapshot, with its version.
    pub(crate) fn restore(&mut self, key: Bytes, value: Value, expire_at: Option<u64>, v: u64) {
        self.keys.insert_versioned(key.clone(), value, expire_at, v);
        self.order.insert((v, key));
    }

    pub(crate) fn advance_clock(&mut self, clock: u64) {
        self.keys.advance_clock(clock);
    }
}

/// Every named cache, by name.
#[derive(Debug, Clone, Default)]
pub struct NamedCaches {
    caches: BTreeMap<Bytes, Named>,
}

impl NamedCaches {
    /// The cache called `name`, once something was written to it.
    pub fn cache(&self, name: &[u8]) -> Option<&Named> {
        self.caches.get(name)
    }

    /// Every cache, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Named)> {
        self.caches.iter()
    }

    /// The earliest expiry in any cache.
    pub fn next_expiry(&self) -> Option<u64> {
        self.caches
            .values()
            .filter_map(|c| c.keys.next_expiry())
            .min()
    }

    /// The cache called `name`, made if missing (snapshot restores).
    pub(crate) fn entry(&mut self, name: Bytes) -> &mut Named {
        self.caches.entry(name).or_default()
    }

    /// Deletes every expired entry of every cache (the replicated clock
    /// at `clock`), recording each in `changes`; returns how many.
    pub fn purge_expired(&mut self, index: u64, clock: u64, changes: &mut Vec<Change>) -> usize {
        let mut n = 0;
        for (name, c) in &mut self.caches {
            n += purge(name, c, index, clock, changes);
        }
        n
    }

    /// Applies one write at log index `index`, the replicated clock at
    /// `clock`; replies `[index, reply]`.
    pub fn apply(
        &mut self,
        index: u64,
        clock: u64,
        name: &Bytes,
        bound: Bound,
        op: &NamedOp,
        changes: &mut Vec<Change>,
    ) -> Reply {
        let c = self.caches.entry(name.clone()).or_default();
        purge(name, c, index, clock, changes);
        c.keys.set_index(index);
        let change = |key: &Bytes, kind, value: Option<Bytes>| Change {
            index,
            cache: name.clone(),
            key: key.clone(),
            kind,
            value,
        };
        let expiry = |ttl: Option<u64>| ttl.map(|t| clock.saturating_add(t));
        let too_big = |key: &Bytes, value: &Bytes| {
            bound.max_bytes > 0 && weight(key, value) > bound.max_bytes
        };
        let reply = match op {
            NamedOp::Put {
                key,
                value,
                ttl_ms,
                only_if_absent,
            } => match only_if_absent.then(|| c.get(key)).flatten() {
                Some(existing) => Reply::bulk(existing.clone()),
                _ if too_big(key, value) => entry_too_large(bound),
                _ => {
                    c.set(index, key.clone(), value.clone(), expiry(*ttl_ms));
                    changes.push(change(key, ChangeKind::Put, Some(value.clone())));
                    if *only_if_absent {
                        Reply::Nil
                    } else {
                        Reply::Ok
                    }
                }
            },
            NamedOp::Delete { key } => {
                let deleted = c.delete(key);
                if deleted {
                    changes.push(change(key, ChangeKind::Delete, None));
                }
                Reply::Int(i64::from(deleted))
            }
            NamedOp::Incr { key, by, ttl_ms } => {
                let (current, expire_at) = match c.keys.get(key) {
                    Some(item) => (
                        match &item.value {
                            Value::Str(v) => std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.parse::<i64>().ok()),
                            _ => None,
                        },
                        item.expire_at(),
                    ),
                    None => (Some(0), expiry(*ttl_ms)),
                };
                match current.map(|n| n.checked_add(*by)) {
                    None => errors::not_integer(),
                    Some(None) => Reply::err("increment or decrement would overflow"),
                    Some(Some(n)) => {
                        let value = Bytes::from(n.to_string());
                        c.set(index, key.clone(), value.clone(), expire_at);
                        changes.push(change(key, ChangeKind::Put, Some(value)));
                        Reply::Int(n)
                    }
                }
            }
            NamedOp::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => {
                if c.get(key) != expected.as_ref() {
                    Reply::Int(0)
                } else if too_big(key, value) {
                    entry_too_large(bound)
                } else {
                    c.set(index, key.clone(), value.clone(), expiry(*ttl_ms));
                    changes.push(change(key, ChangeKind::Put, Some(value.clone())));
                    Reply::Int(1)
                }
            }
        };
        evict(c, bound, &mut |key| {
            changes.push(change(&key, ChangeKind::Evict, None))
        });
        Reply::Array(vec![Reply::Int(index as i64), reply])
    }
}

/// What an entry of `key` and `value` counts towards a byte bound.
pub fn weight(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len() + PER_KEY) as u64
}

fn entry_too_large(bound: Bound) -> Reply {
    Reply::err(format!(
        "the entry is larger than its cache's bound of {} bytes",
        bound.max_bytes
    ))
}

fn purge(name: &Bytes, c: &mut Named, index: u64, clock: u64, out: &mut Vec<Change>) -> usize {
    c.keys.advance_clock(clock);
    let mut n = 0;
    while let Some((key, item)) = c.keys.pop_expired() {
        c.order.remove(&(item.version, key.clone()));
        out.push(Change {
            index,
            cache: name.clone(),
            key,
            kind: ChangeKind::Expire,
            value: None,
        });
        n += 1;
    }
    n
}

/// Deletes the least recently written entries until the cache is within
/// `bound`.
fn evict(c: &mut Named, bound: Bound, evicted: &mut dyn FnMut(Bytes)) {
    let over = |c: &Named| {
        (bound.max_entries > 0 && c.len() as u64 > bound.max_entries)
            || (bound.max_bytes > 0 && c.used_bytes() as u64 > bound.max_bytes)
    };
    while over(c) {
        let Some((_, key)) = c.order.get_min().cloned() else {
            return;
        };
        if !c.delete(&key) {
            // An order entry without its key: drop it and go on.
            c.order.remove_min();
            continue;
        }
        evicted(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> NamedOp {
        NamedOp::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            ttl_ms: None,
            only_if_absent: false,
        }
    }

    #[test]
    fn the_least_recently_written_entries_are_evicted_first() {
        let mut n = NamedCaches::default();
        let name = Bytes::from("c");
        let bound = Bound {
            max_entries: 2,
            max_bytes: 0,
        };
        let mut changes = vec![];
        for (i, k) in ["a", "b", "a", "c"].iter().enumerate() {
            n.apply(i as u64 + 1, 10, &name, bound, &put(k, "v"), &mut changes);
        }
        let c = n.cache(b"c").unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.get(b"a").is_some() && c.get(b"c").is_some() && c.get(b"b").is_none());
        let evicted: Vec<_> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Evict)
            .map(|c| (c.index, c.key.clone()))
            .collect();
        assert_eq!(evicted, vec![(4, Bytes::from("b"))]);
    }

    #[test]
    fn a_byte_bound_refuses_an_entry_larger_than_itself() {
        let mut n = NamedCaches::default();
        let name = Bytes::from("c");
        let bound = Bound {
            max_entries: 0,
            max_bytes: 300,
        };
        let mut ch = vec![];
        let big = "x".repeat(300);
        let r = n.apply(1, 1, &name, bound, &put("k", &big), &mut ch);
        assert!(matches!(r, Reply::Array(ref v) if v[1].is_error()), "{r:?}");
        for i in 0..5 {
            n.apply(2 + i, 1, &name, bound, &put(&format!("k{i}"), "v"), &mut ch);
        }
        // Each entry weighs 2 + 1 + 96 = 99 bytes: three fit in 300.
        assert!(n.cache(b"c").unwrap().used_bytes() <= 300);
        assert_eq!(n.cache(b"c").unwrap().len(), 3);
    }

    #[test]
    fn incr_cas_and_expiry() {
        let mut n = NamedCaches::default();
        let name = Bytes::from("c");
        let mut ch = vec![];
        let incr = |by| NamedOp::Incr {
            key: Bytes::from("n"),
            by,
            ttl_ms: Some(100),
        };
        let b = Bound::default();
        assert_eq!(
            n.apply(1, 1_000, &name, b, &incr(5), &mut ch),
            Reply::Array(vec![Reply::Int(1), Reply::Int(5)])
        );
        assert_eq!(
            n.apply(2, 1_050, &name, b, &incr(i64::MAX), &mut ch),
            Reply::Array(vec![
                Reply::Int(2),
                Reply::err("increment or decrement would overflow")
            ])
        );
        // The TTL of the first incr stays: it expires at 1,100.
        assert_eq!(n.cache(b"c").unwrap().expire_at(b"n"), Some(1_100));
        let cas = |expected: Option<&str>, value: &str| NamedOp::Cas {
            key: Bytes::from("n"),
            expected: expected.map(|e| Bytes::copy_from_slice(e.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ttl_ms: None,
        };
        assert_eq!(
            n.apply(3, 1_060, &name, b, &cas(Some("4"), "x"), &mut ch),
            Reply::Array(vec![Reply::Int(3), Reply::Int(0)])
        );
        assert_eq!(
            n.apply(4, 1_060, &name, b, &cas(Some("5"), "x"), &mut ch),
            Reply::Array(vec![Reply::Int(4), Reply::Int(1)])
        );
        assert_eq!(n.cache(b"c").unwrap().expire_at(b"n"), None);
        n.apply(5, 1_070, &name, b, &put("t", "v").with_ttl(10), &mut ch);
        assert_eq!(n.next_expiry(), Some(1_080));
        assert_eq!(n.purge_expired(6, 1_080, &mut ch), 1);
        let last = ch.last().unwrap();
        assert_eq!((last.index, last.kind), (6, ChangeKind::Expire));
        assert!(n.cache(b"c").unwrap().get(b"t").is_none());
    }

    impl NamedOp {
        fn with_ttl(mut self, t: u64) -> Self {
            if let NamedOp::Put { ttl_ms, .. } = &mut self {
                *ttl_ms = Some(t);
            }
            self
        }
    }
}
