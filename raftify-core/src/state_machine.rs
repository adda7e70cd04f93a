//! The two traits a user implements.

use async_trait::async_trait;

/// Boxed error type user code returns from its traits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A command replicated through the Raft log.
///
/// ```
/// use raftify_core::{AbstractLogEntry, BoxError};
///
/// enum Cmd { Put(String, String) }
///
/// impl AbstractLogEntry for Cmd {
///     fn encode(&self) -> Result<Vec<u8>, BoxError> {
///         let Cmd::Put(k, v) = self;
///         Ok(format!("{k}={v}").into_bytes())
///     }
///     fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
///         let s = std::str::from_utf8(bytes)?;
///         let (k, v) = s.split_once('=').ok_or("missing '='")?;
///         Ok(Cmd::Put(k.into(), v.into()))
///     }
/// }
/// let bytes = Cmd::Put("a".into(), "1".into()).encode().unwrap();
/// assert!(matches!(Cmd::decode(&bytes).unwrap(), Cmd::Put(k, v) if k == "a" && v == "1"));
/// ```
pub trait AbstractLogEntry: Sized + Send + Sync + 'static {
    /// Serializes the entry for the log.
    fn encode(&self) -> Result<Vec<u8>, BoxError>;
    /// Parses an entry read from the log or the network. Must return an
    /// error, never panic, on bytes it does not understand.
    fn decode(bytes: &[u8]) -> Result<Self, BoxError>;

    /// Lets an entry carry the leader's clock instead of its proposer's:
    /// called by the leader on every entry's encoded bytes (forwarded
    /// ones included) just before they enter the log, with the leader's
    /// wall clock in ms since the Unix epoch. Only overwrite bytes in place
    /// (the length is fixed), and leave bytes you do not recognise alone.
    /// The default does nothing.
    ///
    /// An entry that stamps time itself (a TTL's start, a replicated clock)
    /// is then judged by one clock, the leader's, even when a follower with
    /// a wrong clock took the write.
    fn stamp_on_leader(_encoded: &mut [u8], _now_ms: u64) {}
}

/// Raw bytes are a valid log entry: encode and decode are the identity.
impl AbstractLogEntry for Vec<u8> {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.clone())
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(bytes.to_vec())
    }
}

/// A value that travels between nodes as bytes: a state machine's apply
/// output, which goes back to the proposer (on another node when the
/// proposal was forwarded). Implemented for bytes, strings, integers, `()`,
/// `bool` and `Option` of those; implement it for your own output types.
pub trait Payload: Sized + Send + 'static {
    /// The bytes.
    fn encode(&self) -> Result<Vec<u8>, BoxError>;
    /// The value back from [`Payload::encode`]'s bytes; an error, never a
    /// panic, on anything else.
    fn decode(bytes: &[u8]) -> Result<Self, BoxError>;
}

impl Payload for Vec<u8> {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.clone())
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(bytes.to_vec())
    }
}

impl Payload for String {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.as_bytes().to_vec())
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(std::str::from_utf8(bytes)?.to_string())
    }
}

impl Payload for () {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("expected no bytes, got {}", bytes.len()).into())
        }
    }
}

impl Payload for bool {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(vec![u8::from(*self)])
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match bytes {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err("expected one byte, 0 or 1".into()),
        }
    }
}

macro_rules! int_payload {
    ($($t:ty),*) => {$(
        impl Payload for $t {
            fn encode(&self) -> Result<Vec<u8>, BoxError> {
                Ok(self.to_be_bytes().to_vec())
            }
            fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
                let b: [u8; std::mem::size_of::<$t>()] = bytes
                    .try_into()
                    .map_err(|_| format!("expected {} bytes, got {}", std::mem::size_of::<$t>(), bytes.len()))?;
                Ok(<$t>::from_be_bytes(b))
            }
        }
    )*};
}
int_payload!(u64, i64, u32, i32);

/// `None` is no bytes; `Some(v)` a byte 1 and `v`'s bytes.
impl<T: Payload> Payload for Option<T> {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        match self {
            None => Ok(Vec::new()),
            Some(v) => {
                let mut out = vec![1];
                out.extend(v.encode()?);
                Ok(out)
            }
        }
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match bytes.split_first() {
            None => Ok(None),
            Some((1, rest)) => Ok(Some(T::decode(rest)?)),
            Some((tag, _)) => Err(format!("bad option tag {tag}").into()),
        }
    }
}

