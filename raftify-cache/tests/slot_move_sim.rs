//! A seeded simulation of slot moves between many cache groups: the real
//! placement ([`raftify_shard::Placement`]), the real group state machines
//! ([`CacheState`], every step through the log codec), the mover's steps
//! in chunks ([`Migrate`]), and clients routed as `raftify-redis
//! --sharded` routes them (by the placement; `-ASK` followed to the
//! target with `ASKING`, served there only for slots it imported;
//! `-TRYAGAIN` retried later), interleaved one atomic step at a time by a
//! seeded random schedule. Groups are created (splits) and ranges move
//! back and forth; the mover crashes (its move re-run from the first
//! chunk) and repeats steps (an answer lost).
//!
//! Checked at every step: every slot has one owner; an acknowledged
//! `INCR` answers the model's next value and a `GET` the model's value
//! (no write lost, none applied twice, no stale read: each operation is
//! atomic here, so linearizability is equality with the model); no group
//! answers `-ASK` for a slot that is not moving. At the end, with every
//! move finished: each key is in the group owning its slot with the
//! model's value, and in no other group.

use bytes::Bytes;
use raftify_cache::commands::xorshift;
use raftify_cache::{key_slot, CacheEntry, CacheState, Migrate, Op, Reply};
use raftify_core::AbstractLogEntry;
use raftify_shard::{Change, GroupId, NodeInfo, Placement, Settings, SlotMove, SlotRange, SLOTS};
use std::collections::{BTreeMap, BTreeSet};

/// Where the mover is in the move of the placement.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Freeze the chunk starting at this slot (then import, then hand).
    Freeze(u16),
    /// Import the frozen chunk's items (kept in `Sim::exported`).
    Import(u16),
    /// Hand the imported chunk.
    Hand(u16),
    /// Every chunk handed: commit the move in the placement.
    Commit,
}

struct Sim {
    rng: u64,
    placement: Placement,
    groups: BTreeMap<GroupId, CacheState>,
    /// Each group's next log index.
    index: BTreeMap<GroupId, u64>,
    model: BTreeMap<String, i64>,
    keys: Vec<String>,
    phase: Option<Phase>,
    chunk: u16,
    exported: Bytes,
    /// What happened, for the final report.
    counts: BTreeMap<&'static str, u64>,
}

