//! The seeded simulation's multi-group mode (`raftify_reliability::
//! shard_sim`): a sharded cluster whose slot ranges split, move and merge
//! under crashes, isolation and message drops; each seed checked for one
//! owner per slot at every placement version, linearizable registers
//! across moves, and every key in its slot's group at the end.
//!
//! * `RAFTIFY_SHARD_SEED=N` runs seed N alone (prints its report).
//! * `RAFTIFY_SHARD_SIM_SEEDS=N` changes the budget (default 12, seeds
//!   1..=N); `RAFTIFY_SHARD_SIM_FIRST=K` starts at seed K.

use raftify_reliability::shard_sim::run_seed;
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn sharded_clusters_split_move_and_merge_slots_under_faults() {
    let (first, count) = match env_u64("RAFTIFY_SHARD_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env_u64("RAFTIFY_SHARD_SIM_FIRST").unwrap_or(1),
            env_u64("RAFTIFY_SHARD_SIM_SEEDS").unwrap_or(12),
        ),
    };
    let mut failed = Vec::new();
    let (mut moves, mut faults, mut ops) = (0, 0, 0);
    for seed in first..first + count {
        let t = Instant::now();
        let r = run_seed(seed);
        println!("{} [{:?} wall]", r.summary(), t.elapsed());
        moves += r.steps.get("move").copied().unwrap_or(0);
        faults += r.faults.values().sum::<u64>();
        ops += r.ops.ok;
        for f in r.failed() {
            println!("  VIOLATION {}", f.chars().take(2_000).collect::<String>());
        }
        if !r.failed().is_empty() {
            failed.push(seed);
        }
    }
    println!("{count} seeds: {moves} slot moves, {faults} faults, {ops} operations ok");
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
    // The runs did what they are for: slots moved, under faults, with
    // clients served.
    assert!(moves >= count, "only {moves} slot moves in {count} runs");
    assert!(
        faults >= count && ops >= 10 * count,
        "{faults} faults, {ops} ops"
    );
}
