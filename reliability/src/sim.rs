//! The seeded simulation: 3–5 real raftify nodes (real raft-rs, real async
//! loops) on raftify-core's [`InProcNetwork`], on [`LossyStore`]s, in a
//! tokio current-thread runtime with a paused clock (time advances only
//! when every task waits, so a run of minutes of "cluster time" takes
//! seconds), under a concurrent client workload and a seeded nemesis.
//!
//! A run: start the cluster → clients and nemesis run for
//! [`SimOptions::fault_time`] → faults stop (network healed, crashed nodes
//! restarted) → liveness → final checks. Every invariant in
//! [`crate::invariants`] is checked during and after the run, and the
//! client history is checked for linearizability.

use crate::counter;
use crate::history::{Checked, History, Op, Outcome, Ret};
use crate::invariants::no_lost_commits::{check_acked, Acked, Committed};
use crate::invariants::{
    election_safety::LeaderLog, exactly_once, leader_completeness, liveness, log_matching,
    state_machine_safety, Violation, Violations,
};
use crate::lossy_store::LossyStore;
use crate::rng::SimRng;
use crate::sm::{ApplyOracle, ApplyOut, Cmd, RecKv, SimNode};
use raftify_core::{Bootstrap, Config, Error, InProcNetwork, MemberRole, Raft, Role};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What a run does; derived from the seed by [`SimOptions::from_seed`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Voters at the start (3 to 5).
    pub initial_nodes: u64,
    /// How long (cluster time) clients and faults run.
    pub fault_time: Duration,
    /// Concurrent clients.
    pub clients: u64,
    /// Registers (keys) the clients use.
    pub keys: u64,
    /// Nodes' stores are `no_sync` and OS crashes lose their unsynced tail.
    pub no_sync: bool,
    /// Add and remove voters (between 3 and 5).
    pub churn: bool,
    /// Snapshot every N applied entries.
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot.
    pub snapshot_log_retention: u64,
    /// Churn may remove the leader itself (raftify hands leadership over
    /// first; `tests/findings.rs` keeps the original failure as a
    /// regression test). `RAFTIFY_SIM_NO_REMOVE_LEADER=1` turns it off.
    pub remove_leader: bool,
    /// Nodes persist through the pipelined writer task
    /// ([`Config::pipeline_writes`]) instead of writing each Ready inline.
    pub pipeline_writes: bool,
    /// Idle groups sleep ([`Config::hibernate`]); clients then pause
    /// together for 1.5 s of every 4 s so that the cluster goes idle and
    /// sleeps under the faults, and wakes for the next operations.
    pub hibernate: bool,
}

impl SimOptions {
    /// The options seed `seed` stands for.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = SimRng::new(seed ^ 0xA5A5_5A5A);
        SimOptions {
            seed,
            initial_nodes: r.range(3, 5),
            fault_time: Duration::from_millis(r.range(5_000, 12_000)),
            clients: r.range(2, 4),
            keys: r.range(2, 4),
            no_sync: r.chance(0.25),
            churn: r.chance(0.6),
            snapshot_threshold: r.range(8, 40),
            snapshot_log_retention: r.range(1, 12),
            remove_leader: std::env::var_os("RAFTIFY_SIM_NO_REMOVE_LEADER").is_none(),
            // Drawn last: earlier seeds keep the rest of their options.
            pipeline_writes: r.chance(0.5),
            hibernate: r.chance(0.5),
        }
    }
}

/// The outcome and figures of one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The options (and seed) of the run.
    pub options: SimOptions,
    /// History figures (operations ok / failed / unknown).
    pub ops: Checked,
    /// The linearizability verdict (the error lists the offending key's history).
    pub linearizable: Result<(), String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Every violation seen.
    pub violations: Vec<Violation>,
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Counter increments in sessions: (acknowledged, outcome unknown).
    pub increments: (u64, u64),
    /// Unknown-outcome writes settled from the apply oracle: (took
    /// effect, never did).
    pub resolved_unknown: (u64, u64),
    /// Acknowledged writes missing or changed on some member at the end.
    pub acked_lost: u64,
    /// Unsynced writes dropped by OS crashes (no_sync runs).
    pub unsynced_writes_lost: u64,
    /// Writes not yet durable (so never acknowledged) dropped by power
    /// cuts in runs with fsync: no data loss, but the runs that must show
    /// it was never acknowledged.
    pub undurable_writes_lost: u64,
    /// The liveness verdict.
    pub liveness: Result<liveness::Live, String>,
    /// Highest committed index seen.
    pub commit_index: u64,
    /// Applies seen by the oracle (all nodes).
    pub applies: u64,
    /// Terms in which a leader was seen.
    pub terms: usize,
    /// Panics in node tasks during the run.
    pub panics: u64,
    /// (delivered, dropped) raft messages.
    pub messages: (u64, u64),
    /// Cluster time the run took.
    pub virtual_time: Duration,
    /// Replicas found asleep at the end of the clients' quiet periods
    /// (hibernate runs).
    pub asleep_seen: u64,
}

