//! Calling a cluster through a transport, from outside or before a node
//! is part of it: the leader-seeking retry loop over [`ClusterApi`].

use super::{ClusterApi, Transport};
use crate::error::Result;
use crate::membership::JoinTicket;
use crate::retry::{seek_leader, Idempotence, RetryPolicy};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs `op` on a member of the cluster at `addrs`, following `NotLeader`
/// hints and retrying through elections until `timeout` (see
/// [`seek_leader`] for what is retried; `idempotence` says whether a
/// request whose outcome is unknown may be sent again).
///
/// ```
/// # use raftify_core::{call_cluster, InProcNetwork, Transport};
/// # use raftify_core::retry::Idempotence;
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let net = InProcNetwork::new(1);
/// let transport = net.transport(9);
/// // No node is registered: the request cannot be delivered.
/// let err = call_cluster(transport.as_ref(), &[net.addr_of(1)], Duration::from_millis(200),
///     Idempotence::Idempotent, |node| async move { node.members().await })
///     .await
///     .unwrap_err();
/// assert!(matches!(err, raftify_core::Error::Unreachable(_) | raftify_core::Error::Timeout(_)));
/// # }
/// ```
pub async fn call_cluster<T, F, Fut>(
    transport: &dyn Transport,
    addrs: &[String],
    timeout: Duration,
    idempotence: Idempotence,
    mut op: F,
) -> Result<T>
where
    F: FnMut(Arc<dyn ClusterApi>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let policy = RetryPolicy::with_timeout(timeout);
    seek_leader(addrs, None, &policy, idempotence, |addr| {
        let call = transport.node(&addr).map(&mut op);
        async move { call?.await }
    })
    .await
    .map(|(answer, _)| answer)
}

/// Asks a cluster member (any: followers forward) for a join ticket for a
/// node that will listen on `self_addr`. The caller then starts its node
/// with the ticket's id and calls
/// [`RaftHandle::join_cluster`](crate::RaftHandle::join_cluster).
///
/// A reservation whose answer was lost is asked again: it only leaves an
/// unused id behind.
pub async fn request_join_ticket(
    transport: &dyn Transport,
    member_addrs: &[String],
    self_addr: &str,
    timeout: Duration,
) -> Result<JoinTicket> {
    call_cluster(
        transport,
        member_addrs,
        timeout,
        Idempotence::Idempotent,
        |node| {
            let addr = self_addr.to_string();
            async move { node.request_id(addr).await }
        },
    )
    .await
}
