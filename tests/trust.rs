//! The trust enforcement point: only certificates from the internal CA, valid now, for the
//! upstream's service name and for server authentication (an extendedKeyUsage naming serverAuth),
//! through intermediates allowed to sign certificates, get a request through. Everything else
//! is a 502 whose log line says why, while the client learns nothing internal.

mod common;

use common::*;
use http::{Request, StatusCode, Version};

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn good_chain_passes_with_service_name_as_sni() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H2_H1, "api").await;
    let routes = route_to("/api", "backend-api", &backend) + "preserve_host = false\n";
    let proxy = Proxy::start(&pki, &routes).await;

    let got = get(&client(&pki, false), &proxy.url("/api/hello?q=1")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "backend:api\n");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("backend-api"));
    assert_eq!(seen[0].uri.path_and_query().unwrap().as_str(), "/hello?q=1");
    // The backend offered h2 by ALPN, so the proxy spoke HTTP/2 to it, with the service name as
    // :authority.
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].uri.authority().unwrap().host(), "backend-api");
    backend.join().await;
}

#[tokio::test]
async fn http1_only_upstream_gets_http1() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = Proxy::start(&pki, &route_to("/", "backend-api", &backend)).await;
    let got = get(&client(&pki, false), &proxy.url("/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(backend.seen()[0].version, Version::HTTP_11);
}

#[tokio::test]
async fn preserve_host_keeps_sni_and_verified_name_on_the_service() {
    let pki = TestPki::new();
    // The backend offers h2, but HTTP/2 would put the service name in :authority beside the
    // client's Host: a preserved Host goes over HTTP/1.1.
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H2_H1, "api").await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &backend)).await;
    for h2_client in [false, true] {
        let got = get(&client(&pki, h2_client), &proxy.url("/api/")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    let seen = &backend.seen()[1];
    assert_eq!(seen.version, Version::HTTP_11);
    // Apache with ProxyPreserveHost sends the client's host as SNI; trustgate does not.
    assert_eq!(
        seen.headers["host"],
        format!("localhost:{}", proxy.addr.port()).as_str()
    );
    assert_eq!(seen.sni.as_deref(), Some("backend-api"));
}

/// Starts a backend with `cert`, routes `/svc` to `https://<name>:<port>/`, asserts a bare 502
/// that never reached the backend, and returns the proxy's log line for it.
async fn refused(pki: &TestPki, cert: &ServerCert, name: &str) -> String {
    let backend = Backend::recording(cert, H2_H1, "x").await;
    let upstream = format!("https://{name}:{}/", backend.port());
    let proxy = Proxy::start(pki, &route("/svc", &upstream, &backend)).await;
    let line = bad_gateway(pki, &proxy, "/svc/x", &upstream).await;
    assert!(
        backend.seen().is_empty(),
        "the request must not reach an untrusted backend"
    );
    for field in [
        "request not proxied",
        "route=/svc",
        "peer=127.0.0.1:",
        "status=502",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    line
}

#[tokio::test]
async fn wrong_name_is_refused_and_logged_with_both_names() {
    let pki = TestPki::new();
    let line = refused(&pki, &pki.leaf(&["other-service"]), "backend-api").await;
    assert!(
        line.contains(r#"reason=certificate not valid for name "backend-api"; it is valid for "other-service""#),
        "{line}"
    );
}

#[tokio::test]
async fn expired_is_refused() {
    let pki = TestPki::new();
    let line = refused(&pki, &pki.expired("backend-exp"), "backend-exp").await;
    assert!(
        line.contains("reason=certificate expired 2 days ago"),
        "{line}"
    );
}

#[tokio::test]
async fn not_yet_valid_is_refused() {
    let pki = TestPki::new();
    let line = refused(&pki, &pki.not_yet_valid("backend-future"), "backend-future").await;
    assert!(line.contains("reason=certificate not valid yet"), "{line}");
    assert!(
        line.contains("(in 2 days)") || line.contains("(in 3 days)"),
        "{line}"
    );
}

#[tokio::test]
async fn foreign_ca_is_refused() {
    let pki = TestPki::new();
    let line = refused(&pki, &pki.foreign("backend-foreign"), "backend-foreign").await;
    assert!(line.contains("reason=unknown issuer"), "{line}");
}

#[tokio::test]
async fn publicly_trusted_certificate_is_not_trusted_for_upstreams() {
    // The public CA is trusted by clients, never by the proxy for its upstreams.
    let pki = TestPki::new();
    let line = refused(
        &pki,
        &pki.issued_by_public_ca("backend-public"),
        "backend-public",
    )
    .await;
    assert!(line.contains("reason=unknown issuer"), "{line}");
}

#[tokio::test]
async fn self_signed_is_refused() {
    let pki = TestPki::new();
    let line = refused(&pki, &pki.self_signed("backend-self"), "backend-self").await;
    assert!(
        line.contains("reason=the upstream presents a CA certificate as its own"),
        "{line}"
    );
}

#[tokio::test]
async fn incomplete_chain_is_refused() {
    let pki = TestPki::new();
    let line = refused(
        &pki,
        &pki.leaf_without_intermediate("backend-lonely"),
        "backend-lonely",
    )
    .await;
    assert!(line.contains("reason=unknown issuer"), "{line}");
    assert!(line.contains("does not send its intermediate"), "{line}");
}

#[tokio::test]
async fn client_auth_only_certificate_is_refused() {
    let pki = TestPki::new();
    let line = refused(&pki, &pki.client_only("backend-client"), "backend-client").await;
    assert!(
        line.contains("reason=certificate is not for server authentication"),
        "{line}"
    );
}

#[tokio::test]
async fn leaf_without_extended_key_usage_is_refused() {
    // webpki takes a leaf with no extendedKeyUsage extension as good for any purpose.
    let pki = TestPki::new();
    let line = refused(
        &pki,
        &pki.leaf_without_eku("backend-noeku"),
        "backend-noeku",
    )
    .await;
    assert!(
        line.contains(
            "reason=certificate has no extendedKeyUsage extension: a service certificate must \
             carry serverAuth"
        ),
        "{line}"
    );
}

#[tokio::test]
async fn intermediate_without_key_cert_sign_is_refused() {
    // webpki never reads an issuer's keyUsage; RFC 5280 4.2.1.3 forbids this one to sign.
    let pki = TestPki::new();
    let cert = pki.leaf_via_intermediate_without_key_cert_sign("backend-badca");
    let line = refused(&pki, &cert, "backend-badca").await;
    assert!(
        line.contains(
            r#"reason=intermediate "CN=Test Non-Signing Intermediate" may not sign certificates: its keyUsage lacks keyCertSign"#
        ),
        "{line}"
    );
}

#[tokio::test]
async fn ip_upstream_needs_an_ip_san() {
    let pki = TestPki::new();
    let good = Backend::recording(&pki.leaf(&["127.0.0.1"]), H1, "ip").await;
    let bad = Backend::recording(&pki.leaf(&["backend-dns"]), H1, "dns").await;
    let routes = format!(
        "[[route]]\nprefix = \"/good\"\nupstream = \"https://127.0.0.1:{}/\"\n\n\
         [[route]]\nprefix = \"/bad\"\nupstream = \"https://127.0.0.1:{}/\"\n",
        good.port(),
        bad.port()
    );
    let proxy = Proxy::start(&pki, &routes).await;
    let client = client(&pki, false);
    assert_eq!(
        get(&client, &proxy.url("/good/x")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&client, &proxy.url("/bad/x")).await.status,
        StatusCode::BAD_GATEWAY
    );
    let line = logs()
        .line_with(&[
            &format!("upstream=https://127.0.0.1:{}/", bad.port()),
            "reason=",
        ])
        .await;
    assert!(
        line.contains(
            r#"certificate not valid for name "127.0.0.1"; it is valid for "backend-dns""#
        ),
        "{line}"
    );
}

#[tokio::test]
async fn plain_http_upstream_is_refused() {
    let pki = TestPki::new();
    // A plain-TCP "backend" that answers HTTP/1.1 in clear text.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for _ in 0..4 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let upstream = format!("https://backend-plain:{}/", addr.port());
    let proxy = Proxy::start(&pki, &route_at("/p", &upstream, addr)).await;
    let line = bad_gateway(&pki, &proxy, "/p", &upstream).await;
    assert!(line.contains("did not answer with valid TLS"), "{line}");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let pki = TestPki::new();
    // (backend ALPN, extra route line, most upstream connections for 10 sequential requests).
    // hyper-util hands an HTTP/1.1 connection back to its pool from a spawned task, so a request
    // that follows at once may open a spare one; HTTP/2 multiplexes on exactly one.
    let cases = [(H1, "", 2), (H2_H1, "preserve_host = false\n", 1)];
    for (alpn, extra, most) in cases {
        let backend = Backend::recording(&pki.leaf(&["backend-pool"]), alpn, "pool").await;
        let routes = route_to("/", "backend-pool", &backend) + extra;
        let proxy = Proxy::start(&pki, &routes).await;
        let client = client(&pki, false);
        for i in 0..10 {
            let req = Request::get(proxy.url(&format!("/{i}")))
                .body(empty())
                .unwrap();
            assert_eq!(send(&client, req).await.status, StatusCode::OK);
        }
        let peers: std::collections::HashSet<_> = backend.seen().iter().map(|s| s.peer).collect();
        assert!(
            peers.len() <= most,
            "10 sequential requests used {} upstream connections (ALPN {alpn:?})",
            peers.len()
        );
    }
}
