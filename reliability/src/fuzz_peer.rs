//! The peer-service fuzz target: arbitrary calls, with the peer token, on a
//! real node's real gRPC server, after which the node must still serve.
//!
//! Peers are trusted but authenticated: whatever a credentialed sender
//! sends must never crash, stall or corrupt a node. One single-node
//! cluster (the reliability state machine over `MemStore`, a
//! [`RaftGrpcServer`] on `127.0.0.1:0` with a peer and a client token) is
//! started once per process and shared by every input, so it must survive
//! all of them.
//!
//! ## Input format
//!
//! A sequence of calls (at most [`MAX_CALLS`]), each `selector, len (u16
//! LE), body[len]` (a short last body takes what is left):
//!
//! * `selector & 0x0f` (mod 14) picks the RPC ([`PeerRpc::ALL`], in the
//!   order of `raftify.proto`); `(selector >> 4) & 3` the credential: 2 the
//!   client token, 3 none (both must be refused with `UNAUTHENTICATED`),
//!   else the peer token.
//! * A unary call's body is its request. A streaming call's body is frames,
//!   each `len (u16 LE), frame[len]`.
//! * Each request or frame is decoded with prost as the RPC's message; one
//!   that does not decode is sent as it is (a garbage frame), one that does
//!   is made harmless where a correct peer could legitimately hurt the
//!   node, then re-encoded: raft messages are addressed to the node and
//!   Byzantine ones ([`crate::fuzz_targets::byzantine`]) dropped (a snapshot
//!   header's index is zeroed), usable addresses become `127.0.0.1:1` (no
//!   traffic leaves the host), and voters to add become learners (a
//!   single-node cluster given a second voter that does not exist loses
//!   its quorum, by design).
//!
//! After the calls, every added member is removed again, and the node must
//! answer a write through [`RaftClient`] (client token), its status, and a
//! well-formed snapshot stream (no install slot leaked); it must not be
//! stopped or fatal, and its state machine must have seen no violation.
//! Every call is bounded by [`CALL_TIMEOUT`]; an answer must be a gRPC
//! status sent by the server, never a broken connection.

use crate::fuzz_targets::byzantine;
use crate::invariants::Violations;
use crate::sm::{ApplyOracle, Cmd, RecKv, SimNode};
use prost::Message as _;
use raftify_core::membership::validate_addr;
use raftify_core::protobuf::Message as _;
use raftify_core::raft::eraftpb::{Message, MessageType};
use raftify_core::{AbstractLogEntry, Bootstrap, Config, MemStore, MembershipChange, Raft, Role};
use raftify_grpc::{pb, GrpcConfig, GrpcTransport, RaftClient, RaftGrpcServer, ServerHandle};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The peer token of the fuzzed node.
pub const PEER_TOKEN: &str = "fuzz-peer-token";
/// The client token of the fuzzed node (refused on the peer service).
pub const CLIENT_TOKEN: &str = "fuzz-client-token";
/// Calls read from one input at most.
pub const MAX_CALLS: usize = 16;
/// How long one call may take before it counts as a stall.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node has, after an input, to commit a write again.
const RECOVERY: Duration = Duration::from_secs(20);
/// Where every usable address in an input is sent instead (nothing listens
/// on port 1; only root could bind it).
const NOWHERE: &str = "127.0.0.1:1";

/// The RPCs of the `RaftPeer` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRpc {
    /// `SendMessages(MessageBatch)`.
    SendMessages,
    /// `MessageStream(stream MessageBatch)`.
    MessageStream,
    /// `InstallSnapshot(stream SnapshotChunk)`.
    InstallSnapshot,
    /// `Propose(ProposeRequest)`.
    Propose,
    /// `ProposeBatch(ProposeBatchRequest)`.
    ProposeBatch,
    /// `ReadIndex(Empty)`.
    ReadIndex,
    /// `RequestId(RequestIdRequest)`.
    RequestId,
    /// `ChangeConfig(ChangeConfigRequest)`.
    ChangeConfig,
    /// `TransferLeader(TransferLeaderRequest)`.
    TransferLeader,
    /// `Members(Empty)`.
    Members,
    /// `OpenSession(Empty)`.
    OpenSession,
    /// `ProposeInSession(SessionProposeRequest)`.
    ProposeInSession,
    /// `ProposeWithKey(KeyedProposeRequest)`.
    ProposeWithKey,
    /// `ProposeSessionBatch(SessionBatchRequest)`.
    ProposeSessionBatch,
}

