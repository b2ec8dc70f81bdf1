//! Failure paths: dead, black-holed and slow upstreams; malformed, smuggling, oversized and slow
//! clients (written as raw bytes on the socket); and graceful shutdown with a request in flight.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use trustgate::server::linger::LINGER_TIME;

const H1: &[&[u8]] = &[b"http/1.1"];

async fn api_proxy(pki: &TestPki, backend: &Backend, extra: &str) -> Proxy {
    let routes = format!("{extra}\n{}", route_to("/api", "backend-api", backend));
    Proxy::start(pki, &routes).await
}

#[tokio::test]
async fn dead_upstream_is_a_502_naming_the_address() {
    let pki = TestPki::new();
    let (_held, closed) = refusing_address();
    let upstream = format!("https://backend-dead:{}/", closed.port());
    let proxy = Proxy::start(&pki, &route_at("/", &upstream, closed)).await;
    let line = bad_gateway(&pki, &proxy, "/x", &upstream).await;
    assert!(
        line.contains(&format!(
            "reason=connection refused by backend-dead:{} at {closed}: is the service up?",
            closed.port()
        )),
        "{line}"
    );
}

#[tokio::test]
async fn black_holed_upstream_hits_the_connect_timeout() {
    let pki = TestPki::new();
    // Accepts TCP but never speaks TLS.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = hole.accept().await {
            open.push(tcp);
        }
    });
    let upstream = format!("https://backend-hole:{}/", addr.port());
    let routes = format!(
        "[timeouts]\nconnect = \"300ms\"\n\n{}",
        route_at("/", &upstream, addr)
    );
    let proxy = Proxy::start(&pki, &routes).await;
    let line = bad_gateway(&pki, &proxy, "/x", &upstream).await;
    assert!(
        line.contains("reason=connect and TLS handshake did not finish within 300ms"),
        "{line}"
    );
    held.abort();
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let pki = TestPki::new();
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, |_, _| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(empty())
    })
    .await;
    let proxy = api_proxy(&pki, &backend, "[timeouts]\nresponse = \"300ms\"\n").await;
    let got = get(&client(&pki, false), &proxy.url("/api/slow")).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.text(), "504 Gateway Timeout\n");
    let line = logs()
        .line_with(&[
            &format!("upstream=https://backend-api:{}/", backend.port()),
            "status=504",
        ])
        .await;
    assert!(
        line.contains("reason=upstream sent no response headers within 300ms"),
        "{line}"
    );
}

#[tokio::test]
async fn the_response_timeout_starts_after_the_upload_and_a_stalled_upload_is_a_408() {
    let pki = TestPki::new();
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, |req, _| async move {
        let body = http_body_util::BodyExt::collect(req.into_body()).await;
        Response::new(full(format!(
            "{} bytes",
            body.map(|b| b.to_bytes().len()).unwrap_or(0)
        )))
    })
    .await;
    let proxy = api_proxy(
        &pki,
        &backend,
        "[timeouts]\nresponse = \"1s\"\nclient_header = \"2s\"\n\n\
         [limits]\nmin_upload_rate = 1\n",
    )
    .await;
    let head = b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\n";

    // An upload that trickles in for longer than the response timeout, never idle for long.
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(head).await.unwrap();
    for byte in [b"a", b"b", b"c", b"d", b"e"] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tls.write_all(byte).await.unwrap();
    }
    let answer = read_until_close(&mut tls, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("5 bytes"), "{answer}");

    // An upload that stops: the client hears 408 once it has been idle for client_header, also
    // when the response timeout is the shorter clock (the upstream waits for the client then,
    // not the other way round: no 504).
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(head).await.unwrap();
    tls.write_all(b"ab").await.unwrap();
    let answer = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let upstream = format!("upstream=https://backend-api:{}/", backend.port());
    let line = logs().line_with(&[&upstream, "status=408"]).await;
    assert!(
        line.contains("reason=the client stalled: no request body data arrived for 2s"),
        "{line}"
    );
}

