//! Every common mistake with a live command fails fast with a plain
//! message: the `raftify-cli` binary against real servers on loopback — a
//! raftify node over gRPC (plaintext, TLS, with a token), an HTTP/1
//! responder, a silent listener, a closed port.
//!
//! (This target also makes `cargo test` build the `raftify-cli` binary up
//! front, which memstore's end-to-end tests run.)

use raftify_core::testkit::KvStore;
use raftify_core::{Bootstrap, Config, MemStore, Raft};
use raftify_grpc::{GrpcConfig, GrpcTransport, RaftGrpcServer, ServerHandle, TlsConfig};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A single-node raftify cluster served over gRPC in this process.
struct Node {
    addr: String,
    server: Option<ServerHandle>,
    raft: Option<Raft<raftify_core::testkit::KvCmd, KvStore>>,
    rt: tokio::runtime::Runtime,
}

impl Node {
    fn start(grpc: GrpcConfig) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (addr, server, raft) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let transport = GrpcTransport::new(addr.clone(), grpc.clone()).expect("transport");
            let raft = Raft::builder(Config::new(1), KvStore::default())
                .storage(Arc::new(MemStore::new()))
                .transport(Arc::new(transport))
                .bootstrap(Bootstrap::Single { addr: addr.clone() })
                .logger(raftify_core::discard_logger())
                .start()
                .await
                .expect("start the node");
            let server = RaftGrpcServer::new(raft.handle().clone(), grpc)
                .spawn(listener)
                .expect("serve");
            raft.handle()
                .wait_for_leader(Duration::from_secs(10))
                .await
                .expect("a leader");
            (addr, server, raft)
        });
        Node {
            addr,
            server: Some(server),
            raft: Some(raft),
            rt,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let (server, raft) = (self.server.take(), self.raft.take());
        self.rt.block_on(async {
            if let Some(s) = server {
                s.shutdown().await;
            }
            if let Some(r) = raft {
                r.handle().shutdown().await;
            }
        });
    }
}

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "test CA");
    let ca = p.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut p =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca, &ca_key).expect("cert");
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Runs the CLI; returns its output and how long it took.
fn cli(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_raftify-cli"))
        .args(args)
        .env_remove("RAFTIFY_AUTH_TOKEN")
        .env_remove("RAFTIFY_TLS_CA")
        .env_remove("RAFTIFY_TLS_CERT")
        .env_remove("RAFTIFY_TLS_KEY")
        .output()
        .expect("run raftify-cli");
    (out, start.elapsed())
}

/// Runs the CLI, expects exit code 1 within `bound` and a stderr
/// containing every one of `expect`; returns stderr.
fn fails(args: &[&str], bound: Duration, expect: &[&str]) -> String {
    let (out, took) = cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{args:?}: expected {e:?} in {stderr:?}");
    }
    assert!(
        took < bound,
        "{args:?} took {took:?} (bound {bound:?}): {stderr}"
    );
    stderr
}

const FAST: Duration = Duration::from_secs(3);

#[test]
fn nothing_listening_is_refused_at_once() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    fails(
        &["members", &addr],
        FAST,
        &["connection refused: nothing listens at", &addr],
    );
}

/// A tiny HTTP/1 server that answers every connection with a 404 (what
/// memstore's HTTP API answers for `/`).
#[test]
fn an_http1_port_is_named_as_such() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            );
        }
    });
    fails(
        &["leader", &addr],
        FAST,
        &[
            "this looks like memstore's HTTP port; use the raft (gRPC) port (e.g. 60061)",
            &addr,
        ],
    );
}

#[test]
fn a_silent_listener_times_out_naming_what_and_where() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // Accepted by the kernel's backlog, never answered.
    fails(
        &["members", &addr, "--timeout", "1"],
        FAST,
        &["timed out after 1s waiting for", &addr],
    );
    drop(listener);
}

#[test]
fn tls_mismatches_and_tokens_are_explained() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).expect("write pem");
        p.to_string_lossy().into_owned()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca),
        write("cert.pem", &pki.cert),
        write("key.pem", &pki.key),
    );
    let tls_node = Node::start(GrpcConfig {
        tls: Some(TlsConfig {
            cert_pem: Some(pki.cert.clone()),
            key_pem: Some(pki.key.clone()),
            ca_pem: None,
            domain: None,
        }),
        auth_token: Some("client-secret".into()),
        ..GrpcConfig::default()
    });
    let plain_node = Node::start(GrpcConfig::default());
    let token = ["--auth-token", "client-secret"];

    // A TLS server approached without TLS.
    fails(
        &["members", &tls_node.addr, token[0], token[1]],
        FAST,
        &[
            "the server wants TLS: pass --tls-ca (and --tls-cert/--tls-key for mutual TLS)",
            &tls_node.addr,
        ],
    );
    // TLS approached at a plaintext server.
    fails(
        &["members", &plain_node.addr, "--tls-ca", &ca],
        FAST,
        &["serves plaintext gRPC, not TLS", &plain_node.addr],
    );
    // No token, then a wrong one.
    let tls = ["--tls-ca", ca.as_str(), "--tls-domain", "localhost"];
    let mut args = vec!["members", tls_node.addr.as_str()];
    args.extend(tls);
    fails(
        &args,
        FAST,
        &["unauthenticated: pass --auth-token (the cluster's client token)"],
    );
    args.extend(["--auth-token", "wrong"]);
    fails(
        &args,
        FAST,
        &[
            "unauthenticated: pass --auth-token",
            "the token given was refused",
        ],
    );
    // Everything right: it answers (a client certificate is accepted too).
    let mut args = vec![
        "leader",
        tls_node.addr.as_str(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend(tls);
    args.extend(token);
    let (out, _) = cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 "));
    let (out, _) = cli(&["leader", &plain_node.addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refused_certificates_fail_at_once_with_the_tls_error() {
    let pki = pki();
    let other = pki_other_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).expect("write pem");
        p.to_string_lossy().into_owned()
    };
    let (ca, other_ca) = (write("ca.pem", &pki.ca), write("other.pem", &other));
    // Mutual TLS: the node wants a client certificate signed by its CA.
    let node = Node::start(GrpcConfig {
        tls: Some(TlsConfig {
            cert_pem: Some(pki.cert.clone()),
            key_pem: Some(pki.key.clone()),
            ca_pem: Some(pki.ca.clone()),
            domain: None,
        }),
        ..GrpcConfig::default()
    });
    let addr = node.addr.as_str();
    fails(
        &[
            "members",
            addr,
            "--tls-ca",
            &ca,
            "--tls-domain",
            "localhost",
        ],
        FAST,
        &[addr, "pass --tls-cert and --tls-key"],
    );
    // The node's certificate is not signed by the CA given.
    fails(
        &["members", addr, "--tls-ca", &other_ca],
        FAST,
        &[addr, "does not verify against --tls-ca"],
    );
}

/// A CA that signed nothing here.
fn pki_other_ca() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.self_signed(&key).expect("CA").pem()
}
