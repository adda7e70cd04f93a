//! The loggers raftify uses when the caller gives none.

use slog::{o, Drain, Logger};
use std::sync::OnceLock;

/// The process-wide default logger: terminal output at info level.
///
/// raft-rs logs through `slog`; pass your own logger with
/// [`RaftBuilder::logger`] to route it elsewhere.
pub fn default_logger() -> Logger {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    LOGGER
        .get_or_init(|| stderr_logger(slog::Level::Info))
        .clone()
}

/// A logger that writes records at `level` and above to stderr, one line
/// each, through a bounded queue (records are dropped, and the drop is
/// reported, rather than blocking the node when stderr is slow).
pub fn stderr_logger(level: slog::Level) -> Logger {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!())
}

/// A logger that discards everything (tests, benchmarks).
pub fn discard_logger() -> Logger {
    Logger::root(slog::Discard, o!())
}