/// What [`reads_once_then`]'s backend does after its first read.
enum AfterRead {
    HangUp,
    /// Neither reads nor answers (for 30 s).
    Stall,
}

/// A TLS backend for "backend-api" that reads once from each connection, then `then`.
async fn reads_once_then(pki: &TestPki, then: AfterRead) -> std::net::SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.leaf(&["backend-api"]).server_config(H1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hang_up = matches!(then, AfterRead::HangUp);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    if hang_up {
                        let _ = tls.shutdown().await;
                    } else {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_that_hangs_up_mid_exchange_is_a_502() {
    let pki = TestPki::new();
    // Reads the request and closes without answering.
    let addr = reads_once_then(&pki, AfterRead::HangUp).await;
    let upstream = format!("https://backend-api:{}/", addr.port());
    let proxy = Proxy::start(&pki, &route_at("/", &upstream, addr)).await;
    let line = bad_gateway(&pki, &proxy, "/x", &upstream).await;
    assert!(line.contains("closed the connection"), "{line}");
}

#[tokio::test]
async fn upstream_that_stops_mid_body_has_the_response_aborted() {
    let pki = TestPki::new();
    // Promises 100 bytes, sends 5, then keeps the connection open and silent.
    let backend = RawBackend::start(&pki.leaf(&["backend-api"]), |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello".to_vec()
    })
    .await;
    let upstream = format!("https://backend-api:{}/", backend.addr.port());
    let proxy = Proxy::start(
        &pki,
        &format!(
            "[timeouts]\nresponse = \"300ms\"\n\n{}",
            route_at("/", &upstream, backend.addr)
        ),
    )
    .await;
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        &pki,
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the client was held for {:?}",
        started.elapsed()
    );
    let line = logs().line_with(&["response aborted", "route=/"]).await;
    assert!(
        line.contains("the upstream sent no response body data for 300ms"),
        "{line}"
    );
}

#[tokio::test]
async fn upstream_that_stops_reading_the_upload_is_a_504() {
    let pki = TestPki::new();
    // Reads the request head, then neither reads nor answers.
    let addr = reads_once_then(&pki, AfterRead::Stall).await;
    let upstream = format!("https://backend-api:{}/", addr.port());
    let proxy = Proxy::start(
        &pki,
        &format!(
            "[timeouts]\nresponse = \"400ms\"\nclient_header = \"1s\"\n\n{}",
            route_at("/", &upstream, addr)
        ),
    )
    .await;
    // 256 MiB, more than the socket buffers on the way hold, sent as fast as the proxy takes it.
    let size = 256 << 20;
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(
        format!("POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let answer = read_until_close(&mut read, Duration::from_secs(10)).await;
    writer.abort();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the client was held"
    );
    let line = logs()
        .line_with(&[&format!("upstream={upstream}"), "status=504"])
        .await;
    assert!(
        line.contains("the upstream stopped reading the request body"),
        "{line}"
    );
}

#[tokio::test]
async fn smuggling_attempts_never_reach_the_upstream() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend, "").await;

    // Ambiguous framing (CL.TE and TE.CL): chunked wins, the connection closes after one answer,
    // and the request hidden behind the chunked body is never read, let alone forwarded.
    let both: [&[u8]; 2] = [
        b"POST /api/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/b HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for attempt in both {
        let answer = raw_exchange(&pki, proxy.addr, attempt).await;
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one answer, then close: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    for seen in backend.seen() {
        assert_ne!(
            seen.uri.path(),
            "/smuggled",
            "a smuggled request reached the upstream"
        );
        assert!(
            !(seen.headers.contains_key("content-length")
                && seen.headers.contains_key("transfer-encoding")),
            "the upstream saw two framings: {:?}",
            seen.headers
        );
        assert!(seen.body.is_empty());
    }

    // Invalid or conflicting framing: 400, nothing forwarded.
    let invalid: [&[u8]; 4] = [
        b"POST /api/c HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\nabc",
        b"POST /api/d HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /api/e HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, identity\r\n\r\nabc",
        b"POST /api/f HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    let before = backend.seen().len();
    for attempt in invalid {
        let answer = raw_exchange(&pki, proxy.addr, attempt).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{}\n-> {answer}",
            String::from_utf8_lossy(attempt)
        );
    }
    assert_eq!(
        backend.seen().len(),
        before,
        "an invalid request was forwarded"
    );
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend, "").await;
    let cases: [&[u8]; 11] = [
        b"GARBAGE\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nBad Header Name: x\r\n\r\n",
        b"GET /api/../admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /api/..%2fadmin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /api/..;/admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: user@evil\r\nConnection: close\r\n\r\n",
        b"GET /api/x HTTP/9.9\r\nHost: localhost\r\n\r\n",
    ];
    for case in cases {
        let answer = raw_exchange(&pki, proxy.addr, case).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 505"),
            "{}\n-> {answer}",
            String::from_utf8_lossy(case)
        );
    }
    assert!(backend.seen().is_empty());
    logs()
        .line_with(&[
            "status=400",
            "reason=malformed request: the path holds '.' or '..' segments",
        ])
        .await;
}

