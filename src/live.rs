//! Open connections whose peer certificate was verified, kept so that a change of trust (a CRL
//! that revokes, an anchor removed) can judge them again and close those that no longer pass:
//! pooled upstream connections and WebSocket tunnels to a revoked backend, connections of a
//! client whose certificate was revoked.
//!
//! Closing is `shutdown(2)` on the socket, so whoever holds the connection (hyper's connection
//! task, a pool's idle list, a tunnel) sees it end at once, and nothing of it is sent after. A
//! [`Peer`] knows its socket only while the [`Severable`] stream that owns it is alive.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::verify::ClientVerifier;

/// One open TCP connection that can be severed from elsewhere.
#[derive(Debug)]
pub struct Peer {
    fd: RawFd,
    /// False once the owning stream is dropped: its descriptor may then belong to another socket.
    open: Mutex<bool>,
    pub address: SocketAddr,
    /// Set once its TLS handshake verified a certificate.
    verified: OnceLock<Verified>,
}

/// What the handshake verified, to verify it again.
#[derive(Debug)]
pub struct Verified {
    /// As presented, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The name an upstream's certificate was checked against (`None` for clients).
    pub server_name: Option<ServerName<'static>>,
}

impl Peer {
    /// Records what the handshake verified; the first record stays.
    pub fn verified(&self, verified: Verified) {
        let _ = self.verified.set(verified);
    }

    pub fn chain(&self) -> Option<&Verified> {
        self.verified.get()
    }

    /// Shuts the socket down both ways. False when it was already closed.
    pub fn sever(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if !*open {
            return false;
        }
        // SAFETY: `open` is true, so the owning stream has not been dropped and `fd` is its
        // socket; the lock keeps it from being dropped until this returns.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) == 0 }
    }
}

/// A TCP stream whose [`Peer`] can sever it. Reads and writes pass through untouched.
#[derive(Debug)]
pub struct Severable {
    inner: TcpStream,
    peer: Arc<Peer>,
}

impl Severable {
    pub fn new(inner: TcpStream, address: SocketAddr) -> Self {
        let peer = Arc::new(Peer {
            fd: inner.as_raw_fd(),
            open: Mutex::new(true),
            address,
            verified: OnceLock::new(),
        });
        Self { inner, peer }
    }

    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl Drop for Severable {
    fn drop(&mut self) {
        // Before `inner` closes the descriptor.
        *self.peer.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

impl AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// The verified connections of one side (a pool, the public listener), held weakly: a
/// connection leaves when its stream is dropped.
#[derive(Debug, Default)]
pub struct Peers {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    peers: Vec<Weak<Peer>>,
    /// Dead entries are swept when the list doubles past this.
    swept_at: usize,
}

impl Peers {
    pub fn add(&self, peer: &Arc<Peer>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.peers.len() >= 2 * entries.swept_at.max(32) {
            entries.peers.retain(|weak| weak.strong_count() > 0);
            entries.swept_at = entries.peers.len();
        }
        entries.peers.push(Arc::downgrade(peer));
    }

    /// The connections open now that carry a verified chain.
    pub fn open(&self) -> Vec<Arc<Peer>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .peers
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|peer| peer.verified.get().is_some())
            .collect()
    }
}

impl Peers {
    /// Judges every open connection's verified chain with `verify`; severs those it refuses and
    /// returns them with the reason.
    pub fn sever_failing(
        &self,
        verify: impl Fn(&Verified) -> Result<(), rustls::Error>,
    ) -> Vec<(Arc<Peer>, rustls::Error)> {
        let mut severed = Vec::new();
        for peer in self.open() {
            let Some(Err(err)) = peer.chain().map(&verify) else {
                continue;
            };
            if peer.sever() {
                severed.push((peer, err));
            }
        }
        severed
    }
}

/// The open client connections with a verified certificate, shared by every generation, and the
/// client verifier of the generation serving now. A handshake that began under an older
/// generation's verifier and ended after a reload is judged again with the current one
/// ([`ClientPeers::admit`]), so a reload's re-check cannot be outrun.
#[derive(Debug, Default)]
pub struct ClientPeers {
    pub peers: Peers,
    current: ArcSwapOption<ClientVerifier>,
}

impl ClientPeers {
    /// The verifier new handshakes use from now on (`None`: no client auth). Set before the open
    /// connections are judged again.
    pub fn set_current(&self, verifier: Option<Arc<ClientVerifier>>) {
        self.current.store(verifier);
    }

    /// Records a connection whose handshake verified `chain` (empty: no certificate, which
    /// `optional` mode lets in) with `accepted_with`; if the client trust changed meanwhile,
    /// judges it under the current trust first.
    pub fn admit(
        &self,
        peer: &Arc<Peer>,
        chain: Vec<CertificateDer<'static>>,
        accepted_with: &Arc<ClientVerifier>,
    ) -> Result<(), rustls::Error> {
        peer.verified(Verified {
            chain,
            server_name: None,
        });
        self.peers.add(peer);
        let current = self.current.load();
        match (current.as_ref(), peer.chain()) {
            (Some(current), Some(verified)) if !Arc::ptr_eq(current, accepted_with) => {
                judge_client(current, verified, UnixTime::now())
            }
            _ => Ok(()),
        }
    }
}

/// The client trust's verdict on a connection's chain: its certificate verifies, or it has none
/// and `verifier` does not require one.
pub fn judge_client(
    verifier: &ClientVerifier,
    verified: &Verified,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    match verified.chain.split_first() {
        Some((leaf, intermediates)) => verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ()),
        None if verifier.client_auth_mandatory() => Err(rustls::Error::NoCertificatesPresented),
        None => Ok(()),
    }
}

/// Waits (blocking, at most `limit`) until every one of `severed` has been dropped by whoever
/// held it, so that once this returns no pool can hand one of them out. Returns how many are
/// still held.
pub fn wait_closed(severed: Vec<Arc<Peer>>, limit: Duration) -> usize {
    let weak: Vec<Weak<Peer>> = severed.iter().map(Arc::downgrade).collect();
    drop(severed);
    let until = Instant::now() + limit;
    loop {
        let held = weak.iter().filter(|w| w.strong_count() > 0).count();
        if held == 0 || Instant::now() >= until {
            return held;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
