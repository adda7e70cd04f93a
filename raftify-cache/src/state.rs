//! [`CacheState`]: the replicated state machine — the keyspace, applied
//! entry by entry the same way on every node, with streamed snapshots.

use crate::commands::WriteCtx;
use crate::entry::{CacheEntry, Op};
use crate::eviction::Frequencies;
use crate::keyspace::{Item, Keyspace};
use crate::locks::Locks;
use crate::migrate::{Frozen, Migrate, Refusal};
use crate::named::{Change, ChangeHook, NamedCaches};
use crate::reply::Reply;
use crate::snapshot::{Parts, View};
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
    /// The embedded cache's named caches.
    named: NamedCaches,
    /// Its locks.
    locks: Locks,
    /// Slots frozen by a move to another group (writes to them refused).
    frozen: Frozen,
    on_change: Option<ChangeHook>,
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

    /// Counts the keyspace's bytes per hash slot from now on, restores
    /// included ([`Keyspace::count_slots`]): what a sharded group is
    /// weighed by ([`Migrate::Weigh`]).
    pub fn count_slot_bytes(&mut self) {
        self.keys.count_slots();
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

    /// Sets what receives every change to a named cache as it is applied.
    pub fn set_change_hook(&mut self, hook: ChangeHook) {
        self.on_change = Some(hook);
    }

    /// The embedded cache's named caches, for reads.
    pub fn named(&self) -> &NamedCaches {
        &self.named
    }

    /// The embedded cache's locks.
    pub fn locks(&self) -> &Locks {
        &self.locks
    }

    /// The earliest TTL of any key or named-cache entry: when the leader
    /// should propose [`Op::Expire`].
    pub fn next_expiry(&self) -> Option<u64> {
        match (self.keys.next_expiry(), self.named.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
                    if let Some(slot) = self.moved_slot(c, argv) {
                        return Reply::Error(self.frozen.refusal(slot).message());
                    }
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
                if let Some(slot) = self.frozen_slot(commands) {
                    return Reply::Error(if *transaction {
                        // A transaction is not followed through `ASK` (its
                        // commands would have to run on the target one by
                        // one): the client tries again after the move.
                        format!("EXECABORT {}", Refusal::TryAgain(slot).message())
                    } else {
                        self.frozen.refusal(slot).message()
                    });
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
            Op::Expire => {
                let clock = self.keys.clock();
                let mut changes = Vec::new();
                let n = self.keys.purge_expired()
                    + self.named.purge_expired(index, clock, &mut changes);
                self.locks.purge(clock);
                self.notify(&changes);
                Reply::Int(n as i64)
            }
            Op::Named { cache, bound, op } => {
                let mut changes = Vec::new();
                let clock = self.keys.clock();
                let reply = self
                    .named
                    .apply(index, clock, cache, *bound, op, &mut changes);
                self.notify(&changes);
                reply
            }
            Op::Lock {
                name,
                holder,
                lease_ms,
            } => self
                .locks
                .lock(index, self.keys.clock(), name, *holder, *lease_ms),
            Op::Unlock { name, fence } => self.locks.unlock(self.keys.clock(), name, *fence),
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
            Op::SetUser { .. } | Op::DelUser(_) => crate::acl::apply(&mut self.users, &entry.op),
            Op::Migrate(m) => self.migrate(m),
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

impl CacheState {
    /// The first slot a read of `argv` would touch that moved away.
    fn moved_slot(&self, c: &Command, argv: &[Bytes]) -> Option<u16> {
        if self.frozen.is_empty() {
            return None;
        }
        c.key_positions(argv.len())
            .into_iter()
            .filter_map(|i| argv.get(i))
            .map(|k| crate::migrate::key_slot(k))
            .find(|&s| self.frozen.refuses_read(s))
    }

    /// The first frozen slot a command of `commands` writes to, if any.
    fn frozen_slot(&self, commands: &[Vec<Bytes>]) -> Option<u16> {
        if self.frozen.is_empty() {
            return None;
        }
        commands.iter().find_map(|argv| {
            let c = argv
                .first()
                .and_then(|n| lookup(n))
                .filter(|c| c.is_write())?;
            c.key_positions(argv.len())
                .into_iter()
                .filter_map(|i| argv.get(i))
                .map(|k| crate::migrate::key_slot(k))
                .find(|&s| self.frozen.refuses_write(s))
        })
    }

    fn migrate(&mut self, m: &Migrate) -> Reply {
        use crate::migrate::{check_range, drop_range, import};
        let (Migrate::Freeze { start, end }
        | Migrate::Thaw { start, end }
        | Migrate::Hand { start, end }
        | Migrate::Drop { start, end }
        | Migrate::Weigh { start, end }
        | Migrate::Import { start, end, .. }) = m;
        if let Err(e) = check_range(*start, *end) {
            return Reply::err(e);
        }
        match m {
            Migrate::Freeze { start, end } => {
                if self.frozen.is_handed(*start, *end) {
                    // A re-run move: the target has these (and maybe
                    // newer writes to them); nothing to export again.
                    return Reply::Simple("HANDED".into());
                }
                self.frozen.freeze(*start, *end);
                // In parts when large: each one import entry.
                let items = crate::migrate::items_in(&self.keys, *start, *end);
                match crate::migrate::export_parts(&items, crate::migrate::IMPORT_BYTES) {
                    Ok(mut parts) if parts.len() == 1 => {
                        Reply::Bulk(parts.pop().unwrap_or_default().into())
                    }
                    Ok(parts) => {
                        Reply::Array(parts.into_iter().map(|p| Reply::Bulk(p.into())).collect())
                    }
                    Err(e) => Reply::err(format!("cannot export slots: {e}")),
                }
            }
            Migrate::Thaw { start, end } => match self.frozen.abandon(*start, *end) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::err(e),
            },
            Migrate::Import { start, end, items } => match import(&mut self.keys, items) {
                Ok(n) => {
                    self.frozen.import(*start, *end);
                    Reply::Int(n as i64)
                }
                Err(e) => Reply::err(format!("cannot import slot items: {e}")),
            },
            Migrate::Hand { start, end } => {
                self.frozen.hand(*start, *end);
                Reply::Ok
            }
            Migrate::Drop { start, end } => {
                let n = drop_range(&mut self.keys, *start, *end);
                self.frozen.set_moved(*start, *end);
                Reply::Int(n as i64)
            }
            Migrate::Weigh { start, end } => self.weigh_slots(*start, *end),
        }
    }

    /// [`Migrate::Weigh`]'s reply: the bytes each slot of `start..=end`
    /// holds (changes nothing, so it is also answered as a read).
    pub fn weigh_slots(&self, start: u16, end: u16) -> Reply {
        if !self.keys.counts_slots() {
            return Reply::err("this group does not count its bytes per slot");
        }
        match crate::migrate::check_range(start, end) {
            Ok(()) => Reply::Bulk(crate::migrate::encode_weights(&self.keys, start, end).into()),
            Err(e) => Reply::err(e),
        }
    }

    /// Every live item, bucketed by the range of `ranges` (sorted,
    /// disjoint) its slot lies in; items of no range left out. One pass
    /// over the keys (a restore's rounds).
    pub fn items_by_range(&self, ranges: &[(u16, u16)]) -> Vec<Vec<(&[u8], &Item)>> {
        let mut out: Vec<Vec<(&[u8], &Item)>> = ranges.iter().map(|_| Vec::new()).collect();
        for (k, item) in self.keys.iter() {
            let slot = crate::migrate::key_slot(k);
            let i = ranges.partition_point(|&(_, end)| end < slot);
            if let (Some(&(start, _)), Some(bucket)) = (ranges.get(i), out.get_mut(i)) {
                if start <= slot {
                    bucket.push((k, item));
                }
            }
        }
        out
    }

    /// Every item of slots `start..=end`, for [`Migrate::Import`] in
    /// another group (read after a [`Migrate::Freeze`] of them).
    pub fn export_slots(&self, start: u16, end: u16) -> Result<Vec<u8>, BoxError> {
        crate::migrate::check_range(start, end)?;
        crate::migrate::export(&self.keys, start, end)
    }

    /// The slots frozen by a move in progress.
    pub fn frozen(&self) -> &Frozen {
        &self.frozen
    }

    fn notify(&self, changes: &[Change]) {
        if let Some(hook) = &self.on_change {
            for c in changes {
                hook(c);
            }
        }
    }

    fn parts(&self) -> Parts {
        Parts {
            keys: self.keys.clone(),
            members: self.members.clone(),
            users: self.users.clone(),
            named: self.named.clone(),
            locks: self.locks.clone(),
            frozen: self.frozen.clone(),
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

    fn size_bytes(&self) -> Option<u64> {
        Some(self.keys.used_memory() as u64)
    }

    async fn apply(&mut self, entry: CacheEntry) -> Result<Reply, BoxError> {
        let next = self.applied + 1;
        Ok(self.apply_entry(next, &entry))
    }

    async fn apply_at(&mut self, index: u64, entry: CacheEntry) -> Result<Reply, BoxError> {
        Ok(self.apply_entry(index, &entry))
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        Box::new(View(self.parts())).write_to(&mut out)?;
        Ok(out)
    }

    fn snapshot_view(&self) -> Option<Box<dyn SnapshotView>> {
        Some(Box::new(View(self.parts())))
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        self.restore_from(&mut snapshot.as_slice()).await
    }

    async fn restore_from(&mut self, reader: &mut (dyn Read + Send)) -> Result<(), BoxError> {
        let p = crate::snapshot::read(reader)?;
        let counted = self.keys.counts_slots();
        self.keys = p.keys;
        if counted {
            self.keys.count_slots();
        }
        self.members = p.members;
        self.users = p.users;
        self.named = p.named;
        self.locks = p.locks;
        self.frozen = p.frozen;
        Ok(())
    }
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
                legacy: false,
            },
        };
        assert_eq!(sm.apply_entry(7, &user), Reply::Ok);
        let named = CacheEntry {
            clock_ms: 1_000,
            op: Op::Named {
                cache: Bytes::from("sessions"),
                bound: crate::Bound {
                    max_entries: 2,
                    max_bytes: 0,
                },
                op: crate::NamedOp::Put {
                    key: Bytes::from("a"),
                    value: Bytes::from("1"),
                    ttl_ms: Some(60_000),
                    only_if_absent: false,
                },
            },
        };
        sm.apply_entry(8, &named);
        let lock = CacheEntry {
            clock_ms: 1_000,
            op: Op::Lock {
                name: Bytes::from("job"),
                holder: 4,
                lease_ms: 500,
            },
        };
        sm.apply_entry(9, &lock);
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
        let cache = back.named().cache(b"sessions").unwrap();
        assert_eq!(cache.get(b"a"), Some(&Bytes::from("1")));
        assert_eq!(cache.expire_at(b"a"), Some(61_000));
        assert_eq!(back.locks(), sm.locks());
        assert_eq!(back.locks().holder(b"job", 1_000).map(|h| h.fence), Some(9));
        assert_eq!(back.users(), sm.users());
        assert!(
            back.users()["reader"]
                .commands
                .allows("get", None, &["read"])
                && !back.users()["reader"]
                    .commands
                    .allows("set", None, &["write"])
        );
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
