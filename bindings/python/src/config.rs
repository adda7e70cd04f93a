//! `raftify.Config`: everything a node needs to start.

use crate::errors::raftify_msg;
use pyo3::prelude::*;
use raftify_grpc::{GrpcConfig, TlsConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// Configuration of one raftify node (raft settings, storage, network).
#[pyclass(module = "raftify", get_all, set_all, from_py_object)]
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: u64,
    pub raft_addr: String,
    pub listen_addr: Option<String>,
    pub data_dir: Option<String>,
    pub storage: String,
    pub no_sync: bool,
    pub peers: BTreeMap<u64, String>,
    pub cluster_id: String,
    pub tick_ms: u64,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub snapshot_threshold: u64,
    pub snapshot_log_retention: u64,
    pub proposal_timeout: f64,
    pub read_timeout: f64,
    pub conf_change_timeout: f64,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_ca: Option<String>,
    pub auth_token: Option<String>,
    pub peer_token: Option<String>,
    pub log_level: String,
    pub accept_tokens: Vec<String>,
    pub accept_peer_tokens: Vec<String>,
}

#[pymethods]
impl Config {
    #[new]
    #[pyo3(signature = (
        node_id = 0,
        raft_addr = "127.0.0.1:0",
        *,
        listen_addr = None,
        data_dir = None,
        storage = None,
        no_sync = false,
        peers = None,
        cluster_id = "raftify",
        tick_ms = 100,
        election_tick = 10,
        heartbeat_tick = 2,
        snapshot_threshold = 100_000,
        snapshot_log_retention = 1_000,
        proposal_timeout = 10.0,
        read_timeout = 5.0,
        conf_change_timeout = 20.0,
        tls_cert = None,
        tls_key = None,
        tls_ca = None,
        auth_token = None,
        log_level = "warning",
        peer_token = None,
        accept_tokens = None,
        accept_peer_tokens = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        node_id: u64,
        raft_addr: &str,
        listen_addr: Option<String>,
        data_dir: Option<String>,
        storage: Option<String>,
        no_sync: bool,
        peers: Option<BTreeMap<u64, String>>,
        cluster_id: &str,
        tick_ms: u64,
        election_tick: usize,
        heartbeat_tick: usize,
        snapshot_threshold: u64,
        snapshot_log_retention: u64,
        proposal_timeout: f64,
        read_timeout: f64,
        conf_change_timeout: f64,
        tls_cert: Option<String>,
        tls_key: Option<String>,
        tls_ca: Option<String>,
        auth_token: Option<String>,
        log_level: &str,
        peer_token: Option<String>,
        accept_tokens: Option<Vec<String>>,
        accept_peer_tokens: Option<Vec<String>>,
    ) -> Self {
        // LMDB when a data directory is given, memory otherwise.
        let storage = storage.unwrap_or_else(|| {
            if data_dir.is_some() {
                "lmdb".into()
            } else {
                "memory".into()
            }
        });
        Config {
            node_id,
            raft_addr: raft_addr.to_string(),
            listen_addr,
            data_dir,
            storage,
            no_sync,
            peers: peers.unwrap_or_default(),
            cluster_id: cluster_id.to_string(),
            tick_ms,
            election_tick,
            heartbeat_tick,
            snapshot_threshold,
            snapshot_log_retention,
            proposal_timeout,
            read_timeout,
            conf_change_timeout,
            tls_cert,
            tls_key,
            tls_ca,
            auth_token,
            peer_token,
            log_level: log_level.to_string(),
            accept_tokens: accept_tokens.unwrap_or_default(),
            accept_peer_tokens: accept_peer_tokens.unwrap_or_default(),
        }
    }

    /// Checks every field (the same checks `Node.start` makes); raises
    /// `ConfigError` naming the field.
    fn validate(&self, py: Python<'_>) -> PyResult<()> {
        self.check()
            .map_err(|m| raftify_msg(py, "ConfigError", m))?;
        self.core_config(self.node_id.max(1))
            .map_err(|m| raftify_msg(py, "ConfigError", m))?;
        self.grpc_config()
            .map_err(|m| raftify_msg(py, "ConfigError", m))?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "Config(node_id={}, raft_addr={:?}, storage={:?}, data_dir={:?}, peers={:?}, cluster_id={:?})",
            self.node_id, self.raft_addr, self.storage, self.data_dir, self.peers, self.cluster_id
        )
    }
}

