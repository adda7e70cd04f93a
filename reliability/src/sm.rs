//! The state machine the simulation replicates: a string register map that
//! also records the `(index, command digest)` sequence it applied, and
//! reports every apply to a shared [`ApplyOracle`] that checks, as it
//! happens, that every node applies the same command at the same index, in
//! increasing index order.

use crate::invariants::Violations;
use crate::rng::digest;
use raftify_core::{AbstractLogEntry, AbstractStateMachine, BoxError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: String,
        /// Value (unique per write in the workload).
        value: String,
    },
    /// Set `key` to `new` if it holds `expected` (`None`: absent).
    Cas {
        /// Key.
        key: String,
        /// Expected current value.
        expected: Option<String>,
        /// New value.
        new: String,
    },
    /// Add one to the integer in `key` (absent: 0), in a client session.
    Incr {
        /// Key.
        key: String,
        /// Unique per intended increment (`client.seq`): a second apply of
        /// the same increment has the same digest.
        nonce: String,
    },
}

impl AbstractLogEntry for Cmd {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(self)?)
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

impl Cmd {
    /// Digest of the encoded command.
    pub fn digest(&self) -> u64 {
        digest(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// What `apply` returns to the proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOut {
    /// Log index of the entry.
    pub index: u64,
    /// Put: true. Cas: whether it swapped.
    pub ok: bool,
}

impl ApplyOut {
    /// Parses an apply output.
    pub fn decode(bytes: &[u8]) -> Option<ApplyOut> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Checks, across every node of a run, that each log index is applied with
/// one command only.
#[derive(Default)]
pub struct ApplyOracle {
    by_index: Mutex<BTreeMap<u64, (u64, u64)>>, // index -> (digest, first node)
    /// digest -> (index, ok, history tick of the first apply)
    by_digest: Mutex<BTreeMap<u64, (u64, bool, u64)>>,
    clock: Option<Arc<std::sync::atomic::AtomicU64>>,
    applies: std::sync::atomic::AtomicU64,
    /// Where violations go.
    pub violations: Violations,
}

impl ApplyOracle {
    /// A fresh oracle reporting to `violations`.
    pub fn new(violations: Violations) -> Arc<Self> {
        Arc::new(ApplyOracle {
            violations,
            ..Default::default()
        })
    }

    /// Like [`ApplyOracle::new`], stamping first applies with `clock` (a
    /// [`crate::history::History::clock`]).
    pub fn with_clock(
        violations: Violations,
        clock: Arc<std::sync::atomic::AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(ApplyOracle {
            violations,
            clock: Some(clock),
            ..Default::default()
        })
    }

    /// Where and how the command with digest `d` was first applied:
    /// (index, ok, history tick).
    pub fn applied_digest(&self, d: u64) -> Option<(u64, bool, u64)> {
        self.by_digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&d)
            .copied()
    }

    fn on_applied(&self, index: u64, d: u64, ok: bool) {
        let mut m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::btree_map::Entry::Vacant(v) = m.entry(d) {
            let tick = self
                .clock
                .as_ref()
                .map(|c| c.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                .unwrap_or(0);
            v.insert((index, ok, tick));
        }
    }

    /// A command that must be applied once (a session increment: unique
    /// per intended increment) applied at `index`.
    fn on_applied_once(&self, index: u64, d: u64) {
        let m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((first, ..)) = m.get(&d) {
            crate::invariants::exactly_once::check_single_apply(d, *first, index, &self.violations);
        }
    }

    fn on_apply(&self, node: u64, index: u64, d: u64) {
        self.applies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.by_index.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&index) {
            None => {
                m.insert(index, (d, node));
            }
            Some((d0, n0)) if *d0 != d => self.violations.report(
                "state_machine_safety",
                format!(
                    "node {node} applied command {d:016x} at index {index}, node {n0} applied {d0:016x}"
                ),
            ),
            Some(_) => {}
        }
    }

    /// The digest applied at `index`, if any node applied it.
    pub fn applied_at(&self, index: u64) -> Option<u64> {
        self.by_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .map(|x| x.0)
    }

    /// Total applies seen (all nodes).
    pub fn applies(&self) -> u64 {
        self.applies.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The replicated register map.
#[derive(Default)]
pub struct RecKv {
    /// The registers.
    pub map: BTreeMap<String, String>,
    /// `(index, digest)` of every user command applied (or restored).
    pub record: Vec<(u64, u64)>,
    node: u64,
    oracle: Option<Arc<ApplyOracle>>,
}

impl RecKv {
    /// An empty map for node `node`, reporting to `oracle`.
    pub fn new(node: u64, oracle: Arc<ApplyOracle>) -> Self {
        RecKv {
            node,
            oracle: Some(oracle),
            ..Default::default()
        }
    }

    fn last_index(&self) -> u64 {
        self.record.last().map(|r| r.0).unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl AbstractStateMachine<Cmd> for RecKv {
    type Output = Vec<u8>;

    async fn apply(&mut self, _entry: Cmd) -> Result<Vec<u8>, BoxError> {
        Err("RecKv needs the index: raftify calls apply_at".into())
    }

    async fn apply_at(&mut self, index: u64, entry: Cmd) -> Result<Vec<u8>, BoxError> {
        let d = entry.digest();
        if let Some(o) = &self.oracle {
            if index <= self.last_index() {
                o.violations.report(
                    "state_machine_safety",
                    format!(
                        "node {} applied index {index} after index {} (out of order or twice)",
                        self.node,
                        self.last_index()
                    ),
                );
            }
            o.on_apply(self.node, index, d);
            if matches!(entry, Cmd::Incr { .. }) {
                o.on_applied_once(index, d);
            }
        }
        self.record.push((index, d));
        let ok = match entry {
            Cmd::Put { key, value } => {
                self.map.insert(key, value);
                true
            }
            Cmd::Cas { key, expected, new } => {
                if self.map.get(&key) == expected.as_ref() {
                    self.map.insert(key, new);
                    true
                } else {
                    false
                }
            }
            Cmd::Incr { key, .. } => {
                let n: i64 = self.map.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0);
                self.map.insert(key, (n + 1).to_string());
                true
            }
        };
        if let Some(o) = &self.oracle {
            o.on_applied(index, d, ok);
        }
        Ok(serde_json::to_vec(&ApplyOut { index, ok })?)
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(&(&self.map, &self.record))?)
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        let (map, record): (BTreeMap<String, String>, Vec<(u64, u64)>) =
            serde_json::from_slice(&snapshot)?;
        if let Some(o) = &self.oracle {
            for (i, d) in &record {
                o.on_apply(self.node, *i, *d);
            }
        }
        self.map = map;
        self.record = record;
        Ok(())
    }
}

/// A node of the simulation.
pub type SimNode = raftify_core::Raft<Cmd, RecKv>;
