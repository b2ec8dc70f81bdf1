//! The watchdog of one client connection after the TLS handshake: it closes the connection when
//! the client stops doing its part.
//!
//! hyper bounds neither the bytes before the first request (its protocol sniffing has no timer)
//! nor an HTTP/2 connection without streams, and its HTTP/1.1 header timer also runs while a
//! keep-alive connection is idle. So the watchdog ([`supervise`]) owns every connection-level
//! clock, from three signals:
//! - [`Activity::on_read`] sees every byte read from the client;
//! - [`InFlight`] counts requests from the handler's start to the end of the response body;
//! - [`Tracked`] response bodies record since when each waits for the client to take more.
//!
//! The rules, checked in this order:
//! - a response the client has not taken data from for `client_send` is abandoned: its body
//!   (with the upstream connection behind it) is dropped at once, and a connection whose every
//!   in-flight request is abandoned closes;
//! - the TLS handshake, the bytes before the first request and every HTTP/1.1 request head must
//!   arrive within `client_header` of their first byte (HTTP/2: of the connection's start);
//! - a connection with no request in flight closes gracefully after `idle`.
//!
//! The watchdog runs as a task of its own and is woken only when a signal brings a deadline
//! before its next look ([`Activity::armed`]): a keep-alive request, which moves the idle and
//! head clocks later, wakes nothing. While requests are in flight it looks at least every
//! `min(client_send / 2, client_header)`, so the head clock that the next request starts always
//! falls after that look.

use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connection-level clocks the watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub client_header: Duration,
    pub idle: Duration,
    pub client_send: Duration,
}

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No request in flight for `idle`: close gracefully (HTTP/2 GOAWAY).
    Idle,
    /// The first request or a request head did not arrive within `client_header`.
    SlowHead,
    /// Every in-flight response waited for the client to read for `client_send`.
    NotReading,
    /// The client cancelled more requests than it let finish, past [`RESET_BUDGET`] (HTTP/2
    /// rapid reset: each cancel can cost an upstream connection).
    Resets,
}

/// Requests a connection may cancel before their response (HTTP/2 `RST_STREAM`, a hang-up)
/// beyond those it let finish.
pub const RESET_BUDGET: u64 = 100;

/// The shared state of one connection; times are milliseconds since `start`.
pub struct Activity {
    start: Instant,
    clocks: Clocks,
    /// When the watchdog looks next; `u64::MAX` while it decides. A signal whose deadline comes
    /// earlier wakes it. Stored with `SeqCst` after the state it judged was read, and read
    /// with `SeqCst` after a signal changed the state, so no change goes unseen.
    armed: AtomicU64,
    in_flight: AtomicUsize,
    abandoned: AtomicUsize,
    /// Requests that got their response, and those the client cancelled before it.
    answered: AtomicU64,
    cancelled: AtomicU64,
    idle_since: AtomicU64,
    /// When the first byte of the next HTTP/1.1 request head arrived, plus one (0: none yet).
    head_started: AtomicU64,
    bytes_read: AtomicU64,
    /// HTTP/2 (by ALPN or by its preface): streams, not heads, mark activity.
    h2: AtomicBool,
    /// Responses whose bodies are being sent.
    sending: Mutex<Vec<Weak<dyn Sending>>>,
    changed: Notify,
}

