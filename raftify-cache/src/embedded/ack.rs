//! [`WriteAck`]: how far a write must have got before the call returns.

use super::error::CacheError;
use raftify::{GrpcConfig, RaftClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When a write to a named cache returns (redhac's acknowledgement levels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteAck {
    /// Once committed (a majority has it) and applied on this node: a
    /// local read here then sees it (the default).
    #[default]
    Local,
    /// Also once applied on every live member (one that answers within an
    /// election timeout): a local read on any of them sees it. Costs a
    /// status round to each member per write.
    AllLive,
}

/// Clients of the other members, one per address, kept between writes.
#[derive(Default)]
pub(crate) struct Peers {
    clients: Mutex<HashMap<String, Arc<RaftClient>>>,
}

impl Peers {
    fn client(&self, addr: &str, grpc: &GrpcConfig) -> Option<Arc<RaftClient>> {
        let mut clients = self.clients.lock().ok()?;
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let c = Arc::new(RaftClient::new([addr.to_string()], grpc.clone()).ok()?);
        clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// Waits until every member in `members` (id, address) that answers
    /// within `live` has applied `index`, for at most `limit`.
    pub(crate) async fn all_applied(
        &self,
        members: Vec<(u64, String)>,
        index: u64,
        grpc: &GrpcConfig,
        live: Duration,
        limit: Duration,
    ) -> Result<(), CacheError> {
        let deadline = raftify_core::retry::deadline_after(limit);
        let mut waits = tokio::task::JoinSet::new();
        for (id, addr) in members {
            let Some(c) = self.client(&addr, grpc) else {
                continue;
            };
            waits.spawn(async move {
                loop {
                    match tokio::time::timeout(live, c.status(&addr)).await {
                        // Not answering: not live, not waited for.
                        Err(_) | Ok(Err(_)) => return None,
                        Ok(Ok(st)) if st.applied_index >= index => return None,
                        Ok(Ok(_)) if Instant::now() >= deadline => return Some(id),
                        Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
            });
        }
        let mut missing = Vec::new();
        while let Some(r) = waits.join_next().await {
            if let Ok(Some(id)) = r {
                missing.push(id);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        Err(CacheError::AckTimeout {
            index,
            missing,
            limit,
        })
    }
}
