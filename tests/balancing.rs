//! Several endpoints per route, against real TLS backends on loopback: how requests spread
//! (round robin, least pending), what happens when an endpoint dies, lies about its name, hangs
//! its health check or loses a request mid-way (passive and active health, the retry rules), DNS
//! discovery through a test resolver, and the in-flight count that follows bodies and tunnels.
//! Every loop is bounded.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use common::*;

/// A `[[route]]` for `/api` to `https://backend-api:8443/` over `addresses`, plus `extra` lines.
fn route_over(addresses: &[SocketAddr], extra: &str) -> String {
    let list = addresses
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:8443/\"\n\
         addresses = [{list}]\n{extra}\n"
    )
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";

/// GETs `url` `total` times over `concurrency` tasks; the statuses that were not 200, and the
/// errors, as text.
async fn hammer(client: &TestClient, url: &str, total: usize, concurrency: usize) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if let Err(why) = try_get(&client, &url).await {
                    failures.push(why);
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    failures
}

/// `/trust`'s endpoints of the first route, by address.
async fn trust_endpoints(admin: SocketAddr) -> Vec<Value> {
    let (status, body) = call(admin, "GET", "/trust", "").await;
    assert_eq!(status, 200, "{body}");
    let trust: Value = serde_json::from_str(&body).unwrap();
    trust["routes"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn endpoint_json(admin: SocketAddr, address: SocketAddr) -> Option<Value> {
    trust_endpoints(admin)
        .await
        .into_iter()
        .find(|e| e["address"] == address.to_string())
}

/// The sum over `reason` of `trustgate_upstream_retries_total` for `/api`.
async fn retries(admin: SocketAddr) -> f64 {
    let scrape = scrape(admin).await;
    ["connect", "tls", "timeout", "closed"]
        .iter()
        .filter_map(|reason| {
            sample(
                &scrape,
                "trustgate_upstream_retries_total",
                &[("route", "/api"), ("reason", reason)],
            )
        })
        .sum()
}

async fn endpoint_sample(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&scrape(admin).await, name, labels)
}

/// A loopback port nothing listens on: connecting to it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_three_endpoints_by_either_policy() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    for (policy, bounds) in [("round_robin", 990..=1010), ("least_pending", 800..=1200)] {
        let mut backends = Vec::new();
        for name in ["a", "b", "c"] {
            backends.push(Backend::recording(&cert, &[], name).await);
        }
        let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let route = route_over(&addresses, &format!("balance = \"{policy}\"\n"));
        let proxy = Proxy::start(&pki, &route).await;
        let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 3000, 12).await;
        assert!(failures.is_empty(), "{policy}: {failures:?}");
        let counts: Vec<usize> = backends.iter().map(|b| b.seen().len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), 3000, "{policy}: {counts:?}");
        for count in &counts {
            assert!(bounds.contains(count), "{policy}: {counts:?}");
        }
        eprintln!("{policy}: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_fewer_requests_under_least_pending() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let fast_a = Backend::recording(&cert, &[], "a").await;
    let fast_b = Backend::recording(&cert, &[], "b").await;
    let slow_count = Arc::new(AtomicUsize::new(0));
    let counter = slow_count.clone();
    let slow = Backend::custom(&cert, &[], move |_req, _info| {
        counter.fetch_add(1, Ordering::Relaxed);
        async {
            // Far slower than a fast answer even in a debug build on a loaded machine.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(full("backend:slow"))
        }
    })
    .await;
    let route = route_over(&[fast_a.addr, fast_b.addr, slow.addr], "");
    let proxy = Proxy::start(&pki, &route).await;
    let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 600, 6).await;
    assert!(failures.is_empty(), "{failures:?}");
    let (a, b, s) = (
        fast_a.seen().len(),
        fast_b.seen().len(),
        slow_count.load(Ordering::Relaxed),
    );
    eprintln!("fast a {a}, fast b {b}, slow {s}");
    assert_eq!(a + b + s, 600);
    assert!(
        s * 4 < a.min(b),
        "the slow endpoint got {s}, the fast ones {a} and {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_under_load_fails_no_request_and_comes_back() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let a = Backend::recording(&cert, alpn, "a").await;
    let doomed = Backend::recording(&cert, alpn, "doomed").await;
    let c = Backend::recording(&cert, alpn, "c").await;
    let doomed_addr = doomed.addr;
    let text = config_text(
        "",
        "",
        &format!(
            "{ADMIN}{}",
            route_over(&[a.addr, doomed_addr, c.addr], "fail_timeout = \"1s\"\n")
        ),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();

    // An HTTP/1.1 and an HTTP/2 client keep requesting until told to stop (at most 20 s).
    let stop = Arc::new(AtomicBool::new(false));
    let mut loads = Vec::new();
    for h2 in [false, true] {
        for _ in 0..3 {
            let (client, url, stop) = (client(&pki, h2), proxy.url("/api/load"), stop.clone());
            loads.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    match try_get(&client, &url).await {
                        Ok(_) => ok += 1,
                        Err(why) => failed.push(why),
                    }
                }
                (ok, failed)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.join().await;
    let down = logs()
        .line_with(&["upstream endpoint down", &format!("endpoint={doomed_addr}")])
        .await;
    eprintln!("{down}");
    assert_eq!(
        endpoint_sample(
            admin,
            "trustgate_upstream_endpoint_up",
            &[("endpoint", &doomed_addr.to_string())]
        )
        .await,
        Some(0.0)
    );
    // The same address serves again: back in rotation once the ejection (1 s) runs out.
    let reborn = Backend::recording_at(&cert, alpn, "reborn", doomed_addr).await;
    let up = logs()
        .line_with(&["upstream endpoint up", &format!("endpoint={doomed_addr}")])
        .await;
    eprintln!("{up}");
    eventually("the reborn endpoint serves", Duration::from_secs(5), || {
        !reborn.seen().is_empty()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for load in loads {
        let (o, f) = load.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!("{ok} requests answered 200 while an endpoint died and came back");
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(ok > 100, "only {ok} requests");
    let endpoint = doomed_addr.to_string();
    let scrape = scrape(admin).await;
    let value = |name, labels: &[(&str, &str)]| sample(&scrape, name, labels).unwrap_or(0.0);
    assert_eq!(
        value("trustgate_upstream_endpoint_up", &[("endpoint", &endpoint)]),
        1.0
    );
    assert!(
        value(
            "trustgate_upstream_ejections_total",
            &[("endpoint", &endpoint), ("reason", "fails")]
        ) >= 1.0
    );
    assert!(retries(admin).await >= 1.0, "requests were retried");
    let served: f64 = [a.addr, doomed_addr, c.addr]
        .iter()
        .map(|e| {
            value(
                "trustgate_upstream_endpoint_requests_total",
                &[("endpoint", &e.to_string())],
            )
        })
        .sum();
    assert!(
        served >= ok as f64,
        "{served} endpoint requests for {ok} answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_wrong_name_is_marked_down_and_gets_no_request() {
    let pki = TestPki::new();
    let good = pki.leaf(&["backend-api"]);
    let a = Backend::recording(&good, &[], "a").await;
    let liar = Backend::recording(&pki.leaf(&["other-name"]), &[], "liar").await;
    let c = Backend::recording(&good, &[], "c").await;
    let check =
        "\n[route.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n";
    let text = config_text(
        "",
        "",
        &format!("{ADMIN}{}", route_over(&[a.addr, liar.addr, c.addr], check)),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    let line = logs()
        .line_with(&[
            "upstream endpoint down",
            &format!("endpoint={}", liar.addr),
            "not valid for name",
        ])
        .await;
    eprintln!("{line}");
    let shown = endpoint_json(admin, liar.addr).await.unwrap();
    assert_eq!(shown["up"], false, "{shown}");
    assert!(
        shown["why"]
            .as_str()
            .unwrap()
            .contains("not valid for name \"backend-api\""),
        "{shown}"
    );
    let before = retries(admin).await;
    let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 300, 6).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(liar.seen().is_empty(), "the liar got a request");
    assert_eq!(proxied_requests(&a, &c), 300);
    assert_eq!(
        retries(admin).await,
        before,
        "no request was even tried on the liar"
    );
    let endpoint = liar.addr.to_string();
    let scrape = scrape(admin).await;
    let get = |name, (k, v): (&str, &str)| {
        sample(&scrape, name, &[("endpoint", endpoint.as_str()), (k, v)]).unwrap_or(0.0)
    };
    assert_eq!(
        get("trustgate_upstream_ejections_total", ("reason", "tls")),
        1.0
    );
    assert!(get("trustgate_upstream_health_checks_total", ("result", "tls")) >= 1.0);
    assert_eq!(
        sample(
            &scrape,
            "trustgate_upstream_endpoint_up",
            &[("endpoint", endpoint.as_str())]
        ),
        Some(0.0)
    );
}

/// The health checks the two good backends answered (GET /healthz).
/// Requests `a` and `c` got other than health checks (one snapshot each: checks go on).
fn proxied_requests(a: &Backend, c: &Backend) -> usize {
    [a, c]
        .iter()
        .flat_map(|b| b.seen())
        .filter(|s| s.uri.path() != "/healthz")
        .count()
}

/// A backend that reads one whole request (head and `Content-Length` body), counts it, records
/// its request line, then closes the connection without answering: it dies mid-request.
struct Dying {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Dying {
    async fn start(cert: &ServerCert) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config(&[b"http/1.1"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while buf.len() < end + length {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(line);
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { addr, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_a_dying_endpoint_is_not_replayed_but_a_get_is_retried() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let dying = Dying::start(&cert).await;
    let good = Backend::recording(&cert, &[], "good").await;
    // Never ejected, strictly alternating: each pair of requests visits both endpoints.
    let route = route_over(
        &[dying.addr, good.addr],
        "balance = \"round_robin\"\nfails = 0\n",
    );
    let proxy = Proxy::start(&pki, &route).await;
    let client = client(&pki, false);
    let mut statuses = Vec::new();
    for n in 0..2 {
        let request = Request::post(proxy.url("/api/upload"))
            .body(full(format!("payload-{n}")))
            .unwrap();
        statuses.push(send(&client, request).await.status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    assert_eq!(
        dying.lines(),
        ["post /upload http/1.1"],
        "the POST reached it once"
    );
    let posts: Vec<Bytes> = good.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(posts.len(), 1, "the POST that died was not sent again");
    logs()
        .line_with(&[
            "request not proxied",
            "status=502",
            "closed the connection before",
        ])
        .await;

    // A GET without a body that hits the dying endpoint is sent to the other one.
    for _ in 0..4 {
        let got = get(&client, &proxy.url("/api/read")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    let gets = good.seen().iter().filter(|s| s.method == "GET").count();
    assert_eq!(gets, 4, "every GET answered by the good endpoint");
    assert!(
        dying
            .lines()
            .iter()
            .filter(|l| l.starts_with("get"))
            .count()
            >= 1,
        "a GET reached the dying endpoint first: {:?}",
        dying.lines()
    );
    logs()
        .line_with(&[
            "retrying the request on another endpoint",
            &format!("endpoint={}", dying.addr),
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_at_connect_goes_to_another_endpoint_body_and_all() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let good = Backend::recording(&cert, &[], "good").await;
    let (_held, dead) = refusing_address();
    let text = config_text(
        "",
        "",
        &format!(
            "{ADMIN}{}",
            route_over(&[dead, good.addr], "balance = \"round_robin\"\n")
        ),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    let client = client(&pki, false);
    for _ in 0..20 {
        let got = get(&client, &proxy.url("/api/x")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    assert_eq!(good.seen().len(), 20);
    let line = logs()
        .line_with(&[
            "upstream endpoint down",
            &format!("endpoint={dead}"),
            "connection refused",
        ])
        .await;
    eprintln!("{line}");
    let scrape = scrape(admin).await;
    let dead_label = dead.to_string();
    // Three refusals (the default `fails`) ejected it; each was retried, nothing after.
    assert_eq!(
        sample(
            &scrape,
            "trustgate_upstream_retries_total",
            &[("route", "/api"), ("reason", "connect")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "trustgate_upstream_ejections_total",
            &[("endpoint", dead_label.as_str()), ("reason", "fails")]
        ),
        Some(1.0)
    );

    // With ejection off, every other request meets the refusal: a body the upstream never
    // asked for goes to the other endpoint whole.
    let good2 = Backend::recording(&cert, &[], "good2").await;
    let proxy2 = Proxy::start(
        &pki,
        &route_over(
            &[dead, good2.addr],
            "balance = \"round_robin\"\nfails = 0\n",
        ),
    )
    .await;
    for n in 0..4 {
        let request = Request::post(proxy2.url("/api/upload"))
            .body(full(format!("body-{n}")))
            .unwrap();
        let got = send(&client, request).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    let bodies: Vec<Bytes> = good2.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["body-0", "body-1", "body-2", "body-3"]);
}

/// A backend whose `GET /healthz` answers with the status in `health` (or never, when it is 0),
/// and which counts every other request.
async fn checked_backend(
    cert: &ServerCert,
    health: Arc<AtomicU16>,
    data: Arc<AtomicUsize>,
) -> Backend {
    Backend::custom(
        cert,
        &[],
        move |req: Request<hyper::body::Incoming>, _info| {
            let (health, data) = (health.clone(), data.clone());
            async move {
                if req.uri().path() != "/healthz" {
                    data.fetch_add(1, Ordering::Relaxed);
                    return Response::new(full("backend:checked"));
                }
                let status = health.load(Ordering::Relaxed);
                if status == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let mut response = Response::new(full("health"));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_follow_rise_fall_and_expect() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let health = Arc::new(AtomicU16::new(200));
    let data = Arc::new(AtomicUsize::new(0));
    let checked = checked_backend(&cert, health.clone(), data.clone()).await;
    let other = Backend::recording(&cert, &[], "other").await;
    let check = "\n[route.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
                 rise = 3\nfall = 2\nexpect = \"200-299\"\n";
    let text = config_text(
        "",
        "",
        &format!("{ADMIN}{}", route_over(&[checked.addr, other.addr], check)),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    let endpoint = checked.addr.to_string();
    let checks = |result: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            endpoint_sample(
                admin,
                "trustgate_upstream_health_checks_total",
                &[("endpoint", endpoint.as_str()), ("result", result)],
            )
            .await
            .unwrap_or(0.0)
        }
    };

    health.store(503, Ordering::Relaxed);
    let line = logs()
        .line_with(&[
            "upstream endpoint down",
            &format!("endpoint={endpoint}"),
            "answered 503, expected 200-299",
        ])
        .await;
    eprintln!("{line}");
    // The check before the 503 that took it down may have timed out instead (a fresh TLS
    // handshake within the 100ms), which counts towards `fall` as well.
    let failed = checks("status").await + checks("timeout").await;
    assert!(failed >= 2.0, "fall = 2: two failed checks");
    // Out of rotation: requests go to the other endpoint only.
    let before = data.load(Ordering::Relaxed);
    let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 50, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(data.load(Ordering::Relaxed), before);

    // A status outside `expect` keeps it out; one inside brings it back after `rise` passes.
    health.store(302, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        endpoint_json(admin, checked.addr).await.unwrap()["up"],
        false
    );
    let ok_before = checks("ok").await;
    health.store(204, Ordering::Relaxed);
    logs()
        .line_with(&["upstream endpoint up", &format!("endpoint={endpoint}")])
        .await;
    assert!(checks("ok").await - ok_before >= 3.0, "rise = 3");
    assert_eq!(
        endpoint_json(admin, checked.addr).await.unwrap()["up"],
        true
    );
    let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 40, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(data.load(Ordering::Relaxed) > before, "back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_that_hangs_is_a_timeout() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let health = Arc::new(AtomicU16::new(0));
    let data = Arc::new(AtomicUsize::new(0));
    let hanging = checked_backend(&cert, health, data.clone()).await;
    let other = Backend::recording(&cert, &[], "other").await;
    let check = "\n[route.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 1\n";
    let text = config_text(
        "",
        "",
        &format!("{ADMIN}{}", route_over(&[hanging.addr, other.addr], check)),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let line = logs()
        .line_with(&[
            "upstream endpoint down",
            &format!("endpoint={}", hanging.addr),
            "got no answer within 100ms",
        ])
        .await;
    eprintln!("{line}");
    let timeouts = endpoint_sample(
        proxy.admin.unwrap(),
        "trustgate_upstream_health_checks_total",
        &[
            ("endpoint", &hanging.addr.to_string()),
            ("result", "timeout"),
        ],
    )
    .await;
    assert!(timeouts >= Some(1.0), "{timeouts:?}");
    let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 30, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        data.load(Ordering::Relaxed),
        0,
        "no request to the hanging endpoint"
    );
}

/// A resolver the test sets: the addresses it returns (with the port asked for), or a failure.
#[derive(Debug, Default)]
struct TestDns(Mutex<Option<Vec<IpAddr>>>);

impl TestDns {
    fn set(&self, ips: Option<&[&str]>) {
        *self.0.lock().unwrap() = ips.map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect());
    }
}

impl trustgate::balance::Resolve for TestDns {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        assert_eq!(host, "backend-api");
        match &*self.0.lock().unwrap() {
            Some(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
            None => Err(std::io::Error::other("test resolver: no such host")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_the_address_set() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    // Three backends on one port, at 127.0.0.1, .2 and .3, as replicas of one service are.
    let first = Backend::recording(&cert, &[], "one").await;
    let port = first.port();
    let second = Backend::recording_at(&cert, &[], "two", ([127, 0, 0, 2], port).into()).await;
    let third = Backend::recording_at(&cert, &[], "three", ([127, 0, 0, 3], port).into()).await;
    let dns = Arc::new(TestDns::default());
    dns.set(Some(&["127.0.0.1"]));
    let route = format!(
        "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:{port}/\"\n\
         resolve_interval = \"1s\"\n"
    );
    let text = config_text("", "", &format!("{ADMIN}{route}"));
    let proxy = Proxy::start_resolving(&pki, &text, dns.clone()).await;
    let admin = proxy.admin.unwrap();
    let client = client(&pki, false);
    let url = proxy.url("/api/x");
    let counts = || [&first, &second, &third].map(|b| b.seen().len());

    assert!(hammer(&client, &url, 30, 3).await.is_empty());
    assert_eq!(counts(), [30, 0, 0]);

    dns.set(Some(&["127.0.0.3", "127.0.0.1", "127.0.0.2"]));
    let changed = logs()
        .line_with(&[
            "upstream endpoints changed",
            &format!("added=127.0.0.2:{port}, 127.0.0.3:{port}"),
        ])
        .await;
    eprintln!("{changed}");
    assert!(hammer(&client, &url, 90, 6).await.is_empty());
    let [a, b, c] = counts();
    assert!(b > 0 && c > 0, "every address served: {a} {b} {c}");

    // A failing lookup keeps the set, and is logged once however often it fails.
    dns.set(None);
    logs()
        .line_with(&[
            "DNS lookup of the upstream failed; the last endpoints found are kept",
            &format!("service=backend-api:{port}"),
        ])
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let failures_logged = logs()
        .text()
        .lines()
        .filter(|l| {
            l.contains("DNS lookup of the upstream failed") && l.contains(&format!(":{port}"))
        })
        .count();
    assert_eq!(failures_logged, 1);
    let before = counts();
    assert!(hammer(&client, &url, 60, 6).await.is_empty());
    let after = counts();
    assert!(
        (0..3).all(|i| after[i] > before[i]),
        "still all three: {before:?} -> {after:?}"
    );

    // The set shrinks: the endpoints that left get no request and lose their series.
    dns.set(Some(&["127.0.0.2"]));
    logs()
        .line_with(&[
            "upstream endpoints changed",
            &format!("removed=127.0.0.1:{port}, 127.0.0.3:{port}"),
        ])
        .await;
    let before = counts();
    assert!(hammer(&client, &url, 30, 3).await.is_empty());
    let after = counts();
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [0, 30, 0]
    );
    let gone = endpoint_sample(
        admin,
        "trustgate_upstream_endpoint_up",
        &[("endpoint", &format!("127.0.0.1:{port}"))],
    )
    .await;
    assert_eq!(gone, None, "the series of a removed endpoint is gone");
    let listed: Vec<Value> = trust_endpoints(admin).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["address"], format!("127.0.0.2:{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_dns_gives_no_address_answers_503_until_it_does() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let backend = Backend::recording(&cert, &[], "late").await;
    let dns = Arc::new(TestDns::default());
    let route = format!(
        "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:{}/\"\n",
        backend.port()
    );
    let proxy = Proxy::start_resolving(&pki, &config_text("", "", &route), dns.clone()).await;
    let client = client(&pki, false);
    let got = get(&client, &proxy.url("/api/x")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    logs()
        .line_with(&["status=503", "has no endpoint: DNS lookup failed"])
        .await;
    dns.set(Some(&["127.0.0.1"]));
    // A route with no endpoint asks again every second.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..40 {
        status = get(&client, &proxy.url("/api/x")).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

/// A response body: "first\n" at once, "rest\n" once `gate` fires.
struct Gated {
    first: Option<Bytes>,
    gate: Option<oneshot::Receiver<()>>,
}

impl HttpBody for Gated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(gate) = self.gate.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(gate).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.gate = None;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"rest\n")))))
            }
        }
    }
}

use std::future::Future as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_lasts_until_the_body_ends_and_survives_a_reload_that_moves_the_route() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let gates: Arc<Mutex<Vec<oneshot::Sender<()>>>> = Arc::default();
    let senders = gates.clone();
    let slow = Backend::custom(&cert, &[], move |_req, _info| {
        let (tx, rx) = oneshot::channel();
        senders.lock().unwrap().push(tx);
        async move {
            let body = Gated {
                first: Some(Bytes::from_static(b"first\n")),
                gate: Some(rx),
            };
            Response::new(body.boxed())
        }
    })
    .await;
    let other = Backend::recording(&cert, &[], "other").await;
    let text = |address: SocketAddr| {
        config_text("", "", &format!("{ADMIN}{}", route_over(&[address], "")))
    };
    let proxy = Proxy::start_with(&pki, &text(slow.addr)).await;
    let admin = proxy.admin.unwrap();
    let client = client(&pki, false);
    let open = || async {
        let response = client
            .request(
                Request::get(proxy.url("/api/stream"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first\n");
        body
    };
    let release = || {
        for gate in gates.lock().unwrap().drain(..) {
            let _ = gate.send(());
        }
    };
    let in_flight = || async {
        endpoint_json(admin, slow.addr)
            .await
            .map(|e| e["in_flight"].as_u64().unwrap())
    };

    let body = open().await;
    assert_eq!(
        in_flight().await,
        Some(1),
        "the head arrived, the body goes on"
    );
    release();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "rest\n");
    let mut count = in_flight().await;
    for _ in 0..50 {
        if count == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        count = in_flight().await;
    }
    assert_eq!(count, Some(0), "the body ended");

    // A reload moves the route to another endpoint; the response in flight goes on.
    let body = open().await;
    write(&proxy.config_path, &text(other.addr));
    proxy.reload().await;
    assert_eq!(
        get(&client, &proxy.url("/api/after")).await.status,
        StatusCode::OK
    );
    assert_eq!(other.seen().len(), 1);
    release();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "rest\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_in_flight_until_it_closes() {
    let pki = TestPki::new();
    let backend = websocket_backend_with(&pki.leaf(&["backend-api"])).await;
    let text = config_text(
        "",
        "",
        &format!("{ADMIN}{}", route_over(&[backend.addr], ""))
            .replace("prefix = \"/api\"", "prefix = \"/ws\""),
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    let in_flight = || async {
        let (_, body) = call(admin, "GET", "/trust", "").await;
        let trust: Value = serde_json::from_str(&body).unwrap();
        trust["routes"][0]["endpoints"][0]["in_flight"].as_u64()
    };
    let (mut tunnel, head) = open_websocket(&pki, &proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_echo(&mut tunnel, "hello").await;
    assert_eq!(in_flight().await, Some(1));
    tunnel.shutdown().await.unwrap();
    drop(tunnel);
    let mut count = in_flight().await;
    for _ in 0..100 {
        if count == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        count = in_flight().await;
    }
    assert_eq!(count, Some(0), "the tunnel closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_in_rotation_the_endpoints_that_verify_are_tried_anyway() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    // Both fail their health check, yet serve data: out of rotation, still the best there is.
    let health = Arc::new(AtomicU16::new(503));
    let data = Arc::new(AtomicUsize::new(0));
    let first = checked_backend(&cert, health.clone(), data.clone()).await;
    let second = checked_backend(&cert, health, data.clone()).await;
    let check = "\n[route.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\n";
    let proxy = Proxy::start(&pki, &route_over(&[first.addr, second.addr], check)).await;
    for backend in [&first, &second] {
        logs()
            .line_with(&[
                "upstream endpoint down",
                &format!("endpoint={}", backend.addr),
            ])
            .await;
    }
    let failures = hammer(&client(&pki, false), &proxy.url("/api/x"), 20, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(data.load(Ordering::Relaxed), 20);
    logs()
        .line_with(&[
            "no endpoint is in rotation; trying one that does not fail TLS verification anyway",
            "route=/api",
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_fails_verification_the_answer_is_502_saying_why() {
    let pki = TestPki::new();
    let wrong = pki.leaf(&["someone-else"]);
    let first = Backend::recording(&wrong, &[], "first").await;
    let second = Backend::recording(&wrong, &[], "second").await;
    let proxy = Proxy::start(
        &pki,
        &route_over(&[first.addr, second.addr], "fails = 0\n").replace("backend-api", "all-wrong"),
    )
    .await;
    let client = client(&pki, false);
    // The first request tries both (one retry) and learns that neither verifies.
    for _ in 0..3 {
        let got = get(&client, &proxy.url("/api/x")).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(got.text(), "502 Bad Gateway\n");
    }
    let line = logs()
        .line_with(&[
            "every endpoint of all-wrong:8443 fails TLS verification",
            &format!("{}: TLS: certificate not valid for name", first.addr),
        ])
        .await;
    eprintln!("{line}");
    assert!(first.seen().is_empty() && second.seen().is_empty());
}
