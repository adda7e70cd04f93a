//! Client sessions: exactly-once writes (the Raft thesis, §6.3).
//!
//! A session is opened through the log and named by the index of the entry
//! that opened it. Each write in a session carries `(session, seq, acked)`:
//! its sequence number, and the lowest sequence number whose answer its
//! client still waits for. The replicated [`Sessions`] table keeps, per
//! session, the answers of the writes at or above `acked`; a write whose
//! sequence number was already applied is answered from the table and not
//! applied again, and one below what the table keeps is refused
//! ([`crate::Error::SessionExpired`]), never applied a second time.
//!
//! Time is the leader's: every session entry carries the wall clock of the
//! leader that proposed it, and the table's clock is the largest stamp
//! applied so far. A session idle for longer than its timeout (chosen when
//! it was opened, and in the log) expires on every node at the same entry.
//!
//! Idempotency keys are the other way to write exactly once: a write that
//! carries a client-chosen key (the HTTP `Idempotency-Key` convention) is
//! applied the first time, its answer is kept for the time-to-live written
//! into its entry, and a repeat of the key meanwhile gets that answer and
//! changes nothing. Keys expire by the same leader clock as sessions.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Which write of which session a proposal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWrite {
    /// The session, as [`RaftHandle::open_session`] returned it.
    pub session: u64,
    /// This write's number in the session (from 1, one per write; a retry
    /// uses the same number).
    pub seq: u64,
    /// The lowest number whose answer the client still waits for: the
    /// session may forget the answers below it.
    pub acked: u64,
}

impl SessionWrite {
    /// The write's request id in logs: `<session in hex>-<number>`, the
    /// same on the node that forwards it and on the leader that proposes
    /// it (and on a retry).
    pub fn request_id(&self) -> String {
        format!("{:x}-{}", self.session, self.seq)
    }
}

/// The request ids of session writes, comma-separated (for logs).
pub(crate) fn request_ids<'a>(writes: impl IntoIterator<Item = &'a SessionWrite>) -> String {
    writes
        .into_iter()
        .map(SessionWrite::request_id)
        .collect::<Vec<_>>()
        .join(",")
}

/// What a session write answered: the state machine's encoded output, or
/// its error (a retry gets the same answer either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The encoded output.
    Output(#[serde(with = "hex_bytes")] Vec<u8>),
    /// The state machine's (or the codec's) error message.
    Failed(String),
}

/// One session's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Idle time after which the session expires, in ms.
    idle_ms: u64,
    /// The leader's clock at its last write.
    active_ms: u64,
    /// Sequence numbers below this were acknowledged by the client: their
    /// answers are gone.
    acked: u64,
    /// Answers of the writes at or above `acked`, by sequence number.
    answers: BTreeMap<u64, Answer>,
}

/// What to do with a session write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Apply it (first time) and [`Sessions::record`] its answer.
    Apply,
    /// Applied before: answer this.
    Replay(Answer),
    /// The session is gone, or the write is older than what it keeps.
    Refuse(String),
}

/// The answer of a keyed write, kept until the table's clock passes
/// `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Keyed {
    /// The clock (ms) after which the key is forgotten.
    expires_ms: u64,
    answer: Answer,
}

/// Every open session and remembered idempotency key: part of raftify's
/// replicated metadata (in every snapshot), identical on every node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sessions {
    sessions: BTreeMap<u64, Session>,
    /// The largest leader stamp applied, in ms.
    clock_ms: u64,
    /// `(expiry, id)` of every session, for expiring in order; rebuilt
    /// after a snapshot is read.
    #[serde(skip)]
    by_expiry: BTreeSet<(u64, u64)>,
    /// The answers of keyed writes, by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    keys: BTreeMap<String, Keyed>,
    /// `(expiry, key)` of every key; rebuilt after a snapshot is read.
    #[serde(skip)]
    keys_by_expiry: BTreeSet<(u64, String)>,
}

impl PartialEq for Sessions {
    fn eq(&self, other: &Self) -> bool {
        self.sessions == other.sessions
            && self.clock_ms == other.clock_ms
            && self.keys == other.keys
    }
}

impl Eq for Sessions {}

