use super::*;
use crate::{CacheEntry, CacheState, Op, Reply};
use raftify_core::{AbstractLogEntry, AbstractStateMachine};

fn cmd(args: &[&str]) -> Vec<Bytes> {
    args.iter()
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

fn exec(state: &mut CacheState, index: u64, commands: Vec<Vec<Bytes>>, tx: bool) -> Reply {
    let entry = CacheEntry {
        clock_ms: 1_000_000,
        op: Op::Exec {
            commands,
            transaction: tx,
            watched: Vec::new(),
        },
    };
    // Through the codec, as from the log.
    let entry = CacheEntry::decode(&entry.encode().unwrap()).unwrap();
    state.apply_entry(index, &entry)
}

fn step(state: &mut CacheState, index: u64, m: Migrate) -> Reply {
    let entry = CacheEntry {
        clock_ms: 1_000_000,
        op: Op::Migrate(m),
    };
    let entry = CacheEntry::decode(&entry.encode().unwrap()).unwrap();
    state.apply_entry(index, &entry)
}

fn get(state: &CacheState, key: &str) -> Reply {
    state.read(&cmd(&["get", key]))
}

#[test]
fn a_slot_move_freezes_exports_imports_and_drops() {
    let (foo, bar) = (key_slot(b"foo"), key_slot(b"bar"));
    assert_eq!((foo, bar), (12182, 5061));
    let mut src = CacheState::new();
    exec(&mut src, 1, vec![cmd(&["set", "foo", "1"])], false);
    exec(
        &mut src,
        2,
        vec![cmd(&["rpush", "{foo}:l", "a", "b"])],
        false,
    );
    exec(
        &mut src,
        3,
        vec![cmd(&["set", "bar", "2", "px", "60000"])],
        false,
    );

    // Frozen: writes to those slots are refused, others and reads go on.
    let frozen = Migrate::Freeze {
        start: 12000,
        end: 12999,
    };
    let Reply::Bulk(items) = step(&mut src, 4, frozen) else {
        panic!("a freeze replies with the items")
    };
    let r = exec(&mut src, 5, vec![cmd(&["set", "foo", "3"])], false);
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("TRYAGAIN slot 12182")),
        "{r:?}"
    );
    assert_eq!(get(&src, "foo"), Reply::bulk("1"));
    assert_eq!(
        exec(&mut src, 6, vec![cmd(&["set", "bar", "4"])], false),
        Reply::Ok
    );
    // A transaction touching a frozen slot is refused whole.
    let tx = vec![cmd(&["set", "bar", "5"]), cmd(&["set", "foo", "5"])];
    let r = exec(&mut src, 7, tx, true);
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("EXECABORT TRYAGAIN")),
        "{r:?}"
    );
    assert_eq!(get(&src, "bar"), Reply::bulk("4"));
    // Reads batched with a write are not refused.
    let batch = vec![cmd(&["get", "foo"]), cmd(&["set", "bar", "6"])];
    assert_eq!(
        exec(&mut src, 8, batch, true),
        Reply::Array(vec![Reply::bulk("1"), Reply::Ok])
    );

    // Exported and imported: the slot's keys, with their values and types.
    // (as the freeze saw them, and as they still are)
    assert_eq!(items, src.export_slots(12000, 12999).unwrap());
    let mut dst = CacheState::new();
    exec(&mut dst, 1, vec![cmd(&["set", "other", "x"])], false);
    let import = Migrate::Import {
        start: 12000,
        end: 12999,
        items: items.clone(),
    };
    assert_eq!(step(&mut dst, 2, import), Reply::Int(2));
    assert_eq!(get(&dst, "foo"), Reply::bulk("1"));
    assert_eq!(
        dst.read(&cmd(&["lrange", "{foo}:l", "0", "-1"])),
        Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b")])
    );
    assert_eq!(get(&dst, "bar"), Reply::Nil, "not in the range");

    // Dropped from the source, which from then on refuses reads and
    // writes of those slots (a stale router is told to ask again), and
    // still serves the others.
    let dropped = Migrate::Drop {
        start: 12000,
        end: 12999,
    };
    assert_eq!(step(&mut src, 9, dropped), Reply::Int(2));
    assert!(src.frozen().moving().is_empty());
    assert_eq!(src.frozen().moved(), &[(12000, 12999)]);
    let refused = |r: &Reply| matches!(r, Reply::Error(e) if e.starts_with("TRYAGAIN"));
    assert!(refused(&get(&src, "foo")));
    assert!(refused(&exec(
        &mut src,
        10,
        vec![cmd(&["set", "foo", "9"])],
        false
    )));
    assert_eq!(get(&src, "bar"), Reply::bulk("6"));

    // The slots come back (a later move the other way): part of the range
    // imported is accepted again, the rest still refused.
    let back = Migrate::Import {
        start: 12100,
        end: 12199,
        items: dst.export_slots(12100, 12199).unwrap().into(),
    };
    assert_eq!(step(&mut src, 11, back), Reply::Int(2));
    assert_eq!(get(&src, "foo"), Reply::bulk("1"));
    assert_eq!(src.frozen().moved(), &[(12000, 12099), (12200, 12999)]);
}

