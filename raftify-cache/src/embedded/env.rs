//! Configuration from the environment, with redhac's variable names (so a
//! StatefulSet written for redhac works unchanged) and `RAFTIFY_*`
//! equivalents, which win when both are set. A `.env` file in the working
//! directory fills in variables the environment does not set.
//!
//! | variable | meaning |
//! |---|---|
//! | `HA_MODE` | `true`: a cluster of `HA_HOSTS`; `false` (default): one node |
//! | `HA_HOSTS` | every member's raft endpoint, `http://host:port`, comma-separated, in ordinal order |
//! | `HOSTNAME_OVERWRITE`, `HOSTNAME` | which entry is this process: a host name (`cache-2` matches `cache-2.cache`), or `host:port` |
//! | `CACHE_AUTH_TOKEN` | the secret members authenticate each other with |
//! | `RAFTIFY_ACCEPT_TOKEN` | further secrets accepted (never sent), separated by whitespace, while `CACHE_AUTH_TOKEN` is rotated (docs/SECURITY.md) |
//! | `CACHE_TLS` | `true`: TLS between members, with the files below |
//! | `CACHE_TLS_SERVER_CERT`, `CACHE_TLS_SERVER_KEY` | this member's certificate and key (PEM files), presented as server and as client |
//! | `CACHE_TLS_CLIENT_CERT`, `CACHE_TLS_CLIENT_KEY` | optional; must be the server's pair (raftify presents one certificate both ways) |
//! | `CACHE_TLS_CA_SERVER` | the CA (PEM file) that signs members' certificates |
//! | `CACHE_TLS_CA_CLIENT` | optional; must be the same CA |
//! | `DATA_DIR` | LMDB data dir; unset: in memory |
//! | `RAFTIFY_RAFT_LISTEN` | address the raft port binds (default: the entry's address when its host is an IP, else `0.0.0.0:port`) |
//! | `RAFTIFY_NO_SYNC` | `true`: no fsync of the log |
//! | `RAFTIFY_TICK_MS` | raft tick (ms, default 100; the election timeout is 10 ticks) |
//!
//! The node id is the entry's 1-based position in `HA_HOSTS`: the pod
//! `cache-2` of a StatefulSet is node 3.

use super::error::CacheError;
use raftify::TlsConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// The cluster settings read from the environment.
#[derive(Debug, Clone, Default)]
pub struct EnvSettings {
    /// This node's id (1 without `HA_MODE`).
    pub id: u64,
    /// Every member (id → raft address); empty without `HA_MODE`.
    pub members: BTreeMap<u64, String>,
    /// The address to bind the raft port to.
    pub listen: Option<String>,
    /// The shared token.
    pub token: Option<String>,
    /// Further tokens accepted during a rotation.
    pub accept_tokens: Vec<String>,
    /// TLS between members.
    pub tls: Option<TlsConfig>,
    /// LMDB data dir (None: in memory).
    pub data_dir: Option<PathBuf>,
    /// No fsync.
    pub no_sync: bool,
    /// The raft tick.
    pub tick: Option<Duration>,
}

/// Looks variables up: the `RAFTIFY_` name, then the redhac name, each in
/// the environment first and then in `.env`.
pub(crate) struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Vars<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Vars { lookup }
    }

    /// The value and the name it was found under.
    fn get(&self, names: &[&str]) -> Option<(String, String)> {
        names.iter().find_map(|n| {
            (self.lookup)(n)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (n.to_string(), v.trim().to_string()))
        })
    }

    fn flag(&self, names: &[&str]) -> Result<bool, CacheError> {
        match self.get(names) {
            None => Ok(false),
            Some((name, v)) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(CacheError::config(
                    &name,
                    format!("{v:?} is not a boolean (true or false)"),
                )),
            },
        }
    }
}

/// The lookup of the process environment, then `./.env`.
pub(crate) fn process_lookup() -> impl Fn(&str) -> Option<String> {
    let dotenv: HashMap<String, String> = dotenvy::from_filename_iter(".env")
        .map(|it| it.filter_map(Result::ok).collect())
        .unwrap_or_default();
    move |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| dotenv.get(name).cloned())
    }
}

