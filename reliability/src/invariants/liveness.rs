//! Liveness once the faults stop: within a bound, the members agree on one
//! leader, a new write commits, and every member's state machine converges
//! to the same state and applied sequence.

use crate::sm::{Cmd, SimNode};
use raftify_core::Role;
use std::time::Duration;
use tokio::time::Instant;

/// What the liveness phase measured.
#[derive(Debug, Clone)]
pub struct Live {
    /// The leader the members agreed on.
    pub leader: u64,
    /// Index of the probe write.
    pub probe_index: u64,
    /// Virtual time it took.
    pub took: Duration,
}

/// Waits (up to `timeout`) for liveness among `members`; the error says
/// which step did not happen.
pub async fn check(members: &[(u64, SimNode)], timeout: Duration) -> Result<Live, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let ids: Vec<u64> = members.iter().map(|(id, _)| *id).collect();
    // 1. One leader, seen by every member.
    let leader = loop {
        let leaders: Vec<u64> = members
            .iter()
            .filter(|(_, n)| n.handle().state().role == Role::Leader)
            .map(|(id, _)| *id)
            .collect();
        let seen: Vec<Option<u64>> = members
            .iter()
            .map(|(_, n)| n.handle().leader_id())
            .collect();
        if leaders.len() == 1 && seen.iter().all(|s| *s == Some(leaders[0])) {
            break leaders[0];
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no single agreed leader among {ids:?} after {timeout:?}: leaders {leaders:?}, seen {seen:?}; {}",
                describe(members).await
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let node = &members
        .iter()
        .find(|(id, _)| *id == leader)
        .expect("leader is a member")
        .1;
    // 2. A new write succeeds.
    let probe = Cmd::Put {
        key: "liveness-probe".into(),
        value: format!("{leader}"),
    };
    let probe_index = loop {
        match tokio::time::timeout(Duration::from_secs(3), node.propose(&probe)).await {
            Ok(Ok(out)) => {
                break crate::sm::ApplyOut::decode(&out)
                    .map(|o| o.index)
                    .unwrap_or(0)
            }
            other => {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the probe write on leader {leader} failed: {other:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // 3. Every member applies it and the state machines converge.
    loop {
        let mut states = Vec::new();
        for (id, n) in members {
            let applied = n.handle().state().applied_index;
            let s = n.stale_read(|s| (s.map.clone(), s.record.clone())).await;
            states.push((*id, applied, s));
        }
        let caught_up = states.iter().all(|(_, a, _)| *a >= probe_index);
        let equal = states.iter().all(|(_, _, s)| *s == states[0].2);
        if caught_up && equal {
            break;
        }
        if Instant::now() >= deadline {
            let applied: Vec<(u64, u64, usize)> = states
                .iter()
                .map(|(id, a, s)| (*id, *a, s.1.len()))
                .collect();
            return Err(format!(
                "members did not converge after {timeout:?} (probe at index {probe_index}); (node, applied, record len): {applied:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Live {
        leader,
        probe_index,
        took: start.elapsed(),
    })
}

/// One line per member: role, term, vote, leader, commit, applied, log, members.
pub async fn describe(members: &[(u64, SimNode)]) -> String {
    let mut out = Vec::new();
    for (id, n) in members {
        match tokio::time::timeout(Duration::from_secs(1), n.handle().status()).await {
            Ok(Ok(s)) => out.push(format!(
                "node {id}: {:?} term {} vote {} leader {} commit {} applied {} log {}..={} snap {} members {:?} joint {}",
                s.role,
                s.term,
                s.vote,
                s.leader_id,
                s.commit_index,
                s.applied_index,
                s.first_index,
                s.last_index,
                s.snapshot_index,
                s.members.iter().map(|m| (m.id, format!("{:?}", m.role))).collect::<Vec<_>>(),
                s.joint
            )),
            other => out.push(format!("node {id}: status unavailable: {other:?}")),
        }
    }
    out.join("; ")
}
