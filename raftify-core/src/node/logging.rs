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
    stderr_logger_as(level, LogFormat::Text)
}

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per record.
    #[default]
    Text,
    /// One JSON object per line (`ts`, `level`, `msg` and every key-value
    /// of the record), for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// [`stderr_logger`] in the given format.
pub fn stderr_logger_as(level: slog::Level, format: LogFormat) -> Logger {
    let drain = match format {
        LogFormat::Text => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            queued(slog_term::FullFormat::new(decorator).build().ignore_res())
        }
        LogFormat::Json => queued(
            slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build()
                .ignore_res(),
        ),
    };
    Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!())
}

/// Behind a bounded queue: a slow stderr drops records (and says so)
/// instead of blocking the node. A failing stderr (a closed pipe, a full
/// disk) loses records, never stops the node: write errors are ignored,
/// not turned into a panic.
fn queued<D>(drain: D) -> slog::IgnoreResult<slog_async::Async>
where
    D: Drain<Err = slog::Never, Ok = ()> + Send + 'static,
{
    slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .ignore_res()
}

/// A logger that discards everything (tests, benchmarks).
pub fn discard_logger() -> Logger {
    Logger::root(slog::Discard, o!())
}
