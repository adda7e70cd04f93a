//! [`CacheState`]: the replicated state machine — the keyspace, applied
//! entry by entry the same way on every node, with streamed snapshots.

use crate::commands::WriteCtx;
use crate::entry::{CacheEntry, Op};
use crate::eviction::Frequencies;
use crate::keyspace::{Keyspace, Map, Score, Set, Value, ZSet};
use crate::reply::Reply;
use crate::table::{lookup, Command, Handler};
use async_trait::async_trait;
use bytes::Bytes;
use raftify_core::{AbstractStateMachine, BoxError, SnapshotView};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// Called with each published message as it is applied (on every node).
pub type PublishHook = Arc<dyn Fn(&Bytes, &Bytes) -> i64 + Send + Sync>;

/// The replicated cache.
#[derive(Clone, Default)]
pub struct CacheState {
    keys: Keyspace,
    /// Each member's announced client address.
    members: BTreeMap<u64, String>,
    /// ACL users (all but `default`).
    users: crate::acl::Users,
    applied: u64,
    on_publish: Option<PublishHook>,
    /// Counts key accesses for LFU eviction (this node's reads and applied
    /// writes); not part of the replicated state.
    frequencies: Option<Arc<Frequencies>>,
}

impl std::fmt::Debug for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheState")
            .field("keys", &self.keys.raw_len())
            .field("applied", &self.applied)
            .finish()
    }
}

