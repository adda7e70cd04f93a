//! memstore: a highly available key-value cache, replicated with raftify.
//!
//! [`store`] is the state machine (`HashStore`) and its commands
//! (`KvEntry`); [`http`] is the HTTP API; the `memstore` binary wires them
//! to LMDB storage and gRPC transport.

pub mod http;
/// The HTTP server loop, from `raftify::http` (where every HTTP front-end
/// gets it).
pub use raftify::http as serve;
pub mod store;
