//! Commands against running nodes, over gRPC.

use crate::probe::{probe, Found, NoConnection};
use anyhow::{anyhow, bail, Context, Result};
use raftify_core::{MemberRole, MembershipChange};
use raftify_grpc::{GrpcConfig, RaftClient, TlsConfig};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Connection flags shared by every live command (the same as memstore's).
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Shared secret the cluster requires.
    #[arg(
        long,
        env = "RAFTIFY_AUTH_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub auth_token: Option<String>,
    /// CA (PEM) that signs the nodes' certificates; enables TLS.
    #[arg(long, env = "RAFTIFY_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for clusters that require mutual TLS.
    #[arg(long, env = "RAFTIFY_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "RAFTIFY_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Server name to verify in the nodes' certificates (default: the host dialed).
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
    /// Largest snapshot `snapshot --save` accepts, in bytes (as the
    /// nodes' own --max-snapshot-bytes).
    #[arg(
        long,
        env = "RAFTIFY_MAX_SNAPSHOT_BYTES",
        default_value_t = 1024 * 1024 * 1024,
        global = true
    )]
    pub max_snapshot_bytes: u64,
    /// Give up after this many seconds (a `snapshot --save` download
    /// after the longer of this and 300; the node cuts one off after its
    /// own snapshot_timeout, 5 minutes by default).
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
}

impl ConnArgs {
    fn config(&self) -> Result<GrpcConfig> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let mut cfg = GrpcConfig {
            auth_token: self.auth_token.clone(),
            request_timeout: Duration::from_secs(self.timeout.max(1)),
            snapshot_timeout: Duration::from_secs(self.timeout.max(300)),
            max_snapshot_size: self.max_snapshot_bytes.max(1),
            connect_timeout: Duration::from_secs(self.timeout.clamp(1, 5)),
            ..GrpcConfig::default()
        };
        if self.tls_ca.is_some() || self.tls_cert.is_some() {
            cfg.tls = Some(TlsConfig {
                cert_pem: self.tls_cert.as_ref().map(read).transpose()?,
                key_pem: self.tls_key.as_ref().map(read).transpose()?,
                ca_pem: self.tls_ca.as_ref().map(read).transpose()?,
                domain: self.tls_domain.clone(),
            });
        }
        cfg.validate().map_err(|e| anyhow!("{e}"))?;
        Ok(cfg)
    }

    /// A client of the node at `addr` (connects lazily; [`Self::connect`]
    /// checks the address first).
    pub fn client(&self, addr: &str) -> Result<RaftClient> {
        RaftClient::new([addr.to_string()], self.config()?).map_err(|e| anyhow!("{e}"))
    }

    /// Time allowed to connect (and for the probe's answer).
    fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.clamp(1, 5))
    }

    fn tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// A client of the node at `addr`, after [`probe`] checked that a gRPC
    /// server with the right transport security listens there and the node
    /// answered one `status` call: a refused connection, memstore's HTTP
    /// port, a TLS mismatch, a refused certificate or token fail at once
    /// with a plain message.
    pub async fn connect(&self, addr: &str) -> Result<RaftClient> {
        let client = self.client(addr)?;
        let t = self.connect_timeout();
        let tls = self.tls();
        match probe(addr, t).await {
            Err(NoConnection::Refused) => bail!("connection refused: nothing listens at {addr}"),
            Err(NoConnection::TimedOut) => {
                bail!("timed out after {t:?} connecting to {addr}")
            }
            Err(NoConnection::Io(e)) => bail!("cannot connect to {addr}: {e}"),
            Ok(Found::Http1) => bail!(
                "{addr} answers HTTP/1: this looks like memstore's HTTP port; use the raft (gRPC) port (e.g. 60061)"
            ),
            Ok(Found::Tls) if !tls => bail!(
                "{addr}: the server wants TLS: pass --tls-ca (and --tls-cert/--tls-key for mutual TLS)"
            ),
            Ok(Found::Grpc) if tls => bail!(
                "{addr} serves plaintext gRPC, not TLS: drop --tls-ca/--tls-cert/--tls-key (or start the node with TLS)"
            ),
            Ok(Found::Silent) => bail!(
                "timed out after {t:?} waiting for {addr} to answer: it accepted the connection but sent nothing (is it a node's raft port?)"
            ),
            Ok(Found::Other(first)) => bail!(
                "{addr} does not speak gRPC (it answered {:?}): use a node's raft (gRPC) port",
                String::from_utf8_lossy(&first)
            ),
            Ok(Found::Grpc | Found::Tls | Found::Closed) => {}
        }
        // One call that is not retried: a TLS handshake the server refuses
        // (or whose certificate this side refuses) or a refused token fails
        // here at once with its own error, rather than being retried
        // until the timeout by the command's call.
        client
            .status(addr)
            .await
            .map_err(|e| self.explain(e, addr, "status"))?;
        Ok(client)
    }

    /// Explains a failed `what` on `addr` by its error class: what to pass
    /// for a refused credential, what timed out, where.
    pub fn explain(&self, e: raftify_core::Error, addr: &str, what: &str) -> anyhow::Error {
        use raftify_core::Error;
        match e {
            Error::Unauthenticated(_) => {
                let given = if self.auth_token.is_some() {
                    " (the token given was refused)"
                } else {
                    ""
                };
                anyhow!("{addr}: unauthenticated: pass --auth-token (the cluster's client token){given}")
            }
            Error::Timeout(d) => {
                anyhow!("timed out after {d:?} waiting for {addr} to answer `{what}`")
            }
            Error::Transport(m) if self.tls() => {
                // rustls' words for a server certificate this side refused.
                let hint = if m.contains("invalid peer certificate") {
                    " (the node's certificate does not verify against --tls-ca for the name dialed; --tls-domain sets that name)"
                } else if self.tls_cert.is_none() {
                    " (if the node requires mutual TLS, pass --tls-cert and --tls-key)"
                } else {
                    ""
                };
                anyhow!("{addr}: {what} failed: {m}{hint}")
            }
            e => anyhow!("{addr}: {what} failed: {e}"),
        }
    }
}

