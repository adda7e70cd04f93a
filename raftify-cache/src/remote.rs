//! Reads asked of a cache group over its Raft port (`ClusterApi::read`,
//! `RaftClient::read`), for a front-end on a node that hosts no replica
//! of the group: the query is one read command in the log entry's codec
//! ([`read_query`]), the answer its [`Reply`] as a payload.
//!
//! Register [`reader`] as the groups' read function (`ShardHost::start`,
//! `launch`) to answer them.

use crate::{CacheEntry, CacheState, Migrate, Op, Reply};
use bytes::Bytes;
use raftify::ReadFn;
use raftify_core::{AbstractLogEntry, BoxError, Payload};
use std::sync::Arc;

/// The query that asks for `argv` (a read command: `GET key`, ...).
pub fn read_query(argv: Vec<Bytes>) -> Result<Vec<u8>, BoxError> {
    CacheEntry {
        clock_ms: 0,
        op: Op::Exec {
            commands: vec![argv],
            transaction: false,
            watched: Vec::new(),
        },
    }
    .encode()
}

/// Runs the read command of `query` against `state` (a write command is
/// answered with an error reply, as [`CacheState::read`] does), or a
/// [`Migrate::Weigh`] (the rebalancer's).
pub fn answer_read(state: &CacheState, query: &[u8]) -> Result<Vec<u8>, BoxError> {
    let entry = CacheEntry::decode(query)?;
    let commands = match entry.op {
        Op::Exec { commands, .. } => commands,
        Op::Migrate(Migrate::Weigh { start, end }) => {
            return Payload::encode(&state.weigh_slots(start, end))
        }
        _ => return Err("a read query is one command".into()),
    };
    let [argv] = commands.as_slice() else {
        return Err("a read query is one command".into());
    };
    Payload::encode(&state.read(argv))
}

/// [`answer_read`] as a group's read function.
pub fn reader() -> ReadFn<CacheState> {
    Arc::new(answer_read)
}

/// Decodes an answer of [`answer_read`] (or of a proposal).
pub fn decode_reply(out: &[u8]) -> Result<Reply, BoxError> {
    <Reply as Payload>::decode(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_query_is_answered_and_garbage_is_refused() {
        let mut s = CacheState::new();
        let set = CacheEntry {
            clock_ms: 1,
            op: Op::Exec {
                commands: vec![vec![
                    Bytes::from_static(b"set"),
                    Bytes::from_static(b"k"),
                    Bytes::from_static(b"v"),
                ]],
                transaction: false,
                watched: Vec::new(),
            },
        };
        s.apply_entry(1, &set);
        let q = read_query(vec![Bytes::from_static(b"get"), Bytes::from_static(b"k")]).unwrap();
        assert_eq!(
            decode_reply(&answer_read(&s, &q).unwrap()).unwrap(),
            Reply::bulk("v")
        );
        assert!(answer_read(&s, b"junk").is_err());
        let two = CacheEntry {
            clock_ms: 0,
            op: Op::Exec {
                commands: vec![vec![Bytes::from_static(b"get")], vec![]],
                transaction: false,
                watched: Vec::new(),
            },
        };
        assert!(answer_read(&s, &two.encode().unwrap()).is_err());
    }
}
