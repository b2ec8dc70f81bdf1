//! Bodies on their way through the proxy.
//!
//! [`UpstreamBody`], the client's request body sent upstream, has two jobs besides streaming it:
//! - say when it has been sent in full, so the response timeout measures the upstream's answer,
//!   not the client's upload (a 10-minute upload is fine; a 10-minute wait for headers is not);
//! - give up on a client that uploads too slowly ([`UploadPace`]), so a stalled or trickled upload
//!   cannot hold an upstream connection forever;
//! - give up on a body larger than its route allows, counted as it arrives (a declared
//!   `Content-Length` over the limit is refused before anything is sent).
//!
//! [`Streamed`], the upstream's response body sent to the client, holds the client connection's
//! turn at the upstreams until it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use crate::balance::InFlight;
use crate::connection::Turn;
use tokio::time::{Instant, Sleep};

/// How slowly a client may upload. The deadline works like a bucket of time: it starts
/// `stall` ahead, each byte received moves it `1 / min_rate` s further, but never more than
/// `stall` ahead of now. A client that stops gets `stall` at most; one that trickles below
/// `min_rate` runs out of credit a little later.
#[derive(Debug, Clone, Copy)]
pub struct UploadPace {
    pub stall: Duration,
    /// Bytes per second.
    pub min_rate: u64,
}

/// Why the proxy gave up on the client's request body.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum UploadFailed {
    #[error("the client stalled: no request body data arrived for {}", humantime::format_duration(*.0))]
    Stopped(Duration),
    #[error(
        "the client stalled: the request body arrived slower than {0} bytes/s ([limits] min_upload_rate)"
    )]
    TooSlow(u64),
    #[error("the request body is larger than the route allows ({0} bytes, max_request_body)")]
    TooLarge(u64),
}

/// The request body as sent upstream.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None`: no body at all (a health check, a retried GET).
    inner: Option<Incoming>,
    /// Hands the client's body back, untouched, when the upstream never asked for any of it (the
    /// connect failed): the request may then go to another endpoint. Never a replay: a body of
    /// which a single frame was polled is not handed back.
    reclaim: Option<oneshot::Sender<Incoming>>,
    pace: UploadPace,
    /// The route's `max_request_body`, and the bytes received so far.
    max_bytes: u64,
    received: u64,
    /// The upload deadline; created the first time the upstream has to wait, so bodies that
    /// never keep it waiting (an empty GET, most small posts) cost no timer.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes received since the deadline was last moved.
    credit: u64,
    /// When the last data arrived: decides between "stopped" (nothing for `stall`) and "too
    /// slow" (data kept coming, below `min_rate`).
    last_data: Option<Instant>,
    /// Fired once the body has been sent in full (or dropped by the client library).
    sent: Option<oneshot::Sender<()>>,
    /// Shared with [`UploadWatch`]: whether the upload moves at all, and why it stopped.
    state: Arc<UploadState>,
    /// When the last frame was handed over: the time until the next poll is the upstream's
    /// (it was not reading), not the client's, and does not count against the client.
    handed_over: Option<Instant>,
}

#[derive(Debug, Default)]
struct UploadState {
    polls: AtomicU64,
    /// The last poll found no data from the client: the upstream is waiting for the client, not
    /// the other way round, so a pause in polls is not the upstream's doing.
    waiting_for_client: AtomicBool,
    /// Set when the upload was given up on: an HTTP/2 upstream reports a failed body only as a
    /// reset stream, so the request path asks here why.
    failed: std::sync::OnceLock<UploadFailed>,
}

/// Watches an upload from the request path: done once the body has been sent.
#[derive(Debug)]
pub struct UploadWatch {
    sent: oneshot::Receiver<()>,
    state: Arc<UploadState>,
}

impl UploadWatch {
    /// Why the client's upload was given up on, if it was.
    pub fn failed(&self) -> Option<UploadFailed> {
        self.state.failed.get().copied()
    }

    /// Completes once the body has been sent; fails when, with data to take, it has not been
    /// polled for `limit` (between `limit` and twice that): the upstream stopped reading it. A
    /// client that stops sending is the client's doing, caught by [`UploadPace`], whose timer
    /// wakes the poller, whichever of the two clocks is shorter.
    pub async fn sent(&mut self, limit: Duration) -> Result<(), Duration> {
        // An empty body (a GET) is sent before anything waits: no timer for it.
        if self.sent.try_recv().is_ok() {
            return Ok(());
        }
        let mut seen = self.state.polls.load(Relaxed);
        loop {
            tokio::select! {
                _ = &mut self.sent => return Ok(()),
                () = tokio::time::sleep(limit) => {
                    let now = self.state.polls.load(Relaxed);
                    if now == seen && !self.state.waiting_for_client.load(Relaxed) {
                        return Err(limit);
                    }
                    seen = now;
                }
            }
        }
    }
}

/// Where a body that was never polled comes back ([`UpstreamBody::reclaimable`]).
#[derive(Debug)]
pub struct Reclaim(oneshot::Receiver<Incoming>);

impl Reclaim {
    /// The client's body, if the upstream never polled it and the request has been dropped.
    pub fn take(mut self) -> Option<Incoming> {
        self.0.try_recv().ok()
    }
}

