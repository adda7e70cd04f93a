//! Membership administration on a [`RaftHandle`]: changes, joins,
//! leaving, leadership transfers and id reservations. Each runs on the
//! leader (`on_leader` in `forward.rs`); the `*_here` halves are what the
//! leader itself does, and what `inbound.rs` runs for a peer's request.

use super::RaftHandle;
use crate::codec::TAG_RESERVE_ID;
use crate::error::{Error, Rejection, Result};
use crate::membership::{
    build_conf_change, refuse_move, validate_addr, JoinTicket, Member, MembershipChange,
};
use crate::raft_loop::{Applied, Command, ProposalKind};
use crate::retry::Idempotence;
use crate::status::{Role, Status};
use crate::transport::{call_cluster, Membership};
use std::time::Duration;

/// Longest wait for a new member's address to answer before it is added.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl RaftHandle {
    /// Changes the membership, from any node (a follower sends it to the
    /// leader); several changes are applied atomically with joint
    /// consensus. Returns the members once the change is applied on the
    /// node that made it.
    pub async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Vec<Member>> {
        let changes = &changes;
        self.on_leader(
            Idempotence::NotIdempotent,
            |h| async move { h.change_membership_here(changes.clone()).await },
            |addr| async move { self.remote(&addr)?.change_membership(changes.clone()).await },
        )
        .await
        .map(|m| m.members)
    }

    /// Adds a voter, or promotes a learner (shorthand for
    /// [`RaftHandle::change_membership`]).
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<Vec<Member>> {
        let addr = addr.to_string();
        self.change_membership(vec![MembershipChange::AddVoter { id, addr }])
            .await
    }

    /// Adds a learner (shorthand for [`RaftHandle::change_membership`]).
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<Vec<Member>> {
        let addr = addr.to_string();
        self.change_membership(vec![MembershipChange::AddLearner { id, addr }])
            .await
    }

    /// Promotes a learner to voter, keeping its known address.
    pub async fn promote_learner(&self, id: u64) -> Result<Vec<Member>> {
        let status = self.status().await?;
        let member = status
            .members
            .iter()
            .find(|m| m.id == id)
            .ok_or(Error::NotAMember(id))?;
        let addr = member
            .addr
            .clone()
            .ok_or_else(|| Error::InvalidArgument(format!("node {id} has no known address")))?;
        self.add_voter(id, &addr).await
    }

    /// Removes a voter or learner (shorthand for
    /// [`RaftHandle::change_membership`]).
    pub async fn remove_node(&self, id: u64) -> Result<Vec<Member>> {
        self.change_membership(vec![MembershipChange::Remove { id }])
            .await
    }

    /// The members and the leader as this node knows them.
    pub async fn members(&self) -> Result<Membership> {
        let status = self.status().await?;
        Ok(Membership {
            leader_id: status.leader_id,
            members: status.members,
            node_id: self.id(),
            cluster_uid: status.cluster_uid,
        })
    }

    /// What the leader does with a membership change: a change that removes
    /// or demotes this leader first hands leadership to a voter the change
    /// keeps, and lets it make the change.
    pub(crate) async fn change_membership_here(
        &self,
        changes: Vec<MembershipChange>,
    ) -> Result<Membership> {
        let me = self.id();
        // A move is refused before anything else happens (a hand-over of
        // leadership, a question to the new address); the loop checks again.
        let status = self.status().await?;
        let known = &status.members;
        for change in &changes {
            if let MembershipChange::AddVoter { id, addr }
            | MembershipChange::AddLearner { id, addr } = change
            {
                if let Some(at) = known
                    .iter()
                    .find(|m| m.id == *id)
                    .and_then(|m| m.addr.as_deref())
                {
                    refuse_move(*id, at, addr)?;
                }
            }
        }
        let leaving: Vec<u64> = changes
            .iter()
            .filter_map(|c| match c {
                MembershipChange::Remove { id } | MembershipChange::AddLearner { id, .. } => {
                    Some(*id)
                }
                MembershipChange::AddVoter { .. } => None,
            })
            .collect();
        if leaving.contains(&me) && self.is_leader() {
            self.hand_over_leadership(&leaving).await?;
            let addr = self.state().leader_addr.ok_or(Error::NoLeader)?;
            return self.remote(&addr)?.change_membership(changes).await;
        }
        let cc = build_conf_change(&changes)?;
        self.probe_new_members(&changes, &status).await?;
        let timeout = self.config().conf_change_timeout;
        self.call(timeout, |reply| Command::ConfChange { cc, reply })
            .await?;
        self.members().await
    }

    /// Before a node is added, its address must answer as that node, of
    /// this cluster or of none yet: a typo, another cluster's node or a
    /// stranger's listener is not made a member (and gets no more traffic
    /// than this one question). Members already known are not asked (their
    /// address cannot change). A process of a sharded deployment that does
    /// not host this group yet ([`Error::NoSuchGroup`]) passes: its replica
    /// is created on the first message from this group's leader.
    async fn probe_new_members(&self, changes: &[MembershipChange], status: &Status) -> Result<()> {
        let mine = status.cluster_uid;
        let timeout = self.config().conf_change_timeout.min(PROBE_TIMEOUT);
        for change in changes {
            let (id, addr) = match change {
                MembershipChange::AddVoter { id, addr }
                | MembershipChange::AddLearner { id, addr } => (*id, addr),
                MembershipChange::Remove { .. } => continue,
            };
            // A member's id or address: the loop refuses or accepts it
            // without asking anyone.
            if status
                .members
                .iter()
                .any(|m| m.id == id || m.addr.as_deref() == Some(addr))
            {
                continue;
            }
            let refuse = |why: String| {
                Error::ConfChangeRejected(Rejection::Invalid(format!(
                    "node {id} cannot be added at {addr}: {why}"
                )))
            };
            let asked = tokio::time::timeout(timeout, async {
                self.transport().node(addr)?.members().await
            })
            .await;
            let answer = match asked {
                Ok(Ok(answer)) => answer,
                // A process that hosts many groups and no replica of this
                // one yet: it creates the replica when this group's leader
                // first sends to it (if its placement says so).
                Ok(Err(Error::NoSuchGroup(_))) => continue,
                Ok(Err(e)) => {
                    return Err(refuse(format!(
                        "it did not answer as a node of this cluster ({e}); check the address, \
                         and start the node before adding it"
                    )))
                }
                Err(_) => {
                    return Err(refuse(format!(
                        "it did not answer within {timeout:?}; check the address, and start \
                         the node before adding it"
                    )))
                }
            };
            if answer.node_id != id {
                return Err(refuse(format!(
                    "that address answers as node {}",
                    answer.node_id
                )));
            }
            if answer.cluster_uid != 0 && answer.cluster_uid != mine {
                return Err(refuse(format!(
                    "that node belongs to cluster {:016x}, this one is {mine:016x}",
                    answer.cluster_uid
                )));
            }
        }
        Ok(())
    }

    /// Transfers leadership to `to` and waits until it leads; from any node
    /// (a follower sends it to the leader). When another node wins the
    /// election the transfer started, it is asked once more. A leader takes
    /// one transfer at a time, and only after it has led for an election
    /// timeout (so leadership cannot flap faster than elections): until
    /// then the request waits its turn, up to the membership timeout —
    /// also through the elections other transfers cause (a moment with no
    /// leader is waited out, not answered with `NoLeader`).
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        let config = self.config();
        let deadline = crate::retry::deadline_after(config.conf_change_timeout);
        let mut asked_again = false;
        loop {
            match self.transfer_leader_once(to).await {
                Err(Error::TransferFailed { .. }) if !asked_again => asked_again = true,
                Err(Error::ProposalDropped(_) | Error::NoLeader)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(config.tick_interval).await
                }
                other => return other,
            }
        }
    }

    async fn transfer_leader_once(&self, to: u64) -> Result<()> {
        self.on_leader(
            Idempotence::Idempotent,
            |h| async move { h.transfer_leader_here(to).await },
            |addr| async move { self.remote(&addr)?.transfer_leader(to).await },
        )
        .await
    }

    pub(crate) async fn transfer_leader_here(&self, to: u64) -> Result<()> {
        let timeout = self.config().conf_change_timeout;
        self.call(timeout, |reply| Command::TransferLeader { to, reply })
            .await
    }

    /// Reserves a node id through the log and returns a join ticket for the
    /// node at `addr`; from any node (a follower asks the leader).
    pub async fn request_id(&self, addr: &str) -> Result<JoinTicket> {
        let addr = &addr.to_string();
        self.on_leader(
            Idempotence::Idempotent,
            |h| async move { h.request_id_here(addr).await },
            |leader| async move { self.remote(&leader)?.request_id(addr.clone()).await },
        )
        .await
    }

    pub(crate) async fn request_id_here(&self, addr: &str) -> Result<JoinTicket> {
        validate_addr(addr)?;
        // A member's address: that member is being started again with
        // --join (no id is reserved for it).
        let status = self.status().await?;
        if let Some(m) = status
            .members
            .iter()
            .find(|m| m.addr.as_deref() == Some(addr))
        {
            return Err(Error::ConfChangeRejected(Rejection::Invalid(format!(
                "{addr} is the address of member {id}; restart node {id} with its data dir \
                 (memstore: --id {id} and its --data-dir) instead of joining it again",
                id = m.id
            ))));
        }
        let applied = self
            .propose_internal(ProposalKind::ReserveId, vec![TAG_RESERVE_ID])
            .await?;
        let Applied::NodeId(reserved_id) = applied else {
            return Err(Error::Raft(format!("unexpected apply result {applied:?}")));
        };
        // The members as they were before the reservation: reserving an id
        // changes none of them.
        Ok(JoinTicket {
            reserved_id,
            cluster_uid: status.cluster_uid,
            cluster_id: self.config().cluster_id.clone(),
            leader_id: self.id(),
            peers: status
                .members
                .iter()
                .filter_map(|m| m.addr.clone().map(|a| (m.id, a)))
                .collect(),
        })
    }

    /// Joins the cluster of `ticket`: asks its leader to add this node (whose
    /// id must be the ticket's) at `self_addr`, as a voter or a learner, and
    /// waits until this node has applied the change that adds it — from then
    /// on it knows its leader's address and can forward requests.
    pub async fn join_cluster(
        &self,
        ticket: &JoinTicket,
        self_addr: &str,
        as_learner: bool,
    ) -> Result<Vec<Member>> {
        let config = self.config();
        if ticket.cluster_id != config.cluster_id {
            return Err(Error::InvalidArgument(format!(
                "the ticket is for cluster {:?}, this node belongs to {:?}",
                ticket.cluster_id, config.cluster_id
            )));
        }
        if ticket.reserved_id != config.id {
            return Err(Error::InvalidArgument(format!(
                "the ticket reserved id {}, this node has id {}",
                ticket.reserved_id, config.id
            )));
        }
        if ticket.cluster_uid != 0 {
            // From now on this node talks only with the ticket's cluster.
            self.call(config.conf_change_timeout, |reply| Command::AdoptCluster {
                uid: ticket.cluster_uid,
                reply,
            })
            .await?;
        }
        let (id, addr) = (config.id, self_addr.to_string());
        let change = if as_learner {
            MembershipChange::AddLearner { id, addr }
        } else {
            MembershipChange::AddVoter { id, addr }
        };
        // The issuing leader first, then the other members.
        let mut addrs: Vec<String> = ticket
            .peers
            .get(&ticket.leader_id)
            .cloned()
            .into_iter()
            .collect();
        for a in ticket.peers.values() {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        let timeout = config.conf_change_timeout;
        // Adding the same node at the same address twice changes nothing.
        call_cluster(
            self.transport().as_ref(),
            &addrs,
            timeout,
            Idempotence::Idempotent,
            |node| {
                let change = change.clone();
                async move { node.change_membership(vec![change]).await }
            },
        )
        .await?;
        self.wait_until_member(timeout).await
    }

    /// Waits until this node's own configuration lists it.
    async fn wait_until_member(&self, timeout: Duration) -> Result<Vec<Member>> {
        let deadline = crate::retry::deadline_after(timeout);
        let mut changes = self.subscribe();
        loop {
            let status = self.status().await?;
            if status.members.iter().any(|m| m.id == self.id()) {
                return Ok(status.members);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.closed_error()),
                Err(_) => return Err(Error::Timeout(timeout)),
            }
        }
    }

    /// Transfers leadership from this node (the leader) to the voter with
    /// the most replicated log, and waits until a leader other than this node
    /// is known. `avoid`: nodes that must not take over (those a pending
    /// change removes or demotes), so leadership never bounces between them.
    async fn hand_over_leadership(&self, avoid: &[u64]) -> Result<()> {
        let id = self.id();
        let timeout = self.config().conf_change_timeout;
        let deadline = crate::retry::deadline_after(timeout);
        while self.is_leader() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            let status = self.status().await?;
            if status.role != Role::Leader {
                // Stepped down between the two looks (a transfer asked by an
                // earlier round completed): progress is only known to a leader.
                break;
            }
            let voters = status.voters();
            let target = status
                .progress
                .iter()
                .filter(|(pid, _)| **pid != id && voters.contains(pid) && !avoid.contains(pid))
                .max_by_key(|(_, p)| p.matched)
                .map(|(pid, _)| *pid)
                .ok_or(Error::ConfChangeRejected(Rejection::NoSuccessor))?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let asked = self
                .call(remaining, |reply| Command::TransferLeader {
                    to: target,
                    reply,
                })
                .await;
            if let Err(Error::ProposalDropped(_)) = asked {
                // Another transfer, or this leader's minimum tenure: wait.
                tokio::time::sleep(self.config().tick_interval).await;
            }
        }
        // Wait until the new leader is known, so the request can follow it.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_for_leader_other_than(id, remaining)
            .await
            .map(|_| ())
    }

    /// Leaves the cluster: hands leadership over first if this node leads,
    /// then has the leader remove it. The last voter cannot leave.
    pub async fn leave(&self) -> Result<()> {
        let id = self.id();
        let timeout = self.config().conf_change_timeout;
        let deadline = crate::retry::deadline_after(timeout);
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            let status = self.status().await?;
            if !status.members.iter().any(|m| m.id == id) {
                return Ok(());
            }
            if status.role == Role::Leader {
                match self.hand_over_leadership(&[id]).await {
                    Err(Error::ConfChangeRejected(Rejection::NoSuccessor)) => {
                        return Err(Error::InvalidArgument(
                            "the last voter cannot leave its cluster".into(),
                        ))
                    }
                    // Retried until the deadline.
                    _ => continue,
                }
            }
            match self.remove_node(id).await {
                Ok(_) => return Ok(()),
                // An earlier attempt whose answer was lost already removed it.
                Err(Error::NotAMember(_)) => return Ok(()),
                Err(e) if e.class().may_retry(true) => {
                    self.wait_for_leader(Duration::from_millis(200)).await.ok();
                    tokio::time::sleep(self.config().tick_interval).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
