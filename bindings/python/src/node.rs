//! `raftify.Node`: a raftify node with its own tokio runtime, driven from
//! Python.
//!
//! Every blocking method releases the GIL (`Python::detach`) while it waits
//! on the node's runtime; every `*_async` method returns an asyncio future
//! that the runtime resolves through `loop.call_soon_threadsafe`.

use crate::config::{log_level, Config};
use crate::errors::{internal, raftify_msg, to_pyerr};
use crate::sm::{input_bytes, output_bytes, PyStateMachine};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use raftify::{launch, LaunchError, NodeSpec, ReadFn, Start, Storage};
use raftify_core::{Error, JoinTicket as CoreTicket, Member, MemberRole, Raft, Status};
use raftify_grpc::{GrpcConfig, GrpcTransport, ServerHandle};
use slog::Logger;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type NodeRaft = Raft<Vec<u8>, PyStateMachine>;

/// A tokio runtime that, when dropped, stops in the background: dropping it
/// never blocks (a thread holding the GIL must not wait for runtime threads
/// that may be waiting for the GIL).
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime lives until Rt is dropped")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A started node.
struct Running {
    raft: NodeRaft,
    server: Mutex<Option<ServerHandle>>,
    id: u64,
    raft_addr: String,
    // Last: dropped after the node's parts.
    rt: Rt,
}

enum State {
    Idle,
    Starting,
    Running(Arc<Running>),
    Stopped,
}

/// A join ticket: the node id a cluster reserved for a new node, and the
/// cluster's members.
#[pyclass(module = "raftify", frozen, get_all, eq, from_py_object)]
#[derive(Clone, Debug, PartialEq)]
pub struct JoinTicket {
    pub reserved_id: u64,
    pub cluster_id: String,
    pub leader_id: u64,
    pub peers: BTreeMap<u64, String>,
}

impl From<CoreTicket> for JoinTicket {
    fn from(t: CoreTicket) -> Self {
        JoinTicket {
            reserved_id: t.reserved_id,
            cluster_id: t.cluster_id,
            leader_id: t.leader_id,
            peers: t.peers,
        }
    }
}

impl From<&JoinTicket> for CoreTicket {
    fn from(t: &JoinTicket) -> Self {
        CoreTicket {
            reserved_id: t.reserved_id,
            cluster_id: t.cluster_id.clone(),
            leader_id: t.leader_id,
            peers: t.peers.clone(),
        }
    }
}

#[pymethods]
impl JoinTicket {
    #[new]
    fn new(
        reserved_id: u64,
        cluster_id: String,
        leader_id: u64,
        peers: BTreeMap<u64, String>,
    ) -> Self {
        JoinTicket {
            reserved_id,
            cluster_id,
            leader_id,
            peers,
        }
    }

    /// The ticket as JSON (to hand it to another process).
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        serde_json::to_string(&CoreTicket::from(self))
            .map_err(|e| raftify_msg(py, "CodecError", e.to_string()))
    }

    /// A ticket from `to_json`'s output.
    #[staticmethod]
    fn from_json(py: Python<'_>, data: &str) -> PyResult<JoinTicket> {
        serde_json::from_str::<CoreTicket>(data)
            .map(Into::into)
            .map_err(|e| {
                raftify_msg(
                    py,
                    "InvalidArgumentError",
                    format!("not a join ticket: {e}"),
                )
            })
    }

    fn __repr__(&self) -> String {
        format!(
            "JoinTicket(reserved_id={}, cluster_id={:?}, leader_id={}, peers={:?})",
            self.reserved_id, self.cluster_id, self.leader_id, self.peers
        )
    }
}

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
    spec.config = config.core_config(1).map_err(config_fail)?;
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

/// A raftify node: a Python state machine replicated with Raft over gRPC.
#[pyclass(module = "raftify", weakref)]
pub struct Node {
    config: Config,
    sm: Py<PyAny>,
    codec: Option<Py<PyAny>>,
    state: Mutex<State>,
}

fn members_list(py: Python<'_>, members: &[Member]) -> PyResult<Py<PyAny>> {
    let list = PyList::empty(py);
    for m in members {
        list.append(member_dict(py, m)?)?;
    }
    Ok(list.into_any().unbind())
}

fn member_dict<'py>(py: Python<'py>, m: &Member) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", m.id)?;
    d.set_item("addr", m.addr.clone())?;
    d.set_item(
        "role",
        match m.role {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        },
    )?;
    Ok(d)
}