/// A request head of `size` bytes, short of its end.
fn unfinished_head(size: usize) -> Vec<u8> {
    let mut head = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', size));
    head
}

/// A client refused while it is still sending reads why: the proxy sends its 431, shuts its
/// side and drains what keeps arriving (lingering close). Closed at once, the socket would
/// answer the client's next write with a reset, and could drop the unsent part of the 431.
#[tokio::test]
async fn oversized_request_head_gets_431_while_the_client_keeps_sending() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend, "").await;
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(&unfinished_head(128 * 1024)).await.unwrap();
    // The proxy has answered and closed by now; the client, not reading, sends on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..8 {
        tls.write_all(&[b'a'; 16 * 1024])
            .await
            .expect("what arrives after the answer is drained, not reset");
    }
    let answer = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(backend.seen().is_empty());
    // A head under the limit still passes.
    let mut fine = unfinished_head(16 * 1024);
    fine.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(&pki, proxy.addr, &fine).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Lingering is bounded: a refused client that never stops sending has its connection closed
/// after LINGER_TIME when it trickles, and after LINGER_BYTES when it floods.
#[tokio::test]
async fn a_refused_client_that_never_stops_sending_is_cut_off() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend, "").await;

    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(&unfinished_head(128 * 1024)).await.unwrap();
    let refused = tokio::time::Instant::now();
    let (mut tcp, _) = tls.into_inner();
    let cut = loop {
        let lingered = refused.elapsed();
        assert!(lingered < LINGER_TIME * 3, "still open after {lingered:?}");
        if tcp.write_all(&[0u8; 1024]).await.is_err() {
            break lingered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cut >= LINGER_TIME * 3 / 4, "closed after {cut:?}");

    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(&unfinished_head(128 * 1024)).await.unwrap();
    let (mut tcp, _) = tls.into_inner();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    // Far more than LINGER_BYTES and every socket buffer on the way; at loopback speed well
    // within LINGER_TIME, so only the byte bound can stop it.
    while sent < 256 * 1024 * 1024 && tcp.write_all(&chunk).await.is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 64 * 1024 * 1024, "{sent} bytes drained");
}

