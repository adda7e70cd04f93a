//! [`CacheEntry`]: what goes through the log — commands as their
//! arguments, stamped with the proposer's clock.

use crate::migrate::Migrate;
use bytes::Bytes;
use raftify_core::{AbstractLogEntry, BoxError};

/// One command's arguments, its name first (`["SET", "k", "v", "EX", "10"]`).
pub type Argv = Vec<Bytes>;

/// What one log entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write commands applied in order, atomically: one is a plain command,
    /// several are a `MULTI`/`EXEC` transaction (its reply an array).
    Exec {
        /// The commands.
        commands: Vec<Argv>,
        /// Whether the reply is an array of every command's reply
        /// (a transaction), not the single command's reply.
        transaction: bool,
        /// `WATCH`ed keys and the version each had when watched: if any
        /// changed since, nothing is applied and the reply is the null
        /// array (an aborted `EXEC`).
        watched: Vec<(Bytes, u64)>,
    },
    /// Advances the replicated clock and deletes every key whose TTL has
    /// passed (proposed by the leader when the earliest one is due).
    Expire,
    /// Deletes these keys to bring memory under the limit (chosen by the
    /// leader under `maxmemory`).
    Evict(Vec<Bytes>),
    /// A published message: every node's subscribers get it, in log order.
    Publish {
        /// The channel.
        channel: Bytes,
        /// The message.
        message: Bytes,
    },
    /// `ACL SETUSER`: creates or changes a user (passwords as `#sha256`).
    SetUser {
        /// The user name.
        name: Bytes,
        /// The rules, in order.
        rules: Vec<Bytes>,
        /// Proposed before command rules existed (its wire tag): `+@read`
        /// and `-@write` mean what they meant then and other command rules
        /// are refused, so a node replaying an old log builds the users
        /// that nodes restoring old snapshots have.
        legacy: bool,
    },
    /// `ACL DELUSER`: deletes users.
    DelUser(Vec<Bytes>),
    /// A write to a named cache (the embedded cache): replies
    /// `[index, reply]`, the entry's log index first.
    Named {
        /// The cache's name.
        cache: Bytes,
        /// Its bound, as the proposer knows it.
        bound: Bound,
        /// The write.
        op: NamedOp,
    },
    /// Takes (or renews, for the same holder) the lease on a lock: replies
    /// `[index, fence]`, the fencing token being the log index that granted
    /// the lock, or `[index, nil]` when another holder's lease runs. Leases
    /// run on the replicated clock.
    Lock {
        /// The lock's name.
        name: Bytes,
        /// Who asks (a random id per guard).
        holder: u64,
        /// How long the lease runs from the entry's stamp (ms).
        lease_ms: u64,
    },
    /// Releases a lock if `fence` is still its token; replies 1 or 0.
    Unlock {
        /// The lock's name.
        name: Bytes,
        /// The token the holder was given.
        fence: u64,
    },
    /// A step of a slot move between groups of a sharded deployment (see
    /// [`crate::migrate`]): replies OK, or the count of keys imported or
    /// dropped.
    Migrate(Migrate),
    /// A member tells the cluster the address its clients reach it at
    /// (for `CLUSTER SLOTS` and redirections).
    Announce {
        /// The member's raft id.
        id: u64,
        /// Its client address, `host:port`.
        addr: Bytes,
    },
}

/// A named cache's size bound, carried by every write to it so that every
/// node enforces the same bound (0: no bound of that kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bound {
    /// Most entries the cache holds; the least recently written go first.
    pub max_entries: u64,
    /// Most bytes it holds (keys, values and 96 bytes per entry).
    pub max_bytes: u64,
}

/// A write to one entry of a named cache (the embedded cache's API).
/// TTLs are in ms from the entry's clock stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedOp {
    /// Sets the key (or, `only_if_absent`, sets it only when missing; the
    /// reply is then the value already there, if any).
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Time to live; `None`: none.
        ttl_ms: Option<u64>,
        /// Leave an existing value in place.
        only_if_absent: bool,
    },
    /// Deletes the key.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Adds `by` to the key's decimal integer (missing = 0).
    Incr {
        /// The key.
        key: Bytes,
        /// The amount (negative to subtract).
        by: i64,
        /// Time to live of a key this creates; an existing key's TTL stays.
        ttl_ms: Option<u64>,
    },
    /// Sets the key to `value` only if its value is `expected` (`None`:
    /// only if missing).
    Cas {
        /// The key.
        key: Bytes,
        /// The value it must have.
        expected: Option<Bytes>,
        /// The new value.
        value: Bytes,
        /// Time to live of the new value; `None`: none.
        ttl_ms: Option<u64>,
    },
}

