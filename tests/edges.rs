//! The edges of HTTP, written from the attacker's side: hosts hidden in userinfo or in a second
//! Host header, an upstream that frames a response twice, split cookies, bodies on GET, targets
//! that are not paths, clients that hang up, floods of headers, upgrades to something else than
//! what was asked (h2c smuggling) and response heads larger than the proxy accepts.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H1: &[&[u8]] = &[b"http/1.1"];
const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

async fn api_proxy(pki: &TestPki, backend: &Backend) -> Proxy {
    Proxy::start(pki, &route_to("/api", "backend-api", backend)).await
}

/// Sends `req` over HTTP/2 and returns the status.
async fn h2_status(pki: &TestPki, req: Request<Body>) -> StatusCode {
    send(&client(pki, true), req).await.status
}

#[tokio::test]
async fn every_source_of_the_host_is_validated_alike() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend).await;
    let port = proxy.addr.port();

    // HTTP/1.1 absolute-form: userinfo in the target, two Host headers, no Host at all.
    let cases: [&[u8]; 3] = [
        b"GET https://user:pw@evil.example/api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET https://localhost/api/x HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        b"GET https://localhost/api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let answer = raw_exchange(&pki, proxy.addr, case).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{}\n-> {answer}",
            String::from_utf8_lossy(case)
        );
    }

    // HTTP/2: userinfo in :authority; a Host header that contradicts :authority; two of them.
    let userinfo = Request::get(format!("https://user:pw@localhost:{port}/api/x"))
        .body(empty())
        .unwrap();
    assert_eq!(h2_status(&pki, userinfo).await, StatusCode::BAD_REQUEST);
    let other_host = Request::get(proxy.url("/api/x"))
        .header("host", "evil.example")
        .body(empty())
        .unwrap();
    assert_eq!(h2_status(&pki, other_host).await, StatusCode::BAD_REQUEST);
    let two_hosts = Request::get(proxy.url("/api/x"))
        .header("host", format!("localhost:{port}"))
        .header("host", format!("localhost:{port}"))
        .body(empty())
        .unwrap();
    assert_eq!(h2_status(&pki, two_hosts).await, StatusCode::BAD_REQUEST);
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    logs()
        .line_with(&[
            "status=400",
            "reason=malformed request: the request target's authority is not a valid host[:port]",
        ])
        .await;

    // A Host that agrees with :authority (in another case) passes, as does an absolute-form
    // target, whose authority wins over Host (RFC 9112 section 3.2.2).
    let agreeing = Request::get(proxy.url("/api/ok"))
        .header("host", format!("LOCALHOST:{port}"))
        .body(empty())
        .unwrap();
    assert_eq!(h2_status(&pki, agreeing).await, StatusCode::OK);
    let absolute = raw_exchange(
        &pki,
        proxy.addr,
        b"GET https://public.example/api/abs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["host"], "public.example");
    assert_eq!(seen[1].headers["x-forwarded-host"], "public.example");
}

/// `Content-Length: 100` next to chunked framing that carries two bytes.
const DOUBLE_FRAMED: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";

#[tokio::test]
async fn a_response_framed_by_transfer_encoding_loses_its_content_length() {
    let pki = TestPki::new();
    let backend = RawBackend::start(&pki.leaf(&["backend-api"]), |_| DOUBLE_FRAMED.to_vec()).await;
    let upstream = format!("https://backend-api:{}/", backend.addr.port());
    let proxy = Proxy::start(&pki, &route_at("/api", &upstream, backend.addr)).await;

    // Two pipelined requests: both answered, each with its two bytes and no stale length.
    let answer = raw_exchange(
        &pki,
        proxy.addr,
        b"GET /api/one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /api/two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("content-length: 100"),
        "{answer}"
    );
    assert_eq!(backend.heads().len(), 2);

    // Over HTTP/2 the stream ends after its two bytes instead of waiting for 98 more.
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        get(&client(&pki, true), &proxy.url("/api/h2")),
    )
    .await
    .expect("the HTTP/2 stream ends");
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "ok");
    assert!(!got.headers.contains_key("content-length"));
}

#[tokio::test]
async fn http2_cookie_fields_reach_an_http1_backend_as_one_line() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend).await;
    let req = Request::get(proxy.url("/api/c"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(empty())
        .unwrap();
    assert_eq!(h2_status(&pki, req).await, StatusCode::OK);
    let seen = &backend.seen()[0];
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
}

#[tokio::test]
async fn a_get_with_a_chunked_body_is_forwarded_with_its_body() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend).await;
    let answer = raw_exchange(
        &pki,
        proxy.addr,
        b"GET /api/search HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.seen()[0].body, "hello");
}

