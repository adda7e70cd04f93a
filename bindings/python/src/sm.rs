//! The user's Python state machine behind raftify-core's
//! `AbstractStateMachine`.
//!
//! Every call attaches to the interpreter (`Python::attach`) for the length
//! of the Python call only. A Python exception never escapes into the raft
//! loop: it becomes the `BoxError` that raftify-core reports to the proposer
//! as `Error::StateMachine`.

use crate::errors::describe;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use raftify_core::{AbstractStateMachine, BoxError};

/// A Python state machine (and optional codec) as a raftify state machine
/// over raw-byte log entries.
pub struct PyStateMachine {
    pub obj: Py<PyAny>,
    pub codec: Option<Py<PyAny>>,
    /// The object has `apply_at(index, entry)`: it is called instead of
    /// `apply(entry)`.
    pub has_apply_at: bool,
}

impl PyStateMachine {
    pub fn new(py: Python<'_>, obj: Py<PyAny>, codec: Option<Py<PyAny>>) -> PyResult<Self> {
        let b = obj.bind(py);
        let has_apply_at = b.hasattr("apply_at")?;
        if !has_apply_at && !b.hasattr("apply")? {
            return Err(PyTypeError::new_err(
                "the state machine needs an apply(entry) -> bytes method",
            ));
        }
        for m in ["snapshot", "restore"] {
            if !b.hasattr(m)? {
                return Err(PyTypeError::new_err(format!(
                    "the state machine needs a {m}() method"
                )));
            }
        }
        if let Some(c) = &codec {
            let c = c.bind(py);
            if !c.hasattr("encode")? || !c.hasattr("decode")? {
                return Err(PyTypeError::new_err(
                    "the codec needs encode(entry) -> bytes and decode(bytes) methods",
                ));
            }
        }
        Ok(PyStateMachine {
            obj,
            codec,
            has_apply_at,
        })
    }

    fn apply_py(&self, index: u64, entry: &[u8]) -> Result<Vec<u8>, BoxError> {
        Python::attach(|py| {
            let run = || -> PyResult<Vec<u8>> {
                let raw = PyBytes::new(py, entry).into_any();
                let arg = match &self.codec {
                    Some(c) => c.bind(py).call_method1("decode", (raw,))?,
                    None => raw,
                };
                let sm = self.obj.bind(py);
                let out = if self.has_apply_at {
                    sm.call_method1("apply_at", (index, arg))?
                } else {
                    sm.call_method1("apply", (arg,))?
                };
                output_bytes(&out, "apply")
            };
            run().map_err(|e| describe(py, &e).into())
        })
    }

    /// Calls `read(query)` on the state machine.
    pub fn read_py(&self, py: Python<'_>, query: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let sm = self.obj.bind(py);
        if !sm.hasattr("read")? {
            return Err(PyTypeError::new_err(
                "the state machine has no read(query) method; use read_index() and read it directly",
            ));
        }
        Ok(sm.call_method1("read", (query,))?.unbind())
    }
}

/// The bytes of a value returned by a state machine method: `bytes`,
/// `bytearray`, or `None` (no output).
pub fn output_bytes(out: &Bound<'_, PyAny>, method: &str) -> PyResult<Vec<u8>> {
    if out.is_none() {
        return Ok(Vec::new());
    }
    if let Ok(b) = out.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = out.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "{method}() must return bytes or None, not {}",
        out.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

/// The bytes of an argument given as `bytes`, `bytearray` or `memoryview`.
pub fn input_bytes(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if v.hasattr("tobytes")? {
        // memoryview and other buffer-like objects
        if let Ok(b) = v.call_method0("tobytes")?.cast::<PyBytes>() {
            return Ok(b.as_bytes().to_vec());
        }
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes (or give the node a codec), not {}",
        v.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

#[async_trait::async_trait]
impl AbstractStateMachine<Vec<u8>> for PyStateMachine {
    type Output = Vec<u8>;

    async fn apply(&mut self, entry: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        self.apply_py(0, &entry)
    }

    async fn apply_at(&mut self, index: u64, entry: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        self.apply_py(index, &entry)
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method0("snapshot")
                .and_then(|out| output_bytes(&out, "snapshot"))
                .map_err(|e| describe(py, &e).into())
        })
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method1("restore", (PyBytes::new(py, &snapshot),))
                .map(|_| ())
                .map_err(|e| describe(py, &e).into())
        })
    }
}