impl NamedOp {
    /// The key it writes.
    pub fn key(&self) -> &Bytes {
        match self {
            NamedOp::Put { key, .. }
            | NamedOp::Delete { key }
            | NamedOp::Incr { key, .. }
            | NamedOp::Cas { key, .. } => key,
        }
    }
}

/// A log entry: an operation and the proposer's wall clock when it was
/// made (ms since the Unix epoch). Replicas keep a replicated clock, the
/// largest stamp applied so far, and judge expiry against it only — never
/// their own clocks — so every node agrees on which keys exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The proposer's clock, ms since the Unix epoch.
    pub clock_ms: u64,
    /// What the entry does.
    pub op: Op,
}

const VERSION: u8 = 1;
const OP_EXEC: u8 = 1;
const OP_EXPIRE: u8 = 2;
const OP_EVICT: u8 = 3;
const OP_PUBLISH: u8 = 4;
const OP_ANNOUNCE: u8 = 5;
const OP_SETUSER: u8 = 6;
const OP_DELUSER: u8 = 7;
const OP_NAMED: u8 = 8;
const OP_LOCK: u8 = 9;
const OP_UNLOCK: u8 = 10;
const OP_MIGRATE: u8 = 11;
/// `ACL SETUSER` with Redis's command rules (`OP_SETUSER`: the rules of
/// before them).
const OP_SETUSER_RULES: u8 = 12;
const MIGRATE_FREEZE: u8 = 1;
const MIGRATE_THAW: u8 = 2;
const MIGRATE_IMPORT: u8 = 3;
const MIGRATE_DROP: u8 = 4;
const MIGRATE_HAND: u8 = 5;
const MIGRATE_WEIGH: u8 = 6;
const N_PUT: u8 = 1;
const N_DELETE: u8 = 2;
const N_INCR: u8 = 3;
const N_CAS: u8 = 4;

