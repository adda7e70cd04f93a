//! Python bindings for raftify: `import raftify`.
//!
//! The native module is `raftify._raftify`; the `raftify` package
//! (`python/raftify/`) re-exports it next to the exception classes and the
//! typing protocols. See `bindings/python/README.md`.

mod backup;
mod config;
mod convert;
mod errors;
mod lifecycle;
mod node;
mod running;
mod runtime;
mod sm;
mod start;
mod ticket;

use pyo3::prelude::*;

/// The native part of the `raftify` package.
#[pymodule]
fn _raftify(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<config::Config>()?;
    m.add_class::<node::Node>()?;
    m.add_class::<ticket::JoinTicket>()?;
    m.add_function(wrap_pyfunction!(ticket::request_join_ticket, m)?)?;
    m.add_function(wrap_pyfunction!(backup::save_snapshot, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