impl Activity {
    /// A connection accepted at `start`, watched by `clocks`. The handshake and everything up
    /// to the first request count as the first head.
    pub fn new(start: Instant, clocks: Clocks) -> Arc<Self> {
        Arc::new(Self {
            start,
            clocks,
            armed: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(1),
            bytes_read: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            sending: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// A request is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.load(SeqCst) > 0
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Wakes the watchdog if `deadline` (ms) comes before its next look.
    fn wake_by(&self, deadline: u64) {
        if deadline < self.armed.load(SeqCst) {
            self.changed.notify_one();
        }
    }

    /// Every chunk read from the client ([`crate::io::OnRead`] reports them).
    pub fn on_read(&self, data: &[u8]) {
        let before = self.bytes_read.fetch_add(data.len() as u64, Relaxed);
        if before == 0 && data.starts_with(b"PRI * HTTP/2.0") {
            self.h2.store(true, Relaxed);
        }
        if self.h2.load(Relaxed) {
            // The preface is in: from now on only streams count, and idleness starts.
            if before < 24 && before + data.len() as u64 >= 24 {
                self.idle_since.store(self.now(), Relaxed);
                self.head_started.store(0, Relaxed);
                self.changed.notify_one();
            }
        } else if self.in_flight.load(SeqCst) == 0 && self.head_started.load(Relaxed) == 0 {
            let now = self.now();
            self.head_started.store(now + 1, SeqCst);
            self.wake_by(now + ms(self.clocks.client_header));
        }
    }

    /// A request reached the handler; the guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, SeqCst);
        self.head_started.store(0, Relaxed);
        InFlight {
            activity: self.clone(),
            answered: false,
        }
    }

    fn over_reset_budget(&self) -> bool {
        self.cancelled.load(Relaxed) > self.answered.load(Relaxed) + RESET_BUDGET
    }

    fn register(&self, sending: Weak<dyn Sending>) {
        let mut list = self.sending.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() >= 32 {
            list.retain(|s| s.strong_count() > 0);
        }
        list.push(sending);
    }

    /// Abandons responses that waited on the client for `client_send`; returns the next time to
    /// look (in ms) while requests are in flight.
    fn abandon_stalled(&self, now: u64) -> u64 {
        let client_send = ms(self.clocks.client_send);
        let look_every = (client_send / 2).min(ms(self.clocks.client_header)).max(1);
        let mut next = now + look_every;
        let mut list = self.sending.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|weak| {
            let Some(sending) = weak.upgrade() else {
                return false;
            };
            let since = sending.waiting_since();
            if since == 0 {
                return true;
            }
            let deadline = since - 1 + client_send;
            if deadline <= now {
                if sending.abandon(&self.abandoned) {
                    tracing::info!(
                        waited = %humantime::format_duration(Duration::from_millis(client_send)),
                        "the client stopped reading a response ([timeouts] client_send); \
                         abandoning it and its upstream exchange"
                    );
                }
                false
            } else {
                next = next.min(deadline);
                true
            }
        });
        next
    }
}

/// Counts one request as in flight until dropped (with the response body, or with the handler's
/// future when the client resets the stream first).
pub struct InFlight {
    activity: Arc<Activity>,
    /// The handler produced a response: a drop before that is the client cancelling.
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        if !self.answered {
            activity.cancelled.fetch_add(1, Relaxed);
            if activity.over_reset_budget() {
                activity.changed.notify_one();
            }
        }
        // `idle_since` first: a watchdog that sees no request in flight must see when that began.
        let now = activity.now();
        activity.idle_since.store(now, SeqCst);
        if activity.in_flight.fetch_sub(1, SeqCst) == 1 {
            activity.wake_by(now + ms(activity.clocks.idle));
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Watches the connection until one of its rules ends it; never returns while it may go on.
pub async fn supervise(activity: &Activity) -> Verdict {
    let clocks = activity.clocks;
    // One timer for the connection's life, moved to each new deadline: tokio only records a later
    // deadline (the common case, as each request pushes the idle clock on), where a new `Sleep`
    // per wake-up was a timer-wheel insertion and removal per request.
    let timer = tokio::time::sleep_until(activity.start.into());
    tokio::pin!(timer);
    loop {
        // Every signal from here on wakes the watchdog again, until it has armed its next look.
        activity.armed.store(u64::MAX, SeqCst);
        if activity.over_reset_budget() {
            return Verdict::Resets;
        }
        let now = activity.now();
        let in_flight = activity.in_flight.load(SeqCst);
        let (deadline, verdict) = if in_flight > 0 {
            let next = activity.abandon_stalled(now);
            if activity.abandoned.load(SeqCst) >= in_flight {
                return Verdict::NotReading;
            }
            (next, None)
        } else {
            match activity.head_started.load(SeqCst) {
                0 => (
                    activity.idle_since.load(SeqCst) + ms(clocks.idle),
                    Some(Verdict::Idle),
                ),
                started => (
                    started - 1 + ms(clocks.client_header),
                    Some(Verdict::SlowHead),
                ),
            }
        };
        if deadline <= now
            && let Some(verdict) = verdict
        {
            return verdict;
        }
        let look = deadline.max(now + 1);
        activity.armed.store(look, SeqCst);
        let wake = (activity.start + Duration::from_millis(look)).into();
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            () = &mut timer => {}
            () = activity.changed.notified() => {}
        }
    }
}

/// A response body being sent, as the watchdog sees it.
trait Sending: Send + Sync {
    /// Since when (ms + 1) it waits for the client to take data; 0 while it is not waiting.
    fn waiting_since(&self) -> u64;
    /// Drops the body (and the upstream exchange behind it) and counts it in `abandoned`;
    /// false if already abandoned.
    fn abandon(&self, abandoned: &AtomicUsize) -> bool;
}

struct Shared<B> {
    body: Mutex<Option<B>>,
    waiting_since: AtomicU64,
}

impl<B: Send> Sending for Shared<B> {
    fn waiting_since(&self) -> u64 {
        self.waiting_since.load(Relaxed)
    }