/// Appends `b` with its length (u32, big-endian): the byte strings of
/// entries and of snapshots.
pub(crate) fn put(out: &mut Vec<u8>, b: &[u8]) -> Result<(), BoxError> {
    let n = u32::try_from(b.len()).map_err(|_| "a byte string over 4 GiB")?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_list(out: &mut Vec<u8>, items: &[Bytes]) -> Result<(), BoxError> {
    let n = u32::try_from(items.len()).map_err(|_| "too many arguments")?;
    out.extend_from_slice(&n.to_be_bytes());
    for i in items {
        put(out, i)?;
    }
    Ok(())
}

/// Appends `v` big-endian.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A TTL as a u64, 0 for none (a TTL of 0 ms is stored as 1).
fn put_ttl(out: &mut Vec<u8>, ttl: Option<u64>) {
    put_u64(out, ttl.map_or(0, |t| t.max(1)));
}

fn encode_named(out: &mut Vec<u8>, op: &NamedOp) -> Result<(), BoxError> {
    match op {
        NamedOp::Put {
            key,
            value,
            ttl_ms,
            only_if_absent,
        } => {
            out.push(N_PUT);
            put(out, key)?;
            put(out, value)?;
            put_ttl(out, *ttl_ms);
            out.push(u8::from(*only_if_absent));
        }
        NamedOp::Delete { key } => {
            out.push(N_DELETE);
            put(out, key)?;
        }
        NamedOp::Incr { key, by, ttl_ms } => {
            out.push(N_INCR);
            put(out, key)?;
            out.extend_from_slice(&by.to_be_bytes());
            put_ttl(out, *ttl_ms);
        }
        NamedOp::Cas {
            key,
            expected,
            value,
            ttl_ms,
        } => {
            out.push(N_CAS);
            put(out, key)?;
            match expected {
                Some(e) => {
                    out.push(1);
                    put(out, e)?;
                }
                None => out.push(0),
            }
            put(out, value)?;
            put_ttl(out, *ttl_ms);
        }
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BoxError> {
        if self.0.len() < n {
            return Err("a cache entry is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<usize, BoxError> {
        let b: [u8; 4] = self.take(4)?.try_into()?;
        Ok(u32::from_be_bytes(b) as usize)
    }
    fn bytes(&mut self) -> Result<Bytes, BoxError> {
        let n = self.u32()?;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    /// A count of items of at least four bytes each: never more than fit.
    fn count(&mut self) -> Result<usize, BoxError> {
        let n = self.u32()?;
        if n > self.0.len() / 4 {
            return Err("a cache entry's count exceeds its bytes".into());
        }
        Ok(n)
    }
    fn u64(&mut self) -> Result<u64, BoxError> {
        let b: [u8; 8] = self.take(8)?.try_into()?;
        Ok(u64::from_be_bytes(b))
    }
    fn ttl(&mut self) -> Result<Option<u64>, BoxError> {
        Ok(Some(self.u64()?).filter(|t| *t != 0))
    }
    fn flag(&mut self) -> Result<bool, BoxError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bad flag {b} in a cache entry").into()),
        }
    }
    fn named(&mut self) -> Result<NamedOp, BoxError> {
        Ok(match self.take(1)?[0] {
            N_PUT => NamedOp::Put {
                key: self.bytes()?,
                value: self.bytes()?,
                ttl_ms: self.ttl()?,
                only_if_absent: self.flag()?,
            },
            N_DELETE => NamedOp::Delete { key: self.bytes()? },
            N_INCR => NamedOp::Incr {
                key: self.bytes()?,
                by: self.u64()? as i64,
                ttl_ms: self.ttl()?,
            },
            N_CAS => {
                let key = self.bytes()?;
                let expected = if self.flag()? {
                    Some(self.bytes()?)
                } else {
                    None
                };
                NamedOp::Cas {
                    key,
                    expected,
                    value: self.bytes()?,
                    ttl_ms: self.ttl()?,
                }
            }
            t => return Err(format!("unknown named-cache operation {t}").into()),
        })
    }
    fn list(&mut self) -> Result<Vec<Bytes>, BoxError> {
        let n = self.count()?;
        (0..n).map(|_| self.bytes()).collect()
    }
}

impl AbstractLogEntry for CacheEntry {
    /// The leader's clock replaces the proposer's (a follower that took the
    /// write stamped its own): TTLs and the replicated clock follow one
    /// clock, the leader's, whatever the followers' clocks say. (The
    /// replicated clock still never moves back: it is the largest stamp
    /// applied.)
    fn stamp_on_leader(encoded: &mut [u8], now_ms: u64) {
        if encoded.first() == Some(&VERSION) {
            if let Some(clock) = encoded.get_mut(1..9) {
                clock.copy_from_slice(&now_ms.to_be_bytes());
            }
        }
    }

    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.clock_ms.to_be_bytes());
        match &self.op {
            Op::Exec {
                commands,
                transaction,
                watched,
            } => {
                out.push(OP_EXEC);
                out.push(u8::from(*transaction));
                let w = u32::try_from(watched.len()).map_err(|_| "too many watched keys")?;
                out.extend_from_slice(&w.to_be_bytes());
                for (key, version) in watched {
                    put(&mut out, key)?;
                    out.extend_from_slice(&version.to_be_bytes());
                }
                let n = u32::try_from(commands.len()).map_err(|_| "too many commands")?;
                out.extend_from_slice(&n.to_be_bytes());
                for c in commands {
                    put_list(&mut out, c)?;
                }
            }
            Op::Expire => out.push(OP_EXPIRE),
            Op::Evict(keys) => {
                out.push(OP_EVICT);
                put_list(&mut out, keys)?;
            }
            Op::Publish { channel, message } => {
                out.push(OP_PUBLISH);
                put(&mut out, channel)?;
                put(&mut out, message)?;
            }
            Op::SetUser {
                name,
                rules,
                legacy,
            } => {
                out.push(if *legacy {
                    OP_SETUSER
                } else {
                    OP_SETUSER_RULES
                });
                put(&mut out, name)?;
                put_list(&mut out, rules)?;
            }
            Op::DelUser(names) => {
                out.push(OP_DELUSER);
                put_list(&mut out, names)?;
            }
            Op::Named { cache, bound, op } => {
                out.push(OP_NAMED);
                put(&mut out, cache)?;
                put_u64(&mut out, bound.max_entries);
                put_u64(&mut out, bound.max_bytes);
                encode_named(&mut out, op)?;
            }
            Op::Lock {
                name,
                holder,
                lease_ms,
            } => {
                out.push(OP_LOCK);
                put(&mut out, name)?;
                put_u64(&mut out, *holder);
                put_u64(&mut out, *lease_ms);
            }
            Op::Unlock { name, fence } => {
                out.push(OP_UNLOCK);
                put(&mut out, name)?;
                put_u64(&mut out, *fence);
            }
            Op::Migrate(m) => {
                out.push(OP_MIGRATE);
                let range = |out: &mut Vec<u8>, tag: u8, a: u16, b: u16| {
                    out.push(tag);
                    out.extend_from_slice(&a.to_be_bytes());
                    out.extend_from_slice(&b.to_be_bytes());
                };
                match m {
                    Migrate::Freeze { start, end } => range(&mut out, MIGRATE_FREEZE, *start, *end),
                    Migrate::Thaw { start, end } => range(&mut out, MIGRATE_THAW, *start, *end),
                    Migrate::Drop { start, end } => range(&mut out, MIGRATE_DROP, *start, *end),
                    Migrate::Hand { start, end } => range(&mut out, MIGRATE_HAND, *start, *end),
                    Migrate::Weigh { start, end } => range(&mut out, MIGRATE_WEIGH, *start, *end),
                    Migrate::Import { start, end, items } => {
                        range(&mut out, MIGRATE_IMPORT, *start, *end);
                        put(&mut out, items)?;
                    }
                }
            }
            Op::Announce { id, addr } => {
                out.push(OP_ANNOUNCE);
                out.extend_from_slice(&id.to_be_bytes());
                put(&mut out, addr)?;
            }
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        let mut r = Reader(bytes);
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(
                format!("cache entry format {version} is not known (expected {VERSION})").into(),
            );
        }
        let clock: [u8; 8] = r.take(8)?.try_into()?;
        let clock_ms = u64::from_be_bytes(clock);
        let tag = r.take(1)?[0];
        let op = match tag {
            OP_EXEC => {
                let transaction = match r.take(1)?[0] {
                    0 => false,
                    1 => true,
                    b => return Err(format!("bad transaction flag {b}").into()),
                };
                let w = r.count()?;
                let mut watched = Vec::with_capacity(w);
                for _ in 0..w {
                    let key = r.bytes()?;
                    let v: [u8; 8] = r.take(8)?.try_into()?;
                    watched.push((key, u64::from_be_bytes(v)));
                }
                let n = r.count()?;
                let commands = (0..n).map(|_| r.list()).collect::<Result<_, _>>()?;
                Op::Exec {
                    commands,
                    transaction,
                    watched,
                }
            }
            OP_EXPIRE => Op::Expire,
            OP_EVICT => Op::Evict(r.list()?),
            OP_PUBLISH => Op::Publish {
                channel: r.bytes()?,
                message: r.bytes()?,
            },
            OP_SETUSER | OP_SETUSER_RULES => Op::SetUser {
                name: r.bytes()?,
                rules: r.list()?,
                legacy: tag == OP_SETUSER,
            },
            OP_DELUSER => Op::DelUser(r.list()?),
            OP_ANNOUNCE => {
                let id: [u8; 8] = r.take(8)?.try_into()?;
                Op::Announce {
                    id: u64::from_be_bytes(id),
                    addr: r.bytes()?,
                }
            }
            OP_NAMED => Op::Named {
                cache: r.bytes()?,
                bound: Bound {
                    max_entries: r.u64()?,
                    max_bytes: r.u64()?,
                },
                op: r.named()?,
            },
            OP_LOCK => Op::Lock {
                name: r.bytes()?,
                holder: r.u64()?,
                lease_ms: r.u64()?,
            },
            OP_UNLOCK => Op::Unlock {
                name: r.bytes()?,
                fence: r.u64()?,
            },
            OP_MIGRATE => {
                let tag = r.take(1)?[0];
                let a: [u8; 2] = r.take(2)?.try_into()?;
                let b: [u8; 2] = r.take(2)?.try_into()?;
                let (start, end) = (u16::from_be_bytes(a), u16::from_be_bytes(b));
                crate::migrate::check_range(start, end)?;
                Op::Migrate(match tag {
                    MIGRATE_FREEZE => Migrate::Freeze { start, end },
                    MIGRATE_THAW => Migrate::Thaw { start, end },
                    MIGRATE_DROP => Migrate::Drop { start, end },
                    MIGRATE_HAND => Migrate::Hand { start, end },
                    MIGRATE_WEIGH => Migrate::Weigh { start, end },
                    MIGRATE_IMPORT => Migrate::Import {
                        start,
                        end,
                        items: r.bytes()?,
                    },
                    t => return Err(format!("unknown slot move step {t}").into()),
                })
            }
            t => return Err(format!("unknown cache operation {t}").into()),
        };
        if !r.0.is_empty() {
            return Err("bytes after a cache entry".into());
        }
        Ok(CacheEntry { clock_ms, op })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_stamp_replaces_the_clock_and_leaves_other_bytes_alone() {
        let e = CacheEntry {
            clock_ms: 3_600_000_000,
            op: Op::Expire,
        };
        let mut bytes = e.encode().unwrap();
        CacheEntry::stamp_on_leader(&mut bytes, 42);
        let back = CacheEntry::decode(&bytes).unwrap();
        assert_eq!(back.clock_ms, 42);
        assert!(matches!(back.op, Op::Expire));
        for garbage in [vec![], vec![VERSION, 1, 2], vec![VERSION + 1; 12]] {
            let mut g = garbage.clone();
            CacheEntry::stamp_on_leader(&mut g, 42);
            assert_eq!(g, garbage);
        }
    }

    #[test]
    fn entries_round_trip_and_every_truncation_is_an_error() {
        let entries = [
            CacheEntry {
                clock_ms: 7,
                op: Op::Exec {
                    commands: vec![
                        vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("v")],
                        vec![Bytes::from("INCR"), Bytes::from("n")],
                    ],
                    transaction: true,
                    watched: vec![(Bytes::from("w"), 42)],
                },
            },
            CacheEntry {
                clock_ms: 8,
                op: Op::Expire,
            },
            CacheEntry {
                clock_ms: 9,
                op: Op::Evict(vec![Bytes::from("a")]),
            },
            CacheEntry {
                clock_ms: 10,
                op: Op::Publish {
                    channel: Bytes::from("c"),
                    message: Bytes::from("m"),
                },
            },
            CacheEntry {
                clock_ms: 12,
                op: Op::SetUser {
                    name: Bytes::from("alice"),
                    rules: vec![Bytes::from("on")],
                    legacy: false,
                },
            },
            CacheEntry {
                clock_ms: 5,
                op: Op::SetUser {
                    name: Bytes::from("bob"),
                    rules: vec![Bytes::from("-@write")],
                    legacy: true,
                },
            },
            CacheEntry {
                clock_ms: 13,
                op: Op::DelUser(vec![Bytes::from("alice")]),
            },
            CacheEntry {
                clock_ms: 14,
                op: Op::Named {
                    cache: Bytes::from("sessions"),
                    bound: Bound {
                        max_entries: 10,
                        max_bytes: 0,
                    },
                    op: NamedOp::Put {
                        key: Bytes::from("k"),
                        value: Bytes::from("v"),
                        ttl_ms: Some(60_000),
                        only_if_absent: true,
                    },
                },
            },
            CacheEntry {
                clock_ms: 15,
                op: Op::Named {
                    cache: Bytes::from("c"),
                    bound: Bound::default(),
                    op: NamedOp::Cas {
                        key: Bytes::from("k"),
                        expected: Some(Bytes::from("a")),
                        value: Bytes::from("b"),
                        ttl_ms: None,
                    },
                },
            },
            CacheEntry {
                clock_ms: 16,
                op: Op::Named {
                    cache: Bytes::from("c"),
                    bound: Bound::default(),
                    op: NamedOp::Incr {
                        key: Bytes::from("n"),
                        by: -3,
                        ttl_ms: None,
                    },
                },
            },
            CacheEntry {
                clock_ms: 17,
                op: Op::Named {
                    cache: Bytes::from("c"),
                    bound: Bound::default(),
                    op: NamedOp::Delete {
                        key: Bytes::from("n"),
                    },
                },
            },
            CacheEntry {
                clock_ms: 18,
                op: Op::Lock {
                    name: Bytes::from("l"),
                    holder: 99,
                    lease_ms: 500,
                },
            },
            CacheEntry {
                clock_ms: 19,
                op: Op::Unlock {
                    name: Bytes::from("l"),
                    fence: 7,
                },
            },
            CacheEntry {
                clock_ms: 11,
                op: Op::Announce {
                    id: 3,
                    addr: Bytes::from("127.0.0.1:6379"),
                },
            },
        ];
        for e in entries {
            let bytes = e.encode().unwrap();
            assert_eq!(CacheEntry::decode(&bytes).unwrap(), e);
            for cut in 0..bytes.len() {
                assert!(CacheEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(CacheEntry::decode(&[
            VERSION, 0, 0, 0, 0, 0, 0, 0, 0, OP_EVICT, 255, 255, 255, 255
        ])
        .is_err());
        assert!(CacheEntry::decode(&[9]).is_err());
    }
}
