//! List commands.

use super::{index_range, parse_i64, with_value, WriteCtx};
use crate::keyspace::{own, Keyspace, Value};
use crate::reply::{errors, Reply};
use bytes::Bytes;

fn new_list() -> Value {
    Value::List(Box::default())
}

fn is_list(v: &Value) -> bool {
    matches!(v, Value::List(_))
}

fn list<'a>(ks: &'a Keyspace, key: &[u8]) -> Result<Option<&'a imbl::Vector<Bytes>>, Reply> {
    match ks.get(key).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::List(l)) => Ok(Some(l)),
        Some(_) => Err(errors::wrong_type()),
    }
}

fn push(ks: &mut Keyspace, a: &[Bytes], front: bool) -> Reply {
    let r = with_value(ks, &a[1], Some(new_list), is_list, |v| {
        let Value::List(l) = v else { return 0 };
        for x in &a[2..] {
            if front {
                l.push_front(own(x.clone()));
            } else {
                l.push_back(own(x.clone()));
            }
        }
        l.len()
    });
    match r {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn lpush(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    push(ks, a, true)
}

pub(crate) fn rpush(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    push(ks, a, false)
}

fn pop(ks: &mut Keyspace, a: &[Bytes], front: bool) -> Reply {
    let count = match a.get(2) {
        None => None,
        Some(c) => match parse_i64(c) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => return Reply::err("value is out of range, must be positive"),
        },
    };
    let r = with_value(ks, &a[1], None, is_list, |v| {
        let Value::List(l) = v else { return Vec::new() };
        let n = count.unwrap_or(1).min(l.len());
        (0..n)
            .filter_map(|_| if front { l.pop_front() } else { l.pop_back() })
            .collect::<Vec<_>>()
    });
    match (r, count) {
        (Err(e), _) => e,
        (Ok(None), None) => Reply::Nil,
        (Ok(None), Some(_)) => Reply::NilArray,
        (Ok(Some(mut items)), None) => Reply::opt(items.pop()),
        (Ok(Some(items)), Some(_)) => Reply::bulks(items),
    }
}

pub(crate) fn lpop(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    pop(ks, a, true)
}

pub(crate) fn rpop(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    pop(ks, a, false)
}

pub(crate) fn lrange(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let (Some(start), Some(stop)) = (parse_i64(&a[2]), parse_i64(&a[3])) else {
        return errors::not_integer();
    };
    match list(ks, &a[1]) {
        Ok(Some(l)) => match index_range(start, stop, l.len()) {
            Some((from, to)) => Reply::bulks(l.clone().slice(from..to)),
            None => Reply::Array(Vec::new()),
        },
        Ok(None) => Reply::Array(Vec::new()),
        Err(e) => e,
    }
}

pub(crate) fn llen(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match list(ks, &a[1]) {
        Ok(l) => Reply::Int(l.map_or(0, |l| l.len() as i64)),
        Err(e) => e,
    }
}

pub(crate) fn lindex(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let Some(i) = parse_i64(&a[2]) else {
        return errors::not_integer();
    };
    match list(ks, &a[1]) {
        Ok(Some(l)) => {
            let i = if i < 0 { l.len() as i64 + i } else { i };
            Reply::opt(usize::try_from(i).ok().and_then(|i| l.get(i).cloned()))
        }
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

pub(crate) fn lset(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let Some(i) = parse_i64(&a[2]) else {
        return errors::not_integer();
    };
    let r = with_value(ks, &a[1], None, is_list, |v| {
        let Value::List(l) = v else { return false };
        let i = if i < 0 { l.len() as i64 + i } else { i };
        match usize::try_from(i).ok().filter(|i| *i < l.len()) {
            Some(i) => {
                l.set(i, a[3].clone());
                true
            }
            None => false,
        }
    });
    match r {
        Ok(Some(true)) => Reply::Ok,
        Ok(Some(false)) => Reply::err("index out of range"),
        Ok(None) => errors::no_such_key(),
        Err(e) => e,
    }
}

pub(crate) fn lrem(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let Some(count) = parse_i64(&a[2]) else {
        return errors::not_integer();
    };
    let r = with_value(ks, &a[1], None, is_list, |v| {
        let Value::List(l) = v else { return 0 };
        let limit = if count == 0 {
            usize::MAX
        } else {
            count.unsigned_abs() as usize
        };
        let mut removed = 0;
        let mut kept = imbl::Vector::new();
        if count >= 0 {
            for x in l.iter() {
                if removed < limit && *x == a[3] {
                    removed += 1;
                } else {
                    kept.push_back(x.clone());
                }
            }
        } else {
            for x in l.iter().rev() {
                if removed < limit && *x == a[3] {
                    removed += 1;
                } else {
                    kept.push_front(x.clone());
                }
            }
        }
        **l = kept;
        removed
    });
    match r {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn ltrim(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let (Some(start), Some(stop)) = (parse_i64(&a[2]), parse_i64(&a[3])) else {
        return errors::not_integer();
    };
    let r = with_value(ks, &a[1], None, is_list, |v| {
        let Value::List(l) = v else { return };
        **l = match index_range(start, stop, l.len()) {
            Some((from, to)) => l.clone().slice(from..to),
            None => imbl::Vector::new(),
        };
    });
    match r {
        Ok(_) => Reply::Ok,
        Err(e) => e,
    }
}
