//! [`Reply`]: what a command gives back, in Redis's reply types, and its
//! byte form (a command applied on the leader answers a client on another
//! node).

use bytes::Bytes;
use raftify_core::{BoxError, Payload};

/// A command's answer, as Redis types them (RESP3; a RESP2 connection
/// flattens maps and sends doubles as bulk strings).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A simple (status) string.
    Simple(String),
    /// An error, its text starting with the code (`ERR ...`, `WRONGTYPE ...`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null bulk string (a missing key's value).
    Nil,
    /// The null array (an aborted transaction, a timed-out pop).
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A double (RESP3; a bulk string in RESP2).
    Double(f64),
    /// A map (RESP3; a flat array of keys and values in RESP2).
    Map(Vec<(Reply, Reply)>),
    /// Pairs (`ZRANGE ... WITHSCORES`): an array of two-element arrays in
    /// RESP3, a flat array in RESP2.
    Pairs(Vec<(Reply, Reply)>),
    /// Out-of-band data (published messages, subscription confirmations):
    /// a push in RESP3, an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    /// `-ERR <msg>`.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// A bulk string of `b`.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// The bulk string or nil.
    pub fn opt(b: Option<Bytes>) -> Reply {
        b.map_or(Reply::Nil, Reply::Bulk)
    }

    /// An array of bulk strings.
    pub fn bulks<I: IntoIterator<Item = Bytes>>(items: I) -> Reply {
        Reply::Array(items.into_iter().map(Reply::Bulk).collect())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Redis's error texts, so client libraries map them.
pub mod errors {
    use super::Reply;

    /// A key holding another type.
    pub fn wrong_type() -> Reply {
        Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
    }
    /// An argument that should be an integer.
    pub fn not_integer() -> Reply {
        Reply::err("value is not an integer or out of range")
    }
    /// An argument that should be a float.
    pub fn not_float() -> Reply {
        Reply::err("value is not a valid float")
    }
    /// Bad options.
    pub fn syntax() -> Reply {
        Reply::err("syntax error")
    }
    /// The wrong number of arguments for `cmd` (lowercase).
    pub fn arity(cmd: &str) -> Reply {
        Reply::err(format!("wrong number of arguments for '{cmd}' command"))
    }
    /// An increment past the `i64` range.
    pub fn overflow() -> Reply {
        Reply::err("increment or decrement would overflow")
    }
    /// A bad TTL for `cmd`.
    pub fn invalid_expire(cmd: &str) -> Reply {
        Reply::err(format!("invalid expire time in '{cmd}' command"))
    }
    /// A missing key where one is required.
    pub fn no_such_key() -> Reply {
        Reply::err("no such key")
    }
    /// A string grown past 512 MB.
    pub fn too_large() -> Reply {
        Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)")
    }
}

const T_OK: u8 = 0;
const T_SIMPLE: u8 = 1;
const T_ERROR: u8 = 2;
const T_INT: u8 = 3;
const T_BULK: u8 = 4;
const T_NIL: u8 = 5;
const T_NIL_ARRAY: u8 = 6;
const T_ARRAY: u8 = 7;
const T_DOUBLE: u8 = 8;
const T_MAP: u8 = 9;
const T_PAIRS: u8 = 10;
const T_PUSH: u8 = 11;
/// Deepest nesting decoded (replies nest two or three levels).
const MAX_DEPTH: usize = 16;

