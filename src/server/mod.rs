//! The public side: accept TCP, run the TLS handshake, serve HTTP/1.1 or HTTP/2 on each
//! connection, and drain in-flight requests on shutdown.
//!
//! [`TlsServer`] is generic over the request handler so the proxy ([`crate::gateway::Gateway`]), the echo backend
//! and the test backends all share one accept loop with the same timeouts and shutdown behaviour.

pub mod admission;
pub mod linger;
pub mod watchdog;
pub mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::admission::{AcceptErrors, Admission, PerIp, Throttle};
use self::linger::Lingering;
use self::watchdog::{Activity, Clocks, Tracked, Verdict};
use self::workers::Workers;
use crate::config::{Limits, Timeouts};
use crate::connection::{ClientCert, UpstreamTurns};
pub use crate::connection::{ConnectionInfo, TunnelGuard};
use crate::io::OnRead;
use crate::live::{ClientPeers, Peer, Severable};
use crate::metrics::Metrics;
use crate::tls::reason::{self, Side};
use crate::tls::verify::ClientVerifier;

/// Largest request head (request line plus headers) a client may send; larger gets 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Most header fields a request may carry, over HTTP/1.1 and HTTP/2 alike (HTTP/2 `cookie`
/// fields count once joined); more gets 431.
pub const MAX_REQUEST_HEADERS: usize = 100;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the listener admits, fixed while it serves: client connections and upstream turns in
/// total and per source.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub upstream_per_ip: usize,
    /// Upstream connections for the whole proxy: what the descriptors leave after clients.
    pub upstream_total: usize,
}

impl AdmissionLimits {
    pub fn new(limits: &Limits, max_connections: usize) -> Self {
        Self {
            max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            upstream_per_ip: limits.upstream_per_ip,
            upstream_total: Semaphore::MAX_PERMITS,
        }
    }
}

/// What one new connection is served with, read when it is accepted: fixed for a backend, the
/// current generation's for the proxy, so a reload reaches every connection opened after it.
#[derive(Debug, Clone)]
pub struct PerConnection {
    pub tls: Arc<ServerConfig>,
    /// The clocks of [`watchdog::supervise`].
    pub clocks: Clocks,
    pub h2_max_streams: u32,
    pub upstream_per_connection: usize,
    /// With client auth: where connections with a verified client certificate are recorded, so
    /// a change of client trust can judge them again, and the verifier `tls` uses.
    pub client_auth: Option<(Arc<ClientPeers>, Arc<ClientVerifier>)>,
    /// The proxy's metrics (client connections and handshakes); `None` for backends.
    pub metrics: Option<Arc<Metrics>>,
}

impl PerConnection {
    pub fn new(
        tls: Arc<ServerConfig>,
        timeouts: &Timeouts,
        limits: &Limits,
        client_auth: Option<(Arc<ClientPeers>, Arc<ClientVerifier>)>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            tls,
            client_auth,
            metrics,
            clocks: Clocks {
                client_header: timeouts.client_header,
                idle: timeouts.idle,
                client_send: timeouts.client_send,
            },
            h2_max_streams: limits.h2_max_streams,
            upstream_per_connection: limits.upstream_per_connection,
        }
    }
}

/// Gives each new connection its settings.
pub type SettingsSource = Arc<dyn Fn() -> PerConnection + Send + Sync>;

/// A TLS listener serving HTTP/1.1 and HTTP/2 (chosen by ALPN or the connection preface).
pub struct TlsServer {
    settings: SettingsSource,
    http: auto::Builder<TokioExecutor>,
    admission: AdmissionLimits,
    shutdown_grace: Duration,
    /// Threads serving the connections; 1: the runtime `serve` runs on serves them.
    workers: usize,
}

impl TlsServer {
    /// A server with the default limits and timeouts, but `client_header`, which bounds the TLS
    /// handshake, the bytes before the first request and each request head, so a client that
    /// trickles bytes (slowloris) cannot hold a connection open.
    pub fn new(tls: Arc<ServerConfig>, client_header: Duration, shutdown_grace: Duration) -> Self {
        Self::with_tls(Arc::new(move || tls.clone()), client_header, shutdown_grace)
    }

