//! Logging: every line, access log included, goes through a bounded, lossy, non-blocking writer
//! (tracing-appender), so a slow stderr or log pipe never stalls a tokio worker. A line that
//! finds the buffer full is dropped and counted; [`log_lines_dropped`] reads that count for
//! `/metrics`.

use std::io::Write;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the process's log writer holds while its sink is slow; more are dropped and counted.
pub const BUFFERED_LINES: usize = 8192;

/// The drop counter of the process's log writer: the first one [`writer`] built.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the log sink did not keep up (0 before logging is set up).
/// Published as `trustgate_log_lines_dropped_total`.
pub fn log_lines_dropped() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// A lossy writer to `sink` that buffers up to `lines` lines and never blocks its caller: a
/// background thread writes them out. The first writer built in the process is the one
/// [`log_lines_dropped`] counts for. Keep the guard alive: dropping it flushes what is
/// buffered (waiting about a second at most) and stops the thread.
pub fn writer<W: Write + Send + 'static>(sink: W, lines: usize) -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(lines)
        .thread_name("trustgate-log")
        .finish(sink);
    // tracing-appender counts each line it drops (one event is one write), atomically.
    let _ = DROPPED.set(writer.error_counter());
    (writer, guard)
}

/// Installs the process's subscriber: `RUST_LOG` (default `info`), text or JSON, to stderr
/// through [`writer`]. Hold the guard until the process ends, or the last lines are lost.
pub fn init(json: bool) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (stderr, guard) = writer(std::io::stderr(), BUFFERED_LINES);
    // Colours only for a person at a terminal, never into `docker logs` or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}
