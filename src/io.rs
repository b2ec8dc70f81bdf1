//! A byte stream that reports what it reads: the connection watchdog learns when a client sends,
//! and a WebSocket tunnel when either side does. Writes pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Calls `on_read` with every chunk read from `inner`.
pub struct OnRead<T, F> {
    inner: T,
    on_read: F,
}

impl<T, F: FnMut(&[u8])> OnRead<T, F> {
    pub fn new(inner: T, on_read: F) -> Self {
        Self { inner, on_read }
    }
}

impl<T: AsyncRead + Unpin, F: FnMut(&[u8]) + Unpin> AsyncRead for OnRead<T, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            (this.on_read)(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin, F: Unpin> AsyncWrite for OnRead<T, F> {
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