impl PeerRpc {
    /// Every RPC, in the order of the selector byte.
    pub const ALL: [PeerRpc; 14] = [
        PeerRpc::SendMessages,
        PeerRpc::MessageStream,
        PeerRpc::InstallSnapshot,
        PeerRpc::Propose,
        PeerRpc::ProposeBatch,
        PeerRpc::ReadIndex,
        PeerRpc::RequestId,
        PeerRpc::ChangeConfig,
        PeerRpc::TransferLeader,
        PeerRpc::Members,
        PeerRpc::OpenSession,
        PeerRpc::ProposeInSession,
        PeerRpc::ProposeWithKey,
        PeerRpc::ProposeSessionBatch,
    ];

    fn path(self) -> &'static str {
        match self {
            PeerRpc::SendMessages => "/raftify.v1.RaftPeer/SendMessages",
            PeerRpc::MessageStream => "/raftify.v1.RaftPeer/MessageStream",
            PeerRpc::InstallSnapshot => "/raftify.v1.RaftPeer/InstallSnapshot",
            PeerRpc::Propose => "/raftify.v1.RaftPeer/Propose",
            PeerRpc::ProposeBatch => "/raftify.v1.RaftPeer/ProposeBatch",
            PeerRpc::ReadIndex => "/raftify.v1.RaftPeer/ReadIndex",
            PeerRpc::RequestId => "/raftify.v1.RaftPeer/RequestId",
            PeerRpc::ChangeConfig => "/raftify.v1.RaftPeer/ChangeConfig",
            PeerRpc::TransferLeader => "/raftify.v1.RaftPeer/TransferLeader",
            PeerRpc::Members => "/raftify.v1.RaftPeer/Members",
            PeerRpc::OpenSession => "/raftify.v1.RaftPeer/OpenSession",
            PeerRpc::ProposeInSession => "/raftify.v1.RaftPeer/ProposeInSession",
            PeerRpc::ProposeWithKey => "/raftify.v1.RaftPeer/ProposeWithKey",
            PeerRpc::ProposeSessionBatch => "/raftify.v1.RaftPeer/ProposeSessionBatch",
        }
    }

    fn streaming(self) -> bool {
        matches!(self, PeerRpc::MessageStream | PeerRpc::InstallSnapshot)
    }
}

/// The credential a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `Bearer <peer token>`: the call must be served.
    Peer,
    /// `Bearer <client token>`: must be refused.
    Client,
    /// No `authorization` header: must be refused.
    Missing,
}

/// One call of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCall {
    /// The RPC.
    pub rpc: PeerRpc,
    /// Its credential.
    pub credential: Credential,
    /// The encoded request (unary calls: the first frame only) or the
    /// stream's frames.
    pub frames: Vec<Vec<u8>>,
}

/// Encodes calls in the input format of [`peer_service`] (for structured
/// inputs; the inverse of its parser for well-formed calls).
pub fn encode_calls(calls: &[PeerCall]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in calls {
        let rpc = PeerRpc::ALL.iter().position(|r| *r == c.rpc).unwrap_or(0) as u8;
        let cred = match c.credential {
            Credential::Peer => 0u8,
            Credential::Client => 2,
            Credential::Missing => 3,
        };
        let body = if c.rpc.streaming() {
            let mut b = Vec::new();
            for f in &c.frames {
                push_chunk(&mut b, f);
            }
            b
        } else {
            c.frames.first().cloned().unwrap_or_default()
        };
        out.push(rpc | cred << 4);
        push_chunk(&mut out, &body);
    }
    out
}

fn push_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    let n = chunk.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&chunk[..n]);
}

