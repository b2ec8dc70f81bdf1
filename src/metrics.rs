//! Prometheus metrics, served by the admin listener's `/metrics`.
//!
//! Names and labels are a contract (dashboards and alerts depend on them). The request path
//! touches only handles resolved when a generation is built ([`RouteMetrics`]): a request does an
//! atomic add and one histogram observation, with no label hashing after its route's first
//! request with a given status. Series that belong to the configuration (certificates, CRLs, the
//! generation) are computed at scrape time from the snapshot of the serving configuration
//! ([`ConfigSeries`]), so what a reload removes disappears from `/metrics`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::pki::inspect::CertInfo;

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

/// The `reason` label values of a failed upstream handshake ("" for ok).
const REASONS: [&str; 11] = [
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
pub struct ConnectionGauge(Gauge);

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

/// The series that belong to one configuration: every certificate it names, its CRLs, routes.
#[derive(Debug, Default)]
pub struct ConfigSeries {
    /// (role, subject, serial, notAfter seconds).
    certs: Vec<(&'static str, String, String, i64)>,
    /// (issuer, nextUpdate seconds, revoked entries).
    crls: Vec<(String, Option<i64>, usize)>,
    routes: Vec<String>,
}

impl ConfigSeries {
    fn of(config: &Config) -> Self {
        let mut certs = Vec::new();
        for cert in config.certificates() {
            if let Ok(info) = CertInfo::parse(&cert.der) {
                let entry = (
                    cert.role,
                    info.subject,
                    info.serial,
                    info.not_after.unix_timestamp(),
                );
                if !certs.contains(&entry) {
                    certs.push(entry);
                }
            }
        }
        let crls = config
            .crls()
            .map(|crl| (crl.issuer.clone(), crl.next_update, crl.revoked_count()))
            .collect();
        let mut routes: Vec<String> = config.routes.iter().map(|r| r.prefix.to_string()).collect();
        routes.push("-".into());
        Self {
            certs,
            crls,
            routes,
        }
    }
}

/// Computes the configuration's series at scrape time.
struct ConfigCollector(Arc<State>);

impl fmt::Debug for ConfigCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigCollector")
    }
}

impl Collector for ConfigCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let state = &self.0;
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let metric = ConstGauge::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(family.encode_family(&Vec::<(&str, &str)>::new())?)
        };
        gauge(
            &mut encoder,
            "config_generation",
            "The serving generation: 1 at start, one more per applied reload",
            state.generation.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "config_last_reload_successful",
            "1 when the last reload applied or found nothing to apply, 0 when it was refused",
            state.last_reload_ok.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "config_last_reload_success_timestamp_seconds",
            "When the configuration last loaded successfully",
            state.last_success.load(Ordering::Relaxed) as i64,
        )?;
        {
            let dropped = ConstCounter::new(crate::logging::log_lines_dropped());
            let mut family = encoder.encode_descriptor(
                "log_lines_dropped",
                "Log lines dropped because the log writer's buffer was full (a slow log sink)",
                None,
                dropped.metric_type(),
            )?;
            dropped.encode(family.encode_family(&Vec::<(&str, &str)>::new())?)?;
        }
        {
            let metric = ConstGauge::new(1i64);
            let mut family = encoder.encode_descriptor(
                "build_info",
                "The running build",
                None,
                MetricType::Gauge,
            )?;
            metric.encode(family.encode_family(&vec![("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        if let Some(upstreams) = state.upstreams.load_full() {
            // Replicas of one service present the same leaf: one series each, the latest seen.
            let mut seen: Vec<(String, SeenLeaf)> = Vec::new();
            for (route, stats) in upstreams() {
                let Some(leaf) = stats
                    .last_leaf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                else {
                    continue;
                };
                let same = |(r, l): &&mut (String, SeenLeaf)| {
                    *r == route
                        && l.name == leaf.name
                        && l.info.serial == leaf.info.serial
                        && l.info.issuer == leaf.info.issuer
                };
                match seen.iter_mut().find(same) {
                    Some(kept) if kept.1.seen_at < leaf.seen_at => kept.1 = leaf,
                    Some(_) => {}
                    None => seen.push((route, leaf)),
                }
            }
            type Pick = fn(&SeenLeaf) -> i64;
            let series: [(&str, &str, Pick); 2] = [
                (
                    "upstream_cert_not_after_timestamp_seconds",
                    "notAfter of the leaf each upstream presented on its last verified handshake",
                    |leaf| leaf.info.not_after.unix_timestamp(),
                ),
                (
                    "upstream_cert_last_seen_timestamp_seconds",
                    "When each upstream last presented that leaf",
                    |leaf| leaf.seen_at as i64,
                ),
            ];
            for (name, help, pick) in series {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (route, leaf) in &seen {
                    let labels = vec![
                        ("route", route.as_str()),
                        ("name", leaf.name.as_str()),
                        ("serial", leaf.info.serial.as_str()),
                        ("issuer", leaf.info.issuer.as_str()),
                    ];
                    ConstGauge::new(pick(leaf)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let Some(config) = state.config.load_full() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "cert_not_after_timestamp_seconds",
            "notAfter of every certificate the configuration names, by role",
            None,
            MetricType::Gauge,
        )?;
        for (role, subject, serial, not_after) in &config.certs {
            let labels = vec![("role", *role), ("subject", subject), ("serial", serial)];
            ConstGauge::new(*not_after).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of every CRL in use, by issuer",
            None,
            MetricType::Gauge,
        )?;
        for (issuer, next_update, _) in &config.crls {
            if let Some(next) = next_update {
                ConstGauge::new(*next).encode(family.encode_family(&vec![("issuer", issuer)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "crl_revoked_entries",
            "Serials each CRL in use revokes, by issuer",
            None,
            MetricType::Gauge,
        )?;
        for (issuer, _, revoked) in &config.crls {
            ConstGauge::new(*revoked as i64)
                .encode(family.encode_family(&vec![("issuer", issuer)])?)?;
        }
        Ok(())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
