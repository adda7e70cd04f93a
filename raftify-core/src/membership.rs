//! Membership: who is in the cluster, and how it changes.

use crate::codec::ConfChangeContext;
use crate::error::{Error, Rejection, Result};
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One membership change. Several are applied atomically through joint
/// consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter {
        /// Node id.
        id: u64,
        /// Its raft address (`host:port`).
        addr: String,
    },
    /// Add a learner (receives the log, does not vote), or demote a voter
    /// (needs joint consensus: pass it with another change).
    AddLearner {
        /// Node id.
        id: u64,
        /// Its raft address (`host:port`).
        addr: String,
    },
    /// Remove a voter or learner.
    Remove {
        /// Node id.
        id: u64,
    },
}

impl MembershipChange {
    /// The node the change is about.
    pub fn id(&self) -> u64 {
        match self {
            MembershipChange::AddVoter { id, .. }
            | MembershipChange::AddLearner { id, .. }
            | MembershipChange::Remove { id } => *id,
        }
    }
}

/// A member as seen in the current configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Raft address, when known.
    pub addr: Option<String>,
    /// Voter or learner.
    pub role: MemberRole,
}

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Counts for quorums.
    Voter,
    /// Receives the log, does not vote.
    Learner,
}

impl MemberRole {
    /// `"voter"` or `"learner"` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// What a node needs to join a cluster: a node id reserved through the
/// log (unique even across leader changes) and the current members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    /// The id reserved for the joining node.
    pub reserved_id: u64,
    /// The cluster the ticket is for.
    pub cluster_id: String,
    /// The leader that issued the ticket.
    pub leader_id: u64,
    /// Current members and their addresses.
    pub peers: BTreeMap<u64, String>,
    /// The cluster's identity (see [`crate::codec::ClusterMeta::cluster_uid`]);
    /// the joining node adopts it and refuses traffic from other clusters
    /// from the start. 0: unknown (a ticket from an older node).
    #[serde(default)]
    pub cluster_uid: u64,
}

/// Checks that `addr` looks like `host:port` (a hostname or IP, and a port).
pub fn validate_addr(addr: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("address {addr:?}: {why}")));
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("expected host:port");
    };
    if host.is_empty() {
        return bad("empty host");
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return bad("invalid host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("port must be 1-65535"),
    }
}

/// Refuses to move member `id`, known at `known`, to `addr`: a typo, or an
/// attacker's listener, would then receive the cluster's traffic and
/// credentials. Remove the member, then add it with the new address.
pub(crate) fn refuse_move(id: u64, known: &str, addr: &str) -> Result<()> {
    if known == addr {
        return Ok(());
    }
    Err(Error::ConfChangeRejected(Rejection::Invalid(format!(
        "node {id} is a member at {known}; it cannot move to {addr}: remove it, then add it \
         with the new address"
    ))))
}

/// Checks a list of changes on its own (ids, addresses, duplicates) and
/// builds the ConfChangeV2 with the addresses in its context.
pub(crate) fn build_conf_change(changes: &[MembershipChange]) -> Result<ConfChangeV2> {
    if changes.is_empty() {
        return Err(Error::InvalidArgument("no membership change given".into()));
    }
    let mut seen = BTreeSet::new();
    let mut ctx = ConfChangeContext::default();
    let mut cc = ConfChangeV2::default();
    for change in changes {
        let id = change.id();
        if id == 0 {
            return Err(Error::InvalidArgument("node id 0 is reserved".into()));
        }
        if !seen.insert(id) {
            return Err(Error::InvalidArgument(format!(
                "node {id} appears more than once in one membership change"
            )));
        }
        let mut single = ConfChangeSingle::default();
        single.node_id = id;
        match change {
            MembershipChange::AddVoter { addr, .. } => {
                validate_addr(addr)?;
                ctx.addrs.insert(id, addr.clone());
                single.set_change_type(ConfChangeType::AddNode);
            }
            MembershipChange::AddLearner { addr, .. } => {
                validate_addr(addr)?;
                ctx.addrs.insert(id, addr.clone());
                single.set_change_type(ConfChangeType::AddLearnerNode);
            }
            MembershipChange::Remove { .. } => {
                single.set_change_type(ConfChangeType::RemoveNode);
            }
        }
        cc.changes.push(single);
    }
    // One change: a simple change. Several: joint consensus, left automatically.
    cc.set_transition(ConfChangeTransition::Auto);
    cc.context = ctx.encode().into();
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_validated() {
        validate_addr("127.0.0.1:60061").unwrap();
        validate_addr("node-1.raft.svc:7000").unwrap();
        validate_addr("[::1]:7000").unwrap();
        for bad in ["", "host", ":80", "host:", "host:0", "host:99999", "a b:1"] {
            assert!(validate_addr(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn conf_changes_reject_duplicates_zero_ids_and_bad_addresses() {
        let add = |id| MembershipChange::AddVoter {
            id,
            addr: "127.0.0.1:1".into(),
        };
        assert!(build_conf_change(&[]).is_err());
        assert!(build_conf_change(&[add(0)]).is_err());
        assert!(build_conf_change(&[add(2), MembershipChange::Remove { id: 2 }]).is_err());
        assert!(build_conf_change(&[MembershipChange::AddLearner {
            id: 3,
            addr: "nope".into()
        }])
        .is_err());
        let cc = build_conf_change(&[add(2), MembershipChange::Remove { id: 3 }]).unwrap();
        assert_eq!(cc.changes.len(), 2);
        let ctx = ConfChangeContext::decode(&cc.context).unwrap();
        assert_eq!(ctx.addrs.get(&2).map(String::as_str), Some("127.0.0.1:1"));
    }
}