#[test]
fn bad_steps_are_refused_and_change_nothing() {
    let mut s = CacheState::new();
    exec(&mut s, 1, vec![cmd(&["set", "foo", "1"])], false);
    let bad = CacheEntry {
        clock_ms: 1,
        op: Op::Migrate(Migrate::Freeze { start: 9, end: 3 }),
    };
    assert!(CacheEntry::decode(&bad.encode().unwrap()).is_err());
    assert!(matches!(
        s.apply_entry(2, &bad),
        Reply::Error(e) if e.contains("bad slot range")
    ));
    let r = step(
        &mut s,
        3,
        Migrate::Import {
            start: 0,
            end: 5,
            items: Bytes::from_static(b"\x00\x00\x00\x00\x00\x00\x00\x05junk"),
        },
    );
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("cannot import")),
        "{r:?}"
    );
    assert_eq!(get(&s, "foo"), Reply::bulk("1"));
    assert!(s.export_slots(5, 16384).is_err());
}

#[tokio::test]
async fn frozen_slots_survive_a_snapshot_and_old_snapshots_still_load() {
    let mut s = CacheState::new();
    exec(&mut s, 1, vec![cmd(&["set", "foo", "1"])], false);
    step(
        &mut s,
        2,
        Migrate::Freeze {
            start: 12182,
            end: 12182,
        },
    );
    let snap = s.snapshot().await.unwrap();
    let mut back = CacheState::new();
    back.restore(snap.clone()).await.unwrap();
    assert_eq!(back.frozen().moving(), &[(12182, 12182)]);
    let r = exec(&mut back, 3, vec![cmd(&["set", "foo", "2"])], false);
    assert!(matches!(&r, Reply::Error(e) if e.starts_with("TRYAGAIN")));
    // A version 5 snapshot is this one without the handed and incoming
    // counts (16 bytes); a version 4 one without the frozen section
    // either (one range, 16 bytes, and four counts, 32 more).
    let mut v5 = snap[..snap.len() - 16].to_vec();
    v5[..8].copy_from_slice(b"RFTYKV05");
    let mut old = CacheState::new();
    old.restore(v5).await.unwrap();
    assert_eq!(old.frozen().moving(), &[(12182, 12182)]);
    let mut v4 = snap[..snap.len() - 48].to_vec();
    v4[..8].copy_from_slice(b"RFTYKV04");
    let mut old = CacheState::new();
    old.restore(v4).await.unwrap();
    assert!(old.frozen().is_empty());
    assert_eq!(get(&old, "foo"), Reply::bulk("1"));
}

#[tokio::test]
async fn a_handed_chunk_is_answered_ask_and_not_exported_again() {
    let slot = key_slot(b"foo");
    let mut src = CacheState::new();
    exec(&mut src, 1, vec![cmd(&["set", "foo", "1"])], false);
    exec(&mut src, 2, vec![cmd(&["set", "bar", "1"])], false);
    let (start, end) = (slot - 10, slot + 10);
    let Reply::Bulk(items) = step(&mut src, 3, Migrate::Freeze { start, end }) else {
        panic!("a freeze replies with the items")
    };
    let mut dst = CacheState::new();
    assert!(!dst.frozen().accepts_asking(slot));
    let import = Migrate::Import { start, end, items };
    assert_eq!(step(&mut dst, 1, import), Reply::Int(1));
    assert!(dst.frozen().accepts_asking(slot));
    assert!(!dst.frozen().accepts_asking(end + 1));

    // Frozen, not handed: reads served, writes TRYAGAIN.
    assert_eq!(get(&src, "foo"), Reply::bulk("1"));
    // Handed: reads and writes answered ASK (the target has the keys and
    // may take writes the source never sees); a transaction TRYAGAIN.
    assert_eq!(step(&mut src, 4, Migrate::Hand { start, end }), Reply::Ok);
    assert!(src.frozen().moving().is_empty());
    assert_eq!(src.frozen().handed(), &[(start, end)]);
    let ask = Reply::Error(format!("ASK {slot}"));
    assert_eq!(get(&src, "foo"), ask);
    assert_eq!(
        exec(&mut src, 5, vec![cmd(&["set", "foo", "2"])], false),
        ask
    );
    let r = exec(&mut src, 6, vec![cmd(&["set", "foo", "2"])], true);
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("EXECABORT TRYAGAIN")),
        "{r:?}"
    );
    assert_eq!(get(&src, "bar"), Reply::bulk("1"), "other slots served");

    // The move re-run after a crash: the handed chunk is not exported
    // again (the target's newer writes would be overwritten), and it
    // cannot be abandoned any more.
    assert_eq!(
        step(&mut src, 7, Migrate::Freeze { start, end }),
        Reply::Simple("HANDED".into())
    );
    let r = step(&mut src, 8, Migrate::Thaw { start, end });
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("only go forward")),
        "{r:?}"
    );
    assert_eq!(src.frozen().handed(), &[(start, end)]);

    // Handed and incoming ranges survive a snapshot.
    let mut copy = CacheState::new();
    copy.restore(src.snapshot().await.unwrap()).await.unwrap();
    assert_eq!(copy.frozen(), src.frozen());
    let mut copy = CacheState::new();
    copy.restore(dst.snapshot().await.unwrap()).await.unwrap();
    assert!(copy.frozen().accepts_asking(slot));

    // Dropped once the placement gives the slots to the target: moved
    // away (TRYAGAIN, a stale router finds the owner), no longer handed.
    assert_eq!(
        step(&mut src, 9, Migrate::Drop { start, end }),
        Reply::Int(1)
    );
    assert!(src.frozen().handed().is_empty());
    let r = get(&src, "foo");
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("TRYAGAIN")),
        "{r:?}"
    );

    // The target moving the slots on: no longer incoming.
    step(
        &mut dst,
        2,
        Migrate::Freeze {
            start: slot,
            end: slot,
        },
    );
    assert!(!dst.frozen().accepts_asking(slot));
    assert!(dst.frozen().accepts_asking(start));
}

