//! `cache-service` as StatefulSet pods on loopback: the HTTP contract,
//! quorum loss, a pod restarted with an empty volume, scaling 3 → 5 → 3,
//! and bad environments.

mod common;

use common::*;
use std::process::Command;
use std::time::Instant;

#[test]
fn three_pods_serve_the_http_contract() {
    let mut set = StatefulSet::start(3, false);
    set.wait_ready();
    let (a, b, c) = (&set.pods[0], &set.pods[1], &set.pods[2]);
    assert_eq!(a.put("/cache/default/k", b"v1").unwrap().status, 200);
    let got = b.get("/cache/default/k").unwrap();
    assert_eq!(
        (got.status, got.body.as_str(), got.stale),
        (200, "v1", false)
    );
    let local = wait_for("a local read on the third pod", T, || {
        c.get("/cache/default/k?consistency=local")
            .filter(|r| r.status == 200)
    });
    assert_eq!((local.body.as_str(), local.stale), ("v1", true));
    assert_eq!(c.get("/cache/default/missing").unwrap().status, 404);
    let del = http("DELETE", &b.url("/cache/default/k"), b"").unwrap();
    assert_eq!(
        (del.status, del.json()["deleted"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(a.get("/cache/default/k").unwrap().status, 404);
    let incr = |pod: &Pod, q: &str| {
        http("POST", &pod.url(&format!("/cache/default/n/incr{q}")), b"").unwrap()
    };
    assert_eq!(incr(a, "").json()["value"], 1);
    assert_eq!(incr(c, "?by=2").json()["value"], 3);
    assert_eq!(incr(b, "?by=x").status, 400);
    // sessions: a TTL; it ends on every pod.
    assert_eq!(a.put("/cache/sessions/s?ttl=1", b"x").unwrap().status, 200);
    assert_eq!(b.get("/cache/sessions/s").unwrap().status, 200);
    for p in [a, b, c] {
        wait_for("the session to expire", T, || {
            (p.get("/cache/sessions/s?consistency=local")?.status == 404).then_some(())
        });
    }
    // Bad input.
    assert_eq!(a.put("/cache/nope/k", b"v").unwrap().status, 404);
    assert_eq!(a.put("/cache/default/k?ttl=0", b"v").unwrap().status, 400);
    assert_eq!(a.put("/cache/default/k?ttl=abc", b"v").unwrap().status, 400);
    assert_eq!(
        a.get("/cache/default/k?consistency=eventual")
            .unwrap()
            .status,
        400
    );
    let big = vec![b'x'; 1024 * 1024 + 1];
    assert_eq!(a.put("/cache/default/big", &big).unwrap().status, 413);
    let long_key = format!("/cache/default/{}", "k".repeat(1025));
    assert_eq!(a.put(&long_key, b"v").unwrap().status, 400);
    // Health, readiness and metrics.
    let health = c.get("/health").unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["members"].as_array().map(Vec::len), Some(3));
    let metrics = a.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    for name in [
        "cache_responses_total",
        "cache_write_duration_seconds",
        "raftify_commit_index",
        "cache_entries",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} missing:\n{}",
            metrics.body
        );
    }
}

