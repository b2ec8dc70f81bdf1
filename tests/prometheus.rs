//! The metrics as an operator gets them: the real Prometheus server (Debian's `prometheus`, on
//! PATH; `.ci/run` installs it) scrapes the admin listener's `/metrics` every second, and the test
//! reads back through Prometheus' HTTP query API the leaf the backend presented and the request
//! counters per route. Names and labels are issue 10's contract, which the alert rules in
//! docker/prometheus and the Grafana dashboard depend on.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use trustgate::pki::inspect::CertInfo;

use common::*;

/// How long Prometheus may take to come up, and a scrape to show in its query results.
const WITHIN: Duration = Duration::from_secs(30);

type Http = Client<HttpConnector, Empty<Bytes>>;

/// A `prometheus` process with its own storage and config in a temp folder; killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    http: Http,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://<target>/metrics` every second as job `trustgate`, and
    /// waits until `/-/ready` answers 200.
    async fn start(target: SocketAddr) -> Self {
        if let Err(e) = Command::new("prometheus").arg("--version").output() {
            panic!(
                "this test runs the real Prometheus server, but `prometheus` cannot be run ({e}): \
                 install it (Debian: apt-get install prometheus; .ci/run does)"
            );
        }
        // A port probed free may be taken before Prometheus binds it (other tests bind too): a
        // start that exits early is retried on a fresh port.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start(target).await {
                Ok(prometheus) => return prometheus,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("prometheus exited before it was ready; its log:\n{log}"),
            }
        }
        panic!("prometheus found its port taken three times; last log:\n{last_log}");
    }

    /// One start; `Err` with the process' log when it exits before it is ready.
    async fn try_start(target: SocketAddr) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        write(
            &config,
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: trustgate\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = dir.path().join("prometheus.log");
        let log_file = File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
        let mut prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            if prometheus.child.try_wait().unwrap().is_some() {
                return Err(prometheus.log());
            }
            if let Ok((StatusCode::OK, _)) = prometheus.get("/-/ready").await {
                return Ok(prometheus);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within {WITHIN:?}; its log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs `path_and_query` from Prometheus: the status and the body.
    async fn get(&self, path_and_query: &str) -> Result<(StatusCode, String), String> {
        let uri = format!("{}{path_and_query}", self.base);
        let response =
            tokio::time::timeout(Duration::from_secs(5), self.http.get(uri.parse().unwrap()))
                .await
                .map_err(|_| format!("GET {uri}: no answer within 5 s"))?
                .map_err(|e| format!("GET {uri}: {e}"))?;
        let status = response.status();
        let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .map_err(|_| format!("GET {uri}: body not read within 5 s"))?
            .map_err(|e| format!("GET {uri}: body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The instant vector `promql` evaluates to now, as the API's `result` array.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {promql}: {status}, not JSON ({e}): {body}"));
        assert!(
            status == StatusCode::OK && answer["status"] == "success",
            "query {promql}: {status}: {body}"
        );
        assert_eq!(
            answer["data"]["resultType"], "vector",
            "query {promql}: {body}"
        );
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: no result array: {body}"))
            .clone()
    }

    /// Queries `promql` every 250 ms until `done` accepts the result (and returns it), for at
    /// most `WITHIN`; then panics with the last result and why the scrape fails, if it does.
    async fn wait_for(
        &self,
        promql: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let result = self.query(promql).await;
            if done(&result) {
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                let targets = self
                    .get("/api/v1/targets")
                    .await
                    .map_or_else(|e| e, |(_, body)| body);
                panic!(
                    "timed out after {WITHIN:?} waiting for {what}\n  query: {promql}\n  last \
                     result: {}\n  scrape targets: {targets}",
                    Value::from(result)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query string value: everything but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sample's value (the API sends it as a string: `"value": [<time>, "<value>"]`).
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

/// A sample's label `name`.
fn label<'a>(sample: &'a Value, name: &str) -> &'a str {
    sample["metric"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no label {name} in {sample}"))
}

/// A sample's label names, `__name__`, and the `instance` and `job` Prometheus adds included.
fn label_names(sample: &Value) -> BTreeSet<&str> {
    sample["metric"]
        .as_object()
        .unwrap_or_else(|| panic!("no labels in {sample}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A single series whose value is `expected` (exactly: the counters are integers and the
/// timestamps whole seconds, both exact in a float).
fn one_series_of(expected: f64) -> impl Fn(&[Value]) -> bool {
    move |result| result.len() == 1 && value(&result[0]) == expected
}

#[tokio::test]
async fn prometheus_scrapes_the_backend_leaf_expiry_and_the_request_counters() {
    let started = unix_now();
    let pki = TestPki::new();
    let leaf = pki.leaf(&["backend-api"]);
    let info = CertInfo::parse(&leaf.chain[0]).unwrap();
    let backend = Backend::recording(&leaf, &[b"http/1.1"], "api").await;
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:9901\"\n",
        config_text("", "", &route_to("/api", "backend-api", &backend))
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let prometheus = Prometheus::start(proxy.admin.expect("admin listener")).await;
    prometheus
        .wait_for(
            r#"up{job="trustgate"}"#,
            "a successful scrape of /metrics",
            one_series_of(1.0),
        )
        .await;

    // The first request makes the backend present its leaf; the verifier records it.
    let client = client(&pki, false);
    let got = get(&client, &proxy.url("/api/first")).await;
    assert_eq!(
        (got.status, got.text()),
        (StatusCode::OK, "backend:api\n".into())
    );

    let leaves = prometheus
        .wait_for(
            r#"trustgate_upstream_cert_not_after_timestamp_seconds{job="trustgate"}"#,
            "the backend's leaf in the metrics",
            |result| !result.is_empty(),
        )
        .await;
    assert_eq!(leaves.len(), 1, "one route, one leaf: {leaves:?}");
    let series = &leaves[0];
    assert_eq!(
        label_names(series),
        BTreeSet::from([
            "__name__", "instance", "job", "route", "name", "serial", "issuer"
        ]),
        "{series}"
    );
    assert_eq!(label(series, "route"), "/api");
    assert_eq!(label(series, "name"), info.name());
    assert_eq!(
        label(series, "serial"),
        info.serial,
        "lowercase hex, no separators"
    );
    assert_eq!(label(series, "issuer"), info.issuer);
    assert_eq!(
        value(series),
        info.not_after.unix_timestamp() as f64,
        "the leaf's notAfter, in seconds since the epoch"
    );
    let seen = prometheus
        .wait_for(
            r#"max(trustgate_upstream_cert_last_seen_timestamp_seconds{job="trustgate"})"#,
            "when the leaf was last seen",
            |result| result.len() == 1,
        )
        .await;
    let seen = value(&seen[0]);
    assert!(
        (started.floor()..=unix_now()).contains(&seen),
        "last seen {seen}: not between the test's start {started} and now"
    );

    // The counter per route, read back from Prometheus: the one request above, then N more.
    const API: &str = r#"trustgate_requests_total{job="trustgate",route="/api"}"#;
    let before = prometheus
        .wait_for(API, "the first request counted", one_series_of(1.0))
        .await;
    assert_eq!(
        label_names(&before[0]),
        BTreeSet::from(["__name__", "instance", "job", "route", "code"]),
        "route and code only: never a label per path or per client"
    );
    assert_eq!(label(&before[0], "code"), "200");
    const N: usize = 12;
    for i in 0..N {
        let got = get(&client, &proxy.url(&format!("/api/{i}?client={i}"))).await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {}", got.text());
    }
    // An unrouted request counts under route "-", not under /api.
    assert_eq!(
        get(&client, &proxy.url("/nowhere")).await.status,
        StatusCode::NOT_FOUND
    );
    let after = prometheus
        .wait_for(
            API,
            &format!("/api's counter to grow by {N}, to {}", 1 + N),
            one_series_of((1 + N) as f64),
        )
        .await;
    assert_eq!(label(&after[0], "code"), "200");
    assert_eq!(
        backend.seen().len(),
        1 + N,
        "the backend saw every request once"
    );
    prometheus
        .wait_for(
            r#"sum(trustgate_requests_total{job="trustgate",route="-"})"#,
            "the unrouted request counted under route \"-\"",
            one_series_of(1.0),
        )
        .await;
}