/// The watchdog sleeps through the requests of a busy keep-alive connection (they move its clocks
/// later, never earlier); a head that starts after them, and stalls, must still wake it: right
/// after the requests, and after a pause in which it found the connection idle and went back to
/// sleep until the idle clock (30 s here).
#[tokio::test]
async fn a_head_that_stalls_after_keep_alive_requests_is_cut_off() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let clocks = "[timeouts]\nclient_header = \"300ms\"\nidle = \"30s\"\n";
    let proxy = api_proxy(&pki, &backend, clocks).await;
    for pause in [Duration::ZERO, Duration::from_millis(800)] {
        let mut tls = raw_tls(&pki, proxy.addr).await;
        for _ in 0..20 {
            tls.write_all(b"HEAD /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut tls, &mut byte)
                    .await
                    .unwrap();
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        }
        tokio::time::sleep(pause).await;
        tls.write_all(b"GET /api/x HTTP/1.1\r\nHost: lo")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let _ = read_until_close(&mut tls, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "after a {pause:?} pause, the stalled head was cut off after {took:?}, \
             expected [timeouts] client_header = 300ms"
        );
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(
        &pki,
        &backend,
        "[timeouts]\nclient_header = \"300ms\"\nidle = \"1s\"\n",
    )
    .await;

    // A request head that never ends.
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_close(&mut tls, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "connection was not closed: {answer:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A keep-alive connection left idle after a full exchange is closed too (Apache's
    // KeepAliveTimeout), after [timeouts] idle, not the shorter client_header.
    let mut tls = raw_tls(&pki, proxy.addr).await;
    // Before the request: the idle clock cannot start earlier than this.
    let started = std::time::Instant::now();
    tls.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut tls, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let _ = read_until_close(&mut tls, Duration::from_secs(10)).await;
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_secs(5),
        "idle connection closed after {idle_for:?}, expected [timeouts] idle = 1s"
    );

    // A TLS handshake that never starts.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_close(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "handshake was not cut off"
    );
    assert!(answer.is_empty());
    assert_eq!(
        backend.seen().len(),
        1,
        "only the one complete request reached the backend"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_their_turn() {
    logs(); // capture from the start: the limit warning comes from the accept loop
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\nkey = \"public/privkey.pem\"\n\
         max_connections = 2\n\n[upstream_tls]\nca = \"ca.pem\"\n\n{}",
        route_to("/api", "backend-api", &backend)
    );
    let path = pki.path("limited.toml");
    write(&path, &config);
    let config = trustgate::Config::load(&path).unwrap();
    assert_eq!(config.server.max_connections, 2);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(trustgate::Gateway::new(&config).serve(listener, std::future::pending()));

    let first = raw_tls(&pki, addr).await;
    let _second = raw_tls(&pki, addr).await;
    // The third client's TCP connection waits in the accept queue: no TLS handshake yet.
    let third = tokio::spawn({
        let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_tls(&[b"http/1.1"])));
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond the limit"
    );
    logs().line_with(&["connection limit reached"]).await;
    drop(first);
    let handshake = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third client is served once a slot frees")
        .unwrap();
    assert!(handshake.is_ok(), "{handshake:?}");
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_stop_the_listener() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = api_proxy(&pki, &backend, "").await;
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: plain-http-on-a-tls-port\r\n\r\n")
            .await
            .unwrap();
        let _ = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    }
    let got = get(&client(&pki, false), &proxy.url("/api/still-up")).await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let pki = TestPki::new();
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (arrived_tx, release_rx) = (arrived.clone(), release.clone());
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, move |_, _| {
        let (arrived, release) = (arrived_tx.clone(), release_rx.clone());
        async move {
            arrived.notify_one();
            release.notified().await;
            Response::new(full("finished"))
        }
    })
    .await;
    let mut proxy = api_proxy(&pki, &backend, "").await;
    let client = client(&pki, false);
    let url = proxy.url("/api/long");
    let in_flight = tokio::spawn(async move { get(&client, &url).await });

    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("request reached the backend");
    proxy.shutdown();
    // New connections are refused once the listener is closed.
    let addr = proxy.addr;
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after shutdown began");
    release.notify_one();

    let got = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "finished");
    let task = proxy.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("drained within the grace period")
        .unwrap();
}

