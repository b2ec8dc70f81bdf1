//! The admin listener: health, readiness through shutdown, reloads with their outcome, the
//! bearer token, the config rules, and a caller that stalls. Plain HTTP on loopback, spoken by
//! hand so every byte is the test's.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const ROUTE: &str = "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:8443/\"\n";

#[tokio::test]
async fn health_readiness_and_reloads() {
    let pki = TestPki::new();
    let text = |routes: &str| {
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:9901\"\n",
            config_text("", "", routes)
        )
    };
    let mut proxy = Proxy::start_with(&pki, &text(ROUTE)).await;
    let admin = proxy.admin.expect("admin listener");

    assert_eq!(
        call(admin, "GET", "/healthz", "").await,
        (200, "ok\n".into())
    );
    assert_eq!(
        call(admin, "GET", "/readyz", "").await,
        (200, "ready: generation 1\n".into())
    );
    assert_eq!(
        call(admin, "POST", "/reload", "").await,
        (200, "generation 1: nothing changed\n".into())
    );
    write(
        &proxy.config_path,
        &text(&format!(
            "{ROUTE}[[route]]\nprefix = \"/b\"\nupstream = \"https://b:8443/\"\n"
        )),
    );
    let (status, body) = call(admin, "POST", "/reload", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("generation 2: routes +/b -> https://b:8443/"),
        "{body}"
    );

    // A broken config: 422 with check's `file:line: key: reason`, and generation 2 keeps serving.
    write(
        &proxy.config_path,
        &text("[[route]]\nprefix = \"api\"\nupstream = \"https://b:8443/\"\n"),
    );
    let (status, body) = call(admin, "POST", "/reload", "").await;
    assert_eq!(status, 422, "{body}");
    let file = proxy.config_path.display().to_string();
    assert!(
        body.contains(&file)
            && body.contains("route[0].prefix")
            && body.contains("must start with '/'"),
        "{body}"
    );
    assert_eq!(
        call(admin, "GET", "/readyz", "").await,
        (200, "ready: generation 2\n".into())
    );

    assert_eq!(call(admin, "GET", "/reload", "").await.0, 405);
    assert_eq!(call(admin, "DELETE", "/healthz", "").await.0, 405);
    assert_eq!(
        call(admin, "GET", "/api/x", "").await.0,
        404,
        "no proxy routes here"
    );

    proxy.shutdown();
    let mut draining = false;
    for _ in 0..100 {
        if call(admin, "GET", "/readyz", "").await == (503, "draining\n".into()) {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining, "readyz never turned 503 during shutdown");
    assert_eq!(call(admin, "GET", "/healthz", "").await.0, 200);
}

#[tokio::test]
async fn a_token_guards_every_endpoint() {
    let pki = TestPki::new();
    let token = "0123456789abcdef0123456789abcdef";
    write(&pki.path("admin/token"), &format!("{token}\n"));
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \"admin/token\"\n",
        config_text("", "", ROUTE)
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(call(admin, "GET", path, "").await.0, 401, "{path}");
        assert_eq!(call(admin, "GET", path, &bearer).await.0, 200, "{path}");
    }
    assert_eq!(call(admin, "POST", "/reload", "").await.0, 401);
    assert_eq!(
        call(
            admin,
            "POST",
            "/reload",
            "Authorization: Bearer 0123456789abcdef0123456789abcdeF\r\n"
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            admin,
            "POST",
            "/reload",
            &format!("Authorization: bearer {token}\r\n")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(admin, "POST", "/reload", &format!("{bearer}{bearer}"))
            .await
            .0,
        401,
        "two tokens"
    );
    assert_eq!(call(admin, "POST", "/reload", &bearer).await.0, 200);

    // The token rotates by reload like any file.
    let new = "fedcba9876543210fedcba9876543210";
    write(&pki.path("admin/token"), new);
    assert_eq!(call(admin, "POST", "/reload", &bearer).await.0, 200);
    assert_eq!(call(admin, "GET", "/healthz", &bearer).await.0, 401);
    assert_eq!(
        call(
            admin,
            "GET",
            "/healthz",
            &format!("Authorization: Bearer {new}\r\n")
        )
        .await
        .0,
        200
    );
}

