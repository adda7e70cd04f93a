//! Key commands: existence, types, TTLs, renames, iteration.

use super::{glob_match, is, parse_i64, WriteCtx};
use crate::keyspace::Keyspace;
use crate::reply::{errors, Reply};
use bytes::Bytes;

pub(crate) fn del(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let n = a[1..]
        .iter()
        .filter(|k| {
            let live = ks.exists(k);
            ks.remove(k);
            live
        })
        .count();
    Reply::Int(n as i64)
}

pub(crate) fn exists(ks: &Keyspace, a: &[Bytes]) -> Reply {
    Reply::Int(a[1..].iter().filter(|k| ks.exists(k)).count() as i64)
}

pub(crate) fn type_(ks: &Keyspace, a: &[Bytes]) -> Reply {
    Reply::Simple(ks.get(&a[1]).map_or("none", |i| i.value.type_name()).into())
}

/// `EXPIRE`-family: `scale` ms per unit, `absolute` for the `*AT` forms.
fn expire_with(ks: &mut Keyspace, a: &[Bytes], scale: u64, absolute: bool, cmd: &str) -> Reply {
    let Some(n) = parse_i64(&a[2]) else {
        return errors::not_integer();
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for w in &a[3..] {
        if is(w, "NX") {
            nx = true;
        } else if is(w, "XX") {
            xx = true;
        } else if is(w, "GT") {
            gt = true;
        } else if is(w, "LT") {
            lt = true;
        } else {
            return Reply::err(format!("Unsupported option {}", String::from_utf8_lossy(w)));
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::err("NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::err("GT and LT options at the same time are not compatible");
    }
    let now = ks.clock() as i128;
    let at = i128::from(n) * i128::from(scale) + if absolute { 0 } else { now };
    if at > i128::from(i64::MAX)
        || (!absolute && i128::from(n) * i128::from(scale) > i128::from(i64::MAX))
    {
        return errors::invalid_expire(cmd);
    }
    let Some(item) = ks.get(&a[1]) else {
        return Reply::Int(0);
    };
    let current = item.expire_at().map(i128::from);
    let allowed = match current {
        None => !xx && !gt,
        Some(c) => !(nx || (gt && at <= c) || (lt && at >= c)),
    };
    if !allowed {
        return Reply::Int(0);
    }
    if at <= now {
        ks.remove(&a[1]);
    } else {
        ks.set_expiry(&a[1], Some(at as u64));
    }
    Reply::Int(1)
}

pub(crate) fn expire(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    expire_with(ks, a, 1000, false, "expire")
}

pub(crate) fn pexpire(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    expire_with(ks, a, 1, false, "pexpire")
}

pub(crate) fn expireat(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    expire_with(ks, a, 1000, true, "expireat")
}

pub(crate) fn pexpireat(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    expire_with(ks, a, 1, true, "pexpireat")
}

pub(crate) fn persist(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    match ks.get(&a[1]).map(|i| i.expire_at()) {
        Some(Some(_)) => {
            ks.set_expiry(&a[1], None);
            Reply::Int(1)
        }
        _ => Reply::Int(0),
    }
}

/// `TTL`-family: the remaining time in `scale` ms units, or the absolute
/// expiry with `absolute`; -2 for a missing key, -1 for no TTL.
fn ttl_with(ks: &Keyspace, a: &[Bytes], scale: u64, absolute: bool) -> Reply {
    match ks.get(&a[1]).map(|i| i.expire_at()) {
        None => Reply::Int(-2),
        Some(None) => Reply::Int(-1),
        Some(Some(at)) if absolute => Reply::Int((at / scale) as i64),
        Some(Some(at)) => {
            // The time left as of now on this node's clock when that is
            // ahead of the replicated one (which moves only with entries);
            // whether the key exists is still judged on the replicated one.
            let left = at.saturating_sub(ks.clock().max(raftify_core::unix_ms()));
            // Rounded as Redis does: TTL 10 right after EX 10.
            Reply::Int(left.div_ceil(scale).min(i64::MAX as u64) as i64)
        }
    }
}

pub(crate) fn ttl(ks: &Keyspace, a: &[Bytes]) -> Reply {
    ttl_with(ks, a, 1000, false)
}

pub(crate) fn pttl(ks: &Keyspace, a: &[Bytes]) -> Reply {
    ttl_with(ks, a, 1, false)
}

pub(crate) fn expiretime(ks: &Keyspace, a: &[Bytes]) -> Reply {
    ttl_with(ks, a, 1000, true)
}

pub(crate) fn pexpiretime(ks: &Keyspace, a: &[Bytes]) -> Reply {
    ttl_with(ks, a, 1, true)
}

pub(crate) fn keys(ks: &Keyspace, a: &[Bytes]) -> Reply {
    Reply::bulks(
        ks.iter()
            .filter(|(k, _)| glob_match(&a[1], k))
            .map(|(k, _)| Bytes::copy_from_slice(k)),
    )
}

/// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: keys in the order of their
/// hash ([`crate::scan_order`], the keyspace's own order); the cursor is
/// the last hash returned, so every key present for the whole iteration
/// is returned (once, or more when hashes collide), whatever is added or
/// deleted meanwhile. Each call is a range lookup from the cursor:
/// O(log keys + count).
pub(crate) fn scan(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let cursor = match super::parse_cursor(&a[1]) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (pattern, count, type_) = match super::scan_opts(a, 2, true) {
        Ok(o) => (o.pattern, o.count.max(1), o.type_),
        Err(e) => return e,
    };
    let (found, next) = next_by_hash(ks, cursor, count);
    let keys = found
        .into_iter()
        .filter(|(k, t)| {
            pattern.is_none_or(|p| glob_match(p, k))
                && type_.is_none_or(|ty| ty.eq_ignore_ascii_case(t.as_bytes()))
        })
        .map(|(k, _)| Reply::Bulk(Bytes::copy_from_slice(k)))
        .collect();
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
}

/// A key found by [`next_by_hash`] and its type's name.
type Found<'a> = (&'a [u8], &'static str);

/// The `count` live keys after `cursor` in hash order (with every other
/// key of the last hash: a collision never splits across calls), and the
/// next cursor (0 when none is left).
fn next_by_hash(ks: &Keyspace, cursor: u64, count: usize) -> (Vec<Found<'_>>, u64) {
    let mut found = Vec::with_capacity(count.min(1024));
    let mut last = 0;
    for (h, k, item) in ks.iter_after(cursor) {
        if found.len() >= count && h != last {
            return (found, last);
        }
        found.push((k, item.value.type_name()));
        last = h;
    }
    (found, 0)
}

fn rename_with(ks: &mut Keyspace, a: &[Bytes], nx: bool) -> Reply {
    let Some(item) = ks.get(&a[1]).cloned() else {
        return errors::no_such_key();
    };
    if nx && ks.exists(&a[2]) {
        return Reply::Int(0);
    }
    if a[1] != a[2] {
        ks.remove(&a[1]);
        let expire_at = item.expire_at();
        ks.insert(a[2].clone(), item.value, expire_at);
    }
    if nx {
        Reply::Int(1)
    } else {
        Reply::Ok
    }
}

pub(crate) fn rename(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    rename_with(ks, a, false)
}

pub(crate) fn renamenx(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    rename_with(ks, a, true)
}

pub(crate) fn randomkey(ks: &Keyspace, _: &[Bytes]) -> Reply {
    let n = ks.raw_len();
    if n == 0 {
        return Reply::Nil;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    let start = nanos % n;
    let mut live = ks.iter().skip(start).chain(ks.iter());
    Reply::opt(live.next().map(|(k, _)| Bytes::copy_from_slice(k)))
}

/// O(1), as Redis's: keys past their TTL count until the leader's next
/// expiry entry deletes them (milliseconds).
pub(crate) fn dbsize(ks: &Keyspace, _: &[Bytes]) -> Reply {
    Reply::Int(ks.raw_len() as i64)
}

pub(crate) fn flushdb(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    if a.len() > 2 || a.get(1).is_some_and(|w| !is(w, "ASYNC") && !is(w, "SYNC")) {
        return errors::syntax();
    }
    ks.clear();
    Reply::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::Value;
    use crate::scan_order::scan_hash;
    use std::collections::BTreeSet;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    /// One SCAN call: the next cursor and the keys.
    fn call(ks: &Keyspace, cursor: u64, extra: &[&str]) -> (u64, Vec<Bytes>) {
        let c = cursor.to_string();
        let mut words = vec!["SCAN", c.as_str()];
        words.extend_from_slice(extra);
        let Reply::Array(parts) = scan(ks, &args(&words)) else {
            panic!("not an array");
        };
        let (Reply::Bulk(next), Reply::Array(keys)) = (&parts[0], &parts[1]) else {
            panic!("unexpected shape {parts:?}");
        };
        let keys = keys
            .iter()
            .map(|k| match k {
                Reply::Bulk(b) => b.clone(),
                other => panic!("not a bulk: {other:?}"),
            })
            .collect();
        (std::str::from_utf8(next).unwrap().parse().unwrap(), keys)
    }

    fn keyspace(n: usize) -> Keyspace {
        let mut ks = Keyspace::default();
        for i in 0..n {
            let value = if i % 3 == 0 {
                Value::List(Box::new(imbl::Vector::unit(Bytes::from("x"))))
            } else {
                Value::Str(Bytes::from("v"))
            };
            ks.insert(Bytes::from(format!("key:{i}")), value, None);
        }
        ks
    }

    #[test]
    fn a_full_scan_returns_every_key_once_in_count_sized_steps_by_hash() {
        let ks = keyspace(1_000);
        let mut hashes: Vec<(u64, Bytes)> = ks
            .iter()
            .map(|(k, _)| (scan_hash(k), Bytes::copy_from_slice(k)))
            .collect();
        hashes.sort();
        let (mut cursor, mut seen, mut calls) = (0, Vec::new(), 0);
        loop {
            let (next, keys) = call(&ks, cursor, &["COUNT", "7"]);
            // Each call: the 7 smallest hashes after the cursor.
            let expected: Vec<Bytes> = hashes
                .iter()
                .filter(|(h, _)| *h > cursor)
                .take(7)
                .map(|(_, k)| k.clone())
                .collect();
            assert_eq!(keys, expected);
            seen.extend(keys);
            calls += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(calls, 1_000usize.div_ceil(7));
        let unique: BTreeSet<Bytes> = seen.iter().cloned().collect();
        assert_eq!((seen.len(), unique.len()), (1_000, 1_000));
    }

    #[test]
    fn keys_present_throughout_are_returned_despite_writes_and_filters_apply_after_count() {
        let mut ks = keyspace(300);
        let (mut cursor, mut seen) = (0, BTreeSet::new());
        let mut round = 0;
        loop {
            let (next, keys) = call(&ks, cursor, &["COUNT", "10"]);
            seen.extend(keys);
            // Writes between calls: new keys, and deletions of keys that
            // are not among the 300 originals' even half.
            ks.insert(
                Bytes::from(format!("new:{round}")),
                Value::Str(Bytes::from("x")),
                None,
            );
            ks.remove(format!("key:{}", 2 * round + 1).as_bytes());
            round += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for i in (0..300).step_by(2) {
            assert!(
                seen.contains(&Bytes::from(format!("key:{i}"))),
                "key:{i} was present throughout"
            );
        }
        // MATCH and TYPE filter what COUNT examined.
        let (next, keys) = call(
            &ks,
            0,
            &["COUNT", "100000", "MATCH", "key:1*", "TYPE", "list"],
        );
        assert_eq!(next, 0);
        assert!(!keys.is_empty());
        for k in &keys {
            assert!(k.starts_with(b"key:1"));
            assert_eq!(ks.get(k).unwrap().value.type_name(), "list");
        }
        // As Redis reads cursors: -1 wraps (past every key: done), not a
        // number is an error.
        let (next, keys) = call(&ks, u64::MAX, &[]);
        assert_eq!((next, keys.len()), (0, 0));
        let wrapped = scan(&ks, &args(&["SCAN", "-1"]));
        assert!(
            matches!(&wrapped, Reply::Array(p) if p.len() == 2),
            "{wrapped:?}"
        );
        let bad = scan(&ks, &args(&["SCAN", "x1"]));
        assert!(matches!(bad, Reply::Error(_)), "{bad:?}");
    }
}
