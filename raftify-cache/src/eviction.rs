//! Choosing what to evict over a memory limit: the policies, the sample
//! they choose from, and the leader-local access frequencies LFU uses.
//!
//! Memory is the keyspace's estimate ([`Keyspace::used_memory`]: keys,
//! values and a fixed overhead per key and element, the same on every
//! node). Over the limit, `noeviction` refuses writes that may add data;
//! every other policy has the leader pick victims and propose them as one
//! [`Op::Evict`](crate::Op::Evict) entry, so every node deletes the same
//! keys at the same point of the log. Which keys are chosen need not be
//! deterministic — only the entry that names them is replicated.
//!
//! Victims come from a sample of up to [`SAMPLE`] keys drawn uniformly in
//! one pass over the keyspace (Redis samples too, 5 keys by default):
//!
//! * `allkeys-random` / `volatile-random`: as drawn;
//! * `allkeys-lru` / `volatile-lru`: least recently *written* first (each
//!   key carries the log index of its last change; reads do not refresh
//!   it, since a read on one node cannot change what every node stores);
//! * `allkeys-lfu` / `volatile-lfu`: least frequently used first, by a
//!   [`Frequencies`] sketch of the reads and writes this node saw (reads it
//!   served, writes it applied), halved periodically so old popularity
//!   fades, like Redis's `lfu-decay-time`;
//! * `volatile-ttl`: nearest expiry first.
//!
//! `volatile-*` never evicts a key without a TTL.

use crate::commands::xorshift;
use crate::keyspace::{Keyspace, PER_KEY};
use bytes::Bytes;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Keys sampled per eviction round.
pub const SAMPLE: usize = 4096;
/// Most keys one eviction entry deletes.
pub const MAX_VICTIMS: usize = 1024;

/// How keys are chosen for eviction (Redis's `maxmemory-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refuse writes that may add data.
    NoEviction,
    /// Any key, least recently written first.
    AllKeysLru,
    /// Any key, least frequently used first.
    AllKeysLfu,
    /// Any key, at random.
    AllKeysRandom,
    /// Keys with a TTL, least recently written first.
    VolatileLru,
    /// Keys with a TTL, least frequently used first.
    VolatileLfu,
    /// Keys with a TTL, at random.
    VolatileRandom,
    /// Keys with a TTL, nearest expiry first.
    VolatileTtl,
}

const POLICIES: [Policy; 8] = [
    Policy::NoEviction,
    Policy::AllKeysLru,
    Policy::AllKeysLfu,
    Policy::AllKeysRandom,
    Policy::VolatileLru,
    Policy::VolatileLfu,
    Policy::VolatileRandom,
    Policy::VolatileTtl,
];

impl Policy {
    /// Redis's name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::NoEviction => "noeviction",
            Policy::AllKeysLru => "allkeys-lru",
            Policy::AllKeysLfu => "allkeys-lfu",
            Policy::AllKeysRandom => "allkeys-random",
            Policy::VolatileLru => "volatile-lru",
            Policy::VolatileLfu => "volatile-lfu",
            Policy::VolatileRandom => "volatile-random",
            Policy::VolatileTtl => "volatile-ttl",
        }
    }

    /// Whether it uses access frequencies (a [`Frequencies`] sketch).
    pub fn counts_accesses(self) -> bool {
        matches!(self, Policy::AllKeysLfu | Policy::VolatileLfu)
    }

    /// Whether only keys with a TTL may be evicted.
    pub fn volatile_only(self) -> bool {
        matches!(
            self,
            Policy::VolatileLru
                | Policy::VolatileLfu
                | Policy::VolatileRandom
                | Policy::VolatileTtl
        )
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        POLICIES
            .into_iter()
            .find(|p| p.name() == lower)
            .ok_or_else(|| {
                let names: Vec<_> = POLICIES.iter().map(|p| p.name()).collect();
                format!("unknown maxmemory policy {s:?} ({})", names.join(", "))
            })
    }
}

/// Parses a memory size as Redis does: `1000`, `100kb`, `64mb`, `2gb`
/// (powers of 1024; `k`, `m`, `g` are powers of 1000).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "unknown memory unit in {s:?} (b, k, kb, m, mb, g, gb)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a memory size: {s:?}"))
}

/// Whether a write of `used` bytes against `max` must be refused (`-OOM`):
/// at the limit under `noeviction`; under the other policies only once
/// memory overshoots the limit by 10 % (the evictor is behind).
pub fn refuses(policy: Policy, max: u64, used: u64) -> bool {
    match (max, policy) {
        (0, _) => false,
        (_, Policy::NoEviction) => used >= max,
        _ => used > max.saturating_add(max / 10),
    }
}

