//! The status page of a sharded cluster (served by raftify-redis
//! `--sharded --http-port` at `GET /` and `/dashboard`).
//!
//! One self-contained HTML file, no external assets. Its script polls the
//! front-end's `cluster` route ([`crate::ClusterReport`] as JSON),
//! relative to the page's own path, every second, and draws: the nodes
//! (up, down or leaving; slots led), the groups with their slot ranges
//! (drawn over the slot space), leader, size, and each replica's lag (a
//! bar) and sleep; the move in progress and the rebalancer's status, with
//! a button that starts a rebalance (`POST rebalance`).
//!
//! The page itself holds no data and may be served without
//! authentication; what it polls stays behind the front-end's password:
//! on a `401` the page asks for it and sends it as `Authorization:
//! Bearer` (kept in the tab's `sessionStorage` only).

/// The page.
pub const HTML: &str = include_str!("shards.html");

/// Its content type.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";
