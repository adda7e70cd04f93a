//! The command-line flags every raftify server shares (`--id`, `--peers`,
//! `--join`, `--data-dir`, TLS, tokens, ...), as a `clap` group a binary
//! flattens into its own arguments, and what turns them into a
//! [`NodeSpec`]. memstore and raftify-redis start their nodes from these,
//! so the same flag means the same thing on both.
//!
//! ```
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     node: raftify::cli::NodeArgs,
//!     /// The front-end's own flags.
//!     #[arg(long, default_value = "127.0.0.1:8001")]
//!     web_server: String,
//! }
//! let args = Args::parse_from(["app", "--id", "2", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"]);
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let spec = args.node.node_spec("node", &logger).unwrap();
//! assert_eq!(spec.id, Some(2));
//! ```

use crate::members::parse_members;
use crate::spec::{NodeSpec, Restore, Start, Storage};
use raftify_core::Config;
use raftify_grpc::tls::{load_pem, PemKind};
use raftify_grpc::{GrpcConfig, TlsConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The raft address of a node given none.
pub const DEFAULT_RAFT_ADDR: &str = "127.0.0.1:60061";

/// Flags of one raftify node; every flag can also be set through the
/// environment variable shown in `--help`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's id (default 1; with --join, the id the cluster reserves).
    #[arg(long, env = "RAFTIFY_ID")]
    pub id: Option<u64>,
    /// Address other nodes reach this node's raft (gRPC) service at
    /// (default 127.0.0.1:60061, or this node's entry in --peers).
    #[arg(long, env = "RAFTIFY_RAFT_ADDR")]
    pub raft_addr: Option<String>,
    /// Address to bind the raft service to, when it differs from
    /// --raft-addr (e.g. 0.0.0.0:60061 in a container). Default: --raft-addr.
    #[arg(long, env = "RAFTIFY_RAFT_LISTEN")]
    pub raft_listen: Option<String>,
    /// Data directory (default `./data/node-<id>` for memstore,
    /// `./data/redis-<id>` for raftify-redis; relative to the working
    /// directory).
    #[arg(long, env = "RAFTIFY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members for a static cluster, the same list on every node:
    /// 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, env = "RAFTIFY_PEERS")]
    pub peers: Option<String>,
    /// Join a running cluster through any member's raft address.
    #[arg(long, env = "RAFTIFY_JOIN")]
    pub join: Option<String>,
    /// Join as a learner (non-voting) instead of a voter.
    #[arg(long, env = "RAFTIFY_JOIN_AS_LEARNER")]
    pub join_as_learner: bool,
    /// Start with no membership and wait until the cluster's leader adds
    /// this node (`raftify-cli add-learner` / `add-voter`): the
    /// operator-driven alternative to --join. Needs --id and --raft-addr;
    /// the leader checks that this address answers as this id before it
    /// adds it.
    #[arg(long, env = "RAFTIFY_WAIT_TO_BE_ADDED", conflicts_with_all = ["peers", "join"])]
    pub wait_to_be_added: bool,
    /// Do not fsync the log: faster, but an OS crash or power loss can lose
    /// acknowledged writes and votes.
    #[arg(long, env = "RAFTIFY_NO_SYNC")]
    pub no_sync: bool,
    /// With fsync on, write every raft write as an LMDB commit (two
    /// fdatasyncs) instead of through the storage journal (one); for
    /// comparisons and as a fallback.
    #[arg(long, env = "RAFTIFY_NO_JOURNAL")]
    pub no_journal: bool,
    /// Log format on stderr: `text` (one line per record) or `json` (one
    /// JSON object per line, for log collectors).
    #[arg(long, env = "RAFTIFY_LOG_FORMAT", default_value = "text")]
    pub log_format: raftify_core::LogFormat,
    /// Lowest level logged: error, warning, info, debug or trace (debug
    /// adds each forwarded write's request id on the follower and on the
    /// leader, to follow a write across nodes).
    #[arg(long, env = "RAFTIFY_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_level: slog::Level,
    /// Start from a copy of another node's WAL directory (the data dir must
    /// be new or empty; the source is not modified).
    #[arg(long, env = "RAFTIFY_RESTORE_WAL_FROM")]
    pub restore_wal_from: Option<PathBuf>,
    /// Start from a snapshot (a snapshot file or a data dir); the data dir
    /// must be new or empty.
    #[arg(long, env = "RAFTIFY_RESTORE_SNAPSHOT_FROM")]
    pub restore_snapshot_from: Option<PathBuf>,
    /// The client token: required of clients of the node's services (the
    /// gRPC client service, and each front-end's own API as it documents).
    /// Without --peer-token, also the token peers use with each other.
    #[arg(long, env = "RAFTIFY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// The peer token: what members present to each other (raft messages,
    /// snapshots, forwarded requests); the client token is refused there.
    #[arg(long, env = "RAFTIFY_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
    /// A further client token accepted (never sent), while the client
    /// token is rotated: give the new token here on every node, move the
    /// clients, then make it --auth-token with the old one here, then drop
    /// this (docs/SECURITY.md). Repeatable; a value (and the variable)
    /// may hold several tokens separated by whitespace. Needs --auth-token.
    #[arg(
        long = "accept-token",
        env = "RAFTIFY_ACCEPT_TOKEN",
        hide_env_values = true
    )]
    pub accept_tokens: Vec<String>,
    /// A further peer token accepted on the peer service (never sent),
    /// while the peer token is rotated the same way; while moving from a
    /// shared token to --peer-token, the --auth-token here
    /// (docs/SECURITY.md). Repeatable; a value (and the variable) may hold
    /// several tokens separated by whitespace.
    #[arg(
        long = "accept-peer-token",
        env = "RAFTIFY_ACCEPT_PEER_TOKEN",
        hide_env_values = true
    )]
    pub accept_peer_tokens: Vec<String>,
    /// TLS certificate (PEM) of this node, for its servers and as client.
    #[arg(long, env = "RAFTIFY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "RAFTIFY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs peers' certificates; enables mutual TLS.
    #[arg(long, env = "RAFTIFY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name of the cluster; nodes refuse data and tickets of another one.
    #[arg(long, env = "RAFTIFY_CLUSTER_ID", default_value = "raftify")]
    pub cluster_id: String,
    /// Take a snapshot and compact the log every N applied entries.
    #[arg(long, env = "RAFTIFY_SNAPSHOT_THRESHOLD", default_value_t = 100_000)]
    pub snapshot_threshold: u64,
    /// Raft tick in milliseconds (elections after 10-20 ticks, heartbeats every 2).
    #[arg(long, env = "RAFTIFY_TICK_MS", default_value_t = 100)]
    pub tick_ms: u64,
    /// Largest snapshot this node accepts from its leader, in bytes (the
    /// announced size is checked first; a larger one is refused and the
    /// node cannot catch up by snapshot: raise it with the data set).
    #[arg(long, env = "RAFTIFY_MAX_SNAPSHOT_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_snapshot_bytes: u64,
    /// Forward writes made on a follower to the leader as plain writes
    /// rather than in this node's client session: a forwarded write whose
    /// connection breaks after it left then fails with "outcome unknown"
    /// instead of being sent again and applied once. For measuring what
    /// sessions cost; not for production.
    #[arg(long, env = "RAFTIFY_NO_FORWARD_SESSION")]
    pub no_forward_session: bool,
}

