//! `raftify-cli`: inspect raftify nodes.
//!
//! Exit codes: 0 success, 1 the operation failed (unreachable node, refused
//! request), 2 bad usage, 3 the data directory is missing or not a raftify
//! store.

mod bench;
mod decode;
mod live;
mod persisted;
mod probe;
mod shards;
mod top;

use clap::{Parser, Subcommand};
use raftify_core::MembershipChange;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "raftify-cli",
    version,
    about = "Inspect and administer raftify nodes",
    long_about = "Inspect and administer raftify nodes.\n\nEvery RAFT_ADDR is a node's raft (gRPC) address, e.g. 127.0.0.1:60061 — not memstore's HTTP port. Administration goes through the node's client service: pass the cluster's client token with --auth-token."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: live::ConnArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Debugging views of a node.
    Debug {
        #[command(subcommand)]
        what: Debug,
    },
    /// The members of the cluster a node belongs to.
    Members {
        /// Raft address of any member.
        raft_addr: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// A sharded cluster: its nodes, its groups with their slot ranges,
    /// leaders and replicas (with how far each lags), the move in progress.
    Shards {
        /// Raft address of any sharded node.
        raft_addr: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Ask a sharded cluster to rebalance (through any node; the metadata
    /// group's leader carries it out), or with --status say where one
    /// stands (`done ...` when nothing is to move).
    Rebalance {
        /// Raft address of any sharded node.
        raft_addr: String,
        /// Only say where a rebalance stands.
        #[arg(long)]
        status: bool,
    },
    /// The current leader.
    Leader {
        /// Raft address of any member.
        raft_addr: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Hand leadership to another voter and wait until it leads.
    TransferLeader {
        /// Raft address of any member.
        raft_addr: String,
        /// The node to lead.
        id: u64,
    },
    /// Add a learner (a node that receives the log without voting).
    AddLearner {
        /// Raft address of any member.
        raft_addr: String,
        /// The new node's id.
        id: u64,
        /// The new node's raft address.
        node_addr: String,
    },
    /// Add a voter (or promote a learner, given its address).
    AddVoter {
        /// Raft address of any member.
        raft_addr: String,
        /// The node's id.
        id: u64,
        /// The node's raft address.
        node_addr: String,
    },
    /// Promote a learner to voter (keeping its known address).
    Promote {
        /// Raft address of any member.
        raft_addr: String,
        /// The learner's id.
        id: u64,
    },
    /// Remove a voter or learner from the cluster.
    Remove {
        /// Raft address of any member.
        raft_addr: String,
        /// The node to remove.
        id: u64,
    },
    /// Make the node at RAFT_ADDR leave its cluster (it hands leadership
    /// over first when it leads).
    Leave {
        /// Raft address of the node that leaves.
        raft_addr: String,
    },
    /// Take a snapshot on a node now (and compact its log); with --save,
    /// also download it, for a backup.
    Snapshot {
        /// Raft address of the node.
        raft_addr: String,
        /// Save the snapshot to this file, in raftify's snapshot-file
        /// format (what `--restore-snapshot-from` starts a node or a whole
        /// cluster from). Written whole or not at all; the transfer may
        /// take up to the longer of --timeout and 300 seconds.
        #[arg(long, value_name = "FILE")]
        save: Option<std::path::PathBuf>,
        /// On a sharded node, the group whose replica to snapshot (default:
        /// the node's own group; a sharded node's metadata group is 0).
        #[arg(long)]
        group: Option<u64>,
    },
    /// Load-test a memstore cluster: throughput and latency percentiles.
    Bench(bench::BenchArgs),
    /// A live view of the cluster (members, roles, match index and lag,
    /// commit and apply rates), refreshed every second; Ctrl-C stops it.
    Top {
        /// Raft address of any member.
        raft_addr: String,
        /// Refresh period, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many frames (default: run until stopped).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Print the leader, then a line (UTC time, term, leader) at every
    /// change of leader or term, as they happen; Ctrl-C stops it.
    Watch {
        /// Raft address of any member.
        raft_addr: String,
        /// Stop after this many changes (default: run until stopped).
        #[arg(long)]
        changes: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Debug {
    /// Hard state, conf state, snapshot and log entries of a data directory
    /// (read-only; the node may be running).
    Persisted {
        /// The node's data directory (with --group: a sharded node's
        /// `DATA_DIR/groups`).
        dir: PathBuf,
        /// The group to show, in a shared environment of groups (a sharded
        /// node's groups are in `DATA_DIR/groups`, its metadata group is
        /// group 0).
        #[arg(long)]
        group: Option<u64>,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// First log index to list.
        #[arg(long)]
        from: Option<u64>,
        /// Last log index to list.
        #[arg(long)]
        to: Option<u64>,
        /// Decode user entries: memstore's commands (keys, values), or the
        /// bytes as utf8, hex or json.
        #[arg(long, value_enum)]
        decode: Option<decode::Format>,
        /// Decode user entries with a program of yours: run through `sh -c`
        /// once per entry with its bytes on stdin; the first line it prints
        /// is shown (e.g. 'protoc --decode_raw').
        #[arg(long, value_name = "PROGRAM", conflicts_with = "decode")]
        decode_cmd: Option<String>,
    },
    /// Live status of a running node.
    Node {
        /// The node's raft address.
        raft_addr: String,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let conn = cli.conn;
    let live = |f: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build();
        match rt {
            Ok(rt) => rt.block_on(f).map_err(|e| (1u8, e)),
            Err(e) => Err((1u8, anyhow::anyhow!("cannot start the runtime: {e}"))),
        }
    };
    let result = match cli.command {
        Command::Debug {
            what:
                Debug::Persisted {
                    dir,
                    group,
                    json,
                    from,
                    to,
                    decode,
                    decode_cmd,
                },
        } => {
            if !dir.exists() {
                eprintln!("error: {} does not exist", dir.display());
                return ExitCode::from(3);
            }
            let decoder = match (decode, decode_cmd) {
                (Some(format), _) => Some(decode::builtin(format)),
                (None, Some(program)) => Some(Box::new(decode::Program(program)) as _),
                (None, None) => None,
            };
            persisted::run(&dir, group, json, from, to, decoder.as_deref()).map_err(|e| (3u8, e))
        }
        Command::Debug {
            what: Debug::Node { raft_addr, json },
        } => live(Box::pin(async move {
            live::node(&raft_addr, &conn, json).await
        })),
        Command::Members { raft_addr, json } => live(Box::pin(async move {
            live::members(&raft_addr, &conn, json).await
        })),
        Command::Shards { raft_addr, json } => live(Box::pin(async move {
            shards::shards(&raft_addr, &conn, json).await
        })),
        Command::Rebalance { raft_addr, status } => live(Box::pin(async move {
            shards::rebalance(&raft_addr, &conn, status).await
        })),
        Command::Leader { raft_addr, json } => live(Box::pin(async move {
            live::leader(&raft_addr, &conn, json).await
        })),
        Command::TransferLeader { raft_addr, id } => live(Box::pin(async move {
            live::transfer_leader(&raft_addr, id, &conn).await
        })),
        Command::AddLearner {
            raft_addr,
            id,
            node_addr,
        } => live(Box::pin(async move {
            let change = MembershipChange::AddLearner {
                id,
                addr: node_addr,
            };
            live::change(&raft_addr, vec![change], &conn).await
        })),
        Command::AddVoter {
            raft_addr,
            id,
            node_addr,
        } => live(Box::pin(async move {
            let change = MembershipChange::AddVoter {
                id,
                addr: node_addr,
            };
            live::change(&raft_addr, vec![change], &conn).await
        })),
        Command::Promote { raft_addr, id } => live(Box::pin(async move {
            live::promote(&raft_addr, id, &conn).await
        })),
        Command::Remove { raft_addr, id } => live(Box::pin(async move {
            let change = MembershipChange::Remove { id };
            live::change(&raft_addr, vec![change], &conn).await
        })),
        Command::Leave { raft_addr } => {
            live(Box::pin(
                async move { live::leave(&raft_addr, &conn).await },
            ))
        }
        Command::Snapshot {
            raft_addr,
            save,
            group,
        } => live(Box::pin(async move {
            live::snapshot(&raft_addr, group, save.as_deref(), &conn).await
        })),
        Command::Top {
            raft_addr,
            interval_ms,
            iterations,
        } => live(Box::pin(async move {
            let every = std::time::Duration::from_millis(interval_ms.max(100));
            top::top(&raft_addr, &conn, every, iterations).await
        })),
        Command::Watch { raft_addr, changes } => live(Box::pin(async move {
            top::watch(&raft_addr, &conn, changes).await
        })),
        Command::Bench(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(bench::run(args, conn)).map_err(|e| (1u8, e)),
                Err(e) => Err((1u8, anyhow::anyhow!("cannot start the runtime: {e}"))),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
