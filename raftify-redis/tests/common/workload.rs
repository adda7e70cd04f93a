//! The fault tests' workload and checker: writers doing INCRs and
//! `RPUSH` appends inside `MULTI` against any node, counting what was
//! acknowledged and what has an unknown outcome; the checker reads every
//! node back.

use super::{Client, Node};
use redis_protocol::resp2::types::BytesFrame as Frame;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one writer saw.
#[derive(Default, Debug)]
pub struct Tally {
    /// INCRs answered with a number.
    pub acked: u64,
    /// INCRs whose outcome is not known (UNKNOWN, or the connection broke
    /// after sending).
    pub unknown: u64,
    /// Values appended (in a MULTI) and acknowledged.
    pub appended: Vec<String>,
    /// Values whose append outcome is not known.
    pub maybe: Vec<String>,
}

/// Writes until `stop`, starting at `addrs[w]`, moving to the next
/// address when a node refuses or the connection breaks.
pub fn writer(addrs: Vec<String>, w: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let mut seq = 0u64;
    let mut at = w;
    let mut conn: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let addr = &addrs[at % addrs.len()];
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    at += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        c.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok();
        seq += 1;
        let value = format!("w{w}-{seq}");
        let r = if seq.is_multiple_of(2) {
            c.call(&["INCR", "counter"]).map(|f| (true, f))
        } else {
            // An append in a transaction: sent as one pipeline.
            let sent = c
                .send(&[b"MULTI"])
                .and_then(|()| c.send(&[b"RPUSH", b"appends", value.as_bytes()]))
                .and_then(|()| c.send(&[b"EXEC"]));
            sent.and_then(|()| {
                let _ = c.read()?;
                let _ = c.read()?;
                c.read()
            })
            .map(|f| (false, f))
        };
        match r {
            Ok((true, Frame::Integer(_))) => t.acked += 1,
            Ok((false, Frame::Array(items)))
                if matches!(items.first(), Some(Frame::Integer(_))) =>
            {
                t.appended.push(value)
            }
            Ok((incr, Frame::Error(e))) => {
                let e = e.to_string();
                if e.starts_with("UNKNOWN") {
                    if incr {
                        t.unknown += 1;
                    } else {
                        t.maybe.push(value);
                    }
                } else {
                    // A transaction refused as a whole says why after
                    // EXECABORT; MOVED (a sharded node without the key's
                    // group), ASK and TRYAGAIN (its slot moving) ran
                    // nothing.
                    let why = e.strip_prefix("EXECABORT ").unwrap_or(&e);
                    assert!(
                        why.starts_with("CLUSTERDOWN")
                            || why.starts_with("TRYAGAIN")
                            || why.starts_with("MOVED")
                            || why.starts_with("ASK")
                            || why.contains("node cannot serve"),
                        "a definite error must be one the write was not applied for: {e}"
                    );
                }
                at += 1;
                conn = None;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok((_, other)) => panic!("unexpected reply {other:?}"),
            Err(_) => {
                // Sent, then the connection broke: the outcome is not known.
                if seq.is_multiple_of(2) {
                    t.unknown += 1;
                } else {
                    t.maybe.push(value);
                }
                at += 1;
                conn = None;
            }
        }
    }
    t
}

/// Writers running on their threads.
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
}

impl Writers {
    /// Starts `n` [`writer`]s against `addrs`.
    pub fn start(addrs: &[String], n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|w| {
                let (addrs, stop) = (addrs.to_vec(), stop.clone());
                std::thread::spawn(move || writer(addrs, w, stop))
            })
            .collect();
        Writers { stop, threads }
    }

    /// Stops them; what each saw.
    pub fn stop(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    }
}

/// Every acknowledged increment counted once on every node (`acked ≤
/// counter ≤ acked + unknown`), every acknowledged append present exactly
/// once, none twice, none nobody made; and enough writes to mean something.
pub fn check_writes(nodes: &[&Node], tallies: &[Tally]) {
    let acked: u64 = tallies.iter().map(|t| t.acked).sum();
    let unknown: u64 = tallies.iter().map(|t| t.unknown).sum();
    for node in nodes {
        let (id, mut cl) = (node.id, node.client());
        let counter: u64 = match cl.cmd(&["GET", "counter"]) {
            Frame::BulkString(b) => String::from_utf8_lossy(&b).parse().expect("a number"),
            other => panic!("{other:?}"),
        };
        assert!(
            acked <= counter && counter <= acked + unknown,
            "node {id}: counter {counter}, acknowledged {acked}, unknown {unknown}"
        );
        let Frame::Array(items) = cl.cmd(&["LRANGE", "appends", "0", "-1"]) else {
            panic!("LRANGE")
        };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for i in items {
            if let Frame::BulkString(b) = i {
                *seen
                    .entry(String::from_utf8_lossy(&b).into_owned())
                    .or_default() += 1;
            }
        }
        for t in tallies {
            for v in &t.appended {
                assert_eq!(seen.get(v), Some(&1), "node {id}: acknowledged append {v}");
            }
            for v in &t.maybe {
                assert!(
                    seen.get(v).copied().unwrap_or(0) <= 1,
                    "node {id}: append {v} twice"
                );
            }
        }
        let known: usize = tallies
            .iter()
            .map(|t| t.appended.len() + t.maybe.len())
            .sum();
        assert!(
            seen.values().sum::<usize>() <= known,
            "node {id}: appends nobody made"
        );
    }
    let appended: usize = tallies.iter().map(|t| t.appended.len()).sum();
    let maybe: usize = tallies.iter().map(|t| t.maybe.len()).sum();
    eprintln!("{acked} increments acknowledged, {unknown} unknown; {appended} appends acknowledged, {maybe} unknown");
    assert!(
        acked > 20 && appended > 20,
        "too few writes to mean anything: {acked}, {appended}"
    );
}