/// The tokens in `values` (flags, environment variables), each split at
/// whitespace: a token has none, and a secret mounted from a file may end
/// in a newline.
pub fn split_tokens<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .flat_map(str::split_ascii_whitespace)
        .map(Into::into)
        .collect()
}

/// What is wrong with a combination of flags or a file they name.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(pub String);

fn bail<T>(msg: impl Into<String>) -> Result<T, FlagError> {
    Err(FlagError(msg.into()))
}

impl NodeArgs {
    /// The gRPC settings of these flags; `max_connections` is the
    /// front-end's connection cap, applied to the raft port too. Each TLS
    /// file is read and checked now.
    pub fn grpc_config(&self, max_connections: usize) -> Result<GrpcConfig, FlagError> {
        let cfg = GrpcConfig {
            auth_token: self.auth_token.clone(),
            peer_token: self.peer_token.clone(),
            accept_tokens: split_tokens(self.accept_tokens.iter().map(String::as_str)),
            accept_peer_tokens: split_tokens(self.accept_peer_tokens.iter().map(String::as_str)),
            max_connections,
            max_snapshot_size: self.max_snapshot_bytes,
            tls: self.tls()?,
            ..GrpcConfig::default()
        };
        cfg.validate().map_err(|e| FlagError(e.to_string()))?;
        Ok(cfg)
    }

