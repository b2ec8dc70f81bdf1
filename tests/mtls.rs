//! Mutual TLS both ways, with real TLS on loopback and certificates made per test.
//! - Upstream: the proxy presents its client certificate (global, or a route's own) to backends
//!   that demand one, rotated by reload; identities that cannot work are config errors.
//! - Public listener: `[server.client_auth]` in `require` and `optional` modes, routes that demand
//!   a certificate, the verified identity forwarded (RFC 9440) and forged identity headers
//!   deleted, and a client CRL reload that closes revoked clients' connections and is not
//!   bypassed by session resumption.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trustgate::pki::{Ca, Validity};

use common::*;

const H1: &[&[u8]] = &[b"http/1.1"];

/// Writes `cert` as `<name>.crt` (chain) and `<name>.key` in the test folder.
fn install(pki: &TestPki, name: &str, cert: &ServerCert) {
    write(&pki.path(&format!("{name}.crt")), &cert.chain_pem);
    write(&pki.path(&format!("{name}.key")), &cert.key_pem);
}

fn identity(name: &str) -> String {
    format!("client_cert = \"{name}.crt\"\nclient_key = \"{name}.key\"")
}

#[tokio::test]
async fn the_proxy_presents_its_client_certificate_and_rotates_it_by_reload() {
    let pki = TestPki::new();
    install(
        &pki,
        "proxy",
        &pki.client_cert_from(&pki.intermediate, "trustgate-proxy"),
    );
    install(
        &pki,
        "reports",
        &pki.client_cert_from(&pki.intermediate, "reports-client"),
    );
    let api_tls = pki.leaf(&["backend-api"]).mtls_config(H1, &pki.root);
    let api = Backend::recording_with(api_tls, "api").await;
    let reports_tls = pki.leaf(&["backend-reports"]).mtls_config(H1, &pki.root);
    let reports = Backend::recording_with(reports_tls, "reports").await;
    let rest = route_to("/api", "backend-api", &api)
        + &route_to("/reports", "backend-reports", &reports)
        + "upstream_client_cert = \"reports.crt\"\nupstream_client_key = \"reports.key\"\n";
    let proxy = Proxy::start_with(&pki, &config_text("", &identity("proxy"), &rest)).await;
    let client = client(&pki, false);

    assert_eq!(
        get(&client, &proxy.url("/api/a")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&client, &proxy.url("/reports/a")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.seen()[0].client_cert.as_deref(),
        Some("CN=trustgate-proxy")
    );
    assert_eq!(
        reports.seen()[0].client_cert.as_deref(),
        Some("CN=reports-client")
    );

    // A new certificate in the same files: the next handshake presents it.
    install(
        &pki,
        "proxy",
        &pki.client_cert_from(&pki.intermediate, "trustgate-proxy-2"),
    );
    proxy.reload().await;
    assert_eq!(
        get(&client, &proxy.url("/api/b")).await.status,
        StatusCode::OK
    );
    let seen = api.seen();
    assert_eq!(seen[1].client_cert.as_deref(), Some("CN=trustgate-proxy-2"));
    // The route with its own identity was not touched.
    assert_eq!(
        get(&client, &proxy.url("/reports/b")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        reports.seen()[1].client_cert.as_deref(),
        Some("CN=reports-client")
    );
}

#[tokio::test]
async fn a_backend_that_demands_a_certificate_the_proxy_lacks_is_a_502_saying_so() {
    let pki = TestPki::new();
    let api_tls = pki.leaf(&["backend-api"]).mtls_config(H1, &pki.root);
    let api = Backend::recording_with(api_tls, "api").await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &api)).await;
    let upstream = format!("https://backend-api:{}/", api.port());
    let reason = bad_gateway(&pki, &proxy, "/api/x", &upstream).await;
    assert!(reason.contains("demanded a client certificate"), "{reason}");
    assert!(api.seen().is_empty());

    // A certificate the backend does not trust: refused, and said so.
    let other_root = Ca::root("Other Client Root", Validity::days(30)).unwrap();
    install(
        &pki,
        "stranger",
        &pki.client_cert_from(&other_root, "stranger"),
    );
    let proxy = Proxy::start_with(
        &pki,
        &config_text(
            "",
            &identity("stranger"),
            &route_to("/api", "backend-api", &api),
        ),
    )
    .await;
    let got = get(&client(&pki, false), &proxy.url("/api/y")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    logs()
        .line_with(&[
            &format!("upstream={upstream}"),
            "refused the proxy's client certificate",
        ])
        .await;
}

#[tokio::test]
async fn client_identities_that_cannot_work_are_config_errors() {
    let pki = TestPki::new();
    install(&pki, "server-only", &pki.leaf(&["trustgate-proxy"]));
    write(&pki.path("ca.crt"), &pki.intermediate.cert_pem());
    write(&pki.path("ca.key"), &pki.intermediate.key_pem());
    let mut expired = trustgate::pki::LeafRequest::server("old-proxy", 30);
    expired.usage = trustgate::pki::Usage::Client;
    expired.validity = Validity::relative(time::Duration::days(-10), time::Duration::days(-1));
    let issued = pki.intermediate.issue(&expired).unwrap();
    install(
        &pki,
        "expired",
        &ServerCert::from_issued(issued, &[&pki.intermediate]),
    );
    let good = pki.client_cert_from(&pki.intermediate, "trustgate-proxy");
    let other = pki.client_cert_from(&pki.intermediate, "other");
    write(&pki.path("mismatch.crt"), &good.chain_pem);
    write(&pki.path("mismatch.key"), &other.key_pem);
    let route = "[[route]]\nprefix = \"/\"\nupstream = \"https://backend-api:8443/\"\n";
    let cases = [
        (identity("server-only"), "lacks clientAuth"),
        (identity("ca"), "is a CA certificate"),
        (identity("expired"), "expired on"),
        (identity("mismatch"), "does not match the certificate"),
        (
            "client_cert = \"mismatch.crt\"".to_owned(),
            "client_cert and upstream_tls.client_key go together",
        ),
    ];
    for (keys, expected) in cases {
        let path = pki.path("identity.toml");
        write(&path, &config_text("", &keys, route));
        let err = trustgate::Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(expected), "{keys}: {err}");
        assert!(err.contains("upstream_tls.client_"), "{err}");
    }
    // The same rules for a route's own identity, named by the route's key.
    let path = pki.path("identity.toml");
    let route_identity = format!(
        "{route}upstream_client_cert = \"server-only.crt\"\nupstream_client_key = \"server-only.key\"\n"
    );
    write(&path, &config_text("", "", &route_identity));
    let err = trustgate::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("route[0].upstream_client_cert") && err.contains("lacks clientAuth"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Client certificates on the public listener

/// A pooled client presenting `cert`.
fn client_with(pki: &TestPki, cert: &ServerCert, h2: bool) -> TestClient {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let mut tls = pki.client_tls_with_cert(&[], cert);
    tls.alpn_protocols.clear();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if alpn[0] == b"h2" {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// GET over a fresh raw TLS connection presenting `tls`'s certificate; the response text, or
/// empty when the proxy refused the connection.
async fn raw_get(
    proxy: &Proxy,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> (String, Option<rustls::HandshakeKind>) {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let Ok(mut stream) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return (String::new(), None);
    };
    let kind = stream.get_ref().1.handshake_kind();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (String::new(), kind);
    }
    (
        read_until_close(&mut stream, Duration::from_secs(5)).await,
        kind,
    )
}

#[tokio::test]
async fn require_mode_refuses_clients_without_a_valid_certificate() {
    let pki = TestPki::new();
    let clients = ClientPki::new(&pki);
    let alice = clients.issue(&pki, "alice");
    let mallory = clients.issue(&pki, "mallory");
    clients.publish(&pki, &[&mallory]);
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let text = config_text(
        &client_auth("require", ""),
        "",
        &route_to("/api", "backend-api", &api),
    );
    let proxy = Proxy::start_with(&pki, &text).await;

    let none = Arc::new(pki.client_tls(&[b"http/1.1"]));
    let (answer, _) = raw_get(&proxy, none, "/api/x").await;
    assert!(
        !answer.contains("HTTP/1.1"),
        "answered without a certificate: {answer}"
    );
    logs()
        .line_with(&[
            "client certificate refused",
            "no client certificate presented",
        ])
        .await;

    let revoked = Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &mallory));
    let (answer, _) = raw_get(&proxy, revoked, "/api/x").await;
    assert!(
        !answer.contains("HTTP/1.1"),
        "answered a revoked certificate: {answer}"
    );
    let serial: String = serial_of(&mallory.chain[0])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    logs()
        .line_with(&[
            "client certificate refused",
            &format!("certificate revoked (serial 0x{serial}"),
        ])
        .await;

    // The upstream CA is not a client CA: a service certificate from it does not pass.
    let service = pki.client_cert_from(&pki.intermediate, "svc");
    let (answer, _) = raw_get(
        &proxy,
        Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &service)),
        "/api/x",
    )
    .await;
    assert!(!answer.contains("HTTP/1.1"), "{answer}");

    let valid = Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &alice));
    let (answer, _) = raw_get(&proxy, valid, "/api/x").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(api.seen().len(), 1, "only alice got through");
    assert_eq!(api.seen()[0].headers["x-client-cert-subject"], "CN=alice");
    logs()
        .line_with(&["trustgate::access", "client_cert=CN=alice"])
        .await;
}

