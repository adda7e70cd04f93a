//! Client histories and their linearizability check.
//!
//! Clients record each operation's invocation and its outcome in real-time
//! order (a global sequence number taken at the moment each event happens).
//! The check is `stateright`'s [`LinearizabilityTester`], per key (a
//! linearizable map is one linearizable register per key), against the
//! sequential specification of a register with read, write and
//! compare-and-set ([`CasRegister`]).
//!
//! Outcomes:
//! * `Ok(ret)` — the operation took effect and returned `ret`;
//! * `Failed` — it certainly took no effect (e.g. `NotLeader`): left out;
//! * `Unknown` — it may or may not have taken effect (timeout, leadership
//!   lost, connection reset): kept as an invocation that never returns,
//!   which the tester may place anywhere after its invocation, or nowhere.
//!   A client whose operation is `Unknown` continues under a new thread id
//!   (as in Jepsen), since a thread has one operation in flight at a time.

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An operation on one register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read the value.
    Read,
    /// Write a value.
    Write(String),
    /// Compare-and-set: write `new` if the value is `expected`.
    Cas(Option<String>, String),
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The value read (None: absent).
    Read(Option<String>),
    /// The write took effect.
    WriteOk,
    /// Whether the compare-and-set swapped.
    Cas(bool),
}

/// The sequential specification: a register with read, write and CAS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CasRegister(pub Option<String>);

impl SequentialSpec for CasRegister {
    type Op = Op;
    type Ret = Ret;
    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Read => Ret::Read(self.0.clone()),
            Op::Write(v) => {
                self.0 = Some(v.clone());
                Ret::WriteOk
            }
            Op::Cas(expected, new) => {
                if &self.0 == expected {
                    self.0 = Some(new.clone());
                    Ret::Cas(true)
                } else {
                    Ret::Cas(false)
                }
            }
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Took effect, returned this.
    Ok(Ret),
    /// Certainly took no effect.
    Failed,
    /// May or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
struct Record {
    tag: Option<u64>,
    thread: u64,
    key: String,
    op: Op,
    invoked: u64,
    ended: Option<(u64, Outcome)>,
}

/// A concurrent history of client operations.
#[derive(Default)]
pub struct History {
    seq: Arc<AtomicU64>,
    ops: Mutex<Vec<Record>>,
}

/// Handle of an invoked operation.
#[derive(Debug, Clone, Copy)]
pub struct OpId(usize);

/// Figures of a checked history.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Operations that returned a result.
    pub ok: u64,
    /// Operations that certainly failed (left out).
    pub failed: u64,
    /// Operations with an unknown outcome.
    pub unknown: u64,
    /// Keys checked.
    pub keys: usize,
    /// Keys whose check ran out of its time budget (`RAFTIFY_CHECK_BUDGET_MS`,
    /// default 10 000 per key): neither passed nor failed.
    pub inconclusive: Vec<String>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The history's clock: every event takes the next tick. Share it
    /// with observers (the simulation's apply oracle) to order their events
    /// with the clients'.
    pub fn clock(&self) -> Arc<AtomicU64> {
        self.seq.clone()
    }

    /// Records the invocation of `op` on `key` by `thread`.
    pub fn invoke(&self, thread: u64, key: &str, op: Op) -> OpId {
        self.invoke_tagged(thread, key, op, None)
    }

    /// Like [`History::invoke`], with a tag (the command's digest) that
    /// [`History::resolve_unknown`] can look up.
    pub fn invoke_tagged(&self, thread: u64, key: &str, op: Op, tag: Option<u64>) -> OpId {
        let invoked = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.push(Record {
            tag,
            thread,
            key: key.to_string(),
            op,
            invoked,
            ended: None,
        });
        OpId(ops.len() - 1)
    }

    /// Records how the operation ended.
    pub fn end(&self, id: OpId, outcome: Outcome) {
        let at = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops[id.0].ended = Some((at, outcome));
    }

