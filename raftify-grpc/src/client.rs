//! [`RaftClient`]: the application's way into a raftify cluster.

use crate::config::{backoff, GrpcConfig};
use crate::net::{perform, request, rpc_error, ChannelPool, Client};
use crate::pb;
use raftify_core::{
    ClusterRequest, ClusterResponse, Error, JoinTicket, Member, MembershipChange, Result, Status,
};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// The leader as a node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's id.
    pub id: u64,
    /// Its raft address, when known.
    pub addr: Option<String>,
}

/// A client of a raftify cluster over gRPC.
///
/// * Connections are pooled by address (one HTTP/2 connection each).
/// * Requests go to the last known leader; a node that is not the leader
///   forwards writes itself, and a `NotLeader` answer's hint is followed.
/// * Retryable failures (no leader yet, dropped proposals, overload, an
///   unreachable or stopping node) are retried on other nodes with jittered
///   exponential backoff until [`GrpcConfig::request_timeout`].
///
/// A proposal whose connection broke may have been applied: like every
/// raft client, make commands idempotent when that matters (see
/// [`raftify_core::Error`]).
pub struct RaftClient {
    addrs: Vec<String>,
    pool: ChannelPool,
    leader: Mutex<Option<String>>,
}

fn unexpected(resp: ClusterResponse) -> Error {
    Error::Transport(format!("unexpected response {resp:?}"))
}

fn retryable(e: &Error) -> bool {
    e.is_retryable() || matches!(e, Error::Transport(_) | Error::Shutdown)
}