fn status_dict(py: Python<'_>, s: &Status) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("id", s.id)?;
    d.set_item("cluster_id", &s.cluster_id)?;
    d.set_item("role", s.role.as_str())?;
    d.set_item("term", s.term)?;
    d.set_item("vote", s.vote)?;
    d.set_item("leader_id", s.leader_id)?;
    d.set_item("commit_index", s.commit_index)?;
    d.set_item("applied_index", s.applied_index)?;
    d.set_item("first_index", s.first_index)?;
    d.set_item("last_index", s.last_index)?;
    d.set_item("snapshot_index", s.snapshot_index)?;
    d.set_item("members", members_list(py, &s.members)?)?;
    d.set_item("joint", s.joint)?;
    let progress = PyDict::new(py);
    for (id, p) in &s.progress {
        let e = PyDict::new(py);
        e.set_item("matched", p.matched)?;
        e.set_item("next_index", p.next_index)?;
        e.set_item("state", &p.state)?;
        e.set_item("recent_active", p.recent_active)?;
        progress.set_item(id, e)?;
    }
    d.set_item("progress", progress)?;
    Ok(d.into_any().unbind())
}

fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_pyobject(py)?.into_any().unbind(),
            (None, Some(i)) => i.into_pyobject(py)?.into_any().unbind(),
            _ => n
                .as_f64()
                .unwrap_or(0.0)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        },
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(a) => {
            let list = PyList::empty(py);
            for x in a {
                list.append(json_to_py(py, x)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// Joins a list of addresses given as `"a,b"`, `"a"` or `["a", "b"]`.
fn addr_list(v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let addrs: Vec<String> = match v.extract::<String>() {
        Ok(s) => s
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect(),
        Err(_) => v.extract::<Vec<String>>()?,
    };
    if addrs.is_empty() {
        return Err(raftify_msg(
            v.py(),
            "InvalidArgumentError",
            "no cluster address given",
        ));
    }
    Ok(addrs)
}

/// Resolves an asyncio future from a runtime thread.
fn resolve_later(
    py: Python<'_>,
    event_loop: &Py<PyAny>,
    future: &Py<PyAny>,
    outcome: PyResult<Py<PyAny>>,
) {
    let (ok, value): (bool, Py<PyAny>) = match outcome {
        Ok(v) => (true, v),
        Err(e) => (false, e.into_value(py).into_any()),
    };
    let Ok(resolve) = py.import("raftify._aio").and_then(|m| m.getattr("resolve")) else {
        return;
    };
    // Fails only when the loop is closed: nobody is waiting any more.
    let _ = event_loop.call_method1(py, "call_soon_threadsafe", (resolve, future, ok, value));
}

impl Node {
    fn live(&self, py: Python<'_>) -> PyResult<Arc<Running>> {
        let state = self
            .state
            .lock()
            .map_err(|_| internal("node state poisoned"))?;
        match &*state {
            State::Running(r) => Ok(r.clone()),
            State::Stopped => Err(raftify_msg(py, "ShutdownError", "the node has shut down")),
            State::Idle | State::Starting => Err(raftify_msg(
                py,
                "RaftifyError",
                "the node is not started; call start() first",
            )),
        }
    }

    /// Runs `fut` on the node's runtime and waits for it with the GIL
    /// released.
    fn block<T, F>(&self, py: Python<'_>, fut: impl FnOnce(&Running) -> F) -> PyResult<T>
    where
        F: Future<Output = Result<T, Error>> + Send,
        T: Send,
    {
        let r = self.live(py)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(raftify_msg(
                py,
                "RaftifyError",
                "blocking node methods cannot run on raftify's own threads (inside apply, \
                 snapshot, restore or read); use the *_async methods from asyncio code",
            ));
        }
        let fut = fut(&r);
        py.detach(|| r.rt.get().block_on(fut))
            .map_err(|e| to_pyerr(py, e))
    }

    /// Runs `fut` on the node's runtime and returns an asyncio future of
    /// `conv(output)`, for the running event loop.
    fn spawn<T, F, C>(
        &self,
        py: Python<'_>,
        fut: impl FnOnce(&Running) -> F,
        conv: C,
    ) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
        C: for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
    {
        let r = self.live(py)?;
        let asyncio = py.import("asyncio")?;
        let event_loop = asyncio.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?;
        let loop_obj = event_loop.unbind();
        let fut_obj = future.clone().unbind();
        let work = fut(&r);
        r.rt.get().spawn(async move {
            let result = work.await;
            Python::attach(move |py| {
                let outcome = result
                    .map_err(|e| to_pyerr(py, e))
                    .and_then(|v| conv(py, v));
                resolve_later(py, &loop_obj, &fut_obj, outcome);
            });
        });
        Ok(future.unbind())
    }

    fn encode_entry(&self, py: Python<'_>, entry: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        match &self.codec {
            Some(codec) => {
                let encoded = codec
                    .bind(py)
                    .call_method1("encode", (entry,))
                    .map_err(|e| {
                        raftify_msg(
                            py,
                            "CodecError",
                            format!("codec.encode failed: {}", crate::errors::describe(py, &e)),
                        )
                    })?;
                input_bytes(&encoded, "codec.encode()'s result")
            }
            None => input_bytes(entry, "the entry"),
        }
    }
}

fn bytes_out(py: Python<'_>, v: Vec<u8>) -> PyResult<Py<PyAny>> {
    Ok(PyBytes::new(py, &v).into_any().unbind())
}

fn int_out(py: Python<'_>, v: u64) -> PyResult<Py<PyAny>> {
    Ok(v.into_pyobject(py)?.into_any().unbind())
}

fn none_out(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

fn members_out(py: Python<'_>, m: Vec<Member>) -> PyResult<Py<PyAny>> {
    members_list(py, &m)
}

fn read_future(
    r: &Running,
    query: Py<PyAny>,
) -> impl Future<Output = Result<PyResult<Py<PyAny>>, Error>> + Send + 'static {
    let raft = r.raft.clone();
    async move {
        raft.linearizable_read(move |sm| Python::attach(|py| sm.read_py(py, query.bind(py))))
            .await
    }
}

fn propose_future(
    r: &Running,
    data: Vec<u8>,
    forward: bool,
) -> impl Future<Output = Result<Vec<u8>, Error>> + Send + 'static {
    let raft = r.raft.clone();
    async move {
        if forward {
            raft.propose(&data).await
        } else {
            raft.propose_local(&data).await
        }
    }
}

fn wait_leader_future(
    r: &Running,
    timeout: f64,
) -> impl Future<Output = Result<u64, Error>> + Send + 'static {
    let raft = r.raft.clone();
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    async move { raft.handle().wait_for_leader(timeout).await }
}

