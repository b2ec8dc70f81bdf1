//! Ways around revocation and client identity, each found by attacking the proxy and pinned
//! here: a second CRL from one issuer, identity headers spelled with `_` or sent as trailers, and
//! a client handshake that ends after a client-CRL reload. Real TLS on loopback, certificates and
//! CRLs made per test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const H1: &[&[u8]] = &[b"http/1.1"];

/// A client whose TCP connection was accepted before a reload that revokes its certificate, and
/// who sends its ClientHello only after the reload, is verified with the listener config of the
/// generation that accepted it (the old CRLs) and joins the open client connections after they
/// were re-checked: nothing ever judges it under the new trust.
#[tokio::test]
async fn a_handshake_finished_after_a_client_crl_reload_is_judged_under_the_new_trust() {
    let pki = TestPki::new();
    let clients = ClientPki::new(&pki);
    let alice = clients.issue(&pki, "alice");
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let text = config_text(
        &client_auth("require", ""),
        "",
        &route_to("/api", "backend-api", &api),
    );
    let proxy = Proxy::start_with(&pki, &text).await;

    // Accepted now (the accept loop takes this generation's settings), handshake later.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    clients.publish(&pki, &[&alice]);
    proxy.reload().await;

    let tls = Arc::new(pki.client_tls_with_cert(&[b"http/1.1"], &alice));
    let answer = match tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        Err(_) => String::new(),
        Ok(mut stream) => {
            let request = b"GET /api/after-revocation HTTP/1.1\r\nHost: localhost\r\n\r\n";
            match stream.write_all(request).await {
                Err(_) => String::new(),
                Ok(()) => {
                    let mut buf = vec![0u8; 4096];
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                        _ => String::new(),
                    }
                }
            }
        }
    };
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a certificate revoked by the reload was served: {answer}"
    );
    assert!(
        api.seen().is_empty(),
        "the revoked client reached the backend"
    );
}

/// Two CRLs from one issuer (last week's and today's, say, both listed or concatenated in one
/// file): webpki consults the first whose issuer matches, so a revocation only the second one
/// carries is silently not applied. It must be a config error or a refusal, never acceptance.
#[tokio::test]
async fn a_second_crl_from_the_same_issuer_does_not_hide_a_revocation() {
    let pki = TestPki::new();
    let revoked = pki.leaf(&["backend-api"]);
    let older = crl(&pki.intermediate, &[], time::Duration::days(7));
    let newer = crl(
        &pki.intermediate,
        &[&revoked.chain[0]],
        time::Duration::days(7),
    );
    write(&pki.path("inter-old.crl.pem"), &older);
    write(&pki.path("inter-new.crl.pem"), &newer);
    write(
        &pki.path("root.crl.pem"),
        &crl(&pki.root, &[], time::Duration::days(7)),
    );
    let api = Backend::recording(&revoked, H1, "api").await;
    let upstream =
        "crl = [\"inter-old.crl.pem\", \"inter-new.crl.pem\", \"root.crl.pem\"]".to_owned();
    let text = config_text("", &upstream, &route_to("/api", "backend-api", &api));
    let config_path = pki.path("dup.toml");
    write(&config_path, &text);
    if let Err(error) = trustgate::Config::load(&config_path) {
        // Refusing the config is one acceptable answer; it must name the key.
        assert!(error.to_string().contains("upstream_tls.crl"), "{error}");
        return;
    }
    let proxy = Proxy::start_with(&pki, &text).await;
    let got = get(&client(&pki, false), &proxy.url("/api/x")).await;
    assert_eq!(
        got.status,
        StatusCode::BAD_GATEWAY,
        "the revocation in the second CRL from the same issuer was not applied"
    );
    assert!(api.seen().is_empty());
}