impl Sessions {
    /// No session open and no key remembered (then snapshots carry
    /// nothing for them).
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.keys.is_empty()
    }

    /// The number of open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether session `id` is open.
    pub fn contains(&self, id: u64) -> bool {
        self.sessions.contains_key(&id)
    }

    /// The number of remembered idempotency keys.
    pub fn keys_len(&self) -> usize {
        self.keys.len()
    }

    /// Moves the clock to a leader stamp (never back) and expires the
    /// sessions idle for longer than their timeout and the keys past their
    /// time-to-live.
    pub(crate) fn advance(&mut self, stamp_ms: u64) {
        if self.by_expiry.len() != self.sessions.len() {
            self.by_expiry = self
                .sessions
                .iter()
                .map(|(id, s)| (s.active_ms.saturating_add(s.idle_ms), *id))
                .collect();
        }
        if self.keys_by_expiry.len() != self.keys.len() {
            self.keys_by_expiry = self
                .keys
                .iter()
                .map(|(k, v)| (v.expires_ms, k.clone()))
                .collect();
        }
        self.clock_ms = self.clock_ms.max(stamp_ms);
        while let Some(&(expiry, id)) = self.by_expiry.first() {
            if expiry >= self.clock_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.sessions.remove(&id);
        }
        while let Some((expiry, _)) = self.keys_by_expiry.first() {
            if *expiry >= self.clock_ms {
                break;
            }
            if let Some((_, key)) = self.keys_by_expiry.pop_first() {
                self.keys.remove(&key);
            }
        }
    }

    /// The answer of the first write with idempotency key `key`, if it is
    /// still remembered (`None`: apply the write, then
    /// [`Sessions::record_key`]).
    pub(crate) fn keyed(&self, key: &str) -> Option<Answer> {
        self.keys.get(key).map(|k| k.answer.clone())
    }

    /// Remembers the answer of the write with key `key` for `ttl_ms` from
    /// now (the table's clock).
    pub(crate) fn record_key(&mut self, key: &str, ttl_ms: u64, answer: Answer) {
        let expires_ms = self.clock_ms.saturating_add(ttl_ms);
        if let Some(old) = self
            .keys
            .insert(key.to_owned(), Keyed { expires_ms, answer })
        {
            self.keys_by_expiry
                .remove(&(old.expires_ms, key.to_owned()));
        }
        self.keys_by_expiry.insert((expires_ms, key.to_owned()));
    }

    /// Opens session `id` (the index of the entry that opens it).
    pub(crate) fn open(&mut self, id: u64, idle_ms: u64) {
        let now = self.clock_ms;
        self.sessions.insert(
            id,
            Session {
                idle_ms,
                active_ms: now,
                acked: 0,
                answers: BTreeMap::new(),
            },
        );
        self.by_expiry.insert((now.saturating_add(idle_ms), id));
    }

    /// Decides about write `seq` of session `id`, whose client acknowledged
    /// every answer below `acked`; keeps the session alive.
    pub(crate) fn check(&mut self, id: u64, seq: u64, acked: u64) -> Decision {
        let now = self.clock_ms;
        let Some(s) = self.sessions.get_mut(&id) else {
            return Decision::Refuse(format!(
                "session {id} is not open (it expired after being idle, or never existed): \
                 open a new one"
            ));
        };
        // Writes of a busy session mostly share the clock's millisecond.
        if s.active_ms != now {
            self.by_expiry
                .remove(&(s.active_ms.saturating_add(s.idle_ms), id));
            s.active_ms = now;
            self.by_expiry.insert((now.saturating_add(s.idle_ms), id));
        }
        if acked > s.acked {
            s.acked = acked;
            while let Some(e) = s.answers.first_entry() {
                if *e.key() >= acked {
                    break;
                }
                e.remove();
            }
        }
        if let Some(answer) = s.answers.get(&seq) {
            return Decision::Replay(answer.clone());
        }
        if seq < s.acked {
            return Decision::Refuse(format!(
                "write {seq} of session {id} is older than the ones it keeps (from {}): its \
                 answer was acknowledged and dropped",
                s.acked
            ));
        }
        Decision::Apply
    }

    /// Records the answer of write `seq` of session `id`.
    pub(crate) fn record(&mut self, id: u64, seq: u64, answer: Answer) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.answers.insert(seq, answer);
        }
    }
}

