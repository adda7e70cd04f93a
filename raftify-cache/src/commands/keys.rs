//! Key commands: existence, types, TTLs, renames, iteration.

use super::{glob_match, is, parse_i64, WriteCtx};
use crate::keyspace::{Hasher, Keyspace};
use crate::reply::{errors, Reply};
use bytes::Bytes;
use std::hash::BuildHasher;

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
            .map(|(k, _)| k.clone()),
    )
}

/// The position of a key in `SCAN`'s order (never 0: that is the start).
fn scan_hash(key: &[u8]) -> u64 {
    Hasher::default().hash_one(key).max(1)
}

/// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: keys in the order of their
/// hash; the cursor is the last hash returned, so every key present for
/// the whole iteration is returned (once, or more when hashes collide),
/// whatever is added or deleted meanwhile. Each call walks the keyspace
/// once (O(keys)).
pub(crate) fn scan(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let Some(cursor) = std::str::from_utf8(&a[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Reply::err("invalid cursor");
    };
    let (pattern, count, type_) = match super::scan_opts(a, 2, true) {
        Ok(o) => (o.pattern, o.count, o.type_),
        Err(e) => return e,
    };
    // The `count` smallest hashes after the cursor (all keys of the
    // largest one taken, so a collision never splits across calls).
    let mut found: Vec<(u64, &Bytes, &str)> = ks
        .iter()
        .map(|(k, item)| (scan_hash(k), k, item.value.type_name()))
        .filter(|(h, _, _)| *h > cursor)
        .collect();
    found.sort_unstable_by_key(|(h, _, _)| *h);
    let mut end = found.len().min(count);
    while end > 0 && end < found.len() && found[end].0 == found[end - 1].0 {
        end += 1;
    }
    let next = if end >= found.len() {
        0
    } else {
        found[end - 1].0
    };
    let keys = found[..end]
        .iter()
        .filter(|(_, k, t)| {
            pattern.is_none_or(|p| glob_match(p, k))
                && type_.is_none_or(|ty| ty.eq_ignore_ascii_case(t.as_bytes()))
        })
        .map(|(_, k, _)| Reply::Bulk((*k).clone()))
        .collect();
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
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
    Reply::opt(live.next().map(|(k, _)| k.clone()))
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
