//! A write whose connection breaks after it was delivered: a write in a
//! session (the default for `RaftClient::propose` and for a follower's
//! forwarded proposals) is sent again and applied once; a plain one must be
//! reported as unknown and not sent again (it may have been applied, and an
//! increment applied twice counts twice). Real gRPC, a real TCP proxy that
//! swallows the answer and then cuts the connection.

mod common;

use common::*;
use raftify_core::testkit::{KvCmd, Node};
use raftify_core::{AbstractLogEntry, ErrorClass};
use raftify_grpc::{GrpcConfig, RaftClient};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A TCP proxy to `target`. Once `swallow` is set, nothing the server sends
/// reaches the client; `cut` closes every proxied connection.
struct Proxy {
    addr: String,
    swallow: Arc<AtomicBool>,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let swallow = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Notify::new());
        let (s, c) = (swallow.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(pump(client, server, s.clone(), c.clone()));
            }
        });
        Proxy {
            addr,
            swallow,
            cut,
            task,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(client: TcpStream, server: TcpStream, swallow: Arc<AtomicBool>, cut: Arc<Notify>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) if swallow.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // Dropping both halves closes the connection on both sides.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.notified() => {}
    }
}

/// Waits until `node` has applied counter `n` up to `value`.
async fn wait_counter(node: &Node, value: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node
        .stale_read(|s| s.map.get("n").cloned())
        .await
        .as_deref()
        != Some(value)
    {
        assert!(tokio::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A 3-node cluster, its leader, and a proxy to the leader (or, with
/// `via_follower`, to a follower), with a client that knows the cluster
/// only through the proxy (the retry loop would go there again).
async fn cluster_behind_proxy(
    via_follower: bool,
    client_session: bool,
) -> (GCluster, u64, Proxy, RaftClient) {
    let c = GCluster::start(3, GrpcConfig::default(), no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let target = match via_follower {
        true => [1, 2, 3].into_iter().find(|id| *id != leader).unwrap(),
        false => leader,
    };
    let proxy = Proxy::start(c.addr(target)).await;
    let config = GrpcConfig {
        request_timeout: Duration::from_secs(10),
        client_session,
        ..GrpcConfig::default()
    };
    let client = RaftClient::new([proxy.addr.clone()], config).unwrap();
    (c, leader, proxy, client)
}

/// Counter `n` as a linearizable read on `node` sees it (a resend still in
/// flight would show).
async fn counter(node: &Node) -> Option<String> {
    node.linearizable_read(|s| s.map.get("n").cloned())
        .await
        .unwrap()
}

/// Swallows the answers through `proxy` while `write` runs, until `node`
/// has applied counter `n` up to `value`; then cuts the connection (the
/// answer is lost with it), lets answers flow again and returns what the
/// write returned in the end.
async fn lose_the_answer<T: Send + 'static>(
    proxy: &Proxy,
    node: &Node,
    value: &str,
    write: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    proxy.swallow.store(true, Ordering::SeqCst);
    let pending = tokio::spawn(write);
    wait_counter(node, value).await;
    proxy.cut.notify_waiters();
    proxy.swallow.store(false, Ordering::SeqCst);
    pending.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_session_a_proposal_whose_connection_breaks_is_not_sent_again() {
    let (c, leader, proxy, client) = cluster_behind_proxy(false, false).await;
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    // A first write through the proxy opens the connection.
    assert_eq!(client.propose(incr.clone()).await.unwrap(), b"1");

    proxy.swallow.store(true, Ordering::SeqCst);
    let pending = {
        let incr = incr.clone();
        tokio::spawn(async move { client.propose(incr).await })
    };
    // The leader applies the second increment; its answer never arrives.
    let node = c.node(leader).clone();
    wait_counter(&node, "2").await;
    // Still swallowing while the connection is cut: the answer may leave
    // the leader after its apply became visible. (A resend would go out on
    // a new connection and show as a third increment below.)
    proxy.cut.notify_waiters();

    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown, "{err}");
    // Not sent again: still applied once. A read through the leader is
    // linearizable, so a resend that was in flight would show.
    assert_eq!(counter(&node).await.as_deref(), Some("2"));
    drop(proxy);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_whose_connection_breaks_after_delivery_is_retried_in_the_clients_session() {
    let (c, leader, proxy, client) = cluster_behind_proxy(false, true).await;
    let client = Arc::new(client);
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    // The first write opens the client's session.
    assert_eq!(client.propose(incr.clone()).await.unwrap(), b"1");

    let node = c.node(leader).clone();
    let write = {
        let (client, incr) = (client.clone(), incr.clone());
        async move { client.propose(incr).await }
    };
    // Sent again with the same number: the first application's answer.
    let answer = lose_the_answer(&proxy, &node, "2", write).await;
    assert_eq!(answer.unwrap(), b"2");
    assert_eq!(client.propose(incr).await.unwrap(), b"3");
    assert_eq!(
        counter(&node).await.as_deref(),
        Some("3"),
        "each applied once"
    );
    drop(proxy);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_connection_to_the_leader_breaks_is_retried_and_applied_once() {
    // Every node is reached through a proxy of its own: the addresses in
    // the membership are the proxies', so a follower's connection to the
    // leader goes through the leader's proxy.
    let grpc = GrpcConfig::default();
    let mut listeners = Vec::new();
    let mut proxies = std::collections::BTreeMap::new();
    for id in 1..=3u64 {
        let (l, real) = bind().await;
        proxies.insert(id, Proxy::start(real).await);
        listeners.push((id, l));
    }
    let members: std::collections::BTreeMap<u64, String> = proxies
        .iter()
        .map(|(id, p)| (*id, p.addr.clone()))
        .collect();
    let mut nodes = std::collections::BTreeMap::new();
    for (id, l) in listeners {
        let boot = raftify_core::Bootstrap::Members(members.clone());
        let node = start_node(id, l, &members[&id], boot, &grpc, no_tweak).await;
        nodes.insert(id, node);
    }
    let c = GCluster {
        nodes,
        grpc,
        tweak: no_tweak,
    };
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let incr = KvCmd::Incr { key: "n".into() };
    // The follower's first forwarded write opens its session.
    assert_eq!(c.node(follower).propose(&incr).await.unwrap(), b"1");

    let node = c.node(leader).clone();
    let write = {
        let (f, incr) = (c.node(follower).clone(), incr.clone());
        async move { f.propose(&incr).await }
    };
    // The forwarded batch is applied; its answer is lost with the
    // connection. The follower sends it again in its session.
    let answer = lose_the_answer(&proxies[&leader], &node, "2", write).await;
    assert_eq!(answer.unwrap(), b"2");
    assert_eq!(counter(&node).await.as_deref(), Some("2"), "applied once");
    c.shutdown().await;
    drop(proxies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_write_whose_connection_breaks_after_delivery_is_retried_and_applied_once() {
    let (c, leader, proxy, client) = cluster_behind_proxy(false, true).await;
    let session = client.session().await.unwrap();
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    assert_eq!(session.propose(incr.clone()).await.unwrap(), b"1");

    let node = c.node(leader).clone();
    let write = {
        let incr = incr.clone();
        async move { session.propose(incr).await }
    };
    // The connection breaks after the increment was applied; then answers
    // flow again. The session sends it again, with the same number.
    let answer = lose_the_answer(&proxy, &node, "2", write).await;
    assert_eq!(answer.unwrap(), b"2");
    assert_eq!(counter(&node).await.as_deref(), Some("2"), "applied once");
    drop(proxy);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_whose_connection_breaks_after_delivery_is_retried_and_applied_once() {
    // Through a follower: its peer service forwards the keyed write.
    let (c, leader, proxy, client) = cluster_behind_proxy(true, true).await;
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    assert_eq!(
        client.propose_with_key("a", incr.clone()).await.unwrap(),
        b"1"
    );

    let client = Arc::new(client);
    let node = c.node(leader).clone();
    let write = {
        let (client, incr) = (client.clone(), incr.clone());
        async move { client.propose_with_key("b", incr).await }
    };
    // The answer is lost with the connection; the client sends the same
    // key again and gets the first answer.
    let answer = lose_the_answer(&proxy, &node, "2", write).await;
    assert_eq!(answer.unwrap(), b"2");
    assert_eq!(
        client.propose_with_key("a", incr.clone()).await.unwrap(),
        b"1"
    );
    assert!(client.propose_with_key("", incr.clone()).await.is_err());
    assert_eq!(
        counter(&node).await.as_deref(),
        Some("2"),
        "applied once per key"
    );
    drop(proxy);
    c.shutdown().await;
}
