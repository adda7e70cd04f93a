//! memstore: a highly available key-value cache, replicated with raftify.
//!
//! [`store`] is the state machine (`HashStore`) and its commands
//! (`KvEntry`); [`http`] is the HTTP API; the `memstore` binary wires them
//! to LMDB storage and gRPC transport.

pub mod http;
pub mod serve;
pub mod store;
