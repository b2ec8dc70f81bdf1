//! Logging: `[log] access` turns the access lines off and on (by reload too) while refusals are
//! still logged; its config errors name the key; and the process's log writer drops and counts
//! lines when its sink stalls instead of blocking the caller.

mod common;

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use trustgate::Config;
use trustgate::reload::Outcome;

const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn access_lines_are_on_by_default() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &backend)).await;

    let got = get(&client(&pki, false), &proxy.url("/api/by-default")).await;
    assert_eq!(got.status, StatusCode::OK);
    let line = logs()
        .line_with(&["trustgate::access", "path=/api/by-default"])
        .await;
    assert!(line.contains("status=200"), "{line}");
    assert!(line.contains("route=/api"), "{line}");
}

#[tokio::test]
async fn access_false_silences_access_lines_only_and_a_reload_turns_them_back_on() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    // Reloads only when told: the watch would race this test's own reload.
    let text = config_text(
        "watch = false",
        "",
        &format!(
            "[log]\naccess = false\n\n{}",
            route_to("/api", "backend-api", &backend)
        ),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let client = client(&pki, false);

    let got = get(&client, &proxy.url("/api/quiet")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(backend.seen().len(), 1, "the request was proxied");
    let got = get(&client, &proxy.url("/unrouted-quiet")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    // Refusals are still logged...
    let refused = logs().line_with(&["request refused", "status=404"]).await;
    assert!(refused.contains("route=-"), "{refused}");
    // ...and the access line, written before the response head leaves, is not.
    let text_now = logs().text();
    for path in ["path=/api/quiet", "path=/unrouted-quiet"] {
        assert!(
            !text_now
                .lines()
                .any(|l| l.contains("trustgate::access") && l.contains(path)),
            "an access line for {path} under access = false:\n{text_now}"
        );
    }

    write(
        &proxy.config_path,
        &text.replace("access = false", "access = true"),
    );
    assert!(matches!(proxy.reload().await, Outcome::Applied { .. }));
    let got = get(&client, &proxy.url("/api/loud")).await;
    assert_eq!(got.status, StatusCode::OK);
    let line = logs()
        .line_with(&["trustgate::access", "path=/api/loud"])
        .await;
    assert!(line.contains("status=200"), "{line}");
}

/// The problems of `text` loaded as a config file next to `pki`'s files.
fn problems(pki: &TestPki, text: &str) -> Vec<trustgate::config::Problem> {
    let path = pki.path("logging.toml");
    match Config::from_toml(&path, text) {
        Ok(_) => panic!("expected problems, the config loaded:\n{text}"),
        Err(e) => e.problems,
    }
}

#[test]
fn log_table_errors_name_the_file_line_and_key() {
    let pki = TestPki::new();
    let route = route_at(
        "/api",
        "https://backend-api:8443/",
        "127.0.0.1:9".parse().unwrap(),
    );
    let with_log = |log: &str| config_text("", "", &format!("[log]\n{log}\n\n{route}"));
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.starts_with(needle))
            .expect("the line is there")
            + 1
    };

    for (log, key, reason) in [
        ("access = \"yes\"", "log.access", "bool"),
        ("acess = false", "log.acess", "unknown field"),
    ] {
        let text = with_log(log);
        let problems = problems(&pki, &text);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let problem = &problems[0];
        assert_eq!(problem.file, pki.path("logging.toml"), "{problem}");
        assert_eq!(problem.line, Some(line_of(&text, log)), "{problem}");
        assert_eq!(problem.key.as_deref(), Some(key), "{problem}");
        assert!(problem.reason.contains(reason), "{problem}");
    }

    // The control: both values load, and the table may be left out.
    let path = pki.path("logging.toml");
    for (text, access) in [
        (with_log("access = false"), false),
        (with_log("access = true"), true),
        (config_text("", "", &route), true),
    ] {
        let config = Config::from_toml(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.log.access, access, "{text}");
    }
}

/// A log sink that takes its first line, then blocks until released (10 s at most), recording
/// what it was given.
#[derive(Clone)]
struct StalledSink {
    released: Arc<(Mutex<bool>, Condvar)>,
    entered: mpsc::SyncSender<()>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl StalledSink {
    fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

impl Write for StalledSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.entered.try_send(());
        let (lock, condvar) = &*self.released;
        let guard = lock.lock().unwrap();
        let _ = condvar
            .wait_timeout_while(guard, Duration::from_secs(10), |released| !*released)
            .unwrap();
        self.written.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stalled_log_sink_drops_and_counts_lines_and_never_blocks_the_caller() {
    const BUFFERED: usize = 4;
    const LINES: usize = 100;
    let (entered, entered_rx) = mpsc::sync_channel(LINES);
    let sink = StalledSink {
        released: Arc::default(),
        entered,
        written: Arc::default(),
    };
    // The first writer this test binary builds (tests/common's capture does not use one), so it
    // is the one log_lines_dropped() reads.
    let before = trustgate::logging::log_lines_dropped();
    let (writer, guard) = trustgate::logging::writer(sink.clone(), BUFFERED);
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(writer)
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);

    // Line 0 reaches the sink and stalls it; the next BUFFERED lines fill the buffer and the
    // rest find it full. Logged on another thread so a blocking writer fails the test instead
    // of hanging it.
    let (done, done_rx) = mpsc::channel();
    let logger = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(target: "trustgate::access", line = 0usize, "logged");
            entered_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the sink takes the first line");
            let started = Instant::now();
            for line in 1..LINES {
                tracing::info!(target: "trustgate::access", line, "logged");
            }
            let _ = done.send(started.elapsed());
        });
    });
    let took = done_rx.recv_timeout(Duration::from_secs(10));
    sink.release();
    let took = took.expect("logging into a stalled sink did not return within 10 s: it blocks");
    logger.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "{} lines took {took:?} against a stalled sink",
        LINES - 1
    );

    let dropped = trustgate::logging::log_lines_dropped() - before;
    assert_eq!(dropped, (LINES - 1 - BUFFERED) as u64);

    // Dropping the guard writes out what was buffered, as at process exit.
    drop(guard);
    let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 1 + BUFFERED, "{written}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(&format!("line={i}")), "{line}");
        assert!(line.contains("trustgate::access"), "{line}");
    }
}