    /// As [`TlsServer::new`], but each new connection takes the TLS config `tls` returns when it
    /// is accepted: a backend that reloads its certificate.
    pub fn with_tls(
        tls: Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>,
        client_header: Duration,
        shutdown_grace: Duration,
    ) -> Self {
        let timeouts = Timeouts {
            client_header,
            ..Timeouts::default()
        };
        let limits = Limits::default();
        let admission = AdmissionLimits::new(&limits, crate::config::DEFAULT_MAX_CONNECTIONS);
        Self::with_settings(
            Arc::new(move || PerConnection::new(tls(), &timeouts, &limits, None, None)),
            admission,
            shutdown_grace,
        )
    }

    pub fn with_settings(
        settings: SettingsSource,
        admission: AdmissionLimits,
        shutdown_grace: Duration,
    ) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // Head and idle clocks are the watchdog's (hyper's header timer also runs while idle).
        // The header count stays hyper's default, which is MAX_REQUEST_HEADERS: setting it, even
        // to the same number, makes hyper fill a 100-slot array per request head it parses.
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(MAX_REQUEST_HEAD);
        // Pings find peers that vanished without a FIN.
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_REQUEST_HEAD as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        Self {
            settings,
            http,
            admission,
            shutdown_grace,
            workers: 1,
        }
    }

    /// Serves connections on `count` threads of their own ([`workers`]); 1 (the default): on
    /// the runtime that runs [`TlsServer::serve`].
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count.max(1);
        self
    }

    /// Serves until `shutdown` completes, then stops accepting and waits up to the grace period
    /// for open requests and tunnels. The accept loop survives accept errors (such as running
    /// out of file descriptors): it backs off and logs at most one line per 10 s.
    pub async fn serve<H, F, B>(
        self,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) where
        H: Fn(Request<Incoming>, Arc<ConnectionInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let limits = self.admission;
        let connections = Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let per_ip = PerIp::new(limits.max_connections_per_ip, limits.upstream_per_ip);
        let proxy_turns = Arc::new(Semaphore::new(
            limits.upstream_total.min(Semaphore::MAX_PERMITS),
        ));
        // Every connection and tunnel holds a receiver: `closed()` tells when all have ended.
        let (draining, drain) = watch::channel(false);
        let mut accept_errors = AcceptErrors::default();
        let mut per_ip_refusals = Throttle::every(Duration::from_secs(10));
        let mut full = Throttle::every(Duration::from_secs(10));
        let workers = match self.workers {
            1 => None,
            count => match Workers::start(count) {
                Ok(workers) => Some(workers),
                Err(e) => {
                    warn!(error = %e, "cannot start the worker threads ([server] workers); \
                        serving every connection on the main thread");
                    None
                }
            },
        };
        tokio::pin!(shutdown);
        loop {
            if connections.available_permits() == 0 && full.hit().is_some() {
                warn!(
                    "connection limit reached ([server] max_connections); new clients wait \
                     (logged at most every 10s)"
                );
            }
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the semaphore is never closed
                },
            };
            let (tcp, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        accept_errors.succeeded();
                        accepted
                    }
                    Err(e) => {
                        tokio::time::sleep(accept_errors.failed(&e)).await;
                        continue;
                    }
                },
            };
            let Some(ip_share) = per_ip.admit(peer.ip()) else {
                if let Some(suppressed) = per_ip_refusals.hit() {
                    warn!(%peer, suppressed, "per-IP connection limit reached ([limits] \
                        max_connections_per_ip); closing (further refusals are counted, logged every 10s)");
                }
                continue;
            };
            let settings = (self.settings)();
            let upstream_turns = UpstreamTurns {
                connection: Arc::new(Semaphore::new(settings.upstream_per_connection)),
                source: ip_share.upstream_turns.clone(),
                proxy: proxy_turns.clone(),
            };
            let accepted = Instant::now();
            let admission = Admission::new(permit, ip_share);
            let (http, drain, handler) = (self.http.clone(), drain.clone(), handler.clone());
            let connection = move |tcp| Connection {
                tcp,
                peer,
                upstream_turns,
                accepted,
                admission,
                http,
                settings,
                drain,
            };
            let Some(workers) = &workers else {
                tokio::spawn(connection(tcp).serve(handler));
                continue;
            };
            // The socket moves to the worker's own reactor: registered with this runtime's, its
            // every readiness would have to wake the worker from this thread.
            match tcp.into_std() {
                Ok(tcp) => workers.spawn(async move {
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => connection(tcp).serve(handler).await,
                        Err(e) => {
                            debug!(%peer, error = %e, "cannot hand the connection to a worker")
                        }
                    }
                }),
                Err(e) => debug!(%peer, error = %e, "cannot hand the connection to a worker"),
            }
        }
        drop(listener);
        drop(drain);
        info!(
            grace = %humantime::format_duration(self.shutdown_grace),
            "stopped accepting; waiting for in-flight requests"
        );
        let _ = draining.send(true);
        tokio::select! {
            () = draining.closed() => info!("all connections closed"),
            () = tokio::time::sleep(self.shutdown_grace) => {
                warn!("shutdown grace period elapsed; closing the remaining connections");
            }
        }
    }
}