impl RaftClient {
    /// A client of the cluster whose members (some of them) listen at
    /// `addrs`. Connects lazily.
    pub fn new<I, S>(addrs: I, config: GrpcConfig) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        if addrs.is_empty() {
            return Err(Error::InvalidArgument("no cluster address given".into()));
        }
        Ok(RaftClient {
            addrs,
            pool: ChannelPool::new(config)?,
            leader: Mutex::new(None),
        })
    }

    fn timeout(&self) -> Duration {
        self.pool.config().request_timeout
    }

    fn hint(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_hint(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Runs `op` against the leader (or any node), following hints and
    /// retrying retryable failures until the deadline.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let timeout = self.timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next = self.hint();
        let mut round = 0usize;
        let mut attempt = 0u32;
        let mut hops = 0u32;
        loop {
            let addr = match next.take() {
                Some(a) => a,
                None => {
                    round += 1;
                    self.addrs[(round - 1) % self.addrs.len()].clone()
                }
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = match self.pool.client(&addr) {
                Ok(client) => match tokio::time::timeout(remaining, op(client)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout(timeout)),
                },
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(v) => {
                    self.set_hint(Some(addr));
                    return Ok(v);
                }
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            match &err {
                Error::NotLeader {
                    leader_addr: Some(leader),
                    ..
                } if *leader != addr && hops < 3 => {
                    hops += 1;
                    self.set_hint(Some(leader.clone()));
                    next = Some(leader.clone());
                    continue;
                }
                e if retryable(e) => {
                    if self.hint().as_deref() == Some(addr.as_str()) {
                        self.set_hint(None);
                    }
                    hops = 0;
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(backoff(self.pool.config(), attempt).min(remaining)).await;
                    attempt = attempt.saturating_add(1);
                }
                _ => return Err(err),
            }
        }
    }

    async fn cluster(&self, req: ClusterRequest) -> Result<ClusterResponse> {
        let timeout = self.timeout();
        self.retry(|mut client| {
            let req = req.clone();
            async move { perform(&mut client, req, timeout, false).await }
        })
        .await
    }

    /// Proposes an encoded entry (through the leader) and returns the state
    /// machine's output.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        match self.cluster(ClusterRequest::Propose(data)).await? {
            ClusterResponse::Output(out) => Ok(out),
            other => Err(unexpected(other)),
        }
    }

    /// A linearizable read index confirmed by the leader.
    pub async fn read_index(&self) -> Result<u64> {
        match self.cluster(ClusterRequest::ReadIndex).await? {
            ClusterResponse::ReadIndex(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// A linearizable read on the node at `addr` (any member, followers
    /// included), answered by its server's [`ReadHandler`](crate::ReadHandler).
    pub async fn read_at(&self, addr: &str, query: Vec<u8>) -> Result<Vec<u8>> {
        let timeout = self.timeout();
        let mut client = self.pool.client(addr)?;
        let r = client
            .read(request(
                pb::ReadRequest {
                    query,
                    stale: false,
                },
                timeout,
                false,
            ))
            .await
            .map_err(|s| rpc_error(s, timeout))?;
        Ok(r.into_inner().data)
    }

    /// A local, possibly stale read on the node at `addr`: no read index is
    /// confirmed, so it answers even without a leader.
    pub async fn read_stale_at(&self, addr: &str, query: Vec<u8>) -> Result<Vec<u8>> {
        let timeout = self.timeout();
        let mut client = self.pool.client(addr)?;
        let r = client
            .read(request(
                pb::ReadRequest { query, stale: true },
                timeout,
                false,
            ))
            .await
            .map_err(|s| rpc_error(s, timeout))?;
        Ok(r.into_inner().data)
    }

    /// A linearizable read on whichever node answers (the leader first).
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        let timeout = self.timeout();
        self.retry(|mut client| {
            let query = query.clone();
            async move {
                let r = client
                    .read(request(
                        pb::ReadRequest {
                            query,
                            stale: false,
                        },
                        timeout,
                        false,
                    ))
                    .await
                    .map_err(|s| rpc_error(s, timeout))?;
                Ok(r.into_inner().data)
            }
        })
        .await
    }

    /// The current members, as the leader (or the first node that answers)
    /// sees them.
    pub async fn members(&self) -> Result<Vec<Member>> {
        match self.cluster(ClusterRequest::Members).await? {
            ClusterResponse::Members { members, .. } => Ok(members),
            other => Err(unexpected(other)),
        }
    }

    /// The leader, as the first node that answers knows it (None while an
    /// election is in progress).
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let timeout = self.timeout();
        let info = self
            .retry(|mut client| async move {
                let r = client
                    .get_leader(request(pb::Empty {}, timeout, false))
                    .await
                    .map_err(|s| rpc_error(s, timeout))?
                    .into_inner();
                Ok(r)
            })
            .await?;
        if info.leader_id == 0 {
            return Ok(None);
        }
        let addr = (!info.leader_addr.is_empty()).then_some(info.leader_addr);
        if addr.is_some() {
            self.set_hint(addr.clone());
        }
        Ok(Some(LeaderInfo {
            id: info.leader_id,
            addr,
        }))
    }

    /// The full status of the node at `addr`.
    pub async fn status(&self, addr: &str) -> Result<Status> {
        let timeout = self.timeout();
        let mut client = self.pool.client(addr)?;
        let r = client
            .status(request(pb::Empty {}, timeout, false))
            .await
            .map_err(|s| rpc_error(s, timeout))?
            .into_inner();
        serde_json::from_str(&r.status_json)
            .map_err(|e| Error::Transport(format!("malformed status from {addr}: {e}")))
    }

    /// Transfers leadership to node `to` and waits until it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        match self.cluster(ClusterRequest::TransferLeader(to)).await? {
            ClusterResponse::Done => {
                self.set_hint(None);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Applies membership changes atomically (joint consensus when several)
    /// and returns the members after them.
    pub async fn change_config(&self, changes: Vec<MembershipChange>) -> Result<Vec<Member>> {
        match self
            .cluster(ClusterRequest::ChangeMembership(changes))
            .await?
        {
            ClusterResponse::Members { members, .. } => Ok(members),
            other => Err(unexpected(other)),
        }
    }

    /// Reserves a node id for a node that will listen at `addr`.
    pub async fn request_id(&self, addr: &str) -> Result<JoinTicket> {
        let req = ClusterRequest::RequestId {
            addr: addr.to_string(),
        };
        match self.cluster(req).await? {
            ClusterResponse::Ticket(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// Takes a snapshot on the node at `addr`; returns its index.
    pub async fn snapshot(&self, addr: &str) -> Result<u64> {
        let timeout = self.timeout();
        let mut client = self.pool.client(addr)?;
        let r = client
            .create_snapshot(request(pb::Empty {}, timeout, false))
            .await
            .map_err(|s| rpc_error(s, timeout))?;
        Ok(r.into_inner().index)
    }

    /// Makes the node at `addr` leave its cluster (it hands leadership over
    /// first when it leads).
    pub async fn leave(&self, addr: &str) -> Result<()> {
        let timeout = self.timeout();
        let mut client = self.pool.client(addr)?;
        client
            .leave(request(pb::Empty {}, timeout, false))
            .await
            .map_err(|s| rpc_error(s, timeout))?;
        if self.hint().as_deref() == Some(addr) {
            self.set_hint(None);
        }
        Ok(())
    }
}
