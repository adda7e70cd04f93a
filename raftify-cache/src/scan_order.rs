//! The order the keyspace keeps its keys in: by a 64-bit hash of the key
//! (then by the key), which is `SCAN`'s order. Its cursor is the hash of
//! the last key returned, so `SCAN` resumes with a range lookup, in
//! O(log n) plus the keys returned, and every key present for a whole
//! iteration is returned, whatever is added or deleted meanwhile (as
//! Redis's guarantees say), without a second index of the keys.
//!
//! The stored key ([`HKey`]) carries its hash (8 bytes per key); a lookup
//! by `&[u8]` hashes the probe once and compares hashes first, so it costs
//! no more than comparing key bytes did. Keys of up to [`INLINE`] bytes —
//! most keys — are stored in the map's node itself, without an allocation
//! of their own (a million 12-byte keys: 16 MB less).

use smallvec::SmallVec;
use std::borrow::Borrow;
use std::cmp::Ordering;

/// The position of a key in `SCAN`'s order (never 0: that is the start):
/// 64-bit FNV-1a, the same on every node and version.
pub fn scan_hash(key: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    key.iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
        .max(1)
}

/// Collections of at most this many elements are scanned in one call
/// (`HSCAN` answers them whole with cursor 0, as Redis does for its small
/// encodings; Redis's `hash-max-listpack-entries` is 128).
pub const SCAN_WHOLE: usize = 128;

/// A larger collection is scanned in at most about this many calls,
/// whatever `COUNT` says (it is a hint): each call walks the whole
/// collection, so fewer, larger steps cost less in all.
pub const SCAN_STEPS: usize = 32;

/// At most about this many bytes (by the caller's weights) per step: a
/// step ends early, at a hash boundary, once it holds this much.
pub const STEP_BYTES: usize = 4 << 20;

/// One step of a `SCAN`-like iteration over a collection that keeps no
/// order of its own: the elements whose [`scan_hash`] (of `key`) is above
/// `cursor`, the smallest hashes first — at least `count` of them (or
/// `len / SCAN_STEPS`), fewer once they weigh [`STEP_BYTES`] (`weight`),
/// never fewer than one — with every element of the last hash taken (a
/// collision never splits across calls); and the next cursor (0 when none
/// is left). An element present for a whole iteration is returned once,
/// whatever is added or removed meanwhile. O(n) per call.
pub fn scan_step<T>(
    elements: impl Iterator<Item = T>,
    key: impl Fn(&T) -> &[u8],
    weight: impl Fn(&T) -> usize,
    len: usize,
    cursor: u64,
    count: usize,
) -> (Vec<T>, u64) {
    let want = count.max(len.div_ceil(SCAN_STEPS)).max(1);
    let mut after: Vec<(u64, T)> = elements
        .map(|e| (scan_hash(key(&e)), e))
        .filter(|(h, _)| *h > cursor)
        .collect();
    let mut rest = false;
    if after.len() > want {
        after.select_nth_unstable_by_key(want - 1, |(h, _)| *h);
        let last = after[want - 1].0;
        // The first `want` are the smallest; others of the same hash too.
        let mut i = 0;
        after.retain(|(h, _)| {
            let keep = i < want || *h == last;
            rest |= !keep && *h > last;
            i += 1;
            keep
        });
    }
    after.sort_unstable_by_key(|(h, _)| *h);
    // The byte budget, cut at a hash boundary.
    let mut total = 0;
    let mut cut = after.len();
    for i in 0..after.len() {
        total += weight(&after[i].1);
        if total >= STEP_BYTES {
            let h = after[i].0;
            cut = after[i..]
                .iter()
                .position(|(x, _)| *x != h)
                .map_or(after.len(), |p| i + p);
            break;
        }
    }
    if cut < after.len() {
        after.truncate(cut);
        rest = true;
    }
    let next = if rest {
        after.last().map_or(0, |(h, _)| *h)
    } else {
        0
    };
    (after.into_iter().map(|(_, e)| e).collect(), next)
}

/// The longest key stored inline.
pub(crate) const INLINE: usize = 24;

/// A key as the keyspace stores it: with its hash; inline when short
/// (40 bytes in all, as a `Bytes` and the hash were).
#[derive(Debug, Clone)]
pub(crate) struct HKey {
    hash: u64,
    key: SmallVec<[u8; INLINE]>,
}

impl HKey {
    /// `key`, hashed and copied.
    pub(crate) fn new(key: &[u8]) -> HKey {
        HKey {
            hash: scan_hash(key),
            key: SmallVec::from_slice(key),
        }
    }

    /// The key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Its position in `SCAN`'s order.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

/// What keys are compared by: a stored [`HKey`] or a borrowed [`Probe`].
pub(crate) trait KeyView {
    /// The hash and the key.
    fn parts(&self) -> (u64, &[u8]);
}

impl KeyView for HKey {
    fn parts(&self) -> (u64, &[u8]) {
        (self.hash, &self.key)
    }
}

/// A key looked up without copying it.
pub(crate) struct Probe<'a>(u64, &'a [u8]);

