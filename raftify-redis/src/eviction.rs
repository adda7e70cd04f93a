//! `--maxmemory` and `--maxmemory-policy`. Memory is the keyspace's
//! estimate (keys, values and a fixed overhead per key and element, the
//! same on every node). Over the limit:
//!
//! * `noeviction`: commands that may add data are refused with Redis's
//!   `-OOM` error (deletes, pops and TTL changes still run);
//! * the other policies: the leader picks victims and proposes one
//!   [`Op::Evict`] entry, deleting them on every node at once, until memory
//!   is back under 95 % of the limit. Writes go on meanwhile, unless memory
//!   overshoots the limit by 10 % (the evictor is behind): then they are
//!   refused with `-OOM` too.
//!
//! Victims come from a sample of up to [`SAMPLE`] keys drawn uniformly in
//! one pass over the keyspace: `allkeys-random` takes them as drawn,
//! `volatile-ttl` those with the nearest expiry (keys without a TTL are
//! never evicted), `allkeys-lru` the least recently *written* (each key
//! carries the log index of its last change; reads do not refresh it).

use crate::server::Node;
use bytes::Bytes;
use raftify_cache::{CacheEntry, Op};
use raftify_core::unix_ms;
use slog::{debug, Logger};
use std::time::Duration;

/// Keys sampled per eviction round.
pub const SAMPLE: usize = 4096;
/// Most keys one eviction entry deletes.
const MAX_VICTIMS: usize = 1024;
/// How often the leader checks memory.
const CHECK: Duration = Duration::from_millis(100);

/// How keys are chosen for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refuse writes that may add data.
    NoEviction,
    /// Any key, least recently written first.
    AllKeysLru,
    /// Any key, at random.
    AllKeysRandom,
    /// Keys with a TTL, nearest expiry first.
    VolatileTtl,
}

impl Policy {
    /// Redis's name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::NoEviction => "noeviction",
            Policy::AllKeysLru => "allkeys-lru",
            Policy::AllKeysRandom => "allkeys-random",
            Policy::VolatileTtl => "volatile-ttl",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "noeviction" => Policy::NoEviction,
            "allkeys-lru" => Policy::AllKeysLru,
            "allkeys-random" => Policy::AllKeysRandom,
            "volatile-ttl" => Policy::VolatileTtl,
            "allkeys-lfu" | "volatile-lru" | "volatile-lfu" | "volatile-random" => {
                return Err(format!("maxmemory policy {s} is not supported yet (noeviction, allkeys-lru, allkeys-random, volatile-ttl)"))
            }
            _ => return Err(format!("unknown maxmemory policy {s:?} (noeviction, allkeys-lru, allkeys-random, volatile-ttl)")),
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

/// Whether a write of `used` bytes against `max` must be refused (`-OOM`).
pub fn refuses(policy: Policy, max: u64, used: u64) -> bool {
    match (max, policy) {
        (0, _) => false,
        (_, Policy::NoEviction) => used >= max,
        _ => used > max.saturating_add(max / 10),
    }
}

/// A key the evictor may pick: its name, expiry and version.
type Candidate = (Bytes, Option<u64>, u64);

/// Chooses victims from `sample` to free about `excess` bytes.
fn choose(policy: Policy, mut sample: Vec<(Candidate, usize)>, excess: usize) -> Vec<Bytes> {
    match policy {
        Policy::NoEviction => return Vec::new(),
        Policy::AllKeysRandom => {}
        Policy::AllKeysLru => sample.sort_by_key(|((_, _, version), _)| *version),
        Policy::VolatileTtl => {
            sample.retain(|((_, ttl, _), _)| ttl.is_some());
            sample.sort_by_key(|((_, ttl, _), _)| *ttl);
        }
    }
    let mut freed = 0;
    let mut out = Vec::new();
    for ((key, _, _), weight) in sample {
        if freed >= excess || out.len() >= MAX_VICTIMS {
            break;
        }
        freed += weight;
        out.push(key);
    }
    out
}

/// The leader's evictor: runs until the node stops.
pub async fn run(node: Node, policy: Policy, max: u64, logger: Logger) {
    if max == 0 || policy == Policy::NoEviction {
        return;
    }
    let mut seed = unix_ms() | 1;
    let mut state = node.handle().subscribe();
    loop {
        if state.borrow().fatal.is_some() || matches!(state.borrow().role, raftify::Role::Stopped) {
            return;
        }
        let mut pause = CHECK;
        if node.handle().is_leader() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let target = max - max / 20;
            let victims = node
                .stale_read(|sm| {
                    let ks = sm.keyspace();
                    let used = ks.used_memory() as u64;
                    if used <= max {
                        return Vec::new();
                    }
                    let sample = sample(ks, seed);
                    choose(policy, sample, (used - target) as usize)
                })
                .await;
            if !victims.is_empty() {
                let n = victims.len();
                let entry = CacheEntry {
                    clock_ms: unix_ms(),
                    op: Op::Evict(victims),
                };
                match node.propose_local(&entry).await {
                    Ok(_) => {
                        debug!(logger, "evicted keys"; "count" => n, "policy" => policy.name());
                        pause = Duration::ZERO;
                    }
                    Err(e) => debug!(logger, "eviction proposal failed; retrying"; "error" => %e),
                }
            }
        }
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = state.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Up to [`SAMPLE`] keys drawn uniformly (reservoir sampling, one pass),
/// with their weights.
fn sample(ks: &raftify_cache::keyspace::Keyspace, mut seed: u64) -> Vec<(Candidate, usize)> {
    let mut out: Vec<(Candidate, usize)> = Vec::with_capacity(SAMPLE);
    for (i, (key, item)) in ks.iter().enumerate() {
        let c = (
            (key.clone(), item.expire_at, item.version),
            key.len() + raftify_cache::keyspace::PER_KEY + item.value.weight(),
        );
        if out.len() < SAMPLE {
            out.push(c);
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        if j < SAMPLE {
            out[j] = c;
        }
    }
    out
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
        assert_eq!("allkeys-lru".parse::<Policy>(), Ok(Policy::AllKeysLru));
        assert!("allkeys-lfu"
            .parse::<Policy>()
            .unwrap_err()
            .contains("not supported yet"));
        assert!("nonsense".parse::<Policy>().is_err());
    }

    #[test]
    fn victims_follow_the_policy() {
        let c = |k: &str, ttl: Option<u64>, v: u64| {
            ((Bytes::copy_from_slice(k.as_bytes()), ttl, v), 100)
        };
        let sample = vec![
            c("a", None, 5),
            c("b", Some(50), 9),
            c("c", Some(10), 7),
            c("d", None, 1),
        ];
        assert_eq!(
            choose(Policy::AllKeysLru, sample.clone(), 150),
            vec![Bytes::from("d"), Bytes::from("a")]
        );
        assert_eq!(
            choose(Policy::VolatileTtl, sample.clone(), 1000),
            vec![Bytes::from("c"), Bytes::from("b")]
        );
        assert_eq!(
            choose(Policy::NoEviction, sample, 1000),
            Vec::<Bytes>::new()
        );
        assert!(refuses(Policy::NoEviction, 100, 100));
        assert!(!refuses(Policy::AllKeysLru, 100, 105));
        assert!(refuses(Policy::AllKeysLru, 100, 111));
        assert!(!refuses(Policy::NoEviction, 0, 1 << 40));
    }
}
