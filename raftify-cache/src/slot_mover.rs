//! [`CacheSlotMover`]: moves the keys of hash slots between the cache
//! groups of a sharded deployment (the [`raftify_shard::SlotMover`] of
//! the cache), with the steps of [`crate::migrate`].

use crate::migrate::Migrate;
use crate::{CacheEntry, Op, Reply};
use async_trait::async_trait;
use raftify_core::retry::Idempotence;
use raftify_core::{call_cluster, unix_ms, AbstractLogEntry, BoxError, Payload};
use raftify_grpc::RaftClient;
use raftify_shard::{GroupId, GroupTransport, SlotMover, SlotRange};
use std::time::Duration;

/// How long one step may take, elections included.
const STEP: Duration = Duration::from_secs(30);

/// Moves a range's keys in chunks of [`CacheSlotMover::chunk`] slots: each
/// chunk frozen in the source (its writes refused from then on, its items
/// the freeze's reply), imported in the target, then handed (the source
/// answers `-ASK` for it from then on, so a chunk's writes are refused
/// only for the time of those three steps); after the placement gives the
/// range to the target, dropped from the source. Every step is safe to
/// send again (a handed chunk is not exported again), so a move
/// interrupted anywhere is finished by running it again.
#[derive(Debug, Clone)]
pub struct CacheSlotMover {
    /// Slots per freeze/import round: bounds one reply's size (the items
    /// of that many slots).
    pub chunk: u16,
}

impl Default for CacheSlotMover {
    fn default() -> Self {
        CacheSlotMover { chunk: 256 }
    }
}

/// Proposes one step of a move to a group (`group`: its id and its
/// replicas' raft addresses), through its leader, sent again after an
/// unknown outcome (every step is safe to repeat); its reply, an error
/// reply as an error.
pub async fn migrate_step(
    transport: &dyn GroupTransport,
    group: &(GroupId, Vec<String>),
    m: Migrate,
) -> Result<Reply, BoxError> {
    let entry = CacheEntry {
        clock_ms: unix_ms(),
        op: Op::Migrate(m),
    }
    .encode()?;
    let t = transport.group(group.0);
    // Every step is idempotent (see the type's docs).
    let out = call_cluster(t.as_ref(), &group.1, STEP, Idempotence::Idempotent, |n| {
        let e = entry.clone();
        async move { n.propose(e).await }
    })
    .await?;
    match <Reply as Payload>::decode(&out)? {
        Reply::Error(e) => Err(format!("group {}: {e}", group.0).into()),
        r => Ok(r),
    }
}

#[async_trait]
impl SlotMover for CacheSlotMover {
    async fn copy(
        &self,
        transport: &dyn GroupTransport,
        from: (GroupId, Vec<String>),
        to: (GroupId, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError> {
        let chunk = self.chunk.max(1);
        let mut start = slots.start;
        loop {
            let end = start.saturating_add(chunk - 1).min(slots.end);
            let parts = match migrate_step(transport, &from, Migrate::Freeze { start, end }).await?
            {
                // One import entry's worth, or several (a large export).
                Reply::Bulk(items) => vec![items],
                Reply::Array(parts) => parts
                    .into_iter()
                    .map(|p| match p {
                        Reply::Bulk(items) => Ok(items),
                        other => Err(format!("a freeze answered a part {other:?}")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                // Handed by an earlier run of this move.
                Reply::Simple(s) if s == "HANDED" => Vec::new(),
                other => return Err(format!("a freeze answered {other:?}").into()),
            };
            if !parts.is_empty() {
                // Even with no items: the target accepts these slots (from
                // `ASKING` clients) from now on.
                for items in parts {
                    migrate_step(transport, &to, Migrate::Import { start, end, items }).await?;
                }
                migrate_step(transport, &from, Migrate::Hand { start, end }).await?;
            }
            if end == slots.end {
                return Ok(());
            }
            start = end + 1;
        }
    }

    async fn purge(
        &self,
        transport: &dyn GroupTransport,
        from: (GroupId, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError> {
        let drop = Migrate::Drop {
            start: slots.start,
            end: slots.end,
        };
        migrate_step(transport, &from, drop).await.map(|_| ())
    }

    async fn weigh(
        &self,
        client: &RaftClient,
        leader: &str,
    ) -> Result<Option<Vec<(u16, u64)>>, BoxError> {
        let query = CacheEntry {
            clock_ms: 0,
            op: Op::Migrate(Migrate::Weigh {
                start: 0,
                end: raftify_shard::SLOTS - 1,
            }),
        }
        .encode()?;
        let out = client.read_stale_at(leader, query).await?;
        match <Reply as Payload>::decode(&out)? {
            Reply::Bulk(b) => Ok(Some(crate::migrate::decode_weights(&b)?)),
            Reply::Error(e) => Err(e.into()),
            other => Err(format!("a weighing answered {other:?}").into()),
        }
    }
}
