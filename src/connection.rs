//! What a request handler knows about the client connection it serves, and what it may take
//! of it: the connection's turns at the upstreams, and the hold a tunnel keeps on it. Shared by
//! the server, which makes it, and the proxy, which uses it; it belongs to neither.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the handler knows about the connection a request arrived on.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The peer's IP address as `X-Forwarded-For` names it (an IPv4-mapped IPv6 address as
    /// IPv4), formatted once for all the connection's requests.
    pub forwarded_for: HeaderValue,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// The client certificate the listener verified, if the client presented one.
    pub client_cert: Option<Arc<ClientCert>>,
    /// Turns at the upstreams: this connection's, its source's and the proxy's.
    upstream_turns: UpstreamTurns,
    /// Taken by a tunnel that outlives hyper's connection.
    hold: Mutex<Option<TunnelGuard>>,
}

/// Held by an upgraded tunnel, which hyper no longer tracks once it has handed the socket over:
/// it keeps what the server attached to the connection (its admission, the drain watch), so the
/// tunnel counts against the connection limits and a graceful shutdown waits for it.
pub struct TunnelGuard {
    _held: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for TunnelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelGuard")
    }
}

impl ConnectionInfo {
    /// `held` lives as long as the connection and, after an upgrade, its tunnel.
    pub fn new(
        peer: SocketAddr,
        sni: Option<String>,
        client_cert: Option<Arc<ClientCert>>,
        upstream_turns: UpstreamTurns,
        held: impl std::any::Any + Send + Sync,
    ) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer,
            // An IP address is always a valid field value.
            forwarded_for: HeaderValue::from_str(&ip).expect("an IP address is a field value"),
            sni,
            client_cert,
            upstream_turns,
            hold: Mutex::new(Some(TunnelGuard {
                _held: Box::new(held),
            })),
        }
    }

    /// The guard for a tunnel taking over this connection; `None` when already taken.
    pub fn hold_for_tunnel(&self) -> Option<TunnelGuard> {
        self.hold.lock().ok()?.take()
    }

    /// A turn at the upstreams (`[limits] upstream_per_connection`, `upstream_per_ip` and the
    /// proxy's descriptor budget), waiting at most `within`; held until the response body has
    /// been sent or dropped. `None` when none came in time.
    pub async fn upstream_turn(&self, within: Duration) -> Option<Turn> {
        // Most requests find a turn free: no timer for them.
        if let Some(turn) = self.upstream_turns.try_take() {
            return Some(turn);
        }
        tokio::time::timeout(within, self.upstream_turns.take())
            .await
            .ok()
    }
}

/// At most this many presented intermediates go into `Client-Cert-Chain`.
const MAX_FORWARDED_CHAIN: usize = 4;

/// A verified client certificate, in the forms the proxy forwards, computed once per connection.
#[derive(Debug)]
pub struct ClientCert {
    /// The leaf's subject, RFC 4514 (`CN=alice,O=Example`).
    pub subject: String,
    /// `X-Client-Cert-Subject`.
    pub subject_header: HeaderValue,
    /// RFC 9440 `Client-Cert`: `:` base64 of the leaf's DER `:`.
    pub leaf: HeaderValue,
    /// RFC 9440 `Client-Cert-Chain`: the presented certificates after the leaf, `None` when
    /// there are none.
    pub chain: Option<HeaderValue>,
}

impl ClientCert {
    /// From a verified chain, leaf first. `None` for an empty or unparseable chain.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        let (leaf, rest) = chain.split_first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let subject = crate::tls::rfc4514(parsed.subject());
        let item = |der: &CertificateDer<'_>| format!(":{}:", BASE64.encode(der));
        // A client may pad its chain with certificates path building never uses: forward a few.
        let chain = (!rest.is_empty())
            .then(|| {
                let items: Vec<String> = rest.iter().take(MAX_FORWARDED_CHAIN).map(item).collect();
                items.join(", ")
            })
            .and_then(|list| HeaderValue::from_str(&list).ok());
        Some(Self {
            subject_header: HeaderValue::from_str(&subject).ok()?,
            leaf: HeaderValue::from_str(&item(leaf)).ok()?,
            chain,
            subject,
        })
    }
}

/// The turns a request takes before it goes upstream: one of its connection's, one of its
/// source's and one of the proxy's (the descriptor budget). Held until the response has been
/// sent (or the tunnel closes).
#[derive(Debug, Clone)]
pub struct UpstreamTurns {
    pub connection: Arc<Semaphore>,
    pub source: Arc<Semaphore>,
    pub proxy: Arc<Semaphore>,
}

/// A request's turn at the upstreams.
#[derive(Debug)]
pub struct Turn {
    _permits: [OwnedSemaphorePermit; 3],
}

impl UpstreamTurns {
    /// A turn at every level if each has one free now; takes none otherwise.
    fn try_take(&self) -> Option<Turn> {
        let take = |semaphore: &Arc<Semaphore>| semaphore.clone().try_acquire_owned().ok();
        Some(Turn {
            _permits: [
                take(&self.connection)?,
                take(&self.source)?,
                take(&self.proxy)?,
            ],
        })
    }

    /// Waits for a turn at each level, the narrowest first, so a request queued behind its own
    /// connection's holds nothing of its source's or the proxy's.
    pub async fn take(&self) -> Turn {
        let take = |semaphore: &Arc<Semaphore>| semaphore.clone().acquire_owned();
        let never_closed = "the semaphores are never closed";
        let connection = take(&self.connection).await.expect(never_closed);
        let source = take(&self.source).await.expect(never_closed);
        let proxy = take(&self.proxy).await.expect(never_closed);
        Turn {
            _permits: [connection, source, proxy],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_names_mapped_ipv4_as_ipv4() {
        let turns = || UpstreamTurns {
            connection: Arc::new(Semaphore::new(1)),
            source: Arc::new(Semaphore::new(1)),
            proxy: Arc::new(Semaphore::new(1)),
        };
        for (peer, named) in [
            ("[::ffff:192.0.2.1]:5000", "192.0.2.1"),
            ("192.0.2.7:1", "192.0.2.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
        ] {
            let info = ConnectionInfo::new(peer.parse().unwrap(), None, None, turns(), ());
            assert_eq!(info.forwarded_for, named);
        }
    }

    #[tokio::test]
    async fn a_turn_holds_one_permit_at_each_level() {
        let turns = UpstreamTurns {
            connection: Arc::new(Semaphore::new(2)),
            source: Arc::new(Semaphore::new(5)),
            proxy: Arc::new(Semaphore::new(1)),
        };
        let turn = turns.take().await;
        let levels = [&turns.connection, &turns.source, &turns.proxy];
        assert_eq!(levels.map(|s| s.available_permits()), [1, 4, 0]);
        // The proxy has no turn left: the next request waits, holding only its connection's.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), turns.take()).await;
        assert!(waiting.is_err());
        drop(turn);
        assert_eq!(levels.map(|s| s.available_permits()), [2, 5, 1]);
    }
}