/// The gRPC settings (TLS, tokens) of `config` for a module function
/// that calls a cluster (the defaults without one).
pub fn grpc_of(py: Python<'_>, config: Option<&Config>) -> PyResult<GrpcConfig> {
    match config {
        Some(c) => c
            .grpc_config()
            .map_err(|m| raftify_msg(py, "ConfigError", m)),
        None => Ok(GrpcConfig::default()),
    }
}

/// A function's `name` argument of `v` seconds (positive, finite).
pub fn seconds_arg(py: Python<'_>, name: &str, v: f64) -> PyResult<Duration> {
    seconds(name, v).map_err(|m| raftify_msg(py, "ConfigError", m))
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    if !v.is_finite() || v <= 0.0 {
        return Err(format!(
            "{name} must be a positive number of seconds, got {v}"
        ));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{name}: {e}"))
}

fn read_pem(path: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {path}: {e}"))
}

impl Config {
    /// Checks of the bindings' own fields.
    pub fn check(&self) -> Result<(), String> {
        match self.storage.as_str() {
            "memory" => {}
            "lmdb" => {
                if self.data_dir.as_deref().unwrap_or("").is_empty() {
                    return Err("storage \"lmdb\" needs data_dir".into());
                }
            }
            other => {
                return Err(format!(
                    "storage must be \"lmdb\" or \"memory\", got {other:?}"
                ))
            }
        }
        if self.tick_ms == 0 {
            return Err("tick_ms must be positive".into());
        }
        for (id, addr) in &self.peers {
            if *id == 0 {
                return Err("peers: node id 0 is reserved".into());
            }
            raftify_core::membership::validate_addr(addr)
                .map_err(|e| format!("peers[{id}]: {e}"))?;
        }
        log_level(&self.log_level)?;
        Ok(())
    }

    /// The core configuration for node `id`.
    pub fn core_config(&self, id: u64) -> Result<raftify_core::Config, String> {
        let mut c = raftify_core::Config::new(id);
        c.cluster_id = self.cluster_id.clone();
        c.tick_interval = Duration::from_millis(self.tick_ms);
        c.election_tick = self.election_tick;
        c.heartbeat_tick = self.heartbeat_tick;
        c.snapshot_threshold = self.snapshot_threshold;
        c.snapshot_log_retention = self.snapshot_log_retention;
        c.proposal_timeout = seconds("proposal_timeout", self.proposal_timeout)?;
        c.read_timeout = seconds("read_timeout", self.read_timeout)?;
        c.conf_change_timeout = seconds("conf_change_timeout", self.conf_change_timeout)?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// The gRPC settings (TLS files are read here).
    pub fn grpc_config(&self) -> Result<GrpcConfig, String> {
        let mut g = GrpcConfig {
            auth_token: self.auth_token.clone(),
            peer_token: self.peer_token.clone(),
            accept_tokens: self.accept_tokens.clone(),
            accept_peer_tokens: self.accept_peer_tokens.clone(),
            ..GrpcConfig::default()
        };
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => {}
            (Some(cert), Some(key), ca) => {
                g.tls = Some(TlsConfig {
                    cert_pem: Some(read_pem(cert, "tls_cert")?),
                    key_pem: Some(read_pem(key, "tls_key")?),
                    ca_pem: ca.as_deref().map(|p| read_pem(p, "tls_ca")).transpose()?,
                    domain: None,
                });
            }
            (None, None, Some(ca)) => {
                // Client-only TLS (e.g. to ask a TLS cluster for a ticket).
                g.tls = Some(TlsConfig {
                    ca_pem: Some(read_pem(ca, "tls_ca")?),
                    ..TlsConfig::default()
                });
            }
            _ => return Err("tls_cert and tls_key go together".into()),
        }
        g.validate().map_err(|e| e.to_string())?;
        Ok(g)
    }
}

/// Parses a log level name.
pub fn log_level(name: &str) -> Result<Option<slog::Level>, String> {
    Ok(Some(match name.to_ascii_lowercase().as_str() {
        "off" | "none" => return Ok(None),
        "critical" => slog::Level::Critical,
        "error" => slog::Level::Error,
        "warn" | "warning" => slog::Level::Warning,
        "info" => slog::Level::Info,
        "debug" => slog::Level::Debug,
        "trace" => slog::Level::Trace,
        other => {
            return Err(format!(
                "log_level must be off, error, warning, info, debug or trace, got {other:?}"
            ))
        }
    }))
}
