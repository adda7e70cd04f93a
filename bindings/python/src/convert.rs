//! Conversions between the node's Rust values and Python objects: members,
//! status and JSON-shaped values as dicts and lists, the outputs the
//! `*_async` methods resolve to, and address lists given from Python.

use crate::errors::raftify_msg;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use raftify_core::{Member, Status};

pub fn members_list(py: Python<'_>, members: &[Member]) -> PyResult<Py<PyAny>> {
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
    d.set_item("role", m.role.as_str())?;
    Ok(d)
}

pub fn status_dict(py: Python<'_>, s: &Status) -> PyResult<Py<PyAny>> {
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

pub fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
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
pub fn addr_list(v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
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

pub fn bytes_out(py: Python<'_>, v: Vec<u8>) -> PyResult<Py<PyAny>> {
    Ok(PyBytes::new(py, &v).into_any().unbind())
}

pub fn int_out(py: Python<'_>, v: u64) -> PyResult<Py<PyAny>> {
    Ok(v.into_pyobject(py)?.into_any().unbind())
}

pub fn none_out(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

pub fn members_out(py: Python<'_>, m: Vec<Member>) -> PyResult<Py<PyAny>> {
    members_list(py, &m)
}
