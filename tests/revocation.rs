//! Revocation of upstream certificates: CRLs generated per test, real TLS backends on loopback,
//! and the reasons a person reads in the proxy's log. Then revocation arriving by reload: the
//! connections already open to a revoked backend (pooled HTTP/1.1 and HTTP/2, a WebSocket
//! tunnel) are closed, and those to other backends stay.

mod common;

use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncReadExt;

use common::*;

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// CRLs of both CAs into the test folder; `policy` is more `[upstream_tls]` keys.
fn with_crls(policy: &str) -> String {
    format!("crl = [\"inter.crl.pem\", \"root.crl.pem\"]\n{policy}")
}

fn publish(pki: &TestPki, name: &str, pem: &str) {
    write(&pki.path(name), pem);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_revoked_leaf_is_refused_with_its_serial_date_and_reason() {
    let pki = TestPki::new();
    let revoked = pki.leaf(&["backend-api"]);
    let good = pki.leaf(&["backend-ok"]);
    publish(
        &pki,
        "inter.crl.pem",
        &crl(
            &pki.intermediate,
            &[&revoked.chain[0]],
            time::Duration::days(7),
        ),
    );
    publish(
        &pki,
        "root.crl.pem",
        &crl(&pki.root, &[], time::Duration::days(7)),
    );
    let api = Backend::recording(&revoked, H1, "api").await;
    let ok = Backend::recording(&good, H1, "ok").await;
    let rest = route_to("/api", "backend-api", &api) + &route_to("/ok", "backend-ok", &ok);
    let proxy = Proxy::start_with(&pki, &config_text("", &with_crls(""), &rest)).await;

    let reason = bad_gateway(
        &pki,
        &proxy,
        "/api/x",
        &format!("https://backend-api:{}/", api.port()),
    )
    .await;
    let serial = hex(&serial_of(&revoked.chain[0]));
    assert!(
        reason.contains(&format!(
            "certificate revoked (serial 0x{serial}, revoked 20"
        )),
        "{reason}"
    );
    assert!(reason.contains("reason keyCompromise)"), "{reason}");
    assert!(api.seen().is_empty(), "the revoked backend got a request");
    // The CRLs do not refuse what they do not revoke.
    let got = get(&client(&pki, false), &proxy.url("/ok/x")).await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_intermediate_is_refused_unless_only_leaves_are_checked() {
    let pki = TestPki::new();
    let leaf = pki.leaf(&["backend-api"]);
    publish(
        &pki,
        "inter.crl.pem",
        &crl(&pki.intermediate, &[], time::Duration::days(7)),
    );
    publish(
        &pki,
        "root.crl.pem",
        &crl(
            &pki.root,
            &[pki.intermediate.cert()],
            time::Duration::days(7),
        ),
    );
    let api = Backend::recording(&leaf, H1, "api").await;
    let rest = route_to("/api", "backend-api", &api);
    let upstream = format!("https://backend-api:{}/", api.port());

    let chain = Proxy::start_with(&pki, &config_text("", &with_crls(""), &rest)).await;
    let reason = bad_gateway(&pki, &chain, "/api/x", &upstream).await;
    assert!(
        reason.contains("Test Internal Intermediate") && reason.contains("revoked (serial 0x"),
        "{reason}"
    );

    let leaf_only = Proxy::start_with(
        &pki,
        &config_text("", &with_crls("revocation = \"leaf\""), &rest),
    )
    .await;
    let got = get(&client(&pki, false), &leaf_only.url("/api/x")).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "leaf mode ignores the intermediate"
    );
}

#[tokio::test]
async fn a_missing_crl_is_refused_by_default_and_passes_when_allowed() {
    let pki = TestPki::new();
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    // Only the root's CRL: nothing says whether the leaf is revoked.
    publish(
        &pki,
        "root.crl.pem",
        &crl(&pki.root, &[], time::Duration::days(7)),
    );
    let rest = route_to("/api", "backend-api", &api);
    let upstream = format!("https://backend-api:{}/", api.port());

    let deny = Proxy::start_with(&pki, &config_text("", "crl = \"root.crl.pem\"", &rest)).await;
    let reason = bad_gateway(&pki, &deny, "/api/x", &upstream).await;
    assert!(
        reason.contains("revocation status unknown: no CRL from")
            && reason.contains("Test Internal Intermediate"),
        "{reason}"
    );

    let allow = Proxy::start_with(
        &pki,
        &config_text(
            "",
            "crl = \"root.crl.pem\"\nunknown_status = \"allow\"",
            &rest,
        ),
    )
    .await;
    let got = get(&client(&pki, false), &allow.url("/api/x")).await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test]
async fn an_expired_crl_fails_closed_unless_allowed_with_a_warning() {
    let pki = TestPki::new();
    let api = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let rest = route_to("/api", "backend-api", &api);
    let upstream = format!("https://backend-api:{}/", api.port());
    publish(
        &pki,
        "root.crl.pem",
        &crl(&pki.root, &[], time::Duration::days(7)),
    );

    // Expired at load: `deny` refuses the config, naming the file and the issuer.
    publish(
        &pki,
        "inter.crl.pem",
        &crl(&pki.intermediate, &[], -time::Duration::hours(3)),
    );
    let path = pki.path("expired.toml");
    write(&path, &config_text("", &with_crls(""), &rest));
    let err = trustgate::Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("inter.crl.pem"), "{err}");
    assert!(
        err.contains("Test Internal Intermediate\" expired 3 hours ago"),
        "{err}"
    );

    // `allow` keeps using it, warns at load, and logs that it serves with it.
    let allowed = config_text("", &with_crls("crl_expired = \"allow\""), &rest);
    write(&path, &allowed);
    let config = trustgate::Config::load(&path).unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("expired 3 hours ago")),
        "{:?}",
        config.warnings
    );
    let allow = Proxy::start_with(&pki, &allowed).await;
    let got = get(&client(&pki, false), &allow.url("/api/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    logs()
        .line_with(&["CRL past its nextUpdate still in use", "inter.crl.pem"])
        .await;

    // Expiring while the proxy runs: `deny` refuses from then on.
    publish(
        &pki,
        "inter.crl.pem",
        &crl(&pki.intermediate, &[], time::Duration::seconds(2)),
    );
    let deny = Proxy::start_with(&pki, &config_text("", &with_crls(""), &rest)).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let reason = bad_gateway(&pki, &deny, "/api/x", &upstream).await;
    assert!(
        reason.contains("CRL from")
            && reason.contains("Test Internal Intermediate")
            && reason.contains("expired"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_crl_signed_by_another_key_is_never_accepted() {
    let pki = TestPki::new();
    let leaf = pki.leaf(&["backend-api"]);
    let api = Backend::recording(&leaf, H1, "api").await;
    let rest = route_to("/api", "backend-api", &api);
    let upstream = format!("https://backend-api:{}/", api.port());
    publish(
        &pki,
        "root.crl.pem",
        &crl(&pki.root, &[], time::Duration::days(7)),
    );
    // Same issuer name as the real intermediate, another key; it does not even revoke the leaf.
    let forged = crl_signed_by(
        &impostor_of(&pki.intermediate),
        &[],
        time::Duration::days(7),
    );
    publish(&pki, "inter.crl.pem", &forged);

    for policy in ["", "unknown_status = \"allow\"", "revocation = \"leaf\""] {
        let proxy = Proxy::start_with(&pki, &config_text("", &with_crls(policy), &rest)).await;
        let got = get(&client(&pki, false), &proxy.url("/api/x")).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "policy {policy:?}");
    }
    let reason = logs()
        .line_with(&[&format!("upstream={upstream}"), "reason=the CRL from"])
        .await;
    assert!(reason.contains("cannot be used"), "{reason}");
    assert!(api.seen().is_empty());
}

#[tokio::test]
async fn crl_files_that_are_not_crls_are_config_errors_naming_the_file() {
    let pki = TestPki::new();
    let cases = [
        (
            "cert.pem",
            pki.root.cert_pem(),
            "holds a certificate, not a CRL",
        ),
        ("key.pem", pki.root.key_pem(), "PRIVATE KEY"),
        ("junk.pem", "hello\n".to_owned(), "holds no CRL"),
        (
            "broken.pem",
            "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n".to_owned(),
            "is not a valid CRL",
        ),
    ];
    for (name, contents, expected) in cases {
        publish(&pki, name, &contents);
        let path = pki.path("crl.toml");
        let rest = "[[route]]\nprefix = \"/\"\nupstream = \"https://backend-api:8443/\"\n";
        write(&path, &config_text("", &format!("crl = \"{name}\""), rest));
        let err = trustgate::Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains(expected),
            "{name}: {err}"
        );
        assert!(err.contains("upstream_tls.crl"), "{err}");
    }
    // Policy keys without CRLs do nothing: a mistake to point out.
    let path = pki.path("crl.toml");
    let rest = "[[route]]\nprefix = \"/\"\nupstream = \"https://backend-api:8443/\"\n";
    write(&path, &config_text("", "unknown_status = \"allow\"", rest));
    let err = trustgate::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("has no effect without upstream_tls.crl"),
        "{err}"
    );
    // A DER CRL loads as well as PEM.
    let pem = crl(
        &pki.root,
        &[pki.intermediate.cert()],
        time::Duration::days(7),
    );
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateRevocationListDer<'static>| d.to_vec())
        .unwrap();
    std::fs::write(pki.path("root.crl"), der).unwrap();
    let crls = trustgate::tls::revocation::load(&pki.path("root.crl")).unwrap();
    assert_eq!(crls.len(), 1);
    assert_eq!(crls[0].revoked_count(), 1);
    assert_eq!(crls[0].issuer_name, "Test Internal Root");
}

#[tokio::test]
async fn a_reload_that_revokes_closes_open_connections_to_that_backend_only() {
    let pki = TestPki::new();
    let h1_cert = pki.leaf(&["backend-h1"]);
    let h2_cert = pki.leaf(&["backend-h2"]);
    let ws_cert = pki.leaf(&["backend-ws"]);
    let ws = websocket_backend_with(&ws_cert).await;
    let h1 = Backend::recording(&h1_cert, H1, "h1").await;
    let h2 = Backend::recording(&h2_cert, H2, "h2").await;
    let other = Backend::recording(&pki.leaf(&["backend-other"]), H1, "other").await;
    publish(
        &pki,
        "inter.crl.pem",
        &crl(&pki.intermediate, &[], time::Duration::days(7)),
    );
    publish(
        &pki,
        "root.crl.pem",
        &crl(&pki.root, &[], time::Duration::days(7)),
    );
    let rest = route_to("/h1", "backend-h1", &h1)
        + &route_to("/h2", "backend-h2", &h2)
        + "preserve_host = false\n\n"
        + &route_to("/other", "backend-other", &other)
        + &route_to("/ws", "backend-ws", &ws);
    let proxy = Proxy::start_with(&pki, &config_text("", &with_crls(""), &rest)).await;
    let client = client(&pki, false);

    // Warm a pooled connection to each backend; open a tunnel.
    for path in ["/h1/a", "/h2/a", "/other/a"] {
        assert_eq!(
            get(&client, &proxy.url(path)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(
        h2.seen()[0].version,
        http::Version::HTTP_2,
        "the h2 pool speaks HTTP/2"
    );
    let (mut tunnel, _) = open_websocket(&pki, &proxy).await;
    assert_echo(&mut tunnel, "ping").await;
    let other_port = other.seen()[0].peer.port();

    // The intermediate now revokes three of the four backends.
    let revoked = [&h1_cert.chain[0], &h2_cert.chain[0], &ws_cert.chain[0]];
    publish(
        &pki,
        "inter.crl.pem",
        &crl(&pki.intermediate, &revoked, time::Duration::days(7)),
    );
    // As in the proxy, the reload runs off the runtime's threads while connections go on.
    let outcome = proxy.reload().await;
    assert!(
        matches!(outcome, trustgate::reload::Outcome::Applied { .. }),
        "{outcome:?}"
    );

    // The tunnel is closed.
    let mut rest_of_tunnel = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut rest_of_tunnel))
        .await
        .expect("the tunnel closes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    for port in [h1.port(), h2.port(), ws.port()] {
        logs()
            .line_with(&[
                "closed an upstream connection",
                &format!("127.0.0.1:{port}"),
                "certificate revoked (serial 0x",
            ])
            .await;
    }
    // The reload waited for them to be dropped before the new generation served.
    logs()
        .line_with(&[
            "connections that no longer verify were closed",
            "count=3",
            "still_held=0",
        ])
        .await;
    // No request reaches a revoked backend again: the next one is refused with the reason.
    for (path, service, backend) in [("/h1/b", "backend-h1", &h1), ("/h2/b", "backend-h2", &h2)] {
        let upstream = format!("https://{service}:{}/", backend.port());
        let reason = bad_gateway(&pki, &proxy, path, &upstream).await;
        assert!(
            reason.contains("certificate revoked (serial 0x"),
            "{reason}"
        );
        assert_eq!(
            backend.seen().len(),
            1,
            "{service} got a request after the reload"
        );
    }
    // The other backend keeps its connection: the next request reuses it.
    assert_eq!(
        get(&client, &proxy.url("/other/b")).await.status,
        StatusCode::OK
    );
    let seen = other.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].peer.port(),
        other_port,
        "a new connection to an unrevoked backend"
    );
}
