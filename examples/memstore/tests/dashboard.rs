//! The status page in a real browser: headless Chromium loads
//! `/dashboard` from a 3-node memstore cluster, runs its script against
//! the live nodes, and the test reads the DOM it produced.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it). Without it
//! the test says so and checks nothing, unless `RAFTIFY_REQUIRE_BROWSER=1`
//! (set by CI), where a missing browser fails it.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn browser() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The DOM after the page ran its script for two (virtual) seconds.
fn dump_dom(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().expect("a browser profile dir");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run the browser");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(leader shown, members shown, member rows)` of a dumped page.
fn shown(dom: &str) -> (Option<u64>, Option<usize>, usize) {
    let attr = |name: &str| -> Option<u64> {
        let at = dom.find(&format!("{name}=\""))? + name.len() + 2;
        dom[at..].split('"').next()?.parse().ok()
    };
    // Rows in the members table (the script's own text has the template).
    let rows = dom
        .split("<tbody id=\"members\">")
        .nth(1)
        .and_then(|t| t.split("</tbody>").next())
        .map_or(0, |t| t.matches("<tr data-member=").count());
    let members = attr("data-members").map(|n| n as usize);
    (attr("data-leader"), members, rows)
}

#[test]
fn the_status_page_shows_the_members_and_follows_a_new_leader() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var("RAFTIFY_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "no chromium, and RAFTIFY_REQUIRE_BROWSER=1"
        );
        eprintln!(
            "the_status_page_shows_the_members_and_follows_a_new_leader: no chromium; skipped"
        );
        return;
    };
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let watcher = c.follower_of(leader);
    let url = format!("http://{}/dashboard", c.node(watcher).http);

    let dom = dump_dom(browser, &url);
    assert_eq!(shown(&dom), (Some(leader), Some(3), 3), "{dom}");
    assert!(dom.contains("role-leader"), "{dom}");
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page reports an error: {dom}"
    );

    c.nodes.get_mut(&leader).expect("leader").kill();
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    let elected = Instant::now();
    loop {
        let dom = dump_dom(browser, &url);
        let (shown_leader, members, _) = shown(&dom);
        if shown_leader == Some(new_leader) {
            assert_eq!(members, Some(3), "{dom}");
            // The page lists the leader change among its events.
            assert!(dom.contains(&format!("node {new_leader} leads")), "{dom}");
            break;
        }
        assert!(
            elected.elapsed() < Duration::from_secs(5),
            "the page still shows leader {shown_leader:?}, not {new_leader}:\n{dom}"
        );
    }
}