/// Reads the settings; an invalid value is an error naming its variable.
pub fn settings(lookup: &dyn Fn(&str) -> Option<String>) -> Result<EnvSettings, CacheError> {
    let vars = Vars::new(lookup);
    let mut s = EnvSettings {
        id: 1,
        token: vars
            .get(&["RAFTIFY_AUTH_TOKEN", "CACHE_AUTH_TOKEN"])
            .map(|(_, v)| v),
        accept_tokens: vars
            .get(&["RAFTIFY_ACCEPT_TOKEN"])
            .map(|(_, v)| raftify::cli::split_tokens([v.as_str()]))
            .unwrap_or_default(),
        data_dir: vars
            .get(&["RAFTIFY_DATA_DIR", "DATA_DIR"])
            .map(|(_, v)| PathBuf::from(v)),
        no_sync: vars.flag(&["RAFTIFY_NO_SYNC"])?,
        ..Default::default()
    };
    if let Some((name, v)) = vars.get(&["RAFTIFY_TICK_MS"]) {
        let ms: u64 = v
            .parse()
            .ok()
            .filter(|ms| (1..=10_000).contains(ms))
            .ok_or_else(|| CacheError::config(&name, format!("{v:?} is not 1 to 10000 (ms)")))?;
        s.tick = Some(Duration::from_millis(ms));
    }
    s.tls = tls(&vars)?;
    if !vars.flag(&["RAFTIFY_HA_MODE", "HA_MODE"])? {
        return Ok(s);
    }
    let (hosts_var, hosts) = vars
        .get(&["RAFTIFY_HA_HOSTS", "HA_HOSTS"])
        .ok_or_else(|| CacheError::config("HA_HOSTS", "required when HA_MODE is true"))?;
    let entries = parse_hosts(&hosts).map_err(|m| CacheError::config(&hosts_var, m))?;
    let (me_var, me) = vars
        .get(&[
            "RAFTIFY_HOSTNAME_OVERWRITE",
            "HOSTNAME_OVERWRITE",
            "RAFTIFY_HOSTNAME",
            "HOSTNAME",
        ])
        .ok_or_else(|| {
            CacheError::config(
                "HOSTNAME",
                "not set: HA_MODE needs HOSTNAME or HOSTNAME_OVERWRITE to find this node in \
                 HA_HOSTS",
            )
        })?;
    let index = find_self(&entries, &me)
        .map_err(|m| CacheError::config(&me_var, format!("{m} (HA_HOSTS is {hosts:?})")))?;
    s.id = index as u64 + 1;
    s.members = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e.clone()))
        .collect();
    let own = &entries[index];
    s.listen = Some(match vars.get(&["RAFTIFY_RAFT_LISTEN"]) {
        Some((_, v)) => v,
        None => default_listen(own),
    });
    Ok(s)
}

/// `http://host:port` entries as `host:port`; an entry without a port, a
/// path, or a duplicate is an error.
pub fn parse_hosts(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for raw in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let rest = raw
            .strip_prefix("http://")
            .or_else(|| raw.strip_prefix("https://"))
            .unwrap_or(raw)
            .trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(format!(
                "{raw:?} is not http://host:port (no path, user or query)"
            ));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{raw:?} has no port (http://host:port)"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{raw:?} is not http://host:port with a port 1-65535"
            ));
        }
        let addr = format!("{}:{port}", host.to_ascii_lowercase());
        if out.contains(&addr) {
            return Err(format!("{addr} is listed twice"));
        }
        out.push(addr);
    }
    if out.is_empty() {
        return Err("lists no hosts".into());
    }
    Ok(out)
}

