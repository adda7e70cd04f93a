//! Each service's tokens, checked on every call in constant time, and
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

/// The tokens a service accepts, as `Authorization: Bearer <token>`
/// header values: the current one and, during a rotation, the others
/// given with it ([`GrpcConfig::accept_tokens`](crate::GrpcConfig::accept_tokens)).
/// A presented value is hashed (SHA-256) and the digest compared with
/// every token's in constant time, with no early exit: the answer's timing
/// tells neither which token nor how much of one (nor its length) matched.
/// The gRPC services and the HTTP front-ends check tokens with this.
#[derive(Clone)]
pub struct BearerTokens {
    expected: Arc<[[u8; 32]]>,
}

impl BearerTokens {
    /// The check for `tokens`; `None` when there are none (no check).
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let expected: Vec<[u8; 32]> = tokens
            .into_iter()
            .map(|t| digest(format!("Bearer {t}").as_bytes()))
            .collect();
        (!expected.is_empty()).then(|| BearerTokens {
            expected: expected.into(),
        })
    }

    /// Whether `authorization` (the header's value, `None` when absent)
    /// presents one of the tokens.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(got) = authorization else {
            return false;
        };
        let got = digest(got);
        self.expected
            .iter()
            .fold(subtle::Choice::from(0), |ok, want| ok | got.ct_eq(want))
            .into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerTokens({} tokens)", self.expected.len())
    }
}

/// Checks a service's tokens on every RPC, in constant time.
#[derive(Clone)]
pub(crate) struct AuthCheck {
    expected: Option<BearerTokens>,
    /// Which credential (`peer`, `client`), for the log and the answer.
    which: &'static str,
    refusals: Arc<RefusalLog>,
    /// Counts the refusals (`raftify_auth_failures_total{server="grpc"}`).
    metrics: ServerMetrics,
}

impl AuthCheck {
    pub(crate) fn new(
        tokens: Vec<&str>,
        which: &'static str,
        refusals: &Arc<RefusalLog>,
        metrics: &ServerMetrics,
    ) -> Self {
        AuthCheck {
            expected: BearerTokens::new(tokens),
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
        let got = req.metadata().get("authorization").map(|v| v.as_bytes());
        if expected.accepts(got) {
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

#[cfg(test)]
mod tests {
    use super::BearerTokens;

    #[test]
    fn any_of_the_tokens_is_accepted_and_nothing_else() {
        assert!(BearerTokens::new([]).is_none());
        let t = BearerTokens::new(["new-secret", "old-secret"]).unwrap();
        assert!(t.accepts(Some(b"Bearer new-secret")));
        assert!(t.accepts(Some(b"Bearer old-secret")));
        for refused in [
            &b"Bearer other"[..],
            b"Bearer new-secre",
            b"Bearer new-secret ",
            b"bearer new-secret",
            b"new-secret",
            b"",
        ] {
            assert!(!t.accepts(Some(refused)), "{refused:?}");
        }
        assert!(!t.accepts(None));
        assert_eq!(format!("{t:?}"), "BearerTokens(2 tokens)");
    }
}
