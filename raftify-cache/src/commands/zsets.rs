//! Sorted-set commands.

use super::{index_range, is, parse_f64, parse_i64, with_value, WriteCtx};
use crate::keyspace::{own, Keyspace, Score, Value, ZSet};
use crate::reply::{errors, Reply};
use bytes::Bytes;

fn new_zset() -> Value {
    Value::ZSet(Box::default())
}

fn is_zset(v: &Value) -> bool {
    matches!(v, Value::ZSet(_))
}

fn zset<'a>(ks: &'a Keyspace, key: &[u8]) -> Result<Option<&'a ZSet>, Reply> {
    match ks.get(key).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(z)),
        Some(_) => Err(errors::wrong_type()),
    }
}

fn score_reply(v: f64) -> Reply {
    Reply::Double(v)
}

pub(crate) fn zadd(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while i < a.len() {
        let w = &a[i];
        if is(w, "NX") {
            nx = true;
        } else if is(w, "XX") {
            xx = true;
        } else if is(w, "GT") {
            gt = true;
        } else if is(w, "LT") {
            lt = true;
        } else if is(w, "CH") {
            ch = true;
        } else if is(w, "INCR") {
            incr = true;
        } else {
            break;
        }
        i += 1;
    }
    let pairs = &a[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return errors::syntax();
    }
    if nx && xx {
        return Reply::err("XX and NX options at the same time are not compatible");
    }
    if (gt && lt) || (nx && (gt || lt)) {
        return Reply::err("GT, LT, and/or NX options at the same time are not compatible");
    }
    if incr && pairs.len() != 2 {
        return Reply::err("INCR option supports a single increment-element pair");
    }
    let mut parsed = Vec::with_capacity(pairs.len() / 2);
    for p in pairs.chunks(2) {
        match parse_f64(&p[0]) {
            Some(s) => parsed.push((s, p[1].clone())),
            None => return errors::not_float(),
        }
    }
    if let Err(e) = zset(ks, &a[1]) {
        return e;
    }
    let creates = !xx && !ks.exists(&a[1]);
    let r = with_value(
        ks,
        &a[1],
        creates.then_some(new_zset as fn() -> Value),
        is_zset,
        |v| {
            let Value::ZSet(z) = v else {
                return Ok((0, None));
            };
            let (mut added, mut changed) = (0, 0);
            let mut last = None;
            for (score, member) in parsed {
                let old = z.scores.get(&member).map(|s| s.0);
                let new = if incr {
                    old.unwrap_or(0.0) + score
                } else {
                    score
                };
                if new.is_nan() {
                    return Err(Reply::err("resulting score is not a number (NaN)"));
                }
                let skip = match old {
                    None => xx,
                    Some(o) => nx || (gt && new <= o) || (lt && new >= o),
                };
                if skip {
                    continue;
                }
                if old.is_none() {
                    added += 1;
                } else if old != Some(new) {
                    changed += 1;
                }
                z.insert(own(member), new);
                last = Some(new);
            }
            Ok((if ch { added + changed } else { added }, last))
        },
    );
    match r {
        Err(e) | Ok(Some(Err(e))) => e,
        Ok(None) if incr => Reply::Nil,
        Ok(None) => Reply::Int(0),
        Ok(Some(Ok((_, last)))) if incr => last.map_or(Reply::Nil, score_reply),
        Ok(Some(Ok((n, _)))) => Reply::Int(n),
    }
}

pub(crate) fn zincrby(ks: &mut Keyspace, a: &[Bytes], c: &mut WriteCtx) -> Reply {
    let args = [
        a[0].clone(),
        a[1].clone(),
        Bytes::from("INCR"),
        a[2].clone(),
        a[3].clone(),
    ];
    zadd(ks, &args, c)
}

