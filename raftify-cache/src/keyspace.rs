//! The keyspace: keys, their typed values and TTLs, and the replicated
//! clock expiry is judged against.
//!
//! Every collection is a persistent (structurally shared) map from `imbl`:
//! a snapshot is a clone, serialized while the cache goes on. Hashing is
//! deterministic (the same on every node), so a command that picks
//! members by iteration order (`SPOP`) picks the same ones everywhere.

use crate::scan_order::{HKey, KeyView, Probe};
use bytes::Bytes;
use std::cmp::Ordering;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU64;
use std::ops::Bound;
use std::sync::Arc;

/// The hasher of every map: deterministic across nodes.
pub type Hasher = BuildHasherDefault<std::hash::DefaultHasher>;
/// A persistent hash map with the deterministic hasher.
pub type Map<K, V> = imbl::GenericHashMap<K, V, Hasher, imbl::shared_ptr::DefaultSharedPtr>;
/// A persistent hash set with the deterministic hasher.
pub type Set<A> = imbl::GenericHashSet<A, Hasher, imbl::shared_ptr::DefaultSharedPtr>;

/// A sorted-set score, ordered totally (`NaN` never gets in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: members by score, then by member bytes.
#[derive(Debug, Clone, Default)]
pub struct ZSet {
    /// Each member's score.
    pub scores: Map<Bytes, Score>,
    /// `(score, member)` in order.
    pub ordered: imbl::OrdSet<(Score, Bytes)>,
}

impl ZSet {
    /// Sets `member`'s score; returns whether it is new.
    pub fn insert(&mut self, member: Bytes, score: f64) -> bool {
        let old = self.scores.insert(member.clone(), Score(score));
        if let Some(old) = old {
            self.ordered.remove(&(old, member.clone()));
        }
        self.ordered.insert((Score(score), member));
        old.is_none()
    }

    /// Removes `member`; returns whether it was there.
    pub fn remove(&mut self, member: &Bytes) -> bool {
        match self.scores.remove(member) {
            Some(s) => {
                self.ordered.remove(&(s, member.clone()));
                true
            }
            None => false,
        }
    }

    /// The members.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// `member`'s 0-based rank by ascending score.
    pub fn rank(&self, member: &Bytes) -> Option<usize> {
        let s = self.scores.get(member)?;
        Some(self.ordered.range(..(*s, member.clone())).count())
    }
}

/// A key's value. Collections are boxed: most keys hold strings, and every
/// key's slot in the keyspace is as large as the largest variant.
#[derive(Debug, Clone)]
pub enum Value {
    /// A string (also an integer or a float, as text).
    Str(Bytes),
    /// A hash: field → value.
    Hash(Box<Map<Bytes, Bytes>>),
    /// A list.
    List(Box<imbl::Vector<Bytes>>),
    /// A set.
    Set(Box<Set<Bytes>>),
    /// A sorted set.
    ZSet(Box<ZSet>),
}

impl Value {
    /// Redis's name of the type (`TYPE`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
        }
    }

    /// Whether a collection became empty (Redis then deletes the key).
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(h) => h.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.is_empty(),
        }
    }

    /// An estimate of the bytes the value holds (payload plus a fixed
    /// overhead per element), for `maxmemory` and `INFO memory`.
    pub fn weight(&self) -> usize {
        const PER_ELEMENT: usize = 48;
        match self {
            Value::Str(s) => s.len(),
            Value::Hash(h) => h.iter().map(|(k, v)| k.len() + v.len() + PER_ELEMENT).sum(),
            Value::List(l) => l.iter().map(|v| v.len() + PER_ELEMENT).sum(),
            Value::Set(s) => s.iter().map(|v| v.len() + PER_ELEMENT).sum(),
            Value::ZSet(z) => z.scores.keys().map(|m| 2 * (m.len() + PER_ELEMENT)).sum(),
        }
    }
}

