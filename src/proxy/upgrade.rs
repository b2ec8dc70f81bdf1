//! HTTP/1.1 `Upgrade` (WebSocket) tunnelling: after the upstream answers 101, bytes are copied
//! both ways between the two upgraded connections until either side closes.

use std::net::SocketAddr;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use crate::server::DrainGuard;

/// Spawns the tunnel. Both upgrades complete only after the 101 response has been written to the
/// client, so this must not be awaited on the request path. `guard` keeps a graceful shutdown
/// waiting (up to its grace period) until the tunnel closes.
pub fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: Option<DrainGuard>,
    route: String,
    peer: SocketAddr,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                info!(%route, %peer, error = %e, "upgrade failed before the tunnel opened");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => debug!(%route, %peer, sent, received, "tunnel closed"),
            Err(e) => debug!(%route, %peer, error = %e, "tunnel closed with an error"),
        }
    });
}