#[tokio::test]
async fn connect_and_asterisk_are_refused_even_without_a_root_route() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend).await;
    let connect = raw_exchange(
        &pki,
        proxy.addr,
        b"CONNECT backend-api:8443 HTTP/1.1\r\nHost: backend-api:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    let options = raw_exchange(
        &pki,
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(options.starts_with("HTTP/1.1 400"), "{options}");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_is_still_logged() {
    let pki = TestPki::new();
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, |_, _| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(empty())
    })
    .await;
    let proxy = api_proxy(&pki, &backend).await;

    // HTTP/1.1: the client disconnects.
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(b"GET /api/gone-h1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls.shutdown().await.unwrap();
    drop(tls);
    let line = logs()
        .line_with(&["trustgate::access", "path=/api/gone-h1"])
        .await;
    assert!(line.contains("status=499"), "{line}");
    assert!(line.contains("elapsed_ms="), "{line}");

    // HTTP/2: the client resets the stream (dropping the request sends RST_STREAM).
    let client = client(&pki, true);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        client.request(
            Request::get(proxy.url("/api/gone-h2"))
                .body(empty())
                .unwrap(),
        ),
    )
    .await;
    assert!(abandoned.is_err(), "the backend answered early");
    let line = logs()
        .line_with(&["trustgate::access", "path=/api/gone-h2"])
        .await;
    assert!(line.contains("status=499"), "{line}");
}

#[tokio::test]
async fn one_header_count_limit_for_http1_and_http2() {
    let pki = TestPki::new();
    // A hand-written backend, which takes any number of headers: the proxy's limit is tested,
    // not the backend's.
    let backend = RawBackend::start(&pki.leaf(&["backend-api"]), |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    })
    .await;
    let upstream = format!("https://backend-api:{}/", backend.addr.port());
    let proxy = Proxy::start(&pki, &route_at("/api", &upstream, backend.addr)).await;

    let mut flood = b"GET /api/h1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_vec();
    for i in 0..120 {
        flood.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let answer = raw_exchange(&pki, proxy.addr, &flood).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let mut req = Request::get(proxy.url("/api/h2"));
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        h2_status(&pki, req.body(empty()).unwrap()).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());

    // Cookie fields are counted once joined: 150 of them are one header.
    let mut req = Request::get(proxy.url("/api/cookies"));
    for i in 0..150 {
        req = req.header("cookie", format!("c{i}=v"));
    }
    assert_eq!(
        h2_status(&pki, req.body(empty()).unwrap()).await,
        StatusCode::OK
    );
    let heads = backend.heads();
    let cookie_lines = heads[0]
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("cookie:"))
        .count();
    assert_eq!(cookie_lines, 1, "{}", heads[0]);

    // The limit is exact: 100 fields pass, 101 do not.
    for (extra, status) in [(98, "HTTP/1.1 200"), (99, "HTTP/1.1 431")] {
        let mut head = b"GET /api/h1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_vec();
        for i in 0..extra {
            head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let answer = raw_exchange(&pki, proxy.addr, &head).await;
        assert!(answer.starts_with(status), "{extra} extra fields: {answer}");
    }
}

/// A backend that answers every upgrade request with a 101 to `protocol`, then echoes.
async fn switching_backend(pki: &TestPki, protocol: &'static str) -> Backend {
    Backend::custom(
        &pki.leaf(&["backend-ws"]),
        H1,
        move |mut req, _| async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = io.read(&mut buf).await {
                        let _ = io.write_all(&buf[..n]).await;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", protocol)
                .body(empty())
                .unwrap()
        },
    )
    .await
}

const WEBSOCKET: &[u8] =
    b"GET /ws/chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test]
