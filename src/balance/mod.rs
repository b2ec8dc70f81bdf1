//! Several endpoints per service: which address of a route's service gets each request.
//!
//! A [`Balancer`] per route holds the route's endpoints ([`Endpoint`]: one address, one pool of
//! verified connections) in an `ArcSwap`, so the request path picks one with atomics only: no
//! lock, no task hop. The set changes without a reload when DNS discovery finds other addresses
//! ([`discovery`]), and on reload for fixed `addresses`; requests and tunnels in flight keep the
//! endpoint they started on.
//!
//! Every endpoint is verified like a single upstream always was: the same anchors, CRLs, client
//! certificate, and SNI = the upstream host, whatever address the connection goes to. An endpoint
//! whose certificate fails verification is taken out and gets no request until a handshake
//! verifies again ([`endpoint`], [`health`]).

pub mod discovery;
pub mod endpoint;
pub mod health;
pub mod settings;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use tracing::{info, warn};

pub use self::discovery::{Resolve, SystemResolver};
use self::endpoint::{Endpoint, Names, now_ms};
pub use self::endpoint::{EndpointStatus, Failure, InFlight};
use self::settings::{Balancing, Discovery, Policy};
use crate::config::Timeouts;
use crate::live::Peer;
use crate::metrics::{Metrics, RetryMetrics, UpstreamStats};
use crate::routing::Route;
use crate::tls::client::Identity;
use crate::tls::verify::ServerVerifier;
use crate::upstream::{Pool, PoolKey};

/// The endpoints of a route's set, in address order.
pub type EndpointSet = Arc<Vec<Arc<Endpoint>>>;

/// What makes a route's balancer reusable by the next generation as it is: the same route, the
/// same upstream reached the same way, the same balancing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerKey {
    prefix: String,
    host: String,
    port: u16,
    identity: Option<[u8; 32]>,
    connect: Duration,
    write_limit: Duration,
    balancing: Balancing,
}

impl BalancerKey {
    pub fn new(route: &Route, timeouts: &Timeouts) -> Self {
        Self {
            prefix: route.prefix.to_string(),
            host: route.upstream.host().to_owned(),
            port: route.upstream.port(),
            identity: route.client_identity.as_ref().map(|i| i.id),
            connect: timeouts.connect,
            write_limit: timeouts.response,
            balancing: route.balancing.clone(),
        }
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoEndpoint {
    /// DNS has given the route no address yet.
    #[error("{service} has no endpoint: {why}")]
    Empty { service: String, why: String },
    /// Every endpoint fails TLS verification.
    #[error("every endpoint of {service} fails TLS verification; {detail}")]
    Untrusted { service: String, detail: String },
    /// Every endpoint was tried.
    #[error("every endpoint of {service} was tried")]
    Exhausted { service: String },
}

/// One route's endpoints and how requests are spread over them.
pub struct Balancer {
    pub key: BalancerKey,
    pub settings: Balancing,
    names: Arc<Names>,
    host: String,
    port: u16,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Round robin's position.
    next: AtomicUsize,
    /// What new endpoints' pools are built with.
    build: PoolBuild,
    /// Serialises changes of the set and of the trust, so no endpoint joins with a stale verifier.
    changing: Mutex<()>,
    retired: AtomicBool,
    resolver: Arc<dyn Resolve>,
    retries: RetryMetrics,
    /// When "nothing in rotation, trying anyway" was last logged (ms).
    degraded_logged: AtomicU64,
    /// The last failed lookup of a route that has no endpoint yet.
    empty_why: Mutex<String>,
    /// `https://authority/`: what re-verification handshakes connect to.
    probe_uri: Uri,
    /// `https://authority/<health path>`.
    check_uri: Uri,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Balancer({} -> {})",
            self.names.route, self.names.service
        )
    }
}

/// What a new endpoint's pool needs.
struct PoolBuild {
    identity: Option<Arc<Identity>>,
    verifier: ArcSwap<ServerVerifier>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    route: Route,
}