impl RunReport {
    /// True when the run must fail: a strict violation, a non-linearizable
    /// history, a lost acknowledged write, a panic, or no liveness (the
    /// last four only when no documented `no_sync` data loss excuses them).
    pub fn failed(&self) -> bool {
        !self.failures().is_empty()
    }

    /// Why the run fails (empty when it passes).
    pub fn failures(&self) -> Vec<String> {
        let lossy = self.unsynced_writes_lost > 0;
        let mut f: Vec<String> = self
            .violations
            .iter()
            .filter(|v| !v.after_data_loss)
            .map(|v| format!("[{}] {}", v.invariant, v.detail))
            .collect();
        if !lossy {
            if let Err(e) = &self.linearizable {
                f.push(format!("[linearizability] {e}"));
            }
            if self.acked_lost > 0 {
                f.push(format!(
                    "[no_lost_commits] {} acknowledged writes lost",
                    self.acked_lost
                ));
            }
            if let Err(e) = &self.liveness {
                f.push(format!("[liveness] {e}"));
            }
        }
        if self.panics > 0 {
            f.push(format!("[panic] {} panics in node tasks", self.panics));
        }
        f
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "seed {} nodes {} clients {} keys {} no_sync {} churn {} pipelined {} hibernate {} (asleep seen {}): ops ok {} failed {} unknown {} (settled {:?}), \
             acked {} lost {}, increments {:?}, commit {}, terms {}, faults {:?}, unsynced lost {}, undurable lost {}, msgs {:?}, {:?} cluster time, {}",
            self.options.seed,
            self.options.initial_nodes,
            self.options.clients,
            self.options.keys,
            self.options.no_sync,
            self.options.churn,
            self.options.pipeline_writes,
            self.options.hibernate,
            self.asleep_seen,
            self.ops.ok,
            self.ops.failed,
            self.ops.unknown,
            self.resolved_unknown,
            self.acked_writes,
            self.acked_lost,
            self.increments,
            self.commit_index,
            self.terms,
            self.faults,
            self.unsynced_writes_lost,
            self.undurable_writes_lost,
            self.messages,
            self.virtual_time,
            if self.failed() {
                "FAILED".to_string()
            } else if !self.ops.inconclusive.is_empty() {
                format!("ok (linearizability inconclusive on {:?})", self.ops.inconclusive)
            } else if self.violations.is_empty() {
                "ok".to_string()
            } else {
                "ok (violations after documented no_sync data loss only)".to_string()
            }
        )
    }
}

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics counted so far (see [`install_panic_counter`]).
pub fn panics() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

/// Counts panics (node loops run as tokio tasks, whose panics would
/// otherwise only be printed).
pub fn install_panic_counter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

struct Slot {
    store: Arc<LossyStore>,
    running: Option<SimNode>,
    removed: bool,
}

struct World {
    opts: SimOptions,
    net: InProcNetwork,
    violations: Violations,
    oracle: Arc<ApplyOracle>,
    leaders: LeaderLog,
    committed: Committed,
    history: History,
    acked: Mutex<Vec<Acked>>,
    slots: Mutex<BTreeMap<u64, Slot>>,
    faults: Mutex<BTreeMap<&'static str, u64>>,
    store_rng: Mutex<SimRng>,
    started: Instant,
    asleep_seen: AtomicU64,
}

