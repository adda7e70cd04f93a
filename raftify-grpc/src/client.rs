//! [`RaftClient`]: the application's way into a raftify cluster.

use crate::config::GrpcConfig;
use crate::net::{request, rpc_error, ChannelPool, GrpcNode};
use crate::pb;
use raftify_core::retry::{seek_leader, Idempotence};
use raftify_core::{ClusterApi, Error, JoinTicket, Member, MembershipChange, Result, Status};
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
/// * Failures are retried by their [`ErrorClass`](raftify_core::ErrorClass)
///   through raftify-core's one retry loop ([`seek_leader`]) until
///   [`GrpcConfig::request_timeout`], with jittered exponential backoff
///   ([`GrpcConfig::backoff_base`] to [`GrpcConfig::backoff_max`]).
/// * A proposal whose outcome is unknown (the connection broke after it was
///   sent, a timeout, a leader change) is **not** sent again: it fails with
///   an `OutcomeUnknown` error, and the caller decides (read back, or make
///   the command idempotent). Reads and other idempotent requests are
///   retried.
pub struct RaftClient {
    addrs: Vec<String>,
    pool: ChannelPool,
    leader: Mutex<Option<String>>,
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

    /// The cluster API of the node at `addr` as a client sees it: a node
    /// that does not lead forwards writes to the leader itself.
    fn node(&self, addr: &str) -> Result<GrpcNode> {
        Ok(GrpcNode {
            client: self.pool.client(addr)?,
            timeout: self.timeout(),
            forwarded: false,
        })
    }

    /// Runs `op` against the last known leader (or any node), following
    /// hints and retrying what its error class allows until the deadline.
    async fn retry<T, F, Fut>(&self, idempotence: Idempotence, mut op: F) -> Result<T>
    where
        F: FnMut(GrpcNode) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let result = seek_leader(
            &self.addrs,
            self.hint(),
            &self.pool.config().retry_policy(),
            idempotence,
            |addr| {
                let call = self.node(&addr).map(&mut op);
                async move { call?.await }
            },
        )
        .await;
        match result {
            Ok((v, addr)) => {
                self.set_hint(Some(addr));
                Ok(v)
            }
            Err(e) => {
                self.set_hint(None);
                Err(e)
            }
        }
    }

    /// Proposes an encoded entry (through the leader) and returns the state
    /// machine's output. Not sent again once its outcome is unknown.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let data = &data;
        self.retry(Idempotence::NotIdempotent, |n| async move {
            n.propose(data.clone()).await
        })
        .await
    }

    /// A linearizable read index confirmed by the leader.
    pub async fn read_index(&self) -> Result<u64> {
        self.retry(
            Idempotence::Idempotent,
            |n| async move { n.read_index().await },
        )
        .await
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
        self.retry(Idempotence::Idempotent, |n| {
            let query = query.clone();
            let mut client = n.client;
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
        self.retry(
            Idempotence::Idempotent,
            |n| async move { n.members().await },
        )
        .await
        .map(|m| m.members)
    }

    /// The leader, as the first node that answers knows it (None while an
    /// election is in progress).
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let timeout = self.timeout();
        let info = self
            .retry(Idempotence::Idempotent, |n| async move {
                let mut client = n.client;
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
        self.retry(Idempotence::Idempotent, |n| async move {
            n.transfer_leader(to).await
        })
        .await?;
        self.set_hint(None);
        Ok(())
    }

    /// Applies membership changes atomically (joint consensus when several)
    /// and returns the members after them.
    pub async fn change_config(&self, changes: Vec<MembershipChange>) -> Result<Vec<Member>> {
        let changes = &changes;
        self.retry(Idempotence::NotIdempotent, |n| async move {
            n.change_membership(changes.clone()).await
        })
        .await
        .map(|m| m.members)
    }

    /// Reserves a node id for a node that will listen at `addr`.
    pub async fn request_id(&self, addr: &str) -> Result<JoinTicket> {
        // A reservation whose answer was lost only leaves an unused id.
        self.retry(Idempotence::Idempotent, |n| async move {
            n.request_id(addr.to_string()).await
        })
        .await
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
