//! HTTPS and the HTTP server's timeouts: memstore's server loop (`serve`)
//! over real sockets on an in-process node, and the binary's TLS flags.

mod common;

use common::*;
use memstore::http::{router, HttpAuth};
use memstore::serve::{serve, Limits};
use raftify_grpc::testkit::TestPki;
use raftify_grpc::TlsConfig;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// memstore's server loop with `limits` (and HTTPS with `tls`) on a
/// single in-process node; its address and the node.
async fn start(limits: Limits, tls: Option<TlsConfig>) -> (String, memstore::http::Node) {
    let state = single_node_state(HttpAuth::default()).await;
    let raft = state.raft.clone();
    let tls = tls.map(|t| t.rustls_server_config(&[b"http/1.1"]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let metrics = state.server.clone();
    tokio::spawn(serve(
        listener,
        router(state),
        limits,
        metrics,
        tls,
        std::future::pending(),
    ));
    (addr, raft)
}

/// The node's certificate, and with `client_ca` the CA clients need.
fn server_tls(pki: &TestPki, client_ca: bool) -> TlsConfig {
    TlsConfig {
        cert_pem: Some(pki.node_cert.clone()),
        key_pem: Some(pki.node_key.clone()),
        ca_pem: client_ca.then(|| pki.ca.clone()),
        domain: None,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Whether the server closed `s`: EOF or a reset, not a read timeout.
fn closed_by_server(s: &mut impl Read) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the server sent {n} bytes unasked"),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_round_trip_and_plain_http_to_the_https_port_fails_cleanly() {
    let pki = TestPki::generate().expect("a test PKI");
    let (addr, raft) = start(Limits::default(), Some(server_tls(&pki, false))).await;
    blocking(move || {
        let client = tls::client_config(&pki.ca, None);
        let r = tls::request(&addr, &client, "PUT", "/kv/k", b"over tls").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let r = tls::request(&addr, &client, "GET", "/kv/k", b"").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"over tls"[..]));

        // Plain HTTP to the HTTPS port: no HTTP answer, the connection
        // closes (the server's read of a TLS record fails).
        let plain = request_bytes(&addr, "GET", "/kv/k", b"", &[]);
        if let Ok(out) = raw_with_timeout(&addr, &plain, Duration::from_secs(12)) {
            assert!(
                !out.starts_with(b"HTTP/"),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
        // A client that does not trust the server's CA refuses it.
        let stranger = tls::client_config(&pki.other_ca, None);
        assert!(tls::request(&addr, &stranger, "GET", "/kv/k", b"").is_err());

        // The server keeps serving.
        let r = tls::request(&addr, &client, "GET", "/kv/k", b"").unwrap();
        assert_eq!(r.body, b"over tls");
    })
    .await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_ca() {
    let pki = TestPki::generate().expect("a test PKI");
    let (addr, raft) = start(Limits::default(), Some(server_tls(&pki, true))).await;
    blocking(move || {
        let anonymous = tls::client_config(&pki.ca, None);
        let e = tls::request(&addr, &anonymous, "GET", "/health", b"");
        assert!(e.is_err(), "served without a client certificate: {e:?}");
        let stranger = tls::client_config(&pki.ca, Some((&pki.stranger_cert, &pki.stranger_key)));
        let e = tls::request(&addr, &stranger, "GET", "/health", b"");
        assert!(e.is_err(), "served a certificate of another CA: {e:?}");

        let member = tls::client_config(&pki.ca, Some((&pki.node_cert, &pki.node_key)));
        let r = tls::request(&addr, &member, "PUT", "/kv/m", b"mutual").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let r = tls::request(&addr, &member, "GET", "/kv/m", b"").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"mutual"[..]));
    })
    .await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_handshakes_are_closed_within_15_s_and_block_no_one() {
    let pki = TestPki::generate().expect("a test PKI");
    // The default limits: the handshake gets the 10 s header timeout.
    let (addr, raft) = start(Limits::default(), Some(server_tls(&pki, false))).await;
    blocking(move || {
        let started = Instant::now();
        let silent = TcpStream::connect(&addr).unwrap();
        let mut stalled = TcpStream::connect(&addr).unwrap();
        // The first bytes of a ClientHello record, then nothing.
        stalled
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .unwrap();

        // Meanwhile other clients are served at once.
        let client = tls::client_config(&pki.ca, None);
        let r = tls::request(&addr, &client, "GET", "/health", b"").unwrap();
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a stalled handshake held up others for {:?}",
            started.elapsed()
        );

        for mut s in [silent, stalled] {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            assert!(closed_by_server(&mut s), "the connection was not closed");
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "held for {:?}",
            started.elapsed()
        );
        let r = tls::request(&addr, &client, "GET", "/health", b"").unwrap();
        assert_eq!(r.status, 200);
    })
    .await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_its_connection_closed() {
    let limits = Limits {
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (addr, raft) = start(limits, None).await;
    blocking(move || {
        // Headers promise 10 bytes, 3 come, then nothing (the connection
        // stays open).
        let started = Instant::now();
        let req = b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";
        let out = raw_with_timeout(&addr, req, Duration::from_secs(20)).unwrap();
        let r = parse_response(&out).unwrap();
        assert_eq!(r.status, 408, "{}", r.text());
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("did not arrive"));
        // read_to_end returned: the server closed the connection.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cut off after {:?}",
            started.elapsed()
        );
        assert_eq!(get(&addr, "/kv/slow").status, 404, "nothing was written");
        // A body that arrives in time is served.
        assert_eq!(put(&addr, "/kv/fast", b"0123456789").status, 200);
        assert_eq!(get(&addr, "/kv/fast").body, b"0123456789");
    })
    .await;
    raft.handle().shutdown().await;
}

/// Reads one response with a Content-Length off a kept-alive connection.
fn read_one_response(s: &mut TcpStream) -> Resp {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-response");
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a Content-Length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    out.extend_from_slice(&body);
    parse_response(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (addr, raft) = start(limits, None).await;
    blocking(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Two requests on one connection: it is kept alive.
        for _ in 0..2 {
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(read_one_response(&mut s).status, 200);
        }
        let idle_from = Instant::now();
        assert!(
            closed_by_server(&mut s),
            "the idle connection was not closed"
        );
        let idle = idle_from.elapsed();
        assert!(idle < Duration::from_secs(5), "closed only after {idle:?}");
    })
    .await;
    raft.handle().shutdown().await;
}

/// Writes the PKI's files into `dir`: ca.pem, node.pem, node.key.
fn write_pki(pki: &TestPki, dir: &std::path::Path) {
    std::fs::write(dir.join("ca.pem"), &pki.ca).unwrap();
    std::fs::write(dir.join("node.pem"), &pki.node_cert).unwrap();
    std::fs::write(dir.join("node.key"), &pki.node_key).unwrap();
}

#[test]
fn the_binary_serves_https_with_mutual_tls() {
    let pki = TestPki::generate().expect("a test PKI");
    let dir = tempfile::tempdir().unwrap();
    write_pki(&pki, dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--web-tls-cert",
        &p("node.pem"),
        "--web-tls-key",
        &p("node.key"),
        "--web-tls-client-ca",
        &p("ca.pem"),
    ];
    let node = Node::spawn(1, &http, &raft, &dir.path().join("n1"), &flags);
    let member = tls::client_config(&pki.ca, Some((&pki.node_cert, &pki.node_key)));
    wait_for(
        "the node to lead over HTTPS",
        Duration::from_secs(30),
        || {
            let r = tls::request(&http, &member, "GET", "/status", b"").ok()?;
            (r.status == 200 && r.json()["leader_id"].as_u64() == Some(1)).then_some(())
        },
    );
    let r = tls::request(&http, &member, "PUT", "/kv/k", b"v").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = tls::request(&http, &member, "GET", "/kv/k", b"").unwrap();
    assert_eq!(r.body, b"v");
    let anonymous = tls::client_config(&pki.ca, None);
    assert!(tls::request(&http, &anonymous, "GET", "/health", b"").is_err());
    drop(node);
}

/// Starts memstore with `flags`, expects it to fail at startup; its output.
fn failed_start(dir: &std::path::Path, flags: &[&str]) -> String {
    let http = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let mut node = Node::spawn(1, &http, &raft, &dir.join("n1"), flags);
    let mut child = node.child.take().unwrap();
    let status = wait_for("memstore to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(!status.success(), "started with {flags:?}");
    node.log_text()
}

#[test]
fn bad_https_flags_stop_the_start_with_a_clear_error() {
    let pki = TestPki::generate().expect("a test PKI");
    let dir = tempfile::tempdir().unwrap();
    write_pki(&pki, dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();

    let out = failed_start(dir.path(), &["--web-tls-cert", &p("node.pem")]);
    assert!(out.contains("--web-tls-key"), "{out}");

    let out = failed_start(
        dir.path(),
        &[
            "--web-tls-cert",
            &p("missing.pem"),
            "--web-tls-key",
            &p("node.key"),
        ],
    );
    assert!(
        out.contains("--web-tls-cert")
            && out.contains("missing.pem")
            && out.contains("cannot read"),
        "{out}"
    );
    // A key where the certificate belongs, and the reverse.
    let out = failed_start(
        dir.path(),
        &[
            "--web-tls-cert",
            &p("node.key"),
            "--web-tls-key",
            &p("node.pem"),
        ],
    );
    assert!(
        out.contains("--web-tls-cert")
            && out.contains("node.key")
            && out.contains("no PEM certificate"),
        "{out}"
    );
    let out = failed_start(
        dir.path(),
        &[
            "--web-tls-cert",
            &p("node.pem"),
            "--web-tls-key",
            &p("node.key"),
            "--web-tls-client-ca",
            &p("node.key"),
        ],
    );
    assert!(
        out.contains("--web-tls-client-ca") && out.contains("node.key"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
}