/// A key the evictor may pick, borrowed from the keyspace: cloning a
/// stored key would give it a shared reference-count block for good (a
/// `Bytes` becomes shared on its first clone), so only victims are cloned.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    /// The key.
    pub key: &'a [u8],
    /// When it expires (replicated clock, ms).
    pub expire_at: Option<u64>,
    /// The log index of its last change.
    pub version: u64,
    /// Its access frequency (0 when not counted).
    pub frequency: u8,
    /// The bytes evicting it frees (estimate).
    pub weight: usize,
}

/// Up to [`SAMPLE`] keys drawn uniformly (reservoir sampling, one pass
/// over the keyspace), seeded by `seed`; frequencies from `freq`.
pub fn sample<'a>(
    ks: &'a Keyspace,
    mut seed: u64,
    freq: Option<&Frequencies>,
) -> Vec<Candidate<'a>> {
    let mut out: Vec<Candidate> = Vec::with_capacity(SAMPLE.min(ks.raw_len()));
    for (i, (key, item)) in ks.iter().enumerate() {
        let slot = if out.len() < SAMPLE {
            None
        } else {
            seed = xorshift(seed);
            match (seed % (i as u64 + 1)) as usize {
                j if j < SAMPLE => Some(j),
                _ => continue,
            }
        };
        let c = Candidate {
            key,
            expire_at: item.expire_at(),
            version: item.version,
            frequency: freq.map_or(0, |f| f.get(key)),
            weight: key.len() + PER_KEY + item.value.weight(),
        };
        match slot {
            Some(j) => out[j] = c,
            None => out.push(c),
        }
    }
    out
}

/// Chooses victims from `sample` to free about `excess` bytes (at most
/// [`MAX_VICTIMS`]).
pub fn choose(policy: Policy, mut sample: Vec<Candidate<'_>>, excess: usize) -> Vec<Bytes> {
    if policy == Policy::NoEviction {
        return Vec::new();
    }
    if policy.volatile_only() {
        sample.retain(|c| c.expire_at.is_some());
    }
    match policy {
        Policy::AllKeysLru | Policy::VolatileLru => sample.sort_by_key(|c| c.version),
        Policy::AllKeysLfu | Policy::VolatileLfu => {
            // Ties (most keys, under a uniform load) go to the older write.
            sample.sort_by_key(|c| (c.frequency, c.version))
        }
        Policy::VolatileTtl => sample.sort_by_key(|c| c.expire_at),
        Policy::NoEviction | Policy::AllKeysRandom | Policy::VolatileRandom => {}
    }
    let mut freed = 0;
    let mut out = Vec::new();
    for c in sample {
        if freed >= excess || out.len() >= MAX_VICTIMS {
            break;
        }
        freed += c.weight;
        out.push(Bytes::copy_from_slice(c.key));
    }
    out
}

/// Rows of the sketch.
const ROWS: usize = 4;

/// Approximate access counts per key: a count-min sketch of saturating
/// 8-bit counters (`ROWS` × `width`), fixed memory whatever the number of
/// keys. A key's frequency is the smallest of its counters, so it is never
/// undercounted (collisions only overcount). After `10 × width` accesses
/// every counter is halved (TinyLFU's reset), so frequencies describe
/// recent use. Thread-safe without locks; concurrent updates may lose an
/// increment, which an estimate tolerates.
#[derive(Debug)]
pub struct Frequencies {
    counters: Vec<AtomicU8>,
    width: usize,
    accesses: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

impl Frequencies {
    /// A sketch `width` counters wide per row (rounded up to a power of
    /// two, at least 64); about `4 × width` bytes.
    pub fn new(width: usize) -> Self {
        let width = width.next_power_of_two().max(64);
        Frequencies {
            counters: (0..ROWS * width).map(|_| AtomicU8::new(0)).collect(),
            width,
            accesses: AtomicU64::new(0),
            hasher: Default::default(),
        }
    }

    fn slots(&self, key: &[u8]) -> [usize; ROWS] {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        let hash = h.finish();
        // Two halves of one hash give the rows' independent-enough indexes.
        let (a, b) = (hash as u32 as usize, (hash >> 32) as usize | 1);
        std::array::from_fn(|row| row * self.width + (a.wrapping_add(row * b) & (self.width - 1)))
    }

