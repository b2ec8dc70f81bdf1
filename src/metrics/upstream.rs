//! The upstream side's handles: per pool (handshakes, connect time, open connections, what each
//! backend presented), per endpoint (in rotation, requests, checks, ejections) and per route
//! (retries).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{
    EndpointLabels, EndpointReasonLabels, EndpointResultLabels, Metrics, RouteLabel,
    RouteReasonLabels, UpstreamHandshakeLabels, now_secs,
};
use crate::pki::inspect::CertInfo;

impl Metrics {
    /// The handles one endpoint of `route` records through, every series present from the start.
    pub fn endpoint(self: &Arc<Self>, route: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            route: route.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        let checks = CHECK_RESULTS.map(|result| {
            self.health_checks
                .get_or_create_owned(&EndpointResultLabels {
                    route: route.to_owned(),
                    endpoint: endpoint.to_owned(),
                    result,
                })
        });
        let ejections = EJECTION_REASONS.map(|reason| {
            self.ejections.get_or_create_owned(&EndpointReasonLabels {
                route: route.to_owned(),
                endpoint: endpoint.to_owned(),
                reason,
            })
        });
        EndpointMetrics {
            up: self.endpoint_up.get_or_create_owned(&labels),
            requests: self.endpoint_requests.get_or_create_owned(&labels),
            checks,
            ejections,
        }
    }

    /// Removes the series of an endpoint that left `route`'s set.
    pub fn forget_endpoint(&self, route: &str, endpoint: &str) {
        let labels = EndpointLabels {
            route: route.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        self.endpoint_up.remove(&labels);
        self.endpoint_requests.remove(&labels);
        for result in CHECK_RESULTS {
            self.health_checks.remove(&EndpointResultLabels {
                route: route.to_owned(),
                endpoint: endpoint.to_owned(),
                result,
            });
        }
        for reason in EJECTION_REASONS {
            self.ejections.remove(&EndpointReasonLabels {
                route: route.to_owned(),
                endpoint: endpoint.to_owned(),
                reason,
            });
        }
    }

    /// `route`'s retry counters, one per reason, present from the start.
    pub fn retries(self: &Arc<Self>, route: &str) -> RetryMetrics {
        RetryMetrics(RETRY_REASONS.map(|reason| {
            self.retries.get_or_create_owned(&RouteReasonLabels {
                route: route.to_owned(),
                reason,
            })
        }))
    }

    /// The handles an upstream pool records through, labelled with `route`, the first route
    /// that uses it.
    pub fn upstream(self: &Arc<Self>, route: &str) -> UpstreamMetrics {
        self.upstream_with(route, Arc::default())
    }

    /// As [`Metrics::upstream`], continuing the record `stats`.
    pub fn upstream_with(
        self: &Arc<Self>,
        route: &str,
        stats: Arc<UpstreamStats>,
    ) -> UpstreamMetrics {
        let label = RouteLabel {
            route: route.to_owned(),
        };
        // Every failure series exists from the start at 0, so the first failure is an increase
        // Prometheus sees.
        for reason in &REASONS[1..] {
            let _ = self
                .upstream_handshakes
                .get_or_create(&UpstreamHandshakeLabels {
                    route: route.to_owned(),
                    result: "failed",
                    reason,
                });
        }
        UpstreamMetrics {
            metrics: self.clone(),
            route: route.into(),
            ok: self
                .upstream_handshakes
                .get_or_create_owned(&UpstreamHandshakeLabels {
                    route: route.to_owned(),
                    result: "ok",
                    reason: "",
                }),
            connect: self.upstream_connect.get_or_create_owned(&label),
            open: self.upstream_connections.get_or_create_owned(&label),
            stats,
        }
    }
}

/// The `reason` label values of a failed upstream handshake ("" for ok).
pub(super) const REASONS: [&str; 11] = [
    "",
    "name_mismatch",
    "unknown_issuer",
    "expired",
    "not_yet_valid",
    "revoked",
    "revocation_unknown",
    "crl_expired",
    "client_cert_required",
    "bad_chain",
    "other",
];

/// Lists every upstream endpoint's record, with the route it is labelled by, when asked.
pub type UpstreamSource = Box<dyn Fn() -> Vec<(String, Arc<UpstreamStats>)> + Send + Sync>;

/// The `result` label values of `trustgate_upstream_health_checks_total`.
pub const CHECK_RESULTS: [&str; 5] = ["ok", "status", "timeout", "connect", "tls"];
/// The `reason` label values of `trustgate_upstream_ejections_total`.
pub const EJECTION_REASONS: [&str; 3] = ["fails", "health_check", "tls"];
/// The `reason` label values of `trustgate_upstream_retries_total`.
pub const RETRY_REASONS: [&str; 4] = ["connect", "tls", "timeout", "closed"];

/// One endpoint's handles, resolved when the endpoint joins its route's set.
pub struct EndpointMetrics {
    pub up: Gauge,
    pub requests: Counter,
    /// In [`CHECK_RESULTS`]' order.
    checks: [Counter; 5],
    /// In [`EJECTION_REASONS`]' order.
    ejections: [Counter; 3],
}

impl fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointMetrics")
    }
}