/// Which entry `me` names: `host:port` exactly, or a host name equal to an
/// entry's host or to its first label (`cache-0` for `cache-0.cache.ns`).
/// When every entry is an IP address (no names to match), a StatefulSet
/// pod name picks the entry of its ordinal (`cache-2`: the third).
pub fn find_self(entries: &[String], me: &str) -> Result<usize, String> {
    let me = me.trim().to_ascii_lowercase();
    let host_of = |e: &str| {
        e.rsplit_once(':')
            .map_or(e.to_string(), |(h, _)| h.to_string())
    };
    let matches: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            let host = host_of(e);
            **e == me || host == me || host.split('.').next() == Some(me.as_str())
        })
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] if entries.iter().all(|e| is_ip(&host_of(e))) => {
            ordinal(&me).filter(|i| *i < entries.len()).ok_or_else(|| {
                format!(
                    "{me:?} is not one of the hosts, nor a StatefulSet pod name whose ordinal \
                     (name-N) indexes them"
                )
            })
        }
        [] => Err(format!("{me:?} is not one of the hosts")),
        _ => Err(format!(
            "{me:?} matches several hosts; set HOSTNAME_OVERWRITE to this node's host:port"
        )),
    }
}

fn is_ip(host: &str) -> bool {
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
}

/// The ordinal of a StatefulSet pod name (`cache-2` → 2).
fn ordinal(name: &str) -> Option<usize> {
    let (_, n) = name.rsplit_once('-')?;
    n.parse().ok()
}

/// The raft port's bind address: the entry itself when its host is an IP
/// literal, else every interface on its port (a pod's DNS name resolves
/// to its own IP only once the pod is up).
fn default_listen(entry: &str) -> String {
    match entry.rsplit_once(':') {
        Some((host, port))
            if host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_err() =>
        {
            format!("0.0.0.0:{port}")
        }
        _ => entry.to_string(),
    }
}

