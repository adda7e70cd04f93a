//! The HTTP port (`--http-port`) of the real binary: the password guards
//! everything but the page and `/health`; a single node serves its status
//! and metrics; a sharded cluster of three serves the cluster report (what
//! `raftify-cli shards --json` prints), starts a rebalance on `POST
//! /rebalance`, exports the sharding metrics, and its status page, run in
//! headless Chromium, draws every group with its leader. The key routes
//! run wherever a key lives: with one replica per group most keys live on
//! another node, and slots move meanwhile; a counter writer over HTTP
//! through a rebalance with a node SIGKILLed loses no increment and
//! applies none twice.

mod common;

use common::{free_port, joined, show, wait_for, Node, T};
use raftify_reliability::browser;
use serde_json::Value;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One HTTP/1.1 request; the status code and the body.
fn try_http(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_string()))
}

/// [`try_http`] to a node known to be up.
fn http(method: &str, addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    try_http(method, addr, path, token).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn a_single_node_serves_its_status_and_metrics_behind_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let port = web.rsplit_once(':').unwrap().1.to_string();
    let raft = format!("127.0.0.1:{}", free_port());
    let n = Node::spawn(
        1,
        free_port(),
        &raft,
        &dir.path().join("n1"),
        &["--http-port", &port, "--requirepass", "s3cret"],
    );
    wait_for("the node to lead", T, || {
        let (code, body) = try_http("GET", &web, "/status", Some("s3cret")).ok()?;
        (code == 200 && json(&body)["role"] == "leader").then_some(())
    });
    assert_eq!(http("GET", &web, "/health", None), (200, "ok".into()));
    let (code, page) = http("GET", &web, "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("raftify node"), "the node's page");
    for path in ["/status", "/metrics", "/cluster"] {
        let (code, body) = http("GET", &web, path, None);
        assert_eq!(code, 401, "{path} without the password: {body}");
        assert_eq!(http("GET", &web, path, Some("wrong")).0, 401);
    }
    let (code, metrics) = http("GET", &web, "/metrics", Some("s3cret"));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("raftify_commit_index{node=\"1\"}"),
        "{metrics}"
    );
    let (code, body) = http("GET", &web, "/cluster", Some("s3cret"));
    assert_eq!(code, 404, "sharded only: {body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("--sharded"));
    assert_eq!(http("GET", &web, "/nope", Some("s3cret")).0, 404);
    drop(n);
}

#[test]
fn a_sharded_cluster_reports_its_groups_rebalances_over_http_and_draws_them() {
    let dir = tempfile::tempdir().unwrap();
    let webs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let port = |i: usize| webs[i].rsplit_once(':').unwrap().1.to_string();
    let raft1 = format!("127.0.0.1:{}", free_port());
    let n1 = Node::spawn(
        1,
        free_port(),
        &raft1,
        &dir.path().join("n1"),
        &["--sharded", "--http-port", &port(0)],
    );
    let mut c1 = n1.client();
    wait_for("the first node to serve writes", T, || {
        (show(&c1.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    for i in 0..200 {
        let k = format!("key:{i}");
        assert_eq!(show(&c1.cmd(&["SET", &k, "v"])), "+OK");
    }
    let joining: Vec<Node> = (1..3)
        .map(|i| {
            let raft = format!("127.0.0.1:{}", free_port());
            let flags = ["--sharded", "--join", &raft1, "--http-port", &port(i)];
            Node::spawn(
                0,
                free_port(),
                &raft,
                &dir.path().join(format!("n{}", i + 1)),
                &flags,
            )
        })
        .collect();
    joined(&n1, &joining.iter().collect::<Vec<_>>());

    // Asked on a node that does not lead the metadata group: the request
    // goes into the placement, and the metadata leader carries it out.
    let (code, body) = http("POST", &webs[1], "/rebalance", None);
    assert_eq!(code, 202, "{body}");
    let asked = json(&body)["status"].as_str().unwrap().to_string();
    assert!(
        !asked.starts_with("done"),
        "a rebalance was just asked for: {asked}"
    );
    let report = wait_for("three groups, balanced", Duration::from_secs(120), || {
        let (code, body) = http("GET", &webs[0], "/cluster", None);
        let r = json(&body);
        let groups = r["groups"].as_array()?;
        let led = groups.iter().filter(|g| g["leader"].is_u64()).count();
        let done = r["rebalance"].as_str()?.starts_with("done");
        (code == 200 && done && groups.len() == 3 && led == 3 && r["moving"].is_null()).then_some(r)
    });
    // What `raftify-cli shards --json` prints, with the rebalance status.
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let slots: u64 = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["slots"].as_u64().unwrap())
        .sum();
    assert_eq!(slots, 16384);
    let led: u64 = nodes.iter().map(|n| n["slots_led"].as_u64().unwrap()).sum();
    assert_eq!(led, 16384);
    for g in report["groups"].as_array().unwrap() {
        for r in g["replicas"].as_array().unwrap() {
            assert!(r["lag"].is_u64(), "every replica answered: {g}");
            assert!(r["state_bytes"].is_u64());
        }
    }
    let (code, status) = http("GET", &webs[2], "/rebalance", None);
    assert_eq!(code, 200);
    assert!(json(&status)["status"].is_string());

    // This node's replicas, and the sharding metrics.
    let (_, status) = http("GET", &webs[0], "/status", None);
    let status = json(&status);
    assert_eq!(status["id"], 1);
    assert!(!status["groups"].as_object().unwrap().is_empty());
    let (code, metrics) = http("GET", &webs[0], "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("raftify_shard_groups{node=\"1\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("raftify_shard_moving{node=\"1\"} 0"));
    assert!(metrics.contains("raftify_shard_group_slots{node=\"1\",group="));
    // The groups' shared journal: writes, and the syncs that carried them.
    let counter = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{node=\"1\"}} ")));
        let value = line.and_then(|l| l.rsplit(' ').next()?.parse().ok());
        value.unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    let (syncs, appends) = (
        counter("raftify_shard_journal_syncs_total"),
        counter("raftify_shard_journal_appends_total"),
    );
    assert!(0 < syncs && syncs <= appends, "{syncs} {appends}");
    assert!(counter("raftify_shard_journal_bytes_total") > appends);

    // The status page in a real browser: every group drawn, with a leader.
    let Some(b) = browser::find() else {
        eprintln!("no chromium: the status page's rendering was not checked");
        return;
    };
    let dom = browser::dump_dom(b, &format!("http://{}/dashboard", webs[1]), 2000).unwrap();
    assert_eq!(
        browser::body_attr(&dom, "data-groups").as_deref(),
        Some("3"),
        "{dom}"
    );
    assert_eq!(browser::body_attr(&dom, "data-nodes").as_deref(), Some("3"));
    let rows = dom
        .split("<tbody id=\"groups\">")
        .nth(1)
        .and_then(|t| t.split("</tbody>").next())
        .unwrap_or_default();
    assert_eq!(rows.matches("<tr data-group=").count(), 3, "{dom}");
    assert!(
        !rows.contains("data-leader=\"\""),
        "a group without a leader: {rows}"
    );
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page reports an error: {dom}"
    );
}

/// Three sharded nodes with HTTP ports, 200 keys written on the first,
/// the other two joined (no rebalance yet); `flags` for every node.
fn three_with_http(dir: &std::path::Path, flags: &[&str]) -> (Vec<Node>, Vec<String>, Vec<String>) {
    let webs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let rafts: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let spawn = |i: usize| {
        let port = webs[i].rsplit_once(':').unwrap().1.to_string();
        let mut all = vec!["--sharded", "--http-port", port.as_str()];
        if i > 0 {
            all.extend(["--join", rafts[0].as_str()]);
        }
        all.extend(flags);
        let id = if i == 0 { 1 } else { 0 };
        let data = dir.join(format!("n{}", i + 1));
        Node::spawn(id, free_port(), &rafts[i], &data, &all)
    };
    let n1 = spawn(0);
    wait_for("the first node to serve", T, || {
        let (code, _) = try_http("PUT", &webs[0], "/kv/probe", None).ok()?;
        (code == 200).then_some(())
    });
    let others = vec![spawn(1), spawn(2)];
    joined(&n1, &others.iter().collect::<Vec<_>>());
    let mut nodes = vec![n1];
    nodes.extend(others);
    (nodes, webs, rafts)
}

fn rebalanced(web: &str) -> bool {
    let Ok((200, body)) = try_http("GET", web, "/cluster", None) else {
        return false;
    };
    let r = json(&body);
    let led = r["groups"]
        .as_array()
        .map_or(0, |g| g.iter().filter(|g| g["leader"].is_u64()).count());
    r["rebalance"]
        .as_str()
        .is_some_and(|s| s.starts_with("done"))
        && led == 3
}

#[test]
fn the_key_routes_run_wherever_the_key_lives() {
    let dir = tempfile::tempdir().unwrap();
    // One replica per group: after the rebalance each node holds a third
    // of the slots, so most keys live on another node than the one asked.
    let (_nodes, webs, _) = three_with_http(dir.path(), &["--replicas", "1"]);
    assert_eq!(http("POST", &webs[0], "/rebalance", None).0, 202);
    wait_for("the rebalance", Duration::from_secs(120), || {
        rebalanced(&webs[0]).then_some(())
    });
    for i in 0..60 {
        let web = &webs[i % 3];
        let (code, body) = http("PUT", web, &format!("/kv/key:{i}"), None);
        assert_eq!(
            (code, json(&body)["ok"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
    }
    for i in 0..60 {
        let web = &webs[(i + 1) % 3];
        let (code, body) = http("GET", web, &format!("/kv/key:{i}"), None);
        assert_eq!(
            (code, body.as_str()),
            (200, ""),
            "key:{i} is the empty body it was set to"
        );
    }
    let put = |web: &str, key: &str, value: &str| {
        let mut s = std::net::TcpStream::connect(web).unwrap();
        write!(
            s,
            "PUT /kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{value}",
            value.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(put(&webs[0], "greeting", "hello").starts_with("HTTP/1.1 200"));
    for web in &webs {
        assert_eq!(
            http("GET", web, "/kv/greeting", None),
            (200, "hello".into())
        );
        let (code, body) = http("POST", web, "/incr/hits", None);
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(
        json(&http("POST", &webs[1], "/incr/hits", None).1)["value"],
        4
    );
    // A command's own error: 409; a missing key: 404; deleted once.
    assert_eq!(http("POST", &webs[2], "/incr/greeting", None).0, 409);
    assert_eq!(http("GET", &webs[2], "/kv/nothing", None).0, 404);
    assert_eq!(
        json(&http("DELETE", &webs[1], "/kv/greeting", None).1)["deleted"],
        1
    );
    assert_eq!(
        json(&http("DELETE", &webs[2], "/kv/greeting", None).1)["deleted"],
        0
    );
    assert_eq!(http("GET", &webs[0], "/kv/greeting", None).0, 404);
    assert_eq!(http("PUT", &webs[0], "/kv/short?ttl=0", None).0, 400);
}

/// Increments `ctr:{i}` over HTTP round-robin on `webs` until `stop`:
/// per counter, increments acknowledged (200) and unknown (504, or the
/// connection broke after the request was sent); a 503 (not applied) or a
/// refused connection is tried again elsewhere.
fn http_counter(webs: Vec<String>, stop: Arc<AtomicBool>) -> (Vec<u64>, Vec<u64>, Vec<String>) {
    const COUNTERS: usize = 24;
    let (mut acked, mut unknown) = (vec![0u64; COUNTERS], vec![0u64; COUNTERS]);
    let mut odd = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let i = n % COUNTERS;
        n += 1;
        for attempt in 0..100 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let web = &webs[(n + attempt) % webs.len()];
            let Ok(mut s) = std::net::TcpStream::connect(web) else {
                continue; // not sent
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let req = format!("POST /incr/ctr:{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                unknown[i] += 1; // maybe sent
                break;
            }
            let mut out = String::new();
            let code = match s.read_to_string(&mut out) {
                Ok(_) => out.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()),
                Err(_) => None,
            };
            match code {
                Some(200) => {
                    acked[i] += 1;
                    break;
                }
                Some(503) => std::thread::sleep(Duration::from_millis(20)),
                Some(504) | None => {
                    unknown[i] += 1;
                    break;
                }
                Some(c) => {
                    odd.push(format!("{c}: {out}"));
                    break;
                }
            }
        }
    }
    (acked, unknown, odd)
}

#[test]
fn http_increments_through_a_rebalance_with_a_node_killed_are_each_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, webs, rafts) = three_with_http(dir.path(), &["--move-chunk", "64"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (webs, stop) = (webs.clone(), stop.clone());
        std::thread::spawn(move || http_counter(webs, stop))
    };
    assert_eq!(http("POST", &webs[2], "/rebalance", None).0, 202);
    wait_for("a slot move", Duration::from_secs(60), || {
        let (_, body) = try_http("GET", &webs[0], "/rebalance", None).ok()?;
        let status = json(&body)["status"].as_str()?.to_string();
        (status.contains("MoveSlots") || status.contains("Purge") || status.starts_with("done"))
            .then_some(())
    });
    // Node 3 (a replica of every group, the leader of none yet) dies
    // mid-move and comes back from its data dir.
    let port = nodes[2].port;
    nodes[2].kill();
    let web3 = webs[2].rsplit_once(':').unwrap().1.to_string();
    let data = dir.path().join("n3");
    nodes[2] = Node::spawn(
        0,
        port,
        &rafts[2],
        &data,
        &[
            "--sharded",
            "--http-port",
            &web3,
            "--join",
            &rafts[0],
            "--move-chunk",
            "64",
        ],
    );
    wait_for("the rebalance to finish", Duration::from_secs(120), || {
        let _ = try_http("POST", &webs[0], "/rebalance", None);
        rebalanced(&webs[0]).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (acked, unknown, odd) = writer.join().unwrap();
    assert!(odd.is_empty(), "{odd:?}");
    let total: u64 = acked.iter().sum();
    eprintln!(
        "{total} increments acknowledged, {} unknown",
        unknown.iter().sum::<u64>()
    );
    assert!(total > 0);
    for (i, (a, u)) in acked.iter().zip(&unknown).enumerate() {
        let (code, body) = http("GET", &webs[i % 3], &format!("/kv/ctr:{i}"), None);
        let v: u64 = if code == 404 {
            0
        } else {
            body.parse().unwrap_or_else(|_| panic!("{code} {body}"))
        };
        assert!(
            *a <= v && v <= a + u,
            "ctr:{i} is {v}: {a} acknowledged, {u} unknown"
        );
    }
}
