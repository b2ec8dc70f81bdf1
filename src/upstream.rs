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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::{error, warn};

use crate::body::UpstreamBody;
use crate::config::Timeouts;
use crate::live::{Peer, Peers, Severable, Verified};
use crate::metrics::{ConnectionGauge, Metrics, UpstreamMetrics};
use crate::pki::inspect::CertInfo;
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

/// The rustls error inside a connector's error chain, if TLS is what failed. `io::Error::source()`
/// skips its payload, so each payload is looked into as well.
pub fn tls_error<'e>(mut e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(tls) = tls_error(inner)
        {
            return Some(tls);
        }
        e = e.source()?;
    }
}

/// Finds the most specific cause in an error chain and says it in words.
///
/// hyper-util reports only `client error (Connect)`; the cause sits deeper. `io::Error::source()`
/// skips the error it wraps, so each `io::Error`'s payload is inspected through `get_ref()` too.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let connecting = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_none_or(|e| e.is_connect());
    if let Some(reason) = find_cause(err, connecting) {
        return reason;
    }
    if let Some(hyper) = err.source().and_then(|s| s.downcast_ref::<hyper::Error>()) {
        if hyper.is_incomplete_message() {
            return "the upstream closed the connection before sending a complete response".into();
        }
        if hyper.is_user() {
            return format!("the request could not be sent: {hyper}");
        }
    }
    let mut innermost = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    format!("upstream exchange failed: {innermost}")
}

/// Depth-first search of the chain, descending into `io::Error` payloads (which may nest).
/// `connecting`: the error happened while connecting (TCP + TLS), not in the exchange after.
fn find_cause(e: &(dyn std::error::Error + 'static), connecting: bool) -> Option<String> {
    known_cause(e, connecting)
        .or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| find_cause(inner, connecting))
        })
        .or_else(|| e.source().and_then(|source| find_cause(source, connecting)))
}

fn known_cause(e: &(dyn std::error::Error + 'static), connecting: bool) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(reason::tls(tls, Side::Upstream));
    }
    if let Some(stalled) = e.downcast_ref::<crate::body::BodyStalled>() {
        return Some(stalled.to_string());
    }
    if let Some(timeout) = e.downcast_ref::<ConnectTimeout>() {
        return Some(timeout.to_string());
    }
    if let Some(connect) = e.downcast_ref::<TcpConnectError>() {
        return Some(match connect.source.kind() {
            io::ErrorKind::ConnectionRefused => {
                format!(
                    "connection refused by {}: is the service up?",
                    connect.target
                )
            }
            _ => connect.to_string(),
        });
    }
    if let Some(io) = e.downcast_ref::<io::Error>()
        && io.kind() == io::ErrorKind::UnexpectedEof
    {
        return Some(if connecting {
            "the upstream closed the connection during the TLS handshake".into()
        } else {
            "the upstream closed the connection before sending a complete response".into()
        });
    }
    None
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

/// TLS connector with a deadline on connect plus handshake, using the pool's current trust.
#[derive(Clone, Debug)]
pub struct Connector {
    shared: Arc<PoolTls>,
    offer_h2: bool,
    timeout: Duration,
}

/// The upstream did not finish TCP connect and TLS handshake within `[timeouts].connect`.
#[derive(Debug, thiserror::Error)]
#[error("connect and TLS handshake did not finish within {}", humantime::format_duration(*.0))]
pub struct ConnectTimeout(pub Duration);

/// The pool's TLS config could not be built (see the error logged when it was).
#[derive(Debug, thiserror::Error)]
#[error("no upstream TLS config: {0}")]
pub struct NoTlsConfig(String);

/// The connection's type as hyper-rustls hands it over.
pub type UpstreamStream = MaybeHttpsStream<TokioIo<WriteGuarded>>;

impl Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let trust = self.shared.trust.load_full();
        let shared = self.shared.clone();
        let timeout = self.timeout;
        let connecting = match &trust.https {
            Ok(https) => Ok(https[usize::from(self.offer_h2)].clone().call(uri.clone())),
            Err(why) => Err(NoTlsConfig(why.clone())),
        };
        Box::pin(async move {
            let started = Instant::now();
            let stream = tokio::time::timeout(timeout, connecting?)
                .await
                .map_err(|_| Box::new(ConnectTimeout(timeout)) as BoxError)?
                .inspect_err(|e| {
                    if let Some(tls) = tls_error(e.as_ref()) {
                        let metrics = shared.metrics.load();
                        metrics.refused(reason::class(tls), reason::tls(tls, Side::Upstream));
                    }
                })?;
            let MaybeHttpsStream::Https(tls) = &stream else {
                return Ok(stream);
            };
            let (tcp, session) = tls.inner().get_ref();
            let peer = tcp.inner().inner().inner.peer().clone();
            let chain = session
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let host_name = host.clone();
            peer.verified(Verified {
                chain,
                server_name: ServerName::try_from(host).ok(),
            });
            shared.peers.add(&peer);
            // A reload that changed the trust while this handshake ran may have re-checked the
            // open connections before this one joined them: judge it under the new trust.
            let now_trust = shared.trust.load();
            if !Arc::ptr_eq(&now_trust, &trust)
                && let Some(verified) = peer.chain()
            {
                verify_again(&now_trust.verifier, verified, UnixTime::now())?;
            }
            let leaf = peer
                .chain()
                .and_then(|v| v.chain.first())
                .and_then(|der| CertInfo::parse(der).ok());
            let open = shared
                .metrics
                .load()
                .verified(&host_name, leaf, started.elapsed());
            let mut stream = stream;
            if let MaybeHttpsStream::Https(tls) = &mut stream {
                tls.inner_mut().get_mut().0.inner_mut().inner_mut().open = Some(open);
            }
            Ok(stream)
        })
    }
}

