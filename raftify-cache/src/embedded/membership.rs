//! Membership of a StatefulSet-style cluster (`HA_HOSTS`): all pods start
//! at once without a special first pod, a pod that comes back with an
//! empty volume rejoins, and scaling adds or removes voters through the
//! cluster.
//!
//! * **Start.** A node whose storage holds a log resumes it. One with
//!   empty storage asks the other members for their status first: if one
//!   of them follows a leader, the cluster exists and this node *rejoins*
//!   (it starts with no membership; the leader removes its old self, if
//!   it was a member, and adds it back as a new voter, which then receives
//!   a snapshot). Otherwise the cluster is being formed: every member
//!   bootstraps with the same list of `HA_HOSTS` and they elect a leader.
//!   A node that bootstraps while the cluster exists but has no leader
//!   (so none answered) and lost entries it had acknowledged is stopped by
//!   the core with an error; restarted (as Kubernetes does), it finds the
//!   leader and rejoins.
//! * **Scaling down.** The leader removes, one at a time, members whose ids
//!   are not in its `HA_HOSTS`, once that list was shortened (a rolling
//!   restart with the new list). A pod never removes itself on SIGTERM: a
//!   restart is not a departure.

use super::error::CacheError;
use raftify::{GrpcConfig, MembershipChange, RaftClient};
use raftify_core::Error;
use slog::{info, warn, Logger};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long a starting node asks the others whether a cluster exists.
const PROBE: Duration = Duration::from_secs(2);
/// How long a rejoining node keeps asking to be added back.
const REJOIN: Duration = Duration::from_secs(60);
/// How often the leader compares the members with its `HA_HOSTS`.
const RECONCILE: Duration = Duration::from_secs(2);

/// What a node with empty storage found among the other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No member follows a leader: form the cluster.
    Nothing,
    /// A running cluster; `member`: it still lists this node.
    Cluster { member: bool },
}

/// Asks every other member (at once, within [`PROBE`]) whether it follows
/// a leader.
pub(crate) async fn probe(members: &BTreeMap<u64, String>, me: u64, grpc: &GrpcConfig) -> Found {
    let mut grpc = grpc.clone();
    grpc.request_timeout = PROBE;
    grpc.connect_timeout = PROBE;
    let mut asks = tokio::task::JoinSet::new();
    for (_, addr) in members.iter().filter(|(id, _)| **id != me) {
        let Ok(c) = RaftClient::new([addr.clone()], grpc.clone()) else {
            continue;
        };
        let addr = addr.clone();
        asks.spawn(async move { c.status(&addr).await });
    }
    let deadline = Instant::now() + PROBE;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, asks.join_next()).await {
        if let Ok(Ok(st)) = answer {
            if st.leader_id != 0 {
                return Found::Cluster {
                    member: st.members.iter().any(|m| m.id == me),
                };
            }
        }
    }
    Found::Nothing
}

/// A membership change a node with empty storage asks of the others to
/// rejoin (see [`rejoin_steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejoin {
    /// Remove this node's old self: asked before the node starts, so that
    /// no leader treats the new, empty node as the old one (whose log it
    /// counted as replicated: its first heartbeat would commit past the
    /// empty log, which the node refuses as lost data).
    RemoveOld,
    /// Add the node back, as a new voter at `addr`, once it runs.
    AddBack,
}

/// Has the cluster make `step` for node `me` (at `addr`), retrying until
/// it is made (an unknown outcome is read back from the membership) or
/// [`REJOIN`] has passed.
pub(crate) async fn rejoin(
    members: &BTreeMap<u64, String>,
    me: u64,
    addr: &str,
    step: Rejoin,
    grpc: &GrpcConfig,
    logger: &Logger,
) -> Result<(), CacheError> {
    let c = RaftClient::new(
        members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, a)| a.clone()),
        grpc.clone(),
    )
    .map_err(|e| CacheError::Unavailable(e.to_string()))?;
    let deadline = Instant::now() + REJOIN;
    loop {
        let change = match step {
            Rejoin::RemoveOld => MembershipChange::Remove { id: me },
            Rejoin::AddBack => MembershipChange::AddVoter {
                id: me,
                addr: addr.to_string(),
            },
        };
        let e = match c.change_config(vec![change]).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let members_now = c.members().await.unwrap_or_default();
        let present = members_now.iter().any(|m| m.id == me);
        // A change whose outcome was unknown may have been made.
        match step {
            Rejoin::RemoveOld if !present && !members_now.is_empty() => return Ok(()),
            Rejoin::AddBack if present => return Ok(()),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(CacheError::Unavailable(format!(
                "could not rejoin the cluster within {REJOIN:?}: {e}"
            )));
        }
        warn!(logger, "rejoin step failed; retrying"; "error" => %e, "step" => ?step);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// On the leader, removes members whose ids are not in `members` (the
/// node's `HA_HOSTS`), one at a time, until the node stops.
pub(crate) async fn reconcile(
    node: raftify_core::Raft<crate::CacheEntry, crate::CacheState>,
    members: BTreeMap<u64, String>,
    logger: Logger,
) {
    loop {
        tokio::time::sleep(RECONCILE).await;
        if !node.handle().is_leader() {
            continue;
        }
        let Ok(status) = node.handle().status().await else {
            continue;
        };
        let Some(extra) = status
            .members
            .iter()
            .map(|m| m.id)
            .find(|id| !members.contains_key(id) && *id != node.handle().id())
        else {
            continue;
        };
        info!(logger, "removing a member no longer in HA_HOSTS"; "id" => extra);
        match node.handle().remove_node(extra).await {
            Ok(_) => {}
            Err(Error::Shutdown) => return,
            Err(e) => {
                warn!(logger, "removing a member failed; retrying"; "id" => extra, "error" => %e)
            }
        }
    }
}
