//! The public side: accept TCP, run the TLS handshake, serve HTTP/1.1 or HTTP/2 on each
//! connection, and drain in-flight requests on shutdown.
//!
//! [`TlsServer`] is generic over the request handler so the proxy ([`Gateway`]), the echo backend
//! and the test backends all share one accept loop with the same timeouts and shutdown behaviour.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proxy::Proxy;

/// Largest request head (request line plus headers) a client may send; larger gets 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Most header fields a request may carry, over HTTP/1.1 and HTTP/2 alike (HTTP/2 `cookie`
/// fields count once joined); more gets 431.
pub const MAX_REQUEST_HEADERS: usize = 100;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the handler knows about the connection a request arrived on.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// Keeps shutdown waiting while the connection lives on as an upgraded tunnel, which hyper
    /// no longer tracks once it has handed the socket over.
    drain: Mutex<Option<Watcher>>,
}

/// Held by an upgraded tunnel: graceful shutdown waits for it (up to the grace period).
#[derive(Debug)]
pub struct DrainGuard(#[allow(dead_code)] Watcher);

impl ConnectionInfo {
    /// The guard for a tunnel taking over this connection; `None` when already taken.
    pub fn hold_for_tunnel(&self) -> Option<DrainGuard> {
        self.drain.lock().ok()?.take().map(DrainGuard)
    }
}

/// A TLS listener serving HTTP/1.1 and HTTP/2 (chosen by ALPN or the connection preface).
pub struct TlsServer {
    acceptor: TlsAcceptor,
    connections: Arc<Semaphore>,
    http: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    shutdown_grace: Duration,
}

impl TlsServer {
    /// `client_header` bounds the TLS handshake and the arrival of each request head, so a client
    /// that trickles bytes (slowloris) cannot hold a connection open.
    pub fn new(tls: Arc<ServerConfig>, client_header: Duration, shutdown_grace: Duration) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(client_header)
            .max_buf_size(MAX_REQUEST_HEAD)
            .max_headers(MAX_REQUEST_HEADERS);
        // HTTP/2 has no request-head timeout; pings find peers that vanished without a FIN.
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_REQUEST_HEAD as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        Self {
            acceptor: TlsAcceptor::from(tls),
            connections: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            http,
            handshake_timeout: client_header,
            shutdown_grace,
        }
    }

    /// Serves at most `limit` connections at once; further clients wait in the accept queue
    /// until one closes.
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.connections = Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS)));
        self
    }

    /// Serves until `shutdown` completes, then stops accepting and waits up to the grace period
    /// for open requests. The accept loop survives accept errors (such as running out of file
    /// descriptors): it logs, pauses briefly and goes on.
    pub async fn serve<H, F, B>(
        self,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) where
        H: Fn(Request<Incoming>, Arc<ConnectionInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            if self.connections.available_permits() == 0 {
                warn!("connection limit reached ([server] max_connections); new clients wait");
            }
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the semaphore is never closed
                },
            };
            let (tcp, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let http = self.http.clone();
            let handler = handler.clone();
            let watcher = graceful.watcher();
            let tunnel_watcher = graceful.watcher();
            let handshake_timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let info = Arc::new(ConnectionInfo {
                    peer,
                    sni: tls.get_ref().1.server_name().map(str::to_owned),
                    drain: Mutex::new(Some(tunnel_watcher)),
                });
                let service = service_fn(move |req| {
                    let response = handler(req, info.clone());
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let connection = http
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .into_owned();
                if let Err(e) = watcher.watch(connection).await {
                    info!(%peer, error = %e, "client connection ended with an error");
                }
            });
        }
        drop(listener);
        info!(
            grace = %humantime::format_duration(self.shutdown_grace),
            "stopped accepting; waiting for in-flight requests"
        );
        tokio::select! {
            () = graceful.shutdown() => info!("all connections closed"),
            () = tokio::time::sleep(self.shutdown_grace) => {
                warn!("shutdown grace period elapsed; closing the remaining connections");
            }
        }
    }
}

/// The proxy, ready to serve: the public TLS listener in front of [`Proxy`].
pub struct Gateway {
    server: TlsServer,
    proxy: Arc<Proxy>,
}

impl Gateway {
    pub fn new(config: &Config) -> Self {
        Self {
            server: TlsServer::new(
                config.server.tls.clone(),
                config.timeouts.client_header,
                config.server.shutdown_grace,
            )
            .max_connections(config.server.max_connections),
            proxy: Arc::new(Proxy::new(config)),
        }
    }

    /// Serves on `listener` (bound by the caller, so tests can use an ephemeral port) until
    /// `shutdown` completes; then drains as [`TlsServer::serve`] describes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let proxy = self.proxy;
        let handler = move |req, info: Arc<ConnectionInfo>| {
            let proxy = proxy.clone();
            async move { proxy.handle(req, &info).await }
        };
        self.server.serve(listener, handler, shutdown).await;
    }
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
