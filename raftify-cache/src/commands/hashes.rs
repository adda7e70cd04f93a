//! Hash commands.

use super::{is, parse_i64, with_value, WriteCtx};
use crate::keyspace::{own, Keyspace, Map, Value};
use crate::reply::{errors, Reply};
use crate::scan_order::{scan_step, SCAN_WHOLE, STEP_BYTES};
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

/// `HSCAN key cursor [MATCH p] [COUNT n]`: a hash of at most
/// [`SCAN_WHOLE`] fields and [`STEP_BYTES`] whole in one reply (cursor
/// 0), as Redis does for small hashes; a larger one in steps by the
/// fields' scan hash
/// ([`scan_step`]: every field present throughout returned once, replies
/// bounded, at most about [`crate::scan_order::SCAN_STEPS`] calls).
pub(crate) fn hscan(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let cursor = match super::parse_cursor(&a[2]) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (pattern, count) = match super::scan_opts(a, 3, false) {
        Ok(o) => (o.pattern, o.count),
        Err(e) => return e,
    };
    let h = match hash(ks, &a[1]) {
        Ok(Some(h)) => h,
        Ok(None) => return Reply::Array(vec![Reply::bulk("0"), Reply::Array(Vec::new())]),
        Err(e) => return e,
    };
    let weight = |(f, v): &(&Bytes, &Bytes)| f.len() + v.len() + 16;
    let small = h.len() <= SCAN_WHOLE && h.iter().map(|fv| weight(&fv)).sum::<usize>() < STEP_BYTES;
    let (fields, next) = if small {
        (h.iter().collect(), 0)
    } else {
        scan_step(h.iter(), |(f, _)| &f[..], weight, h.len(), cursor, count)
    };
    let items = fields
        .into_iter()
        .filter(|(f, _)| pattern.is_none_or(|p| super::glob_match(p, f)))
        .flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())])
        .collect();
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(items)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `HSCAN` call: the next cursor and the fields returned.
    fn call(ks: &Keyspace, cursor: &str, extra: &[&str]) -> Result<(u64, Vec<Bytes>), Reply> {
        let mut a: Vec<Bytes> = ["HSCAN", "h", cursor]
            .iter()
            .map(|s| Bytes::from(s.to_string()))
            .collect();
        a.extend(extra.iter().map(|s| Bytes::from(s.to_string())));
        match hscan(ks, &a) {
            Reply::Array(parts) => match &parts[..] {
                [Reply::Bulk(next), Reply::Array(items)] => {
                    let next = std::str::from_utf8(next).ok().and_then(|s| s.parse().ok());
                    let fields = items
                        .chunks(2)
                        .map(|fv| match &fv[0] {
                            Reply::Bulk(f) => f.clone(),
                            other => panic!("not a field: {other:?}"),
                        })
                        .collect();
                    Ok((next.unwrap_or(u64::MAX), fields))
                }
                other => panic!("unexpected shape {other:?}"),
            },
            other => Err(other),
        }
    }

    fn keyspace_with_hash(fields: usize) -> Keyspace {
        let mut h = Map::default();
        for i in 0..fields {
            h.insert(Bytes::from(format!("f{i}")), Bytes::from("v"));
        }
        let mut ks = Keyspace::default();
        ks.insert(Bytes::from("h"), Value::Hash(Box::new(h)), None);
        ks
    }

    #[test]
    fn a_large_hash_is_scanned_in_bounded_steps_each_field_once() {
        let ks = keyspace_with_hash(5_000);
        let (mut cursor, mut seen, mut calls) = (0u64, Vec::new(), 0);
        loop {
            let (next, fields) = call(&ks, &cursor.to_string(), &["COUNT", "10"]).unwrap();
            assert!(fields.len() < 5_000 / 8, "bounded: {}", fields.len());
            seen.extend(fields);
            calls += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!(
            calls > 1 && calls <= crate::scan_order::SCAN_STEPS + 1,
            "{calls}"
        );
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 5_000, "every field once");
        // MATCH filters what a step returns.
        let (_, only) = call(&ks, "0", &["MATCH", "f1?", "COUNT", "100000"]).unwrap();
        assert_eq!(only.len(), 10);
    }

    #[test]
    fn a_hash_of_few_large_values_is_scanned_in_bounded_steps() {
        let mut h = Map::default();
        for i in 0..10 {
            h.insert(
                Bytes::from(format!("f{i}")),
                Bytes::from(vec![b'v'; 1 << 20]),
            );
        }
        let mut ks = Keyspace::default();
        ks.insert(Bytes::from("h"), Value::Hash(Box::new(h)), None);
        let (mut cursor, mut seen) = (0u64, Vec::new());
        loop {
            let (next, fields) = call(&ks, &cursor.to_string(), &[]).unwrap();
            assert!(!fields.is_empty() && fields.len() <= 4, "{}", fields.len());
            seen.extend(fields);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn a_small_hash_comes_whole_and_bad_cursors_are_refused() {
        let ks = keyspace_with_hash(SCAN_WHOLE);
        let (next, fields) = call(&ks, "0", &[]).unwrap();
        assert_eq!((next, fields.len()), (0, SCAN_WHOLE));
        let (next, fields) = call(&Keyspace::default(), "0", &[]).unwrap();
        assert_eq!((next, fields.len()), (0, 0));
        for bad in ["x", "", "1x", "--1", "18446744073709551616"] {
            assert!(matches!(call(&ks, bad, &[]), Err(Reply::Error(_))), "{bad}");
        }
    }
}