impl Balancer {
    /// The balancer of `route`, its endpoints verified by `verifier`. Fixed addresses are used as
    /// they are; DNS is asked once now (blocking: startup and reloads run off the request path)
    /// and then every `resolve_interval`. Pools of `warm` with the same key are kept, open
    /// connections and all. Starts the route's discovery and health loops on the current tokio
    /// runtime.
    pub fn new(
        route: &Route,
        timeouts: &Timeouts,
        verifier: Arc<ServerVerifier>,
        metrics: &Arc<Metrics>,
        resolver: Arc<dyn Resolve>,
        warm: &dyn Fn(&PoolKey) -> Option<Arc<Pool>>,
    ) -> Arc<Self> {
        let upstream = &route.upstream;
        let names = Arc::new(Names {
            route: Arc::from(route.prefix.as_str()),
            service: format!("{}:{}", upstream.host(), upstream.port()),
        });
        let authority = upstream.host_header().to_str().unwrap_or_default();
        let uri = |path: &str| -> Uri {
            format!("https://{authority}{path}")
                .parse()
                .unwrap_or_else(|_| Uri::from_static("https://invalid/"))
        };
        let check_path = route
            .balancing
            .health
            .as_ref()
            .map_or("/", |h| h.path.as_str());
        let (addresses, empty_why) = match &route.balancing.discovery {
            Discovery::Static(addresses) => (addresses.to_vec(), String::new()),
            Discovery::Dns { .. } => {
                match discovery::lookup(resolver.as_ref(), upstream.host(), upstream.port()) {
                    Ok(found) => (found, String::new()),
                    Err(why) => {
                        warn!(route = %names.route, service = %names.service, reason = %why,
                            "DNS lookup of the upstream failed; the route answers 503 until one \
                             succeeds");
                        (Vec::new(), format!("DNS lookup failed: {why}"))
                    }
                }
            }
        };
        let balancer = Arc::new(Self {
            key: BalancerKey::new(route, timeouts),
            settings: route.balancing.clone(),
            names: names.clone(),
            host: upstream.host().to_owned(),
            port: upstream.port(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            build: PoolBuild {
                identity: route.client_identity.clone(),
                verifier: ArcSwap::new(verifier),
                timeouts: *timeouts,
                metrics: metrics.clone(),
                route: route.clone(),
            },
            changing: Mutex::new(()),
            retired: AtomicBool::new(false),
            resolver,
            retries: metrics.retries(route.prefix.as_str()),
            degraded_logged: AtomicU64::new(0),
            empty_why: Mutex::new(empty_why),
            probe_uri: uri("/"),
            check_uri: uri(check_path),
        });
        let endpoints = addresses
            .iter()
            .map(|&address| balancer.endpoint(address, warm))
            .collect();
        balancer.endpoints.store(Arc::new(endpoints));
        balancer.start();
        balancer
    }

    fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(route = %self.names.route, "no async runtime: endpoint health and DNS loops do not run");
            return;
        };
        runtime.spawn(health::run(Arc::downgrade(self)));
        if let Discovery::Dns { interval } = self.settings.discovery {
            runtime.spawn(discovery::run(Arc::downgrade(self), interval));
        }
    }

    fn endpoint(
        &self,
        address: SocketAddr,
        warm: &dyn Fn(&PoolKey) -> Option<Arc<Pool>>,
    ) -> Arc<Endpoint> {
        let build = &self.build;
        let key = PoolKey::new(&build.route, address, &build.timeouts);
        let route = build.route.prefix.as_str();
        let pool = warm(&key)
            .inspect(|pool| pool.label(&build.metrics, route))
            .unwrap_or_else(|| {
                Arc::new(Pool::new(
                    &key,
                    build.identity.clone(),
                    build.verifier.load_full(),
                    build.metrics.upstream(route),
                ))
            });
        let metrics = build.metrics.endpoint(route, &address.to_string());
        Arc::new(Endpoint::new(address, pool, self.names.clone(), metrics))
    }

    /// The endpoints now, for one request's picks.
    pub fn endpoints(&self) -> EndpointSet {
        self.endpoints.load_full()
    }

    fn endpoint_count(&self) -> usize {
        self.endpoints.load().len()
    }

    /// The route's prefix, as logs and metrics name it.
    pub fn route(&self) -> &str {
        &self.names.route
    }

    /// An endpoint for the next attempt, never one of `tried`: one in rotation, by the policy;
    /// when none is, one that does not fail TLS verification (logged); a lone endpoint always.
    pub fn pick(
        &self,
        set: &[Arc<Endpoint>],
        tried: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, NoEndpoint> {
        let fresh = |e: &Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
        match set {
            [] => {
                return Err(NoEndpoint::Empty {
                    service: self.names.service.clone(),
                    why: self
                        .empty_why
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                });
            }
            [only] if fresh(only) => return Ok(only.clone()),
            [_] => {
                return Err(NoEndpoint::Exhausted {
                    service: self.names.service.clone(),
                });
            }
            _ => {}
        }
        let now = now_ms();
        if let Some(e) = self.choose(set, |e| fresh(e) && e.usable(now)) {
            return Ok(e);
        }
        if let Some(e) = self.choose(set, |e| fresh(e) && e.trusted()) {
            let last = self.degraded_logged.load(Relaxed);
            if now.saturating_sub(last) >= 1000
                && self
                    .degraded_logged
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok()
            {
                warn!(route = %self.names.route, service = %self.names.service,
                    endpoint = %e.address,
                    "no endpoint is in rotation; trying one that does not fail TLS verification \
                     anyway");
            }
            return Ok(e);
        }
        if set.iter().all(|e| !e.trusted()) {
            let detail = set
                .iter()
                .map(|e| {
                    let why = e.status().why.unwrap_or_else(|| "TLS failure".into());
                    format!("{}: {why}", e.address)
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(NoEndpoint::Untrusted {
                service: self.names.service.clone(),
                detail,
            });
        }
        Err(NoEndpoint::Exhausted {
            service: self.names.service.clone(),
        })
    }

    /// The first endpoint that `ok` takes, by the policy.
    fn choose(
        &self,
        set: &[Arc<Endpoint>],
        ok: impl Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<Arc<Endpoint>> {
        let n = set.len();
        // The first acceptable endpoint from `start` on, wrapping around.
        let from = |start: usize| (0..n).map(|i| (start + i) % n).find(|&i| ok(&set[i]));
        let index = match self.settings.policy {
            Policy::RoundRobin => from(self.next.fetch_add(1, Relaxed) % n)?,
            Policy::LeastPending if n == 1 => from(0)?,
            Policy::LeastPending => {
                let first = from(fastrand::usize(..n))?;
                // A second draw from the others; the fewer requests in flight wins.
                let second = from((first + 1 + fastrand::usize(..n - 1)) % n)?;
                if set[second].pending() < set[first].pending() {
                    second
                } else {
                    first
                }
            }
        };
        Some(set[index].clone())
    }

    /// Every endpoint was tried.
    pub fn exhausted(&self) -> NoEndpoint {
        NoEndpoint::Exhausted {
            service: self.names.service.clone(),
        }
    }

    /// How many other endpoints a failed request may try.
    pub fn retries(&self) -> u32 {
        self.settings.retries
    }

    /// A request is sent again after `failure`.
    pub fn retried(&self, failure: Failure) {
        self.retries.retried(failure.label());
    }

    /// An attempt at `endpoint` failed with `failure`.
    pub fn failed(
        &self,
        endpoint: &Endpoint,
        failure: Failure,
        reason: &dyn std::fmt::Display,
        set_len: usize,
    ) {
        endpoint.failed(
            failure,
            reason,
            self.settings.fails,
            self.settings.fail_timeout,
            set_len > 1,
        );
    }

    /// Replaces the set with `addresses` (sorted, deduplicated): endpoints that stay keep their
    /// pool, state and requests in flight; those that leave finish what they carry.
    pub fn set_addresses(&self, addresses: &[SocketAddr]) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.endpoints.load_full();
        if current.len() == addresses.len()
            && current.iter().zip(addresses).all(|(e, a)| e.address == *a)
        {
            return;
        }
        let next: Vec<Arc<Endpoint>> = addresses
            .iter()
            .map(|&address| {
                current
                    .iter()
                    .find(|e| e.address == address)
                    .cloned()
                    .unwrap_or_else(|| self.endpoint(address, &|_| None))
            })
            .collect();
        let removed: Vec<String> = current
            .iter()
            .filter(|e| !addresses.contains(&e.address))
            .map(|e| e.address.to_string())
            .collect();
        let added: Vec<String> = next
            .iter()
            .filter(|e| !current.iter().any(|c| c.address == e.address))
            .map(|e| e.address.to_string())
            .collect();
        for gone in &removed {
            self.build.metrics.forget_endpoint(&self.names.route, gone);
        }
        let list = |set: &[Arc<Endpoint>]| {
            set.iter()
                .map(|e| e.address.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let endpoints = list(&next);
        // Stored first: whoever reads the line finds the new set in place.
        self.endpoints.store(Arc::new(next));
        info!(route = %self.names.route, service = %self.names.service,
            %endpoints, added = %added.join(", "), removed = %removed.join(", "),
            "upstream endpoints changed");
    }

    /// New handshakes verify with `verifier` from now on, in every endpoint's pool and in those
    /// of endpoints found later.
    pub fn retrust(&self, verifier: &Arc<ServerVerifier>) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        self.build.verifier.store(verifier.clone());
        for endpoint in self.endpoints.load().iter() {
            endpoint.pool.retrust(verifier.clone());
        }
    }

    /// Judges every open connection again under `verifier`; returns those severed.
    pub fn recheck(&self, verifier: &ServerVerifier) -> Vec<Arc<Peer>> {
        self.endpoints
            .load()
            .iter()
            .flat_map(|e| e.pool.recheck(verifier))
            .collect()
    }

    /// Every pool, for the next generation to keep what it can.
    pub fn pools(&self) -> Vec<(PoolKey, Arc<Pool>)> {
        let build = &self.build;
        self.endpoints
            .load()
            .iter()
            .map(|e| {
                (
                    PoolKey::new(&build.route, e.address, &build.timeouts),
                    e.pool.clone(),
                )
            })
            .collect()
    }

    /// The next generation does not use this balancer: its loops stop, and the series of its
    /// endpoints that `kept` does not list go.
    pub fn retire(&self, kept: &dyn Fn(&str, SocketAddr) -> bool) {
        self.retired.store(true, Relaxed);
        for endpoint in self.endpoints.load().iter() {
            if !kept(&self.names.route, endpoint.address) {
                self.build
                    .metrics
                    .forget_endpoint(&self.names.route, &endpoint.address.to_string());
            }
        }
    }

    fn retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Whether the set holds `address`.
    pub fn has(&self, address: SocketAddr) -> bool {
        self.endpoints.load().iter().any(|e| e.address == address)
    }

    /// Each endpoint as `/trust` shows it.
    pub fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.load().iter().map(|e| e.status()).collect()
    }

    /// Each endpoint's record of what it presented.
    pub fn stats(&self) -> Vec<Arc<UpstreamStats>> {
        self.endpoints
            .load()
            .iter()
            .map(|e| e.pool.metrics().stats.clone())
            .collect()
    }
}
