//! The seeded simulation's CI slice: a fixed budget of seeds, each a
//! complete faulty run checked against every invariant and for
//! linearizability.
//!
//! * `RAFTIFY_SEED=N` runs seed N alone (prints its report).
//! * `RAFTIFY_SIM_SEEDS=N` changes the budget (default 100, seeds 1..=N);
//!   `RAFTIFY_SIM_FIRST=K` starts at seed K.
//! * `RAFTIFY_SOAK_SEEDS=N` (or the `soak` example) runs a longer soak.

use raftify_reliability::sim::{run_seed, RunReport};
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn run_many(first: u64, count: u64) {
    let started = Instant::now();
    let mut failed: Vec<RunReport> = Vec::new();
    let (mut ops, mut acked, mut lost, mut faults, mut lossy) = (0, 0, 0, 0, 0);
    let mut lost_after_data_loss = 0;
    let (mut incr_acked, mut incr_unknown) = (0, 0);
    let (mut undurable, mut undurable_runs) = (0, 0);
    let (mut hibernate_runs, mut asleep) = (0, 0);
    for seed in first..first + count {
        let t = Instant::now();
        let r = run_seed(seed);
        println!("{} [{:?} wall]", r.summary(), t.elapsed());
        ops += r.ops.ok + r.ops.unknown;
        acked += r.acked_writes;
        incr_acked += r.increments.0;
        incr_unknown += r.increments.1;
        if r.unsynced_writes_lost > 0 {
            lost_after_data_loss += r.acked_lost;
        } else {
            lost += r.acked_lost;
        }
        faults += r.faults.values().sum::<u64>();
        lossy += u64::from(r.unsynced_writes_lost > 0);
        undurable += r.undurable_writes_lost;
        undurable_runs += u64::from(r.undurable_writes_lost > 0);
        hibernate_runs += u64::from(r.options.hibernate);
        asleep += r.asleep_seen;
        for v in &r.violations {
            println!(
                "  {} [{}] {}",
                if v.after_data_loss {
                    "info"
                } else {
                    "VIOLATION"
                },
                v.invariant,
                v.detail
            );
        }
        if r.unsynced_writes_lost > 0 {
            if let Err(e) = &r.liveness {
                println!(
                    "  info [liveness after no_sync data loss] {}",
                    e.chars().take(400).collect::<String>()
                );
            }
            if let Err(e) = &r.linearizable {
                println!(
                    "  info [linearizability after no_sync data loss] {}",
                    e.lines().next().unwrap_or("")
                );
            }
        }
        if r.failed() {
            failed.push(r);
        }
    }
    println!(
        "simulation: {count} runs (seeds {first}..={}), {ops} operations checked, {acked} writes acknowledged, \
         {lost} acknowledged writes lost ({lost_after_data_loss} more in runs after no_sync data loss), \
         {faults} faults injected, {lossy} runs with no_sync data loss, \
         {undurable} writes not yet durable lost to power cuts in {undurable_runs} runs, \
         {incr_acked} session increments acknowledged ({incr_unknown} unknown at the end), \
         {hibernate_runs} runs with hibernation ({asleep} replicas seen asleep), \
         {} failed, {:?} wall",
        first + count - 1,
        failed.len(),
        started.elapsed()
    );
    // Hibernate runs must actually sleep (else they test nothing).
    assert!(
        hibernate_runs < 10 || asleep > 0,
        "{hibernate_runs} hibernate runs and no replica was ever seen asleep"
    );
    if !failed.is_empty() {
        let mut msg = String::new();
        for r in &failed {
            msg.push_str(&format!(
                "\nseed {} failed (reproduce: RAFTIFY_SEED={} cargo test -p raftify-reliability --test simulation -- --nocapture):\n  {}\n",
                r.options.seed,
                r.options.seed,
                r.failures().join("\n  ")
            ));
        }
        panic!("{} of {count} seeds failed:{msg}", failed.len());
    }
}

#[test]
fn seeded_simulation() {
    if let Some(seed) = env_u64("RAFTIFY_SEED") {
        return run_many(seed, 1);
    }
    if let Some(n) = env_u64("RAFTIFY_SOAK_SEEDS") {
        return run_many(env_u64("RAFTIFY_SIM_FIRST").unwrap_or(1_000), n);
    }
    run_many(
        env_u64("RAFTIFY_SIM_FIRST").unwrap_or(1),
        env_u64("RAFTIFY_SIM_SEEDS").unwrap_or(100),
    );
}
