//! String commands.

use super::{format_f64, get_str, is, parse_f64, parse_i64, WriteCtx};
use crate::keyspace::{Keyspace, Value};
use crate::reply::{errors, Reply};
use bytes::{Bytes, BytesMut};

/// Largest string (Redis's `proto-max-bulk-len` default, 512 MB).
pub const MAX_STRING: usize = 512 * 1024 * 1024;

pub(crate) fn get(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match get_str(ks, &a[1]) {
        Ok(v) => Reply::opt(v.cloned()),
        Err(e) => e,
    }
}

pub(crate) fn mget(ks: &Keyspace, a: &[Bytes]) -> Reply {
    Reply::Array(
        a[1..]
            .iter()
            .map(|k| match ks.get(k).map(|i| &i.value) {
                Some(Value::Str(s)) => Reply::Bulk(s.clone()),
                _ => Reply::Nil,
            })
            .collect(),
    )
}

pub(crate) fn strlen(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match get_str(ks, &a[1]) {
        Ok(v) => Reply::Int(v.map_or(0, |s| s.len() as i64)),
        Err(e) => e,
    }
}

pub(crate) fn getrange(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let (Some(start), Some(end)) = (parse_i64(&a[2]), parse_i64(&a[3])) else {
        return errors::not_integer();
    };
    let s = match get_str(ks, &a[1]) {
        Ok(Some(s)) => s,
        Ok(None) => return Reply::bulk(Bytes::new()),
        Err(e) => return e,
    };
    match super::index_range(start, end, s.len()) {
        Some((from, to)) if !(start < 0 && end < 0 && start > end) => {
            Reply::Bulk(s.slice(from..to))
        }
        _ => Reply::bulk(Bytes::new()),
    }
}

/// The options of `SET` (and `GETEX`'s expiry part).
struct SetOpts {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    expire_at: Option<u64>,
}

/// Parses an expiry option at `a[i]` (`EX s`, `PX ms`, `EXAT ts`, `PXAT
/// ms-ts`) against `now`; `Ok(None)` when `a[i]` is no expiry option.
fn expiry_opt(a: &[Bytes], i: usize, now: u64, cmd: &str) -> Result<Option<u64>, Reply> {
    let unit = |name: &str| is(&a[i], name);
    let (scale, absolute) = if unit("EX") {
        (1000, false)
    } else if unit("PX") {
        (1, false)
    } else if unit("EXAT") {
        (1000, true)
    } else if unit("PXAT") {
        (1, true)
    } else {
        return Ok(None);
    };
    let n = a.get(i + 1).ok_or_else(errors::syntax)?;
    let n = parse_i64(n).ok_or_else(errors::not_integer)?;
    if n <= 0 {
        return Err(errors::invalid_expire(cmd));
    }
    let ms = (n as u64)
        .checked_mul(scale)
        .ok_or_else(|| errors::invalid_expire(cmd))?;
    Ok(Some(if absolute { ms } else { now.saturating_add(ms) }))
}

fn parse_set(a: &[Bytes], now: u64) -> Result<SetOpts, Reply> {
    let mut o = SetOpts {
        nx: false,
        xx: false,
        get: false,
        keepttl: false,
        expire_at: None,
    };
    let mut i = 3;
    let mut expiry_given = false;
    while i < a.len() {
        if let Some(t) = expiry_opt(a, i, now, "set")? {
            if expiry_given || o.keepttl {
                return Err(errors::syntax());
            }
            expiry_given = true;
            o.expire_at = Some(t);
            i += 2;
            continue;
        }
        let w = &a[i];
        if is(w, "NX") && !o.xx {
            o.nx = true;
        } else if is(w, "XX") && !o.nx {
            o.xx = true;
        } else if is(w, "GET") {
            o.get = true;
        } else if is(w, "KEEPTTL") && !expiry_given {
            o.keepttl = true;
        } else {
            return Err(errors::syntax());
        }
        i += 1;
    }
    Ok(o)
}

pub(crate) fn set(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let o = match parse_set(a, ks.clock()) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let key = &a[1];
    // Only NX, XX, GET and KEEPTTL look at what is there, and they share
    // one lookup: a plain SET replaces any value (any type) in one insert.
    let existing = if o.get || o.nx || o.xx || o.keepttl {
        ks.get(key)
    } else {
        None
    };
    let old = match existing.map(|i| &i.value) {
        Some(Value::Str(v)) => Some(v.clone()),
        Some(_) if o.get => return errors::wrong_type(),
        _ => None,
    };
    let exists = existing.is_some();
    if (o.nx && exists) || (o.xx && !exists) {
        return if o.get { Reply::opt(old) } else { Reply::Nil };
    }
    let ttl = if o.keepttl {
        existing.and_then(|i| i.expire_at())
    } else {
        o.expire_at
    };
    ks.insert(key.clone(), Value::Str(a[2].clone()), ttl);
    if o.get {
        Reply::opt(old)
    } else {
        Reply::Ok
    }
}

pub(crate) fn setnx(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    if ks.exists(&a[1]) {
        return Reply::Int(0);
    }
    ks.insert(a[1].clone(), Value::Str(a[2].clone()), None);
    Reply::Int(1)
}

fn setex_with(ks: &mut Keyspace, a: &[Bytes], scale: u64, cmd: &str) -> Reply {
    let Some(n) = parse_i64(&a[2]) else {
        return errors::not_integer();
    };
    if n <= 0 {
        return errors::invalid_expire(cmd);
    }
    let Some(at) = (n as u64)
        .checked_mul(scale)
        .map(|ms| ks.clock().saturating_add(ms))
    else {
        return errors::invalid_expire(cmd);
    };
    ks.insert(a[1].clone(), Value::Str(a[3].clone()), Some(at));
    Reply::Ok
}