/// The replicated state: every node applies the same entries in the same
/// order.
///
/// `apply` must be deterministic. An error from `apply` is reported to the
/// proposer and the node moves on (the entry stays committed); make `apply`
/// fail the same way on every node. Errors from `snapshot` and `restore` are
/// reported and retried later.
#[async_trait]
pub trait AbstractStateMachine<E: AbstractLogEntry>: Send + Sync + 'static {
    /// What applying an entry gives back to its proposer
    /// ([`Raft::propose`](crate::Raft::propose) returns it).
    type Output: Payload;

    /// Applies one committed entry; the output goes back to the proposer.
    async fn apply(&mut self, entry: E) -> Result<Self::Output, BoxError>;

    /// Applies the committed entry at log `index`. raftify calls this one;
    /// the default forwards to [`AbstractStateMachine::apply`]. Override it
    /// when the state machine needs the index (to return it to clients, or
    /// to make re-application after a restart idempotent).
    async fn apply_at(&mut self, index: u64, entry: E) -> Result<Self::Output, BoxError> {
        let _ = index;
        self.apply(entry).await
    }
    /// Serializes the whole state (for snapshots). Called in the raft loop,
    /// which waits meanwhile; see [`AbstractStateMachine::snapshot_view`]
    /// for large states.
    async fn snapshot(&self) -> Result<Vec<u8>, BoxError>;

    /// A frozen view of the state, serialized off the raft loop while apply
    /// goes on. raftify calls this, in the loop, when it takes a snapshot;
    /// the view's [`SnapshotView::write_to`] then runs on a blocking thread
    /// and must write what [`AbstractStateMachine::restore`] reads. Make it
    /// cheap: a clone of a persistent (structurally shared) map, an `Arc`
    /// of copy-on-write data, a database's read transaction.
    ///
    /// The default, `None`, uses [`AbstractStateMachine::snapshot`] in the
    /// loop: fine for small states, a pause of the whole node for large
    /// ones.
    fn snapshot_view(&self) -> Option<Box<dyn SnapshotView>> {
        None
    }

    /// About how many bytes the state holds, for operators
    /// ([`Status::state_bytes`](crate::Status::state_bytes)) and for
    /// placement (sharding grows the number of groups when they pass a
    /// size limit). Called in the raft loop: make it cheap (a running
    /// count). `None` (the default): not known.
    fn size_bytes(&self) -> Option<u64> {
        None
    }

    /// Replaces the whole state with a snapshot produced by `snapshot`.
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError>;

    /// Replaces the whole state with the snapshot read from `reader`.
    /// raftify calls this one, over the snapshot's bytes in place; the
    /// default reads them into a `Vec` and calls
    /// [`AbstractStateMachine::restore`]. Override it to build the state as
    /// it reads, so a large snapshot is not held twice (its bytes and a copy
    /// for `restore`) next to the state being built.
    async fn restore_from(
        &mut self,
        reader: &mut (dyn std::io::Read + Send),
    ) -> Result<(), BoxError> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes)?;
        self.restore(bytes).await
    }
}

/// A frozen copy of a state machine's state that can be serialized while
/// the state machine moves on (see [`AbstractStateMachine::snapshot_view`]).
///
/// ```
/// use raftify_core::{BoxError, SnapshotView};
/// use std::sync::Arc;
///
/// // A state shared behind an Arc: the view is one more reference.
/// struct View(Arc<Vec<(String, String)>>);
/// impl SnapshotView for View {
///     fn write_to(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), BoxError> {
///         out.extend_from_slice(&serde_json::to_vec(&*self.0)?);
///         Ok(())
///     }
/// }
/// let mut out = Vec::new();
/// Box::new(View(Arc::new(vec![("k".into(), "v".into())]))).write_to(&mut out).unwrap();
/// assert_eq!(out, br#"[["k","v"]]"#);
/// ```
pub trait SnapshotView: Send + 'static {
    /// Appends the snapshot's bytes — what
    /// [`AbstractStateMachine::restore`] reads — to `out`.
    fn write_to(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), BoxError>;

    /// Writes the same bytes as [`SnapshotView::write_to`] to `out` as they
    /// are produced. The node calls this one: with a store that keeps
    /// snapshots in files (raftify-storage), `out` is the snapshot file
    /// (buffered), so a state machine that overrides it never holds its
    /// serialized state in memory. Default: [`SnapshotView::write_to`]
    /// into a buffer, then the buffer to `out`.
    fn write_into(self: Box<Self>, out: &mut dyn std::io::Write) -> Result<(), BoxError> {
        let mut buf = Vec::new();
        self.write_to(&mut buf)?;
        out.write_all(&buf)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = v.encode().unwrap();
        assert_eq!(T::decode(&bytes).unwrap(), v);
    }

    #[test]
    fn payloads_round_trip_and_refuse_garbage() {
        round_trip(b"bytes".to_vec());
        round_trip("text".to_string());
        round_trip(());
        round_trip(true);
        round_trip(u64::MAX);
        round_trip(-7i64);
        round_trip(Some("x".to_string()));
        round_trip(None::<String>);
        round_trip(Some(Some(3u32)));
        assert!(String::decode(&[0xff]).is_err());
        assert!(<()>::decode(&[1]).is_err());
        assert!(bool::decode(&[2]).is_err());
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(Option::<u64>::decode(&[9]).is_err());
    }
}
