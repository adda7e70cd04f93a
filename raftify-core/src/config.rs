//! Node configuration, with documented defaults and validation.

use crate::error::{Error, Result};
use std::time::Duration;

/// The longest timeout [`Config::validate`] accepts (a year): a longer one
/// is a mistake (deadlines themselves never overflow: they are taken with
/// [`crate::retry::deadline_after`]).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest tick [`Config::validate`] accepts (a minute), and the most
/// ticks an election may take: election timeouts (`tick_interval ×
/// election_tick`, doubled where a node waits for a leader) stay far from
/// overflowing a `Duration`.
pub const MAX_TICK: Duration = Duration::from_secs(60);
/// See [`MAX_TICK`].
pub const MAX_ELECTION_TICK: usize = 1_000_000_000;

/// How linearizable reads are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// ReadIndex confirmed by a heartbeat round to a quorum (the default; safe
    /// under clock drift).
    #[default]
    Safe,
    /// The leader serves reads within its lease without a quorum round.
    /// Faster, but relies on bounded clock drift; requires `check_quorum`.
    LeaseBased,
}

/// Configuration of a raftify node.
///
/// ```
/// use raftify_core::Config;
/// let mut config = Config::new(1);
/// config.snapshot_threshold = 10_000;
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id; non-zero and unique in the cluster.
    pub id: u64,
    /// Name of the cluster; a node refuses to join or reopen storage of
    /// another cluster. Default `"raftify"`.
    pub cluster_id: String,
    /// Time between two raft ticks. Default 100 ms.
    pub tick_interval: Duration,
    /// Ticks without a heartbeat before a follower starts an election
    /// (randomized in `[election_tick, 2 * election_tick)`). Default 10.
    pub election_tick: usize,
    /// Ticks between heartbeats; must be < `election_tick`. Default 2.
    pub heartbeat_tick: usize,
    /// Pre-vote phase before elections (avoids term inflation by partitioned
    /// nodes). Default on.
    pub pre_vote: bool,
    /// The leader steps down when it cannot reach a quorum within an election
    /// timeout. Default on.
    pub check_quorum: bool,
    /// Max in-flight append messages per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Max bytes of entries in one append message. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Max bytes of committed entries handed to `apply` per Ready. Default 16 MiB.
    pub max_committed_size_per_ready: u64,
    /// Take a snapshot after this many applied entries; 0 disables the policy
    /// (on-demand snapshots still work). Default 100 000, as etcd's
    /// `--snapshot-count`: at tens of thousands of writes per second a
    /// smaller value snapshots several times a second on every node, which
    /// costs CPU and tail latency even off the loop (docs/BENCHMARKS.md).
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot when compacting, so slightly lagging
    /// followers catch up from the log rather than by snapshot. Default 1 000.
    pub snapshot_log_retention: u64,
    /// Default timeout of `propose`. Default 10 s.
    pub proposal_timeout: Duration,
    /// How long a client session may stay idle before it expires, by the
    /// leader's clock (exactly-once writes; see [`crate::sessions`]). The
    /// leader that opens a session puts this into the log, so every node
    /// expires it at the same entry. Default 1 h.
    pub session_idle_timeout: Duration,
    /// How long the answer of a write with an idempotency key is
    /// remembered, by the leader's clock: a repeat of the key within this
    /// time returns the first answer and changes nothing. The leader puts it
    /// into each keyed entry, so every node forgets a key at the same entry.
    /// Default 24 h (the HTTP `Idempotency-Key` convention: long enough for
    /// any client's retries, and every remembered answer is kept in memory
    /// and in snapshots, so not forever).
    pub idempotency_key_ttl: Duration,
    /// Whether a follower forwards proposals to the leader as writes in its
    /// own client session (opened on the first one). Then a forwarded
    /// proposal whose outcome is unknown (the connection broke after it
    /// left, the leader changed) is sent again and still applied once;
    /// off, it is sent once and fails as
    /// [`ErrorClass::OutcomeUnknown`](crate::ErrorClass). Costs each
    /// forwarded entry 33 bytes and an entry in the session table. Default
    /// on.
    pub forward_in_session: bool,
    /// Timeout of membership changes and leadership transfers. Default 20 s.
    pub conf_change_timeout: Duration,
    /// Timeout of linearizable reads. Default 5 s.
    pub read_timeout: Duration,
    /// How linearizable reads are confirmed. Default [`ReadMode::Safe`].
    pub read_mode: ReadMode,
    /// A storage write (or sync) that takes longer than this stops the node
    /// with [`Error::Fatal`] (a hung disk must not hang every caller): a
    /// writer thread's call is watched by the loop's ticks, so the node
    /// stops within this plus a tick. Default 60 s.
    pub storage_timeout: Duration,
    /// Seed for the randomized election timeouts. `None` (the default):
    /// raft-rs's random choice. `Some(seed)`: a seeded sequence per node, so
    /// a simulation on tokio's paused clock replays exactly.
    pub election_seed: Option<u64>,
    /// Max proposals waiting to enter the log; further ones fail fast with
    /// [`Error::Overloaded`]. Default 65 536.
    pub max_pending_proposals: usize,
    /// Largest encoded entry a proposal may carry, checked on every node a
    /// proposal passes (before it is forwarded, and before it enters the
    /// log) for every front-end. It must fit in what the transport carries
    /// (gRPC: `GrpcConfig::max_message_size`, 64 MiB by default, with room
    /// for the message around it). Default 8 MiB.
    pub max_entry_size: usize,
    /// Pipelined persistence: a writer (a thread of its own when the
    /// store's appends block, else a task) makes Readys durable while the
    /// loop goes on stepping messages, sending and applying; every Ready
    /// queued behind an in-flight commit joins the next one (one fsync for
    /// all of them). Messages that must follow persistence (a follower's
    /// append acknowledgements, votes) still wait for it, and only durable
    /// entries are applied, so the guarantees are those of the synchronous
    /// path. `None` (the default): on for stores whose writes block on I/O
    /// ([`crate::storage::LogStore::blocking_writes`]), off for in-memory
    /// ones, where one more task hop costs more than it saves.
    pub pipeline_writes: Option<bool>,
    /// Idle groups sleep: a leader whose followers hold its whole log and
    /// that has had nothing to do for `election_tick` ticks tells them so
    /// and stops ticking and heartbeating; they stop their election
    /// clocks. Any proposal, read, command or raft message wakes the
    /// replica; a sleeping follower also wakes when the transport reports
    /// its leader's process down ([`crate::PeerLiveness`]), and then
    /// elects as usual. For processes that host many groups (sharding),
    /// where heartbeats of idle groups would otherwise cost a core. Needs
    /// a transport with [`Transport::liveness`](crate::Transport::liveness)
    /// (without one this setting does nothing), the same setting on every
    /// member, and [`ReadMode::Safe`] (a sleeping leader does not notice
    /// it was deposed, so it must not serve lease reads). Default off.
    pub hibernate: bool,
}