impl<'a> Probe<'a> {
    /// The probe of `key`.
    pub(crate) fn of(key: &'a [u8]) -> Probe<'a> {
        Probe(scan_hash(key), key)
    }

    /// The first position after every key of hash `hash` (and before the
    /// keys of the next hash).
    pub(crate) fn after(hash: u64) -> Option<Probe<'static>> {
        hash.checked_add(1).map(|h| Probe(h, &[]))
    }

    /// As the map's lookups take it.
    pub(crate) fn view(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl KeyView for Probe<'_> {
    fn parts(&self) -> (u64, &[u8]) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for HKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}
impl Eq for dyn KeyView + '_ {}
impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

// The stored key orders exactly as its view does (what `Borrow` requires).
impl PartialEq for HKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}
impl Eq for HKey {}
impl PartialOrd for HKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Bound;

    #[test]
    fn scan_steps_return_each_element_once_even_as_the_set_changes() {
        let mut set: std::collections::BTreeSet<Vec<u8>> =
            (0..1000).map(|i| format!("f{i}").into_bytes()).collect();
        let (mut cursor, mut seen, mut calls) = (0u64, Vec::new(), 0);
        loop {
            let (got, next) = scan_step(set.iter().cloned(), |e| e, |_| 1, set.len(), cursor, 10);
            seen.extend(got);
            calls += 1;
            // Changes between calls: one added, an earlier addition removed.
            set.insert(format!("new{calls}").into_bytes());
            set.remove(format!("new{}", calls - 1).as_bytes());
            if next == 0 {
                break;
            }
            assert!(next > cursor);
            cursor = next;
        }
        assert!(calls <= SCAN_STEPS + 1, "{calls} calls");
        for i in 0..1000 {
            let f = format!("f{i}").into_bytes();
            assert_eq!(seen.iter().filter(|s| **s == f).count(), 1, "{i}");
        }
        // Small: one step; a cursor past everything: nothing, and done.
        let (all, next) = scan_step([&b"a"[..], b"b"].into_iter(), |e| e, |_| 1, 2, 0, 1000);
        assert_eq!((all.len(), next), (2, 0));
        let (none, next) = scan_step([&b"a"[..]].into_iter(), |e| e, |_| 1, 1, u64::MAX, 10);
        assert_eq!((none.len(), next), (0, 0));
        // Heavy elements: a step stops at the byte budget, one at least.
        let heavy: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 3]).collect();
        let (mut cursor, mut seen) = (0, 0);
        loop {
            let (got, next) = scan_step(
                heavy.iter(),
                |e| &e[..],
                |_| STEP_BYTES / 2,
                10,
                cursor,
                1000,
            );
            assert!(!got.is_empty() && got.len() <= 2, "{}", got.len());
            seen += got.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen, 10);
    }

    #[test]
    fn a_stored_key_is_as_large_as_a_bytes_and_its_hash() {
        assert_eq!(std::mem::size_of::<HKey>(), 40);
        let long = HKey::new(&[b'k'; 100]);
        assert_eq!(long.key(), &[b'k'; 100][..]);
        assert_eq!(HKey::new(b"short").key(), b"short");
    }

    #[test]
    fn keys_order_by_hash_then_bytes_and_probes_find_them() {
        let mut map: imbl::OrdMap<HKey, u32> = imbl::OrdMap::new();
        for (i, k) in ["a", "b", "key:1", "", "{t}x"].iter().enumerate() {
            map.insert(HKey::new(k.as_bytes()), i as u32);
        }
        let hashes: Vec<u64> = map.keys().map(HKey::hash).collect();
        assert!(hashes.windows(2).all(|w| w[0] <= w[1]), "{hashes:?}");
        assert_eq!(map.get(Probe::of(b"key:1").view()), Some(&2));
        assert_eq!(map.get(Probe::of(b"").view()), Some(&3));
        assert_eq!(map.get(Probe::of(b"nope").view()), None);
        // After a key's hash: only the keys of larger hashes.
        let h = scan_hash(b"b");
        let after = Probe::after(h).unwrap();
        let from: (Bound<&dyn KeyView>, Bound<&dyn KeyView>) =
            (Bound::Included(after.view()), Bound::Unbounded);
        let rest: Vec<u64> = map
            .range::<_, dyn KeyView>(from)
            .map(|(k, _)| k.hash())
            .collect();
        assert_eq!(
            rest,
            hashes
                .iter()
                .copied()
                .filter(|&x| x > h)
                .collect::<Vec<_>>()
        );
        assert!(Probe::after(u64::MAX).is_none());
        assert_ne!(scan_hash(b"x"), 0);
    }
}
