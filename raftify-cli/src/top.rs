//! `top` (a view of the cluster that refreshes every second) and `watch`
//! (a line per leader change, as they happen).
//!
//! Both poll the `status` call of the node given, and of the leader it
//! names (only the leader knows each member's replication progress). When
//! the node given stops answering they go on with another member they
//! have seen, so they survive the loss of any one node.

use crate::live::ConnArgs;
use anyhow::{anyhow, Result};
use raftify_core::{MemberRole, Status};
use raftify_grpc::RaftClient;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

/// Polls the cluster through any member that answers, starting with
/// `first`.
struct Poller<'a> {
    conn: &'a ConnArgs,
    /// One client (one connection pool) for every member asked.
    client: RaftClient,
    /// Raft addresses of the members seen, by id (0: the address given).
    addrs: BTreeMap<u64, String>,
    /// The member that answered last: asked first next time.
    last_ok: Option<String>,
}

impl<'a> Poller<'a> {
    /// Connects to `first` (explaining a wrong address, as every live
    /// command does).
    async fn new(first: &str, conn: &'a ConnArgs) -> Result<Poller<'a>> {
        Ok(Poller {
            conn,
            client: conn.connect(first).await?,
            addrs: BTreeMap::from([(0, first.to_string())]),
            last_ok: None,
        })
    }

    async fn status_of(&self, addr: &str) -> Result<Status> {
        self.client
            .status(addr)
            .await
            .map_err(|e| self.conn.explain(e, addr, "status"))
    }

    /// The status of some member (the first that answers), and of the
    /// leader it names when that is another node.
    async fn poll(&mut self) -> Result<(Status, Option<Status>)> {
        let mut last_err = anyhow!("no member to ask");
        let mut addrs: Vec<String> = self.last_ok.iter().cloned().collect();
        addrs.extend(
            self.addrs
                .values()
                .filter(|a| Some(*a) != self.last_ok.as_ref())
                .cloned(),
        );
        for addr in addrs {
            match self.status_of(&addr).await {
                Ok(s) => {
                    self.last_ok = Some(addr);
                    for m in &s.members {
                        if let Some(a) = &m.addr {
                            self.addrs.insert(m.id, a.clone());
                        }
                    }
                    let leader = match s.leader_id {
                        0 => None,
                        id if id == s.id => None,
                        id => match self.addrs.get(&id).cloned() {
                            Some(a) => self.status_of(&a).await.ok(),
                            None => None,
                        },
                    };
                    return Ok((s, leader));
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }
}

fn role_of(s: &Status, id: u64, role: MemberRole) -> &'static str {
    match (id == s.leader_id, role) {
        (true, _) => "leader",
        (false, MemberRole::Voter) => "voter",
        (false, MemberRole::Learner) => "learner",
    }
}

/// One frame of `top`: the cluster as `seen` (and its `leader`'s view),
/// with rates from the previous frame.
fn frame(seen: &Status, leader: Option<&Status>, rate: Option<(f64, f64)>) -> String {
    let l = leader.unwrap_or(seen);
    let mut out = String::new();
    let rates = match rate {
        Some((c, a)) => format!("commits/s {c:.0}  applied/s {a:.0}"),
        None => "commits/s -  applied/s -".into(),
    };
    out.push_str(&format!(
        "cluster {:?}  term {}  leader {}  commit {}  applied {}  {rates}\n",
        l.cluster_id,
        l.term,
        match l.leader_id {
            0 => "none".to_string(),
            id => id.to_string(),
        },
        l.commit_index,
        l.applied_index,
    ));
    out.push_str(&format!(
        "{:>4}  {:<8} {:<24} {:>10} {:>8}  {}\n",
        "id", "role", "raft address", "match", "lag", "state"
    ));
    for m in &l.members {
        let (matched, lag, state) = match l.progress.get(&m.id) {
            Some(p) => (
                p.matched.to_string(),
                l.last_index.saturating_sub(p.matched).to_string(),
                p.state.clone(),
            ),
            None => ("-".into(), "-".into(), String::new()),
        };
        out.push_str(&format!(
            "{:>4}  {:<8} {:<24} {:>10} {:>8}  {}\n",
            m.id,
            role_of(l, m.id, m.role),
            m.addr.as_deref().unwrap_or("?"),
            matched,
            lag,
            state
        ));
    }
    if l.role != raftify_core::Role::Leader {
        out.push_str("(no leader answered: match and lag are unknown)\n");
    }
    out
}

/// `top`: a frame every `interval`, `iterations` times (forever if None).
pub async fn top(
    addr: &str,
    conn: &ConnArgs,
    interval: Duration,
    iterations: Option<u64>,
) -> Result<()> {
    let mut poller = Poller::new(addr, conn).await?;
    let tty = std::io::stdout().is_terminal();
    // (node read, its clock, commit, applied) of the previous frame.
    let mut prev: Option<(u64, u64, u64, u64)> = None;
    let mut n = 0u64;
    loop {
        let started = Instant::now();
        let text = match poller.poll().await {
            Ok((seen, leader)) => {
                let l = leader.as_ref().unwrap_or(&seen);
                // Rates from the same node's successive statuses, by its
                // clock; none across a change of the node read.
                let rate = prev.and_then(|(id, at, c, a)| {
                    let dt = l.at_ms.checked_sub(at).filter(|d| *d > 0)? as f64 / 1000.0;
                    (id == l.id).then(|| {
                        (
                            l.commit_index.saturating_sub(c) as f64 / dt,
                            l.applied_index.saturating_sub(a) as f64 / dt,
                        )
                    })
                });
                prev = Some((l.id, l.at_ms, l.commit_index, l.applied_index));
                frame(&seen, leader.as_ref(), rate)
            }
            Err(e) => format!("no member answers: {e:#}\n"),
        };
        let mut stdout = std::io::stdout().lock();
        if tty {
            // Home, clear: a view that refreshes in place.
            let _ = write!(stdout, "\x1b[H\x1b[2J");
        }
        let _ = write!(stdout, "{text}");
        if !tty {
            let _ = writeln!(stdout);
        }
        let _ = stdout.flush();
        drop(stdout);
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

fn now_utc() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `watch`: prints the leader now and a line at every change of leader
/// or term, until `changes` changes were printed (forever if None).
pub async fn watch(addr: &str, conn: &ConnArgs, changes: Option<u64>) -> Result<()> {
    let mut poller = Poller::new(addr, conn).await?;
    let mut last: Option<(u64, u64)> = None;
    let mut printed = 0u64;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        match poller.poll().await {
            Ok((seen, leader)) => {
                unreachable_since = None;
                let s = leader.as_ref().unwrap_or(&seen);
                let now = (s.leader_id, s.term);
                if last != Some(now) {
                    let who = match s.leader_id {
                        0 => "no leader".to_string(),
                        id => {
                            let addr = s
                                .members
                                .iter()
                                .find(|m| m.id == id)
                                .and_then(|m| m.addr.clone())
                                .unwrap_or_else(|| "?".into());
                            format!("leader {id} ({addr})")
                        }
                    };
                    println!("{}  term {}  {who}", now_utc(), s.term);
                    if last.is_some() {
                        printed += 1;
                    }
                    last = Some(now);
                    if changes.is_some_and(|max| printed >= max) {
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > conn_timeout(conn) {
                    return Err(e.context("no member answered"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn conn_timeout(conn: &ConnArgs) -> Duration {
    Duration::from_secs(conn.timeout.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        let s = now_utc();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}