#[pymethods]
impl Node {
    /// A node of `config` replicating `state_machine` (an object with
    /// `apply(entry) -> bytes | None`, `snapshot() -> bytes` and
    /// `restore(bytes)`; optionally `read(query)` and
    /// `apply_at(index, entry)`). With `codec` (an object with
    /// `encode(entry) -> bytes` and `decode(bytes) -> entry`) entries are
    /// Python objects; without, bytes.
    #[new]
    #[pyo3(signature = (config, state_machine, *, codec = None))]
    fn new(
        py: Python<'_>,
        config: Config,
        state_machine: Py<PyAny>,
        codec: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        // Checks the methods now rather than at the first apply.
        PyStateMachine::new(
            py,
            state_machine.clone_ref(py),
            codec.as_ref().map(|c| c.clone_ref(py)),
        )?;
        Ok(Node {
            config,
            sm: state_machine,
            codec,
            state: Mutex::new(State::Idle),
        })
    }

    /// Starts the node in the background and returns once it runs (and, with
    /// `join`, once the cluster has added it and this node has applied that
    /// change).
    ///
    /// A data directory that holds a node resumes it (`bootstrap` and `join`
    /// are then ignored). Otherwise: `join` (a member's address, or several)
    /// asks that cluster for an id and joins it; else `bootstrap` decides:
    /// `"auto"` (static members when `config.peers` is set, else a single-node
    /// cluster), `"single"`, `"members"` or `"none"` (wait to be added; see
    /// `join_cluster`).
    #[pyo3(signature = (*, bootstrap = "auto", join = None, as_learner = false))]
    fn start(
        slf: &Bound<'_, Self>,
        bootstrap: &str,
        join: Option<Bound<'_, PyAny>>,
        as_learner: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.borrow();
        {
            let mut state = this
                .state
                .lock()
                .map_err(|_| internal("node state poisoned"))?;
            match &*state {
                State::Idle => *state = State::Starting,
                State::Starting | State::Running(_) => {
                    return Err(raftify_msg(
                        py,
                        "RaftifyError",
                        "the node is already started",
                    ))
                }
                State::Stopped => {
                    return Err(raftify_msg(
                        py,
                        "ShutdownError",
                        "the node has shut down; create a new Node to restart it",
                    ))
                }
            }
        }
        let result = this.start_inner(py, bootstrap, join, as_learner);
        let mut state = this
            .state
            .lock()
            .map_err(|_| internal("node state poisoned"))?;
        match result {
            Ok(running) => {
                *state = State::Running(running);
                drop(state);
                py.import("raftify._aio")?.call_method1("track", (slf,))?;
                Ok(())
            }
            Err(e) => {
                *state = State::Idle;
                Err(e)
            }
        }
    }

