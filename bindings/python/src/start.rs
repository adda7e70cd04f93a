//! Starting a node: `Node.start()`'s arguments and the config checked and
//! turned into a `StartPlan` while holding the GIL, then the node launched
//! through raftify's launcher on a runtime of its own with the GIL released.

use crate::config::{log_level, Config};
use crate::convert::addr_list;
use crate::errors::{raftify_msg, to_pyerr};
use crate::running::{NodeRaft, Running};
use crate::runtime::Rt;
use crate::sm::{output_bytes, PyStateMachine};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use raftify::{launch, LaunchError, NodeSpec, ReadFn, Start, Storage};
use raftify_core::Error;
use raftify_grpc::{GrpcConfig, ServerHandle};
use slog::Logger;
use std::sync::{Arc, Mutex};

/// Why a start failed, turned into a Python exception once the GIL is back.
enum Fail {
    Core(Error),
    Class(&'static str, String),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Core(e)
    }
}

impl From<raftify_core::StorageError> for Fail {
    fn from(e: raftify_core::StorageError) -> Self {
        Fail::Core(Error::Storage(e))
    }
}

fn config_fail(m: impl Into<String>) -> Fail {
    Fail::Class("ConfigError", m.into())
}

impl Fail {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Fail::Core(e) => to_pyerr(py, e),
            Fail::Class(class, m) => raftify_msg(py, class, m),
        }
    }
}

fn make_logger(level: Option<slog::Level>) -> Logger {
    match level {
        None => raftify_core::discard_logger(),
        Some(level) => raftify_core::stderr_logger(level),
    }
}

/// Everything `start` decided while holding the GIL.
struct StartPlan {
    config: Config,
    /// The raft settings, checked once (the launcher sets the id).
    core: raftify_core::Config,
    grpc: GrpcConfig,
    logger: Logger,
    sm: PyStateMachine,
    has_read: bool,
    bootstrap: String,
    join: Option<Vec<String>>,
    as_learner: bool,
}

impl From<LaunchError> for Fail {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Config(m) => config_fail(m),
            LaunchError::MissingId => {
                config_fail("node_id is required (0 is only allowed with join=, which assigns one)")
            }
            LaunchError::MissingAddr => config_fail("raft_addr is required"),
            e @ LaunchError::Bind { .. } => Fail::Class("TransportError", e.to_string()),
            e @ LaunchError::Storage { .. } => Fail::Class("StorageError", e.to_string()),
            LaunchError::Node(e) => Fail::Core(e),
        }
    }
}

/// Starts the node through raftify's launcher (the one every front-end
/// uses), as `start()`'s arguments and the config describe.
async fn start_node(plan: StartPlan) -> Result<(NodeRaft, ServerHandle, u64, String), Fail> {
    let StartPlan {
        config,
        core,
        grpc,
        logger,
        sm,
        has_read,
        bootstrap,
        join,
        as_learner,
    } = plan;
    let mut spec = NodeSpec::new();
    spec.id = (config.node_id != 0).then_some(config.node_id);
    spec.raft_addr = Some(config.raft_addr.trim().to_string()).filter(|a| !a.is_empty());
    spec.listen_addr = config.listen_addr.clone().filter(|l| !l.trim().is_empty());
    spec.storage = match config.storage.as_str() {
        "memory" => Storage::Memory,
        _ => Storage::Dir(config.data_dir.clone().unwrap_or_default().into()),
    };
    spec.no_sync = config.no_sync;
    spec.start = match join {
        Some(via) => Start::Join { via, as_learner },
        None => match bootstrap.as_str() {
            "auto" => Start::Auto(config.peers.clone()),
            "single" => Start::Single,
            "members" if config.peers.is_empty() => {
                return Err(config_fail("bootstrap=\"members\" needs peers"))
            }
            "members" => Start::Members(config.peers.clone()),
            "none" => Start::Wait,
            other => {
                return Err(Fail::Class(
                    "InvalidArgumentError",
                    format!("bootstrap must be auto, single, members or none, got {other:?}"),
                ))
            }
        },
    };
    spec.config = core;
    spec.grpc = grpc;
    spec.logger = logger;
    let reader: Option<ReadFn<PyStateMachine>> = has_read.then(|| {
        Arc::new(|sm: &PyStateMachine, query: &[u8]| {
            Python::attach(|py| {
                let q = PyBytes::new(py, query).into_any();
                sm.read_py(py, &q)
                    .and_then(|out| output_bytes(out.bind(py), "read"))
                    .map_err(|e| crate::errors::describe(py, &e).into())
            })
        }) as ReadFn<PyStateMachine>
    });
    let node = launch(spec, sm, reader).await?;
    Ok((node.raft, node.server, node.id, node.raft_addr))
}

/// Starts a node of `config` replicating `state_machine` (entries through
/// `codec` when given), as `Node.start()`'s `bootstrap`,
/// `join` and `as_learner` ask, and returns it running.
pub fn start_running(
    py: Python<'_>,
    config: &Config,
    state_machine: &Py<PyAny>,
    codec: Option<&Py<PyAny>>,
    bootstrap: &str,
    join: Option<Bound<'_, PyAny>>,
    as_learner: bool,
) -> PyResult<Arc<Running>> {
    let config = config.clone();
    config
        .check()
        .map_err(|m| raftify_msg(py, "ConfigError", m))?;
    let core = config
        .core_config(config.node_id.max(1))
        .map_err(|m| raftify_msg(py, "ConfigError", m))?;
    let grpc = config
        .grpc_config()
        .map_err(|m| raftify_msg(py, "ConfigError", m))?;
    let level = log_level(&config.log_level).map_err(|m| raftify_msg(py, "ConfigError", m))?;
    let join = join
        .filter(|j| !j.is_none())
        .map(|j| addr_list(&j))
        .transpose()?;
    let sm = PyStateMachine::new(
        py,
        state_machine.clone_ref(py),
        codec.map(|c| c.clone_ref(py)),
    )?;
    let has_read = state_machine.bind(py).hasattr("read")?;
    crate::runtime::not_on_runtime(py)?;
    let rt = Rt::multi_thread()?;
    let plan = StartPlan {
        config,
        core,
        grpc,
        logger: make_logger(level),
        sm,
        has_read,
        bootstrap: bootstrap.to_string(),
        join,
        as_learner,
    };
    let started = py.detach(|| rt.get().block_on(start_node(plan)));
    match started {
        Ok((raft, server, id, raft_addr)) => Ok(Arc::new(Running {
            raft,
            server: Mutex::new(Some(server)),
            id,
            raft_addr,
            rt,
        })),
        Err(fail) => Err(fail.into_py(py)),
    }
}
