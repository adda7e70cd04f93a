//! A `Node`'s lifecycle: idle until `start()`, starting while it starts,
//! running until `shutdown()`, then stopped for good (a failed start makes
//! it idle again).

use crate::errors::{internal, raftify_msg};
use crate::running::Running;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, MutexGuard};

enum State {
    Idle,
    Starting,
    Running(Arc<Running>),
    Stopped,
}

/// The node's state behind a lock, and the moves between states.
pub struct Lifecycle(Mutex<State>);

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle(Mutex::new(State::Idle))
    }

    fn lock(&self) -> PyResult<MutexGuard<'_, State>> {
        self.0.lock().map_err(|_| internal("node state poisoned"))
    }

    /// The running node, or the error a call on a node that is not running
    /// raises.
    pub fn live(&self, py: Python<'_>) -> PyResult<Arc<Running>> {
        let state = self.lock()?;
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

    /// True between a successful start and the shutdown.
    pub fn is_running(&self) -> bool {
        matches!(self.0.lock().as_deref(), Ok(State::Running(_)))
    }

    /// Idle → starting; refuses a node that has started or shut down.
    pub fn begin_start(&self, py: Python<'_>) -> PyResult<()> {
        let mut state = self.lock()?;
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
        Ok(())
    }

    /// Starting → running with what `started` holds, or back to idle (and
    /// its error) when the start failed.
    pub fn end_start(&self, started: PyResult<Arc<Running>>) -> PyResult<()> {
        let mut state = self.lock()?;
        match started {
            Ok(running) => {
                *state = State::Running(running);
                Ok(())
            }
            Err(e) => {
                *state = State::Idle;
                Err(e)
            }
        }
    }

    /// Any state → stopped; returns the node to stop when it was running.
    /// Refuses while the node is starting.
    pub fn stop(&self, py: Python<'_>) -> PyResult<Option<Arc<Running>>> {
        let mut state = self.lock()?;
        match std::mem::replace(&mut *state, State::Stopped) {
            State::Running(r) => Ok(Some(r)),
            State::Starting => {
                *state = State::Starting;
                Err(raftify_msg(py, "RaftifyError", "the node is starting"))
            }
            State::Idle | State::Stopped => Ok(None),
        }
    }
}
