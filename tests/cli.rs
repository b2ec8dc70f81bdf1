//! The `trustgate` binary itself: `check` prints a summary or every problem with exit code 1,
//! `run` serves real traffic and exits 0 on SIGTERM, `demo` brings up a working trust chain
//! without leaving a CA private key on disk, and a missing config file fails cleanly.
//!
//! Every child process is owned by a [`Spawned`] guard that kills it if the test fails, and every
//! wait is a bounded retry loop.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};

const BIN: &str = env!("CARGO_BIN_EXE_trustgate");

/// A running `trustgate` whose stderr goes to a file; killed on drop unless it already exited.
struct Spawned {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Spawned {
    /// Starts `trustgate args...` with stdout and stderr in files under `dir` (or stdout piped,
    /// when `pipe_stdout`), logging at info level.
    fn start(dir: &Path, args: &[&str], pipe_stdout: bool) -> Self {
        let name = args[0];
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(if pipe_stdout {
                Stdio::piped()
            } else {
                File::create(&stdout).unwrap().into()
            })
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status, if the process has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `within` for the process to exit; panics (and the drop kills it) otherwise.
    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "trustgate did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM with `kill`, as `docker stop` would.
    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `trustgate args...` to completion (at most 30 s): (exit status, stdout, stderr).
fn run_to_end(dir: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut spawned = Spawned::start(dir, args, false);
    let status = spawned.wait(Duration::from_secs(30));
    (status, spawned.stdout(), spawned.stderr())
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Connects to `addr` every 50 ms for at most 10 s, until the process listens there.
async fn wait_listening(spawned: &mut Spawned, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Some(status) = spawned.exited() {
            panic!(
                "trustgate exited ({status}) before listening on {addr}; stderr:\n{}",
                spawned.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "trustgate is not listening on {addr} after 10s; stderr:\n{}",
            spawned.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config_text(listen: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\ncert = \"public/fullchain.pem\"\nkey = \"public/privkey.pem\"\n\
         shutdown_grace = \"5s\"\n\n[upstream_tls]\nca = \"ca.pem\"\n\n{routes}"
    )
}

#[test]
fn check_prints_the_summary_of_a_good_config() {
    let pki = TestPki::new();
    let path = pki.path("good.toml");
    write(
        &path,
        &config_text(
            "127.0.0.1:8443",
            "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:8443/\"\n\n\
             [[route]]\nprefix = \"/reports\"\nupstream = \"https://backend-reports:8443/\"\n\
             address = \"127.0.0.1:9443\"\npreserve_host = false\n",
        ),
    );
    let (status, stdout, stderr) = run_to_end(pki.dir.path(), &["check", "-c", path_str(&path)]);
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        format!("config {}: OK", path.display()),
        format!(
            "listen 127.0.0.1:8443 with {} (CN=localhost, 1 certificate(s) in the chain)",
            pki.path("public/fullchain.pem").display()
        ),
        "  CN=Test Internal Root".to_owned(),
        "  /api -> https://backend-api:8443/  verified name \"backend-api\"  endpoints from DNS \
         every 5s  least_pending retries 2 fails 3 within 10s  host preserved"
            .to_owned(),
        "  /reports -> https://backend-reports:8443/  verified name \"backend-reports\"  \
         at 127.0.0.1:9443  host rewritten"
            .to_owned(),
        "timeouts: connect 5s, response 1m, client header 10s, idle 1m, client send 1m, \
         tunnel idle 1h; shutdown grace 5s"
            .to_owned(),
        "limits: 10000 connections (256 per IP), 100 HTTP/2 streams and 32 upstream requests \
         per connection (256 per IP), uploads at least 1024 bytes/s and at most 1073741824 bytes"
            .to_owned(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "stdout lacks the line {expected:?}:\n{stdout}"
        );
    }
    // The internal root is the only trust anchor listed.
    let anchors = lines
        .iter()
        .skip_while(|line| !line.starts_with("upstream trust anchors"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .collect::<Vec<_>>();
    assert_eq!(anchors, [&"  CN=Test Internal Root"], "{stdout}");
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let pki = TestPki::new();
    let path = pki.path("bad.toml");
    // Problems on lines 2 (listen), 11 (prefix) and 12 (upstream).
    write(
        &path,
        &config_text(
            "not-an-address",
            "[[route]]\nprefix = \"api\"\nupstream = \"http://backend-api:8080/\"\n",
        ),
    );
    let (status, stdout, stderr) = run_to_end(pki.dir.path(), &["check", "-c", path_str(&path)]);
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stdout, "", "nothing on stdout for a bad config");
    let file = path.display();
    let expected = [
        "trustgate: the configuration has 3 problems:".to_owned(),
        format!(
            "{file}:2: server.listen: \"not-an-address\" is not an address:port such as \"0.0.0.0:8443\""
        ),
        format!("{file}:11: route[0].prefix: prefix \"api\" must start with '/'"),
        format!(
            "{file}:12: route[0].upstream: \"http://backend-api:8080/\": plain http upstreams are \
             refused, all internal traffic is encrypted; use https:// and a certificate from the \
             internal CA"
        ),
    ];
    // The header, then the three problems in line order (log lines, if any, may surround them).
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines
        .iter()
        .position(|line| *line == expected[0])
        .unwrap_or_else(|| panic!("no {:?} in stderr:\n{stderr}", expected[0]));
    assert_eq!(
        lines[start..].get(..4),
        Some(&expected.each_ref().map(String::as_str)[..]),
        "stderr:\n{stderr}"
    );
    let problem_lines = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .count();
    assert_eq!(problem_lines, 3, "stderr:\n{stderr}");
}

#[tokio::test]
async fn run_serves_traffic_and_exits_0_on_sigterm() {
    let pki = TestPki::new();
    // On the default runtime (a thread per CPU) and on the single-threaded one (`workers = 1`).
    for workers in ["", "workers = 1\n"] {
        let backend = Backend::recording(&pki.leaf(&["backend-api"]), &[b"http/1.1"], "api").await;
        let port = free_port();
        let path = pki.path("cfg.toml");
        let text = config_text(
            &format!("127.0.0.1:{port}"),
            &route_to("/api", "backend-api", &backend),
        )
        .replace("[server]\n", &format!("[server]\n{workers}"));
        write(&path, &text);
        let mut proxy = Spawned::start(pki.dir.path(), &["run", "-c", path_str(&path)], false);
        wait_listening(&mut proxy, SocketAddr::from(([127, 0, 0, 1], port))).await;

        let client = client(&pki, false);
        let got = get(&client, &format!("https://localhost:{port}/api/hello?x=1")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", proxy.stderr());
        assert_eq!(got.text(), "backend:api\n");
        let seen = backend.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].sni.as_deref(), Some("backend-api"));
        assert_eq!(seen[0].uri.path_and_query().unwrap().as_str(), "/hello?x=1");
        drop(client); // no idle keep-alive connection for the drain to wait on

        proxy.terminate();
        let status = proxy.wait(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "{workers}stderr:\n{}",
            proxy.stderr()
        );
        let log = proxy.stderr();
        assert!(log.contains("trustgate listening"), "{log}");
        assert!(log.contains("received SIGTERM"), "{log}");
        backend.join().await;
    }
}

#[test]
fn run_with_a_missing_config_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (status, stdout, stderr) = run_to_end(dir.path(), &["run", "-c", path_str(&missing)]);
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!(
            "{}: cannot read the config file: ",
            missing.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn demo_serves_through_its_own_trust_chain_and_keeps_no_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut demo = Spawned::start(
        dir.path(),
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            path_str(&demo_dir),
        ],
        true,
    );

    // Read stdout on a thread; wait for the curl line with a deadline.
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stdout = demo.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut printed = Vec::new();
    let curl = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) if line.trim_start().starts_with("curl --cacert ") => break line,
            Ok(line) => printed.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
            Err(e) => panic!(
                "no curl line ({e:?}); stdout so far:\n{}\nstderr:\n{}",
                printed.join("\n"),
                demo.stderr()
            ),
        }
        if let Some(status) = demo.exited() {
            panic!("demo exited ({status}); stderr:\n{}", demo.stderr());
        }
    };
    let words: Vec<&str> = curl.split_whitespace().collect();
    let [_, "--cacert", ca_file, url] = words[..] else {
        panic!("unexpected curl line {curl:?}");
    };
    assert_eq!(Path::new(ca_file), demo_dir.join("public/ca.pem"));
    let port = url
        .strip_prefix("https://localhost:")
        .and_then(|rest| rest.strip_suffix("/api/hello"))
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("unexpected URL {url:?}"));
    assert_ne!(port, 0, "the demo prints the port it really listens on");