impl UpstreamBody {
    /// Wraps `inner` (`None`: no body), which may bring at most `max_bytes`, with the watch that
    /// tells when it has been sent.
    pub fn new(inner: Option<Incoming>, pace: UploadPace, max_bytes: u64) -> (Self, UploadWatch) {
        let (sent, sent_rx) = oneshot::channel();
        let state = Arc::new(UploadState::default());
        let mut body = Self {
            inner,
            reclaim: None,
            pace,
            max_bytes,
            received: 0,
            deadline: None,
            credit: 0,
            last_data: None,
            sent: Some(sent),
            state: state.clone(),
            handed_over: None,
        };
        // An empty body (a GET) may never be polled: it counts as sent right away.
        if body.is_end_stream() {
            body.finish();
        }
        let watch = UploadWatch {
            sent: sent_rx,
            state,
        };
        (body, watch)
    }

    /// No body, for requests the proxy makes itself.
    pub fn empty() -> Self {
        Self::new(
            None,
            UploadPace {
                stall: Duration::from_secs(1),
                min_rate: 1,
            },
            0,
        )
        .0
    }

    /// The body comes back through the returned [`Reclaim`] if it is dropped unpolled.
    pub fn reclaimable(&mut self) -> Reclaim {
        let (tx, rx) = oneshot::channel();
        self.reclaim = Some(tx);
        Reclaim(rx)
    }

    /// Records why the upload was given up on, and ends the body with it.
    fn give_up(&mut self, why: UploadFailed) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self.state.failed.set(why);
        Poll::Ready(Some(Err(why.into())))
    }

    fn finish(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }

    /// Moves the deadline by the credit earned and by the time the upstream took before asking
    /// for more, capped at `stall` from now.
    fn advance(&mut self, deadline: &mut Pin<Box<Sleep>>) {
        let now = Instant::now();
        let paused = self
            .handed_over
            .take()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        if self.credit == 0 && paused.is_zero() {
            return;
        }
        let earned = Duration::from_secs_f64(self.credit as f64 / self.pace.min_rate.max(1) as f64);
        self.credit = 0;
        let moved = (deadline.deadline() + earned + paused).min(now + self.pace.stall);
        deadline.as_mut().reset(moved);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        this.state.polls.fetch_add(1, Relaxed);
        let Some(inner) = this.inner.as_mut() else {
            this.finish();
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                this.received += size;
                if this.received > this.max_bytes {
                    return this.give_up(UploadFailed::TooLarge(this.max_bytes));
                }
                this.credit += size;
                if size > 0 {
                    this.last_data = Some(Instant::now());
                }
                if inner.is_end_stream() {
                    this.finish();
                }
                this.state.waiting_for_client.store(false, Relaxed);
                this.handed_over = Some(Instant::now());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let mut deadline = match this.deadline.take() {
                    Some(deadline) => deadline,
                    None => {
                        this.credit = 0;
                        Box::pin(tokio::time::sleep(this.pace.stall))
                    }
                };
                this.advance(&mut deadline);
                let expired = deadline.as_mut().poll(cx).is_ready();
                this.deadline = Some(deadline);
                if expired {
                    let silent = this
                        .last_data
                        .is_none_or(|at| at.elapsed() >= this.pace.stall);
                    this.give_up(if silent {
                        UploadFailed::Stopped(this.pace.stall)
                    } else {
                        UploadFailed::TooSlow(this.pace.min_rate)
                    })
                } else {
                    this.state.waiting_for_client.store(true, Relaxed);
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.state.polls.load(Relaxed) == 0
            && let Some(reclaim) = self.reclaim.take()
            && let Some(inner) = self.inner.take()
        {
            let _ = reclaim.send(inner);
        }
    }
}

/// The upstream stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body data for {}", humantime::format_duration(*.0))]
pub struct UpstreamStalled(pub Duration);

/// The upstream's response body, holding the client connection's turn at the upstreams (see
/// [`crate::connection::ConnectionInfo::upstream_turn`]) until it ends or is dropped. An upstream
/// that sends nothing for `idle` (nginx's `proxy_read_timeout`) has the response aborted, so a
/// stuck backend cannot hold a client connection forever.
#[derive(Debug)]
pub struct Streamed {
    inner: Incoming,
    turn: Option<Turn>,
    /// Counts the request at its endpoint until the body ends.
    in_flight: Option<InFlight>,
    idle: Duration,
    /// Armed while the client waits for the next frame; created the first time it has to wait.
    stall: Option<Pin<Box<Sleep>>>,
    rearm: bool,
    /// Where the response comes from, for the log line when it stalls.
    route: Arc<str>,
}

impl Streamed {
    pub fn new(
        inner: Incoming,
        turn: Option<Turn>,
        in_flight: Option<InFlight>,
        idle: Duration,
        route: Arc<str>,
    ) -> Self {
        Self {
            inner,
            turn,
            in_flight,
            idle,
            stall: None,
            rearm: false,
            route,
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = Instant::now() + this.idle;
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
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.turn = None;
                this.in_flight = None;
                let stalled = UpstreamStalled(this.idle);
                tracing::warn!(route = %this.route, reason = %stalled,
                    "response aborted ([timeouts] response applies between body frames too)");
                Poll::Ready(Some(Err(stalled.into())))
            }
            polled => {
                this.rearm = true;
                if this.inner.is_end_stream() {
                    // The upstream connection is free again: so is the turn.
                    this.turn = None;
                    this.in_flight = None;
                }
                polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
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