fn put_len(out: &mut Vec<u8>, n: usize) -> Result<(), BoxError> {
    let n = u32::try_from(n).map_err(|_| "a reply part over 4 GiB")?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn encode_into(r: &Reply, out: &mut Vec<u8>) -> Result<(), BoxError> {
    match r {
        Reply::Ok => out.push(T_OK),
        Reply::Simple(s) | Reply::Error(s) => {
            out.push(if matches!(r, Reply::Simple(_)) {
                T_SIMPLE
            } else {
                T_ERROR
            });
            put_len(out, s.len())?;
            out.extend_from_slice(s.as_bytes());
        }
        Reply::Int(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Reply::Bulk(b) => {
            out.push(T_BULK);
            put_len(out, b.len())?;
            out.extend_from_slice(b);
        }
        Reply::Nil => out.push(T_NIL),
        Reply::NilArray => out.push(T_NIL_ARRAY),
        Reply::Array(items) | Reply::Push(items) => {
            out.push(if matches!(r, Reply::Array(_)) {
                T_ARRAY
            } else {
                T_PUSH
            });
            put_len(out, items.len())?;
            for i in items {
                encode_into(i, out)?;
            }
        }
        Reply::Double(d) => {
            out.push(T_DOUBLE);
            out.extend_from_slice(&d.to_bits().to_be_bytes());
        }
        Reply::Map(pairs) | Reply::Pairs(pairs) => {
            out.push(if matches!(r, Reply::Map(_)) {
                T_MAP
            } else {
                T_PAIRS
            });
            put_len(out, pairs.len())?;
            for (k, v) in pairs {
                encode_into(k, out)?;
                encode_into(v, out)?;
            }
        }
    }
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BoxError> {
        if self.0.len() < n {
            return Err("a reply is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, BoxError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize, BoxError> {
        let b: [u8; 4] = self.take(4)?.try_into()?;
        Ok(u32::from_be_bytes(b) as usize)
    }
    fn u64(&mut self) -> Result<u64, BoxError> {
        let b: [u8; 8] = self.take(8)?.try_into()?;
        Ok(u64::from_be_bytes(b))
    }
    fn string(&mut self) -> Result<String, BoxError> {
        let n = self.u32()?;
        Ok(std::str::from_utf8(self.take(n)?)?.to_string())
    }
    /// A count of items each at least one byte long: never more than remain.
    fn count(&mut self) -> Result<usize, BoxError> {
        let n = self.u32()?;
        if n > self.0.len() {
            return Err("a reply's item count exceeds its bytes".into());
        }
        Ok(n)
    }
}

fn decode_from(c: &mut Cursor<'_>, depth: usize) -> Result<Reply, BoxError> {
    if depth > MAX_DEPTH {
        return Err("a reply nests too deeply".into());
    }
    Ok(match c.u8()? {
        T_OK => Reply::Ok,
        T_SIMPLE => Reply::Simple(c.string()?),
        T_ERROR => Reply::Error(c.string()?),
        T_INT => Reply::Int(c.u64()? as i64),
        T_BULK => {
            let n = c.u32()?;
            Reply::Bulk(Bytes::copy_from_slice(c.take(n)?))
        }
        T_NIL => Reply::Nil,
        T_NIL_ARRAY => Reply::NilArray,
        tag @ (T_ARRAY | T_PUSH) => {
            let n = c.count()?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode_from(c, depth + 1)?);
            }
            if tag == T_ARRAY {
                Reply::Array(items)
            } else {
                Reply::Push(items)
            }
        }
        T_DOUBLE => Reply::Double(f64::from_bits(c.u64()?)),
        tag @ (T_MAP | T_PAIRS) => {
            let n = c.count()?;
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                let k = decode_from(c, depth + 1)?;
                pairs.push((k, decode_from(c, depth + 1)?));
            }
            if tag == T_MAP {
                Reply::Map(pairs)
            } else {
                Reply::Pairs(pairs)
            }
        }
        t => return Err(format!("unknown reply tag {t}").into()),
    })
}

impl Payload for Reply {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        encode_into(self, &mut out)?;
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        let mut c = Cursor(bytes);
        let r = decode_from(&mut c, 0)?;
        if !c.0.is_empty() {
            return Err("bytes after a reply".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_garbage_is_an_error() {
        let r = Reply::Array(vec![
            Reply::Ok,
            Reply::Simple("PONG".into()),
            Reply::err("x"),
            Reply::Int(-5),
            Reply::bulk(&b"v\0"[..]),
            Reply::Nil,
            Reply::NilArray,
            Reply::Double(1.5),
            Reply::Map(vec![(Reply::bulk("k"), Reply::Int(1))]),
            Reply::Pairs(vec![(Reply::bulk("m"), Reply::Double(2.0))]),
            Reply::Push(vec![Reply::bulk("message")]),
        ]);
        let bytes = r.encode().unwrap();
        assert_eq!(Reply::decode(&bytes).unwrap(), r);
        for cut in 0..bytes.len() {
            assert!(Reply::decode(&bytes[..cut]).is_err());
        }
        assert!(Reply::decode(&[T_ARRAY, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Reply::decode(&[42]).is_err());
        let deep = [T_ARRAY, 0, 0, 0, 1].repeat(100);
        assert!(Reply::decode(&deep).is_err());
    }
}
