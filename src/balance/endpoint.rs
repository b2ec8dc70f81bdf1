//! One address of a service: its pool, its requests in flight, and whether it is in rotation.
//!
//! Three judgements take an endpoint out, each with its own way back:
//! - TLS verification failed (a data connection's handshake or a probe's): out until a handshake
//!   verifies again, so a backend with the wrong certificate never gets a request;
//! - passive: `fails` connect errors, TLS failures or timeouts within `fail_timeout` eject it for
//!   `fail_timeout`;
//! - active (`[route.health]`): `fall` failed checks in a row take it out, `rise` passes bring it
//!   back.
//!
//! Everything the request path touches is an atomic; the reason an endpoint is out sits behind a
//! mutex that only state changes and the status page take. Each change into or out of rotation is
//! logged once, with its reason, and mirrored in `trustgate_upstream_endpoint_up`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metrics::{EndpointMetrics, UpstreamStats};
use crate::upstream::Pool;

/// What went wrong with one attempt at an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect refused, unreachable or reset before the handshake ended.
    Connect,
    /// The TLS handshake failed: the certificate did not verify, or the upstream refused ours.
    Tls,
    /// Connect plus handshake, or the response head, took too long.
    Timeout,
    /// The upstream closed the connection before any response byte.
    Closed,
}

impl Failure {
    /// The `reason` label of `trustgate_upstream_retries_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
        }
    }
}

/// Names for log lines: the route and the service an endpoint belongs to.
#[derive(Debug)]
pub struct Names {
    pub route: Arc<str>,
    /// `host:port` of the upstream URL.
    pub service: String,
}

/// One address of a route's service.
pub struct Endpoint {
    pub address: SocketAddr,
    pub pool: Arc<Pool>,
    names: Arc<Names>,
    pending: AtomicUsize,
    /// Out until a handshake verifies again.
    untrusted: AtomicBool,
    /// Passive: failures counted in the window that began at `window_start` (ms, [`now_ms`]).
    failures: AtomicU32,
    window_start: AtomicU64,
    /// Passive: out of rotation until this time (ms; 0: not ejected).
    ejected_until: AtomicU64,
    /// Active: out until `rise` checks pass in a row.
    check_down: AtomicBool,
    passes: AtomicU32,
    fails_in_a_row: AtomicU32,
    /// Whether the last state logged and published was "in rotation".
    shown_up: AtomicBool,
    /// Why the endpoint is out of rotation, for the status page and log lines.
    why: Mutex<Option<String>>,
    metrics: EndpointMetrics,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({} {})", self.names.service, self.address)
    }
}

/// What `/trust` shows of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub address: SocketAddr,
    pub up: bool,
    pub why: Option<String>,
    pub pending: usize,
    pub stats: Arc<UpstreamStats>,
}