/// CGI-style backends (PHP, WSGI, Rack, Apache's environment) read `Client_Cert` and
/// `Client-Cert` as the same variable (`HTTP_CLIENT_CERT`); a name with underscores is a valid
/// field name that hyper passes on, so it forges the identity as well as the dashed form.
#[tokio::test]
async fn underscore_forms_of_identity_headers_never_reach_a_backend() {
    let pki = TestPki::new();
    let api = Backend::recording(&pki.leaf(&["backend-api"]), &[b"h2", b"http/1.1"], "api").await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &api)).await;
    let forged = [
        ("Client_Cert", ":Zm9yZ2Vk:"),
        ("client_cert_chain", ":Zm9yZ2Vk:"),
        ("X_Client_Cert_Subject", "CN=admin"),
        ("x_forwarded_client_cert", "Subject=\"CN=admin\""),
        ("X_SSL_Client_S_DN", "CN=admin"),
        ("x-ssl_client-verify", "SUCCESS"),
    ];
    for h2 in [false, true] {
        let mut request = Request::get(proxy.url("/api/x"));
        for (name, value) in forged {
            request = request.header(name, value);
        }
        let got = send(&client(&pki, h2), request.body(empty()).unwrap()).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 2);
    for (i, request) in seen.iter().enumerate() {
        let passed: Vec<&str> = request
            .headers
            .keys()
            .map(|n| n.as_str())
            .filter(|n| {
                let dashed = n.replace('_', "-");
                dashed.starts_with("x-ssl-client-")
                    || [
                        "client-cert",
                        "client-cert-chain",
                        "x-client-cert-subject",
                        "x-forwarded-client-cert",
                    ]
                    .contains(&dashed.as_str())
            })
            .collect();
        assert!(
            passed.is_empty(),
            "request {i}: forged identity headers passed: {passed:?}"
        );
    }
}

/// Request trailers are fields of the request too: a backend that merges trailers into the
/// request's fields would take `Client-Cert` from the client. Sent as an HTTP/1.1 chunked trailer
/// section and as HTTP/2 trailing HEADERS, to an HTTP/2 backend that would see them.
#[tokio::test]
async fn identity_headers_in_request_trailers_never_reach_a_backend() {
    let pki = TestPki::new();
    let trailers: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let recorded = trailers.clone();
    let api = Backend::custom(
        &pki.leaf(&["backend-api"]),
        &[b"h2"],
        move |req: Request<hyper::body::Incoming>, _| {
            let recorded = recorded.clone();
            async move {
                if let Ok(collected) = req.into_body().collect().await {
                    let seen = collected.trailers().cloned().unwrap_or_default();
                    recorded.lock().unwrap().push(seen);
                }
                Response::new(full("ok"))
            }
        },
    )
    .await;
    let proxy = Proxy::start(&pki, &route_to("/api", "backend-api", &api)).await;
    let request = b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
        Trailer: Client-Cert\r\nConnection: close\r\n\r\n\
        2\r\nhi\r\n0\r\nClient-Cert: :Zm9yZ2Vk:\r\nX-SSL-Client-Verify: SUCCESS\r\n\r\n";
    let answer = raw_exchange(&pki, proxy.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut forged = HeaderMap::new();
    forged.insert("client-cert", ":Zm9yZ2Vk:".parse().unwrap());
    forged.insert("x-ssl-client-verify", "SUCCESS".parse().unwrap());
    let body = full("hi")
        .with_trailers(async move { Some(Ok(forged)) })
        .boxed();
    let got = send(
        &client(&pki, true),
        Request::post(proxy.url("/api/upload")).body(body).unwrap(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);

    // The control: the same backend, reached directly, sees trailers.
    let mut direct = HeaderMap::new();
    direct.insert("x-control", "1".parse().unwrap());
    let control = Backend::custom(&public_leaf(&pki), &[b"h2"], {
        let recorded = trailers.clone();
        move |req: Request<hyper::body::Incoming>, _| {
            let recorded = recorded.clone();
            async move {
                if let Ok(collected) = req.into_body().collect().await {
                    let seen = collected.trailers().cloned().unwrap_or_default();
                    recorded.lock().unwrap().push(seen);
                }
                Response::new(full("ok"))
            }
        }
    })
    .await;
    let body = full("hi")
        .with_trailers(async move { Some(Ok(direct)) })
        .boxed();
    let url = format!("https://localhost:{}/direct", control.port());
    let got = send(&client(&pki, true), Request::post(url).body(body).unwrap()).await;
    assert_eq!(got.status, StatusCode::OK);
    let mut seen = trailers.lock().unwrap().clone();
    assert_eq!(
        seen.pop().unwrap().get("x-control").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "the control: trailers reach a backend"
    );
    assert_eq!(seen.len(), 2);
    for (i, trailers) in seen.iter().enumerate() {
        let forged: Vec<_> = trailers
            .keys()
            .filter(|n| n.as_str() == "client-cert" || n.as_str().starts_with("x-ssl-client-"))
            .collect();
        assert!(
            forged.is_empty(),
            "request {i}: identity fields in the request trailers reached the backend: {trailers:?}"
        );
    }
}

/// A server certificate for `localhost` from the public CA, which the test clients trust.
fn public_leaf(pki: &TestPki) -> ServerCert {
    let issued = pki
        .public_ca
        .issue(&trustgate::pki::LeafRequest::server("localhost", 30))
        .unwrap();
    ServerCert::from_issued(issued, &[])
}
