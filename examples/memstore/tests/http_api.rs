//! The HTTP API on a single in-process node, over a real TCP listener.

mod common;

use common::*;
use memstore::http::{router, HttpAuth};
use std::time::Duration;

async fn serve() -> (String, memstore::http::Node) {
    serve_with(HttpAuth::default()).await
}

async fn serve_with(auth: HttpAuth) -> (String, memstore::http::Node) {
    let state = single_node_state(auth).await;
    let raft = state.raft.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    (addr, raft)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_cas_round_trip() {
    let (addr, raft) = serve().await;
    blocking(move || {
        let r = put(&addr, "/kv/greeting", b"hello");
        assert_eq!(r.status, 200, "{}", r.text());
        let first = r.json()["index"].as_u64().unwrap();
        let r = put(&addr, "/kv/greeting", b"hello again");
        assert!(r.json()["index"].as_u64().unwrap() > first, "indexes grow");
        let r = get(&addr, "/kv/greeting");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello again"[..]));
        assert_eq!(
            get(&addr, "/kv/greeting?consistency=stale").body,
            b"hello again"
        );
        assert_eq!(get(&addr, "/kv/greeting?consistency=weird").status, 400);
        assert_eq!(get(&addr, "/kv/missing").status, 404);
        let r = post(
            &addr,
            "/cas/greeting",
            br#"{"expected":"nope","value":"x"}"#,
        );
        assert_eq!(r.json()["succeeded"], false);
        let r = post(
            &addr,
            "/cas/greeting",
            br#"{"expected":"hello again","value":"x"}"#,
        );
        assert_eq!(r.json()["succeeded"], true);
        let r = delete(&addr, "/kv/greeting");
        assert_eq!((r.status, r.json()["deleted"].as_bool()), (200, Some(true)));
        assert_eq!(get(&addr, "/kv/greeting").status, 404);
    })
    .await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cluster_health_metrics_snapshot() {
    let (addr, raft) = serve().await;
    blocking(move || {
        put(&addr, "/kv/a", b"1");
        let s = get(&addr, "/status").json();
        for field in [
            "id",
            "role",
            "term",
            "leader_id",
            "commit_index",
            "applied_index",
            "last_index",
            "snapshot_index",
        ] {
            assert!(s.get(field).is_some(), "status lacks {field}: {s}");
        }
        assert_eq!(s["role"], "leader");
        let c = get(&addr, "/cluster").json();
        assert_eq!(c["leader_id"], 1);
        assert_eq!(c["members"][0]["role"], "voter");
        assert_eq!(c["members"][0]["id"], 1);
        assert_eq!(get(&addr, "/health").status, 200);
        let r = get(&addr, "/metrics");
        let m = r.text();
        let value = |name: &str| metric_value(&m, name);
        assert_eq!(value("raftify_is_leader"), Some(1.0), "{m}");
        assert_eq!(value("memstore_keys"), Some(1.0), "{m}");
        // A single node forwards nothing.
        assert_eq!(value("raftify_forwarded_proposals_total"), Some(0.0), "{m}");
        assert!(value("raftify_proposals_total") >= Some(1.0), "{m}");
        assert!(value("raftify_term") >= Some(1.0), "{m}");
        // Every series names the node; the families the operators' guide
        // lists are there.
        let samples = parse_metrics(&m);
        assert!(samples
            .iter()
            .all(|(_, l, _)| l.get("node").map(String::as_str) == Some("1")));
        let names: std::collections::BTreeSet<&str> =
            samples.iter().map(|(n, _, _)| n.as_str()).collect();
        for family in [
            "raftify_term",
            "raftify_is_leader",
            "raftify_leader_id",
            "raftify_commit_index",
            "raftify_applied_index",
            "raftify_last_index",
            "raftify_snapshot_index",
            "raftify_leader_changes_total",
            "raftify_applied_entries_total",
            "raftify_storage_writes_total",
            "raftify_storage_write_bytes_total",
            "raftify_storage_write_duration_seconds",
            "raftify_proposal_duration_seconds",
            "raftify_read_index_duration_seconds",
            "raftify_snapshot_duration_seconds",
            "raftify_inbox_depth",
            "memstore_write_duration_seconds",
            "memstore_linearizable_read_duration_seconds",
            "memstore_data_bytes",
        ] {
            assert!(names.contains(family), "no {family} in {names:?}");
        }
        let snap = post(&addr, "/snapshot", b"").json();
        assert!(snap["snapshot_index"].as_u64().unwrap() >= 2);
        assert_eq!(
            get(&addr, "/status").json()["snapshot_index"],
            snap["snapshot_index"]
        );
    })
    .await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_node_keeps_serving() {
    let (addr, raft) = serve().await;
    blocking(move || {
        let r = put(&addr, "/kv/big", &vec![b'x'; 2048]);
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(r.json()["error"].is_string());
        let r = put(&addr, "/kv/%FF%FE", b"v");
        assert_eq!(r.status, 400, "invalid UTF-8 key: {}", r.text());
        assert!(r.json()["error"].is_string());
        let long_key = "k".repeat(2000);
        assert_eq!(put(&addr, &format!("/kv/{long_key}"), b"v").status, 400);
        let r = get(&addr, "/no/such/route");
        assert_eq!(r.status, 404);
        assert!(r.json()["error"].is_string());
        assert_eq!(post(&addr, "/cluster/voters", b"{not json").status, 400);
        assert_eq!(
            post(&addr, "/cluster/voters", br#"{"id":5,"raft_addr":"bad"}"#).status,
            400
        );
        assert_eq!(delete(&addr, "/cluster/members/abc").status, 400);
        assert_eq!(post(&addr, "/cas/k", br#"{"value":1}"#).status / 100, 4);
        let _ = raw_with_timeout(&addr, b"\x00\x01garbage\r\n\r\n", Duration::from_secs(1));
        let _ = raw_with_timeout(
            &addr,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
            Duration::from_secs(1),
        );
        assert_eq!(put(&addr, "/kv/still", b"alive").status, 200);
        assert_eq!(get(&addr, "/kv/still").body, b"alive");
    })
    .await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_token_guards_every_endpoint_but_health() {
    // The current token and, mid-rotation, the one accepted with it.
    let auth = HttpAuth::new(["s3cret", "0ld-s3cret"], false);
    let (addr, raft) = serve_with(auth).await;
    blocking(move || {
        let bearer = ["Authorization: Bearer s3cret"];
        let accepted = ["Authorization: Bearer 0ld-s3cret"];
        let wrong = ["Authorization: Bearer s3cre7"];
        // Without the token, or with another one: 401, and nothing changes.
        for headers in [&[][..], &wrong[..]] {
            for (method, path, body) in [
                ("PUT", "/kv/k", &b"v"[..]),
                ("GET", "/kv/k", b""),
                ("DELETE", "/kv/k", b""),
                ("POST", "/cas/k", br#"{"expected":null,"value":"x"}"#),
                ("GET", "/status", b""),
                ("GET", "/cluster", b""),
                (
                    "POST",
                    "/cluster/voters",
                    br#"{"id":9,"raft_addr":"127.0.0.1:9"}"#,
                ),
                ("DELETE", "/cluster/members/1", b""),
                ("POST", "/cluster/transfer-leader/1", b""),
                ("POST", "/cluster/leave", b""),
                ("POST", "/snapshot", b""),
                ("GET", "/metrics", b""),
            ] {
                let r = request_with(&addr, method, path, body, headers).unwrap();
                assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.text());
            }
        }
        // /health stays open for probes.
        assert_eq!(get(&addr, "/health").status, 200);
        // With the token: served.
        let r = request_with(&addr, "PUT", "/kv/k", b"v", &bearer).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let r = request_with(&addr, "GET", "/kv/k", b"", &bearer).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"v"[..]));
        // The accepted token is served as well.
        let r = request_with(&addr, "GET", "/kv/k", b"", &accepted).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"v"[..]));
        let r = request_with(&addr, "GET", "/metrics", b"", &bearer).unwrap();
        assert_eq!(r.status, 200);
        // Every refusal was counted.
        let refused = parse_metrics(&r.text())
            .into_iter()
            .find(|(n, l, _)| {
                n == "raftify_auth_failures_total"
                    && l.get("server").map(String::as_str) == Some("http")
            })
            .map(|(_, _, v)| v);
        assert!(refused >= Some(2.0), "{}", r.text());
        // The refused requests wrote nothing: one key, one member.
        let r = request_with(&addr, "GET", "/cluster", b"", &bearer).unwrap();
        assert_eq!(r.json()["members"].as_array().map(Vec::len), Some(1));
    })
    .await;
    let keys = raft.stale_read(|s| s.len()).await;
    assert_eq!(keys, 1);

    // --metrics-public opens /metrics, and only it.
    let (addr, _raft) = serve_with(HttpAuth::new(["s3cret"], true)).await;
    blocking(move || {
        assert_eq!(get(&addr, "/metrics").status, 200);
        assert_eq!(get(&addr, "/status").status, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_members_address_is_refused_with_409() {
    let (addr, raft) = serve().await;
    // An attacker's listener: the cluster must never connect to it (it
    // would present the peer token there).
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let body = format!(r#"{{"id":1,"raft_addr":"{trap_addr}"}}"#);
    blocking(move || {
        for path in ["/cluster/voters", "/cluster/learners"] {
            let r = post(&addr, path, body.as_bytes());
            assert_eq!(r.status, 409, "{}", r.text());
            assert!(r.text().contains("cannot move"), "{}", r.text());
        }
    })
    .await;
    let members = raft.handle().members().await.unwrap().members;
    assert_eq!(members.len(), 1);
    assert_ne!(members[0].addr.as_deref(), Some(trap_addr.as_str()));
    // Give a stray connection time to arrive (a bounded look, not a sync).
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
    while std::time::Instant::now() < deadline {
        match trap.accept() {
            Ok((_, from)) => panic!("the cluster connected to the new address from {from}"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_read_whatever_their_content_type() {
    let (addr, _raft) = serve().await;
    blocking(move || {
        // What `curl -d '{...}'` sends: a form content type (the leading
        // space keeps the test client from adding its JSON one).
        let form = ["Content-Type: application/x-www-form-urlencoded"];
        let body = br#" {"expected":null,"value":"x"}"#;
        let r = request_with(&addr, "POST", "/cas/k", body, &form).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["succeeded"], true);
        let r = request_with(&addr, "POST", "/cas/k", body, &[]).unwrap();
        assert_eq!(
            (r.status, r.json()["succeeded"].as_bool()),
            (200, Some(false))
        );
        // Not JSON at all: 400 with a message, not 415.
        let r = request_with(&addr, "POST", "/cas/k", b"value=x", &form).unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("JSON"), "{}", r.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_counts_and_an_idempotency_key_applies_a_write_once() {
    let (addr, raft) = serve().await;
    blocking(move || {
        let send = |method: &str, path: &str, body: &[u8], key: Option<&str>| {
            let header = key.map(|k| format!("Idempotency-Key: {k}"));
            let headers: Vec<&str> = header.iter().map(String::as_str).collect();
            request_with(&addr, method, path, body, &headers).unwrap()
        };
        let r = send("POST", "/incr/n", b"", None);
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(1)));
        assert!(r.json()["index"].as_u64().is_some(), "{}", r.text());
        let r = send("POST", "/incr/n", b" 41\n", None);
        assert_eq!(r.json()["value"].as_i64(), Some(42));
        for garbage in [&b"x"[..], b"1.5", b"99999999999999999999", &[0xff]] {
            let r = send("POST", "/incr/n", garbage, None);
            assert_eq!(r.status, 400, "{garbage:?}: {}", r.text());
        }

        // The same key twice: the first answer, byte for byte, and one
        // increment; another key applies again.
        let first = send("POST", "/incr/n", b"10", Some("pay-1"));
        assert_eq!(first.json()["value"].as_i64(), Some(52));
        let again = send("POST", "/incr/n", b"10", Some("pay-1"));
        assert_eq!(
            (again.status, again.body.clone()),
            (200, first.body.clone())
        );
        assert_eq!(get(&addr, "/kv/n").body, b"52");
        let other = send("POST", "/incr/n", b"10", Some("pay-2"));
        assert_eq!(other.json()["value"].as_i64(), Some(62));
        // Every write takes a key; its repeat changes nothing, even after
        // the key was written since.
        let r = send("PUT", "/kv/k", b"a", Some("put-1"));
        assert_eq!(r.status, 200);
        put(&addr, "/kv/k", b"b");
        let again = send("PUT", "/kv/k", b"a", Some("put-1"));
        assert_eq!(again.body, r.body);
        assert_eq!(get(&addr, "/kv/k").body, b"b");
        let r = send("DELETE", "/kv/k", b"", Some("del-1"));
        assert_eq!(r.json()["deleted"], true);
        assert_eq!(send("DELETE", "/kv/k", b"", Some("del-1")).body, r.body);
        let cas = br#"{"expected":null,"value":"c"}"#;
        let r = send("POST", "/cas/k", cas, Some("cas-1"));
        assert_eq!(r.json()["succeeded"], true);
        delete(&addr, "/kv/k");
        assert_eq!(send("POST", "/cas/k", cas, Some("cas-1")).body, r.body);
        assert_eq!(get(&addr, "/kv/k").status, 404);

        // A refused increment is refused again with the same answer.
        put(&addr, "/kv/word", b"abc");
        let r = send("POST", "/incr/word", b"", Some("w-1"));
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not an integer"));
        put(&addr, "/kv/word", b"7");
        let again = send("POST", "/incr/word", b"", Some("w-1"));
        assert_eq!((again.status, again.body), (409, r.body));
        assert_eq!(get(&addr, "/kv/word").body, b"7");
        put(&addr, "/kv/big", i64::MAX.to_string().as_bytes());
        assert_eq!(send("POST", "/incr/big", b"", None).status, 409);
        let long = "k".repeat(257);
        assert_eq!(send("POST", "/incr/n", b"", Some(&long)).status, 400);
    })
    .await;
    raft.handle().shutdown().await;
}
