//! HTTP/1.1 `Upgrade` (WebSocket) tunnelling: after the upstream answers 101, bytes are copied
//! both ways between the two upgraded connections until either side closes or the tunnel has
//! been silent both ways for `[timeouts] tunnel_idle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use crate::connection::TunnelGuard;
use crate::connection::Turn;
use crate::io::OnRead;

/// What a tunnel holds on to while it is open.
pub struct Tunnel {
    /// The client connection's admission and the drain watch.
    pub guard: Option<TunnelGuard>,
    /// The client connection's turn at the upstreams.
    pub turn: Option<Turn>,
    /// Counts the tunnel at its endpoint until it closes.
    pub in_flight: Option<crate::balance::InFlight>,
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
            in_flight: _in_flight,
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
        let count = |io| {
            let traffic = traffic.clone();
            OnRead::new(io, move |data: &[u8]| {
                traffic.fetch_add(data.len() as u64, Relaxed);
            })
        };
        let mut client = count(TokioIo::new(client));
        let mut upstream = count(TokioIo::new(upstream));
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