    /// Settles operations whose outcome the client did not learn, with
    /// knowledge from outside the clients (the simulation sees every apply):
    /// `lookup(tag)` gives `Some(Some((tick, ok)))` when the operation took effect
    /// (`tick` of the history clock at which it was first applied — an upper
    /// bound of its linearization point — and, for a CAS, whether it
    /// swapped), `Some(None)` when it certainly never took effect (dropped as
    /// failed), `None` when that is not known (stays unknown). Returns
    /// (took effect, never did).
    pub fn resolve_unknown(
        &self,
        lookup: impl Fn(u64) -> Option<Option<(u64, bool)>>,
    ) -> (u64, u64) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let (mut applied, mut dropped) = (0, 0);
        for r in ops.iter_mut() {
            let unknown = matches!(r.ended, None | Some((_, Outcome::Unknown)));
            let Some(tag) = r.tag else { continue };
            if !unknown || r.op == Op::Read {
                continue;
            }
            let Some(found) = lookup(tag) else { continue };
            match found {
                Some((tick, ok)) if tick > r.invoked => {
                    let ret = match r.op {
                        Op::Cas(..) => Ret::Cas(ok),
                        _ => Ret::WriteOk,
                    };
                    r.ended = Some((tick, Outcome::Ok(ret)));
                    applied += 1;
                }
                Some(_) => {}
                None => {
                    r.ended = Some((r.invoked + 1, Outcome::Failed));
                    dropped += 1;
                }
            }
        }
        (applied, dropped)
    }

    /// Number of operations recorded.
    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The figures of the history, without checking it.
    pub fn stats(&self) -> Checked {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = Checked::default();
        let mut keys = std::collections::BTreeSet::new();
        for r in ops.iter() {
            keys.insert(r.key.clone());
            match &r.ended {
                Some((_, Outcome::Ok(_))) => c.ok += 1,
                Some((_, Outcome::Failed)) => c.failed += 1,
                _ => c.unknown += 1,
            }
        }
        c.keys = keys.len();
        c
    }

    /// Checks every key's history for linearizability. The error names the
    /// key and lists its history.
    pub fn check(&self) -> Result<Checked, String> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut stats = Checked::default();
        let mut by_key: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for r in ops {
            match &r.ended {
                Some((_, Outcome::Ok(_))) => stats.ok += 1,
                Some((_, Outcome::Failed)) => {
                    stats.failed += 1;
                    continue;
                }
                // A read that never returned has no effect to account for.
                None | Some((_, Outcome::Unknown)) => {
                    stats.unknown += 1;
                    if r.op == Op::Read {
                        continue;
                    }
                }
            }
            by_key.entry(r.key.clone()).or_default().push(r);
        }
        stats.keys = by_key.len();
        let debug = std::env::var_os("RAFTIFY_CHECK_DEBUG").is_some();
        for (key, recs) in by_key {
            let t = std::time::Instant::now();
            if debug {
                let unknown = recs
                    .iter()
                    .filter(|r| !matches!(r.ended, Some((_, Outcome::Ok(_)))))
                    .count();
                eprintln!(
                    "checking key {key:?}: {} ops, {unknown} unknown",
                    recs.len()
                );
            }
            let budget = std::env::var("RAFTIFY_CHECK_BUDGET_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000);
            match check_key_within(&key, recs, std::time::Duration::from_millis(budget)) {
                Some(r) => r?,
                None => stats.inconclusive.push(key.clone()),
            }
            if debug {
                eprintln!("  checked in {:?}", t.elapsed());
            }
        }
        Ok(stats)
    }
}

/// [`check_key`] on a thread, given up after `budget` (the search is
/// exponential in the worst case; the thread is left to finish on its own).
fn check_key_within(
    key: &str,
    recs: Vec<Record>,
    budget: std::time::Duration,
) -> Option<Result<(), String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let key = key.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(check_key(&key, &recs));
    });
    rx.recv_timeout(budget).ok()
}

