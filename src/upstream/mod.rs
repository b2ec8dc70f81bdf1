//! The upstream clients: pooled keep-alive connections over TLS that trusts the internal CA only.
//!
//! One [`Pool`] per upstream endpoint ([`PoolKey`]: host, port, endpoint address, the client
//! identity presented, timeouts). A pool outlives reloads that do not change its key. When the
//! upstream trust changes (anchors, CRLs, revocation policy), the pool's connector switches to the
//! new verifier for every new handshake ([`Pool::retrust`]), and each open connection's verified
//! chain is judged again ([`Pool::recheck`]): those that no longer verify are closed, the others
//! stay warm.
//!
//! Layers of a pool's connector, outermost first:
//! - [`Connector`]: bounds TCP connect plus TLS handshake by `[timeouts].connect`, so a black-holed
//!   upstream costs seconds, not the OS's minutes, and records each verified connection.
//! - hyper-rustls `HttpsConnector`: https only; SNI and the name verified against the certificate
//!   are the upstream URL's host (the service name), whatever address the TCP connection goes to.
//! - [`TcpConnector`]: connects to the endpoint's address ([`crate::balance`] finds them);
//!   its writes fail when the upstream stops reading ([`WriteGuarded`]), and the socket can be
//!   severed when its peer stops verifying ([`Severable`]).
//!
//! One module per concern: this one the pools, `connect.rs` the connection layers, `error.rs` the
//! words for what went wrong.

mod connect;
mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::UnixTime;
use tower_service::Service;
use tracing::{error, warn};

pub use self::connect::{
    ConnectTimeout, Connector, NoTlsConfig, TcpConnectError, TcpConnector, UpstreamStream,
    WriteGuarded, WriteStalled,
};
pub use self::error::{describe, tls_error};
use crate::body::UpstreamBody;
use crate::config::Timeouts;
use crate::live::{Peer, Peers, Verified};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::routing::Route;
use crate::server::{MAX_REQUEST_HEAD, workers};
use crate::tls::client::Identity;
use crate::tls::reason::{self, Side};
use crate::tls::verify::ServerVerifier;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client requests are sent with.
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// What makes two routes share a pool: the same upstream at the same endpoint address, reached
/// the same way, presenting the same client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    host: String,
    port: u16,
    address: SocketAddr,
    /// The client identity's id, when the route presents one.
    identity: Option<[u8; 32]>,
    connect: Duration,
    write_limit: Duration,
}

impl PoolKey {
    /// The key of `route`'s pool for its endpoint at `address`.
    pub fn new(route: &Route, address: SocketAddr, timeouts: &Timeouts) -> Self {
        Self {
            host: route.upstream.host().to_ascii_lowercase(),
            port: route.upstream.port(),
            address,
            identity: route.client_identity.as_ref().map(|i| i.id),
            connect: timeouts.connect,
            write_limit: timeouts.response,
        }
    }
}

/// The pooled clients of one upstream: one that speaks HTTP/2 when the upstream offers it by
/// ALPN, and one that speaks only HTTP/1.1, for requests that upgrade the connection (WebSocket)
/// or preserve the client's Host, which HTTP/2 cannot carry. Dropping the last `Arc` of a pool
/// closes its idle connections; in-flight requests and tunnels live on.
#[derive(Debug)]
pub struct Pool {
    /// One pair per thread slot ([`workers::slot`]): a client connection's requests use its own
    /// thread's upstream connections, so no request waits on another thread to be woken.
    clients: Box<[Clients]>,
    /// Connects outside the pool, for re-verification handshakes.
    handshakes: Connector,
    shared: Arc<PoolTls>,
}

#[derive(Debug)]
struct Clients {
    any: UpstreamClient,
    http1: UpstreamClient,
}

/// What both clients of a pool connect with.
#[derive(Debug)]
struct PoolTls {
    /// `host:port`, for log lines.
    label: String,
    identity: Option<Arc<Identity>>,
    tcp: TcpConnector,
    trust: ArcSwap<Trust>,
    /// Connections open now, with the chains they verified.
    peers: Peers,
    /// Labelled by the first route that uses the pool in the serving generation.
    metrics: ArcSwap<UpstreamMetrics>,
}

/// The verifier new handshakes use, and the connectors built around it.
#[derive(Debug)]
struct Trust {
    verifier: Arc<ServerVerifier>,
    /// `[http/1.1 only, h2 + http/1.1]`, or why no TLS config could be built (fail closed).
    https: Result<[HttpsConnector<TcpConnector>; 2], String>,
}