/// A TCP connection to an upstream could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {source}")]
pub struct TcpConnectError {
    /// `host:port at address`.
    pub target: String,
    #[source]
    pub source: std::io::Error,
}

/// Plain TCP to one endpoint's address (the name is never resolved here: the balancer's
/// discovery found the address).
#[derive(Clone, Debug)]
pub struct TcpConnector {
    /// How long a write to the upstream may wait for the upstream to read.
    write_limit: Duration,
    address: SocketAddr,
}

impl Service<Uri> for TcpConnector {
    type Response = TokioIo<WriteGuarded>;
    type Error = TcpConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TcpConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TcpConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(443);
        let address = self.address;
        let write_limit = self.write_limit;
        Box::pin(async move {
            let target = format!("{host}:{port} at {address}");
            let stream = TcpStream::connect(address)
                .await
                .map_err(|source| TcpConnectError {
                    target: target.clone(),
                    source,
                })?;
            // Small proxied requests must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let address = stream
                .peer_addr()
                .map_err(|source| TcpConnectError { target, source })?;
            Ok(TokioIo::new(WriteGuarded {
                inner: Severable::new(stream, address),
                open: None,
                limit: write_limit,
                stall: None,
            }))
        })
    }
}

/// An upstream that stopped reading what the proxy writes (its receive window stayed closed).
#[derive(Debug, thiserror::Error)]
#[error("the upstream stopped reading what the proxy sends ({} without progress)", humantime::format_duration(*.0))]
pub struct WriteStalled(pub Duration);

/// A TCP connection to an upstream whose writes fail once the upstream has read nothing for
/// `limit`: a stuck upstream cannot hold the connection, and the client's request body being
/// sent on it, forever. The timer lives inside `poll_write`, so the blocked writer is woken to
/// fail; it costs nothing while writes go through.
#[derive(Debug)]
pub struct WriteGuarded {
    inner: Severable,
    /// Counts the connection in `trustgate_upstream_connections` once it verified.
    open: Option<ConnectionGauge>,
    limit: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteGuarded {
    fn guard(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if written.is_ready() {
            self.stall = None;
            return written;
        }
        let limit = self.limit;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteStalled(limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteGuarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteGuarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection for WriteGuarded {
    fn connected(&self) -> Connected {
        self.inner.get_ref().connected()
    }
}
