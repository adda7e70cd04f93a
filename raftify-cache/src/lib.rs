//! # raftify-cache
//!
//! The replicated cache state machine of raftify: Redis's data types
//! (strings, hashes, lists, sets, sorted sets) with TTLs, applied entry by
//! entry the same way on every node of a raft group.
//!
//! * [`CacheEntry`] is the log entry: commands as their arguments (a
//!   `MULTI` transaction is one entry), stamped with the proposer's clock.
//! * [`CacheState`] applies them. Expiry is judged against the
//!   *replicated clock* — the largest stamp applied — never a node's own
//!   clock, so every replica agrees on which keys exist; the leader
//!   proposes [`Op::Expire`] when the earliest TTL is due.
//! * [`table`] lists the commands: which read (served from a node's copy)
//!   and which write (through the log), their arity and key positions.
//! * [`Reply`] is what a command answers, in Redis's reply types.
//!
//! `raftify-redis` serves this over the Redis protocol.
//!
//! ```
//! use bytes::Bytes;
//! use raftify_cache::{CacheEntry, CacheState, Op, Reply};
//! let argv = |s: &str| s.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>();
//! let mut cache = CacheState::new();
//! let set = CacheEntry { clock_ms: 1_000, op: Op::Exec { commands: vec![argv("SET k v PX 500")], transaction: false, watched: vec![] } };
//! assert_eq!(cache.apply_entry(1, &set), Reply::Ok);
//! assert_eq!(cache.read(&argv("GET k")), Reply::bulk("v"));
//! // Half a second later on the replicated clock, on every node at once:
//! cache.apply_entry(2, &CacheEntry { clock_ms: 1_500, op: Op::Expire });
//! assert_eq!(cache.read(&argv("GET k")), Reply::Nil);
//! ```
#![deny(missing_docs)]

pub mod acl;
pub mod command_rules;
pub mod commands;
pub mod embedded;
mod entry;
pub mod eviction;
pub mod expiry;
pub mod keyspace;
pub mod locks;
pub mod migrate;
pub mod named;
pub mod remote;
mod reply;
pub mod scan_order;
mod slot_mover;
mod snapshot;
mod state;
pub mod table;

pub use entry::{Argv, Bound, CacheEntry, NamedOp, Op};
pub use migrate::{key_slot, Frozen, Migrate, Refusal};
pub use named::{Change, ChangeKind};
pub use reply::{errors, Reply};
pub use slot_mover::{migrate_step, CacheSlotMover};
pub use state::{CacheState, PublishHook};