#[tokio::test]
async fn optional_mode_lets_routes_demand_a_certificate() {
    let pki = TestPki::new();
    let clients = ClientPki::new(&pki);
    let alice = clients.issue(&pki, "alice");
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let rest = route_to("/admin", "backend-api", &api)
        + "require_client_cert = true\n\n"
        + &route_to("/open", "backend-api", &api);
    let proxy =
        Proxy::start_with(&pki, &config_text(&client_auth("optional", ""), "", &rest)).await;

    let anonymous = client(&pki, false);
    assert_eq!(
        get(&anonymous, &proxy.url("/admin/x")).await.status,
        StatusCode::FORBIDDEN
    );
    logs()
        .line_with(&["status=403", "requires a client certificate"])
        .await;
    assert_eq!(
        get(&anonymous, &proxy.url("/open/x")).await.status,
        StatusCode::OK
    );
    for h2 in [false, true] {
        let known = client_with(&pki, &alice, h2);
        assert_eq!(
            get(&known, &proxy.url("/admin/x")).await.status,
            StatusCode::OK,
            "h2 {h2}"
        );
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[0].headers.get("client-cert").is_none(),
        "no certificate, no identity"
    );
    assert_eq!(seen[2].version, http::Version::HTTP_11);

    // A reload to `require`: an open connection without a certificate is closed, alice's stays.
    let keep_alive = |mut stream: Tls| async move {
        stream
            .write_all(b"GET /open/k HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stream
    };
    let mut anonymous = keep_alive(raw_tls(&pki, proxy.addr).await).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let alice_tls = Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &alice));
    let known = tokio_rustls::TlsConnector::from(alice_tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut known = keep_alive(known).await;
    write(
        &proxy.config_path,
        &config_text(&client_auth("require", ""), "", &rest),
    );
    proxy.reload().await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), anonymous.read(&mut buf))
        .await
        .expect("the anonymous connection closes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    known = keep_alive(known).await;
    drop(known);

    // A route that demands a certificate needs a listener that can ask for one.
    let path = pki.path("no-auth.toml");
    write(&path, &config_text("", "", &rest));
    let err = trustgate::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("route[0].require_client_cert") && err.contains("[server.client_auth]"),
        "{err}"
    );
}