impl Trust {
    fn new(verifier: Arc<ServerVerifier>, identity: Option<&Identity>, tcp: &TcpConnector) -> Self {
        let https = crate::tls::client::config(verifier.clone(), identity)
            .map(|tls| {
                let builder = || {
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls.clone())
                        .https_only()
                };
                [
                    builder().enable_http1().wrap_connector(tcp.clone()),
                    builder().enable_all_versions().wrap_connector(tcp.clone()),
                ]
            })
            .map_err(|e| e.to_string());
        if let Err(why) = &https {
            error!(reason = %why, "cannot build the upstream TLS config; connections are refused");
        }
        Self { verifier, https }
    }
}

impl Pool {
    /// A pool for `key`'s upstream whose connections are verified by `verifier` and present
    /// `identity` when asked for a client certificate.
    pub fn new(
        key: &PoolKey,
        identity: Option<Arc<Identity>>,
        verifier: Arc<ServerVerifier>,
        metrics: UpstreamMetrics,
    ) -> Self {
        let tcp = TcpConnector {
            write_limit: key.write_limit,
            address: key.address,
        };
        let trust = Trust::new(verifier, identity.as_deref(), &tcp);
        let shared = Arc::new(PoolTls {
            label: format!("{}:{}", key.host, key.port),
            identity,
            tcp,
            trust: ArcSwap::from_pointee(trust),
            peers: Peers::default(),
            metrics: ArcSwap::from_pointee(metrics),
        });
        let connector = |offer_h2| Connector {
            shared: shared.clone(),
            offer_h2,
            timeout: key.connect,
        };
        let clients = (0..workers::slots())
            .map(|_| Clients {
                any: pooled(connector(true)),
                http1: pooled(connector(false)),
            })
            .collect();
        Self {
            clients,
            handshakes: connector(false),
            shared,
        }
    }

    /// The calling thread's client that speaks HTTP/2 when the upstream offers it.
    pub fn client(&self) -> &UpstreamClient {
        &self.local().any
    }

    /// The calling thread's client that speaks only HTTP/1.1.
    pub fn http1_client(&self) -> &UpstreamClient {
        &self.local().http1
    }

    fn local(&self) -> &Clients {
        // A worker started after the pool was built (not done: reserved first) shares slot 0.
        self.clients
            .get(workers::slot())
            .unwrap_or(&self.clients[0])
    }

    /// Opens a connection to `uri`'s authority at the pool's address, verified as every
    /// connection is, and closes it: whether the endpoint verifies now.
    pub async fn handshake(&self, uri: Uri) -> Result<(), BoxError> {
        self.handshakes.clone().call(uri).await.map(drop)
    }

    /// What this upstream presented and how its handshakes went.
    pub fn metrics(&self) -> Arc<UpstreamMetrics> {
        self.shared.metrics.load_full()
    }

    /// Labels the pool's series with `route` from now on, keeping its record, when a new
    /// generation names it by another route than before.
    pub fn label(&self, metrics: &Arc<Metrics>, route: &str) {
        let current = self.shared.metrics.load();
        if current.route() != route {
            let relabelled = metrics.upstream_with(route, current.stats.clone());
            self.shared.metrics.store(Arc::new(relabelled));
        }
    }

    /// New handshakes verify with `verifier` from now on; each gets fresh session storage.
    pub fn retrust(&self, verifier: Arc<ServerVerifier>) {
        let shared = &self.shared;
        let trust = Trust::new(verifier, shared.identity.as_deref(), &shared.tcp);
        shared.trust.store(Arc::new(trust));
    }

    /// Verifies every open connection's chain again with `verifier`; severs and logs those that
    /// fail. Returns the severed ones.
    pub fn recheck(&self, verifier: &ServerVerifier) -> Vec<Arc<Peer>> {
        let now = UnixTime::now();
        let severed = self
            .shared
            .peers
            .sever_failing(|verified| verify_again(verifier, verified, now));
        severed
            .into_iter()
            .map(|(peer, err)| {
                warn!(
                    upstream = %self.shared.label,
                    address = %peer.address,
                    reason = %reason::tls(&err, Side::Upstream),
                    "closed an upstream connection: its certificate no longer verifies under the \
                     reloaded trust"
                );
                peer
            })
            .collect()
    }
}

/// The check a new handshake would make, on the chain a connection verified when it opened.
fn verify_again(
    verifier: &ServerVerifier,
    verified: &Verified,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (Some((leaf, intermediates)), Some(name)) =
        (verified.chain.split_first(), &verified.server_name)
    else {
        return Ok(());
    };
    verifier
        .verify_server_cert(leaf, intermediates, name, &[], now)
        .map(|_| ())
}

fn pooled(connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        // Pings find an HTTP/2 upstream that vanished without a FIN before a request hangs on it.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        // One limit for a response head, as for a request head, whatever the protocol: hyper's
        // defaults are about 400 KiB for HTTP/1.1 and 16 KiB for HTTP/2.
        .http1_max_buf_size(MAX_REQUEST_HEAD)
        .http2_max_header_list_size(MAX_REQUEST_HEAD as u32)
        .build(connector)
}