impl CacheState {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what receives published messages (the server's subscribers);
    /// it returns how many got the message.
    pub fn set_publish_hook(&mut self, hook: PublishHook) {
        self.on_publish = Some(hook);
    }

    /// Counts every key this copy reads or writes from now on in `f` (the
    /// LFU eviction policies' [`Frequencies`]).
    pub fn count_accesses(&mut self, f: Arc<Frequencies>) {
        self.frequencies = Some(f);
    }

    /// The access counts set by [`CacheState::count_accesses`].
    pub fn frequencies(&self) -> Option<&Frequencies> {
        self.frequencies.as_deref()
    }

    /// The keyspace, for reads.
    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    /// The client address each member announced ([`Op::Announce`]).
    pub fn member_addrs(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// The ACL users (all but `default`, which is each node's own).
    pub fn users(&self) -> &crate::acl::Users {
        &self.users
    }

    /// The last log index applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Runs a read command (see [`crate::table`]) against this copy;
    /// a write command or an unknown one is an error reply.
    pub fn read(&self, argv: &[Bytes]) -> Reply {
        match argv.first().and_then(|n| lookup(n)) {
            Some(c) => match c.handler {
                Handler::Read(f) if c.arity_ok(argv.len()) => {
                    touch(self.frequencies.as_deref(), c, argv);
                    f(&self.keys, argv)
                }
                Handler::Read(_) => crate::reply::errors::arity(c.name),
                Handler::Write(_) => Reply::err(format!("'{}' is not a read command", c.name)),
            },
            None => Reply::err("unknown command"),
        }
    }

    /// Applies one entry (the state machine's `apply_at`, callable
    /// directly for tests and embedding).
    pub fn apply_entry(&mut self, index: u64, entry: &CacheEntry) -> Reply {
        self.applied = index;
        self.keys.set_index(index);
        self.keys.advance_clock(entry.clock_ms);
        let mut ctx = WriteCtx::new(index ^ entry.clock_ms.rotate_left(32));
        match &entry.op {
            Op::Exec {
                commands,
                transaction,
                watched,
            } => {
                if watched.iter().any(|(k, v)| self.keys.version(k) != *v) {
                    return Reply::NilArray;
                }
                let mut replies: Vec<Reply> = commands
                    .iter()
                    .map(|c| exec(&mut self.keys, c, &mut ctx, self.frequencies.as_deref()))
                    .collect();
                if *transaction {
                    Reply::Array(replies)
                } else {
                    replies.pop().unwrap_or(Reply::Ok)
                }
            }
            Op::Expire => Reply::Int(self.keys.purge_expired() as i64),
            Op::Evict(keys) => Reply::Int(
                keys.iter()
                    .filter(|k| self.keys.remove(k).is_some())
                    .count() as i64,
            ),
            Op::Publish { channel, message } => Reply::Int(
                self.on_publish
                    .as_ref()
                    .map_or(0, |hook| hook(channel, message)),
            ),
            Op::SetUser { name, rules } => {
                match crate::acl::set_user(&mut self.users, &String::from_utf8_lossy(name), rules) {
                    Ok(()) => Reply::Ok,
                    Err(e) => Reply::err(e),
                }
            }
            Op::DelUser(names) => Reply::Int(
                names
                    .iter()
                    .filter(|n| {
                        self.users
                            .remove(String::from_utf8_lossy(n).as_ref())
                            .is_some()
                    })
                    .count() as i64,
            ),
            Op::Announce { id, addr } => match std::str::from_utf8(addr) {
                Ok(a) if !a.is_empty() && a.len() <= 255 => {
                    self.members.insert(*id, a.to_string());
                    Reply::Ok
                }
                _ => Reply::err("an announced address must be UTF-8, 1 to 255 bytes"),
            },
        }
    }
}

/// Runs one command of a log entry: a write, or a read inside a
/// transaction (its reply as of that point of the transaction).
fn exec(
    keys: &mut Keyspace,
    argv: &[Bytes],
    ctx: &mut WriteCtx,
    freq: Option<&Frequencies>,
) -> Reply {
    let Some(c) = argv.first().and_then(|n| lookup(n)) else {
        return Reply::err("unknown command");
    };
    if !c.arity_ok(argv.len()) {
        return crate::reply::errors::arity(c.name);
    }
    touch(freq, c, argv);
    match c.handler {
        Handler::Write(f) => f(keys, argv, ctx),
        Handler::Read(f) => f(keys, argv),
    }
}

/// Counts an access to each key of a command, when counting.
fn touch(freq: Option<&Frequencies>, c: &Command, argv: &[Bytes]) {
    if let Some(f) = freq {
        for i in c.key_positions(argv.len()) {
            if let Some(k) = argv.get(i) {
                f.touch(k);
            }
        }
    }
}

#[async_trait]
impl AbstractStateMachine<CacheEntry> for CacheState {
    type Output = Reply;

    async fn apply(&mut self, entry: CacheEntry) -> Result<Reply, BoxError> {
        let next = self.applied + 1;
        Ok(self.apply_entry(next, &entry))
    }

    async fn apply_at(&mut self, index: u64, entry: CacheEntry) -> Result<Reply, BoxError> {
        Ok(self.apply_entry(index, &entry))
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        Box::new(View(
            self.keys.clone(),
            self.members.clone(),
            self.users.clone(),
        ))
        .write_to(&mut out)?;
        Ok(out)
    }

    fn snapshot_view(&self) -> Option<Box<dyn SnapshotView>> {
        Some(Box::new(View(
            self.keys.clone(),
            self.members.clone(),
            self.users.clone(),
        )))
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        self.restore_from(&mut snapshot.as_slice()).await
    }

    async fn restore_from(&mut self, reader: &mut (dyn Read + Send)) -> Result<(), BoxError> {
        let (keys, members, users) = read_snapshot(reader)?;
        self.keys = keys;
        self.members = members;
        self.users = users;
        Ok(())
    }
}

const MAGIC: &[u8; 8] = b"RFTYKV03";
const V_STR: u8 = 1;
const V_HASH: u8 = 2;
const V_LIST: u8 = 3;
const V_SET: u8 = 4;
const V_ZSET: u8 = 5;

/// A frozen keyspace (a clone of the persistent maps) and the members'
/// addresses, serialized off the raft loop.
struct View(Keyspace, BTreeMap<u64, String>, crate::acl::Users);

fn put(out: &mut Vec<u8>, b: &[u8]) -> Result<(), BoxError> {
    let n = u32::try_from(b.len()).map_err(|_| "a value over 4 GiB")?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

impl SnapshotView for View {
    fn write_to(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let ks = &self.0;
        out.extend_from_slice(MAGIC);
        put_u64(out, ks.clock());
        put_u64(out, self.1.len() as u64);
        for (id, addr) in &self.1 {
            put_u64(out, *id);
            put(out, addr.as_bytes())?;
        }
        put_u64(out, self.2.len() as u64);
        for (name, user) in &self.2 {
            put(out, name.as_bytes())?;
            put(out, user.describe(name).as_bytes())?;
        }
        let items: Vec<_> = ks.iter().collect();
        put_u64(out, items.len() as u64);
        for (key, item) in items {
            put(out, key)?;
            put_u64(out, item.expire_at().unwrap_or(0));
            put_u64(out, item.version);
            match &item.value {
                Value::Str(s) => {
                    out.push(V_STR);
                    put(out, s)?;
                }
                Value::Hash(h) => {
                    out.push(V_HASH);
                    put_u64(out, h.len() as u64);
                    for (f, v) in h.iter() {
                        put(out, f)?;
                        put(out, v)?;
                    }
                }
                Value::List(l) => {
                    out.push(V_LIST);
                    put_u64(out, l.len() as u64);
                    for v in l.iter() {
                        put(out, v)?;
                    }
                }
                Value::Set(s) => {
                    out.push(V_SET);
                    put_u64(out, s.len() as u64);
                    for v in s.iter() {
                        put(out, v)?;
                    }
                }
                Value::ZSet(z) => {
                    out.push(V_ZSET);
                    put_u64(out, z.len() as u64);
                    for (s, m) in &z.ordered {
                        put(out, m)?;
                        put_u64(out, s.0.to_bits());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a snapshot element by element (never the whole of it at once).
type Restored = (Keyspace, BTreeMap<u64, String>, crate::acl::Users);

fn read_snapshot(r: &mut (dyn Read + Send)) -> Result<Restored, BoxError> {
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
    if &exact::<8>(r)? != MAGIC {
        return Err("not a raftify-cache snapshot (bad magic)".into());
    }
    let mut ks = Keyspace::default();
    ks.advance_clock(u64_(r)?);
    let mut members = BTreeMap::new();
    for _ in 0..u64_(r)? {
        let id = u64_(r)?;
        let addr =
            String::from_utf8(bytes(r)?.to_vec()).map_err(|_| "a member address is not UTF-8")?;
        members.insert(id, addr);
    }
    let mut users = crate::acl::Users::new();
    for _ in 0..u64_(r)? {
        let name = String::from_utf8(bytes(r)?.to_vec()).map_err(|_| "a user name is not UTF-8")?;
        // The user's ACL LIST line: `user NAME` then its rules.
        let line = bytes(r)?;
        let rules: Vec<Bytes> = line
            .split(|b| *b == b' ')
            .skip(2)
            .map(Bytes::copy_from_slice)
            .collect();
        crate::acl::set_user(&mut users, &name, &rules)
            .map_err(|e| format!("user {name} in a cache snapshot: {e}"))?;
    }
    let n = u64_(r)?;
    for _ in 0..n {
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
        ks.insert_versioned(key, value, expire_at, version);
    }
    Ok((ks, members, users))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<Bytes> {
        s.split(' ')
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn run(sm: &mut CacheState, i: u64, clock: u64, cmd: &str) -> Reply {
        let e = CacheEntry {
            clock_ms: clock,
            op: Op::Exec {
                commands: vec![argv(cmd)],
                transaction: false,
                watched: vec![],
            },
        };
        sm.apply_entry(i, &e)
    }

    #[tokio::test]
    async fn snapshot_restores_every_type_and_ttl() {
        let mut sm = CacheState::new();
        run(&mut sm, 1, 1_000, "SET s v EX 100");
        run(&mut sm, 2, 1_000, "HSET h f1 a f2 b");
        run(&mut sm, 3, 1_000, "RPUSH l x y z");
        run(&mut sm, 4, 1_000, "SADD set m1 m2");
        run(&mut sm, 5, 1_000, "ZADD z 1.5 a -inf b");
        let announce = CacheEntry {
            clock_ms: 1_000,
            op: Op::Announce {
                id: 2,
                addr: Bytes::from("127.0.0.1:7000"),
            },
        };
        sm.apply_entry(6, &announce);
        let user = CacheEntry {
            clock_ms: 1_000,
            op: Op::SetUser {
                name: Bytes::from("reader"),
                rules: vec![
                    Bytes::from("on"),
                    Bytes::from(format!("#{}", "b".repeat(64))),
                    Bytes::from("+@read"),
                ],
            },
        };
        assert_eq!(sm.apply_entry(7, &user), Reply::Ok);
        let bytes = sm.snapshot().await.unwrap();
        let mut back = CacheState::new();
        back.restore(bytes.clone()).await.unwrap();
        for cmd in [
            "GET s",
            "PTTL s",
            "HGETALL h",
            "LRANGE l 0 -1",
            "SCARD set",
            "ZRANGE z 0 -1 WITHSCORES",
        ] {
            assert_eq!(back.read(&argv(cmd)), sm.read(&argv(cmd)), "{cmd}");
        }
        assert_eq!(back.member_addrs(), sm.member_addrs());
        assert_eq!(back.users(), sm.users());
        assert!(back.users()["reader"].commands && !back.users()["reader"].writes);
        assert_eq!(
            back.member_addrs().get(&2).map(String::as_str),
            Some("127.0.0.1:7000")
        );
        for cut in [0, 5, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                CacheState::new()
                    .restore(bytes[..cut].to_vec())
                    .await
                    .is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_transaction_applies_every_command_and_replies_with_each() {
        let mut sm = CacheState::new();
        let e = CacheEntry {
            clock_ms: 5,
            op: Op::Exec {
                commands: vec![
                    argv("RPUSH l a"),
                    argv("INCR l"),
                    argv("RPUSH l b"),
                    argv("LRANGE l 0 -1"),
                ],
                transaction: true,
                watched: vec![],
            },
        };
        let r = sm.apply_entry(1, &e);
        let Reply::Array(items) = r else {
            panic!("{r:?}")
        };
        assert_eq!(items[0], Reply::Int(1));
        assert!(matches!(&items[1], Reply::Error(e) if e.starts_with("WRONGTYPE")));
        assert_eq!(items[2], Reply::Int(2));
        assert_eq!(items[3], Reply::bulks([Bytes::from("a"), Bytes::from("b")]));
    }

    #[test]
    fn a_watched_key_changed_since_aborts_the_transaction() {
        let mut sm = CacheState::new();
        run(&mut sm, 1, 1, "SET k a");
        let v = sm.keyspace().version(b"k");
        assert_eq!(v, 1);
        assert_eq!(sm.keyspace().version(b"missing"), 0);
        let tx = |watched: Vec<(Bytes, u64)>| CacheEntry {
            clock_ms: 2,
            op: Op::Exec {
                commands: vec![argv("SET k b")],
                transaction: true,
                watched,
            },
        };
        assert_eq!(
            sm.apply_entry(2, &tx(vec![(Bytes::from("k"), v)])),
            Reply::Array(vec![Reply::Ok])
        );
        // k changed at index 2: a transaction watching version 1 aborts.
        assert_eq!(
            sm.apply_entry(3, &tx(vec![(Bytes::from("k"), v)])),
            Reply::NilArray
        );
        // A TTL change is a change too; so is expiry.
        run(&mut sm, 4, 2, "PEXPIRE k 10");
        assert_eq!(sm.keyspace().version(b"k"), 4);
        run(&mut sm, 5, 100, "GET k");
        assert_eq!(sm.keyspace().version(b"k"), 0, "expired: as missing");
    }

    #[test]
    fn spop_picks_the_same_members_on_every_replica() {
        let mut a = CacheState::new();
        let mut b = CacheState::new();
        for sm in [&mut a, &mut b] {
            run(sm, 1, 1, "SADD s 1 2 3 4 5 6 7 8 9");
        }
        assert_eq!(run(&mut a, 2, 9, "SPOP s 3"), run(&mut b, 2, 9, "SPOP s 3"));
        assert_eq!(a.read(&argv("SCARD s")), Reply::Int(6));
    }
}
