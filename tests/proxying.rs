//! What a client and a backend see of a proxied exchange: routing and path rewriting, headers
//! both ways, redirects mapped back to the public origin, HTTP/2 on the public side, request
//! bodies, and WebSocket tunnelling.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode, Version};

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn routes_by_longest_prefix_and_rewrites_paths() {
    let pki = TestPki::new();
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H2_H1, "api").await;
    let v2 = Backend::recording(&pki.leaf(&["backend-v2"]), H2_H1, "v2").await;
    let files = Backend::recording(&pki.leaf(&["files"]), H1, "files").await;
    let routes = route_to("/api", "backend-api", &api)
        + &route_to("/api/v2", "backend-v2", &v2)
        + &route(
            "/files",
            &format!("https://files:{}/base/", files.port()),
            &files,
        );
    let proxy = Proxy::start(&pki, &routes).await;
    let client = client(&pki, false);

    let cases = [
        ("/api/x?q=1", "api", "/x?q=1"),
        ("/api", "api", "/"),
        ("/api/v20", "api", "/v20"),
        ("/api/v2", "v2", "/"),
        ("/api/v2/users/7?full=true", "v2", "/users/7?full=true"),
        ("/files/report.pdf", "files", "/base/report.pdf"),
        ("/files", "files", "/base/"),
    ];
    for (path, backend, _) in cases {
        let got = get(&client, &proxy.url(path)).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert_eq!(got.text(), format!("backend:{backend}\n"), "{path}");
    }
    let seen_paths = |b: &Backend| -> Vec<String> {
        b.seen()
            .iter()
            .map(|s| s.uri.path_and_query().unwrap().to_string())
            .collect()
    };
    assert_eq!(seen_paths(&api), ["/x?q=1", "/", "/v20"]);
    assert_eq!(seen_paths(&v2), ["/", "/users/7?full=true"]);
    assert_eq!(seen_paths(&files), ["/base/report.pdf", "/base/"]);

    for unrouted in ["/apix", "/", "/other/api", "/fil"] {
        let got = get(&client, &proxy.url(unrouted)).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{unrouted}");
        assert_eq!(got.text(), "404 Not Found\n");
    }
    assert_eq!(
        api.seen().len() + v2.seen().len() + files.seen().len(),
        7,
        "404s reach no backend"
    );
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_stripping() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &backend)).await;
    let req = Request::post(proxy.url("/api/form"))
        .header("connection", "x-session-hop")
        .header("x-session-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("x-custom", "kept")
        .body(full("name=value"))
        .unwrap();
    let got = send(&client(&pki, false), req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "backend:api\nname=value");

    let seen = &backend.seen()[0];
    let h = &seen.headers;
    for hop in [
        "x-session-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!h.contains_key(hop), "{hop} reached the backend");
    }
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    let public_host = format!("localhost:{}", proxy.addr.port());
    assert_eq!(h["x-forwarded-host"], public_host.as_str());
    assert_eq!(h["host"], public_host.as_str());
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(&seen.body[..], b"name=value");
}

#[tokio::test]
async fn host_is_the_upstream_authority_when_not_preserved() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let upstream = format!("https://backend-api:{}/", backend.port());
    let routes = route("/api", &upstream, &backend) + "preserve_host = false\n";
    let proxy = Proxy::start(&pki, &routes).await;
    assert_eq!(
        get(&client(&pki, false), &proxy.url("/api/")).await.status,
        StatusCode::OK
    );
    let seen = &backend.seen()[0];
    assert_eq!(
        seen.headers["host"],
        format!("backend-api:{}", backend.port()).as_str()
    );
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("localhost:{}", proxy.addr.port()).as_str()
    );
}

#[tokio::test]
async fn response_hop_by_hop_headers_are_dropped_and_locations_rewritten() {
    let pki = TestPki::new();
    let cert = pki.leaf(&["backend-api"]);
    let port_cell = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let port_for_handler = port_cell.clone();
    let backend = Backend::custom(&cert, H1, move |req, _| {
        let port = *port_for_handler.get().expect("port set before requests");
        async move {
            let path = req.uri().path().to_owned();
            Response::builder()
                .status(StatusCode::FOUND)
                .header(
                    "location",
                    format!("https://backend-api:{port}/login?next={path}"),
                )
                .header("content-location", "https://elsewhere.example/x")
                .header("connection", "x-internal")
                .header("x-internal", "secret")
                .header("keep-alive", "timeout=5")
                .header("x-visible", "yes")
                .body(empty())
                .unwrap()
        }
    })
    .await;
    port_cell.set(backend.port()).unwrap();
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &backend)).await;
    let got = get(&client(&pki, false), &proxy.url("/api/account")).await;
    assert_eq!(got.status, StatusCode::FOUND);
    assert_eq!(
        got.headers["location"],
        format!(
            "https://localhost:{}/api/login?next=/account",
            proxy.addr.port()
        )
        .as_str()
    );
    assert_eq!(
        got.headers["content-location"],
        "https://elsewhere.example/x"
    );
    assert_eq!(got.headers["x-visible"], "yes");
    assert!(!got.headers.contains_key("x-internal"));
    assert!(!got.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn http2_clients_are_served() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &backend)).await;
    let client = client(&pki, true);
    let got = get(&client, &proxy.url("/api/h2")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2);
    let seen = &backend.seen()[0];
    // HTTP/2 carries the host as :authority; an HTTP/1.1 backend still gets a Host header.
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        seen.headers["host"],
        format!("localhost:{}", proxy.addr.port()).as_str()
    );
    assert_eq!(seen.uri.path(), "/h2");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let pki = TestPki::new();
    let backend = websocket_backend(&pki).await;
    let proxy = Proxy::start(&pki, &route_to("/ws", "backend-ws", &backend)).await;
    let (mut tls, head) = open_websocket(&pki, &proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for message in ["hello", "second frame"] {
        assert_echo(&mut tls, message).await;
    }
}

#[tokio::test]
async fn shutdown_waits_for_open_websocket_tunnels() {
    let pki = TestPki::new();
    let backend = websocket_backend(&pki).await;
    let mut proxy = Proxy::start(&pki, &route_to("/ws", "backend-ws", &backend)).await;
    let (mut tls, head) = open_websocket(&pki, &proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_echo(&mut tls, "before").await;

    proxy.shutdown();
    // The tunnel keeps working while the proxy drains, and the drain waits for it.
    assert_echo(&mut tls, "during the drain").await;
    let mut task = proxy.task.take().unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), &mut task).await;
    assert!(early.is_err(), "shutdown finished with a tunnel still open");

    drop(tls);
    tokio::time::timeout(Duration::from_secs(4), task)
        .await
        .expect("the drain ends once the tunnel closes")
        .unwrap();
}
