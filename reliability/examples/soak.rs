//! A longer soak of the seeded simulation, by hand:
//!
//! ```text
//! cargo run --release -p raftify-reliability --example soak -- [SEEDS] [FIRST_SEED]
//! ```
//!
//! Runs SEEDS seeds (default 1000) from FIRST_SEED (default 10000) and
//! prints one line per seed and a total; exits non-zero on any failure.

use raftify_reliability::sim::run_seed;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1000);
    let first = args.get(1).copied().unwrap_or(10_000);
    let started = std::time::Instant::now();
    let (mut ops, mut acked, mut lost, mut faults, mut failed) = (0, 0, 0, 0, Vec::new());
    for seed in first..first + n {
        let r = run_seed(seed);
        println!("{}", r.summary());
        for f in r.failures() {
            println!("  {f}");
        }
        ops += r.ops.ok + r.ops.unknown;
        acked += r.acked_writes;
        lost += r.acked_lost;
        faults += r.faults.values().sum::<u64>();
        if r.failed() {
            failed.push(seed);
        }
    }
    println!(
        "soak: {n} runs from seed {first}: {ops} operations checked, {acked} writes acknowledged, {lost} lost, \
         {faults} faults, failed seeds {failed:?}, {:?}",
        started.elapsed()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