impl World {
    fn fault(&self, kind: &'static str) {
        *self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stores(&self) -> Vec<(u64, Arc<LossyStore>)> {
        self.slots()
            .iter()
            .map(|(id, s)| (*id, s.store.clone()))
            .collect()
    }

    fn running(&self) -> Vec<(u64, SimNode)> {
        self.slots()
            .iter()
            .filter_map(|(id, s)| s.running.clone().map(|n| (*id, n)))
            .collect()
    }

    fn leader(&self) -> Option<(u64, SimNode)> {
        self.running()
            .into_iter()
            .find(|(_, n)| n.handle().state().role == Role::Leader)
    }

    fn new_store(&self, id: u64) -> Arc<LossyStore> {
        let rng = self
            .store_rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fork();
        Arc::new(LossyStore::new(
            id,
            self.opts.no_sync,
            0.3,
            rng,
            self.violations.clone(),
        ))
    }

    fn config(&self, id: u64) -> Config {
        let mut c = timing(id);
        c.snapshot_threshold = self.opts.snapshot_threshold;
        c.snapshot_log_retention = self.opts.snapshot_log_retention;
        // Seeded election timeouts: with the paused clock, a seed replays.
        c.election_seed = Some(self.opts.seed);
        c.pipeline_writes = Some(self.opts.pipeline_writes);
        c.hibernate = self.opts.hibernate;
        c
    }
}

/// A simulated node's config: ticks of 50 ms (elections after 10,
/// heartbeats every 2) and timeouts of a few seconds of cluster time.
pub(crate) fn timing(id: u64) -> Config {
    let mut c = Config::new(id);
    c.tick_interval = Duration::from_millis(50);
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c.proposal_timeout = Duration::from_secs(3);
    c.read_timeout = Duration::from_secs(2);
    c.conf_change_timeout = Duration::from_secs(5);
    c
}

/// The simulated nodes' logger: silent unless `RAFTIFY_SIM_LOG` is set.
pub(crate) fn logger() -> slog::Logger {
    if std::env::var_os("RAFTIFY_SIM_LOG").is_some() {
        raftify_core::default_logger()
    } else {
        raftify_core::discard_logger()
    }
}

/// A current-thread runtime whose clock is paused (time advances only
/// when every task waits).
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
}

