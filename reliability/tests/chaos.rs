//! Real-process chaos, CI slice: 3 real `memstore` processes under HTTP
//! load with SIGKILL / SIGSTOP / restarts (and network-namespace partitions
//! when running as root with `ip netns`), for `RAFTIFY_CHAOS_SECS` seconds
//! (default 20). The binary is `MEMSTORE_BIN` or the `memstore-chaos-node`
//! this crate builds from examples/memstore/src/main.rs.

use raftify_reliability::chaos::{memstore_bin, run, ChaosOptions};
use std::time::Duration;

#[test]
fn real_processes_under_chaos_lose_no_acknowledged_write_and_stay_linearizable() {
    let secs = std::env::var("RAFTIFY_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("RAFTIFY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let Some(bin) = memstore_bin(Some(env!("CARGO_BIN_EXE_memstore-chaos-node"))) else {
        panic!("no memstore binary: set MEMSTORE_BIN");
    };
    let mut opts = ChaosOptions::new(seed, Duration::from_secs(secs));
    if let Ok(n) = std::env::var("RAFTIFY_CHAOS_NODES") {
        opts.nodes = n.parse().unwrap_or(3);
    }
    let r = run(&bin, opts);
    match &r.netns_skipped {
        Some(why) => {
            println!("chaos: network-namespace partitions skipped ({why}); processes on loopback")
        }
        None => println!("chaos: nodes in network namespaces, partitions by blackhole routes"),
    }
    println!(
        "chaos: seed {} {}s with {}: ops ok {} failed {} unknown {}, {} writes acknowledged, {} lost, faults {:?}",
        r.options.seed,
        r.options.duration.as_secs(),
        bin.display(),
        r.ops.ok,
        r.ops.failed,
        r.ops.unknown,
        r.acked_writes,
        r.acked_lost,
        r.faults
    );
    let f = r.failures();
    assert!(
        f.is_empty(),
        "chaos run failed (RAFTIFY_CHAOS_SEED={}):\n{}",
        r.options.seed,
        f.join("\n")
    );
    assert!(r.ops.ok > 50, "too few operations completed: {:?}", r.ops);
}