/// `debug node`: the live status of one node.
pub async fn node(addr: &str, conn: &ConnArgs, json_out: bool) -> Result<()> {
    let client = conn.connect(addr).await?;
    let s = client
        .status(addr)
        .await
        .map_err(|e| conn.explain(e, addr, "status"))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "node          {} ({}) in cluster {:?}",
        s.id,
        s.role.as_str(),
        s.cluster_id
    );
    println!(
        "term          {}  vote {}  leader {}",
        s.term, s.vote, s.leader_id
    );
    println!(
        "log           first {}  last {}  commit {}  applied {}  snapshot {}",
        s.first_index, s.last_index, s.commit_index, s.applied_index, s.snapshot_index
    );
    print_members(&s.members, s.leader_id);
    if !s.progress.is_empty() {
        println!("progress      id  matched  next  state");
        for (id, p) in &s.progress {
            println!(
                "              {id:>2}  {:>7}  {:>4}  {}",
                p.matched, p.next_index, p.state
            );
        }
    }
    Ok(())
}

fn print_members(members: &[raftify_core::Member], leader: u64) {
    for m in members {
        let role = m.role.as_str();
        let mark = if m.id == leader { " (leader)" } else { "" };
        println!(
            "member        {:>3}  {:<8} {}{mark}",
            m.id,
            role,
            m.addr.as_deref().unwrap_or("?")
        );
    }
}