/// A key's value, its expiry (ms on the replicated clock) and version.
#[derive(Debug, Clone)]
pub struct Item {
    /// The value.
    pub value: Value,
    /// When it expires (see [`Item::expire_at`]); a niche, so an item is
    /// 8 bytes smaller than with `Option<u64>` (a million keys: 16 MB, as
    /// B-tree nodes are half full or more).
    expires: Option<NonZeroU64>,
    /// The log index of the entry that last changed it (value or TTL): the
    /// same on every node, what `WATCH` compares.
    pub version: u64,
}

impl Item {
    /// When it expires (ms on the replicated clock); `None`: never.
    pub fn expire_at(&self) -> Option<u64> {
        self.expires.map(NonZeroU64::get)
    }
}

/// Expiry times are stored as at least 1 ms (0 and 1 are both long past).
fn expiry(t: Option<u64>) -> Option<NonZeroU64> {
    t.and_then(|t| NonZeroU64::new(t.max(1)))
}

/// `b` in an allocation of its own, exactly its size, when it is small.
/// What the keyspace keeps was cut from a command's arguments; the first
/// clone of such a `Bytes` adds a reference-count block (32 bytes with
/// malloc's overhead) to share it — more than a 100-byte value is worth
/// keeping. A copy of a small value costs less than what it saves; a large
/// one (over [`OWN_MAX`]) is shared as it is.
pub fn own(b: Bytes) -> Bytes {
    if b.len() <= OWN_MAX {
        Bytes::copy_from_slice(&b)
    } else {
        b
    }
}

/// Largest value [`own`] copies.
pub const OWN_MAX: usize = 1024;

/// A range of keys from a probe on (the map's `range` takes a pair of
/// bounds of the stored key's view).
type RangeFrom<'a> = (Bound<&'a dyn KeyView>, Bound<&'a dyn KeyView>);

/// Fixed bytes counted per key on top of its key and value.
pub const PER_KEY: usize = 96;

/// The keys and the replicated clock.
#[derive(Debug, Clone, Default)]
pub struct Keyspace {
    /// A B-tree (dense nodes), not a hash trie: a HAMT's sparse nodes
    /// cost several times the memory of the keys they hold. In `SCAN`'s
    /// order ([`crate::scan_order`]).
    items: imbl::OrdMap<HKey, Item>,
    /// `(expire_at, key)` of every key with a TTL.
    expiries: imbl::OrdSet<(u64, Bytes)>,
    /// The replicated clock: the largest entry stamp applied (ms).
    clock_ms: u64,
    /// Estimated bytes held (see [`Value::weight`]).
    used: usize,
    /// The log index being applied: the version of what it changes.
    index: u64,
    /// Estimated bytes per hash slot, once counting is asked for
    /// ([`Keyspace::count_slots`]): what a sharded deployment splits a
    /// group's slots by.
    slots: SlotBytes,
}

/// Bytes per hash slot: counted or not (no CRC16 per write), and the
/// counters — indexed by slot, allocated with the first key (128 KiB),
/// shared with snapshots until the next write.
#[derive(Debug, Clone, Default)]
struct SlotBytes {
    on: bool,
    counts: Option<Arc<Vec<u64>>>,
}

impl SlotBytes {
    /// Moves `key`'s slot's count by `+add - sub` bytes.
    fn weigh(&mut self, key: &[u8], add: usize, sub: usize) {
        if !self.on || add == sub {
            return;
        }
        let slots = usize::from(raftify_shard::SLOTS);
        let counts = self.counts.get_or_insert_with(|| Arc::new(vec![0; slots]));
        if let Some(c) = Arc::make_mut(counts).get_mut(usize::from(key_slot(key))) {
            *c = (*c + add as u64).saturating_sub(sub as u64);
        }
    }
}

/// The key slot of `key` (Redis Cluster's: CRC16 of the key or of its
/// `{hash tag}`, modulo 16,384): the shard crate's, the one definition.
pub use raftify_shard::key_slot;

