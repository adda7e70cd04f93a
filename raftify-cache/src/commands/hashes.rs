//! Hash commands.

use super::{is, parse_i64, with_value, WriteCtx};
use crate::keyspace::{own, Keyspace, Map, Value};
use crate::reply::{errors, Reply};
use bytes::Bytes;

fn new_hash() -> Value {
    Value::Hash(Box::default())
}

fn is_hash(v: &Value) -> bool {
    matches!(v, Value::Hash(_))
}

/// The hash at `key` (None: missing), or WRONGTYPE.
fn hash<'a>(ks: &'a Keyspace, key: &[u8]) -> Result<Option<&'a Map<Bytes, Bytes>>, Reply> {
    match ks.get(key).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(errors::wrong_type()),
    }
}

pub(crate) fn hset(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    if !a.len().is_multiple_of(2) {
        return errors::arity(&String::from_utf8_lossy(&a[0]).to_lowercase());
    }
    let hmset = is(&a[0], "HMSET");
    let added = with_value(ks, &a[1], Some(new_hash), is_hash, |v| {
        let Value::Hash(h) = v else { return 0 };
        a[2..]
            .chunks(2)
            .filter(|fv| h.insert(own(fv[0].clone()), own(fv[1].clone())).is_none())
            .count()
    });
    match added {
        Ok(n) if hmset => {
            let _ = n;
            Reply::Ok
        }
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn hsetnx(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    match hash(ks, &a[1]) {
        Ok(Some(h)) if h.contains_key(&a[2]) => return Reply::Int(0),
        Err(e) => return e,
        _ => {}
    }
    let r = with_value(ks, &a[1], Some(new_hash), is_hash, |v| {
        if let Value::Hash(h) = v {
            h.insert(own(a[2].clone()), own(a[3].clone()));
        }
    });
    match r {
        Ok(_) => Reply::Int(1),
        Err(e) => e,
    }
}

pub(crate) fn hget(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::opt(h.and_then(|h| h.get(&a[2]).cloned())),
        Err(e) => e,
    }
}

pub(crate) fn hmget(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::Array(
            a[2..]
                .iter()
                .map(|f| Reply::opt(h.and_then(|h| h.get(f).cloned())))
                .collect(),
        ),
        Err(e) => e,
    }
}

pub(crate) fn hdel(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let r = with_value(ks, &a[1], None, is_hash, |v| {
        let Value::Hash(h) = v else { return 0 };
        a[2..].iter().filter(|f| h.remove(*f).is_some()).count()
    });
    match r {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn hgetall(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::Map(
            h.into_iter()
                .flatten()
                .map(|(f, v)| (Reply::Bulk(f.clone()), Reply::Bulk(v.clone())))
                .collect(),
        ),
        Err(e) => e,
    }
}

pub(crate) fn hkeys(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::bulks(h.into_iter().flat_map(|h| h.keys().cloned())),
        Err(e) => e,
    }
}

pub(crate) fn hvals(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::bulks(h.into_iter().flat_map(|h| h.values().cloned())),
        Err(e) => e,
    }
}

pub(crate) fn hlen(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::Int(h.map_or(0, |h| h.len() as i64)),
        Err(e) => e,
    }
}

pub(crate) fn hstrlen(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::Int(h.and_then(|h| h.get(&a[2])).map_or(0, |v| v.len() as i64)),
        Err(e) => e,
    }
}

pub(crate) fn hexists(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match hash(ks, &a[1]) {
        Ok(h) => Reply::Int(i64::from(h.is_some_and(|h| h.contains_key(&a[2])))),
        Err(e) => e,
    }
}

pub(crate) fn hincrby(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let Some(delta) = parse_i64(&a[3]) else {
        return errors::not_integer();
    };
    let cur = match hash(ks, &a[1]) {
        Ok(h) => match h.and_then(|h| h.get(&a[2])) {
            Some(v) => match parse_i64(v) {
                Some(n) => n,
                None => return Reply::err("hash value is not an integer"),
            },
            None => 0,
        },
        Err(e) => return e,
    };
    let Some(n) = cur.checked_add(delta) else {
        return errors::overflow();
    };
    let r = with_value(ks, &a[1], Some(new_hash), is_hash, |v| {
        if let Value::Hash(h) = v {
            h.insert(a[2].clone(), Bytes::from(n.to_string()));
        }
    });
    match r {
        Ok(_) => Reply::Int(n),
        Err(e) => e,
    }
}

/// `HSCAN key cursor [MATCH p] [COUNT n]`: the whole hash in one reply
/// (cursor 0), as Redis does for small hashes.
pub(crate) fn hscan(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let pattern = match super::scan_opts(a, 3, false) {
        Ok(o) => o.pattern,
        Err(e) => return e,
    };
    match hash(ks, &a[1]) {
        Ok(h) => {
            let items = h
                .into_iter()
                .flatten()
                .filter(|(f, _)| pattern.is_none_or(|p| super::glob_match(p, f)))
                .flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())])
                .collect();
            Reply::Array(vec![Reply::bulk("0"), Reply::Array(items)])
        }
        Err(e) => e,
    }
}