    /// The node's TLS material (`--tls-cert`, `--tls-key`, `--tls-ca`), or
    /// None without a certificate.
    pub fn tls(&self) -> Result<Option<TlsConfig>, FlagError> {
        tls_files(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
            ["--tls-cert", "--tls-key", "--tls-ca"],
        )
    }

    /// The launcher's spec for these flags, without its gRPC settings
    /// (see [`NodeArgs::grpc_config`]). A node given no data dir keeps its
    /// data in `./data/<name>-<id>`.
    pub fn node_spec(&self, name: &str, logger: &slog::Logger) -> Result<NodeSpec, FlagError> {
        if self.join.is_some() && self.peers.is_some() {
            return bail("--join and --peers exclude each other: --peers bootstraps a new cluster");
        }
        if self.restore_wal_from.is_some() && self.restore_snapshot_from.is_some() {
            return bail("--restore-wal-from and --restore-snapshot-from exclude each other");
        }
        if self.join.is_some() && self.raft_addr.is_none() {
            return bail(
                "--join needs --raft-addr: the address the cluster will reach this node at",
            );
        }
        if self.wait_to_be_added && (self.id.is_none() || self.raft_addr.is_none()) {
            return bail(
                "--wait-to-be-added needs --id and --raft-addr: the id and address the leader will add",
            );
        }
        let peers = self
            .peers
            .as_deref()
            .map(parse_members)
            .transpose()
            .map_err(|e| FlagError(format!("--peers: {e}")))?;
        let mut config = Config::new(1);
        config.cluster_id = self.cluster_id.clone();
        config.tick_interval = Duration::from_millis(self.tick_ms.max(1));
        config.snapshot_threshold = self.snapshot_threshold;
        config.forward_in_session = !self.no_forward_session;
        let mut spec = NodeSpec::new();
        spec.id = self.id;
        spec.default_id = Some(1);
        spec.raft_addr = self.raft_addr.clone();
        spec.fallback_raft_addr = Some(DEFAULT_RAFT_ADDR.into());
        spec.listen_addr = self.raft_listen.clone();
        spec.storage = match &self.data_dir {
            Some(dir) => Storage::Dir(dir.clone()),
            None => Storage::PerNodeNamed(PathBuf::from("data"), name.to_string()),
        };
        spec.no_sync = self.no_sync;
        spec.journal = !self.no_journal;
        spec.start = match (&self.join, peers) {
            (Some(join), _) => Start::Join {
                via: vec![join.clone()],
                as_learner: self.join_as_learner,
            },
            (None, Some(peers)) => Start::Members(peers),
            (None, None) if self.wait_to_be_added => Start::Wait,
            (None, None) => Start::Single,
        };
        spec.restore = match (&self.restore_wal_from, &self.restore_snapshot_from) {
            (Some(src), _) => Some(Restore::WalFrom(src.clone())),
            (_, Some(src)) => Some(Restore::SnapshotFrom(src.clone())),
            _ => None,
        };
        spec.config = config;
        spec.logger = logger.clone();
        Ok(spec)
    }
}