fn tls(vars: &Vars<'_>) -> Result<Option<TlsConfig>, CacheError> {
    if !vars.flag(&["RAFTIFY_TLS", "CACHE_TLS"])? {
        return Ok(None);
    }
    let file = |names: &[&str], kind| -> Result<Option<(String, String)>, CacheError> {
        match vars.get(names) {
            None => Ok(None),
            Some((name, path)) => raftify_grpc::tls::load_pem(std::path::Path::new(&path), kind)
                .map(|pem| Some((name.clone(), pem)))
                .map_err(|e| CacheError::config(&name, e.to_string())),
        }
    };
    use raftify_grpc::tls::PemKind;
    let need = |v: Option<(String, String)>, name: &str| {
        v.ok_or_else(|| CacheError::config(name, "required when CACHE_TLS is true"))
    };
    let cert = need(
        file(
            &["RAFTIFY_TLS_SERVER_CERT", "CACHE_TLS_SERVER_CERT"],
            PemKind::Certificates,
        )?,
        "CACHE_TLS_SERVER_CERT",
    )?;
    let key = need(
        file(
            &["RAFTIFY_TLS_SERVER_KEY", "CACHE_TLS_SERVER_KEY"],
            PemKind::PrivateKey,
        )?,
        "CACHE_TLS_SERVER_KEY",
    )?;
    let ca = need(
        file(
            &["RAFTIFY_TLS_CA_SERVER", "CACHE_TLS_CA_SERVER"],
            PemKind::CaCertificates,
        )?,
        "CACHE_TLS_CA_SERVER",
    )?;
    let same = |v: Option<(String, String)>, as_: &(String, String)| match v {
        Some((name, pem)) if pem != as_.1 => Err(CacheError::config(
            &name,
            format!(
                "differs from {}: raftify presents one certificate as server and client, \
                 verified by one CA; leave it unset or give the same file",
                as_.0
            ),
        )),
        _ => Ok(()),
    };
    same(
        file(
            &["RAFTIFY_TLS_CLIENT_CERT", "CACHE_TLS_CLIENT_CERT"],
            PemKind::Certificates,
        )?,
        &cert,
    )?;
    same(
        file(
            &["RAFTIFY_TLS_CLIENT_KEY", "CACHE_TLS_CLIENT_KEY"],
            PemKind::PrivateKey,
        )?,
        &key,
    )?;
    same(
        file(
            &["RAFTIFY_TLS_CA_CLIENT", "CACHE_TLS_CA_CLIENT"],
            PemKind::CaCertificates,
        )?,
        &ca,
    )?;
    Ok(Some(TlsConfig {
        cert_pem: Some(cert.1),
        key_pem: Some(key.1),
        ca_pem: Some(ca.1),
        domain: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<EnvSettings, CacheError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings(&move |n: &str| map.get(n).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        match with(vars) {
            Err(e) => e.to_string(),
            Ok(s) => panic!("accepted: {s:?}"),
        }
    }

    const HOSTS: &str =
        "http://cache-0.cache:8000, http://cache-1.cache:8000,http://cache-2.cache:8000/";

    #[test]
    fn a_pod_finds_its_id_from_its_hostname() {
        let s = with(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", HOSTS),
            ("HOSTNAME", "cache-2"),
        ])
        .unwrap();
        assert_eq!(s.id, 3);
        assert_eq!(s.members.len(), 3);
        assert_eq!(s.members[&1], "cache-0.cache:8000");
        assert_eq!(s.listen.as_deref(), Some("0.0.0.0:8000"));
        assert!(s.data_dir.is_none() && s.tls.is_none());
        let local = "http://127.0.0.1:7001,http://127.0.0.1:7002";
        let s = with(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", local),
            ("HOSTNAME", "ignored-by-the-overwrite"),
            ("HOSTNAME_OVERWRITE", "127.0.0.1:7002"),
            ("CACHE_AUTH_TOKEN", "s3cret"),
            ("RAFTIFY_ACCEPT_TOKEN", "0ld \tolder\n"),
            ("DATA_DIR", "/data"),
        ])
        .unwrap();
        assert_eq!((s.id, s.listen.as_deref()), (2, Some("127.0.0.1:7002")));
        assert_eq!(s.token.as_deref(), Some("s3cret"));
        assert_eq!(s.accept_tokens, ["0ld", "older"]);
        // The RAFTIFY_ name wins.
        let s = with(&[
            ("HA_MODE", "false"),
            ("RAFTIFY_HA_MODE", "true"),
            ("HA_HOSTS", local),
            ("HOSTNAME_OVERWRITE", "127.0.0.1:7001"),
        ])
        .unwrap();
        assert_eq!(s.id, 1);
        // Hosts given as IPs: the pod's ordinal picks its entry.
        let ips = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3";
        let s = with(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", ips),
            ("HOSTNAME", "cache-1"),
        ])
        .unwrap();
        assert_eq!((s.id, s.listen.as_deref()), (2, Some("127.0.0.1:2")));
        let single = with(&[("HA_HOSTS", "garbage")]).unwrap();
        assert!(single.members.is_empty(), "HA_MODE unset: one node");
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert!(err(&[("HA_MODE", "maybe")]).starts_with("HA_MODE: "));
        assert!(err(&[("HA_MODE", "true")]).starts_with("HA_HOSTS: required"));
        let e = err(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", HOSTS),
            ("HOSTNAME", "other-0"),
        ]);
        assert!(
            e.starts_with("HOSTNAME: \"other-0\" is not one of the hosts"),
            "{e}"
        );
        let e = err(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", "http://a:1,http://a:1"),
            ("HOSTNAME", "a"),
        ]);
        assert!(e.starts_with("HA_HOSTS: a:1 is listed twice"), "{e}");
        let e = err(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", "http://a"),
            ("HOSTNAME", "a"),
        ]);
        assert!(e.contains("has no port"), "{e}");
        let e = err(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", "http://127.0.0.1:1,http://127.0.0.1:2"),
            ("HOSTNAME", "127.0.0.1"),
        ]);
        assert!(e.contains("matches several hosts"), "{e}");
        let ips = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3";
        let e = err(&[
            ("HA_MODE", "true"),
            ("HA_HOSTS", ips),
            ("HOSTNAME", "cache-3"),
        ]);
        assert!(e.contains("nor a StatefulSet pod name"), "{e}");
        assert!(err(&[("HA_MODE", "true"), ("HA_HOSTS", HOSTS)]).starts_with("HOSTNAME: not set"));
        assert!(err(&[("CACHE_TLS", "true")]).starts_with("CACHE_TLS_SERVER_CERT: required"));
        let e = err(&[
            ("CACHE_TLS", "true"),
            ("CACHE_TLS_SERVER_CERT", "/nonexistent.pem"),
        ]);
        assert!(e.starts_with("CACHE_TLS_SERVER_CERT: "), "{e}");
        assert!(err(&[("RAFTIFY_TICK_MS", "0")]).starts_with("RAFTIFY_TICK_MS: "));
    }
}
