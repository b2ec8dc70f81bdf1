//! The layers of a pool's connector: [`Connector`] (deadline on connect plus handshake, the
//! record of each verified connection), hyper-rustls, [`TcpConnector`] (the endpoint's address)
//! and [`WriteGuarded`] (writes fail when the upstream stops reading).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use super::{BoxError, PoolTls, tls_error, verify_again};
use crate::live::{Severable, Verified};
use crate::metrics::ConnectionGauge;
use crate::pki::inspect::CertInfo;
use crate::tls::reason::{self, Side};

/// TLS connector with a deadline on connect plus handshake, using the pool's current trust.
#[derive(Clone, Debug)]
pub struct Connector {
    pub(super) shared: Arc<PoolTls>,
    pub(super) offer_h2: bool,
    pub(super) timeout: Duration,
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
    pub(super) write_limit: Duration,
    pub(super) address: SocketAddr,
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
