//! What the keyspace's operations cost on one core, without consensus:
//! `N` keys `SET` (in entries of 1,000 commands), `N` `GET`s, and `SCAN`
//! calls of `COUNT 10` — a full iteration's first 1,000 calls, the cost of
//! which must not grow with the keyspace.
//!
//! `cargo run --release -p raftify-cache --example keyspace_bench -- 1000000`

use bytes::Bytes;
use raftify_cache::{CacheEntry, CacheState, Op, Reply};
use std::time::Instant;

fn argv(words: &[&str]) -> Vec<Bytes> {
    words
        .iter()
        .map(|w| Bytes::copy_from_slice(w.as_bytes()))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut state = CacheState::new();
    let value = "v".repeat(100);
    let t = Instant::now();
    for (i, chunk) in (0..n).collect::<Vec<_>>().chunks(1000).enumerate() {
        let commands = chunk
            .iter()
            .map(|k| argv(&["set", &format!("key:{k}"), &value]))
            .collect();
        let op = Op::Exec {
            commands,
            transaction: false,
            watched: Vec::new(),
        };
        state.apply_entry(i as u64 + 1, &CacheEntry { clock_ms: 1, op });
    }
    let set = t.elapsed();
    let t = Instant::now();
    let mut hits = 0;
    for k in 0..n {
        if matches!(
            state.read(&argv(&["get", &format!("key:{k}")])),
            Reply::Bulk(_)
        ) {
            hits += 1;
        }
    }
    let get = t.elapsed();
    if hits != n {
        return Err(format!("{hits} of {n} keys read back").into());
    }
    let t = Instant::now();
    let (mut cursor, mut calls, mut keys) = ("0".to_string(), 0, 0);
    while calls < 1000 {
        let Reply::Array(parts) = state.read(&argv(&["scan", &cursor, "count", "10"])) else {
            return Err("SCAN did not answer an array".into());
        };
        let (Some(Reply::Bulk(next)), Some(Reply::Array(found))) = (parts.first(), parts.get(1))
        else {
            return Err("SCAN answered no cursor and keys".into());
        };
        keys += found.len();
        calls += 1;
        cursor = String::from_utf8_lossy(next).into_owned();
        if cursor == "0" {
            break;
        }
    }
    let scan = t.elapsed();
    println!(
        "{n} keys: SET {:.0} ns/key, GET {:.0} ns/key, SCAN COUNT 10 {:.1} µs/call ({calls} calls, {keys} keys)",
        set.as_nanos() as f64 / n as f64,
        get.as_nanos() as f64 / n as f64,
        scan.as_micros() as f64 / calls as f64
    );
    Ok(())
}
