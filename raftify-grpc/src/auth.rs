//! Each service's token, checked on every call in constant time, and
//! refusals logged without letting a flood of bad calls flood the log.

use raftify_core::metrics::ServerMetrics;
use slog::{warn, Logger};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// At most one refusal line per remote address this often.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Remote addresses remembered for that; beyond, the oldest are forgotten.
const MAX_TRACKED: usize = 4096;

/// Refusals, logged at most once per remote address per [`LOG_EVERY`]
/// (with the number held back since the last line).
pub(crate) struct RefusalLog {
    logger: Logger,
    last: Mutex<HashMap<Option<IpAddr>, (Instant, u64)>>,
}

impl RefusalLog {
    pub(crate) fn new(logger: Logger) -> Self {
        RefusalLog {
            logger,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Logs that a call on the `which` service was refused for `reason`.
    pub(crate) fn refused(
        &self,
        reason: &'static str,
        which: &'static str,
        remote: Option<std::net::SocketAddr>,
    ) {
        let ip = remote.map(|r| r.ip());
        let now = Instant::now();
        let held_back = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.len() >= MAX_TRACKED && !last.contains_key(&ip) {
                last.retain(|_, (at, _)| now.duration_since(*at) < LOG_EVERY);
            }
            let entry = last.entry(ip).or_insert((now - LOG_EVERY * 2, 0));
            if now.duration_since(entry.0) < LOG_EVERY {
                entry.1 += 1;
                return;
            }
            let held_back = entry.1;
            *entry = (now, 0);
            held_back
        };
        warn!(self.logger, "{}", reason;
            "service" => which, "remote" => ?remote, "more_since_last_line" => held_back);
    }
}

/// Checks a service's token on every RPC, in constant time.
#[derive(Clone)]
pub(crate) struct AuthCheck {
    expected: Option<Arc<Vec<u8>>>,
    /// Which credential (`peer`, `client`), for the log and the answer.
    which: &'static str,
    refusals: Arc<RefusalLog>,
    /// Counts the refusals (`raftify_auth_failures_total{server="grpc"}`).
    metrics: ServerMetrics,
}

impl AuthCheck {
    pub(crate) fn new(
        token: Option<&str>,
        which: &'static str,
        refusals: &Arc<RefusalLog>,
        metrics: &ServerMetrics,
    ) -> Self {
        AuthCheck {
            expected: token.map(|t| Arc::new(format!("Bearer {t}").into_bytes())),
            which,
            refusals: refusals.clone(),
            metrics: metrics.clone(),
        }
    }
}

impl Interceptor for AuthCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let ok = match req.metadata().get("authorization") {
            Some(got) => bool::from(got.as_bytes().ct_eq(expected.as_slice())),
            None => false,
        };
        if ok {
            return Ok(req);
        }
        let reason = "rejected an RPC with a missing or wrong token";
        self.metrics.auth_failed();
        self.refusals.refused(reason, self.which, req.remote_addr());
        Err(Status::unauthenticated(format!(
            "missing or invalid auth token for the {} service",
            self.which
        )))
    }
}