    /// This node's id (assigned by the cluster after a join).
    #[getter]
    fn node_id(&self, py: Python<'_>) -> u64 {
        self.live(py).map(|r| r.id).unwrap_or(self.config.node_id)
    }

    /// The address peers reach this node at (the chosen port after `:0`).
    #[getter]
    fn raft_addr(&self, py: Python<'_>) -> String {
        self.live(py)
            .map(|r| r.raft_addr.clone())
            .unwrap_or_else(|_| self.config.raft_addr.clone())
    }

    /// A copy of the node's configuration.
    #[getter]
    fn config(&self) -> Config {
        self.config.clone()
    }

    /// The state machine object.
    #[getter]
    fn state_machine(&self, py: Python<'_>) -> Py<PyAny> {
        self.sm.clone_ref(py)
    }

    /// True between a successful `start()` and `shutdown()`.
    #[getter]
    fn running(&self) -> bool {
        matches!(self.state.lock().as_deref(), Ok(State::Running(_)))
    }

    /// Proposes `entry` and returns the state machine's output once it is
    /// committed and applied on this node. A follower forwards it to the
    /// leader (`forward=False` raises `NotLeaderError` instead).
    #[pyo3(signature = (entry, *, forward = true))]
    fn propose(
        &self,
        py: Python<'_>,
        entry: &Bound<'_, PyAny>,
        forward: bool,
    ) -> PyResult<Py<PyBytes>> {
        let data = self.encode_entry(py, entry)?;
        let out = self.block(py, |r| propose_future(r, data, forward))?;
        Ok(PyBytes::new(py, &out).unbind())
    }

    /// `propose` for asyncio.
    #[pyo3(signature = (entry, *, forward = true))]
    fn propose_async(
        &self,
        py: Python<'_>,
        entry: &Bound<'_, PyAny>,
        forward: bool,
    ) -> PyResult<Py<PyAny>> {
        let data = self.encode_entry(py, entry)?;
        self.spawn(py, |r| propose_future(r, data, forward), bytes_out)
    }

    /// Linearizable read: confirms through raft's ReadIndex that this node
    /// has applied every write committed before the call, then returns
    /// `state_machine.read(query)`. Works on followers.
    #[pyo3(signature = (query = None))]
    fn read(&self, py: Python<'_>, query: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let query = query.unwrap_or_else(|| py.None());
        self.block(py, |r| read_future(r, query))?
    }

    /// `read` for asyncio.
    #[pyo3(signature = (query = None))]
    fn read_async(&self, py: Python<'_>, query: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let query = query.unwrap_or_else(|| py.None());
        self.spawn(py, |r| read_future(r, query), |_py, out| out)
    }