impl Config {
    /// Defaults for node `id`.
    pub fn new(id: u64) -> Self {
        Config {
            id,
            cluster_id: "raftify".to_string(),
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_size_per_msg: 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            snapshot_threshold: 100_000,
            snapshot_log_retention: 1_000,
            proposal_timeout: Duration::from_secs(10),
            session_idle_timeout: Duration::from_secs(3600),
            idempotency_key_ttl: Duration::from_secs(24 * 3600),
            forward_in_session: true,
            conf_change_timeout: Duration::from_secs(20),
            pipeline_writes: None,
            read_timeout: Duration::from_secs(5),
            read_mode: ReadMode::Safe,
            storage_timeout: Duration::from_secs(60),
            election_seed: None,
            max_pending_proposals: 65_536,
            max_entry_size: 8 * 1024 * 1024,
            hibernate: false,
        }
    }

    /// The election timeout's lower bound (`election_tick * tick_interval`).
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval * self.election_tick as u32
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.id == 0 {
            return bad("id must be non-zero".into());
        }
        if self.cluster_id.is_empty() {
            return bad("cluster_id must not be empty".into());
        }
        if self.tick_interval.is_zero() || self.tick_interval > MAX_TICK {
            return bad(format!(
                "tick_interval must be positive and at most {MAX_TICK:?}"
            ));
        }
        if self.election_tick > MAX_ELECTION_TICK {
            return bad(format!("election_tick must be at most {MAX_ELECTION_TICK}"));
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat_tick must be positive".into());
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({})",
                self.election_tick, self.heartbeat_tick
            ));
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs must be positive".into());
        }
        if self.max_size_per_msg == 0 {
            return bad("max_size_per_msg must be positive (0 sends one entry per message)".into());
        }
        if self.max_committed_size_per_ready == 0 {
            return bad("max_committed_size_per_ready must be positive".into());
        }
        if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            return bad("read_mode LeaseBased requires check_quorum".into());
        }
        if self.read_mode == ReadMode::LeaseBased && self.hibernate {
            return bad(
                "hibernate requires read_mode Safe (a sleeping leader cannot hold a lease)".into(),
            );
        }
        for (name, d) in [
            ("proposal_timeout", self.proposal_timeout),
            ("conf_change_timeout", self.conf_change_timeout),
            ("read_timeout", self.read_timeout),
            ("storage_timeout", self.storage_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be positive"));
            }
            if d > MAX_TIMEOUT {
                return bad(format!("{name} must be at most {MAX_TIMEOUT:?} (a year)"));
            }
        }
        if self.max_entry_size == 0 {
            return bad("max_entry_size must be positive".into());
        }
        if self.max_pending_proposals == 0 {
            return bad("max_pending_proposals must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn to_raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            read_only_option: match self.read_mode {
                ReadMode::Safe => raft::ReadOnlyOption::Safe,
                ReadMode::LeaseBased => raft::ReadOnlyOption::LeaseBased,
            },
            max_committed_size_per_ready: self.max_committed_size_per_ready,
            // raft-rs's batch_append can merge entries into an empty append
            // whose index no longer precedes them (a misindexed message that
            // panics the follower). raftify
            // batches proposals itself instead (one MsgPropose per wake-up).
            batch_append: false,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let c = Config::new(1);
        c.validate().unwrap();
        assert!(c.pre_vote && c.check_quorum);
        assert!(c.snapshot_threshold > 0, "snapshots on by default");
        c.to_raft_config(0).validate().unwrap();
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let mut c = Config::new(0);
        assert!(c.validate().unwrap_err().to_string().contains("id"));
        c = Config::new(1);
        c.election_tick = 2;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("election_tick"));
        c = Config::new(1);
        c.check_quorum = false;
        c.read_mode = ReadMode::LeaseBased;
        assert!(c.validate().unwrap_err().to_string().contains("LeaseBased"));
        c = Config::new(1);
        c.hibernate = true;
        c.validate().unwrap();
        c.read_mode = ReadMode::LeaseBased;
        assert!(c.validate().unwrap_err().to_string().contains("hibernate"));
        c = Config::new(1);
        c.max_size_per_msg = 0;
        assert!(c.validate().is_err());
        // A timeout whose deadline would overflow `Instant`.
        c = Config::new(1);
        c.conf_change_timeout = Duration::from_secs(u64::MAX / 4);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("conf_change_timeout"), "{e}");
        c.conf_change_timeout = MAX_TIMEOUT;
        c.validate().unwrap();
        // Ticks whose election timeout would overflow a `Duration`.
        c = Config::new(1);
        c.tick_interval = Duration::from_millis(u64::MAX);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tick_interval"), "{e}");
        c = Config::new(1);
        c.election_tick = usize::MAX;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("election_tick"), "{e}");
        c.election_tick = MAX_ELECTION_TICK;
        c.tick_interval = MAX_TICK;
        c.validate().unwrap();
        assert!(c.election_timeout().checked_mul(2).is_some());
    }
}