    /// Counts one access to `key`.
    pub fn touch(&self, key: &[u8]) {
        for i in self.slots(key) {
            let c = &self.counters[i];
            let v = c.load(Ordering::Relaxed);
            if v < u8::MAX {
                c.store(v + 1, Ordering::Relaxed);
            }
        }
        let n = self.accesses.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(10 * self.width as u64) {
            for c in &self.counters {
                c.store(c.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
    }

    /// The estimated recent accesses of `key` (saturating at 255).
    pub fn get(&self, key: &[u8]) -> u8 {
        self.slots(key)
            .into_iter()
            .map(|i| self.counters[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_policies_parse_as_redis_writes_them() {
        assert_eq!(parse_memory("100"), Ok(100));
        assert_eq!(parse_memory("1kb"), Ok(1024));
        assert_eq!(parse_memory("64MB"), Ok(64 << 20));
        assert_eq!(parse_memory("2g"), Ok(2_000_000_000));
        assert!(parse_memory("12xb").is_err());
        assert!(parse_memory("99999999999999999999gb").is_err());
        for p in POLICIES {
            assert_eq!(p.name().parse::<Policy>(), Ok(p));
        }
        assert_eq!("AllKeys-LFU".parse::<Policy>(), Ok(Policy::AllKeysLfu));
        let err = "nonsense".parse::<Policy>().unwrap_err();
        assert!(err.contains("volatile-lfu"), "{err}");
    }

    fn c(key: &Bytes, ttl: Option<u64>, version: u64, frequency: u8) -> Candidate<'_> {
        Candidate {
            key,
            expire_at: ttl,
            version,
            frequency,
            weight: 100,
        }
    }

    #[test]
    fn victims_follow_the_policy() {
        let [a, b, cc, d] = ["a", "b", "c", "d"].map(Bytes::from);
        let sample = vec![
            c(&a, None, 5, 3),
            c(&b, Some(50), 9, 0),
            c(&cc, Some(10), 7, 9),
            c(&d, None, 1, 200),
        ];
        let pick = |p, excess| choose(p, sample.clone(), excess);
        assert_eq!(pick(Policy::AllKeysLru, 150), ["d", "a"]);
        assert_eq!(pick(Policy::VolatileLru, 150), ["c", "b"]);
        assert_eq!(pick(Policy::AllKeysLfu, 250), ["b", "a", "c"]);
        assert_eq!(pick(Policy::VolatileLfu, 1000), ["b", "c"]);
        assert_eq!(pick(Policy::VolatileTtl, 1000), ["c", "b"]);
        assert_eq!(pick(Policy::VolatileRandom, 1000), ["b", "c"]);
        assert_eq!(pick(Policy::AllKeysRandom, 1000).len(), 4);
        assert!(pick(Policy::NoEviction, 1000).is_empty());
        assert!(refuses(Policy::NoEviction, 100, 100));
        assert!(!refuses(Policy::AllKeysLru, 100, 105));
        assert!(refuses(Policy::AllKeysLru, 100, 111));
        assert!(!refuses(Policy::NoEviction, 0, 1 << 40));
    }

    #[test]
    fn frequencies_rank_hot_keys_above_cold_ones_and_fade() {
        let f = Frequencies::new(1024);
        for _ in 0..50 {
            f.touch(b"hot");
        }
        f.touch(b"cold");
        assert!(f.get(b"hot") >= 50, "never undercounted");
        assert!(f.get(b"hot") > f.get(b"cold"));
        assert_eq!(f.get(b"never"), 0, "a sparse sketch has no collision here");
        // 10 × width accesses halve every counter.
        for i in 0..10 * 1024u32 {
            f.touch(&i.to_be_bytes());
        }
        assert!(f.get(b"hot") < 50, "{}", f.get(b"hot"));
        for _ in 0..300 {
            f.touch(b"hot");
        }
        assert_eq!(f.get(b"hot"), u8::MAX, "saturates");
    }

    #[test]
    fn the_sample_is_bounded_and_carries_what_choosing_needs() {
        let mut ks = Keyspace::default();
        for i in 0..(SAMPLE + 500) {
            ks.set_index(i as u64 + 1);
            let ttl = (i % 2 == 0).then_some(1_000_000);
            ks.insert(
                format!("k{i}").into(),
                crate::keyspace::Value::Str("v".into()),
                ttl,
            );
        }
        let freq = Frequencies::new(64);
        freq.touch(b"k0");
        let s = sample(&ks, 7, Some(&freq));
        assert_eq!(s.len(), SAMPLE);
        assert!(s.iter().all(|c| c.weight == c.key.len() + PER_KEY + 1));
        assert!(s.iter().all(|c| c.version >= 1));
        assert!(s.iter().any(|c| c.expire_at.is_some()) && s.iter().any(|c| c.expire_at.is_none()));
        assert_eq!(
            sample(&ks, 7, None),
            sample(&ks, 7, None),
            "same seed, same sample"
        );
    }
}