/// `members`.
pub async fn members(addr: &str, conn: &ConnArgs, json_out: bool) -> Result<()> {
    let client = conn.connect(addr).await?;
    let members = client
        .members()
        .await
        .map_err(|e| conn.explain(e, addr, "members"))?;
    let leader = client
        .leader()
        .await
        .map_err(|e| conn.explain(e, addr, "leader"))?;
    let leader_id = leader.map(|l| l.id).unwrap_or(0);
    if json_out {
        let out = json!({
            "leader_id": leader_id,
            "members": members.iter().map(|m| json!({
                "id": m.id,
                "raft_addr": m.addr,
                "role": m.role.as_str(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_members(&members, leader_id);
    }
    Ok(())
}

/// `leader`.
pub async fn leader(addr: &str, conn: &ConnArgs, json_out: bool) -> Result<()> {
    let client = conn.connect(addr).await?;
    let leader = client
        .leader()
        .await
        .map_err(|e| conn.explain(e, addr, "leader"))?;
    match (leader, json_out) {
        (Some(l), true) => println!("{}", json!({"leader_id": l.id, "raft_addr": l.addr})),
        (Some(l), false) => println!("{} {}", l.id, l.addr.as_deref().unwrap_or("?")),
        (None, _) => return Err(anyhow!("{addr}: no leader is known right now")),
    }
    Ok(())
}

/// `transfer-leader`.
pub async fn transfer_leader(addr: &str, to: u64, conn: &ConnArgs) -> Result<()> {
    let client = conn.connect(addr).await?;
    client
        .transfer_leader(to)
        .await
        .map_err(|e| conn.explain(e, addr, "transfer-leader"))?;
    println!("node {to} is the leader");
    Ok(())
}

/// `snapshot`.
pub async fn snapshot(
    addr: &str,
    group: Option<u64>,
    save: Option<&std::path::Path>,
    conn: &ConnArgs,
) -> Result<()> {
    let client = conn.connect(addr).await?;
    let client = match group {
        Some(g) => client.for_group(g),
        None => client,
    };
    let index = client
        .snapshot(addr)
        .await
        .map_err(|e| conn.explain(e, addr, "snapshot"))?;
    println!("snapshot taken at index {index}");
    if let Some(path) = save {
        let saved = client
            .save_snapshot(addr, path)
            .await
            .map_err(|e| conn.explain(e, addr, "download-snapshot"))
            .with_context(|| format!("cannot save the snapshot to {}", path.display()))?;
        println!(
            "saved the snapshot at index {} (term {}, {} bytes) to {}",
            saved.index,
            saved.term,
            saved.size,
            path.display()
        );
    }
    Ok(())
}

/// `add-learner`, `add-voter`, `remove`: one membership change, through any
/// member (it goes to the leader); prints the members after it.
pub async fn change(addr: &str, changes: Vec<MembershipChange>, conn: &ConnArgs) -> Result<()> {
    let client = conn.connect(addr).await?;
    let members = client
        .change_config(changes)
        .await
        .map_err(|e| conn.explain(e, addr, "change-config"))?;
    let leader_id = client
        .leader()
        .await
        .map_err(|e| conn.explain(e, addr, "leader"))?
        .map(|l| l.id)
        .unwrap_or(0);
    print_members(&members, leader_id);
    Ok(())
}

/// `promote`: a learner becomes a voter at the address the cluster knows.
pub async fn promote(addr: &str, id: u64, conn: &ConnArgs) -> Result<()> {
    let client = conn.connect(addr).await?;
    let members = client
        .members()
        .await
        .map_err(|e| conn.explain(e, addr, "members"))?;
    let member = members
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| anyhow!("node {id} is not a member"))?;
    if member.role == MemberRole::Voter {
        return Err(anyhow!("node {id} is already a voter"));
    }
    let node_addr = member
        .addr
        .clone()
        .ok_or_else(|| anyhow!("the cluster knows no address for node {id}"))?;
    change(
        addr,
        vec![MembershipChange::AddVoter {
            id,
            addr: node_addr,
        }],
        conn,
    )
    .await
}

/// `leave`: the node at `addr` leaves its cluster.
pub async fn leave(addr: &str, conn: &ConnArgs) -> Result<()> {
    let client = conn.connect(addr).await?;
    client
        .leave(addr)
        .await
        .map_err(|e| conn.explain(e, addr, "leave"))?;
    println!("{addr} left the cluster");
    Ok(())
}
