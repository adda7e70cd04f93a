//! A real browser for status-page tests: headless Chromium loads a page,
//! runs its script against live nodes, and the test reads the DOM it
//! produced.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it). Tests call
//! [`find`]: without a browser it returns `None` (the test says it skipped
//! and checks nothing) unless `RAFTIFY_REQUIRE_BROWSER=1` (set by CI),
//! where a missing browser fails the test.

use std::process::Command;

/// The browser to run: `chromium`, `chromium-browser` or `google-chrome`,
/// the first that answers `--version`. Panics when none does and
/// `RAFTIFY_REQUIRE_BROWSER=1`.
pub fn find() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    assert!(
        found.is_some() || std::env::var("RAFTIFY_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "no chromium, and RAFTIFY_REQUIRE_BROWSER=1"
    );
    found
}

/// The DOM of `url` after its script ran for `virtual_ms` (virtual)
/// milliseconds, in a fresh profile.
pub fn dump_dom(browser: &str, url: &str, virtual_ms: u64) -> std::io::Result<String> {
    let profile = tempfile::tempdir()?;
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of attribute `name` on the page's `<body>` (the pages set
/// `data-*` attributes there for tests and scripts).
pub fn body_attr(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
    tag[at..].split('"').next().map(str::to_string)
}