/// One accepted client connection, before its TLS handshake.
struct Connection {
    tcp: TcpStream,
    peer: SocketAddr,
    upstream_turns: UpstreamTurns,
    accepted: Instant,
    admission: Arc<Admission>,
    http: auto::Builder<TokioExecutor>,
    settings: PerConnection,
    drain: watch::Receiver<bool>,
}

impl Connection {
    async fn serve<H, F, B>(self, handler: H)
    where
        H: Fn(Request<Incoming>, Arc<ConnectionInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let Self {
            tcp,
            peer,
            upstream_turns,
            accepted,
            admission,
            mut http,
            settings,
            drain,
        } = self;
        http.http2().max_concurrent_streams(settings.h2_max_streams);
        let acceptor = TlsAcceptor::from(settings.tls);
        let _ = tcp.set_nodelay(true);
        let clocks = settings.clocks;
        let activity = Activity::new(accepted, clocks);
        let tcp = Lingering::new(Severable::new(tcp, peer), admission.clone());
        // Severed where the connection is given up on for what the client did (or did not do):
        // such a socket does not linger.
        let socket = tcp.peer().clone();
        let _open = settings.metrics.as_ref().map(|m| m.client_connection());
        let handshake = tokio::time::timeout(clocks.client_header, acceptor.accept(tcp)).await;
        if let Some(metrics) = &settings.metrics {
            let resumed = matches!(&handshake, Ok(Ok(tls))
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
            metrics.client_handshake(matches!(handshake, Ok(Ok(_))), resumed);
        }
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let refused = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .filter(|tls| {
                        matches!(
                            tls,
                            rustls::Error::InvalidCertificate(_)
                                | rustls::Error::NoCertificatesPresented
                        )
                    });
                match refused {
                    Some(tls) => info!(%peer, reason = %reason::tls(tls, Side::Client),
                        "client certificate refused; TLS handshake aborted"),
                    None => debug!(%peer, error = %e, "TLS handshake failed"),
                }
                socket.sever();
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out ([timeouts] client_header)");
                socket.sever();
                return;
            }
        };
        // HTTP/2 is told by its preface, as hyper tells it, not by ALPN: a client that negotiates
        // h2 and then speaks HTTP/1.1 is served, and timed, as HTTP/1.1.
        let (tcp, session) = tls.get_ref();
        let chain = session.peer_certificates().unwrap_or_default();
        let client_cert = ClientCert::from_chain(chain).map(Arc::new);
        // Every connection is recorded, with or without a certificate: a reload to `require`
        // closes those without one.
        if let Some((peers, accepted_with)) = &settings.client_auth {
            let owned = chain.iter().map(|c| c.clone().into_owned()).collect();
            if let Err(e) = peers.admit(tcp.peer(), owned, accepted_with) {
                info!(%peer, reason = %reason::tls(&e, Side::Client),
                    "client certificate refused: the client trust changed during the handshake");
                socket.sever();
                return;
            }
        }
        let info = Arc::new(ConnectionInfo::new(
            peer,
            session.server_name().map(str::to_owned),
            client_cert,
            upstream_turns,
            (admission, drain.clone()),
        ));
        let tracker = activity.clone();
        let service = service_fn(move |req| {
            let in_flight = tracker.begin();
            // On the heap: hyper spawns each HTTP/2 stream's future as a task, and moved by value
            // the handler's state was copied into it (callgrind: -3.5 % instructions per h2
            // request, h1 unchanged).
            let response = Box::pin(handler(req, info.clone()));
            async move {
                let response = response.await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        });
        let reader = activity.clone();
        let io = TokioIo::new(OnRead::new(tls, move |data: &[u8]| reader.on_read(data)));
        let connection = http.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        // The watchdog is a task of its own, so the connection's many wake-ups for I/O poll no
        // timers: here only two one-shot orders are polled, and they cost an atomic load each.
        let (finish, mut finish_order) = oneshot::channel();
        let (close, mut close_order) = oneshot::channel();
        let overseer = tokio::spawn(oversee(activity, clocks, drain, socket, finish, close));
        let _overseer = AbortOnDrop(overseer);
        let mut finishing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                // Also when the overseer is gone without a word: close rather than go unwatched.
                _ = &mut close_order => return,
                _ = &mut finish_order, if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Aborts the task when the connection it oversees is gone.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a connection's watchdog and acts on its verdicts: `finish` asks the connection to finish
/// its requests and close (idle, or the server drains), `close` ends it at once. A client cut
/// off for what it did has its socket severed too, so it does not linger ([`linger`]).
async fn oversee(
    activity: Arc<Activity>,
    clocks: Clocks,
    mut drain: watch::Receiver<bool>,
    socket: Arc<Peer>,
    finish: oneshot::Sender<()>,
    close: oneshot::Sender<()>,
) {
    let peer = socket.address;
    let mut finish = Some(finish);
    // Past this, an idle connection that is still finishing is dropped.
    let mut close_by: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            verdict = watchdog::supervise(&activity), if close_by.is_none() => {
                match verdict {
                    Verdict::Idle => debug!(%peer, "idle connection closed ([timeouts] idle)"),
                    Verdict::SlowHead => {
                        debug!(%peer, "no complete request head within [timeouts] client_header; closing");
                    }
                    Verdict::NotReading => {
                        info!(%peer, "the client stopped reading its responses ([timeouts] client_send); closing");
                    }
                    Verdict::Resets => {
                        warn!(%peer, budget = watchdog::RESET_BUDGET,
                            "the client cancelled more requests than it let finish (HTTP/2 rapid reset?); closing");
                    }
                }
                if !matches!(verdict, Verdict::Idle) {
                    socket.sever();
                    break;
                }
                if let Some(finish) = finish.take() {
                    let _ = finish.send(());
                }
                close_by = Some(tokio::time::Instant::now() + clocks.client_header);
            }
            // Draining is bounded by the server's shutdown grace; the watchdog keeps watching.
            _ = drain.wait_for(|draining| *draining), if finish.is_some() => {
                if let Some(finish) = finish.take() {
                    let _ = finish.send(());
                }
            }
            () = tokio::time::sleep_until(close_by.unwrap_or_else(tokio::time::Instant::now)), if close_by.is_some() => {
                // A stream that arrived while the GOAWAY travelled is served, under the
                // watchdog again; an idle connection that did not close is dropped.
                if !activity.busy() {
                    break;
                }
                close_by = None;
            }
        }
    }
    let _ = close.send(());
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("received SIGINT"),
        () = terminate => info!("received SIGTERM"),
    }
}
