//! The status page every front-end serves (`GET /dashboard`, and `/`).
//!
//! One self-contained HTML file: no external assets, so it works offline
//! and behind firewalls. Its script polls the front-end's `status` (the
//! JSON of [`raftify_core::Status`]) and `metrics` (OpenMetrics text)
//! routes, relative to the page's own path, every second, and draws:
//! the members with role, address, match index and lag (a bar per
//! follower, on the leader), term, leader, commit/applied/snapshot
//! indexes, commit and apply rates and the proposals' p99 latency over the
//! last five minutes, and the node's recent events (leader changes,
//! snapshots: [`raftify_core::Status::events`]).
//!
//! The page itself holds no data and may be served without
//! authentication; the data it polls stays behind the front-end's token:
//! on a `401` the page asks for the token and sends it as
//! `Authorization: Bearer` (kept in the tab's `sessionStorage` only).

/// The page.
pub const HTML: &str = include_str!("dashboard.html");

/// Its content type.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";