#[tokio::test]
async fn shutdown_grace_period_is_bounded() {
    let pki = TestPki::new();
    let arrived = Arc::new(Notify::new());
    let arrived_tx = arrived.clone();
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, move |_, _| {
        let arrived = arrived_tx.clone();
        async move {
            arrived.notify_one();
            tokio::time::sleep(Duration::from_secs(60)).await;
            Response::new(empty())
        }
    })
    .await;
    // The harness sets a 5s grace; this test needs its own [server] table, so the config is
    // written in full.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\nkey = \"public/privkey.pem\"\n\
         shutdown_grace = \"300ms\"\n\n[upstream_tls]\nca = \"ca.pem\"\n\n{}",
        route_to("/api", "backend-api", &backend)
    );
    let path = pki.path("grace.toml");
    write(&path, &config);
    let config = trustgate::Config::load(&path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let serving = tokio::spawn(
        trustgate::Gateway::new(&config).serve(listener, async move { stopped.notified().await }),
    );
    let client = client(&pki, false);
    let url = format!("https://localhost:{}/api/forever", addr.port());
    let _stuck = tokio::spawn(async move {
        client
            .request(http::Request::get(url).body(empty()).unwrap())
            .await
    });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("request reached the backend");
    logs(); // capture the drain's log lines
    stop.notify_one();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after the grace period")
        .unwrap();
    logs().line_with(&["shutdown grace period elapsed"]).await;
}

#[tokio::test]
async fn connect_asterisk_and_overlong_targets_are_refused() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    // A root route would match anything: CONNECT and `OPTIONS *` must still not pass.
    // A long base path: a long request path then fits the 64 KiB head but not a URI once
    // rewritten.
    let base = "b".repeat(4000);
    let upstream = format!("https://backend-api:{}/{base}/", backend.port());
    let proxy = Proxy::start(&pki, &route("/", &upstream, &backend)).await;
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
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 63_000));
    long.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(&pki, proxy.addr, &long).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_client_that_abandons_its_upload_is_a_400_not_an_upstream_failure() {
    let pki = TestPki::new();
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, |req, _| async move {
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        Response::new(full("read"))
    })
    .await;
    let proxy = api_proxy(&pki, &backend, "").await;
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\nonly a little")
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    drop(tls);
    let upstream = format!("upstream=https://backend-api:{}/", backend.port());
    let line = logs().line_with(&[&upstream, "reason="]).await;
    assert!(line.contains("status=400"), "{line}");
    assert!(
        line.contains("reason=the client's request body ended early"),
        "{line}"
    );
    assert!(
        line.contains("INFO"),
        "a client's own failure is not a warning: {line}"
    );
}

#[tokio::test]
async fn a_stalled_upload_to_an_http2_upstream_is_a_408_too() {
    let pki = TestPki::new();
    // HTTP/2 upstream (ALPN h2, Host rewritten): it reports a failed request body only as a reset
    // stream, yet the client hears the same 408 as over HTTP/1.1.
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), &[b"h2"], |req, _| async move {
        let body = http_body_util::BodyExt::collect(req.into_body()).await;
        Response::new(full(format!(
            "{} bytes",
            body.map(|b| b.to_bytes().len()).unwrap_or(0)
        )))
    })
    .await;
    let route =
        route_to("/api", "backend-api", &backend).replace("\n\n", "\npreserve_host = false\n\n");
    let proxy = Proxy::start(
        &pki,
        &format!("[timeouts]\nclient_header = \"400ms\"\n\n{route}"),
    )
    .await;
    let mut tls = raw_tls(&pki, proxy.addr).await;
    tls.write_all(b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nab")
        .await
        .unwrap();
    let answer = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let upstream = format!("upstream=https://backend-api:{}/", backend.port());
    let line = logs().line_with(&[&upstream, "status=408"]).await;
    assert!(
        line.contains("reason=the client stalled: no request body data arrived for 400ms"),
        "{line}"
    );
}