/// Milliseconds on a process-wide monotonic clock, never 0.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Endpoint {
    /// A new endpoint, in rotation.
    pub fn new(
        address: SocketAddr,
        pool: Arc<Pool>,
        names: Arc<Names>,
        metrics: EndpointMetrics,
    ) -> Self {
        metrics.up.set(1);
        Self {
            address,
            pool,
            names,
            pending: AtomicUsize::new(0),
            untrusted: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            check_down: AtomicBool::new(false),
            passes: AtomicU32::new(0),
            fails_in_a_row: AtomicU32::new(0),
            shown_up: AtomicBool::new(true),
            why: Mutex::new(None),
            metrics,
        }
    }

    /// In rotation at `now` (ms).
    pub fn usable(&self, now: u64) -> bool {
        !self.untrusted.load(Relaxed)
            && !self.check_down.load(Relaxed)
            && self.ejected_until.load(Relaxed) <= now
    }

    /// Not known to fail TLS verification: may be tried when nothing is in rotation.
    pub fn trusted(&self) -> bool {
        !self.untrusted.load(Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// A request goes to this endpoint; it counts as in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Relaxed);
        self.metrics.requests.inc();
        InFlight(self.clone())
    }

    /// An upstream response head arrived: the endpoint verified and answered.
    pub fn answered(&self) {
        if self.untrusted.load(Relaxed) {
            self.verified();
        }
    }

    /// An attempt failed with `failure` (`reason` in words). `ejectable`: the route has other
    /// endpoints (a lone endpoint is never ejected, as nginx has it).
    pub fn failed(
        &self,
        failure: Failure,
        reason: &dyn fmt::Display,
        fails: u32,
        fail_timeout: Duration,
        ejectable: bool,
    ) {
        let now = now_ms();
        if failure == Failure::Tls && !self.untrusted.swap(true, Relaxed) {
            self.metrics.ejected("tls");
            self.set_why(format!("TLS: {reason}"));
        }
        if ejectable && fails > 0 {
            let window = fail_timeout.as_millis() as u64;
            let start = self.window_start.load(Relaxed);
            let count = if now.saturating_sub(start) > window {
                self.window_start.store(now, Relaxed);
                self.failures.store(1, Relaxed);
                1
            } else {
                self.failures.fetch_add(1, Relaxed) + 1
            };
            if count >= fails && self.ejected_until.load(Relaxed) <= now {
                self.failures.store(0, Relaxed);
                self.ejected_until.store(now + window, Relaxed);
                self.metrics.ejected("fails");
                if self.trusted() {
                    self.set_why(format!(
                        "{count} failures within {} (passive), the last: {reason}; ejected for {}",
                        humantime::format_duration(fail_timeout),
                        humantime::format_duration(fail_timeout),
                    ));
                }
            }
        }
        self.refresh(now);
    }

    /// A handshake with this endpoint verified: it may serve again.
    pub fn verified(&self) {
        if self.untrusted.swap(false, Relaxed) {
            self.refresh(now_ms());
        }
    }

    /// An active check passed; `rise` in a row bring the endpoint back.
    pub fn check_passed(&self, rise: u32) {
        self.metrics.checked("ok");
        self.fails_in_a_row.store(0, Relaxed);
        let passes = self.passes.fetch_add(1, Relaxed) + 1;
        if passes >= rise && self.check_down.swap(false, Relaxed) {
            self.refresh(now_ms());
        }
    }

    /// An active check failed with `result` (a [`crate::metrics::CHECK_RESULTS`] label); `fall`
    /// in a row take the endpoint out. A TLS failure takes it out at once.
    pub fn check_failed(&self, result: &'static str, reason: &dyn fmt::Display, fall: u32) {
        self.metrics.checked(result);
        self.passes.store(0, Relaxed);
        if result == "tls" {
            if !self.untrusted.swap(true, Relaxed) {
                self.metrics.ejected("tls");
                self.set_why(format!("TLS: {reason}"));
            }
        } else {
            let fails = self.fails_in_a_row.fetch_add(1, Relaxed) + 1;
            if fails >= fall && !self.check_down.swap(true, Relaxed) {
                self.metrics.ejected("health_check");
                if self.trusted() {
                    self.set_why(format!(
                        "{fails} health checks failed in a row, the last: {reason}"
                    ));
                }
            }
        }
        self.refresh(now_ms());
    }

    /// A re-verification handshake of an endpoint out for TLS failed again, with `result` (a
    /// [`crate::metrics::CHECK_RESULTS`] label).
    pub fn still_untrusted(&self, result: &'static str, reason: &dyn fmt::Display) {
        self.metrics.checked(result);
        self.set_why(if result == "tls" {
            format!("TLS: {reason}")
        } else {
            format!("TLS failed before; now: {reason}")
        });
    }

    /// A re-verification handshake verified.
    pub fn reverified(&self) {
        self.metrics.checked("ok");
        self.verified();
    }

    /// Logs and publishes a change into or out of rotation, once. Called after every judgement,
    /// and by the health loop so an ejection that ran out is seen.
    pub fn refresh(&self, now: u64) {
        let up = self.usable(now);
        if self.shown_up.swap(up, Relaxed) == up {
            return;
        }
        self.metrics.up.set(i64::from(up));
        if up {
            self.why.lock().unwrap_or_else(|e| e.into_inner()).take();
            info!(route = %self.names.route, service = %self.names.service,
                endpoint = %self.address, "upstream endpoint up");
        } else {
            let why = self.why().unwrap_or_default();
            warn!(route = %self.names.route, service = %self.names.service,
                endpoint = %self.address, reason = %why, "upstream endpoint down");
        }
    }

    fn set_why(&self, why: String) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn why(&self) -> Option<String> {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> EndpointStatus {
        let up = self.usable(now_ms());
        EndpointStatus {
            address: self.address,
            up,
            why: if up { None } else { self.why() },
            pending: self.pending(),
            stats: self.pool.metrics().stats.clone(),
        }
    }
}

/// A request in flight at an endpoint: held by the response body or the tunnel, so the count
/// falls when the body ends or the tunnel closes, not when the head arrives.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}