/// Splits `len (u16 LE), chunk[len]` off the front of `data`.
fn take_chunk<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let n = match data {
        [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
        _ => data.len(),
    };
    let rest = data.get(2..).unwrap_or_default();
    let (chunk, rest) = rest.split_at(n.min(rest.len()));
    *data = rest;
    chunk
}

/// Parses an input into calls (see the module docs).
pub fn parse_calls(mut data: &[u8]) -> Vec<PeerCall> {
    let mut calls = Vec::new();
    while let Some((&selector, rest)) = data.split_first() {
        if calls.len() == MAX_CALLS {
            break;
        }
        data = rest;
        let rpc = PeerRpc::ALL[usize::from(selector & 0x0f) % PeerRpc::ALL.len()];
        let credential = match (selector >> 4) & 3 {
            2 => Credential::Client,
            3 => Credential::Missing,
            _ => Credential::Peer,
        };
        let mut body = take_chunk(&mut data);
        let frames = if rpc.streaming() {
            let mut frames = Vec::new();
            while !body.is_empty() {
                frames.push(take_chunk(&mut body).to_vec());
            }
            frames
        } else {
            vec![body.to_vec()]
        };
        calls.push(PeerCall {
            rpc,
            credential,
            frames,
        });
    }
    calls
}

/// Replaces an address the node could use with [`NOWHERE`].
fn local_only(addr: &mut String) {
    if validate_addr(addr).is_ok() {
        *addr = NOWHERE.to_string();
    }
}

/// A raft message as a correct peer could send it to node 1, or the raw
/// bytes when they do not parse; `None` for a Byzantine message.
fn sane_raft_message(bytes: &[u8]) -> Option<Vec<u8>> {
    let Ok(mut m) = Message::parse_from_bytes(bytes) else {
        return Some(bytes.to_vec());
    };
    m.to = 1;
    if byzantine(&m) {
        return None;
    }
    m.write_to_bytes().ok()
}

/// What is actually sent for `frame` on `rpc` (see the module docs).
fn sanitize(rpc: PeerRpc, frame: &[u8]) -> Vec<u8> {
    fn re<M: prost::Message + Default>(frame: &[u8], fix: impl FnOnce(&mut M)) -> Vec<u8> {
        match M::decode(frame) {
            Ok(mut m) => {
                fix(&mut m);
                m.encode_to_vec()
            }
            Err(_) => frame.to_vec(),
        }
    }
    match rpc {
        PeerRpc::SendMessages | PeerRpc::MessageStream => re(frame, |b: &mut pb::MessageBatch| {
            local_only(&mut b.from_addr);
            b.messages = b
                .messages
                .iter()
                .filter_map(|m| sane_raft_message(m))
                .collect();
        }),
        PeerRpc::InstallSnapshot => re(frame, |c: &mut pb::SnapshotChunk| {
            local_only(&mut c.from_addr);
            if let Ok(mut m) = Message::parse_from_bytes(&c.header) {
                m.to = 1;
                if byzantine(&m) {
                    m.mut_snapshot().mut_metadata().index = 0;
                }
                c.header = m.write_to_bytes().unwrap_or_default();
            }
        }),
        PeerRpc::RequestId => re(frame, |r: &mut pb::RequestIdRequest| {
            local_only(&mut r.addr)
        }),
        PeerRpc::ChangeConfig => re(frame, |r: &mut pb::ChangeConfigRequest| {
            for c in &mut r.changes {
                local_only(&mut c.addr);
                if c.kind == pb::ChangeKind::AddVoter as i32 && c.id != 1 {
                    c.kind = pb::ChangeKind::AddLearner as i32;
                }
            }
        }),
        PeerRpc::Propose
        | PeerRpc::ProposeBatch
        | PeerRpc::ReadIndex
        | PeerRpc::TransferLeader
        | PeerRpc::Members
        | PeerRpc::OpenSession
        | PeerRpc::ProposeInSession
        | PeerRpc::ProposeWithKey
        | PeerRpc::ProposeSessionBatch => frame.to_vec(),
    }
}