impl EndpointMetrics {
    /// A health check (or re-verification handshake) ended with `result`, one of
    /// [`CHECK_RESULTS`].
    pub fn checked(&self, result: &str) {
        if let Some(i) = CHECK_RESULTS.iter().position(|r| *r == result) {
            self.checks[i].inc();
        }
    }

    /// The endpoint left rotation for `reason`, one of [`EJECTION_REASONS`].
    pub fn ejected(&self, reason: &str) {
        if let Some(i) = EJECTION_REASONS.iter().position(|r| *r == reason) {
            self.ejections[i].inc();
        }
    }
}

/// One route's retry counters, in [`RETRY_REASONS`]' order.
pub struct RetryMetrics([Counter; 4]);

impl RetryMetrics {
    /// A request is sent again after a failure of kind `reason`, one of [`RETRY_REASONS`].
    pub fn retried(&self, reason: &str) {
        if let Some(i) = RETRY_REASONS.iter().position(|r| *r == reason) {
            self.0[i].inc();
        }
    }
}

impl fmt::Debug for RetryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryMetrics")
    }
}

/// One upstream's handles and record (kept by its pool across generations).
#[derive(Clone)]
pub struct UpstreamMetrics {
    metrics: Arc<Metrics>,
    route: Box<str>,
    ok: Counter,
    connect: Histogram,
    open: Gauge,
    pub stats: Arc<UpstreamStats>,
}

impl fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamMetrics({})", self.route)
    }
}

impl UpstreamMetrics {
    /// The route its series are labelled by.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// A handshake verified `leaf`, presented as `name`, after `took` from the TCP connect; the
    /// returned guard counts the connection as open until dropped.
    pub fn verified(&self, name: &str, leaf: Option<CertInfo>, took: Duration) -> ConnectionGauge {
        self.ok.inc();
        self.connect.observe(took.as_secs_f64());
        self.stats.verified.fetch_add(1, Ordering::Relaxed);
        if let Some(info) = leaf {
            *self
                .stats
                .last_leaf
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(SeenLeaf {
                name: name.to_owned(),
                info,
                seen_at: now_secs(),
            });
        }
        self.open.inc();
        ConnectionGauge(self.open.clone())
    }

    /// A handshake (or, for a demanded client certificate, the exchange right after it) was
    /// refused: `class` from [`crate::tls::reason::class`], `reason` in words.
    pub fn refused(&self, class: &'static str, reason: String) {
        self.metrics
            .upstream_handshakes
            .get_or_create(&UpstreamHandshakeLabels {
                route: self.route.to_string(),
                result: "failed",
                reason: class,
            })
            .inc();
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((reason, now_secs()));
    }
}

/// What one upstream presented and how its handshakes went, for `/metrics` and the trust status.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub verified: AtomicU64,
    pub refused: AtomicU64,
    pub last_leaf: std::sync::Mutex<Option<SeenLeaf>>,
    /// The last refusal's reason and when (seconds since the epoch).
    pub last_refusal: std::sync::Mutex<Option<(String, u64)>>,
}

/// The leaf an upstream presented on its last verified handshake.
#[derive(Debug, Clone)]
pub struct SeenLeaf {
    /// The name it was verified for (the SNI sent).
    pub name: String,
    pub info: CertInfo,
    /// Seconds since the epoch.
    pub seen_at: u64,
}

/// Keeps a connections gauge counting one connection while alive.
pub struct ConnectionGauge(pub(super) Gauge);

impl fmt::Debug for ConnectionGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionGauge")
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
