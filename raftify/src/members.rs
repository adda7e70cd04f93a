//! The initial-members list as command lines and environments give it.

use raftify_core::membership::validate_addr;
use std::collections::BTreeMap;

/// Parses `1=HOST:PORT,2=HOST:PORT,...` (spaces and empty items are
/// ignored). Every id is non-zero and unique, every address `host:port`.
///
/// ```
/// let m = raftify::parse_members("1=127.0.0.1:60061, 2=127.0.0.1:60062").unwrap();
/// assert_eq!(m[&2], "127.0.0.1:60062");
/// assert!(raftify::parse_members("1=a:1,1=b:2").is_err());
/// ```
pub fn parse_members(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: {id:?} is not a node id"))?;
        if id == 0 {
            return Err(format!("{part:?}: node id 0 is reserved"));
        }
        let addr = addr.trim();
        validate_addr(addr).map_err(|e| format!("{part:?}: {e}"))?;
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("the list of members is empty".into());
    }
    Ok(members)
}
