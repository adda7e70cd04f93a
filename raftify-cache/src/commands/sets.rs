//! Set commands.

use super::{parse_i64, with_value, WriteCtx};
use crate::keyspace::{own, Keyspace, Set, Value};
use crate::reply::{errors, Reply};
use bytes::Bytes;

fn new_set() -> Value {
    Value::Set(Box::default())
}

fn is_set(v: &Value) -> bool {
    matches!(v, Value::Set(_))
}

fn set<'a>(ks: &'a Keyspace, key: &[u8]) -> Result<Option<&'a Set<Bytes>>, Reply> {
    match ks.get(key).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(errors::wrong_type()),
    }
}

pub(crate) fn sadd(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let r = with_value(ks, &a[1], Some(new_set), is_set, |v| {
        let Value::Set(s) = v else { return 0 };
        a[2..]
            .iter()
            .filter(|m| s.insert(own((*m).clone())).is_none())
            .count()
    });
    match r {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn srem(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let r = with_value(ks, &a[1], None, is_set, |v| {
        let Value::Set(s) = v else { return 0 };
        a[2..].iter().filter(|m| s.remove(*m).is_some()).count()
    });
    match r {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn smembers(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match set(ks, &a[1]) {
        Ok(s) => Reply::bulks(s.into_iter().flatten().cloned()),
        Err(e) => e,
    }
}

pub(crate) fn sismember(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match set(ks, &a[1]) {
        Ok(s) => Reply::Int(i64::from(s.is_some_and(|s| s.contains(&a[2])))),
        Err(e) => e,
    }
}

pub(crate) fn scard(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match set(ks, &a[1]) {
        Ok(s) => Reply::Int(s.map_or(0, |s| s.len() as i64)),
        Err(e) => e,
    }
}

/// Picks `n` distinct members at pseudo-random positions (deterministic
/// given `next`).
fn pick(s: &Set<Bytes>, n: usize, mut next: impl FnMut() -> u64) -> Vec<Bytes> {
    let mut all: Vec<&Bytes> = s.iter().collect();
    let mut out = Vec::with_capacity(n.min(all.len()));
    while out.len() < n && !all.is_empty() {
        let i = (next() % all.len() as u64) as usize;
        out.push(all.swap_remove(i).clone());
    }
    out
}

pub(crate) fn spop(ks: &mut Keyspace, a: &[Bytes], c: &mut WriteCtx) -> Reply {
    let count = match a.get(2) {
        None => None,
        Some(n) => match parse_i64(n) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => return Reply::err("value is out of range, must be positive"),
        },
    };
    let r = with_value(ks, &a[1], None, is_set, |v| {
        let Value::Set(s) = v else { return Vec::new() };
        let taken = pick(s, count.unwrap_or(1), || c.next_u64());
        for m in &taken {
            s.remove(m);
        }
        taken
    });
    match (r, count) {
        (Err(e), _) => e,
        (Ok(None), None) => Reply::Nil,
        (Ok(None), Some(_)) => Reply::Array(Vec::new()),
        (Ok(Some(mut t)), None) => Reply::opt(t.pop()),
        (Ok(Some(t)), Some(_)) => Reply::bulks(t),
    }
}

pub(crate) fn srandmember(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let count = match a.get(2) {
        None => None,
        Some(n) => match parse_i64(n) {
            Some(n) => Some(n),
            None => return errors::not_integer(),
        },
    };
    let s = match set(ks, &a[1]) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let next = move || {
        seed = super::xorshift(seed);
        seed
    };
    match (s, count) {
        (None, None) => Reply::Nil,
        (None, Some(_)) => Reply::Array(Vec::new()),
        (Some(s), None) => Reply::opt(pick(s, 1, next).pop()),
        (Some(s), Some(n)) if n >= 0 => Reply::bulks(pick(s, n as usize, next)),
        (Some(s), Some(n)) => {
            // Negative: that many, repeats allowed.
            let all: Vec<&Bytes> = s.iter().collect();
            let mut next = next;
            Reply::bulks(
                (0..n.unsigned_abs().min(1 << 24))
                    .map(|_| all[(next() % all.len() as u64) as usize].clone()),
            )
        }
    }
}