pub(crate) fn setex(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    setex_with(ks, a, 1000, "setex")
}

pub(crate) fn psetex(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    setex_with(ks, a, 1, "psetex")
}

pub(crate) fn getset(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let old = match get_str(ks, &a[1]) {
        Ok(v) => v.cloned(),
        Err(e) => return e,
    };
    ks.insert(a[1].clone(), Value::Str(a[2].clone()), None);
    Reply::opt(old)
}

pub(crate) fn getdel(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let old = match get_str(ks, &a[1]) {
        Ok(v) => v.cloned(),
        Err(e) => return e,
    };
    if old.is_some() {
        ks.remove(&a[1]);
    }
    Reply::opt(old)
}

pub(crate) fn getex(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let old = match get_str(ks, &a[1]) {
        Ok(Some(v)) => v.clone(),
        Ok(None) => return Reply::Nil,
        Err(e) => return e,
    };
    let now = ks.clock();
    let change = match a.len() {
        2 => None,
        3 if is(&a[2], "PERSIST") => Some(None),
        4 => match expiry_opt(a, 2, now, "getex") {
            Ok(Some(t)) => Some(Some(t)),
            Ok(None) => return errors::syntax(),
            Err(e) => return e,
        },
        _ => return errors::syntax(),
    };
    if let Some(t) = change {
        ks.set_expiry(&a[1], t);
    }
    Reply::Bulk(old)
}

pub(crate) fn mset(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    if a.len() % 2 != 1 {
        return errors::arity(&String::from_utf8_lossy(&a[0]).to_lowercase());
    }
    for kv in a[1..].chunks(2) {
        ks.insert(kv[0].clone(), Value::Str(kv[1].clone()), None);
    }
    Reply::Ok
}

pub(crate) fn msetnx(ks: &mut Keyspace, a: &[Bytes], c: &mut WriteCtx) -> Reply {
    if a.len() % 2 != 1 {
        return errors::arity("msetnx");
    }
    if a[1..].chunks(2).any(|kv| ks.exists(&kv[0])) {
        return Reply::Int(0);
    }
    mset(ks, a, c);
    Reply::Int(1)
}

pub(crate) fn append(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let (old, ttl) = match get_str(ks, &a[1]) {
        Ok(v) => (
            v.cloned().unwrap_or_default(),
            ks.get(&a[1]).and_then(|i| i.expire_at()),
        ),
        Err(e) => return e,
    };
    if old.len() + a[2].len() > MAX_STRING {
        return errors::too_large();
    }
    let mut s = BytesMut::with_capacity(old.len() + a[2].len());
    s.extend_from_slice(&old);
    s.extend_from_slice(&a[2]);
    let n = s.len();
    ks.insert(a[1].clone(), Value::Str(s.freeze()), ttl);
    Reply::Int(n as i64)
}

pub(crate) fn setrange(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let Some(off) = parse_i64(&a[2]).filter(|o| *o >= 0) else {
        return Reply::err("offset is out of range");
    };
    let off = off as usize;
    let (old, ttl) = match get_str(ks, &a[1]) {
        Ok(v) => (v.cloned(), ks.get(&a[1]).and_then(|i| i.expire_at())),
        Err(e) => return e,
    };
    let old_len = old.as_ref().map_or(0, |s| s.len());
    if a[3].is_empty() {
        return Reply::Int(old_len as i64);
    }
    if off + a[3].len() > MAX_STRING {
        return errors::too_large();
    }
    let mut s = BytesMut::from(old.as_deref().unwrap_or_default());
    if s.len() < off + a[3].len() {
        s.resize(off + a[3].len(), 0);
    }
    s[off..off + a[3].len()].copy_from_slice(&a[3]);
    let n = s.len();
    ks.insert(a[1].clone(), Value::Str(s.freeze()), ttl);
    Reply::Int(n as i64)
}

fn incr_by(ks: &mut Keyspace, key: &Bytes, delta: i64) -> Reply {
    let (cur, ttl) = match get_str(ks, key) {
        Ok(Some(s)) => match parse_i64(s) {
            Some(n) => (n, ks.get(key).and_then(|i| i.expire_at())),
            None => return errors::not_integer(),
        },
        Ok(None) => (0, None),
        Err(e) => return e,
    };
    let Some(n) = cur.checked_add(delta) else {
        return errors::overflow();
    };
    ks.insert(key.clone(), Value::Str(Bytes::from(n.to_string())), ttl);
    Reply::Int(n)
}

pub(crate) fn incr(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    incr_by(ks, &a[1], 1)
}

pub(crate) fn decr(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    incr_by(ks, &a[1], -1)
}

pub(crate) fn incrby(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    match parse_i64(&a[2]) {
        Some(d) => incr_by(ks, &a[1], d),
        None => errors::not_integer(),
    }
}

pub(crate) fn decrby(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    match parse_i64(&a[2]).and_then(|d| d.checked_neg()) {
        Some(d) => incr_by(ks, &a[1], d),
        None => errors::not_integer(),
    }
}

pub(crate) fn incrbyfloat(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let Some(d) = parse_f64(&a[2]) else {
        return errors::not_float();
    };
    let (cur, ttl) = match get_str(ks, &a[1]) {
        Ok(Some(s)) => match parse_f64(s) {
            Some(n) => (n, ks.get(&a[1]).and_then(|i| i.expire_at())),
            None => return errors::not_float(),
        },
        Ok(None) => (0.0, None),
        Err(e) => return e,
    };
    let n = cur + d;
    if !n.is_finite() {
        return Reply::err("increment would produce NaN or Infinity");
    }
    let text = format_f64(n);
    ks.insert(a[1].clone(), Value::Str(text.clone()), ttl);
    Reply::Bulk(text)
}