/// Bytes as a hex string in snapshots' JSON (half the size of a number
/// array, and readable).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(serde::de::Error::custom("not a hex digit")),
        };
        let raw = s.as_bytes();
        if raw.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        raw.chunks(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> Answer {
        Answer::Output(s.as_bytes().to_vec())
    }

    #[test]
    fn a_write_is_applied_once_and_replayed_after() {
        let mut t = Sessions::default();
        t.advance(1_000);
        t.open(7, 60_000);
        assert_eq!(t.check(7, 1, 1), Decision::Apply);
        t.record(7, 1, out("1"));
        assert_eq!(t.check(7, 1, 1), Decision::Replay(out("1")));
        assert_eq!(t.check(7, 2, 1), Decision::Apply);
        t.record(7, 2, Answer::Failed("no".into()));
        assert_eq!(
            t.check(7, 2, 1),
            Decision::Replay(Answer::Failed("no".into()))
        );
        // Acknowledging 2 drops the answer of 1: a late retry of 1 is
        // refused, not applied again.
        assert_eq!(t.check(7, 3, 2), Decision::Apply);
        assert!(matches!(t.check(7, 1, 2), Decision::Refuse(_)));
        assert!(matches!(t.check(8, 1, 1), Decision::Refuse(_)));
    }

    #[test]
    fn idle_sessions_expire_by_the_leaders_clock_only() {
        let mut t = Sessions::default();
        t.advance(1_000);
        t.open(1, 10_000);
        t.open(2, 10_000);
        t.advance(9_000);
        assert_eq!(t.check(2, 1, 1), Decision::Apply); // 2 active at 9 s
        t.advance(10_500);
        assert!(t.contains(1) && t.contains(2));
        t.advance(11_001); // 1 idle since 1 s: expires after 11 s
        assert!(!t.contains(1) && t.contains(2));
        t.advance(5_000); // a stamp from a slower clock: time never goes back
        assert!(t.contains(2));
        t.advance(19_001);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_survives_a_snapshot_round_trip_with_its_expiry_order() {
        let mut t = Sessions::default();
        t.advance(100);
        t.open(3, 1_000);
        t.check(3, 1, 1);
        t.record(3, 1, Answer::Output(vec![0, 255, 16]));
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("00ff10"), "{json}");
        let mut back: Sessions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.check(3, 1, 1),
            Decision::Replay(Answer::Output(vec![0, 255, 16]))
        );
        back.advance(2_000);
        assert!(
            back.is_empty(),
            "expiry works on a table read from a snapshot"
        );
    }

    #[test]
    fn keys_answer_their_first_write_until_their_ttl_passes() {
        let mut t = Sessions::default();
        t.advance(1_000);
        assert_eq!(t.keyed("a"), None);
        t.record_key("a", 5_000, out("1"));
        t.advance(2_000);
        t.record_key("b", 1_000, Answer::Failed("no".into()));
        assert!(!t.is_empty());
        assert_eq!(t.keyed("a"), Some(out("1")));
        assert_eq!(t.keyed("b"), Some(Answer::Failed("no".into())));
        t.advance(3_001); // b recorded at 2 s for 1 s
        assert_eq!((t.keyed("a"), t.keyed("b")), (Some(out("1")), None));
        t.advance(1_000); // a slower clock: nothing comes back or goes
        assert_eq!(t.keyed("a"), Some(out("1")));
        t.advance(6_001);
        assert!(t.is_empty());
    }

    #[test]
    fn keys_survive_a_snapshot_round_trip_and_still_expire() {
        let mut t = Sessions::default();
        assert!(!serde_json::to_string(&t).unwrap().contains("keys"));
        t.advance(100);
        t.record_key("order-17", 1_000, out("ok"));
        let json = serde_json::to_string(&t).unwrap();
        let mut back: Sessions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.keyed("order-17"), Some(out("ok")));
        back.advance(1_101);
        assert!(back.is_empty(), "{json}");
    }
}
