//! The tokio runtime raftify's work runs on, and the two ways Python waits
//! for that work: blocking with the GIL released (`Python::detach`), or
//! through an asyncio future that a runtime thread resolves with
//! `loop.call_soon_threadsafe`.

use crate::errors::{internal, raftify_msg, to_pyerr};
use pyo3::prelude::*;
use raftify_core::Error;
use std::future::Future;

/// A tokio runtime that, when dropped, stops in the background: dropping it
/// never blocks (a thread holding the GIL must not wait for runtime threads
/// that may be waiting for the GIL).
pub struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    /// A node's runtime: two worker threads named `raftify`.
    pub fn multi_thread() -> PyResult<Rt> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raftify")
            .enable_all()
            .build()
            .map_err(|e| internal(format!("cannot start a tokio runtime: {e}")))?;
        Ok(Rt(Some(rt)))
    }

    /// A runtime on the calling thread, for one call.
    pub fn current_thread() -> PyResult<Rt> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| internal(format!("cannot start a tokio runtime: {e}")))?;
        Ok(Rt(Some(rt)))
    }

    pub fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime lives until Rt is dropped")
    }

    /// Runs a node's `fut` on this runtime and waits for it with the GIL
    /// released. Refuses on a runtime thread (inside a state machine
    /// callback), where waiting would block the runtime.
    pub fn block<T, F>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = Result<T, Error>> + Send,
        T: Send,
    {
        not_on_runtime(py)?;
        py.detach(|| self.get().block_on(fut))
            .map_err(|e| to_pyerr(py, e))
    }

    /// Runs `work` on this runtime and returns an asyncio future of
    /// `conv(output)`, for the running event loop.
    pub fn spawn<T, F, C>(&self, py: Python<'_>, work: F, conv: C) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
        C: for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
    {
        let asyncio = py.import("asyncio")?;
        let event_loop = asyncio.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?;
        let loop_obj = event_loop.unbind();
        let fut_obj = future.clone().unbind();
        self.get().spawn(async move {
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
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
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

/// Refuses to block on raftify's own threads (inside apply, snapshot,
/// restore or read), where waiting would block the runtime (and tokio
/// would panic on a nested runtime).
pub fn not_on_runtime(py: Python<'_>) -> PyResult<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(raftify_msg(
            py,
            "RaftifyError",
            "blocking node methods cannot run on raftify's own threads (inside apply, \
             snapshot, restore or read); use the *_async methods from asyncio code",
        ));
    }
    Ok(())
}