#[tokio::test]
async fn the_verified_certificate_reaches_the_backend_intact() {
    let pki = TestPki::new();
    let clients = ClientPki::new(&pki);
    let alice = clients.issue(&pki, "alice");
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let server = client_auth("require", "forward_chain = true");
    let proxy = Proxy::start_with(
        &pki,
        &config_text(&server, "", &route_to("/api", "backend-api", &api)),
    )
    .await;
    let got = get(&client_with(&pki, &alice, false), &proxy.url("/api/x")).await;
    assert_eq!(got.status, StatusCode::OK);

    let headers = &api.seen()[0].headers;
    let decode = |value: &str| {
        let inner = value
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(inner)
            .unwrap()
    };
    let leaf = headers["client-cert"].to_str().unwrap();
    assert_eq!(
        decode(leaf),
        alice.chain[0].to_vec(),
        "Client-Cert is the leaf's DER"
    );
    let chain = headers["client-cert-chain"].to_str().unwrap();
    assert_eq!(decode(chain), clients.intermediate.cert().to_vec());
    assert_eq!(headers["x-client-cert-subject"], "CN=alice");
}

#[tokio::test]
async fn forged_identity_headers_never_reach_a_backend() {
    let pki = TestPki::new();
    let clients = ClientPki::new(&pki);
    let alice = clients.issue(&pki, "alice");
    let api = Backend::recording(&pki.leaf(&["backend-api"]), &[b"h2", b"http/1.1"], "api").await;
    let route = route_to("/api", "backend-api", &api);
    let off = Proxy::start(&pki, &route).await;
    let optional = Proxy::start_with(
        &pki,
        &config_text(&client_auth("optional", "forward_chain = true"), "", &route),
    )
    .await;
    let forged = [
        ("Client-Cert", ":Zm9yZ2Vk:"),
        ("CLIENT-CERT-CHAIN", ":Zm9yZ2Vk:"),
        ("x-Client-Cert-Subject", "CN=admin"),
        (
            "X-Forwarded-Client-Cert",
            "By=spiffe://x;Subject=\"CN=admin\"",
        ),
        ("X-SSL-Client-Verify", "SUCCESS"),
        ("x-ssl-client-s-dn", "CN=admin"),
        ("X-Ssl-Client-Cert", "forged"),
    ];
    let send_forged = |client: TestClient, url: String| async move {
        let mut request = Request::get(url);
        for (name, value) in forged {
            request = request.header(name, value);
        }
        send(&client, request.body(empty()).unwrap()).await
    };
    for h2 in [false, true] {
        for proxy in [&off, &optional] {
            let got = send_forged(client(&pki, h2), proxy.url("/api/x")).await;
            assert_eq!(got.status, StatusCode::OK);
        }
        let got = send_forged(client_with(&pki, &alice, h2), optional.url("/api/x")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 6);
    for (i, request) in seen.iter().enumerate() {
        let names: Vec<&str> = request.headers.keys().map(|n| n.as_str()).collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("x-ssl-client-") || *n == "x-forwarded-client-cert"),
            "request {i}: {names:?}"
        );
        let with_cert = i % 3 == 2;
        for name in ["client-cert", "client-cert-chain", "x-client-cert-subject"] {
            let values: Vec<_> = request.headers.get_all(name).iter().collect();
            if with_cert {
                assert_eq!(values.len(), 1, "request {i}: {name} {values:?}");
                assert_ne!(values[0], "CN=admin");
                assert_ne!(values[0], ":Zm9yZ2Vk:");
            } else {
                assert!(
                    values.is_empty(),
                    "request {i}: forged {name} passed: {values:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_client_crl_reload_closes_revoked_clients_and_resumption_does_not_bypass_it() {
    let pki = TestPki::new();
    let clients = ClientPki::new(&pki);
    let alice = clients.issue(&pki, "alice");
    let bob = clients.issue(&pki, "bob");
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let ws = websocket_backend(&pki).await;
    let routes = route_to("/api", "backend-api", &api) + &route_to("/ws", "backend-ws", &ws);
    let text = config_text(&client_auth("require", ""), "", &routes);
    let proxy = Proxy::start_with(&pki, &text).await;
    // One client config per person: its session cache is what resumption draws on.
    let alice_tls = Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &alice));

    let (answer, kind) = raw_get(&proxy, alice_tls.clone(), "/api/1").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    let (answer, kind) = raw_get(&proxy, alice_tls.clone(), "/api/2").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        kind,
        Some(rustls::HandshakeKind::Resumed),
        "the control: sessions resume"
    );

    // Alice and Bob each hold a keep-alive connection open.
    let open = |tls: Arc<rustls::ClientConfig>| async move {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        stream
            .write_all(b"GET /api/k HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stream
    };
    let mut alice_conn = open(alice_tls.clone()).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let alice_ws = tokio_rustls::TlsConnector::from(alice_tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut alice_tunnel, _) = upgrade_to_websocket(alice_ws).await;
    assert_echo(&mut alice_tunnel, "hi").await;
    let mut bob_conn = open(Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &bob))).await;

    clients.publish(&pki, &[&alice]);
    proxy.reload().await;

    // Alice's open connection is closed; Bob's is not.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), alice_conn.read(&mut buf))
        .await
        .expect("alice's connection closes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    logs()
        .line_with(&[
            "closed a client connection",
            "certificate revoked (serial 0x",
        ])
        .await;
    // So is her WebSocket tunnel, which hyper no longer holds.
    let read = tokio::time::timeout(Duration::from_secs(5), alice_tunnel.read(&mut buf))
        .await
        .expect("alice's tunnel closes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    bob_conn
        .write_all(b"GET /api/still HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), bob_conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "bob keeps his connection"
    );

    // Alice's cached session does not carry her past the new CRL.
    let before = api.seen().len();
    let (answer, kind) = raw_get(&proxy, alice_tls, "/api/3").await;
    assert!(
        !answer.contains("HTTP/1.1"),
        "a resumed session skipped the CRL: {answer}"
    );
    assert_ne!(kind, Some(rustls::HandshakeKind::Resumed));
    assert_eq!(api.seen().len(), before);
}