#[test]
fn admin_config_mistakes_are_named() {
    let pki = TestPki::new();
    write(&pki.path("short"), "abc");
    let cases = [
        (
            "listen = \"0.0.0.0:9901\"",
            "admin.listen",
            "not a loopback address: set admin.token_file",
        ),
        (
            "listen = \"localhost:9901\"",
            "admin.listen",
            "is not an address:port",
        ),
        (
            "listen = \"127.0.0.1:9901\"\ntoken_file = \"short\"",
            "admin.token_file",
            "at least 16 characters",
        ),
        (
            "listen = \"127.0.0.1:9901\"\ntoken_file = \"missing\"",
            "admin.token_file",
            "cannot read",
        ),
        (
            "listen = \"127.0.0.1:9901\"\nport = 1",
            "admin.port",
            "unknown field",
        ),
    ];
    for (admin, key, reason) in cases {
        let path = pki.path("admin.toml");
        write(
            &path,
            &format!("{}\n[admin]\n{admin}\n", config_text("", "", ROUTE)),
        );
        let err = trustgate::Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(reason), "{admin}: {err}");
    }
}

#[tokio::test]
async fn moving_the_admin_listener_takes_a_restart() {
    let pki = TestPki::new();
    let with = |listen: &str| {
        format!(
            "{}\n[admin]\nlisten = \"{listen}\"\n",
            config_text("", "", ROUTE)
        )
    };
    let proxy = Proxy::start_with(&pki, &with("127.0.0.1:9901")).await;
    write(&proxy.config_path, &with("127.0.0.1:9902"));
    let err = proxy.reloader.reload().unwrap_err().to_string();
    assert!(
        err.contains("admin.listen") && err.contains("takes a restart"),
        "{err}"
    );
}

#[tokio::test]
async fn a_caller_that_stalls_is_cut_off() {
    let pki = TestPki::new();
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:9901\"\n",
        config_text("", "", ROUTE)
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    // Half a request head, then nothing: the listener closes it after its head timeout (10 s).
    let mut stalled = TcpStream::connect(admin).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    // Whatever hyper says first (a 408), the connection ends: a read returns 0 or fails.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, stalled.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a stalled admin caller was not cut off"),
        }
    }
    // More stalled callers than the listener serves at once do not shut out a real one for
    // longer than the head timeout.
    let mut crowd = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /").await.unwrap();
        crowd.push(tcp);
    }
    let answered =
        tokio::time::timeout(Duration::from_secs(25), call(admin, "GET", "/healthz", "")).await;
    assert_eq!(answered.expect("served within the head timeout").0, 200);
}

