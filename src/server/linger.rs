//! Lingering close for client connections the proxy ends while the client is still sending: a
//! head too large (431), a malformed request (400), a response sent before its upload was read.
//!
//! A socket closed with unread data in its receive queue, or that receives data after it was
//! closed, answers with a reset. The reset throws away whatever of the response the kernel has
//! not yet sent, and the client's next write fails, so a client busy uploading often never reads
//! why it was refused. Like nginx's `lingering_close`, a socket the proxy closes before the
//! client did is shut for writing (the response goes out, then a FIN) and drained until the
//! client closes too, for a bounded time and size. A lingering socket still holds its
//! connection's [`Admission`]: it counts against `max_connections` and the per-IP limit until
//! its descriptor is closed. A connection given up on for what its client did (a handshake that
//! fails or stalls, a stalled head, responses not read, rapid reset) is severed instead
//! ([`Peer::sever`]): shut both ways, its drain ends at the first read that finds nothing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::admission::Admission;
use crate::live::{Peer, Severable};

/// Longest a closed connection is drained, whatever the client keeps sending.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes drained from one closed connection; past it the socket is closed (reset).
pub const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// A client's TCP stream that, dropped before the client closed its side, lingers (see the
/// module doc). Reads and writes pass through untouched.
#[derive(Debug)]
pub struct Lingering {
    /// Taken only by `drop`.
    stream: Option<Severable>,
    peer: Arc<Peer>,
    admission: Arc<Admission>,
    /// The client closed its side (a read returned end of stream).
    client_closed: bool,
    /// Our side is shut for writing already (TLS sent its close_notify, then a FIN).
    write_shut: bool,
}

impl Lingering {
    pub fn new(stream: Severable, admission: Arc<Admission>) -> Self {
        Self {
            admission,
            peer: stream.peer().clone(),
            stream: Some(stream),
            client_closed: false,
            write_shut: false,
        }
    }

    /// The connection's peer, for closing it from elsewhere.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    fn stream(&mut self) -> io::Result<Pin<&mut Severable>> {
        match &mut self.stream {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.client_closed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(stream, self.write_shut, self.admission.clone()));
        }
    }
}

/// Sends a FIN after what is queued (unless one went already), then reads and drops what the
/// client sends until it closes too, or [`LINGER_TIME`] or [`LINGER_BYTES`] is reached.
async fn drain(mut stream: Severable, write_shut: bool, _admission: Arc<Admission>) {
    if !write_shut {
        let _ = stream.shutdown().await;
    }
    let deadline = tokio::time::sleep(LINGER_TIME);
    tokio::pin!(deadline);
    // Small: every connection may linger at once.
    let mut buf = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        let room = left.min(buf.len());
        tokio::select! {
            read = stream.read(&mut buf[..room]) => match read {
                Ok(read) if read > 0 => left -= read,
                _ => break,
            },
            () = &mut deadline => break,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = this.stream()?.poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            this.client_closed = true;
        }
        read
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let shut = this.stream()?.poll_shutdown(cx);
        this.write_shut |= matches!(shut, Poll::Ready(Ok(())));
        shut
    }
}