/// Starts node `id` over its store (creating the store on first boot) and
/// watches its state.
async fn boot(w: &Arc<World>, id: u64, bootstrap: Bootstrap) -> Result<SimNode, Error> {
    let store = {
        let mut slots = w.slots();
        let slot = slots.entry(id).or_insert_with(|| Slot {
            store: w.new_store(id),
            running: None,
            removed: false,
        });
        slot.store.clone()
    };
    let node: SimNode = Raft::builder(w.config(id), RecKv::new(id, w.oracle.clone()))
        .storage(store.clone())
        .transport(w.net.transport(id))
        .bootstrap(bootstrap)
        .logger(logger())
        .start()
        .await?;
    w.net.register(id, node.handle().inbound());
    w.slots().get_mut(&id).expect("slot exists").running = Some(node.clone());
    let mut rx = node.handle().subscribe();
    let world = w.clone();
    tokio::spawn(async move {
        loop {
            let st = rx.borrow_and_update().clone();
            if st.role == Role::Stopped {
                break;
            }
            if world.leaders.observe(&world.violations, id, &st) {
                let stores = world.stores();
                world.committed.collect(&stores, &world.violations);
                leader_completeness::check_new_leader(
                    &world.committed,
                    id,
                    st.term,
                    &store,
                    &world.violations,
                );
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    Ok(node)
}

/// Process crash: the node stops and leaves the network; its store stays.
async fn crash(w: &Arc<World>, id: u64) {
    crash_with(w, id, false).await
}

/// Stops node `id` abruptly; with `power_cut`, its store loses power first
/// (nothing more becomes durable, not even during the shutdown).
async fn crash_with(w: &Arc<World>, id: u64, power_cut: bool) {
    w.net.unregister(id);
    if power_cut {
        if let Some(slot) = w.slots().get(&id) {
            slot.store.power_cut();
        }
    }
    let node = w.slots().get_mut(&id).and_then(|s| s.running.take());
    if let Some(n) = node {
        n.handle().shutdown().await;
    }
}

async fn restart(w: &Arc<World>, id: u64) {
    match boot(w, id, Bootstrap::None).await {
        Ok(_) => {}
        Err(e) => w
            .violations
            .report_always("restart", format!("node {id} failed to restart: {e}")),
    }
}

const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// In hibernate runs, the last 1.5 s of every 4 s (cluster time) are
/// quiet: what is left of the quiet period now (zero outside it).
fn quiet_left(opts: &SimOptions, started: Instant) -> Duration {
    const PERIOD: u64 = 4_000;
    const QUIET_FROM: u64 = 2_500;
    let phase = started.elapsed().as_millis() as u64 % PERIOD;
    if !opts.hibernate || phase < QUIET_FROM {
        return Duration::ZERO;
    }
    Duration::from_millis(PERIOD - phase)
}

/// Clients wait quiet periods out, so the groups go idle and sleep (the
/// nemesis strikes once, 1 s into the period, at a sleeping cluster).
/// Client 1 counts the replicas asleep just before that.
async fn quiet_period(w: &World, cid: u64) {
    let left = quiet_left(&w.opts, w.started).as_millis() as u64;
    if left == 0 {
        return;
    }
    if cid == 1 && left > 550 {
        tokio::time::sleep(Duration::from_millis(left - 550)).await;
        for (_, node) in w.running() {
            if node.handle().status().await.is_ok_and(|s| s.hibernating) {
                w.asleep_seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(quiet_left(&w.opts, w.started)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(left)).await;
    }
}

async fn client(w: Arc<World>, cid: u64, mut rng: SimRng, stop: Arc<AtomicBool>) {
    let mut generation = 0u64;
    let mut n = 0u64;
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
        quiet_period(&w, cid).await;
        let running = w.running();
        let Some((_, node)) = running.get(rng.below(running.len() as u64) as usize) else {
            continue;
        };
        let node = node.clone();
        let thread = cid * 1_000_000 + generation;
        let key = format!("k{}", rng.below(w.opts.keys));
        let roll = rng.below(10);
        if roll < 4 {
            let id = w.history.invoke(thread, &key, Op::Read);
            let k = key.clone();
            let r = tokio::time::timeout(
                OP_TIMEOUT,
                node.linearizable_read(move |s| s.map.get(&k).cloned()),
            )
            .await;
            match r {
                Ok(Ok(v)) => {
                    seen.insert(key, v.clone());
                    w.history.end(id, Outcome::Ok(Ret::Read(v)));
                }
                _ => w.history.end(id, Outcome::Failed),
            }
            continue;
        }
        n += 1;
        let value = format!("{cid}.{n}");
        let (cmd, op) = if roll < 7 {
            (
                Cmd::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                Op::Write(value.clone()),
            )
        } else {
            let expected = if rng.chance(0.8) {
                seen.get(&key).cloned().flatten()
            } else {
                None
            };
            (
                Cmd::Cas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: value.clone(),
                },
                Op::Cas(expected, value.clone()),
            )
        };
        let id = w
            .history
            .invoke_tagged(thread, &key, op.clone(), Some(cmd.digest()));
        let r = tokio::time::timeout(OP_TIMEOUT, node.propose(&cmd)).await;
        match r {
            Ok(Ok(out)) => {
                let Some(out) = ApplyOut::decode(&out) else {
                    w.violations
                        .report("client", format!("undecodable apply output {out:?}"));
                    w.history.end(id, Outcome::Unknown);
                    generation += 1;
                    continue;
                };
                w.acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Acked {
                        index: out.index,
                        digest: cmd.digest(),
                    });
                let ret = match op {
                    Op::Cas(..) => Ret::Cas(out.ok),
                    _ => Ret::WriteOk,
                };
                if out.ok {
                    seen.insert(key, Some(value));
                }
                w.history.end(id, Outcome::Ok(ret));
            }
            Ok(Err(e)) if e.class().may_retry(false) => w.history.end(id, Outcome::Failed),
            _ => {
                w.history.end(id, Outcome::Unknown);
                generation += 1;
            }
        }
    }
}

/// The members (id, role) and leader, asked of the current leader.
async fn membership(w: &Arc<World>) -> Option<(u64, Vec<(u64, MemberRole)>)> {
    let (lid, leader) = w.leader()?;
    let st = tokio::time::timeout(Duration::from_secs(1), leader.handle().status())
        .await
        .ok()?
        .ok()?;
    Some((lid, st.members.iter().map(|m| (m.id, m.role)).collect()))
}

async fn nemesis(w: Arc<World>, mut rng: SimRng, next_id: Arc<AtomicU64>) {
    let until = Instant::now() + w.opts.fault_time;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(50, 400))).await;
        // Hibernate runs: one fault per quiet period, 1 s into it.
        let quiet = quiet_left(&w.opts, w.started);
        if quiet > Duration::from_millis(500) {
            tokio::time::sleep(quiet - Duration::from_millis(500)).await;
        } else if !quiet.is_zero() {
            tokio::time::sleep(quiet).await;
            continue;
        }
        let stores = w.stores();
        w.committed.collect(&stores, &w.violations);
        log_matching::check(&stores, &w.violations);

        let live: Vec<u64> = w.running().iter().map(|(id, _)| *id).collect();
        let (crashed, total): (Vec<u64>, usize) = {
            let slots = w.slots();
            let crashed = slots
                .iter()
                .filter(|(_, s)| s.running.is_none() && !s.removed)
                .map(|(id, _)| *id)
                .collect();
            (crashed, slots.values().filter(|s| !s.removed).count())
        };
        let can_crash = crashed.len() < total.saturating_sub(1) / 2;
        match rng.below(16) {
            0 | 1 => {
                // Symmetric partition into two groups.
                let mut ids = live.clone();
                rng.shuffle(&mut ids);
                if ids.len() >= 2 {
                    let cut = rng.range(1, ids.len() as u64 - 1) as usize;
                    let (a, b) = ids.split_at(cut);
                    w.net.partition(&[a, b]);
                    w.fault("partition");
                }
            }
            2 => {
                if let (Some(a), Some(b)) = (rng.pick(&live), rng.pick(&live)) {
                    if a != b {
                        w.net.cut_one_way(a, b);
                        w.fault("cut_one_way");
                    }
                }
            }
            3 => {
                // Isolate the leader half of the time.
                let target = match (rng.chance(0.5), w.leader()) {
                    (true, Some((l, _))) => Some(l),
                    _ => rng.pick(&live),
                };
                if let Some(t) = target {
                    w.net.isolate(t);
                    w.fault("isolate");
                }
            }
            4 => {
                w.net.set_drop_rate(rng.range(5, 30) as f64 / 100.0);
                w.fault("drop");
            }
            5 => {
                w.net
                    .set_delay(Some(Duration::from_millis(rng.range(1, 40))));
                w.fault("delay");
            }
            6 | 7 => {
                w.net.heal();
                w.fault("heal");
            }
            8 | 9 => {
                let victim = if can_crash { rng.pick(&live) } else { None };
                if let Some(id) = victim {
                    // Half the crashes are power losses: with fsync they
                    // undo only writes not yet durable (never acknowledged),
                    // with no_sync any unsynced tail (documented loss).
                    let power_cut = rng.chance(0.5);
                    if power_cut {
                        // The power goes out right after one of the node's
                        // next writes (or now, if it writes nothing soon).
                        let store = w.slots()[&id].store.clone();
                        store.arm_power_cut();
                        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
                        while !store.powered_off() && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    crash_with(&w, id, power_cut).await;
                    w.fault("crash");
                    if power_cut {
                        let store = w.slots()[&id].store.clone();
                        let lost = store.os_crash();
                        w.fault("os_crash");
                        if lost > 0 && w.opts.no_sync {
                            w.violations.mark_data_lost();
                        }
                    }
                }
            }
            10 | 11 => {
                if let Some(id) = rng.pick(&crashed) {
                    restart(&w, id).await;
                    w.fault("restart");
                    let store = w.slots()[&id].store.clone();
                    if let Err(e) = store.check_consistent() {
                        w.violations.report_always(
                            "storage",
                            format!("node {id}'s store is inconsistent after a crash: {e}"),
                        );
                    }
                }
            }
            12 => {
                if let (Some((_, leader)), Some(to)) = (w.leader(), rng.pick(&live)) {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        leader.handle().transfer_leader(to),
                    )
                    .await;
                    w.fault("transfer_leader");
                }
            }
            13 => {
                if let Some(id) = rng.pick(&live) {
                    let node = w.slots()[&id].running.clone();
                    if let Some(n) = node {
                        let _ = tokio::time::timeout(Duration::from_secs(2), n.handle().snapshot())
                            .await;
                        w.fault("snapshot");
                    }
                }
            }
            _ if w.opts.churn => {
                let Some((leader, members)) = membership(&w).await else {
                    continue;
                };
                let voters: Vec<u64> = members
                    .iter()
                    .filter(|(_, r)| *r == MemberRole::Voter)
                    .map(|(id, _)| *id)
                    .collect();
                let grow = voters.len() < 5 && (voters.len() <= 3 || rng.chance(0.5));
                if grow {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    if boot(&w, id, Bootstrap::None).await.is_ok() {
                        let addr = w.net.addr_of(id);
                        if let Some((_, l)) = w.leader() {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(5),
                                l.handle().add_voter(id, &addr),
                            )
                            .await;
                        }
                        w.fault("add_voter");
                    }
                } else if voters.len() > 3 {
                    // Mostly a follower; sometimes the leader itself.
                    let followers: Vec<u64> =
                        voters.iter().copied().filter(|v| *v != leader).collect();
                    let victim = if rng.chance(0.2) && w.opts.remove_leader {
                        Some(leader)
                    } else {
                        rng.pick(&followers)
                    };
                    let via = w.running().into_iter().find(|(id, _)| Some(*id) != victim);
                    if let (Some(victim), Some((_, via))) = (victim, via) {
                        let r = tokio::time::timeout(
                            Duration::from_secs(5),
                            via.handle().remove_node(victim),
                        )
                        .await;
                        if matches!(r, Ok(Ok(_))) {
                            crash(&w, victim).await;
                            if let Some(s) = w.slots().get_mut(&victim) {
                                s.removed = true;
                            }
                        }
                        w.fault("remove_voter");
                    }
                }
            }
            _ => {}
        }
    }
}

