//! [`PeerLiveness`]: whether peer processes are up, for groups that sleep.
//!
//! A replica of an idle group that hibernates (see
//! [`Config::hibernate`](crate::Config::hibernate)) stops its election
//! clock, so it no longer notices by itself that its leader is gone. It
//! asks the transport instead: the transport checks the leader's *process*
//! (one probe per peer process, whatever the number of groups sleeping
//! under it) and tells every sleeper when the process stops answering;
//! they wake and elect. This is how many groups cost little while idle
//! (CockroachDB's quiesced ranges over node liveness, TiKV's hibernate
//! regions over store heartbeats).

use tokio::sync::watch;

/// Process-level liveness of peers, as a transport observes it.
pub trait PeerLiveness: Send + Sync + 'static {
    /// Watches node `id`, reached at `addr`: the receiver holds `true`
    /// while the node's process answers and turns `false` once it has not
    /// answered for the transport's suspicion timeout. It is probed for as
    /// long as a receiver of it is held. `just_heard`: the caller just
    /// heard from the node, so it counts as answering now (else a node
    /// already reported down stays down until it answers a probe).
    fn watch(&self, id: u64, addr: &str, just_heard: bool) -> watch::Receiver<bool>;
}