#[tokio::test]
async fn metrics_count_requests_and_follow_the_generation() {
    let pki = TestPki::new();
    let api = Backend::recording(&pki.leaf(&["backend-api"]), &[b"http/1.1"], "api").await;
    let routes = route_to("/api", "backend-api", &api);
    let with = |routes: &str| {
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:9901\"\n",
            config_text("", "", routes)
        )
    };
    let proxy = Proxy::start_with(&pki, &with(&routes)).await;
    let admin = proxy.admin.unwrap();
    let client = client(&pki, false);
    for _ in 0..3 {
        assert_eq!(
            get(&client, &proxy.url("/api/x")).await.status,
            http::StatusCode::OK
        );
    }
    assert_eq!(
        get(&client, &proxy.url("/nope")).await.status,
        http::StatusCode::NOT_FOUND
    );

    let m = scrape(admin).await;
    assert_eq!(
        m.docs.get("trustgate_requests_total").map(String::is_empty),
        Some(false),
        "{:?}",
        m.docs.keys()
    );
    assert_eq!(
        sample(
            &m,
            "trustgate_requests_total",
            &[("route", "/api"), ("code", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            "trustgate_requests_total",
            &[("route", "-"), ("code", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "trustgate_request_duration_seconds_count",
            &[("route", "/api")]
        ),
        Some(3.0)
    );
    assert_eq!(sample(&m, "trustgate_config_generation", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "trustgate_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "trustgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "trustgate_client_tls_handshakes_total",
            &[("result", "ok"), ("kind", "full")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&m, "trustgate_client_connections", &[]).is_some());
    assert_eq!(
        sample(&m, "trustgate_log_lines_dropped_total", &[]),
        Some(0.0)
    );
    let public = trustgate::pki::inspect::CertInfo::parse(
        &std::fs::read(pki.path("public/fullchain.pem"))
            .map(|pem| {
                rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
                    .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
                    .unwrap()
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        sample(
            &m,
            "trustgate_cert_not_after_timestamp_seconds",
            &[("role", "public"), ("serial", &public.serial)]
        ),
        Some(public.not_after.unix_timestamp() as f64)
    );
    let root = trustgate::pki::inspect::CertInfo::parse(pki.root.cert()).unwrap();
    assert_eq!(
        sample(
            &m,
            "trustgate_cert_not_after_timestamp_seconds",
            // By serial: this parser splits label values on '=' and ',' (a subject holds both).
            &[("role", "anchor"), ("serial", &root.serial)]
        ),
        Some(root.not_after.unix_timestamp() as f64)
    );

    // A refused reload, then one that replaces /api by /other: the series follow.
    write(&proxy.config_path, "not toml [");
    assert_eq!(call(admin, "POST", "/reload", "").await.0, 422);
    let m = scrape(admin).await;
    assert_eq!(
        sample(&m, "trustgate_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "trustgate_config_reloads_total",
            &[("result", "refused")]
        ),
        Some(1.0)
    );
    write(
        &proxy.config_path,
        &with(&route_to("/other", "backend-api", &api)),
    );
    assert_eq!(call(admin, "POST", "/reload", "").await.0, 200);
    let m = scrape(admin).await;
    assert_eq!(sample(&m, "trustgate_config_generation", &[]), Some(2.0));
    assert_eq!(
        sample(&m, "trustgate_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        !m.samples
            .iter()
            .any(|s| s.labels.get("route") == Some("/api")),
        "a removed route's series stayed"
    );

    // OpenMetrics for a scraper that asks for it.
    let (status, body) = call(
        admin,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
}

#[tokio::test]
async fn upstream_handshakes_are_classified_and_presented_leaves_recorded() {
    let pki = TestPki::new();
    let leaf = pki.leaf(&["backend-api"]);
    let api = Backend::recording(&leaf, &[b"http/1.1"], "api").await;
    let wrong = Backend::recording(&pki.leaf(&["other"]), &[b"http/1.1"], "wrong").await;
    let demanding_tls = pki
        .leaf(&["backend-mtls"])
        .mtls_config(&[b"http/1.1"], &pki.root);
    let demanding = Backend::recording_with(demanding_tls, "mtls").await;
    let routes = route_to("/api", "backend-api", &api)
        + &route_to("/wrong", "backend-wrong", &wrong)
        + &route_to("/mtls", "backend-mtls", &demanding);
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:9901\"\n",
        config_text("", "", &routes)
    );
    let proxy = Proxy::start_with(&pki, &text).await;
    let admin = proxy.admin.unwrap();
    let trust = |admin| async move {
        let (status, body) = call(admin, "GET", "/trust", "").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
    };
    let before = trust(admin).await;
    assert_eq!(before["generation"], 1);
    assert!(before["routes"][0]["last_leaf"].is_null(), "{before:#}");
    assert!(before["routes"][0]["last_refusal"].is_null());
    // The default body limit, shown per route.
    assert_eq!(before["routes"][0]["max_request_body"], 1u64 << 30);
    let client = client(&pki, false);
    for _ in 0..2 {
        assert_eq!(
            get(&client, &proxy.url("/api/x")).await.status,
            http::StatusCode::OK
        );
    }
    assert_eq!(
        get(&client, &proxy.url("/wrong/x")).await.status,
        http::StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        get(&client, &proxy.url("/mtls/x")).await.status,
        http::StatusCode::BAD_GATEWAY
    );

    let m = scrape(admin).await;
    let info = trustgate::pki::inspect::CertInfo::parse(&leaf.chain[0]).unwrap();
    assert_eq!(
        sample(
            &m,
            "trustgate_upstream_cert_not_after_timestamp_seconds",
            &[
                ("route", "/api"),
                ("name", "backend-api"),
                ("serial", &info.serial)
            ]
        ),
        Some(info.not_after.unix_timestamp() as f64),
        "the leaf the backend presented"
    );
    assert!(
        sample(
            &m,
            "trustgate_upstream_cert_last_seen_timestamp_seconds",
            &[("route", "/api")]
        )
        .is_some()
    );
    let handshakes = |route: &str, result: &str, reason: &str| {
        sample(
            &m,
            "trustgate_upstream_tls_handshakes_total",
            &[("route", route), ("result", result), ("reason", reason)],
        )
    };
    assert_eq!(
        handshakes("/api", "ok", ""),
        Some(1.0),
        "one pooled connection"
    );
    assert_eq!(handshakes("/wrong", "failed", "name_mismatch"), Some(1.0));
    assert_eq!(
        handshakes("/mtls", "failed", "client_cert_required"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "trustgate_upstream_connections", &[("route", "/api")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "trustgate_upstream_connect_duration_seconds_count",
            &[("route", "/api")]
        ),
        Some(1.0)
    );

    // The same facts in the trust status.
    let status = trust(admin).await;
    let route = |prefix: &str| {
        status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prefix"] == prefix)
            .unwrap_or_else(|| panic!("{prefix} missing: {status:#}"))
            .clone()
    };
    let api = route("/api");
    assert_eq!(api["name"], "backend-api");
    assert_eq!(api["last_leaf"]["serial"], info.serial.as_str());
    assert_eq!(api["last_leaf"]["sha256"], info.sha256.as_str());
    assert_eq!(api["last_leaf"]["sans"][0], "backend-api");
    assert_eq!(
        (api["verified"].as_u64(), api["refused"].as_u64()),
        (Some(1), Some(0))
    );
    let root = trustgate::pki::inspect::CertInfo::parse(pki.root.cert()).unwrap();
    assert_eq!(api["anchors"][0]["sha256"], root.sha256.as_str());
    let wrong = route("/wrong");
    assert!(wrong["last_leaf"].is_null());
    assert_eq!(wrong["refused"], 1);
    let reason = wrong["last_refusal"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not valid for name \"backend-wrong\""),
        "{reason}"
    );
    let mtls = route("/mtls");
    let reason = mtls["last_refusal"]["reason"].as_str().unwrap();
    assert!(reason.contains("demanded a client certificate"), "{reason}");
    assert!(
        status["public_cert"]["serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(status["loaded_at"].as_str().unwrap().ends_with('Z'));

    // `trustgate status` prints the same for a person: days left, `!` under 30 days.
    let url = format!("http://{admin}");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trustgate"))
            .args(["status", "--admin", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |start: &str| {
        printed
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} line:\n{printed}"))
            .to_owned()
    };
    assert!(line("upstream backend-api").contains(&info.subject));
    assert!(
        line("upstream backend-api").trim_end().ends_with('!'),
        "29 days left is under 30"
    );
    assert!(line("anchor").contains(&root.subject));
    assert!(line("/wrong").contains("not valid for name"));
    assert!(line("/api").contains("https://backend-api:"));
    // And each endpoint: the one that failed verification is down, saying why.
    let endpoint_line = |start: &str, state: &str| {
        printed
            .lines()
            .find(|l| l.starts_with(start) && l.split_whitespace().nth(2) == Some(state))
            .unwrap_or_else(|| panic!("no {start:?} endpoint {state}:\n{printed}"))
            .to_owned()
    };
    assert!(endpoint_line("/wrong", "DOWN").contains("TLS: certificate not valid for name"));
    assert!(endpoint_line("/api", "up").contains(&format!("serial {}", info.serial)));
    let endpoints = route("/wrong")["endpoints"].clone();
    assert_eq!(endpoints[0]["up"], false, "{endpoints}");
}