async fn a_switch_to_another_protocol_than_asked_is_a_502() {
    let pki = TestPki::new();
    let backend = switching_backend(&pki, "h2c").await;
    let proxy = Proxy::start(&pki, &route_to("/ws", "backend-ws", &backend)).await;
    let answer = raw_exchange(&pki, proxy.addr, WEBSOCKET).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let line = logs()
        .line_with(&["status=502", "reason=the upstream switched to \"h2c\""])
        .await;
    assert!(
        line.contains("but the client asked for \"websocket\""),
        "{line}"
    );

    // The same protocol in another case is a match.
    let backend = switching_backend(&pki, "WebSocket").await;
    let proxy = Proxy::start(&pki, &route_to("/ws", "backend-ws", &backend)).await;
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(WEBSOCKET).await.unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

#[tokio::test]
async fn h2c_upgrades_are_refused_and_http2_settings_is_hop_by_hop() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend).await;
    let answer = raw_exchange(
        &pki,
        proxy.addr,
        b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(backend.seen().is_empty());

    let answer = raw_exchange(
        &pki,
        proxy.addr,
        b"GET /api/y HTTP/1.1\r\nHost: localhost\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!backend.seen()[0].headers.contains_key("http2-settings"));
}

/// A backend whose `/big` answers carry a 70 KiB header, `/huge` ones a 300 KiB header; other
/// paths answer small.
async fn big_head_backend(pki: &TestPki, alpn: &[&[u8]]) -> Backend {
    Backend::custom(&pki.leaf(&["backend-api"]), alpn, |req, _| async move {
        let mut response = Response::builder();
        let kib = match req.uri().path() {
            "/big" => 70,
            "/huge" => 300,
            _ => 0,
        };
        if kib > 0 {
            response = response.header("x-big", "a".repeat(kib * 1024));
        }
        response.body(full("small")).unwrap()
    })
    .await
}

#[tokio::test]
async fn an_oversized_response_head_is_a_502_on_fresh_and_reused_connections() {
    let pki = TestPki::new();
    for (alpn, preserve_host) in [(H1, true), (H2_H1, false)] {
        let backend = big_head_backend(&pki, alpn).await;
        let upstream = format!("https://backend-api:{}/", backend.port());
        let routes = format!(
            "{}preserve_host = {preserve_host}\n",
            route("/api", &upstream, &backend)
        );
        let proxy = Proxy::start(&pki, &routes).await;
        let client = client(&pki, false);
        // Fresh upstream connections, then reused ones.
        for path in [
            "/api/big",
            "/api/small",
            "/api/big",
            "/api/huge",
            "/api/small",
            "/api/huge",
        ] {
            let got = get(&client, &proxy.url(path)).await;
            let expected = if path == "/api/small" {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            assert_eq!(
                got.status, expected,
                "{path} with preserve_host = {preserve_host}"
            );
            assert!(!got.headers.contains_key("x-big"));
        }
        let text = logs().text();
        let reasons: Vec<_> = text
            .lines()
            .filter(|l| l.contains(&format!("upstream={upstream}")) && l.contains("status=502"))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:#?}");
        for line in reasons {
            assert!(
                line.contains("reason=the upstream's response head is larger than 64 KiB"),
                "{line}"
            );
        }
    }
}

/// A request body in `chunks`, with no declared length: sent chunked over HTTP/1.1, as DATA
/// frames without `content-length` over HTTP/2.
struct Unsized(std::collections::VecDeque<bytes::Bytes>);

impl hyper::body::Body for Unsized {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

fn unsized_body(chunks: usize, size: usize) -> Body {
    use http_body_util::BodyExt;
    let chunks = (0..chunks).map(|_| bytes::Bytes::from(vec![b'u'; size]));
    Unsized(chunks.collect())
        .map_err(|never| match never {})
        .boxed()
}

/// Request bodies are bounded by `max_request_body`: `[limits]` for every route, a route's own
/// for that route (0: no body at all). A declared length over it is a 413 before anything
/// reaches the backend; a body without one (chunked, HTTP/2) is counted as it arrives and cut
/// off with a 413, so the backend never gets more than the limit.
#[tokio::test]
async fn request_bodies_over_max_request_body_get_413() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let config = format!(
        "[limits]\nmax_request_body = 1000\n\n{}{}max_request_body = 100000\n\n{}max_request_body = 0\n",
        route_to("/api", "backend-api", &backend),
        route_to("/upload", "backend-api", &backend),
        route_to("/read-only", "backend-api", &backend),
    );
    let proxy = Proxy::start(&pki, &config).await;
    let post = |path: &str, length: usize| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(b'b', length));
        request
    };

    // Declared lengths: over the limit refused before the backend, at the limit forwarded.
    let answer = raw_exchange(&pki, proxy.addr, &post("/api/x", 5000)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw_exchange(&pki, proxy.addr, &post("/read-only/x", 1)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(backend.seen().is_empty());
    let answer = raw_exchange(&pki, proxy.addr, &post("/api/x", 1000)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw_exchange(&pki, proxy.addr, &post("/upload/x", 5000)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        backend
            .seen()
            .iter()
            .map(|s| s.body.len())
            .collect::<Vec<_>>(),
        [1000, 5000]
    );
    let line = logs().line_with(&["status=413", "route=/read-only"]).await;
    assert!(
        line.contains("reason=the request body is larger than the route allows (0 bytes"),
        "{line}"
    );

    // Bodies without a declared length, over HTTP/1.1 (chunked) and HTTP/2.
    for h2 in [false, true] {
        let request = |path: &str, chunks: usize| {
            Request::post(proxy.url(path))
                .body(unsized_body(chunks, 600))
                .unwrap()
        };
        let client = client(&pki, h2);
        let got = send(&client, request("/api/x", 3)).await;
        assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE, "h2: {h2}");
        let got = send(&client, request("/upload/x", 3)).await;
        assert_eq!(got.status, StatusCode::OK, "h2: {h2}");
        assert!(got.text().ends_with(&"u".repeat(1800)), "h2: {h2}");
    }
    // Of the refused bodies the backend got at most the limit (here nothing: the cut-off body
    // fails its read), never the whole.
    let lengths: Vec<usize> = backend
        .seen()
        .iter()
        .skip(2)
        .map(|s| s.body.len())
        .collect();
    assert_eq!(
        lengths.iter().filter(|&&l| l == 1800).count(),
        2,
        "{lengths:?}"
    );
    assert!(
        lengths.iter().all(|&l| l == 1800 || l <= 1000),
        "{lengths:?}"
    );
}