/// Feeds one key's operations, as events in real-time order, to the tester.
fn check_key(key: &str, recs: &[Record]) -> Result<(), String> {
    enum Ev<'a> {
        Invoke(&'a Record),
        Return(&'a Record, &'a Ret),
    }
    let mut events: Vec<(u64, Ev)> = Vec::new();
    for r in recs {
        events.push((r.invoked, Ev::Invoke(r)));
        if let Some((at, Outcome::Ok(ret))) = &r.ended {
            events.push((*at, Ev::Return(r, ret)));
        }
    }
    events.sort_by_key(|(at, _)| *at);
    let mut tester = LinearizabilityTester::new(CasRegister::default());
    for (_, ev) in &events {
        let r = match ev {
            Ev::Invoke(r) => tester.on_invoke(r.thread, r.op.clone()).map(|_| ()),
            Ev::Return(r, ret) => tester.on_return(r.thread, (*ret).clone()).map(|_| ()),
        };
        r.map_err(|e| format!("key {key:?}: malformed history: {e}"))?;
    }
    if tester.is_consistent() {
        return Ok(());
    }
    let mut lines = Vec::new();
    for r in recs {
        lines.push(format!(
            "  thread {:>8} [{:>6} .. {:>6}] {:?} -> {:?}",
            r.thread,
            r.invoked,
            r.ended
                .as_ref()
                .map(|e| e.0.to_string())
                .unwrap_or("?".into()),
            r.op,
            r.ended.as_ref().map(|e| &e.1)
        ));
    }
    Err(format!(
        "key {key:?}: the history is not linearizable ({} operations):\n{}",
        recs.len(),
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_history_passes_and_a_stale_read_fails() {
        let h = History::new();
        let w = h.invoke(1, "x", Op::Write("a".into()));
        h.end(w, Outcome::Ok(Ret::WriteOk));
        let w = h.invoke(1, "x", Op::Write("b".into()));
        h.end(w, Outcome::Ok(Ret::WriteOk));
        let r = h.invoke(2, "x", Op::Read);
        h.end(r, Outcome::Ok(Ret::Read(Some("b".into()))));
        assert!(h.check().is_ok());
        let r = h.invoke(2, "x", Op::Read);
        h.end(r, Outcome::Ok(Ret::Read(Some("a".into()))));
        let err = h.check().unwrap_err();
        assert!(err.contains("not linearizable"), "{err}");
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        let h = History::new();
        let w = h.invoke(1, "x", Op::Write("a".into()));
        h.end(w, Outcome::Unknown);
        let r = h.invoke(2, "x", Op::Read);
        h.end(r, Outcome::Ok(Ret::Read(None)));
        let r = h.invoke(2, "x", Op::Read);
        h.end(r, Outcome::Ok(Ret::Read(Some("a".into()))));
        assert!(h.check().is_ok());
        // ...but cannot be undone once observed.
        let r = h.invoke(2, "x", Op::Read);
        h.end(r, Outcome::Ok(Ret::Read(None)));
        assert!(h.check().is_err());
    }

    #[test]
    fn cas_semantics() {
        let h = History::new();
        let c = h.invoke(1, "x", Op::Cas(None, "a".into()));
        h.end(c, Outcome::Ok(Ret::Cas(true)));
        let c = h.invoke(1, "x", Op::Cas(None, "b".into()));
        h.end(c, Outcome::Ok(Ret::Cas(false)));
        let f = h.invoke(3, "x", Op::Write("zzz".into()));
        h.end(f, Outcome::Failed);
        let r = h.invoke(2, "x", Op::Read);
        h.end(r, Outcome::Ok(Ret::Read(Some("a".into()))));
        assert!(h.check().is_ok());
        let c = h.invoke(1, "x", Op::Cas(Some("a".into()), "c".into()));
        h.end(c, Outcome::Ok(Ret::Cas(false))); // must have succeeded
        assert!(h.check().is_err());
    }
}
