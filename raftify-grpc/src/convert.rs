//! Conversions between the wire messages and raftify-core's types.

use crate::pb;
use raftify_core::protobuf::Message as _;
use raftify_core::raft::eraftpb::Message;
use raftify_core::{
    Error, JoinTicket, Member, MemberRole, Membership, MembershipChange, Result, SessionWrite,
};

/// A session write and its entry, as sent.
pub(crate) fn session_write_to_pb(w: SessionWrite, data: Vec<u8>) -> pb::SessionProposeRequest {
    pb::SessionProposeRequest {
        session: w.session,
        seq: w.seq,
        acked: w.acked,
        data,
    }
}

/// A session write and its entry, as received.
pub(crate) fn session_write_from_pb(r: pb::SessionProposeRequest) -> (SessionWrite, Vec<u8>) {
    let w = SessionWrite {
        session: r.session,
        seq: r.seq,
        acked: r.acked,
    };
    (w, r.data)
}

pub(crate) fn encode_msg(m: &Message) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| Error::Encode(format!("raft message: {e}")))
}

pub(crate) fn decode_msg(bytes: &[u8]) -> Result<Message> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Error::InvalidArgument(format!("malformed raft message: {e}")))
}

pub(crate) fn change_to_pb(c: &MembershipChange) -> pb::Change {
    let (kind, id, addr) = match c {
        MembershipChange::AddVoter { id, addr } => (pb::ChangeKind::AddVoter, *id, addr.clone()),
        MembershipChange::AddLearner { id, addr } => {
            (pb::ChangeKind::AddLearner, *id, addr.clone())
        }
        MembershipChange::Remove { id } => (pb::ChangeKind::Remove, *id, String::new()),
    };
    pb::Change {
        kind: kind as i32,
        id,
        addr,
    }
}

pub(crate) fn change_from_pb(c: &pb::Change) -> Result<MembershipChange> {
    match pb::ChangeKind::try_from(c.kind) {
        Ok(pb::ChangeKind::AddVoter) => Ok(MembershipChange::AddVoter {
            id: c.id,
            addr: c.addr.clone(),
        }),
        Ok(pb::ChangeKind::AddLearner) => Ok(MembershipChange::AddLearner {
            id: c.id,
            addr: c.addr.clone(),
        }),
        Ok(pb::ChangeKind::Remove) => Ok(MembershipChange::Remove { id: c.id }),
        _ => Err(Error::InvalidArgument(format!(
            "unknown membership change kind {}",
            c.kind
        ))),
    }
}

pub(crate) fn member_to_pb(m: &Member) -> pb::Member {
    pb::Member {
        id: m.id,
        addr: m.addr.clone().unwrap_or_default(),
        role: match m.role {
            MemberRole::Voter => pb::MemberRole::Voter as i32,
            MemberRole::Learner => pb::MemberRole::Learner as i32,
        },
    }
}

pub(crate) fn member_from_pb(m: &pb::Member) -> Member {
    Member {
        id: m.id,
        addr: (!m.addr.is_empty()).then(|| m.addr.clone()),
        role: if m.role == pb::MemberRole::Learner as i32 {
            MemberRole::Learner
        } else {
            MemberRole::Voter
        },
    }
}

pub(crate) fn members_to_pb(m: &Membership) -> pb::MembersReply {
    pb::MembersReply {
        leader_id: m.leader_id,
        members: m.members.iter().map(member_to_pb).collect(),
        node_id: m.node_id,
        cluster_uid: m.cluster_uid,
    }
}

pub(crate) fn members_from_pb(r: &pb::MembersReply) -> Membership {
    Membership {
        leader_id: r.leader_id,
        members: r.members.iter().map(member_from_pb).collect(),
        node_id: r.node_id,
        cluster_uid: r.cluster_uid,
    }
}

pub(crate) fn ticket_to_pb(t: &JoinTicket) -> pb::JoinTicketReply {
    pb::JoinTicketReply {
        reserved_id: t.reserved_id,
        cluster_id: t.cluster_id.clone(),
        leader_id: t.leader_id,
        peers: t.peers.iter().map(|(k, v)| (*k, v.clone())).collect(),
        cluster_uid: t.cluster_uid,
    }
}

pub(crate) fn ticket_from_pb(t: pb::JoinTicketReply) -> JoinTicket {
    JoinTicket {
        reserved_id: t.reserved_id,
        cluster_id: t.cluster_id,
        leader_id: t.leader_id,
        peers: t.peers.into_iter().collect(),
        cluster_uid: t.cluster_uid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_members_and_tickets_roundtrip() {
        for c in [
            MembershipChange::AddVoter {
                id: 2,
                addr: "a:1".into(),
            },
            MembershipChange::AddLearner {
                id: 3,
                addr: "b:2".into(),
            },
            MembershipChange::Remove { id: 4 },
        ] {
            assert_eq!(change_from_pb(&change_to_pb(&c)).unwrap(), c);
        }
        assert!(change_from_pb(&pb::Change {
            kind: 99,
            id: 1,
            addr: String::new()
        })
        .is_err());
        let m = Member {
            id: 5,
            addr: None,
            role: MemberRole::Learner,
        };
        assert_eq!(member_from_pb(&member_to_pb(&m)), m);
        let t = JoinTicket {
            reserved_id: 4,
            cluster_id: "c".into(),
            leader_id: 1,
            peers: [(1, "x:1".to_string())].into_iter().collect(),
            cluster_uid: 0xfeed,
        };
        assert_eq!(ticket_from_pb(ticket_to_pb(&t)), t);
        assert!(decode_msg(b"\xff\xff\xff garbage").is_err());
    }
}