/// Runs one seed with the options it stands for.
pub fn run_seed(seed: u64) -> RunReport {
    run(SimOptions::from_seed(seed))
}

/// Runs one simulation on a fresh paused current-thread runtime.
pub fn run(opts: SimOptions) -> RunReport {
    install_panic_counter();
    paused_runtime().block_on(run_async(opts))
}

async fn run_async(opts: SimOptions) -> RunReport {
    let panics_before = PANICS.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut rng = SimRng::new(opts.seed);
    let violations = Violations::default();
    let history = History::new();
    let w = Arc::new(World {
        net: InProcNetwork::new(rng.next_u64()),
        oracle: ApplyOracle::with_clock(violations.clone(), history.clock()),
        violations,
        leaders: LeaderLog::default(),
        committed: Committed::default(),
        history,
        acked: Mutex::new(Vec::new()),
        slots: Mutex::new(BTreeMap::new()),
        faults: Mutex::new(BTreeMap::new()),
        store_rng: Mutex::new(rng.fork()),
        started,
        asleep_seen: AtomicU64::new(0),
        opts: opts.clone(),
    });
    let members: BTreeMap<u64, String> = (1..=opts.initial_nodes)
        .map(|id| (id, w.net.addr_of(id)))
        .collect();
    for id in 1..=opts.initial_nodes {
        if let Err(e) = boot(&w, id, Bootstrap::Members(members.clone())).await {
            w.violations
                .report_always("startup", format!("node {id} failed to start: {e}"));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for cid in 1..=opts.clients {
        clients.push(tokio::spawn(client(
            w.clone(),
            cid,
            rng.fork(),
            stop.clone(),
        )));
    }
    // Counter clients (one or two; not drawn from `rng`, so the other
    // choices of a seed stay as they were).
    let tally = Arc::new(counter::Tally::default());
    for cid in 1..=(1 + opts.seed % 2) {
        let w2 = w.clone();
        let pick = move |r: &mut SimRng| {
            let running = w2.running();
            let i = r.below(running.len().max(1) as u64) as usize;
            running.get(i).map(|(_, n)| n.clone())
        };
        let (quiet_opts, started) = (opts.clone(), w.started);
        clients.push(tokio::spawn(counter::run(
            cid,
            SimRng::new(opts.seed ^ cid.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            pick,
            move || quiet_left(&quiet_opts, started),
            stop.clone(),
            tally.clone(),
        )));
    }
    let next_id = Arc::new(AtomicU64::new(opts.initial_nodes + 1));
    nemesis(w.clone(), rng.fork(), next_id).await;

    // Faults stop.
    w.net.heal();
    let crashed: Vec<u64> = w
        .slots()
        .iter()
        .filter(|(_, s)| s.running.is_none() && !s.removed)
        .map(|(id, _)| *id)
        .collect();
    for id in crashed {
        restart(&w, id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    for c in clients {
        let _ = c.await;
    }

    // Liveness among the members.
    let deadline = Instant::now() + Duration::from_secs(30);
    let member_ids = loop {
        if let Some((_, members)) = membership(&w).await {
            break members.into_iter().map(|(id, _)| id).collect::<Vec<u64>>();
        }
        if Instant::now() >= deadline {
            break Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Nodes outside the membership (removed while the removal call timed
    // out, or added while the addition failed) are stopped, as an operator
    // would. A removed *leader* keeps leading until then: raft-rs 0.7 does
    // not step a leader down when it applies its own removal.
    let strays: Vec<u64> = w
        .running()
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !member_ids.is_empty() && !member_ids.contains(id))
        .collect();
    for id in strays {
        if w.leader().is_some_and(|(l, _)| l == id) {
            w.fault("removed_leader_still_leading");
        }
        crash(&w, id).await;
        if let Some(s) = w.slots().get_mut(&id) {
            s.removed = true;
        }
    }
    let running = w.running();
    let members: Vec<(u64, SimNode)> = running
        .into_iter()
        .filter(|(id, _)| member_ids.contains(id))
        .collect();
    let live = if member_ids.is_empty() {
        Err("no leader could be asked for the membership within 30 s".to_string())
    } else if members.len() != member_ids.len() {
        Err(format!(
            "members {member_ids:?} are not all running ({:?} are)",
            members.iter().map(|m| m.0).collect::<Vec<_>>()
        ))
    } else {
        liveness::check(&members, Duration::from_secs(30)).await
    };

    // Final checks.
    let stores = w.stores();
    w.committed.collect(&stores, &w.violations);
    log_matching::check(&stores, &w.violations);
    let member_stores: Vec<(u64, Arc<LossyStore>)> = stores
        .iter()
        .filter(|(id, _)| member_ids.contains(id))
        .cloned()
        .collect();
    let mut records = Vec::new();
    for (id, n) in &members {
        records.push((*id, n.stale_read(|s| s.record.clone()).await));
    }
    let acked = w.acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut acked_lost = 0;
    let increments = (
        tally.acked.load(Ordering::Relaxed),
        tally.unresolved.load(Ordering::Relaxed),
    );
    if live.is_ok() {
        w.committed.check_present(&member_stores, &w.violations);
        state_machine_safety::check_records(&records, &w.violations);
        acked_lost = check_acked(&acked, &records, &w.violations);
        if !w.violations.data_lost() {
            let mut counters = Vec::new();
            for (id, n) in &members {
                let v = n
                    .stale_read(|s| s.map.get(counter::COUNTER_KEY).cloned())
                    .await;
                counters.push((*id, v.and_then(|v| v.parse().ok()).unwrap_or(0)));
            }
            exactly_once::check_counter(&counters, increments.0, increments.1, &w.violations);
        }
    }
    for (_, n) in w.running() {
        n.handle().shutdown().await;
    }
    // Operations whose outcome the clients did not learn: after the probe
    // write committed everywhere, a command never applied never will be.
    let mut resolved = (0, 0);
    if !w.violations.data_lost() {
        let oracle = w.oracle.clone();
        let settled = live.is_ok();
        resolved = w
            .history
            .resolve_unknown(|d| match oracle.applied_digest(d) {
                Some((_, ok, tick)) => Some(Some((tick, ok))),
                None if settled => Some(None),
                None => None, // may still commit: stays unknown
            });
    }
    // After documented no_sync data loss, linearizability is not promised:
    // the history is not checked.
    let (ops, linearizable) = if w.violations.data_lost() {
        (w.history.stats(), Ok(()))
    } else {
        match w.history.check() {
            Ok(c) => (c, Ok(())),
            Err(e) => (w.history.stats(), Err(e)),
        }
    };
    let unsynced_writes_lost = stores.iter().map(|(_, s)| s.lost_ops()).sum();
    let undurable_writes_lost = stores.iter().map(|(_, s)| s.tail_lost()).sum();
    let faults = w.faults.lock().unwrap_or_else(|p| p.into_inner()).clone();
    RunReport {
        ops,
        linearizable,
        faults,
        violations: w.violations.all(),
        acked_writes: acked.len() as u64,
        increments,
        resolved_unknown: resolved,
        acked_lost,
        unsynced_writes_lost,
        undurable_writes_lost,
        liveness: live,
        commit_index: w.committed.max_index(),
        applies: w.oracle.applies(),
        terms: w.leaders.terms_with_leader(),
        panics: PANICS.load(Ordering::SeqCst) - panics_before,
        messages: w.net.stats(),
        virtual_time: started.elapsed(),
        asleep_seen: w.asleep_seen.load(Ordering::Relaxed),
        options: opts,
    }
}
