//! A cluster of `memstore` processes for the end-to-end tests, and the
//! key-value calls they make.

use super::{free_port, leader_of, request, wait_for_or, Node};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the end-to-end tests wait for anything.
pub const T: Duration = Duration::from_secs(20);

/// `memstore` processes with a static membership, each in its own dir
/// under one temp dir.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    pub peers: String,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) that bootstrap one cluster.
    pub fn start(n: u64) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with `extra` flags for every node.
    pub fn start_with(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u64, String, String)> = (1..=n)
            .map(|id| {
                (
                    id,
                    format!("127.0.0.1:{}", free_port()),
                    format!("127.0.0.1:{}", free_port()),
                )
            })
            .collect();
        let peers = ports
            .iter()
            .map(|(id, _, raft)| format!("{id}={raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        for (id, http, raft) in &ports {
            let d = dir.path().join(format!("node-{id}"));
            let mut args = vec!["--peers", &peers];
            args.extend_from_slice(extra);
            nodes.insert(*id, Node::spawn(*id, http, raft, &d, &args));
        }
        Cluster { nodes, peers, dir }
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    /// Waits until every running node reports the same leader.
    pub fn wait_leader(&self) -> u64 {
        wait_for_or(
            "a leader every node agrees on",
            T,
            || {
                let leaders: Vec<Option<u64>> = self
                    .nodes
                    .values()
                    .filter(|n| n.child.is_some())
                    .map(|n| leader_of(&n.http))
                    .collect();
                match leaders.first() {
                    Some(Some(l))
                        if leaders.iter().all(|x| x == &Some(*l))
                            && self.nodes[l].child.is_some() =>
                    {
                        Some(*l)
                    }
                    _ => None,
                }
            },
            || self.logs(),
        )
    }

    /// Every node's leader as it reports it, and the tail of its log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            let log = n.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!(
                "--- node {id} (running: {}, leader: {:?}) ---\n{tail}\n",
                n.child.is_some(),
                leader_of(&n.http)
            ));
        }
        out
    }

    /// A running node other than `leader`.
    pub fn follower_of(&self, leader: u64) -> u64 {
        *self
            .nodes
            .keys()
            .find(|id| **id != leader && self.nodes[id].child.is_some())
            .expect("a follower")
    }

    /// Restarts node `id` over its data dir (same flags).
    pub fn restart(&mut self, id: u64, extra: &[&str]) {
        let old = self.nodes.remove(&id).expect("node");
        let mut args = vec!["--peers", self.peers.as_str()];
        args.extend_from_slice(extra);
        let n = Node::spawn(id, &old.http, &old.raft, &old.dir, &args);
        drop(old);
        self.nodes.insert(id, n);
    }
}

/// PUT /kv/KEY answered 200.
pub fn put_ok(http: &str, key: &str, value: &str) -> bool {
    matches!(request(http, "PUT", &format!("/kv/{key}"), value.as_bytes()), Ok(r) if r.status == 200)
}

/// GET /kv/KEY's value (a stale read when `stale`).
pub fn get_value(http: &str, key: &str, stale: bool) -> Option<String> {
    let path = if stale {
        format!("/kv/{key}?consistency=stale")
    } else {
        format!("/kv/{key}")
    };
    let r = request(http, "GET", &path, b"").ok()?;
    (r.status == 200).then(|| r.text())
}