fn args(a: &[&str]) -> Vec<Bytes> {
    a.iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut placement = Placement::default();
        let info = NodeInfo {
            raft_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
            leaving: false,
            down: false,
        };
        let boot = Change::Bootstrap {
            node: 1,
            info,
            settings: Settings::default(),
        };
        placement.apply(None, boot).expect("bootstrap");
        let first = placement.owner(0);
        let mut keys: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
        // Keys sharing slots (hash tags), so a chunk carries several.
        keys.extend((0..12).map(|i| format!("{{tag{}}}:{i}", i % 3)));
        Sim {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            placement,
            groups: BTreeMap::from([(first, CacheState::new())]),
            index: BTreeMap::from([(first, 1)]),
            model: BTreeMap::new(),
            keys,
            phase: None,
            chunk: 1,
            exported: Bytes::new(),
            counts: BTreeMap::new(),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng = xorshift(self.rng);
        self.rng % n.max(1)
    }

    fn any_key(&mut self) -> String {
        let i = self.below(self.keys.len() as u64) as usize;
        self.keys[i].clone()
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    /// Applies `op` to `group`'s state machine as its next log entry
    /// (through the codec, as from the log).
    fn apply(&mut self, group: GroupId, op: Op) -> Reply {
        let entry = CacheEntry {
            clock_ms: 1_000_000,
            op,
        };
        let entry = CacheEntry::decode(&entry.encode().expect("encode")).expect("decode");
        let index = self.index.entry(group).or_insert(1);
        *index += 1;
        let at = *index;
        self.groups
            .get_mut(&group)
            .expect("a group of the placement")
            .apply_entry(at, &entry)
    }

    fn migrate(&mut self, group: GroupId, m: Migrate) -> Reply {
        self.apply(group, Op::Migrate(m))
    }

    /// Runs a client's command on `group` (a write as a log entry, a read
    /// on the state).
    fn run(&mut self, group: GroupId, argv: Vec<Bytes>, write: bool) -> Reply {
        if write {
            let op = Op::Exec {
                commands: vec![argv],
                transaction: false,
                watched: Vec::new(),
            };
            self.apply(group, op)
        } else {
            self.groups[&group].read(&argv)
        }
    }

    /// One client operation, routed as the front-end routes it.
    fn client(&mut self) {
        let key = self.any_key();
        let write = self.below(3) > 0;
        let argv = if write {
            args(&["incr", &key])
        } else {
            args(&["get", &key])
        };
        let slot = key_slot(key.as_bytes());
        let owner = self.placement.owner(slot);
        let mut reply = self.run(owner, argv.clone(), write);
        if let Reply::Error(e) = &reply {
            if e.starts_with("ASK ") {
                let m = self
                    .placement
                    .moving()
                    .filter(|m| m.slots.contains(slot))
                    .unwrap_or_else(|| panic!("-ASK for slot {slot}, which is not moving"));
                assert_eq!(m.from, owner);
                self.count("asked");
                reply = if self.groups[&m.to].frozen().accepts_asking(slot) {
                    self.run(m.to, argv, write)
                } else {
                    Reply::Error(format!("TRYAGAIN slot {slot} is not yet imported"))
                };
            }
        }
        match reply {
            Reply::Error(e) if e.starts_with("TRYAGAIN") => self.count("refused"),
            Reply::Int(n) if write => {
                let v = self.model.entry(key.clone()).or_default();
                *v += 1;
                assert_eq!(n, *v, "INCR {key}: an increment lost or applied twice");
                self.count("acked");
            }
            r if !write => {
                let want = match self.model.get(&key) {
                    Some(v) => Reply::Bulk(Bytes::from(v.to_string())),
                    None => Reply::Nil,
                };
                assert_eq!(r, want, "GET {key} (slot {slot}, owner {owner})");
                self.count("read");
            }
            other => panic!("{key}: unexpected {other:?}"),
        }
    }

    /// Begins a move: a run of slots around a key's slot, from its owner
    /// to another group (a new one, sometimes: a split).
    fn begin(&mut self) {
        if self.placement.groups().len() < 5 && self.below(4) == 0 {
            let group = self.placement.next_group();
            let create = Change::CreateGroup {
                group,
                replicas: BTreeSet::from([1]),
            };
            self.placement.apply(None, create).expect("create a group");
            self.groups.insert(group, CacheState::new());
            self.count("groups created");
        }
        let key = self.any_key();
        let slot = key_slot(key.as_bytes());
        let from = self.placement.owner(slot);
        let Some((run, _)) = self
            .placement
            .ranges()
            .into_iter()
            .find(|(r, g)| *g == from && r.contains(slot))
        else {
            panic!("slot {slot} in no run");
        };
        let below = self.below(u64::from(slot - run.start) + 1) as u16;
        let above = self.below(u64::from(run.end - slot) + 1) as u16;
        let slots = SlotRange::new(slot - below.min(900), slot + above.min(900)).expect("a range");
        let others: Vec<GroupId> = self
            .placement
            .groups()
            .keys()
            .copied()
            .filter(|g| *g != from)
            .collect();
        if others.is_empty() {
            return;
        }
        let to = others[self.below(others.len() as u64) as usize];
        let m = SlotMove { slots, from, to };
        self.placement
            .apply(None, Change::BeginMove(m))
            .expect("begin");
        self.chunk = 1 + self.below(300) as u16;
        self.phase = Some(Phase::Freeze(slots.start));
        self.count("moves");
    }

    /// The mover's next step of the move in progress, or the purge of a
    /// committed one, or a new move.
    fn mover(&mut self) {
        if let Some(&m) = self.placement.purging().first() {
            let drop = Migrate::Drop {
                start: m.slots.start,
                end: m.slots.end,
            };
            assert!(matches!(self.migrate(m.from, drop), Reply::Int(_)));
            self.placement
                .apply(None, Change::Purged(m))
                .expect("purged");
            return;
        }
        let Some(m) = self.placement.moving() else {
            self.begin();
            return;
        };
        let phase = self.phase.unwrap_or(Phase::Freeze(m.slots.start));
        let end_of = |start: u16, chunk: u16| start.saturating_add(chunk - 1).min(m.slots.end);
        let next = match phase {
            Phase::Freeze(start) => {
                let end = end_of(start, self.chunk);
                match self.migrate(m.from, Migrate::Freeze { start, end }) {
                    Reply::Bulk(items) => {
                        self.exported = items;
                        Phase::Import(start)
                    }
                    Reply::Simple(s) if s == "HANDED" => {
                        self.count("handed chunks skipped");
                        self.after(end, m)
                    }
                    other => panic!("freeze: {other:?}"),
                }
            }
            Phase::Import(start) => {
                let end = end_of(start, self.chunk);
                let items = self.exported.clone();
                let import = Migrate::Import { start, end, items };
                assert!(matches!(self.migrate(m.to, import), Reply::Int(_)));
                Phase::Hand(start)
            }
            Phase::Hand(start) => {
                let end = end_of(start, self.chunk);
                assert_eq!(
                    self.migrate(m.from, Migrate::Hand { start, end }),
                    Reply::Ok
                );
                self.after(end, m)
            }
            Phase::Commit => {
                self.placement
                    .apply(None, Change::CommitMove(m))
                    .expect("commit");
                self.phase = None;
                return;
            }
        };
        // An answer lost: the step is sent again (every step is safe to
        // repeat), without moving on.
        if self.below(10) == 0 {
            self.count("steps repeated");
            return;
        }
        self.phase = Some(next);
    }

    fn after(&self, end: u16, m: SlotMove) -> Phase {
        if end >= m.slots.end {
            Phase::Commit
        } else {
            Phase::Freeze(end + 1)
        }
    }

    fn step(&mut self) {
        match self.below(20) {
            0..=13 => self.client(),
            14..=18 => self.mover(),
            _ => {
                // The mover crashes (one step in 80): the move is re-run
                // from its first chunk (handed chunks answer HANDED).
                if self.placement.moving().is_some() && self.below(4) == 0 {
                    self.phase = None;
                    self.count("mover crashes");
                }
            }
        }
        for s in (0..SLOTS).step_by(97) {
            assert!(
                self.groups.contains_key(&self.placement.owner(s)),
                "slot {s} has no owner"
            );
        }
    }

    /// Finishes the moves, then checks where every key is.
    fn finish(&mut self) {
        let mut guard = 0;
        while self.placement.moving().is_some() || !self.placement.purging().is_empty() {
            self.mover();
            guard += 1;
            assert!(guard < 100_000, "the moves never finish");
        }
        for key in self.keys.clone() {
            let slot = key_slot(key.as_bytes());
            let owner = self.placement.owner(slot);
            let want = match self.model.get(&key) {
                Some(v) => Reply::Bulk(Bytes::from(v.to_string())),
                None => Reply::Nil,
            };
            assert_eq!(self.run(owner, args(&["get", &key]), false), want, "{key}");
            for (g, state) in &self.groups {
                if *g != owner {
                    let keys = state.read(&args(&["exists", &key]));
                    assert!(
                        matches!(keys, Reply::Int(0) | Reply::Error(_)),
                        "{key} left in group {g} (owner {owner}): {keys:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn seeded_slot_moves_lose_no_write_and_leave_each_key_in_its_owner() {
    let seeds: u64 = std::env::var("RAFTIFY_SLOT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 1..=seeds {
        let mut sim = Sim::new(seed);
        for _ in 0..3_000 {
            sim.step();
        }
        sim.finish();
        for (k, v) in sim.counts {
            *totals.entry(k).or_default() += v;
        }
    }
    eprintln!("{seeds} seeds: {totals:?}");
    // The schedule reached the interesting cases.
    for what in [
        "asked",
        "refused",
        "moves",
        "groups created",
        "mover crashes",
        "handed chunks skipped",
        "steps repeated",
    ] {
        assert!(
            totals.get(what).copied().unwrap_or(0) > 0,
            "no {what} in {totals:?}"
        );
    }
}
