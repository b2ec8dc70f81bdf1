//! Connection threads for `[server] workers` > 1: each runs a single-threaded tokio runtime and
//! serves the connections the accept loop hands it, so a connection and the tasks it spawns
//! (its watchdog, HTTP/2 streams, new upstream connections) stay on one thread. tokio's
//! work-stealing runtime, with two workers, cost 35-50 % more CPU per proxied request than one
//! thread on the 2-core benchmark machine (`bench/scaling.sh`): tasks woke on the other core and
//! the workers parked and unparked each other. This is how nginx and HAProxy scale too: a
//! connection belongs to one worker for its life. What the threads would otherwise share per
//! request, the upstream pools, is kept per thread: see [`slot`].

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Slots that per-thread state built from now on has room for: one per worker thread, plus slot
/// 0 for every other thread.
static SLOTS: AtomicUsize = AtomicUsize::new(1);

/// Makes room for `count` worker threads in the per-thread state built from now on; called
/// before the first generation is built.
pub fn reserve(count: usize) {
    SLOTS.fetch_max(count + 1, Relaxed);
}

/// How many slots per-thread state should have.
pub fn slots() -> usize {
    SLOTS.load(Relaxed)
}

/// The calling thread's slot: N + 1 on worker N, 0 on any other thread. State kept per slot is
/// only ever used by its own thread (slot 0 by the main runtime and whatever else runs there).
pub fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// The connection threads; dropping it stops them, cancelling the connections they still serve.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with `Workers`: each thread then leaves its runtime, which drops its tasks.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` threads, named `trustgate-worker-N`.
    pub fn start(count: usize) -> std::io::Result<Self> {
        reserve(count);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for n in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("trustgate-worker-{n}"))
                .spawn(move || {
                    SLOT.with(|slot| slot.set(n + 1));
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// Runs `connection` on the next thread in turn.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let turn = self.next.fetch_add(1, Relaxed) % self.handles.len();
        self.handles[turn].spawn(connection);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn connections_take_turns_on_the_threads_and_stop_with_them() {
        let workers = Workers::start(2).unwrap();
        let (seen, names) = mpsc::channel();
        for _ in 0..4 {
            let seen = seen.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                seen.send((name, slot())).unwrap();
            });
        }
        let mut names: Vec<_> = (0..4)
            .map(|_| {
                let (name, slot) = names.recv_timeout(Duration::from_secs(5)).unwrap();
                (name.unwrap(), slot)
            })
            .collect();
        names.sort();
        let worker = |n: usize| (format!("trustgate-worker-{n}"), n + 1);
        assert_eq!(names, [worker(0), worker(0), worker(1), worker(1)]);
        assert_eq!(slot(), 0, "the test's own thread is no worker");
        assert!(slots() >= 3);

        // A connection still open when the workers stop is dropped, not leaked.
        struct Dropped(mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (dropped, was_dropped) = mpsc::channel();
        let (started, has_started) = mpsc::channel();
        workers.spawn(async move {
            let _guard = Dropped(dropped);
            started.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        has_started.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(workers);
        was_dropped.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
