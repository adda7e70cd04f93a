//! The cache's snapshot format: written from a frozen copy of the state
//! (persistent maps, so the copy is O(1)) off the raft loop, read back
//! element by element.
//!
//! Layout (integers big-endian, byte strings as a u32 length then bytes):
//! magic `RFTYKV05`, the replicated clock, members (`id`, address), ACL
//! users (name, rules line), the Redis keyspace's items, then the named
//! caches (name, items), the locks (name, holder, token, lease end), the
//! slot ranges being moved away, those moved away, those handed to a
//! move's target and those imported by moves (first, last each).
//! An item is its key, expiry (0: none), version, a type tag and the value.
//! `RFTYKV05` (without handed and incoming slots), `RFTYKV04` (without
//! frozen slots either) and `RFTYKV03` snapshots (without named caches and
//! locks either) are still read.

use crate::entry::{put, put_u64};
use crate::keyspace::{Item, Keyspace, Map, Score, Set, Value, ZSet};
use crate::locks::{Held, Locks};
use crate::migrate::{check_range, Frozen};
use crate::named::{Named, NamedCaches};
use bytes::Bytes;
use raftify_core::{BoxError, SnapshotView};
use std::collections::BTreeMap;
use std::io::{Read, Write};

const MAGIC: &[u8; 8] = b"RFTYKV06";
const MAGIC_V5: &[u8; 8] = b"RFTYKV05";
const MAGIC_V4: &[u8; 8] = b"RFTYKV04";
const MAGIC_V3: &[u8; 8] = b"RFTYKV03";
const V_STR: u8 = 1;
const V_HASH: u8 = 2;
const V_LIST: u8 = 3;
const V_SET: u8 = 4;
const V_ZSET: u8 = 5;

/// Everything a snapshot holds.
#[derive(Clone, Default)]
pub(crate) struct Parts {
    pub keys: Keyspace,
    pub members: BTreeMap<u64, String>,
    pub users: crate::acl::Users,
    pub named: NamedCaches,
    pub locks: Locks,
    pub frozen: Frozen,
}

/// A frozen copy of the state, serialized off the raft loop.
pub(crate) struct View(pub Parts);

/// The snapshot's pieces, encoded with the entries' helpers into a small
/// buffer that is spilled to the destination (the snapshot file) every
/// [`SPILL`] bytes: the serialized state is never held whole.
pub(crate) struct Spill<'a> {
    buf: Vec<u8>,
    out: &'a mut dyn Write,
}

/// How much [`Spill`] buffers before writing.
const SPILL: usize = 64 << 10;

impl<'a> Spill<'a> {
    /// Writes to `out`.
    pub(crate) fn new(out: &'a mut dyn Write) -> Self {
        Spill {
            buf: Vec::with_capacity(SPILL * 2),
            out,
        }
    }

    /// Where the next piece is encoded.
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes what is buffered once it is [`SPILL`] bytes or more.
    fn spill(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= SPILL {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the rest.
    pub(crate) fn finish(mut self) -> std::io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// Writes a count, then the items (`count` of them).
pub(crate) fn put_items<'k>(
    out: &mut Spill<'_>,
    count: usize,
    items: impl Iterator<Item = (&'k [u8], &'k Item)>,
) -> Result<(), BoxError> {
    put_u64(out.buf(), count as u64);
    let mut written = 0;
    for (key, item) in items {
        written += 1;
        put(out.buf(), key)?;
        put_u64(out.buf(), item.expire_at().unwrap_or(0));
        put_u64(out.buf(), item.version);
        match &item.value {
            Value::Str(s) => {
                out.buf().push(V_STR);
                put(out.buf(), s)?;
            }
            Value::Hash(h) => {
                out.buf().push(V_HASH);
                put_u64(out.buf(), h.len() as u64);
                for (f, v) in h.iter() {
                    put(out.buf(), f)?;
                    put(out.buf(), v)?;
                    out.spill()?;
                }
            }
            Value::List(l) => {
                out.buf().push(V_LIST);
                put_u64(out.buf(), l.len() as u64);
                for v in l.iter() {
                    put(out.buf(), v)?;
                    out.spill()?;
                }
            }
            Value::Set(s) => {
                out.buf().push(V_SET);
                put_u64(out.buf(), s.len() as u64);
                for v in s.iter() {
                    put(out.buf(), v)?;
                    out.spill()?;
                }
            }
            Value::ZSet(z) => {
                out.buf().push(V_ZSET);
                put_u64(out.buf(), z.len() as u64);
                for (s, m) in &z.ordered {
                    put(out.buf(), m)?;
                    put_u64(out.buf(), s.0.to_bits());
                    out.spill()?;
                }
            }
        }
        out.spill()?;
    }
    if written != count {
        return Err(format!("{written} items written where {count} were counted").into());
    }
    Ok(())
}

/// Writes a keyspace's live items: counted first, then written (two walks
/// of the tree, no list of them).
fn put_keyspace(out: &mut Spill<'_>, keys: &Keyspace) -> Result<(), BoxError> {
    put_items(out, keys.iter().count(), keys.iter())
}

impl SnapshotView for View {
    fn write_to(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), BoxError> {
        self.write_into(out)
    }

    fn write_into(self: Box<Self>, out: &mut dyn Write) -> Result<(), BoxError> {
        let p = &self.0;
        let mut out = Spill::new(out);
        out.buf().extend_from_slice(MAGIC);
        put_u64(out.buf(), p.keys.clock());
        put_u64(out.buf(), p.members.len() as u64);
        for (id, addr) in &p.members {
            put_u64(out.buf(), *id);
            put(out.buf(), addr.as_bytes())?;
        }
        put_users(out.buf(), &p.users)?;
        put_keyspace(&mut out, &p.keys)?;
        put_u64(out.buf(), p.named.iter().count() as u64);
        for (name, cache) in p.named.iter() {
            put(out.buf(), name)?;
            put_keyspace(&mut out, cache.keyspace())?;
        }
        put_u64(out.buf(), p.locks.iter().count() as u64);
        for (name, held) in p.locks.iter() {
            put(out.buf(), name)?;
            put_u64(out.buf(), held.holder);
            put_u64(out.buf(), held.fence);
            put_u64(out.buf(), held.expires_ms);
            out.spill()?;
        }
        let f = &p.frozen;
        for ranges in [f.moving(), f.moved(), f.handed(), f.incoming()] {
            put_u64(out.buf(), ranges.len() as u64);
            for &(a, b) in ranges {
                put_u64(out.buf(), u64::from(a));
                put_u64(out.buf(), u64::from(b));
            }
        }
        out.finish()?;
        Ok(())
    }
}

fn exact<const N: usize>(r: &mut (dyn Read + Send)) -> Result<[u8; N], BoxError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)
        .map_err(|e| format!("a cache snapshot is cut short: {e}"))?;
    Ok(b)
}

