//! HTTP/1.1 `Upgrade` (WebSocket) tunnelling: after the upstream answers 101, bytes are copied
//! both ways between the two upgraded connections until either side closes or the tunnel has
//! been silent both ways for `[timeouts] tunnel_idle`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info};

use crate::connection::TunnelGuard;
use crate::connection::Turn;

/// What a tunnel holds on to while it is open.
pub struct Tunnel {
    /// The client connection's admission and the drain watch.
    pub guard: Option<TunnelGuard>,
    /// The client connection's turn at the upstreams.
    pub turn: Option<Turn>,
    pub idle: Duration,
    pub route: Arc<str>,
    pub peer: SocketAddr,
}

/// Spawns the tunnel. Both upgrades complete only after the 101 response has been written to the
/// client, so this must not be awaited on the request path.
pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade, tunnel: Tunnel) {
    tokio::spawn(async move {
        let Tunnel {
            guard: _guard,
            turn: _turn,
            idle,
            route,
            peer,
        } = tunnel;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                info!(%route, %peer, error = %e, "upgrade failed before the tunnel opened");
                return;
            }
        };
        let traffic = Arc::new(AtomicU64::new(0));
        let mut client = Counted::new(TokioIo::new(client), &traffic);
        let mut upstream = Counted::new(TokioIo::new(upstream), &traffic);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut seen = 0;
        let check = (idle / 4).max(Duration::from_millis(10));
        let mut quiet = Duration::ZERO;
        loop {
            tokio::select! {
                result = &mut copy => {
                    match result {
                        Ok((sent, received)) => debug!(%route, %peer, sent, received, "tunnel closed"),
                        Err(e) => debug!(%route, %peer, error = %e, "tunnel closed with an error"),
                    }
                    return;
                }
                () = tokio::time::sleep(check) => {
                    let now = traffic.load(Relaxed);
                    quiet = if now == seen { quiet + check } else { Duration::ZERO };
                    seen = now;
                    if quiet >= idle {
                        info!(%route, %peer, idle = %humantime::format_duration(idle),
                            "tunnel closed: no traffic either way ([timeouts] tunnel_idle)");
                        return;
                    }
                }
            }
        }
    });
}

/// One side of a tunnel, adding every byte read to a shared counter.
struct Counted<T> {
    inner: T,
    traffic: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn new(inner: T, traffic: &Arc<AtomicU64>) -> Self {
        Self {
            inner,
            traffic: traffic.clone(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.traffic.fetch_add(read as u64, Relaxed);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
