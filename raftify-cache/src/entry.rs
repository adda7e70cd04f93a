//! [`CacheEntry`]: what goes through the log — commands as their
//! arguments, stamped with the proposer's clock.

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
    },
    /// `ACL DELUSER`: deletes users.
    DelUser(Vec<Bytes>),
    /// A member tells the cluster the address its clients reach it at
    /// (for `CLUSTER SLOTS` and redirections).
    Announce {
        /// The member's raft id.
        id: u64,
        /// Its client address, `host:port`.
        addr: Bytes,
    },
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

fn put(out: &mut Vec<u8>, b: &[u8]) -> Result<(), BoxError> {
    let n = u32::try_from(b.len()).map_err(|_| "an argument over 4 GiB")?;
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
    fn list(&mut self) -> Result<Vec<Bytes>, BoxError> {
        let n = self.count()?;
        (0..n).map(|_| self.bytes()).collect()
    }
}

impl AbstractLogEntry for CacheEntry {
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
            Op::SetUser { name, rules } => {
                out.push(OP_SETUSER);
                put(&mut out, name)?;
                put_list(&mut out, rules)?;
            }
            Op::DelUser(names) => {
                out.push(OP_DELUSER);
                put_list(&mut out, names)?;
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
        let op = match r.take(1)?[0] {
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
            OP_SETUSER => Op::SetUser {
                name: r.bytes()?,
                rules: r.list()?,
            },
            OP_DELUSER => Op::DelUser(r.list()?),
            OP_ANNOUNCE => {
                let id: [u8; 8] = r.take(8)?.try_into()?;
                Op::Announce {
                    id: u64::from_be_bytes(id),
                    addr: r.bytes()?,
                }
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
                },
            },
            CacheEntry {
                clock_ms: 13,
                op: Op::DelUser(vec![Bytes::from("alice")]),
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
