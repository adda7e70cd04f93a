//! # raftify-redis
//!
//! A Redis-compatible server on a raftify cluster: the replicated cache of
//! `raftify-cache` behind the Redis protocol (RESP2 and RESP3, inline
//! commands, pipelining), so stock clients (`redis-cli`, redis-py, ...)
//! use a fault-tolerant cache unchanged. Writes go through the Raft log
//! (from any node: a follower forwards them to the leader); reads are
//! linearizable (a ReadIndex) unless the connection sent `READONLY` or the
//! server runs with `--openreads`.
#![deny(missing_docs)]

pub mod acl;
mod acl_categories;
pub mod cluster;
pub mod conn;
pub mod eviction;
pub mod forward;
pub mod http;
mod introspect;
pub mod protocol;
pub mod pubsub;
pub mod restore;
pub mod server;
mod shard_admin;
pub mod sharded;
pub mod snapshots;
pub mod upkeep;
