//! The simulation's clients: register reads and writes routed by a
//! node's placement as a cluster client and the sharded server route them.

use super::node::{View, World};
use super::Data;
use super::*;
use crate::history::{Op, Outcome, Ret};
use crate::rng::SimRng;
use bytes::Bytes;
use raftify_cache::{CacheEntry, Op as CacheOp, Reply};
use raftify_shard::{key_slot, GroupId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How one routed attempt ended.
pub(super) enum Try {
    /// The group answered this.
    Done(Reply),
    /// Certainly not applied (refused before or by the log).
    Refused,
    /// May have been applied.
    Unknown,
}

pub(super) fn argv(words: &[&str]) -> Vec<Bytes> {
    words
        .iter()
        .map(|w| Bytes::copy_from_slice(w.as_bytes()))
        .collect()
}

/// Node `v`'s replica of group `g`, or — as a cluster client follows
/// `-MOVED` from a node hosting none — a running node's that hosts it.
fn replica_of(w: &World, v: &View, g: GroupId) -> Option<Data> {
    v.data.get(&g).cloned().or_else(|| {
        w.running()
            .into_iter()
            .find_map(|id| w.view(id)?.data.get(&g).cloned())
    })
}

/// Runs `argv` on group `g` through replica `r`: a write through the log
/// (forwarded to the leader), a read at a read index, as the sharded
/// server runs them.
pub(super) async fn attempt(r: &Data, argv: &[Bytes], write: bool, clock_ms: u64) -> Try {
    if write {
        let entry = CacheEntry {
            clock_ms,
            op: CacheOp::Exec {
                commands: vec![argv.to_vec()],
                transaction: false,
                watched: Vec::new(),
            },
        };
        match tokio::time::timeout(OP_TIMEOUT, r.propose(&entry)).await {
            Ok(Ok(reply)) => Try::Done(reply),
            Ok(Err(e)) if e.class().may_retry(false) => Try::Refused,
            _ => Try::Unknown,
        }
    } else {
        let a = argv.to_vec();
        match tokio::time::timeout(OP_TIMEOUT, r.linearizable_read(move |sm| sm.read(&a))).await {
            Ok(Ok(reply)) => Try::Done(reply),
            _ => Try::Refused,
        }
    }
}

pub(super) fn refusal(r: &Reply) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("ASK"))
}

/// Runs `argv` on `key`'s group as `v`'s placement routes it: to the
/// slot's owner; when the owner answers `ASK` (the slot was handed to a
/// move's target), to the target once the replica asked holds the slot.
pub(super) async fn route(
    w: &World,
    v: &View,
    key: &str,
    argv: &[Bytes],
    write: bool,
    clock_ms: u64,
) -> Try {
    let p = v.placement.borrow().clone();
    let slot = key_slot(key.as_bytes());
    let owner = p.owner(slot);
    let Some(r) = replica_of(w, v, owner) else {
        return Try::Refused;
    };
    match attempt(&r, argv, write, clock_ms).await {
        Try::Done(Reply::Error(e)) if e.starts_with("ASK") => {
            let Some(m) = p
                .moving()
                .filter(|m| m.slots.contains(slot) && m.from == owner)
            else {
                return Try::Refused;
            };
            let Some(target) = replica_of(w, v, m.to) else {
                return Try::Refused;
            };
            let holds = target
                .stale_read(|sm| sm.frozen().accepts_asking(slot))
                .await;
            if !holds {
                return Try::Refused;
            }
            match attempt(&target, argv, write, clock_ms).await {
                Try::Done(r) if refusal(&r) => Try::Refused,
                other => other,
            }
        }
        Try::Done(r) if refusal(&r) => Try::Refused,
        other => other,
    }
}

/// The replicated clock's stamp for an entry: cluster time (no key has a
/// TTL; the stamp only has to be deterministic).
pub(super) fn clock_ms(started: Instant) -> u64 {
    1_000_000 + started.elapsed().as_millis() as u64
}

/// One register operation (a read, or a write of `value`) by `thread` on
/// `key` through node `v`, recorded in the history; how it ended (after
/// an unknown outcome the thread continues under a new id).
pub(super) async fn operate(
    w: &World,
    v: &View,
    thread: u64,
    key: &str,
    value: Option<String>,
    started: Instant,
) -> Outcome {
    let (op, words, write) = match &value {
        None => (Op::Read, vec!["get", key], false),
        Some(v) => (Op::Write(v.clone()), vec!["set", key, v.as_str()], true),
    };
    let id = w.history.invoke(thread, key, op.clone());
    let outcome = match route(w, v, key, &argv(&words), write, clock_ms(started)).await {
        Try::Done(Reply::Ok) if write => Outcome::Ok(Ret::WriteOk),
        Try::Done(Reply::Bulk(b)) if !write => {
            Outcome::Ok(Ret::Read(Some(String::from_utf8_lossy(&b).into_owned())))
        }
        Try::Done(Reply::Nil) if !write => Outcome::Ok(Ret::Read(None)),
        Try::Done(other) => {
            w.violation(format!("[client] {words:?} answered {other:?}"));
            Outcome::Unknown
        }
        Try::Refused => Outcome::Failed,
        Try::Unknown => Outcome::Unknown,
    };
    w.history.end(id, outcome.clone());
    outcome
}

/// The keys: `k0..`, each in a slot of its own.
pub(super) fn keys(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

pub(super) async fn client(
    w: Arc<World>,
    cid: u64,
    mut rng: SimRng,
    stop: Arc<AtomicBool>,
    started: Instant,
) {
    let keys = keys(w.opts.keys);
    let (mut generation, mut n) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(rng.range(2, 30))).await;
        let running = w.running();
        let Some(&id) = running.get(rng.below(running.len().max(1) as u64) as usize) else {
            continue;
        };
        let Some(v) = w.view(id) else {
            continue;
        };
        // Half the time a key of the range being moved, if any: the
        // move's every stage sees traffic.
        let moving: Vec<&String> = match v.placement.borrow().moving() {
            Some(m) if rng.chance(0.5) => keys
                .iter()
                .filter(|k| m.slots.contains(key_slot(k.as_bytes())))
                .collect(),
            _ => Vec::new(),
        };
        let key = match moving.get(rng.below(moving.len().max(1) as u64) as usize) {
            Some(k) => *k,
            None => &keys[rng.below(keys.len() as u64) as usize],
        };
        let value = (rng.below(10) >= 4).then(|| {
            n += 1;
            format!("{cid}.{n}")
        });
        let thread = cid * 1_000_000 + generation;
        if operate(&w, &v, thread, key, value, started).await == Outcome::Unknown {
            generation += 1;
        }
    }
}
