//! # raftify-reliability
//!
//! raftify's reliability suite (not published). See `docs/RELIABILITY.md`.
//!
//! * [`sim`] — seeded simulation of 3–5 node clusters on the in-process
//!   network with a paused tokio clock: partitions, one-way cuts, drops,
//!   delays, crashes and restarts, OS crashes losing unsynced writes
//!   ([`LossyStore`]), leader transfers, membership churn, snapshots.
//! * [`shard_sim`] — its multi-group mode: a sharded cluster (the real
//!   placement, planner, step executor and slot mover; real cache groups)
//!   whose slots split, move and merge under crashes, isolation and drops.
//! * [`invariants`] — the properties checked during and after every run.
//! * [`history`] — client histories, checked for linearizability with
//!   `stateright`'s `LinearizabilityTester`.
//! * [`chaos`] — real `memstore` processes under HTTP load, SIGKILL,
//!   SIGSTOP/SIGCONT, restarts (and network-namespace partitions as root).
//! * [`browser`] — headless Chromium for status-page tests.
//! * [`netns`] — the network namespaces those partitions (and
//!   raftify-redis's partition test) run nodes in.
//!
//! Run one seed: `RAFTIFY_SEED=42 cargo test -p raftify-reliability --test
//! simulation -- --nocapture`.

pub mod browser;
pub mod chaos;
pub mod counter;
pub mod fuzz_peer;
pub mod fuzz_targets;
pub mod history;
pub mod invariants;
pub mod lossy_store;
pub mod netns;
pub mod process;
pub mod rng;
pub mod shard_sim;
pub mod sim;
pub mod sm;

pub use lossy_store::LossyStore;