fn u64_(r: &mut (dyn Read + Send)) -> Result<u64, BoxError> {
    Ok(u64::from_be_bytes(exact::<8>(r)?))
}

fn bytes(r: &mut (dyn Read + Send)) -> Result<Bytes, BoxError> {
    let n = u32::from_be_bytes(exact::<4>(r)?) as usize;
    let mut v = Vec::new();
    r.take(n as u64).read_to_end(&mut v)?;
    if v.len() != n {
        return Err("a cache snapshot is cut short".into());
    }
    Ok(Bytes::from(v))
}

/// Reads one item: key, expiry, version, value.
fn item(r: &mut (dyn Read + Send)) -> Result<(Bytes, Option<u64>, u64, Value), BoxError> {
    let key = bytes(r)?;
    let expire_at = match u64_(r)? {
        0 => None,
        t => Some(t),
    };
    let version = u64_(r)?;
    let tag = exact::<1>(r)?[0];
    let value = match tag {
        V_STR => Value::Str(bytes(r)?),
        V_HASH => {
            let mut h = Map::default();
            for _ in 0..u64_(r)? {
                let f = bytes(r)?;
                h.insert(f, bytes(r)?);
            }
            Value::Hash(Box::new(h))
        }
        V_LIST => {
            let mut l = imbl::Vector::new();
            for _ in 0..u64_(r)? {
                l.push_back(bytes(r)?);
            }
            Value::List(Box::new(l))
        }
        V_SET => {
            let mut s = Set::default();
            for _ in 0..u64_(r)? {
                s.insert(bytes(r)?);
            }
            Value::Set(Box::new(s))
        }
        V_ZSET => {
            let mut z = ZSet::default();
            for _ in 0..u64_(r)? {
                let m = bytes(r)?;
                let s = f64::from_bits(u64_(r)?);
                if s.is_nan() {
                    return Err("a NaN score in a cache snapshot".into());
                }
                z.insert(m, Score(s).0);
            }
            Value::ZSet(Box::new(z))
        }
        t => return Err(format!("unknown value type {t} in a cache snapshot").into()),
    };
    // Commands never leave one (a key whose last member goes is deleted):
    // a damaged or crafted snapshot or import does, refused here for every
    // reader (a snapshot, a named cache's, a slot import).
    if value.is_empty_collection() {
        return Err("an empty collection in a cache snapshot".into());
    }
    Ok((key, expire_at, version, value))
}

/// ACL users as snapshots hold them: their count, then each one's name
/// and `ACL LIST` line.
pub(crate) fn put_users(out: &mut Vec<u8>, users: &crate::acl::Users) -> Result<(), BoxError> {
    put_u64(out, users.len() as u64);
    for (name, user) in users {
        put(out, name.as_bytes())?;
        put(out, user.describe(name).as_bytes())?;
    }
    Ok(())
}