impl Keyspace {
    /// The replicated clock (ms since the Unix epoch).
    pub fn clock(&self) -> u64 {
        self.clock_ms
    }

    /// Moves the replicated clock to `stamp` if it is later (never back).
    pub fn advance_clock(&mut self, stamp: u64) {
        self.clock_ms = self.clock_ms.max(stamp);
    }

    /// Sets the log index being applied (versions of changed keys).
    pub fn set_index(&mut self, index: u64) {
        self.index = index;
    }

    /// The key's version ([`Item::version`]); 0 when missing or expired.
    pub fn version(&self, key: &[u8]) -> u64 {
        self.get(key).map_or(0, |i| i.version)
    }

    /// Estimated bytes held by keys and values.
    pub fn used_memory(&self) -> usize {
        self.used
    }

    /// Counts bytes per hash slot from now on, starting from what is held
    /// (one pass over the keys): what [`Keyspace::slot_bytes`] reports.
    pub fn count_slots(&mut self) {
        self.slots = SlotBytes {
            on: true,
            counts: None,
        };
        for (k, item) in self.items.iter() {
            let key = k.key();
            self.slots
                .weigh(key, key.len() + PER_KEY + item.value.weight(), 0);
        }
    }

    /// Whether bytes per slot are counted ([`Keyspace::count_slots`]).
    pub fn counts_slots(&self) -> bool {
        self.slots.on
    }

