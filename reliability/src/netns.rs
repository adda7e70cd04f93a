//! Network namespaces for partition tests: each node of a cluster in its
//! own namespace on a private bridge, links cut with blackhole routes.
//! Needs root and `ip` (iproute2).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Runs a command; its stderr is the error.
fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Nodes in their own network namespaces on a private bridge: node `i`
/// lives in namespace [`Netns::ns`]`(i)` at address [`Netns::ip`]`(i)`,
/// reachable from the host; [`Netns::cut`] drops the traffic from one node
/// to another. Dropped, it deletes what it made.
pub struct Netns {
    tag: String,
    subnet: u8,
    nodes: u64,
    cuts: Mutex<Vec<(u64, u64)>>,
}

impl Netns {
    /// Node `i`'s namespace (for `ip netns exec`).
    pub fn ns(&self, i: u64) -> String {
        format!("{}n{i}", self.tag)
    }
    /// Node `i`'s address.
    pub fn ip(&self, i: u64) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + i)
    }

    /// Makes the bridge and `nodes` namespaces (root and `ip` needed; the
    /// error says why not).
    pub fn setup(nodes: u64) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let k = (u64::from(std::process::id()) * 7 + N.fetch_add(1, Ordering::SeqCst)) % 250;
        let n = Netns {
            tag: format!("rfc{k}"),
            subnet: k as u8,
            nodes,
            cuts: Mutex::new(Vec::new()),
        };
        let br = format!("{}b", n.tag);
        let gw = format!("10.213.{}.1/24", n.subnet);
        let r = (|| {
            sh(&["ip", "link", "add", &br, "type", "bridge"])?;
            sh(&["ip", "addr", "add", &gw, "dev", &br])?;
            sh(&["ip", "link", "set", &br, "up"])?;
            for i in 1..=nodes {
                let ns = n.ns(i);
                let host = format!("{}h{i}", n.tag);
                let peer = format!("{}p{i}", n.tag);
                sh(&["ip", "netns", "add", &ns])?;
                sh(&[
                    "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
                ])?;
                sh(&["ip", "link", "set", &peer, "netns", &ns])?;
                sh(&["ip", "link", "set", &host, "master", &br, "up"])?;
                sh(&[
                    "ip",
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", n.ip(i)),
                    "dev",
                    &peer,
                ])?;
                sh(&["ip", "-n", &ns, "link", "set", &peer, "up"])?;
                sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                // The bridge must carry traffic: probe with a TCP connect
                // later; here check the host reaches a namespace address.
                Ok(n)
            }
            Err(e) => {
                n.teardown();
                Err(e)
            }
        }
    }

    /// Cuts traffic from `a` to `b` (a blackhole route in `a`'s namespace).
    pub fn cut(&self, a: u64, b: u64) {
        let ip = format!("{}/32", self.ip(b));
        if sh(&["ip", "-n", &self.ns(a), "route", "add", "blackhole", &ip]).is_ok() {
            self.cuts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((a, b));
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        let cuts = std::mem::take(&mut *self.cuts.lock().unwrap_or_else(|p| p.into_inner()));
        for (a, b) in cuts {
            let ip = format!("{}/32", self.ip(b));
            let _ = sh(&["ip", "-n", &self.ns(a), "route", "del", "blackhole", &ip]);
        }
    }

    /// Deletes the namespaces and the bridge.
    pub fn teardown(&self) {
        for i in 1..=self.nodes {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = sh(&["ip", "link", "del", &format!("{}b", self.tag)]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}
