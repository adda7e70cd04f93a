//! [`RaftClient`]: the application's way into a raftify cluster, through
//! the nodes' client service.

use crate::config::GrpcConfig;
use crate::convert::{change_to_pb, members_from_pb, session_write_to_pb, ticket_from_pb};
use crate::net::{request, rpc, ApiClient, ChannelPool, Credential};
use crate::pb;
use raftify_core::retry::{seek_leader, Idempotence};
use raftify_core::{
    Error, JoinTicket, LazySession, Member, MembershipChange, Result, Session, SessionTarget,
    SessionWrite, Status,
};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The leader as a node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's id.
    pub id: u64,
    /// Its raft address, when known.
    pub addr: Option<String>,
}

/// A client of a raftify cluster over gRPC, authenticated with the client
/// token ([`GrpcConfig::auth_token`]).
///
/// * Connections are pooled by address (one HTTP/2 connection each).
/// * Requests go to the last known leader; a node that is not the leader
///   forwards writes itself, and a `NotLeader` answer's hint is followed.
/// * Failures are retried by their [`ErrorClass`](raftify_core::ErrorClass)
///   through raftify-core's one retry loop ([`seek_leader`]) until
///   [`GrpcConfig::request_timeout`], with jittered exponential backoff
///   ([`GrpcConfig::backoff_base`] to [`GrpcConfig::backoff_max`]).
/// * [`RaftClient::propose`] writes in the client's own session (opened on
///   its first write; see [`raftify_core::client_session`]): a proposal
///   whose outcome is unknown (the connection broke after it was sent, a
///   timeout, a leader change) is sent again with the same number, and
///   applied once. With [`GrpcConfig::client_session`] off it is **not**
///   sent again: it fails with an `OutcomeUnknown` error, and the caller
///   decides (read back, or make the command idempotent). Reads and other
///   idempotent requests are retried.
pub struct RaftClient {
    addrs: Vec<String>,
    pool: ChannelPool,
    leader: Mutex<Option<String>>,
    session: LazySession,
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
            pool: ChannelPool::new(config, Credential::Client)?,
            leader: Mutex::new(None),
            session: LazySession::new(),
        })
    }

    /// A client of Raft group `group` of a sharded deployment (whose
    /// processes serve many groups, see [`Groups`](crate::Groups)) at the
    /// same addresses, sharing this client's connections: every call names
    /// the group. Its leader hint and session are its own (sessions belong
    /// to one group's log). Group 0 is what [`RaftClient::new`] talks to.
    pub fn for_group(&self, group: u64) -> Self {
        RaftClient {
            addrs: self.addrs.clone(),
            pool: self.pool.for_group(group),
            leader: Mutex::new(None),
            session: LazySession::new(),
        }
    }

    fn timeout(&self) -> Duration {
        self.pool.config().request_timeout
    }

    /// The settings this client was made with.
    pub(crate) fn config(&self) -> &GrpcConfig {
        self.pool.config()
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

    /// Runs `op` on the client service of the last known leader (or any
    /// node), following hints and retrying what its error class allows
    /// until the deadline.
    async fn retry<T, F, Fut>(&self, idempotence: Idempotence, mut op: F) -> Result<T>
    where
        F: FnMut(ApiClient) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let policy = self.pool.config().retry_policy();
        let result = seek_leader(&self.addrs, self.hint(), &policy, idempotence, |addr| {
            let call = self.pool.api(&addr).map(&mut op);
            async move { call?.await }
        })
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

    /// One RPC on the node at `addr`, not retried.
    pub(crate) async fn at<T, F, Fut>(&self, addr: &str, op: F) -> Result<T>
    where
        F: FnOnce(ApiClient) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        op(self.pool.api(addr)?).await
    }

    /// Proposes an encoded entry (through the leader) and returns the state
    /// machine's output: applied exactly once when it returns `Ok`, at most
    /// once otherwise. In the client's session (see [`RaftClient`]), it is
    /// retried until its outcome is known, for up to
    /// [`GrpcConfig::request_timeout`]; without, it is not sent again once
    /// its outcome is unknown.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        if self.pool.config().client_session {
            return self.session.propose(self, self.timeout(), data).await;
        }
        let (data, t) = (&data, self.timeout());
        self.retry(Idempotence::NotIdempotent, |mut c| async move {
            let msg = pb::ProposeRequest { data: data.clone() };
            Ok(rpc(t, c.propose(request(msg, t))).await?.output)
        })
        .await
    }

    /// Opens a client session (exactly-once writes; see
    /// [`raftify_core::sessions`]) and returns its id.
    pub async fn open_session(&self) -> Result<u64> {
        let t = self.timeout();
        // A retried opening may open a second session: unused, it expires.
        self.retry(Idempotence::Idempotent, |mut c| async move {
            Ok(rpc(t, c.open_session(request(pb::Empty {}, t)))
                .await?
                .session)
        })
        .await
    }

    /// Proposes an encoded entry as write `w` of a session: applied at
    /// most once, so it is retried after an ambiguous failure like a read.
    pub async fn propose_in_session(&self, w: SessionWrite, data: Vec<u8>) -> Result<Vec<u8>> {
        let (data, t) = (&data, self.timeout());
        self.retry(Idempotence::Idempotent, |mut c| async move {
            let msg = session_write_to_pb(w, data.clone());
            Ok(rpc(t, c.propose_in_session(request(msg, t))).await?.output)
        })
        .await
    }

    /// Proposes an encoded entry with an idempotency key (see
    /// `RaftHandle::propose_with_key`): applied at most once while the key
    /// is remembered, so it is retried after an ambiguous failure like a
    /// read.
    pub async fn propose_with_key(&self, key: &str, data: Vec<u8>) -> Result<Vec<u8>> {
        raftify_core::codec::check_idempotency_key(key).map_err(Error::InvalidArgument)?;
        let (data, t) = (&data, self.timeout());
        self.retry(Idempotence::Idempotent, |mut c| async move {
            let msg = pb::KeyedProposeRequest {
                key: key.to_owned(),
                data: data.clone(),
            };
            Ok(rpc(t, c.propose_with_key(request(msg, t))).await?.output)
        })
        .await
    }

    /// Opens a session and returns its client side (with its own
    /// connections to the same addresses), which numbers writes and retries
    /// each until its outcome is known (within three request timeouts).
    pub async fn session(&self) -> Result<Session> {
        let id = self.open_session().await?;
        let budget = self.timeout().saturating_mul(3);
        let own = RaftClient::new(self.addrs.clone(), self.pool.config().clone())?;
        Ok(Session::new(Arc::new(own), id, budget))
    }

    /// A linearizable read index confirmed by the leader.
    pub async fn read_index(&self) -> Result<u64> {
        let t = self.timeout();
        self.retry(Idempotence::Idempotent, |mut c| async move {
            Ok(rpc(t, c.read_index(request(pb::Empty {}, t))).await?.index)
        })
        .await
    }

    async fn read_on(
        mut c: ApiClient,
        query: Vec<u8>,
        stale: bool,
        t: Duration,
    ) -> Result<Vec<u8>> {
        let msg = pb::ReadRequest { query, stale };
        Ok(rpc(t, c.read(request(msg, t))).await?.data)
    }

    /// A linearizable read on the node at `addr` (any member, followers
    /// included), answered by its server's [`ReadHandler`](crate::ReadHandler).
    pub async fn read_at(&self, addr: &str, query: Vec<u8>) -> Result<Vec<u8>> {
        let t = self.timeout();
        self.at(addr, |c| Self::read_on(c, query, false, t)).await
    }

    /// A local, possibly stale read on the node at `addr`: no read index is
    /// confirmed, so it answers even without a leader.
    pub async fn read_stale_at(&self, addr: &str, query: Vec<u8>) -> Result<Vec<u8>> {
        let t = self.timeout();
        self.at(addr, |c| Self::read_on(c, query, true, t)).await
    }

    /// A linearizable read on whichever node answers (the leader first).
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        let (query, t) = (&query, self.timeout());
        self.retry(Idempotence::Idempotent, |c| {
            Self::read_on(c, query.clone(), false, t)
        })
        .await
    }

    /// The current members, as the leader (or the first node that answers)
    /// sees them.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let t = self.timeout();
        self.retry(Idempotence::Idempotent, |mut c| async move {
            let r = rpc(t, c.members(request(pb::Empty {}, t))).await?;
            Ok(members_from_pb(&r).members)
        })
        .await
    }

    /// The leader, as the first node that answers knows it (None while an
    /// election is in progress).
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let t = self.timeout();
        let info = self
            .retry(Idempotence::Idempotent, |mut c| async move {
                rpc(t, c.get_leader(request(pb::Empty {}, t))).await
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
        let t = self.timeout();
        let r = self
            .at(addr, |mut c| async move {
                rpc(t, c.status(request(pb::Empty {}, t))).await
            })
            .await?;
        serde_json::from_str(&r.status_json)
            .map_err(|e| Error::Transport(format!("malformed status from {addr}: {e}")))
    }

    /// Transfers leadership to node `to` and waits until it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        let t = self.timeout();
        self.retry(Idempotence::Idempotent, |mut c| async move {
            let msg = pb::TransferLeaderRequest { to };
            rpc(t, c.transfer_leader(request(msg, t))).await.map(|_| ())
        })
        .await?;
        self.set_hint(None);
        Ok(())
    }

    /// Applies membership changes atomically (joint consensus when several)
    /// and returns the members after them.
    pub async fn change_config(&self, changes: Vec<MembershipChange>) -> Result<Vec<Member>> {
        let (changes, t) = (&changes, self.timeout());
        self.retry(Idempotence::NotIdempotent, |mut c| async move {
            let msg = pb::ChangeConfigRequest {
                changes: changes.iter().map(change_to_pb).collect(),
            };
            let r = rpc(t, c.change_config(request(msg, t))).await?;
            Ok(members_from_pb(&r).members)
        })
        .await
    }

    /// Reserves a node id for a node that will listen at `addr`.
    pub async fn request_id(&self, addr: &str) -> Result<JoinTicket> {
        let t = self.timeout();
        // A reservation whose answer was lost only leaves an unused id.
        self.retry(Idempotence::Idempotent, |mut c| async move {
            let msg = pb::RequestIdRequest {
                addr: addr.to_string(),
            };
            Ok(ticket_from_pb(rpc(t, c.request_id(request(msg, t))).await?))
        })
        .await
    }

    /// Takes a snapshot on the node at `addr`; returns its index.
    pub async fn snapshot(&self, addr: &str) -> Result<u64> {
        let t = self.timeout();
        self.at(addr, |mut c| async move {
            Ok(rpc(t, c.create_snapshot(request(pb::Empty {}, t)))
                .await?
                .index)
        })
        .await
    }

    /// Makes the node at `addr` leave its cluster (it hands leadership over
    /// first when it leads).
    pub async fn leave(&self, addr: &str) -> Result<()> {
        let t = self.timeout();
        self.at(addr, |mut c| async move {
            rpc(t, c.leave(request(pb::Empty {}, t))).await.map(|_| ())
        })
        .await?;
        if self.hint().as_deref() == Some(addr) {
            self.set_hint(None);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl SessionTarget for RaftClient {
    async fn open_session(&self) -> Result<u64> {
        RaftClient::open_session(self).await
    }
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        RaftClient::propose_in_session(self, w, entry).await
    }
}