/// Sends and receives gRPC messages as raw bytes: garbage frames reach the
/// server's own decoder.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// The shared runtime and node.
struct Harness {
    rt: tokio::runtime::Runtime,
    fuzzed: Fuzzed,
}

/// The node, its server, and clients of both services.
struct Fuzzed {
    node: SimNode,
    _server: ServerHandle,
    addr: String,
    channel: Channel,
    client: RaftClient,
    violations: Violations,
    writes: AtomicU64,
    /// Set once an input broke the node: later inputs fail at once (their
    /// verdict would say nothing).
    broken: AtomicBool,
}

fn grpc_config() -> GrpcConfig {
    GrpcConfig {
        peer_token: Some(PEER_TOKEN.into()),
        auth_token: Some(CLIENT_TOKEN.into()),
        request_timeout: CALL_TIMEOUT,
        max_snapshot_size: 1024 * 1024,
        snapshot_idle_timeout: CALL_TIMEOUT,
        ..GrpcConfig::default()
    }
}

async fn start() -> Result<Fuzzed, Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let grpc = grpc_config();
    let mut config = Config::new(1);
    // Fast elections: a forged higher term costs the node one election.
    config.tick_interval = Duration::from_millis(20);
    config.proposal_timeout = CALL_TIMEOUT;
    config.conf_change_timeout = CALL_TIMEOUT;
    config.read_timeout = CALL_TIMEOUT;
    let violations = Violations::default();
    let node = Raft::builder(config, RecKv::new(1, ApplyOracle::new(violations.clone())))
        .storage(Arc::new(MemStore::new()))
        .transport(Arc::new(GrpcTransport::new(addr.clone(), grpc.clone())?))
        .bootstrap(Bootstrap::Single { addr: addr.clone() })
        .logger(raftify_core::discard_logger())
        .start()
        .await?;
    let server = RaftGrpcServer::new(node.handle().clone(), grpc.clone()).spawn(listener)?;
    node.handle().wait_for_leader(RECOVERY).await?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    let client = RaftClient::new([addr.clone()], grpc)?;
    Ok(Fuzzed {
        node,
        _server: server,
        addr,
        channel,
        client,
        violations,
        writes: AtomicU64::new(0),
        broken: AtomicBool::new(false),
    })
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"));
        let fuzzed = rt
            .block_on(start())
            .unwrap_or_else(|e| panic!("starting the fuzzed node: {e}"));
        Harness { rt, fuzzed }
    })
}

/// A request with `credential`'s `authorization` header.
fn with_credential<T>(msg: T, credential: Credential) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    let token = match credential {
        Credential::Peer => PEER_TOKEN,
        Credential::Client => CLIENT_TOKEN,
        Credential::Missing => return req,
    };
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

impl Fuzzed {
    /// Sends `frames` as they are on `rpc` (a unary call: the first), with
    /// `credential`; `Err` when no answer came within twice
    /// [`CALL_TIMEOUT`].
    async fn send(
        &self,
        rpc: PeerRpc,
        credential: Credential,
        frames: Vec<Vec<u8>>,
    ) -> Result<Result<(), Status>, String> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let path = PathAndQuery::from_static(rpc.path());
        let answer = async {
            grpc.ready()
                .await
                .map_err(|e| Status::from_error(Box::new(e)))?;
            if rpc.streaming() {
                let req = with_credential(tokio_stream::iter(frames), credential);
                grpc.client_streaming(req, path, RawCodec).await
            } else {
                let first = frames.into_iter().next().unwrap_or_default();
                grpc.unary(with_credential(first, credential), path, RawCodec)
                    .await
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT * 2, answer).await {
            Ok(answer) => Ok(answer.map(|_| ())),
            Err(_) => Err(format!(
                "{rpc:?} did not answer within {:?}",
                CALL_TIMEOUT * 2
            )),
        }
    }

