//! What handles ask of the loop, and how the loop answers.

use crate::error::{Error, Result};
use crate::status::Status;
use raft::eraftpb::ConfChangeV2;
use tokio::sync::oneshot;

/// What an applied entry produced, matched against the kind of proposal.
#[derive(Debug)]
pub(crate) enum Applied {
    Output(Vec<u8>),
    ConfChanged,
    NodeId(u64),
    SessionId(u64),
}

/// What a proposal is, so its apply result can be checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProposalKind {
    User,
    ConfChange,
    ReserveId,
    OpenSession,
}

/// Where the loop sends a command's answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests from handles to the loop.
pub(crate) enum Command {
    Propose {
        kind: ProposalKind,
        data: Vec<u8>,
        reply: Reply<Applied>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: Reply<Applied>,
    },
    ReadIndex {
        reply: Reply<u64>,
    },
    TransferLeader {
        to: u64,
        reply: Reply<()>,
    },
    Campaign {
        reply: Reply<()>,
    },
    /// A joining node takes on its cluster's identity (from its ticket).
    AdoptCluster {
        uid: u64,
        reply: Reply<()>,
    },
    Snapshot {
        reply: Reply<u64>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown,
}

impl Command {
    /// Answers a command the loop will never run (it is stopping).
    pub(crate) fn fail(self, err: Error) {
        match self {
            Command::Propose { reply, .. } | Command::ConfChange { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::ReadIndex { reply } | Command::Snapshot { reply } => {
                let _ = reply.send(Err(err));
            }
            Command::TransferLeader { reply, .. }
            | Command::Campaign { reply }
            | Command::AdoptCluster { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Status { .. } | Command::Shutdown => {}
        }
    }
}