#[test]
fn a_move_that_handed_nothing_can_be_abandoned() {
    let mut s = CacheState::new();
    exec(&mut s, 1, vec![cmd(&["set", "foo", "1"])], false);
    step(
        &mut s,
        2,
        Migrate::Freeze {
            start: 0,
            end: 16383,
        },
    );
    assert_eq!(
        step(
            &mut s,
            3,
            Migrate::Thaw {
                start: 0,
                end: 16383
            }
        ),
        Reply::Ok
    );
    assert!(s.frozen().is_empty());
    assert_eq!(
        exec(&mut s, 4, vec![cmd(&["set", "foo", "2"])], false),
        Reply::Ok
    );
}

#[tokio::test]
async fn weighing_counts_each_slots_bytes_in_the_log_as_a_read_and_after_a_restore() {
    let mut s = CacheState::new();
    assert!(matches!(s.weigh_slots(0, 16383), Reply::Error(e) if e.contains("does not count")));
    s.count_slot_bytes();
    let big = "x".repeat(500);
    exec(
        &mut s,
        1,
        vec![
            cmd(&["set", "{t}.a", &big]),
            cmd(&["set", "{t}.b", &big]),
            cmd(&["rpush", "foo", "a", "b"]),
        ],
        false,
    );
    let (t, foo) = (key_slot(b"t"), key_slot(b"foo"));
    let weights = |r: Reply| match r {
        Reply::Bulk(b) => decode_weights(&b).unwrap(),
        other => panic!("{other:?}"),
    };
    let all = Migrate::Weigh {
        start: 0,
        end: 16383,
    };
    let w = weights(step(&mut s, 2, all.clone()));
    let tagged = (t, 2 * (5 + crate::keyspace::PER_KEY as u64 + 500));
    let mut want = vec![tagged, (foo, 3 + crate::keyspace::PER_KEY as u64 + 2 * 49)];
    want.sort();
    assert_eq!(w, want);
    assert_eq!(
        w.iter().map(|(_, b)| b).sum::<u64>(),
        s.keyspace().used_memory() as u64
    );
    // A range: only its slots.
    let only = Migrate::Weigh { start: t, end: t };
    assert_eq!(weights(step(&mut s, 3, only)), vec![tagged]);
    // As a read query (what the rebalancer sends), the same.
    let q = CacheEntry {
        clock_ms: 0,
        op: Op::Migrate(all.clone()),
    }
    .encode()
    .unwrap();
    let r = crate::remote::decode_reply(&crate::remote::answer_read(&s, &q).unwrap()).unwrap();
    assert_eq!(weights(r), want);
    // A restored snapshot counts the same.
    let mut back = CacheState::new();
    back.count_slot_bytes();
    back.restore(s.snapshot().await.unwrap()).await.unwrap();
    assert_eq!(weights(back.weigh_slots(0, 16383)), want);
    // Torn records are refused.
    assert!(decode_weights(&[0u8; 11]).is_err());
    assert!(decode_weights(&[0xff; 10]).is_err());
}

#[test]
fn an_import_carrying_an_empty_collection_is_refused() {
    // Only a crafted import can carry one (commands never leave one).
    let mut source = Keyspace::default();
    let empty = crate::keyspace::Value::Set(Box::default());
    let _ = source.insert(Bytes::from("s"), empty, None);
    let items = items_in(&source, 0, 16383);
    let mut parts = export_parts(&items, usize::MAX).unwrap();
    let data = parts.pop().unwrap();
    let mut target = Keyspace::default();
    let err = import(&mut target, &data).unwrap_err().to_string();
    assert!(err.contains("empty collection"), "{err}");
    assert_eq!(target.iter().count(), 0);
}