#[test]
fn losing_the_quorum_answers_503_within_two_election_timeouts() {
    let mut set = StatefulSet::start(3, false);
    set.wait_ready();
    assert_eq!(
        set.pods[0].put("/cache/default/k", b"v").unwrap().status,
        200
    );
    let lost = Instant::now();
    set.pods[1].kill();
    set.pods[2].kill();
    let survivor = &mut set.pods[0];
    let read = wait_for("a 503 to a linearizable read", T, || {
        let r = survivor.get("/cache/default/k")?;
        (r.status == 503).then_some(r)
    });
    let took = lost.elapsed();
    let bound = 2 * election_timeout();
    assert!(took <= bound, "503 after {took:?}, more than {bound:?}");
    assert!(read.json()["error"].as_str().is_some());
    let write = survivor.put("/cache/default/k", b"w").unwrap();
    assert_eq!(write.status, 503, "{}", write.body);
    let incr = http("POST", &survivor.url("/cache/default/n/incr"), b"").unwrap();
    assert_eq!(incr.status, 503);
    // Local reads still answer, marked stale; the process stays up.
    let local = survivor.get("/cache/default/k?consistency=local").unwrap();
    assert_eq!(
        (local.status, local.body.as_str(), local.stale),
        (200, "v", true)
    );
    assert_eq!(survivor.get("/health").unwrap().status, 200);
    assert_eq!(survivor.get("/ready").unwrap().status, 503);
    assert!(survivor.running());
    eprintln!(
        "503 after {took:?} (election timeout {:?})",
        election_timeout()
    );
}

#[test]
fn a_pod_restarted_with_an_empty_volume_rejoins_and_catches_up() {
    let mut set = StatefulSet::start(3, false);
    set.wait_ready();
    for i in 0..50 {
        let r = set.pods[0]
            .put(&format!("/cache/default/k{i}"), b"v")
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // In memory: a restart is an empty volume.
    set.pods[2].kill();
    set.pods[2].start();
    set.wait_ready();
    let p = &set.pods[2];
    for i in [0, 25, 49] {
        let r = p
            .get(&format!("/cache/default/k{i}?consistency=local"))
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "v"), "k{i}");
    }
    assert_eq!(p.members().len(), 3);
    // It is a voter again: with another pod gone, the cluster still writes.
    set.pods[1].kill();
    let r = wait_for("a write with pods 0 and 2", T, || {
        set.pods[0]
            .put("/cache/default/after", b"x")
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.status, 200);
    assert!(set
        .logs()
        .contains("rejoining the cluster with empty storage"));
}

#[test]
fn a_pod_whose_data_volume_was_lost_rejoins() {
    let mut set = StatefulSet::start(3, true);
    set.wait_ready();
    for i in 0..20 {
        assert_eq!(
            set.pods[1]
                .put(&format!("/cache/default/k{i}"), b"v")
                .unwrap()
                .status,
            200
        );
    }
    set.pods[0].kill();
    let dir = set.pods[0].data_dir.clone().expect("a data dir");
    std::fs::remove_dir_all(&dir).unwrap();
    set.pods[0].start();
    set.wait_ready();
    let r = set.pods[0]
        .get("/cache/default/k19?consistency=local")
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "v"));
    assert!(
        dir.join("data.mdb").is_file(),
        "LMDB again in {}",
        dir.display()
    );
    assert_eq!(set.pods[2].members().len(), 3);
}

