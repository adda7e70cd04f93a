//! The bodies of the fuzz targets, shared by `fuzz/` (cargo-fuzz, nightly)
//! and the proptest versions in `tests/fuzz_props.rs` (stable, in CI).
//!
//! Each function takes arbitrary bytes and must never panic; where a
//! decoder accepts its input, re-encoding must round-trip.

use raftify_core::codec::{parse_entry, ConfChangeContext, EntryPayload, SnapshotEnvelope};
use raftify_core::protobuf::Message as _;
use raftify_core::raft::eraftpb::{Message, MessageType};

pub use crate::fuzz_peer::peer_service;

/// `codec::parse_entry`: never panics; a user payload re-frames to the input.
pub fn codec_entry(data: &[u8]) {
    if let Ok(EntryPayload::User(rest)) = parse_entry(data) {
        assert_eq!(raftify_core::codec::frame_user(rest), data);
    }
}

/// `SnapshotEnvelope::decode`: never panics; what decodes re-encodes to
/// something that decodes to the same envelope.
pub fn snapshot_envelope(data: &[u8]) {
    if let Ok(env) = SnapshotEnvelope::decode(data) {
        let again = SnapshotEnvelope::decode(&env.encode()).expect("re-encoded envelope decodes");
        assert_eq!(again, env);
    }
}

/// `ConfChangeContext::decode`: never panics; round-trips.
pub fn conf_change_context(data: &[u8]) {
    if let Ok(ctx) = ConfChangeContext::decode(data) {
        assert_eq!(
            ConfChangeContext::decode(&ctx.encode()).expect("round trip"),
            ctx
        );
    }
}

/// raft's `Message` (protobuf): parsing never panics; a parsed message
/// re-serializes and parses again with the same raft fields. (Not full
/// equality: rust-protobuf keeps unknown fields of nested messages in a way
/// that does not always round-trip — cargo-fuzz found `4a 02 4a 00 4a e8
/// 2e` — which raft never reads.)
pub fn raft_message(data: &[u8]) -> Option<Message> {
    let m = Message::parse_from_bytes(data).ok()?;
    let bytes = m.write_to_bytes().expect("a parsed message serializes");
    let again = Message::parse_from_bytes(&bytes).expect("re-parse");
    let key = |m: &Message| {
        (
            m.get_msg_type(),
            m.to,
            m.from,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            m.reject,
            m.reject_hint,
            m.entries
                .iter()
                .map(|e| (e.index, e.term, e.data.clone()))
                .collect::<Vec<_>>(),
            m.get_snapshot().get_metadata().index,
            m.get_snapshot().get_metadata().term,
        )
    };
    assert_eq!(key(&again), key(&m));
    Some(m)
}

/// Whether a correct peer could never send `m` to a node that leads alone
/// (Byzantine input, outside Raft's fault model, which the stepping
/// targets leave out): an append (only a leader sends them, and one that
/// contradicts committed entries is a lie), or a non-empty snapshot from a
/// non-leader (it would be installed as the truth; empty ones are dropped
/// by raftify). See RELIABILITY.md, "stepping findings".
pub fn byzantine(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgAppend
        || (m.get_msg_type() == MessageType::MsgSnapshot
            && m.get_snapshot().get_metadata().index != 0)
}

/// memstore's `KvEntry::decode` and `ApplyOutput::decode`: never panic;
/// round-trip.
pub fn memstore_codecs(data: &[u8]) {
    use memstore::store::{ApplyOutput, KvEntry};
    use raftify_core::{AbstractLogEntry, Payload};
    if let Ok(e) = KvEntry::decode(data) {
        assert_eq!(
            e.encode().expect("encode"),
            data,
            "KvEntry encoding is canonical"
        );
    }
    if let Ok(o) = <ApplyOutput as Payload>::decode(data) {
        let bytes = Payload::encode(&o).expect("encode");
        assert_eq!(
            <ApplyOutput as Payload>::decode(&bytes).expect("round trip"),
            o
        );
    }
}

/// raftify-grpc's `status_to_error` on a status built from arbitrary code,
/// message and metadata: never panics, and mapping the error back and
/// forth again is stable.
pub fn grpc_status(code: i32, message: &str, kind: &str, number: &str, leader: &str) {
    use tonic::metadata::MetadataValue;
    let mut st = tonic::Status::new(tonic::Code::from(code), message.to_string());
    for (k, v) in [
        ("x-raftify-error", kind),
        ("x-raftify-number", number),
        ("x-raftify-leader-id", leader),
        ("x-raftify-leader-addr", message),
    ] {
        if let Ok(v) = MetadataValue::try_from(v) {
            st.metadata_mut().insert(k, v);
        }
    }
    let e = raftify_grpc::status_to_error(&st);
    let again = raftify_grpc::status_to_error(&raftify_grpc::error_to_status(&e));
    assert_eq!(
        std::mem::discriminant(&again),
        std::mem::discriminant(&e),
        "error -> status -> error keeps the kind: {e:?} became {again:?}"
    );
    // Storage errors are re-wrapped at each hop ("remote node: storage
    // error: ..."); every other kind comes back identical.
    if !matches!(e, raftify_core::Error::Storage(_)) {
        assert_eq!(
            format!("{again:?}"),
            format!("{e:?}"),
            "error -> status -> error is stable"
        );
    }
}

/// A tokio runtime on a paused clock, as the message-stepping targets use:
/// timeouts pass in no wall time.
pub fn paused_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
}

/// A single-node cluster on `MemStore` and the in-process network, with its
/// leader elected: what the message-stepping targets poke at.
pub async fn single_node() -> raftify_core::Result<crate::sm::SimNode> {
    use crate::sm::{ApplyOracle, RecKv};
    use raftify_core::{Bootstrap, Config, InProcNetwork, MemStore, Raft};
    let net = InProcNetwork::new(1);
    let node = Raft::builder(
        Config::new(1),
        RecKv::new(1, ApplyOracle::new(Default::default())),
    )
    .storage(std::sync::Arc::new(MemStore::new()))
    .transport(net.transport(1))
    .bootstrap(Bootstrap::Single {
        addr: net.addr_of(1),
    })
    .logger(raftify_core::discard_logger())
    .start()
    .await?;
    node.handle()
        .wait_for_leader(std::time::Duration::from_secs(5))
        .await?;
    Ok(node)
}
