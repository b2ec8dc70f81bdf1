//! The client's request body on its way upstream, with two jobs besides streaming it:
//! - say when it has been sent in full, so the response timeout measures the upstream's answer,
//!   not the client's upload (a 10-minute upload is fine; a 10-minute wait for headers is not);
//! - give up on a client that stops sending mid-body for longer than `client_header`, so a
//!   stalled upload cannot hold an upstream connection forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// The client sent no body data for too long.
#[derive(Debug, thiserror::Error)]
#[error("no request body data arrived for {}", humantime::format_duration(*.0))]
pub struct BodyStalled(pub Duration);

/// The request body as sent upstream.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    idle: Duration,
    /// Armed while the upstream waits for the next frame; created the first time it has to
    /// wait, so bodies that never keep it waiting (an empty GET, most small posts) cost no timer.
    stall: Option<Pin<Box<Sleep>>>,
    /// Data arrived since the timer was last armed: re-arm it at the next wait.
    rearm: bool,
    /// Fired once the body has been sent in full (or dropped by the client library).
    sent: Option<oneshot::Sender<()>>,
}

impl UpstreamBody {
    /// Wraps `inner`; the receiver completes once the body has been sent.
    pub fn new(inner: Incoming, idle: Duration) -> (Self, oneshot::Receiver<()>) {
        let (sent, sent_rx) = oneshot::channel();
        let mut body = Self {
            stall: None,
            rearm: false,
            inner,
            idle,
            sent: Some(sent),
        };
        // An empty body (a GET) may never be polled: it counts as sent right away.
        if body.inner.is_end_stream() {
            body.finish();
        }
        (body, sent_rx)
    }

    fn finish(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Data arrived: the client's idle clock starts again at the next wait.
                this.rearm = true;
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = Instant::now() + idle;
                let stall = match &mut this.stall {
                    Some(stall) => {
                        if std::mem::take(&mut this.rearm) {
                            stall.as_mut().reset(deadline);
                        }
                        stall
                    }
                    None => this
                        .stall
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(idle).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