    /// Waits until this node's state machine reflects every write committed
    /// before the call (raft ReadIndex) and returns that index; reading the
    /// state machine object afterwards is linearizable.
    fn read_index(&self, py: Python<'_>) -> PyResult<u64> {
        self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().read_index().await }
        })
    }

    /// `read_index` for asyncio.
    fn read_index_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().read_index().await }
            },
            int_out,
        )
    }

    /// `state_machine.read(query)` on this node now, without ReadIndex (may
    /// be stale).
    #[pyo3(signature = (query = None))]
    fn stale_read(&self, py: Python<'_>, query: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let query = query.unwrap_or_else(|| py.None());
        let sm = PyStateMachine::new(py, self.sm.clone_ref(py), None)?;
        sm.read_py(py, query.bind(py))
    }

    /// Waits until a leader is known and returns its id.
    #[pyo3(signature = (timeout = 10.0))]
    fn wait_for_leader(&self, py: Python<'_>, timeout: f64) -> PyResult<u64> {
        self.block(py, |r| wait_leader_future(r, timeout))
    }

    /// `wait_for_leader` for asyncio.
    #[pyo3(signature = (timeout = 10.0))]
    fn wait_for_leader_async(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        self.spawn(py, |r| wait_leader_future(r, timeout), int_out)
    }

    /// The known leader's id, or None.
    fn leader_id(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        Ok(self.live(py)?.raft.handle().leader_id())
    }

    /// The known leader's raft address, or None.
    fn leader_addr(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(self.live(py)?.raft.handle().state().leader_addr)
    }

    /// True when this node is the leader.
    fn is_leader(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.live(py)?.raft.handle().is_leader())
    }

    /// Role, term, leader and applied index, without waiting.
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.live(py)?.raft.handle().state();
        let v = serde_json::to_value(&s).map_err(|e| internal(e.to_string()))?;
        json_to_py(py, &v)
    }

    /// The node's full status as a dict (role, term, indexes, members,
    /// replication progress on the leader).
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().status().await }
        })?;
        status_dict(py, &s)
    }

    /// `status` for asyncio.
    fn status_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().status().await }
            },
            |py, s| status_dict(py, &s),
        )
    }

    /// The voters and learners: `[{"id", "addr", "role"}]`.
    fn members(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().status().await }
        })?;
        members_list(py, &s.members)
    }

    /// Member id → raft address (members whose address is known).
    fn peers(&self, py: Python<'_>) -> PyResult<BTreeMap<u64, String>> {
        let s = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().status().await }
        })?;
        Ok(s.members
            .into_iter()
            .filter_map(|m| m.addr.map(|a| (m.id, a)))
            .collect())
    }

    /// Counters (proposals, applied entries, snapshots, ...).
    fn metrics(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let m = self.live(py)?.raft.handle().metrics();
        let v = serde_json::to_value(&m).map_err(|e| internal(e.to_string()))?;
        json_to_py(py, &v)
    }

    /// Adds a voter (or promotes a learner); returns the members.
    fn add_voter(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        let m = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().add_voter(node_id, &addr).await }
        })?;
        members_list(py, &m)
    }

    /// `add_voter` for asyncio.
    fn add_voter_async(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().add_voter(node_id, &addr).await }
            },
            members_out,
        )
    }

    /// Adds a learner (receives the log, does not vote); returns the members.
    fn add_learner(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        let m = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().add_learner(node_id, &addr).await }
        })?;
        members_list(py, &m)
    }

    /// `add_learner` for asyncio.
    fn add_learner_async(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().add_learner(node_id, &addr).await }
            },
            members_out,
        )
    }

    /// Promotes a learner to voter; returns the members.
    fn promote_learner(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        let m = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().promote_learner(node_id).await }
        })?;
        members_list(py, &m)
    }

    /// Removes a voter or learner; returns the members.
    fn remove_node(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        let m = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().remove_node(node_id).await }
        })?;
        members_list(py, &m)
    }

    /// `remove_node` for asyncio.
    fn remove_node_async(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().remove_node(node_id).await }
            },
            members_out,
        )
    }

    /// Leaves the cluster (hands leadership over first if this node leads).
    /// The last voter cannot leave.
    fn leave(&self, py: Python<'_>) -> PyResult<()> {
        self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().leave().await }
        })
    }

    /// `leave` for asyncio.
    fn leave_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().leave().await }
            },
            none_out,
        )
    }

    /// Transfers leadership to `node_id` and waits until it leads.
    fn transfer_leader(&self, py: Python<'_>, node_id: u64) -> PyResult<()> {
        self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().transfer_leader(node_id).await }
        })
    }

    /// `transfer_leader` for asyncio.
    fn transfer_leader_async(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().transfer_leader(node_id).await }
            },
            none_out,
        )
    }

    /// Starts an election on this node now.
    fn campaign(&self, py: Python<'_>) -> PyResult<()> {
        self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().campaign().await }
        })
    }

    /// Takes a snapshot now and compacts the log; returns its index.
    fn take_snapshot(&self, py: Python<'_>) -> PyResult<u64> {
        self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().snapshot().await }
        })
    }

    /// `take_snapshot` for asyncio.
    fn take_snapshot_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.spawn(
            py,
            |r| {
                let raft = r.raft.clone();
                async move { raft.handle().snapshot().await }
            },
            int_out,
        )
    }

    /// Reserves a node id for a new node at `addr` (forwarded to the leader)
    /// and returns its join ticket.
    fn request_id(&self, py: Python<'_>, addr: String) -> PyResult<JoinTicket> {
        let t = self.block(py, |r| {
            let raft = r.raft.clone();
            async move { raft.handle().request_id(&addr).await }
        })?;
        Ok(t.into())
    }

    /// Joins the cluster of `ticket` (this node must have been started with
    /// the ticket's id and `bootstrap="none"`); returns the members.
    #[pyo3(signature = (ticket, *, as_learner = false))]
    fn join_cluster(
        &self,
        py: Python<'_>,
        ticket: JoinTicket,
        as_learner: bool,
    ) -> PyResult<Py<PyAny>> {
        let t = CoreTicket::from(&ticket);
        let m = self.block(py, |r| {
            let raft = r.raft.clone();
            let addr = r.raft_addr.clone();
            let id = r.id;
            async move {
                let status = raft.handle().status().await?;
                if status.members.iter().any(|m| m.id == id) {
                    return Err(Error::InvalidArgument(format!(
                        "node {id} already belongs to a cluster (its storage holds a membership); \
                         join_cluster is for a node started with bootstrap=\"none\""
                    )));
                }
                raft.handle().join_cluster(&t, &addr, as_learner).await
            }
        })?;
        members_list(py, &m)
    }

    /// Stops the node: pending requests fail with `ShutdownError`, the
    /// server stops, storage is closed. Idempotent.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let r = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| internal("node state poisoned"))?;
            match std::mem::replace(&mut *state, State::Stopped) {
                State::Running(r) => r,
                State::Starting => {
                    *state = State::Starting;
                    return Err(raftify_msg(py, "RaftifyError", "the node is starting"));
                }
                State::Idle | State::Stopped => return Ok(()),
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // On a runtime thread (inside apply): stop in the background.
            let task = r.clone();
            std::thread::spawn(move || stop_running(&task));
            return Ok(());
        }
        py.detach(|| stop_running(&r));
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.shutdown(py)?;
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.live(py) {
            Ok(r) => format!("<raftify.Node id={} addr={} running>", r.id, r.raft_addr),
            Err(_) => format!("<raftify.Node id={} stopped>", self.config.node_id),
        }
    }
}