/// Reads what [`put_users`] wrote.
pub(crate) fn read_users(r: &mut (dyn Read + Send)) -> Result<crate::acl::Users, BoxError> {
    let mut users = crate::acl::Users::new();
    for _ in 0..u64_(r)? {
        let name = String::from_utf8(bytes(r)?.to_vec()).map_err(|_| "a user name is not UTF-8")?;
        // The user's ACL LIST line: `user NAME` then its rules.
        let rules = crate::acl::rules_of_line(&bytes(r)?);
        crate::acl::set_user(&mut users, &name, &rules)
            .map_err(|e| format!("user {name} in a snapshot: {e}"))?;
    }
    Ok(users)
}

/// Reads a snapshot element by element (never the whole of it at once).
pub(crate) fn read(r: &mut (dyn Read + Send)) -> Result<Parts, BoxError> {
    let magic = exact::<8>(r)?;
    let v3 = &magic == MAGIC_V3;
    let v4 = &magic == MAGIC_V4;
    let v5 = &magic == MAGIC_V5;
    if &magic != MAGIC && !v3 && !v4 && !v5 {
        return Err("not a raftify-cache snapshot (bad magic)".into());
    }
    let mut p = Parts::default();
    let clock = u64_(r)?;
    p.keys.advance_clock(clock);
    for _ in 0..u64_(r)? {
        let id = u64_(r)?;
        let addr =
            String::from_utf8(bytes(r)?.to_vec()).map_err(|_| "a member address is not UTF-8")?;
        p.members.insert(id, addr);
    }
    p.users = read_users(r)?;
    for _ in 0..u64_(r)? {
        let (key, expire_at, version, value) = item(r)?;
        p.keys.insert_versioned(key, value, expire_at, version);
    }
    if v3 {
        return Ok(p);
    }
    for _ in 0..u64_(r)? {
        let name = bytes(r)?;
        let cache: &mut Named = p.named.entry(name);
        cache.advance_clock(clock);
        for _ in 0..u64_(r)? {
            let (key, expire_at, version, value) = item(r)?;
            cache.restore(key, value, expire_at, version);
        }
    }
    for _ in 0..u64_(r)? {
        let name = bytes(r)?;
        let held = Held {
            holder: u64_(r)?,
            fence: u64_(r)?,
            expires_ms: u64_(r)?,
        };
        p.locks.restore(name, held);
    }
    if v4 {
        return Ok(p);
    }
    let lists = if v5 { 2 } else { 4 };
    for list in 0..lists {
        for _ in 0..u64_(r)? {
            let (a, b) = (u64_(r)?, u64_(r)?);
            let (a, b) = (u16::try_from(a)?, u16::try_from(b)?);
            check_range(a, b)?;
            match list {
                0 => p.frozen.freeze(a, b),
                1 => p.frozen.set_moved(a, b),
                2 => p.frozen.restore_handed(a, b),
                _ => p.frozen.restore_incoming(a, b),
            }
        }
    }
    Ok(p)
}

/// Reads an item count (the start of [`put_items`]'s output).
pub(crate) fn read_count(r: &mut (dyn Read + Send)) -> Result<u64, BoxError> {
    u64_(r)
}

/// Reads one item of [`put_items`]'s output: key, value, expiry.
pub(crate) fn read_item(
    r: &mut (dyn Read + Send),
) -> Result<(Bytes, Value, Option<u64>), BoxError> {
    let (key, expire_at, _version, value) = item(r)?;
    Ok((key, value, expire_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_larger_than_the_spill_buffer_reads_back_the_same() {
        let mut parts = Parts::default();
        parts.members.insert(1, "127.0.0.1:1".into());
        // One hash far larger than a spill (it crosses many), strings
        // around it, a TTL.
        let mut h = Map::default();
        for i in 0..20_000 {
            h.insert(
                Bytes::from(format!("field-{i}")),
                Bytes::from(vec![b'v'; 20]),
            );
        }
        parts
            .keys
            .insert(Bytes::from("big"), Value::Hash(Box::new(h)), None);
        for i in 0..5_000 {
            let key = Bytes::from(format!("a-rather-long-key-name-{i:06}"));
            parts
                .keys
                .insert(key, Value::Str(Bytes::from(vec![b'x'; 50])), Some(9_999));
        }
        let mut out = Vec::new();
        Box::new(View(parts.clone())).write_into(&mut out).unwrap();
        assert!(out.len() > 10 * SPILL, "{} bytes", out.len());
        let back = read(&mut &out[..]).unwrap();
        assert_eq!(back.members, parts.members);
        assert_eq!(back.keys.raw_len(), parts.keys.raw_len());
        for (k, item) in parts.keys.iter() {
            let b = back.keys.get(k).unwrap();
            assert_eq!(b.expire_at(), item.expire_at());
            match (&b.value, &item.value) {
                (Value::Hash(x), Value::Hash(y)) => assert_eq!(x, y),
                (Value::Str(x), Value::Str(y)) => assert_eq!(x, y),
                _ => panic!("type changed for {k:?}"),
            }
        }
        assert_eq!(back.keys.next_expiry(), Some(9_999));
        // The buffered default writes the same bytes.
        let mut buffered = Vec::new();
        Box::new(View(parts)).write_to(&mut buffered).unwrap();
        assert_eq!(buffered, out);
    }
}