    fn abandon(&self, abandoned: &AtomicUsize) -> bool {
        // Counted under the lock that `Tracked::drop` takes to uncount it: the two never cross.
        let mut body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        let taken = body.take();
        if taken.is_some() {
            abandoned.fetch_add(1, SeqCst);
        }
        drop(body);
        taken.is_some()
    }
}

/// The response was abandoned because the client stopped reading it.
#[derive(Debug, thiserror::Error)]
#[error("the client stopped reading the response")]
pub struct Abandoned;

/// A response body on its way to the client: keeps its request in flight until it ends, and lets
/// the watchdog see and end a response the client does not read.
pub struct Tracked<B> {
    /// `None` for a body that is empty from the start: there is nothing to wait for.
    shared: Option<Arc<Shared<B>>>,
    in_flight: InFlight,
}

impl<B> Tracked<B>
where
    B: Body + Send + Unpin + 'static,
{
    pub fn new(body: B, mut in_flight: InFlight) -> Self {
        in_flight.answered = true;
        in_flight.activity.answered.fetch_add(1, Relaxed);
        if body.is_end_stream() {
            return Self {
                shared: None,
                in_flight,
            };
        }
        let activity = &in_flight.activity;
        let now = activity.now();
        let shared = Arc::new(Shared {
            body: Mutex::new(Some(body)),
            // Waiting from the start: an HTTP/2 client with a zero window never lets it be polled.
            waiting_since: AtomicU64::new(now + 1),
        });
        let weak: Weak<dyn Sending> = Arc::downgrade(&(shared.clone() as Arc<dyn Sending>));
        activity.register(weak);
        activity.wake_by(now + ms(activity.clocks.client_send));
        Self {
            shared: Some(shared),
            in_flight,
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        shared.waiting_since.store(0, Relaxed);
        let mut body = shared.body.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(Abandoned.into())));
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled
            && !inner.is_end_stream()
        {
            shared
                .waiting_since
                .store(this.in_flight.activity.now() + 1, Relaxed);
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => shared
                .body
                .lock()
                .map(|b| b.as_ref().is_some_and(B::is_end_stream))
                .unwrap_or(false),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.shared {
            None => SizeHint::with_exact(0),
            Some(shared) => shared
                .body
                .lock()
                .ok()
                .and_then(|b| b.as_ref().map(B::size_hint))
                .unwrap_or_default(),
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        // Taken under the lock `abandon` counts under: once dropped here, it is never counted.
        let abandoned = self.shared.as_ref().is_some_and(|shared| {
            shared
                .body
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .is_none()
        });
        if abandoned {
            self.in_flight.activity.abandoned.fetch_sub(1, SeqCst);
        }
    }
}
