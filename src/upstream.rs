//! The upstream clients: pooled keep-alive connections over TLS that trusts the internal CA only.
//!
//! One [`Pool`] per distinct upstream ([`PoolKey`]: host, port, fixed address, and the trust it is
//! verified with). A reload that changes an upstream's trust builds a new pool, so a connection
//! verified under the old trust is never reused; one that changes nothing for it keeps the pool
//! and its warm connections.
//!
//! Layers of a pool's connector, outermost first:
//! - [`Connector`]: bounds TCP connect plus TLS handshake by `[timeouts].connect`, so a black-holed
//!   upstream costs seconds, not the OS's minutes.
//! - hyper-rustls `HttpsConnector`: https only; SNI and the name verified against the certificate
//!   are the upstream URL's host (the service name), whatever address the TCP connection goes to.
//! - [`TcpConnector`]: connects to the route's `address` when one is set, else resolves the host;
//!   its writes fail when the upstream stops reading ([`WriteGuarded`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::body::UpstreamBody;
use crate::config::Timeouts;
use crate::routing::Route;
use crate::server::MAX_REQUEST_HEAD;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client requests are sent with.
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// What makes two routes share a pool: the same upstream, reached the same way, verified with the
/// same trust.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    host: String,
    port: u16,
    address: Option<SocketAddr>,
    /// SHA-256 over everything the connections are verified with.
    trust: [u8; 32],
    connect: Duration,
    write_limit: Duration,
}

impl PoolKey {
    pub fn new(route: &Route, trust: [u8; 32], timeouts: &Timeouts) -> Self {
        Self {
            host: route.upstream.host().to_ascii_lowercase(),
            port: route.upstream.port(),
            address: route.address,
            trust,
            connect: timeouts.connect,
            write_limit: timeouts.response,
        }
    }
}

/// The pooled clients of one upstream: one that speaks HTTP/2 when the upstream offers it by
/// ALPN, and one that speaks only HTTP/1.1, for requests that upgrade the connection (WebSocket)
/// or preserve the client's Host, which HTTP/2 cannot carry. Dropping the last `Arc` of a pool
/// closes its idle connections; in-flight requests and tunnels live on.
#[derive(Clone, Debug)]
pub struct Pool {
    pub client: UpstreamClient,
    pub http1_client: UpstreamClient,
}

impl Pool {
    /// A pool for `key`'s upstream whose connections are verified by `tls`.
    pub fn new(key: &PoolKey, tls: &ClientConfig) -> Self {
        let tcp = TcpConnector {
            write_limit: key.write_limit,
            address: key.address,
        };
        Self {
            client: pooled(Connector::new(tls.clone(), tcp.clone(), key.connect, true)),
            http1_client: pooled(Connector::new(tls.clone(), tcp, key.connect, false)),
        }
    }
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

/// TLS connector with a deadline on connect plus handshake.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpsConnector<TcpConnector>,
    timeout: Duration,
}

impl Connector {
    fn new(tls: ClientConfig, tcp: TcpConnector, timeout: Duration, offer_h2: bool) -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let inner = if offer_h2 {
            builder.enable_all_versions().wrap_connector(tcp)
        } else {
            builder.enable_http1().wrap_connector(tcp)
        };
        Self { inner, timeout }
    }
}

/// The upstream did not finish TCP connect and TLS handshake within `[timeouts].connect`.
#[derive(Debug, thiserror::Error)]
#[error("connect and TLS handshake did not finish within {}", humantime::format_duration(*.0))]
pub struct ConnectTimeout(pub Duration);

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<WriteGuarded>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| Box::new(ConnectTimeout(timeout)) as BoxError)?
        })
    }
}

/// A TCP connection to an upstream could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {source}")]
pub struct TcpConnectError {
    /// `host:port`, plus the fixed address when the route sets one.
    pub target: String,
    #[source]
    pub source: std::io::Error,
}

/// Plain TCP to the upstream: the route's fixed `address` if it has one, else DNS.
#[derive(Clone, Debug)]
pub struct TcpConnector {
    /// How long a write to the upstream may wait for the upstream to read.
    write_limit: Duration,
    /// The address to dial instead of resolving the host.
    address: Option<SocketAddr>,
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
        let fixed = self.address;
        let write_limit = self.write_limit;
        Box::pin(async move {
            let (target, connected) = match fixed {
                Some(address) => (
                    format!("{host}:{port} at {address}"),
                    TcpStream::connect(address).await,
                ),
                None => (
                    format!("{host}:{port}"),
                    TcpStream::connect((host.as_str(), port)).await,
                ),
            };
            let stream = connected.map_err(|source| TcpConnectError { target, source })?;
            // Small proxied requests must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(WriteGuarded {
                inner: stream,
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
    inner: TcpStream,
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
        self.inner.connected()
    }
}