#[test]
fn scaling_from_3_to_5_adds_voters_and_back_to_3_removes_them() {
    let mut set = StatefulSet::start(3, true);
    set.wait_ready();
    assert_eq!(
        set.pods[0].put("/cache/default/k", b"v").unwrap().status,
        200
    );
    set.scale_up(5);
    set.wait_ready();
    wait_for("five members", T, || {
        (set.pods[0].members().len() == 5).then_some(())
    });
    assert_eq!(set.pods[4].get("/cache/default/k").unwrap().body, "v");
    // Scale down: the two last pods go, the others restart (one at a
    // time, as a rolling update) with the shorter HA_HOSTS.
    set.pods[4].stop();
    set.pods[3].stop();
    set.pods.truncate(3);
    let hosts = set.hosts(3);
    for i in (0..3).rev() {
        set.pods[i].stop();
        set.pods[i].set_hosts(&hosts);
        set.pods[i].start();
        set.wait_ready();
    }
    wait_for("three members", T, || {
        (set.pods.iter().all(|p| p.members() == vec![1, 2, 3])).then_some(())
    });
    assert_eq!(set.pods[1].get("/cache/default/k").unwrap().body, "v");
    // Three voters: one pod down, the cluster still writes.
    set.pods[2].kill();
    let r = wait_for("a write with two of three", T, || {
        set.pods[0]
            .put("/cache/default/k2", b"x")
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.status, 200);
}

#[test]
fn a_paused_lock_holder_is_deposed_and_its_token_is_lower() {
    let mut set = StatefulSet::start(3, false);
    set.wait_ready();
    // A lease long enough that a renewal (due every third of it) survives a
    // loaded 2-core CI machine; the pause below outlasts it.
    let take = |p: &Pod| http("POST", &p.url("/lock/job?lease_ms=1500"), b"");
    let state = |p: &Pod| p.get("/lock/job").map(|a| a.json());
    let first = take(&set.pods[0]).unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    let t1 = first.json()["token"].as_u64().unwrap();
    assert_eq!(take(&set.pods[1]).unwrap().status, 409);
    // Renewed past its lease while the holder runs.
    std::thread::sleep(std::time::Duration::from_millis(2000));
    assert_eq!(take(&set.pods[1]).unwrap().status, 409);
    assert_eq!(state(&set.pods[0]).unwrap()["held"], true);
    // The holder pauses (a GC pause, a partition): no renewals, its node cut
    // off. Another pod gets the lock once the lease ran out on the
    // replicated clock, with a larger token.
    set.pods[0].signal(libc::SIGSTOP);
    let t2 = wait_for("another pod to take the lock", T, || {
        let r = take(&set.pods[1])?;
        (r.status == 200).then(|| r.json()["token"].as_u64())?
    });
    assert!(t2 > t1, "{t2} > {t1}");
    set.pods[0].signal(libc::SIGCONT);
    // Resumed, the old holder knows at once that it no longer holds it,
    // and at no moment do both believe they hold it.
    for _ in 0..25 {
        let a = state(&set.pods[0]).unwrap();
        let b = state(&set.pods[1]).unwrap();
        assert_eq!(a["held"], false, "the deposed holder: {a}");
        assert_eq!(
            (b["held"].clone(), b["token"].as_u64()),
            (serde_json::json!(true), Some(t2))
        );
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    let released = http("DELETE", &set.pods[1].url("/lock/job"), b"").unwrap();
    assert_eq!(released.json()["released"], true);
    let again = wait_for("the first pod to take it back", T, || {
        take(&set.pods[0]).filter(|r| r.status == 200)
    });
    assert!(again.json()["token"].as_u64().unwrap() > t2);
}

/// Runs the binary with `env` and returns its exit status and stderr.
fn run_with(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cache-service"))
        .env_clear()
        .current_dir(dir.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_environment_is_a_clear_error_naming_the_variable() {
    let hosts = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("HA_MODE", "maybe")],
            "HA_MODE: \"maybe\" is not a boolean",
        ),
        (&[("HA_MODE", "true")], "HA_HOSTS: required"),
        (
            &[
                ("HA_MODE", "true"),
                ("HA_HOSTS", hosts),
                ("HOSTNAME", "cache-7"),
            ],
            "HOSTNAME: \"cache-7\" is not one of the hosts",
        ),
        (
            &[
                ("HA_MODE", "true"),
                ("HA_HOSTS", "http://a:1,http://a:1"),
                ("HOSTNAME", "a"),
            ],
            "HA_HOSTS: a:1 is listed twice",
        ),
        (
            &[
                ("HA_MODE", "true"),
                ("HA_HOSTS", "a:1,b"),
                ("HOSTNAME", "a"),
            ],
            "HA_HOSTS: \"b\" has no port",
        ),
        (&[("CACHE_TLS", "true")], "CACHE_TLS_SERVER_CERT: required"),
        (&[("RAFTIFY_TICK_MS", "soon")], "RAFTIFY_TICK_MS: "),
    ];
    for (env, expected) in cases {
        let (status, stderr) = run_with(env);
        assert_eq!(status.code(), Some(1), "{env:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{env:?}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (status, stderr) = run_with(&[("LISTEN_ADDR", "nonsense")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
}
