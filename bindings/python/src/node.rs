//! `raftify.Node`: a raftify node with its own tokio runtime, driven from
//! Python.
//!
//! Every blocking method releases the GIL (`Python::detach`) while it waits
//! on the node's runtime; every `*_async` method returns an asyncio future
//! that the runtime resolves through `loop.call_soon_threadsafe` (see
//! `runtime.rs`). Starting is in `start.rs`, the states a node goes
//! through in `lifecycle.rs`, a started node's parts in `running.rs`, and
//! the conversions to Python values in `convert.rs`.

use crate::config::Config;
use crate::convert::{
    bytes_out, int_out, json_to_py, members_list, members_out, none_out, status_dict,
};
use crate::errors::{internal, raftify_msg};
use crate::lifecycle::Lifecycle;
use crate::running::{join_future, propose_future, read_future, stop_running, wait_leader_future};
use crate::sm::{input_bytes, PyStateMachine};
use crate::start::start_running;
use crate::ticket::JoinTicket;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use raftify_core::{Error, JoinTicket as CoreTicket, RaftHandle};
use std::collections::BTreeMap;
use std::future::Future;

/// A raftify node: a Python state machine replicated with Raft over gRPC.
#[pyclass(module = "raftify", weakref)]
pub struct Node {
    config: Config,
    sm: Py<PyAny>,
    codec: Option<Py<PyAny>>,
    lifecycle: Lifecycle,
}

impl Node {
    /// Runs `fut` on the node's `RaftHandle` and waits for it with the GIL
    /// released.
    fn call<T, F>(&self, py: Python<'_>, fut: impl FnOnce(RaftHandle) -> F) -> PyResult<T>
    where
        F: Future<Output = Result<T, Error>> + Send,
        T: Send,
    {
        let r = self.lifecycle.live(py)?;
        r.rt.block(py, fut(r.raft.handle().clone()))
    }

    /// Runs `fut` on the node's `RaftHandle` and returns an asyncio future
    /// of `conv(output)`, for the running event loop.
    fn call_async<T, F, C>(
        &self,
        py: Python<'_>,
        fut: impl FnOnce(RaftHandle) -> F,
        conv: C,
    ) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
        C: for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
    {
        let r = self.lifecycle.live(py)?;
        r.rt.spawn(py, fut(r.raft.handle().clone()), conv)
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
            lifecycle: Lifecycle::new(),
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
        this.lifecycle.begin_start(py)?;
        let started = start_running(
            py,
            &this.config,
            &this.sm,
            this.codec.as_ref(),
            bootstrap,
            join,
            as_learner,
        );
        this.lifecycle.end_start(started)?;
        py.import("raftify._aio")?.call_method1("track", (slf,))?;
        Ok(())
    }

    /// This node's id (assigned by the cluster after a join).
    #[getter]
    fn node_id(&self, py: Python<'_>) -> u64 {
        self.lifecycle
            .live(py)
            .map(|r| r.id)
            .unwrap_or(self.config.node_id)
    }

    /// The address peers reach this node at (the chosen port after `:0`).
    #[getter]
    fn raft_addr(&self, py: Python<'_>) -> String {
        self.lifecycle
            .live(py)
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
        self.lifecycle.is_running()
    }

    /// Proposes `entry` and returns the state machine's output once it is
    /// committed and applied on this node. A follower forwards it to the
    /// leader (`forward=False` raises `NotLeaderError` instead). With an
    /// `idempotency_key` (1 to 256 bytes), the entry is applied at most
    /// once per key while raftify remembers it (24 h by default): a repeat
    /// returns the first output (or raises the first error) and changes
    /// nothing.
    #[pyo3(signature = (entry, *, forward = true, idempotency_key = None))]
    fn propose(
        &self,
        py: Python<'_>,
        entry: &Bound<'_, PyAny>,
        forward: bool,
        idempotency_key: Option<String>,
    ) -> PyResult<Py<PyBytes>> {
        let data = self.encode_entry(py, entry)?;
        let r = self.lifecycle.live(py)?;
        let out =
            r.rt.block(py, propose_future(&r, data, forward, idempotency_key))?;
        Ok(PyBytes::new(py, &out).unbind())
    }

    /// `propose` for asyncio.
    #[pyo3(signature = (entry, *, forward = true, idempotency_key = None))]
    fn propose_async(
        &self,
        py: Python<'_>,
        entry: &Bound<'_, PyAny>,
        forward: bool,
        idempotency_key: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let data = self.encode_entry(py, entry)?;
        let r = self.lifecycle.live(py)?;
        let proposal = propose_future(&r, data, forward, idempotency_key);
        r.rt.spawn(py, proposal, bytes_out)
    }

    /// Linearizable read: confirms through raft's ReadIndex that this node
    /// has applied every write committed before the call, then returns
    /// `state_machine.read(query)`. Works on followers.
    #[pyo3(signature = (query = None))]
    fn read(&self, py: Python<'_>, query: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let query = query.unwrap_or_else(|| py.None());
        let r = self.lifecycle.live(py)?;
        r.rt.block(py, read_future(&r, query))?
    }

    /// `read` for asyncio.
    #[pyo3(signature = (query = None))]
    fn read_async(&self, py: Python<'_>, query: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let query = query.unwrap_or_else(|| py.None());
        let r = self.lifecycle.live(py)?;
        r.rt.spawn(py, read_future(&r, query), |_py, out| out)
    }

    /// Waits until this node's state machine reflects every write committed
    /// before the call (raft ReadIndex) and returns that index; reading the
    /// state machine object afterwards is linearizable.
    fn read_index(&self, py: Python<'_>) -> PyResult<u64> {
        self.call(py, |h| async move { h.read_index().await })
    }

    /// `read_index` for asyncio.
    fn read_index_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call_async(py, |h| async move { h.read_index().await }, int_out)
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
        let r = self.lifecycle.live(py)?;
        r.rt.block(py, wait_leader_future(&r, timeout))
    }

