//! The proxy, ready to serve: the public TLS listener in front of the current [`Generation`],
//! held in an `ArcSwap` so a reload replaces it without a lock on the request path.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::balance::{Resolve, SystemResolver};
use crate::config::Config;
use crate::connection::ConnectionInfo;
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::reload::{self, Reloader};
use crate::server::admission::{self, DescriptorBudget};
use crate::server::{AdmissionLimits, TlsServer};

pub struct Gateway {
    server: TlsServer,
    current: Arc<ArcSwap<Generation>>,
    reloader: Arc<Reloader>,
    /// Set once shutdown begins: the admin listener's `/readyz` turns 503.
    draining: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// Builds generation 1 and the listener. Raises the soft descriptor limit to the hard one and
    /// splits the descriptors between client and upstream connections.
    pub fn new(config: &Config) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// [`Gateway::new`], finding the endpoints of routes that rely on DNS with `resolver`.
    pub fn with_resolver(config: &Config, resolver: Arc<dyn Resolve>) -> Self {
        let max_connections = config.server.max_connections;
        let mut limits = AdmissionLimits::new(&config.limits, max_connections);
        if let Some(usable) = admission::usable_descriptors() {
            let budget = DescriptorBudget::split(usable, max_connections);
            if budget.clients < max_connections {
                warn!(
                    max_connections,
                    serving = budget.clients,
                    "the file descriptor limit cannot carry [server] max_connections (clients get \
                     at most half the descriptors, upstream connections the rest); raise the hard \
                     limit (ulimit -n, docker --ulimit nofile=) to serve more"
                );
            }
            info!(
                clients = budget.clients,
                upstream_connections = budget.upstreams,
                "descriptor budget"
            );
            limits.max_connections = budget.clients;
            limits.upstream_total = budget.upstreams;
        }
        // Before the first pools are built: they keep a client per connection thread.
        crate::server::workers::reserve(config.server.workers);
        let metrics = Arc::new(Metrics::new());
        let current = Arc::new(ArcSwap::from_pointee(Generation::build(
            config, 1, None, &metrics, &resolver,
        )));
        metrics.serving(config, 1, current.load().upstreams());
        let source = current.clone();
        let settings = Arc::new(move || source.load().connections.clone());
        Self {
            server: TlsServer::with_settings(settings, limits, config.server.shutdown_grace)
                .workers(config.server.workers),
            reloader: Arc::new(Reloader::new(
                config,
                current.clone(),
                metrics.clone(),
                resolver,
            )),
            current,
            draining: Arc::default(),
            metrics,
        }
    }

    /// Reloads the configuration now, as SIGHUP does (see [`crate::reload`]).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Serves the admin endpoints ([`crate::admin`]) on `listener` until the task is aborted.
    pub fn spawn_admin(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(admin::serve(
            listener,
            AdminState {
                reloader: self.reloader.clone(),
                draining: self.draining.clone(),
                metrics: self.metrics.clone(),
            },
        ))
    }

    /// Serves on `listener` (bound by the caller, so tests can use an ephemeral port) until
    /// `shutdown` completes; then drains as [`TlsServer::serve`] describes. Reloads on SIGHUP
    /// and, with `[server] watch`, when the config or a file it names changes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (_triggers, reloads) = reload::spawn(self.reloader);
        let current = self.current;
        let handler = move |req, info: Arc<ConnectionInfo>| {
            // The request keeps the generation it started with to its end.
            let generation = current.load_full();
            async move { generation.proxy.handle(req, &info).await }
        };
        let draining = self.draining;
        let shutdown = async move {
            shutdown.await;
            draining.store(true, Ordering::Relaxed);
        };
        self.server.serve(listener, handler, shutdown).await;
        reloads.abort();
    }
}