    /// Sends one call of an input; `Err` names what went wrong (a stall, a
    /// broken call, a wrong credential served).
    async fn call(&self, call: &PeerCall) -> Result<(), String> {
        let rpc = call.rpc;
        let frames = call.frames.iter().map(|f| sanitize(rpc, f)).collect();
        let answer = self.send(rpc, call.credential, frames).await?;
        match (call.credential, answer) {
            (Credential::Peer, Ok(_)) => Ok(()),
            (Credential::Peer, Err(st)) => served_status(rpc, &st),
            (_, Err(st)) if st.code() == Code::Unauthenticated => Ok(()),
            (c, other) => Err(format!(
                "{rpc:?} with credential {c:?} was not refused: {other:?}"
            )),
        }
    }

    /// After an input: members added by it are removed, and the node
    /// serves a write, its status and a snapshot stream.
    async fn check_alive(&self) -> Result<(), String> {
        let handle = self.node.handle();
        let deadline = tokio::time::Instant::now() + RECOVERY;
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let put = Cmd::Put {
            key: "fuzz".into(),
            value: format!("{n}"),
        }
        .encode()
        .map_err(|e| e.to_string())?;
        let mut last;
        loop {
            let state = handle.state();
            if state.role == Role::Stopped || state.fatal.is_some() {
                return Err(format!("the node stopped: {state:?}"));
            }
            match self.restore_membership().await {
                Ok(()) => {
                    match tokio::time::timeout(CALL_TIMEOUT, self.client.propose(put.clone())).await
                    {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => last = format!("write: {e}"),
                        Err(_) => last = "write: timed out".into(),
                    }
                }
                Err(e) => last = format!("removing the members an input added: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the node did not commit a write within {RECOVERY:?} ({last}); state {:?}",
                    handle.state()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::timeout(CALL_TIMEOUT, self.client.status(&self.addr))
            .await
            .map_err(|_| "status timed out".to_string())?
            .map_err(|e| format!("status: {e}"))?;
        let probe = vec![empty_snapshot_chunk(handle.state().term)];
        self.send(PeerRpc::InstallSnapshot, Credential::Peer, probe)
            .await?
            .map_err(|e| format!("a well-formed snapshot stream was refused: {e:?}"))?;
        let violations = self.violations.all();
        if !violations.is_empty() {
            return Err(format!("state machine violations: {violations:?}"));
        }
        Ok(())
    }

    /// Removes every member but node 1.
    async fn restore_membership(&self) -> Result<(), String> {
        let handle = self.node.handle();
        let status = handle.status().await.map_err(|e| e.to_string())?;
        let extra: Vec<MembershipChange> = status
            .members
            .iter()
            .filter(|m| m.id != 1)
            .map(|m| MembershipChange::Remove { id: m.id })
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(CALL_TIMEOUT, handle.change_membership(extra))
            .await
            .map_err(|_| "timed out".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A refusal must be a status the server sent (no transport error behind
/// it: a handler that panicked or a connection dropped mid-call).
fn served_status(rpc: PeerRpc, st: &Status) -> Result<(), String> {
    match std::error::Error::source(st) {
        None => Ok(()),
        Some(e) => Err(format!(
            "{rpc:?}: no answer from the server but a broken call: {st:?} ({e})"
        )),
    }
}

/// One chunk holding a well-formed but empty snapshot (index 0, which the
/// node drops after the service accepts it), from node 2.
pub fn empty_snapshot_chunk(term: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.to = 1;
    m.from = 2;
    m.term = term;
    pb::SnapshotChunk {
        from_id: 2,
        header: m.write_to_bytes().unwrap_or_default(),
        total_size: 4,
        data: b"data".to_vec().into(),
        checksum: Some(raftify_core::codec::crc32(b"data")),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The peer-service fuzz body (see the module docs): panics when the
/// node broke, stalled, or a call was answered wrongly.
pub fn peer_service(data: &[u8]) {
    let Harness { rt, fuzzed: h } = harness();
    assert!(
        !h.broken.load(Ordering::SeqCst),
        "the fuzzed node broke on an earlier input"
    );
    let calls = parse_calls(data);
    let outcome = rt.block_on(async {
        for c in &calls {
            h.call(c).await?;
        }
        h.check_alive().await
    });
    if let Err(why) = outcome {
        h.broken.store(true, Ordering::SeqCst);
        panic!("peer service input {data:02x?} ({calls:?}): {why}");
    }
}