pub(crate) fn zrem(ks: &mut Keyspace, a: &[Bytes], _: &mut WriteCtx) -> Reply {
    let r = with_value(ks, &a[1], None, is_zset, |v| {
        let Value::ZSet(z) = v else { return 0 };
        a[2..].iter().filter(|m| z.remove(m)).count()
    });
    match r {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

pub(crate) fn zscore(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match zset(ks, &a[1]) {
        Ok(z) => z
            .and_then(|z| z.scores.get(&a[2]))
            .map_or(Reply::Nil, |s| score_reply(s.0)),
        Err(e) => e,
    }
}

pub(crate) fn zcard(ks: &Keyspace, a: &[Bytes]) -> Reply {
    match zset(ks, &a[1]) {
        Ok(z) => Reply::Int(z.map_or(0, |z| z.len() as i64)),
        Err(e) => e,
    }
}

pub(crate) fn zrank(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let with_score = match a.get(3) {
        None => false,
        Some(w) if is(w, "WITHSCORE") && a.len() == 4 => true,
        Some(_) => return errors::syntax(),
    };
    match zset(ks, &a[1]) {
        Ok(Some(z)) => match (z.rank(&a[2]), z.scores.get(&a[2])) {
            (Some(r), Some(s)) if with_score => {
                Reply::Array(vec![Reply::Int(r as i64), score_reply(s.0)])
            }
            (Some(r), _) => Reply::Int(r as i64),
            _ if with_score => Reply::NilArray,
            _ => Reply::Nil,
        },
        Ok(None) if with_score => Reply::NilArray,
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

/// A `BYSCORE` bound: `(1.5` exclusive, `1.5`, `-inf`, `+inf`.
fn score_bound(b: &[u8]) -> Option<(f64, bool)> {
    match b.strip_prefix(b"(") {
        Some(rest) => parse_f64(rest).map(|v| (v, true)),
        None => parse_f64(b).map(|v| (v, false)),
    }
}

/// `ZRANGE key start stop [BYSCORE] [REV] [LIMIT offset count] [WITHSCORES]`.
pub(crate) fn zrange(ks: &Keyspace, a: &[Bytes]) -> Reply {
    let (mut byscore, mut rev, mut withscores) = (false, false, false);
    let mut limit: Option<(i64, i64)> = None;
    let mut i = 4;
    while i < a.len() {
        let w = &a[i];
        if is(w, "BYSCORE") {
            byscore = true;
        } else if is(w, "REV") {
            rev = true;
        } else if is(w, "WITHSCORES") {
            withscores = true;
        } else if is(w, "LIMIT") && i + 2 < a.len() {
            match (parse_i64(&a[i + 1]), parse_i64(&a[i + 2])) {
                (Some(o), Some(c)) => limit = Some((o, c)),
                _ => return errors::not_integer(),
            }
            i += 2;
        } else {
            return errors::syntax();
        }
        i += 1;
    }
    if limit.is_some() && !byscore {
        return Reply::err(
            "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        );
    }
    let z = match zset(ks, &a[1]) {
        Ok(Some(z)) => z,
        Ok(None) => return Reply::Array(Vec::new()),
        Err(e) => return e,
    };
    let members: Vec<(Score, Bytes)> = if byscore {
        let (lo, hi) = if rev { (&a[3], &a[2]) } else { (&a[2], &a[3]) };
        let (Some((lo, lo_ex)), Some((hi, hi_ex))) = (score_bound(lo), score_bound(hi)) else {
            return Reply::err("min or max is not a float");
        };
        let inside = |s: f64| {
            (if lo_ex { s > lo } else { s >= lo }) && (if hi_ex { s < hi } else { s <= hi })
        };
        let mut m: Vec<(Score, Bytes)> = z
            .ordered
            .iter()
            .filter(|(s, _)| inside(s.0))
            .cloned()
            .collect();
        if rev {
            m.reverse();
        }
        let (offset, count) = limit.unwrap_or((0, -1));
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        m.into_iter().skip(offset).take(count).collect()
    } else {
        let (Some(start), Some(stop)) = (parse_i64(&a[2]), parse_i64(&a[3])) else {
            return errors::not_integer();
        };
        match index_range(start, stop, z.len()) {
            None => Vec::new(),
            Some((from, to)) if rev => z
                .ordered
                .iter()
                .rev()
                .skip(from)
                .take(to - from)
                .cloned()
                .collect(),
            Some((from, to)) => z
                .ordered
                .iter()
                .skip(from)
                .take(to - from)
                .cloned()
                .collect(),
        }
    };
    if withscores {
        Reply::Pairs(
            members
                .into_iter()
                .map(|(s, m)| (Reply::Bulk(m), score_reply(s.0)))
                .collect(),
        )
    } else {
        Reply::bulks(members.into_iter().map(|(_, m)| m))
    }
}