/// TLS material from the PEM files named by a cert, key and CA flag (the
/// flags' names, for errors); None without cert and key. Each file is read
/// and checked now, so a bad one stops the start, naming the flag and file.
pub fn tls_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    ca: Option<&Path>,
    flags: [&str; 3],
) -> Result<Option<TlsConfig>, FlagError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let load = |path: &Path, kind: PemKind, flag: &str| {
        load_pem(path, kind).map_err(|e| FlagError(format!("{flag}: {e}")))
    };
    Ok(Some(TlsConfig {
        cert_pem: Some(load(cert, PemKind::Certificates, flags[0])?),
        key_pem: Some(load(key, PemKind::PrivateKey, flags[1])?),
        ca_pem: ca
            .map(|p| load(p, PemKind::CaCertificates, flags[2]))
            .transpose()?,
        domain: None,
    }))
}

/// Parses a `--log-level` value.
pub fn parse_level(s: &str) -> Result<slog::Level, String> {
    s.parse()
        .map_err(|()| format!("unknown log level {s:?} (error, warning, info, debug, trace)"))
}

/// What ended a server: `Some(reason)` when its node stopped on a fatal
/// error (set by [`until_stopped`]'s future).
#[derive(Debug, Clone, Default)]
pub struct Fatal(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Fatal {
    /// The fatal error the node stopped with, if that is what happened.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().ok().and_then(|f| f.clone())
    }
}

/// A future that resolves on SIGTERM/SIGINT or when the node stops with
/// a fatal error (a storage failure, a lost log), and what it records: a
/// server waits on the future, stops, and exits with an error when
/// [`Fatal::reason`] says the node failed, so a supervisor notices.
pub fn until_stopped(
    handle: &raftify_core::RaftHandle,
    logger: &slog::Logger,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    Fatal,
) {
    let fatal = Fatal::default();
    let seen = fatal.clone();
    let mut state = handle.subscribe_role();
    let logger = logger.clone();
    let stop = async move {
        let node_failed = async {
            match state
                .wait_for(|s| s.fatal.is_some())
                .await
                .map(|s| s.fatal.clone())
            {
                Ok(reason) => reason,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown_signal() => slog::info!(logger, "signal received; shutting down"),
            reason = node_failed => {
                if let Ok(mut f) = seen.0.lock() {
                    *f = reason;
                }
            }
        }
    };
    (stop, fatal)
}

/// A server's `main`: runs `run` on a multi-threaded runtime, drops the
/// logger after the runtime (so its last lines are written), and turns an
/// error into `app: error` on stderr and exit code 1.
pub fn run_main<F, Fut, E>(app: &str, logger: slog::Logger, run: F) -> std::process::ExitCode
where
    F: FnOnce(slog::Logger) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt
            .block_on(run(logger.clone()))
            .map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("cannot start the runtime: {e}")),
    };
    drop(logger);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{app}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Makes any panic, in any task, end the process with exit code 101 after
/// the usual message: a node whose loop died must not stay up answering
/// errors that no supervisor notices. `app` names the binary in the note.
pub fn exit_on_panic(app: &'static str) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("{app}: a task panicked; the node stops (exit code 101)");
        std::process::exit(101);
    }));
}

#[cfg(test)]
mod tests {
    use super::NodeArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn rotation_tokens_are_repeatable_and_split_on_spaces() {
        let args = Args::parse_from([
            "app",
            "--auth-token",
            "new",
            "--accept-token",
            "old",
            "--accept-token",
            "older \toldest\n",
            "--accept-peer-token",
            "peer",
        ]);
        let grpc = args.node.grpc_config(16).unwrap();
        assert_eq!(grpc.client_tokens(), ["new", "old", "older", "oldest"]);
        assert_eq!(
            grpc.peer_tokens(),
            ["new", "old", "older", "oldest", "peer"]
        );
        // A further token with nothing to rotate from is an error.
        let args = Args::parse_from(["app", "--accept-token", "old"]);
        let err = args.node.grpc_config(16).unwrap_err().to_string();
        assert!(err.contains("needs auth_token"), "{err}");
    }
}
