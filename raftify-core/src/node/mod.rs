//! A node, in layers that each use only the ones below:
//!
//! 1. `handle.rs` — [`RaftHandle`]: commands to this node's loop;
//! 2. `forward.rs` — running a request on the leader, and the forwarder
//!    task that coalesces forwarded proposals;
//! 3. `admin.rs` — membership administration (changes, joins, leave,
//!    transfers, id reservations);
//! 4. `session.rs` — exactly-once writes: sessions opened through the log,
//!    writes numbered in them, and the handle as a
//!    [`SessionTarget`](crate::SessionTarget);
//! 5. `inbound.rs` — what a peer's request does here (the node's
//!    [`Inbound`](crate::transport::Inbound));
//! 6. `builder.rs` and `raft.rs` — starting a node, and the typed [`Raft`]
//!    facade.
//!
//! `logging.rs` holds the default loggers.

mod admin;
mod builder;
mod forward;
mod handle;
mod inbound;
mod logging;
mod raft;
mod session;

pub use self::raft::Raft;
pub use builder::{Bootstrap, RaftBuilder};
pub use handle::RaftHandle;
pub use logging::{default_logger, discard_logger, stderr_logger, stderr_logger_as, LogFormat};