    /// `wait_for_leader` for asyncio.
    #[pyo3(signature = (timeout = 10.0))]
    fn wait_for_leader_async(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        let r = self.lifecycle.live(py)?;
        r.rt.spawn(py, wait_leader_future(&r, timeout), int_out)
    }

    /// The known leader's id, or None.
    fn leader_id(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        Ok(self.lifecycle.live(py)?.raft.handle().leader_id())
    }

    /// The known leader's raft address, or None.
    fn leader_addr(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(self.lifecycle.live(py)?.raft.handle().state().leader_addr)
    }

    /// True when this node is the leader.
    fn is_leader(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.lifecycle.live(py)?.raft.handle().is_leader())
    }

    /// Role, term, leader and applied index, without waiting.
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.lifecycle.live(py)?.raft.handle().state();
        let v = serde_json::to_value(&s).map_err(|e| internal(e.to_string()))?;
        json_to_py(py, &v)
    }

    /// The node's full status as a dict (role, term, indexes, members,
    /// replication progress on the leader).
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.call(py, |h| async move { h.status().await })?;
        status_dict(py, &s)
    }

    /// `status` for asyncio.
    fn status_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call_async(
            py,
            |h| async move { h.status().await },
            |py, s| status_dict(py, &s),
        )
    }

    /// The voters and learners: `[{"id", "addr", "role"}]`.
    fn members(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.call(py, |h| async move { h.status().await })?;
        members_list(py, &s.members)
    }

    /// Member id → raft address (members whose address is known).
    fn peers(&self, py: Python<'_>) -> PyResult<BTreeMap<u64, String>> {
        let s = self.call(py, |h| async move { h.status().await })?;
        Ok(s.members
            .into_iter()
            .filter_map(|m| m.addr.map(|a| (m.id, a)))
            .collect())
    }

    /// Counters (proposals, applied entries, snapshots, ...).
    fn metrics(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let m = self.lifecycle.live(py)?.raft.handle().metrics();
        let v = serde_json::to_value(&m).map_err(|e| internal(e.to_string()))?;
        json_to_py(py, &v)
    }

    /// Adds a voter (or promotes a learner); returns the members.
    fn add_voter(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        let m = self.call(py, |h| async move { h.add_voter(node_id, &addr).await })?;
        members_list(py, &m)
    }

    /// `add_voter` for asyncio.
    fn add_voter_async(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        self.call_async(
            py,
            |h| async move { h.add_voter(node_id, &addr).await },
            members_out,
        )
    }

    /// Adds a learner (receives the log, does not vote); returns the members.
    fn add_learner(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        let m = self.call(py, |h| async move { h.add_learner(node_id, &addr).await })?;
        members_list(py, &m)
    }

    /// `add_learner` for asyncio.
    fn add_learner_async(&self, py: Python<'_>, node_id: u64, addr: String) -> PyResult<Py<PyAny>> {
        self.call_async(
            py,
            |h| async move { h.add_learner(node_id, &addr).await },
            members_out,
        )
    }

    /// Promotes a learner to voter; returns the members.
    fn promote_learner(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        let m = self.call(py, |h| async move { h.promote_learner(node_id).await })?;
        members_list(py, &m)
    }

    /// Removes a voter or learner; returns the members.
    fn remove_node(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        let m = self.call(py, |h| async move { h.remove_node(node_id).await })?;
        members_list(py, &m)
    }

    /// `remove_node` for asyncio.
    fn remove_node_async(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        self.call_async(
            py,
            |h| async move { h.remove_node(node_id).await },
            members_out,
        )
    }

    /// Leaves the cluster (hands leadership over first if this node leads).
    /// The last voter cannot leave.
    fn leave(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |h| async move { h.leave().await })
    }

    /// `leave` for asyncio.
    fn leave_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call_async(py, |h| async move { h.leave().await }, none_out)
    }

    /// Transfers leadership to `node_id` and waits until it leads.
    fn transfer_leader(&self, py: Python<'_>, node_id: u64) -> PyResult<()> {
        self.call(py, |h| async move { h.transfer_leader(node_id).await })
    }

    /// `transfer_leader` for asyncio.
    fn transfer_leader_async(&self, py: Python<'_>, node_id: u64) -> PyResult<Py<PyAny>> {
        self.call_async(
            py,
            |h| async move { h.transfer_leader(node_id).await },
            none_out,
        )
    }

    /// Starts an election on this node now.
    fn campaign(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |h| async move { h.campaign().await })
    }

    /// Takes a snapshot now and compacts the log; returns its index.
    fn take_snapshot(&self, py: Python<'_>) -> PyResult<u64> {
        self.call(py, |h| async move { h.snapshot().await })
    }

    /// `take_snapshot` for asyncio.
    fn take_snapshot_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call_async(py, |h| async move { h.snapshot().await }, int_out)
    }

    /// Reserves a node id for a new node at `addr` (forwarded to the leader)
    /// and returns its join ticket.
    fn request_id(&self, py: Python<'_>, addr: String) -> PyResult<JoinTicket> {
        let t = self.call(py, |h| async move { h.request_id(&addr).await })?;
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
        let r = self.lifecycle.live(py)?;
        let m = r.rt.block(py, join_future(&r, t, as_learner))?;
        members_list(py, &m)
    }

    /// Stops the node: pending requests fail with `ShutdownError`, the
    /// server stops, storage is closed. Idempotent.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let Some(r) = self.lifecycle.stop(py)? else {
            return Ok(());
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
        match self.lifecycle.live(py) {
            Ok(r) => format!("<raftify.Node id={} addr={} running>", r.id, r.raft_addr),
            Err(_) => format!("<raftify.Node id={} stopped>", self.config.node_id),
        }
    }
}