    // Exactly what the printed curl command does: trust only that CA file.
    let mut roots = RootCertStore::empty();
    for cert in trustgate::tls::load_certs(Path::new(ca_file)).unwrap() {
        roots.add(cert).unwrap();
    }
    let tls = ClientConfig::builder_with_provider(trustgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: TestClient = Client::builder(TokioExecutor::new()).build(connector);
    let got = get(&client, url).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let body = got.text();
    assert!(body.contains("tls sni: backend-api\n"), "{body}");
    // The proxy stripped the /api prefix (over HTTP/2 the echo shows the absolute URI).
    let request_line = body
        .lines()
        .find(|line| line.starts_with("GET "))
        .unwrap_or_else(|| panic!("no request line in {body}"));
    let target: http::Uri = request_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(target.path(), "/hello", "{request_line}");
    drop(client);

    demo.terminate();
    let status = demo.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());

    // Only the two serving keys are on disk: no CA key, anywhere in the folder.
    let mut with_keys = Vec::new();
    let mut files = Vec::new();
    collect_files(&demo_dir, &mut files);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        if trustgate::tls::holds_private_key(&bytes) {
            with_keys.push(file.strip_prefix(&demo_dir).unwrap().to_path_buf());
        }
    }
    with_keys.sort();
    assert_eq!(
        with_keys,
        [
            PathBuf::from("backend/server.key"),
            PathBuf::from("proxy/client.key"),
            PathBuf::from("public/privkey.pem")
        ],
        "files holding a PRIVATE KEY among {files:#?}"
    );
    // And the internal CA file is a certificate the proxy could load as a trust anchor.
    trustgate::tls::load_ca_certs(&demo_dir.join("internal/ca.pem")).unwrap();
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}