    /// Estimated bytes held per hash slot ([`key_slot`]), in slot order;
    /// slots holding nothing are left out (nothing at all unless counted:
    /// [`Keyspace::count_slots`]). Each key counts as in
    /// [`Keyspace::used_memory`], whose total this is.
    pub fn slot_bytes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.slots
            .counts
            .iter()
            .flat_map(|v| v.iter().enumerate())
            .filter(|(_, &b)| b > 0)
            .map(|(s, &b)| (s as u16, b)) // s < SLOTS
    }

    /// Moves `key`'s slot's count by `+add - sub` bytes.
    fn weigh(&mut self, key: &[u8], add: usize, sub: usize) {
        self.slots.weigh(key, add, sub);
    }

    /// Keys, expired ones not yet deleted included.
    pub fn raw_len(&self) -> usize {
        self.items.len()
    }

    fn live(&self, item: &Item) -> bool {
        item.expire_at().is_none_or(|t| t > self.clock_ms)
    }

    /// The key's item, unless missing or expired.
    pub fn get(&self, key: &[u8]) -> Option<&Item> {
        self.items
            .get(Probe::of(key).view())
            .filter(|i| self.live(i))
    }

    /// Whether the key exists (and has not expired).
    pub fn exists(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// The key's item for changing it; an expired one is deleted first.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Item> {
        let probe = Probe::of(key);
        if self.items.get(probe.view()).is_some_and(|i| !self.live(i)) {
            self.remove(key);
        }
        let item = self.items.get_mut(probe.view())?;
        let weight = item.value.weight();
        self.used = self.used.saturating_sub(weight);
        self.slots.weigh(key, 0, weight);
        item.version = self.index;
        Some(item)
    }

    /// Puts the weight of a value changed through [`Keyspace::get_mut`]
    /// back, and deletes the key if its collection became empty.
    pub fn settle(&mut self, key: &[u8]) {
        let Some(item) = self.items.get(Probe::of(key).view()) else {
            return;
        };
        if item.value.is_empty_collection() {
            // Its weight was taken off by `get_mut`; `remove` takes it off
            // again (an empty collection weighs nothing), with the key's.
            self.remove(key);
        } else {
            let weight = item.value.weight();
            self.used += weight;
            self.weigh(key, weight, 0);
        }
    }

    /// Sets the key to `value` with `expire_at`, replacing what was there;
    /// returns the replaced item (expired or not). One descent of the tree.
    pub fn insert(&mut self, key: Bytes, value: Value, expire_at: Option<u64>) -> Option<Item> {
        let value = match value {
            Value::Str(s) => Value::Str(own(s)),
            other => other,
        };
        let expires = expiry(expire_at);
        let weight = key.len() + PER_KEY + value.weight();
        let item = Item {
            value,
            expires,
            version: self.index,
        };
        let old = self.items.insert(HKey::new(&key), item);
        let mut replaced = 0;
        if let Some(old) = &old {
            replaced = key.len() + PER_KEY + old.value.weight();
            self.used = self.used.saturating_sub(replaced);
            if let Some(t) = old.expire_at() {
                self.expiries.remove(&(t, key.clone()));
            }
        }
        self.used += weight;
        self.weigh(&key, weight, replaced);
        if let Some(t) = expires {
            self.expiries.insert((t.get(), own(key)));
        }
        old
    }

    /// [`Keyspace::insert`] keeping a version read from a snapshot. An
    /// empty collection (which commands never leave, see
    /// [`Keyspace::settle`]; a damaged or crafted snapshot or import may
    /// carry one) is no key: the key is removed instead.
    pub fn insert_versioned(
        &mut self,
        key: Bytes,
        value: Value,
        expire_at: Option<u64>,
        version: u64,
    ) {
        if value.is_empty_collection() {
            let _ = self.remove(&key);
            return;
        }
        let index = std::mem::replace(&mut self.index, version);
        let _ = self.insert(key, value, expire_at);
        self.index = index;
    }

    /// Deletes the key (expired or not); returns its item.
    pub fn remove(&mut self, key: &[u8]) -> Option<Item> {
        let old = self.items.remove(Probe::of(key).view())?;
        let weight = key.len() + PER_KEY + old.value.weight();
        self.used = self.used.saturating_sub(weight);
        self.weigh(key, 0, weight);
        if let Some(t) = old.expire_at() {
            self.expiries.remove(&(t, Bytes::copy_from_slice(key)));
        }
        Some(old)
    }

    /// Sets or clears a live key's expiry; false when the key is missing.
    pub fn set_expiry(&mut self, key: &[u8], expire_at: Option<u64>) -> bool {
        let (clock, index) = (self.clock_ms, self.index);
        let Some((stored, item)) = self.items.get_key_value_mut(Probe::of(key).view()) else {
            return false;
        };
        if item.expire_at().is_some_and(|t| t <= clock) {
            self.remove(key);
            return false;
        }
        let stored = Bytes::copy_from_slice(stored.key());
        let expires = expiry(expire_at);
        let old = std::mem::replace(&mut item.expires, expires);
        item.version = index;
        if let Some(old) = old {
            self.expiries.remove(&(old.get(), stored.clone()));
        }
        if let Some(t) = expires {
            self.expiries.insert((t.get(), stored));
        }
        true
    }

    /// The earliest expiry of any key, if one has a TTL.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.get_min().map(|(t, _)| *t)
    }

    /// Deletes every key expired by the replicated clock; returns how many.
    pub fn purge_expired(&mut self) -> usize {
        let mut n = 0;
        while self.pop_expired().is_some() {
            n += 1;
        }
        n
    }

    /// Deletes the key that expired first, if one has expired by the
    /// replicated clock; returns it and its item.
    pub fn pop_expired(&mut self) -> Option<(Bytes, Item)> {
        loop {
            let (t, key) = self.expiries.get_min().cloned()?;
            if t > self.clock_ms {
                return None;
            }
            self.expiries.remove(&(t, key.clone()));
            if let Some(item) = self.remove(&key) {
                return Some((key, item));
            }
        }
    }

    /// Every live key and item, in `SCAN`'s order
    /// ([`crate::scan_order::scan_hash`], then the key).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Item)> + '_ {
        self.items
            .iter()
            .filter(|(_, i)| self.live(i))
            .map(|(k, i)| (k.key(), i))
    }

    /// Live keys and items in `SCAN`'s order from the first key whose
    /// hash is above `cursor` (0: from the start), each with its hash:
    /// a range lookup, not a walk from the start.
    pub fn iter_after(&self, cursor: u64) -> impl Iterator<Item = (u64, &[u8], &Item)> + '_ {
        // None after the last position.
        let ranged = Probe::after(cursor).map(|p| {
            let from: RangeFrom<'_> = (Bound::Included(p.view()), Bound::Unbounded);
            self.items.range::<_, dyn KeyView>(from)
        });
        ranged
            .into_iter()
            .flatten()
            .filter(|(_, i)| self.live(i))
            .map(|(k, i)| (k.hash(), k.key(), i))
    }

    /// Deletes every key.
    pub fn clear(&mut self) {
        self.items = imbl::OrdMap::new();
        self.expiries = imbl::OrdSet::new();
        self.used = 0;
        self.slots.counts = None;
    }

    /// Keys with a TTL (live ones).
    pub fn expiring(&self) -> usize {
        self.expiries
            .iter()
            .filter(|(t, _)| *t > self.clock_ms)
            .count()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_collection_from_a_snapshot_is_no_key() {
        let mut ks = Keyspace::default();
        let set = Value::Set(Box::default());
        ks.insert_versioned(Bytes::from("s"), set, None, 7);
        assert!(ks.get(b"s").is_none());
        assert_eq!(ks.raw_len(), 0);
        ks.insert(Bytes::from("l"), Value::Str(Bytes::from("x")), None);
        let list = Value::List(Box::default());
        ks.insert_versioned(Bytes::from("l"), list, None, 8);
        assert!(ks.get(b"l").is_none(), "an empty import replaces: no key");
    }

    use super::*;

    #[test]
    fn expiry_follows_the_replicated_clock_only() {
        let mut ks = Keyspace::default();
        ks.advance_clock(1_000);
        ks.insert(Bytes::from("a"), Value::Str(Bytes::from("1")), Some(1_500));
        ks.insert(Bytes::from("b"), Value::Str(Bytes::from("2")), None);
        assert!(ks.exists(b"a"));
        assert_eq!(ks.next_expiry(), Some(1_500));
        ks.advance_clock(1_499);
        assert!(ks.exists(b"a"));
        ks.advance_clock(1_500);
        assert!(!ks.exists(b"a"), "expired at its deadline");
        ks.advance_clock(10);
        assert_eq!(ks.clock(), 1_500, "the clock never goes back");
        assert_eq!(ks.purge_expired(), 1);
        assert_eq!(ks.raw_len(), 1);
        assert_eq!(ks.next_expiry(), None);
    }

    #[test]
    fn the_expiry_index_follows_replaced_removed_and_persisted_keys() {
        let long = Bytes::from("a-key-longer-than-twenty-four-bytes");
        for key in [Bytes::from("short"), long] {
            let mut ks = Keyspace::default();
            ks.insert(key.clone(), Value::Str(Bytes::from("1")), Some(100));
            assert_eq!(ks.next_expiry(), Some(100));
            // Replaced with another TTL, then without one.
            ks.insert(key.clone(), Value::Str(Bytes::from("2")), Some(200));
            assert_eq!(ks.next_expiry(), Some(200));
            assert_eq!(ks.expiring(), 1);
            ks.insert(key.clone(), Value::Str(Bytes::from("3")), None);
            assert_eq!(ks.next_expiry(), None);
            // Set, persisted, set again, removed.
            assert!(ks.set_expiry(&key, Some(300)));
            assert_eq!(ks.next_expiry(), Some(300));
            assert!(ks.set_expiry(&key, None));
            assert_eq!(ks.next_expiry(), None);
            assert!(ks.set_expiry(&key, Some(400)));
            ks.remove(&key);
            assert_eq!((ks.next_expiry(), ks.raw_len()), (None, 0));
            assert_eq!(ks.used_memory(), 0);
            // Expired and popped: gone from both.
            ks.insert(key.clone(), Value::Str(Bytes::from("4")), Some(500));
            ks.advance_clock(500);
            assert_eq!(ks.pop_expired().map(|(k, _)| k), Some(key.clone()));
            assert_eq!((ks.next_expiry(), ks.raw_len()), (None, 0));
        }
    }

    #[test]
    fn used_memory_returns_to_zero() {
        let mut ks = Keyspace::default();
        ks.insert(Bytes::from("k"), Value::Str(Bytes::from("vvvv")), Some(5));
        assert!(ks.used_memory() > 0);
        if let Some(item) = ks.get_mut(b"k") {
            item.value = Value::Str(Bytes::from("longer value"));
        }
        ks.settle(b"k");
        ks.remove(b"k");
        assert_eq!(ks.used_memory(), 0);
    }

    #[test]
    fn bytes_per_slot_follow_every_change_and_add_up_to_used_memory() {
        let mut ks = Keyspace::default();
        let sum = |ks: &Keyspace| ks.slot_bytes().map(|(_, b)| b).sum::<u64>();
        ks.insert(Bytes::from("before"), Value::Str(Bytes::from("b")), None);
        assert_eq!(ks.slot_bytes().count(), 0, "not counted until asked");
        ks.count_slots();
        assert_eq!(
            sum(&ks),
            ks.used_memory() as u64,
            "counted from what is held"
        );
        ks.remove(b"before");
        // A hash tag puts both keys in one slot.
        ks.insert(
            Bytes::from("{u1}.a"),
            Value::Str(Bytes::from("x".repeat(100))),
            None,
        );
        ks.insert(Bytes::from("{u1}.b"), Value::Str(Bytes::from("y")), Some(5));
        ks.insert(Bytes::from("other"), Value::Str(Bytes::from("zz")), None);
        let slot = key_slot(b"u1");
        let per = ks.slot_bytes().collect::<Vec<_>>();
        assert_eq!(per.len(), 2, "{per:?}");
        let tagged = per.iter().find(|(s, _)| *s == slot).map(|(_, b)| *b);
        let want = (6 + PER_KEY + 100) + (6 + PER_KEY + 1);
        assert_eq!(tagged, Some(want as u64));
        assert_eq!(sum(&ks), ks.used_memory() as u64);
        // Replaced, changed in place, expired, removed: still the total.
        ks.insert(Bytes::from("other"), Value::Str(Bytes::from("z")), None);
        if let Some(item) = ks.get_mut(b"{u1}.a") {
            item.value = Value::Str(Bytes::from("short"));
        }
        ks.settle(b"{u1}.a");
        assert_eq!(sum(&ks), ks.used_memory() as u64);
        ks.advance_clock(10);
        assert_eq!(ks.purge_expired(), 1);
        assert_eq!(sum(&ks), ks.used_memory() as u64);
        ks.remove(b"other");
        assert_eq!(
            ks.slot_bytes().collect::<Vec<_>>(),
            vec![(slot, (6 + PER_KEY + 5) as u64)]
        );
        ks.clear();
        assert_eq!(ks.slot_bytes().count(), 0);
    }

    #[test]
    fn zset_orders_by_score_then_member() {
        let mut z = ZSet::default();
        assert!(z.insert(Bytes::from("b"), 1.0));
        assert!(z.insert(Bytes::from("a"), 1.0));
        assert!(z.insert(Bytes::from("c"), 0.5));
        assert!(!z.insert(Bytes::from("c"), 2.0));
        let order: Vec<_> = z.ordered.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(
            order,
            vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]
        );
        assert_eq!(z.rank(&Bytes::from("c")), Some(2));
        assert!(z.remove(&Bytes::from("a")));
        assert_eq!(z.len(), 2);
    }
}
