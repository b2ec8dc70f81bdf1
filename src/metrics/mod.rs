//! Prometheus metrics, served by the admin listener's `/metrics`.
//!
//! Names and labels are a contract (dashboards and alerts depend on them). The request path
//! touches only handles resolved when a generation is built ([`RouteMetrics`]): a request does an
//! atomic add and one histogram observation, with no label hashing after its route's first
//! request with a given status. Series that belong to the configuration (certificates, CRLs, the
//! generation) are computed at scrape time from the snapshot of the serving configuration
//! (`collector.rs`), so what a reload removes disappears from `/metrics`. The upstream side's
//! handles (pools, endpoints, retries) live in `upstream.rs`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Config;

mod collector;
mod upstream;

use self::collector::{ConfigCollector, ConfigSeries};
use self::upstream::REASONS;
pub use self::upstream::{
    CHECK_RESULTS, ConnectionGauge, EJECTION_REASONS, EndpointMetrics, RETRY_REASONS, RetryMetrics,
    SeenLeaf, UpstreamMetrics, UpstreamSource, UpstreamStats,
};

/// Request latency buckets, seconds: few, as the contract asks.
const LATENCY_BUCKETS: [f64; 8] = [0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 60.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamHandshakeLabels {
    route: String,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    route: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointResultLabels {
    route: String,
    endpoint: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointReasonLabels {
    route: String,
    endpoint: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReasonLabels {
    route: String,
    reason: &'static str,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of one proxy.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    client_connections: Gauge,
    client_handshakes: Family<HandshakeLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    upstream_handshakes: Family<UpstreamHandshakeLabels, Counter>,
    upstream_connect: HistogramFamily,
    upstream_connections: Family<RouteLabel, Gauge>,
    endpoint_up: Family<EndpointLabels, Gauge>,
    endpoint_requests: Family<EndpointLabels, Counter>,
    health_checks: Family<EndpointResultLabels, Counter>,
    ejections: Family<EndpointReasonLabels, Counter>,
    retries: Family<RouteReasonLabels, Counter>,
    state: Arc<State>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

/// What the collector reads at scrape time.
#[derive(Default)]
struct State {
    generation: AtomicU64,
    /// 1 when the last reload applied (or nothing needed applying), 0 when it was refused.
    last_reload_ok: AtomicU64,
    /// Seconds since the epoch of the last successful load or reload.
    last_success: AtomicU64,
    config: ArcSwapOption<ConfigSeries>,
    /// Lists each upstream endpoint's record of what it presented, with the route it is
    /// labelled by: endpoints found by DNS come and go between reloads.
    upstreams: ArcSwapOption<UpstreamSource>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trustgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route prefix (\"-\": none matched) and status",
            requests.clone(),
        );
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "From request head to response head, by route",
            durations.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open now",
            client_connections.clone(),
        );
        let client_handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "client_tls_handshakes",
            "TLS handshakes on the public listener, by result and kind (full or resumed)",
            client_handshakes.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Reloads by result: applied, unchanged or refused",
            reloads.clone(),
        );
        let upstream_handshakes = Family::<UpstreamHandshakeLabels, Counter>::default();
        registry.register(
            "upstream_tls_handshakes",
            "TLS handshakes with upstreams, by route, result and the reason of a failure",
            upstream_handshakes.clone(),
        );
        let upstream_connect: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_connect_duration_seconds",
            "TCP connect plus TLS handshake to an upstream, by route",
            upstream_connect.clone(),
        );
        let upstream_connections = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "upstream_connections",
            "Upstream connections open now, by route",
            upstream_connections.clone(),
        );
        let endpoint_up = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_endpoint_up",
            "1 while an upstream endpoint is in rotation, 0 while it is out (failing checks, \
             ejected, or failing TLS verification), by route and endpoint address",
            endpoint_up.clone(),
        );
        let endpoint_requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "upstream_endpoint_requests",
            "Requests sent to each upstream endpoint (retries included), by route and endpoint",
            endpoint_requests.clone(),
        );
        let health_checks = Family::<EndpointResultLabels, Counter>::default();
        registry.register(
            "upstream_health_checks",
            "Active health checks and re-verification handshakes, by route, endpoint and result \
             (ok, status, timeout, connect, tls)",
            health_checks.clone(),
        );
        let ejections = Family::<EndpointReasonLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Endpoints taken out of rotation, by route, endpoint and reason (fails: passive \
             failures within fail_timeout; health_check: active checks; tls: verification failed)",
            ejections.clone(),
        );
        let retries = Family::<RouteReasonLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Requests sent to another endpoint after one failed before any of it reached an \
             upstream, by route and reason (connect, tls, timeout, closed)",
            retries.clone(),
        );
        let state = Arc::new(State {
            last_reload_ok: AtomicU64::new(1),
            ..State::default()
        });
        registry.register_collector(Box::new(ConfigCollector(state.clone())));
        Self {
            registry,
            requests,
            durations,
            client_connections,
            client_handshakes,
            reloads,
            upstream_handshakes,
            upstream_connect,
            upstream_connections,
            endpoint_up,
            endpoint_requests,
            health_checks,
            ejections,
            retries,
            state,
        }
    }

    /// The handles one route's requests record through (`"-"`: requests no route matched).
    pub fn route(self: &Arc<Self>, prefix: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: prefix.to_owned(),
        };
        RouteMetrics {
            metrics: self.clone(),
            route: prefix.into(),
            codes: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.durations.get_or_create_owned(&label),
        }
    }

    /// A generation built from `config` now serves: its number and its certificates and CRLs
    /// become the series of `/metrics`; series of routes it no longer has are removed.
    pub fn serving(&self, config: &Config, generation: u64, upstreams: UpstreamSource) {
        let series = ConfigSeries::of(config);
        if let Some(previous) = self.state.config.load_full() {
            for gone in previous
                .routes
                .iter()
                .filter(|r| !series.routes.contains(r))
            {
                self.forget_route(gone);
            }
        }
        self.state.generation.store(generation, Ordering::Relaxed);
        self.state.config.store(Some(Arc::new(series)));
        self.state.upstreams.store(Some(Arc::new(upstreams)));
        self.state.last_reload_ok.store(1, Ordering::Relaxed);
        self.state.last_success.store(now_secs(), Ordering::Relaxed);
    }

    /// A reload ended: `applied`, `unchanged` or `refused`.
    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        if result == "refused" {
            self.state.last_reload_ok.store(0, Ordering::Relaxed);
        } else {
            self.state.last_reload_ok.store(1, Ordering::Relaxed);
            self.state.last_success.store(now_secs(), Ordering::Relaxed);
        }
    }

    /// A client connection opened: the gauge counts it until the guard drops.
    pub fn client_connection(self: &Arc<Self>) -> ConnectionGauge {
        self.client_connections.inc();
        ConnectionGauge(self.client_connections.clone())
    }

    /// A public TLS handshake ended.
    pub fn client_handshake(&self, ok: bool, resumed: bool) {
        let labels = HandshakeLabels {
            result: if ok { "ok" } else { "failed" },
            kind: if resumed { "resumed" } else { "full" },
        };
        self.client_handshakes.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition, or OpenMetrics with `openmetrics`.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = encoded {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    fn forget_route(&self, route: &str) {
        let label = RouteLabel {
            route: route.to_owned(),
        };
        self.durations.remove(&label);
        self.upstream_connect.remove(&label);
        self.upstream_connections.remove(&label);
        for result in ["ok", "failed"] {
            for reason in REASONS {
                self.upstream_handshakes.remove(&UpstreamHandshakeLabels {
                    route: route.to_owned(),
                    result,
                    reason,
                });
            }
        }
        for code in 100..600 {
            self.requests.remove(&RequestLabels {
                route: route.to_owned(),
                code,
            });
        }
        for reason in RETRY_REASONS {
            self.retries.remove(&RouteReasonLabels {
                route: route.to_owned(),
                reason,
            });
        }
    }
}

/// One route's handles: resolved when a generation is built, so a request hashes no labels.
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    route: Box<str>,
    /// `trustgate_requests_total{route, code}` per status 100..=599, made on first use.
    codes: Box<[OnceLock<Counter>]>,
    duration: Histogram,
}

impl RouteMetrics {
    /// One request answered with `status` after `elapsed` (request head to response head).
    pub fn observe(&self, status: u16, elapsed: Duration) {
        if let Some(slot) = self.codes.get(usize::from(status).wrapping_sub(100)) {
            slot.get_or_init(|| {
                self.metrics.requests.get_or_create_owned(&RequestLabels {
                    route: self.route.to_string(),
                    code: status,
                })
            })
            .inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
