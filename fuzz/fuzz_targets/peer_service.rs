#![no_main]
//! Calls on a real node's gRPC peer service with the peer token (and some
//! with the client token or none): afterwards the node must still serve.
//! One node serves every input (see `raftify_reliability::fuzz_peer`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftify_reliability::fuzz_targets::peer_service(data);
});
