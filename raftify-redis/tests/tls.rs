//! The Redis port over TLS (`--tls-port`, the node's certificate), with
//! stock `redis-cli --tls`: server-only TLS, and client certificates
//! required with --tls-ca.

mod common;

use common::*;
use raftify_grpc::testkit::TestPki;
use std::path::Path;
use std::process::Command;

fn redis_cli(port: u16, tls: &[&str], args: &[&str]) -> (bool, String) {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .args(tls)
        .args(args)
        .output()
        .expect("run redis-cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && !text.contains("Could not connect") && !text.contains("rror"),
        text.trim().to_string(),
    )
}

fn write_pki(dir: &Path) -> TestPki {
    let pki = TestPki::generate().expect("certificates");
    for (name, pem) in [
        ("ca.pem", &pki.ca),
        ("node.pem", &pki.node_cert),
        ("node.key", &pki.node_key),
        ("other-ca.pem", &pki.other_ca),
    ] {
        std::fs::write(dir.join(name), pem).expect("write PEM");
    }
    pki
}

#[test]
fn redis_cli_over_tls_with_and_without_client_certificates() {
    if !have("redis-cli") {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    write_pki(certs.path());
    let file = |n: &str| certs.path().join(n).display().to_string();
    let (cert, key, ca) = (file("node.pem"), file("node.key"), file("ca.pem"));

    // Server-only TLS: the client checks the server against the CA.
    let tls_port = free_port();
    let port_s = tls_port.to_string();
    let c = Cluster::start(
        1,
        &[
            "--no-sync",
            "--tls-port",
            &port_s,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    c.wait_leader();
    let (ok, out) = wait_for("the TLS port", T, || {
        let r = redis_cli(tls_port, &["--cacert", &ca], &["SET", "k", "v"]);
        r.0.then_some(r)
    });
    assert!(ok && out == "OK", "{out}");
    assert_eq!(
        redis_cli(tls_port, &["--cacert", &ca], &["GET", "k"]).1,
        "v"
    );
    // A client that does not trust the server's CA fails the handshake.
    let (ok, out) = redis_cli(tls_port, &["--cacert", &file("other-ca.pem")], &["PING"]);
    assert!(!ok, "{out}");
    // Plain text on the TLS port is no request.
    let mut plain = Client::connect(&format!("127.0.0.1:{tls_port}")).expect("connect");
    assert!(plain.call(&["PING"]).is_err());
    // The plain port still serves.
    assert_eq!(show(&c.node(1).client().cmd(&["GET", "k"])), "$v");
    drop(c);

    // With --tls-ca: a client certificate is required.
    let tls_port = free_port();
    let port_s = tls_port.to_string();
    let c = Cluster::start(
        1,
        &[
            "--no-sync",
            "--tls-port",
            &port_s,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ],
    );
    c.wait_leader();
    let with_cert = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    let (ok, out) = wait_for("the TLS port with client certificates", T, || {
        let r = redis_cli(tls_port, &with_cert, &["PING"]);
        r.0.then_some(r)
    });
    assert!(ok && out == "PONG", "{out}");
    let (ok, out) = redis_cli(tls_port, &["--cacert", &ca], &["PING"]);
    assert!(!ok, "no client certificate must be refused: {out}");
}
