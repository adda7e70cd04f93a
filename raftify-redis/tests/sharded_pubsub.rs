//! Pub/sub on `raftify-redis --sharded`: `PUBLISH` goes through the
//! metadata group's log, so a subscriber on any node receives every
//! message published on any node, all subscribers in one order — also
//! while the metadata group's leader is SIGKILLed and another is elected.
//!
//! The checker: per subscriber, the sequence of messages received. Every
//! acknowledged message is in it exactly once; a message whose `PUBLISH`
//! outcome is unknown (`-UNKNOWN`, or the connection broke) at most once;
//! nothing else; each publisher's messages in the order it sent them; and
//! the sequences of all subscribers that lived through it are equal.

mod common;

use common::{show, Client, Frame, Node};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Messages per publisher per phase.
const PER_PHASE: usize = 30;

/// What one publisher saw: acknowledged and unknown messages, in the
/// order sent.
#[derive(Default)]
struct Sent {
    acked: Vec<String>,
    unknown: Vec<String>,
    /// Answers that it did not run (sent again).
    refused: usize,
}

/// Publishes messages `"{tag}-{i}"` on `news` through `addr` until `stop`
/// (at least `PER_PHASE`), counting acknowledgements in `acks`: one not
/// run (`-TRYAGAIN`, `-CLUSTERDOWN`, no connection) is sent again; one
/// whose outcome is unknown is not.
fn publish(addr: String, tag: String, stop: &AtomicBool, acks: &AtomicUsize) -> Sent {
    let mut sent = Sent::default();
    let mut client: Option<Client> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while i < PER_PHASE || !stop.load(Ordering::SeqCst) {
        let msg = format!("{tag}-{i}");
        i += 1;
        loop {
            assert!(Instant::now() < deadline, "{msg}: not published in time");
            let c = match client.as_mut() {
                Some(c) => c,
                None => match Client::connect(&addr) {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            match c.call(&["PUBLISH", "news", &msg]) {
                Ok(Frame::Integer(n)) if n >= 0 => {
                    sent.acked.push(msg);
                    acks.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(Frame::Error(e))
                    if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Frame::Error(e)) if e.starts_with("UNKNOWN") => {
                    sent.unknown.push(msg);
                    break;
                }
                Ok(other) => panic!("PUBLISH {msg}: {}", show(&other)),
                Err(_) => {
                    // Sent, connection broken: the outcome is not known.
                    client = None;
                    sent.unknown.push(msg);
                    break;
                }
            }
        }
    }
    sent
}

/// One publisher per node of `addrs` at once, until each sent
/// `PER_PHASE` and `until` (given the acknowledgements so far) says stop.
fn publishers(addrs: &[(usize, String)], tag: &str, until: impl FnOnce(&AtomicUsize)) -> Vec<Sent> {
    let (stop, acks) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        let handles: Vec<_> = addrs
            .iter()
            .map(|(i, addr)| {
                let (stop, acks) = (&stop, &acks);
                scope.spawn(move || publish(addr.clone(), format!("{tag}{}", i + 1), stop, acks))
            })
            .collect();
        until(&acks);
        stop.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Waits until `acks` reaches `n`.
fn acked(acks: &AtomicUsize, n: usize) {
    common::wait_for("acknowledged messages", Duration::from_secs(60), || {
        (acks.load(Ordering::SeqCst) >= n).then_some(())
    });
}

/// A connection subscribed to `news` and to the pattern `n*`.
fn subscriber(node: &Node) -> Client {
    let mut s = node.client();
    assert_eq!(
        show(&s.cmd(&["SUBSCRIBE", "news"])),
        "[$subscribe, $news, :1]"
    );
    assert_eq!(
        show(&s.cmd(&["PSUBSCRIBE", "n*"])),
        "[$psubscribe, $n*, :2]"
    );
    s
}

/// Reads `s`'s messages until `done` says it has them all (or `T` passes
/// without one): the `message` payloads in order, and how many
/// `pmessage`s came.
fn drain(s: &mut Client, done: impl Fn(&[String], usize) -> bool) -> (Vec<String>, usize) {
    let (mut direct, mut patterned) = (Vec::new(), 0);
    while !done(&direct, patterned) {
        let f = s.read().expect("a message before the timeout");
        let Frame::Array(parts) = &f else {
            panic!("not a push: {}", show(&f));
        };
        match parts.first().map(show).as_deref() {
            Some("$message") => {
                assert_eq!(show(&parts[1]), "$news");
                direct.push(show(&parts[2]).trim_start_matches('$').to_string());
            }
            Some("$pmessage") => {
                assert_eq!(show(&parts[2]), "$news");
                patterned += 1;
            }
            _ => panic!("unexpected push: {}", show(&f)),
        }
    }
    (direct, patterned)
}

/// Checks one subscriber's sequence against what the publishers sent.
fn check(seen: &[String], sent: &[Sent]) {
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a message delivered twice: {seen:?}"
    );
    for p in sent {
        for m in &p.acked {
            assert!(unique.contains(m), "acknowledged {m} never delivered");
        }
        // This publisher's messages, in the order it sent them.
        let mut order: Vec<&String> = p.acked.iter().chain(&p.unknown).collect();
        order.sort_by_key(|m| m.rsplit_once('-').map(|(_, i)| i.parse::<usize>().unwrap()));
        let delivered: Vec<&String> = seen.iter().filter(|m| order.contains(m)).collect();
        let expected: Vec<&String> = order.into_iter().filter(|m| unique.contains(m)).collect();
        assert_eq!(delivered, expected, "out of order");
    }
    let all: BTreeSet<&String> = sent
        .iter()
        .flat_map(|p| p.acked.iter().chain(&p.unknown))
        .collect();
    for m in seen {
        assert!(all.contains(m), "{m} was never published");
    }
}

#[test]
fn published_messages_reach_every_node_in_one_order_through_a_metadata_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    // One replica per data group: the data groups are not everywhere, the
    // messages still are.
    let mut nodes = common::sharded_three(dir.path(), &["--replicas", "1"]);
    let mut subs: Vec<Client> = nodes.iter().map(subscriber).collect();
    // PUBSUB counts the subscribers connected to the node asked.
    for n in &nodes {
        let mut c = n.client();
        assert_eq!(
            show(&c.cmd(&["PUBSUB", "NUMSUB", "news", "none"])),
            "[$news, :1, $none, :0]"
        );
        assert_eq!(show(&c.cmd(&["PUBSUB", "NUMPAT"])), ":1");
        assert_eq!(show(&c.cmd(&["PUBSUB", "CHANNELS", "n*"])), "[$news]");
    }

    // Phase 1: a publisher on each node at once.
    let addrs: Vec<(usize, String)> = nodes.iter().map(|n| n.addr()).enumerate().collect();
    let phase1 = publishers(&addrs, "a", |_| {});
    for p in &phase1 {
        assert!(p.unknown.is_empty(), "no fault yet: all acknowledged");
    }
    let total: usize = phase1.iter().map(|p| p.acked.len()).sum();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for s in &mut subs {
        let (direct, patterned) = drain(s, |d, p| d.len() >= total && p >= total);
        assert_eq!(patterned, total, "the pattern subscription got them all");
        check(&direct, &phase1);
        seen.push(direct);
    }
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "subscribers disagree on the order"
    );

    // Phase 2: the metadata group's leader is SIGKILLed while the two
    // other nodes publish.
    let Frame::Array(leader) = nodes[0].client().cmd(&["RAFT", "LEADER"]) else {
        panic!("RAFT LEADER");
    };
    let leader_raft = match leader.get(1) {
        Some(Frame::BulkString(addr)) => String::from_utf8_lossy(addr).to_string(),
        other => panic!("RAFT LEADER: {other:?}"),
    };
    let victim = nodes
        .iter()
        .position(|n| n.raft == leader_raft)
        .unwrap_or_else(|| panic!("no node has the leader's address {leader_raft}"));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let addrs: Vec<(usize, String)> = survivors.iter().map(|&i| (i, nodes[i].addr())).collect();
    let victim_node = &mut nodes[victim];
    // Killed once messages flow; the publishers go on until as many again
    // are acknowledged after it (a new leader elected).
    let phase2 = publishers(&addrs, "b", |acks| {
        acked(acks, 20);
        victim_node.kill();
        let after = acks.load(Ordering::SeqCst);
        acked(acks, after + 2 * PER_PHASE);
    });
    let acked: usize = phase2.iter().map(|p| p.acked.len()).sum();
    let sure = |d: &[String], _| {
        let got: BTreeSet<&String> = d.iter().collect();
        phase2
            .iter()
            .all(|p| p.acked.iter().all(|m| got.contains(m)))
    };
    let mut after: Vec<Vec<String>> = Vec::new();
    for &i in &survivors {
        // Each reads up to the last acknowledged message: with one order,
        // both stop at the same place.
        let (direct, _) = drain(&mut subs[i], sure);
        check(&direct, &phase2);
        after.push(direct);
    }
    assert!(acked > 0, "nothing acknowledged after the kill");
    let Frame::Array(now) = nodes[survivors[0]].client().cmd(&["RAFT", "LEADER"]) else {
        panic!("RAFT LEADER");
    };
    let now = now.get(1).map(show).unwrap_or_default();
    assert_ne!(
        now.trim_start_matches('$'),
        leader_raft,
        "a new metadata leader"
    );
    assert_eq!(after[0], after[1], "the survivors disagree on the order");
    eprintln!(
        "node {} (metadata leader) killed; {} acknowledged, {} unknown, {} refused and sent again",
        victim + 1,
        acked,
        phase2.iter().map(|p| p.unknown.len()).sum::<usize>(),
        phase2.iter().map(|p| p.refused).sum::<usize>()
    );
}