fn stop_running(r: &Running) {
    r.rt.get().block_on(async {
        r.raft.handle().shutdown().await;
        let server = r.server.lock().ok().and_then(|mut s| s.take());
        if let Some(server) = server {
            server.shutdown().await;
        }
    });
}

impl Node {
    fn start_inner(
        &self,
        py: Python<'_>,
        bootstrap: &str,
        join: Option<Bound<'_, PyAny>>,
        as_learner: bool,
    ) -> PyResult<Arc<Running>> {
        let config = self.config.clone();
        config
            .check()
            .map_err(|m| raftify_msg(py, "ConfigError", m))?;
        config
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
            self.sm.clone_ref(py),
            self.codec.as_ref().map(|c| c.clone_ref(py)),
        )?;
        let has_read = self.sm.bind(py).hasattr("read")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raftify")
            .enable_all()
            .build()
            .map_err(|e| internal(format!("cannot start a tokio runtime: {e}")))?;
        let rt = Rt(Some(rt));
        let plan = StartPlan {
            config,
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
}

/// Asks a cluster (any member's address; followers forward) for a join
/// ticket for a node that will listen on `self_addr`. TLS and the auth
/// token come from `config`.
#[pyfunction]
#[pyo3(signature = (member_addrs, self_addr, *, config = None, timeout = 30.0))]
pub fn request_join_ticket(
    py: Python<'_>,
    member_addrs: &Bound<'_, PyAny>,
    self_addr: String,
    config: Option<Config>,
    timeout: f64,
) -> PyResult<JoinTicket> {
    let addrs = addr_list(member_addrs)?;
    let grpc = match &config {
        Some(c) => c
            .grpc_config()
            .map_err(|m| raftify_msg(py, "ConfigError", m))?,
        None => GrpcConfig::default(),
    };
    let timeout = Duration::try_from_secs_f64(timeout.max(0.001)).unwrap_or(Duration::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| internal(format!("cannot start a tokio runtime: {e}")))?;
    let rt = Rt(Some(rt));
    let result = py.detach(|| {
        rt.get().block_on(async {
            let transport = GrpcTransport::new(self_addr.clone(), grpc)?;
            raftify_core::request_join_ticket(&transport, &addrs, &self_addr, timeout).await
        })
    });
    result.map(Into::into).map_err(|e| to_pyerr(py, e))
}
