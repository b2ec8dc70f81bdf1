//! Reloads of a running proxy: new routes, certificates and trust without a restart, all or
//! nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use http::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use trustgate::Config;
use trustgate::config::ConfigError;
use trustgate::pki::{Ca, Issued, LeafRequest, Validity};
use trustgate::reload::Outcome;

const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn a_reload_swaps_the_routes_and_a_bad_one_changes_nothing() {
    let pki = TestPki::new();
    let a = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    let b = Backend::recording(&pki.leaf(&["backend-b"]), H1, "b").await;
    // Reloads only when told: the watch would race this test's own reload() calls.
    let proxy = Proxy::start_with(
        &pki,
        &config_text(false, "\"ca.pem\"", &route_to("/a", "backend-a", &a)),
    )
    .await;
    let client = client(&pki, false);
    assert_eq!(get(&client, &proxy.url("/a/x")).await.text(), "backend:a\n");

    // Nothing changed: nothing to do.
    assert_eq!(proxy.reloader.reload().unwrap(), Outcome::Unchanged);

    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let routes_b = text.replace(
        &route_to("/a", "backend-a", &a),
        &route_to("/b", "backend-b", &b),
    );
    write(&proxy.config_path, &routes_b);
    match proxy.reloader.reload().unwrap() {
        Outcome::Applied {
            generation,
            changes,
        } => {
            assert_eq!(generation, 2);
            assert!(changes.contains("+/b -> https://backend-b:"), "{changes}");
            assert!(changes.contains("-/a"), "{changes}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&client, &proxy.url("/b/x")).await.text(), "backend:b\n");
    assert_eq!(
        get(&client, &proxy.url("/a/x")).await.status,
        StatusCode::NOT_FOUND
    );

    // A broken file keeps generation 2 serving, with check's wording in the error.
    write(&proxy.config_path, &format!("{routes_b}\n[oops\n"));
    let err = proxy.reloader.reload().unwrap_err();
    assert!(
        err.to_string()
            .contains(&proxy.config_path.display().to_string()),
        "{err}"
    );
    assert_eq!(get(&client, &proxy.url("/b/x")).await.text(), "backend:b\n");
    logs()
        .line_with(&["reload refused", "previous configuration keeps serving"])
        .await;

    // A changed listen address takes a restart: refused, nothing applied.
    write(
        &proxy.config_path,
        &routes_b.replace("127.0.0.1:0", "127.0.0.1:1"),
    );
    let err = proxy.reloader.reload().unwrap_err();
    assert!(
        err.to_string().contains("server.listen: changed from"),
        "{err}"
    );
    assert!(err.to_string().contains("takes a restart"), "{err}");
    assert_eq!(get(&client, &proxy.url("/b/x")).await.text(), "backend:b\n");
}

/// `Proxy::start`'s config with `[server] watch` set and `ca` as given. Tests that call
/// `reload()` themselves turn watching off, so the watch task never races them. Line numbers:
/// 3 `cert`, 4 `key`, 9 `ca`.
fn config_text(watch: bool, ca: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\nkey = \"public/privkey.pem\"\n\
         shutdown_grace = \"5s\"\nwatch = {watch}\n\n[upstream_tls]\nca = {ca}\n\n{rest}"
    )
}

/// The generation number of a reload that must have applied.
fn applied(outcome: Result<Outcome, ConfigError>) -> u64 {
    match outcome {
        Ok(Outcome::Applied { generation, .. }) => generation,
        other => panic!("expected an applied reload, got {other:?}"),
    }
}

/// A second public certificate for the listener, from the public CA the clients trust.
fn public_cert(pki: &TestPki) -> Issued {
    let mut request = LeafRequest::server("localhost", 30);
    request.names.push("127.0.0.1".into());
    pki.public_ca.issue(&request).unwrap()
}

/// The leaf certificate a new TLS handshake with the proxy is shown.
async fn presented_leaf(pki: &TestPki, proxy: &Proxy) -> CertificateDer<'static> {
    let tls = raw_tls(pki, proxy.addr).await;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificates");
    chain[0].clone().into_owned()
}

/// Retries new handshakes until the proxy presents `want`, for at most 10 s.
async fn wait_for_leaf(pki: &TestPki, proxy: &Proxy, want: &Issued, how: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presented_leaf(pki, proxy).await != want.cert {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate replaced by {how} was not picked up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The generation the watch task applied for `cert`, read from its "reload applied" log line
/// (the serial makes the line this test's own).
async fn generation_serving(cert: &Issued) -> u64 {
    let line = logs()
        .line_with(&["reload applied", &format!("serial {}", cert.serial)])
        .await;
    let number = line
        .split("generation=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no generation in {line}"));
    number.parse().unwrap_or_else(|_| panic!("{line}"))
}

fn count_lines(needle: &str) -> usize {
    logs().text().lines().filter(|l| l.contains(needle)).count()
}

/// Changes a file's modification time only, as `touch` does.
fn touch(path: &Path) {
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .unwrap();
}

#[tokio::test]
async fn a_websocket_outlives_a_hundred_reloads() {
    let pki = TestPki::new();
    let ws = websocket_backend(&pki).await;
    let a = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    let b = Backend::recording(&pki.leaf(&["backend-b"]), H1, "b").await;
    let ws_route = route_to("/ws", "backend-ws", &ws);
    // Both tables keep the WebSocket's route; they differ in the other route and a timeout.
    let tables = [
        config_text(
            false,
            "\"ca.pem\"",
            &format!("{ws_route}{}", route_to("/a", "backend-a", &a)),
        ),
        config_text(
            false,
            "\"ca.pem\"",
            &format!(
                "[timeouts]\nidle = \"30s\"\n\n{ws_route}{}",
                route_to("/b", "backend-b", &b)
            ),
        ),
    ];
    let proxy = Proxy::start_with(&pki, &tables[0]).await;
    let (mut socket, head) = open_websocket(&pki, &proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_echo(&mut socket, "before").await;

    for i in 1..=100u64 {
        write(&proxy.config_path, &tables[(i % 2) as usize]);
        assert_eq!(applied(proxy.reloader.reload()), i + 1, "reload {i}");
    }
    assert_echo(&mut socket, "after a hundred reloads").await;
    // The last table (even: the first) serves new requests.
    let client = client(&pki, false);
    assert_eq!(get(&client, &proxy.url("/a/x")).await.text(), "backend:a\n");
    assert_eq!(
        get(&client, &proxy.url("/b/x")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_echo(&mut socket, "still").await;
}

/// A backend that holds each request until released.
async fn held_backend(pki: &TestPki, arrived: Arc<Notify>, release: Arc<Notify>) -> Backend {
    Backend::custom(&pki.leaf(&["backend-slow"]), H1, move |_, _| {
        let (arrived, release) = (arrived.clone(), release.clone());
        async move {
            arrived.notify_one();
            release.notified().await;
            Response::new(full("finished"))
        }
    })
    .await
}

#[tokio::test]
async fn a_request_in_flight_finishes_after_its_route_is_reloaded_away() {
    let pki = TestPki::new();
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = held_backend(&pki, arrived.clone(), release.clone()).await;
    let other = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    let other_route = route_to("/a", "backend-a", &other);
    let proxy = Proxy::start_with(
        &pki,
        &config_text(
            false,
            "\"ca.pem\"",
            &format!("{}{other_route}", route_to("/slow", "backend-slow", &slow)),
        ),
    )
    .await;
    let client = client(&pki, false);
    let url = proxy.url("/slow/x");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &url).await }
    });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the request reached the backend");

    write(
        &proxy.config_path,
        &config_text(false, "\"ca.pem\"", &other_route),
    );
    assert_eq!(applied(proxy.reloader.reload()), 2);
    assert_eq!(
        get(&client, &proxy.url("/slow/y")).await.status,
        StatusCode::NOT_FOUND,
        "new requests see the route gone"
    );

    release.notify_one();
    let got = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight request finished")
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "finished");
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_generation_and_the_next_good_one_applies() {
    let pki = TestPki::new();
    let a = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    let good_routes = route_to("/a", "backend-a", &a);
    let good = config_text(false, "\"ca.pem\"", &good_routes);
    let proxy = Proxy::start_with(&pki, &good).await;
    let client = client(&pki, false);
    let path = proxy.config_path.clone();
    let (cert, key, ca) = (
        pki.path("public/fullchain.pem"),
        pki.path("public/privkey.pem"),
        pki.path("ca.pem"),
    );
    let originals: Vec<(PathBuf, String)> = [&cert, &key, &ca]
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let shown = |p: &PathBuf| p.display().to_string();
    let p = shown(&path);

    // (case, how it breaks, the start of the problem reload reports and logs).
    type Break<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Break, String)> = vec![
        (
            "TOML syntax error",
            Box::new(|| write(&path, &format!("{good}[oops\n"))),
            format!("{p}:{}: ", good.lines().count() + 1),
        ),
        (
            "unknown key",
            Box::new(|| {
                write(
                    &path,
                    &good.replace("watch = false\n", "watch = false\nbogus = 1\n"),
                )
            }),
            format!("{p}:7: server.bogus: unknown field `bogus`"),
        ),
        (
            "missing certificate file",
            Box::new(|| {
                write(
                    &path,
                    &good.replace("public/fullchain.pem", "public/missing.pem"),
                )
            }),
            format!("{p}:3: server.cert: "),
        ),
        (
            "missing config file",
            Box::new(|| std::fs::remove_file(&path).unwrap()),
            format!("{p}: "),
        ),
        (
            "certificate and key from different rotations",
            Box::new(|| write(&cert, &public_cert(&pki).cert_pem)),
            format!(
                "{p}:4: server.key: the private key in {} does not match the certificate in {}",
                shown(&key),
                shown(&cert)
            ),
        ),
        (
            "CA file holding a private key",
            Box::new(|| write(&ca, &(pki.root.cert_pem() + &pki.root.key_pem()))),
            format!(
                "{p}:9: upstream_tls.ca: {} holds a PRIVATE KEY block",
                shown(&ca)
            ),
        ),
        (
            "changed listen",
            Box::new(|| write(&path, &good.replace("127.0.0.1:0", "127.0.0.1:1"))),
            format!(
                "{p}: server.listen: changed from 127.0.0.1:0 to 127.0.0.1:1: this setting takes a \
                 restart"
            ),
        ),
    ];

    let mut generation = 1;
    for (i, (case, breaks, expected)) in cases.iter().enumerate() {
        breaks();
        let err = match proxy.reloader.reload() {
            Err(err) => err,
            Ok(outcome) => panic!("{case}: the reload was not refused: {outcome:?}"),
        };
        let problem = err.problems[0].to_string();
        assert!(
            problem.starts_with(expected.as_str()),
            "{case}: got {problem:?}, expected it to start with {expected:?}"
        );
        // The same text `check` prints (the listen rule is the reload's own: check has no
        // running listener to compare with).
        if *case != "changed listen" {
            let check = Config::load(&path).expect_err(case);
            assert_eq!(err.to_string(), check.to_string(), "{case}");
        }
        let first_line = problem.lines().next().unwrap();
        logs()
            .line_with(&["reload refused", "keeps serving", first_line])
            .await;
        let got = get(&client, &proxy.url("/a/x")).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (StatusCode::OK, "backend:a\n"),
            "{case}: the old generation stopped serving"
        );

        // Repaired, with one more route so there is something to apply.
        for (file, text) in &originals {
            write(file, text);
        }
        let extra = route_to(&format!("/extra{i}"), "backend-a", &a);
        write(
            &path,
            &config_text(false, "\"ca.pem\"", &format!("{good_routes}{extra}")),
        );
        generation += 1;
        assert_eq!(
            applied(proxy.reloader.reload()),
            generation,
            "{case}: the good reload after it"
        );
        assert_eq!(
            get(&client, &proxy.url(&format!("/extra{i}/x")))
                .await
                .status,
            StatusCode::OK,
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_certificate_changes_reload_by_themselves_and_a_touch_does_not() {
    let pki = TestPki::new();
    let a = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    // `Proxy::start` leaves `[server] watch` out: it defaults to true. No reload() call below.
    let proxy = Proxy::start(&pki, &route_to("/a", "backend-a", &a)).await;
    let public = pki.path("public");
    let (cert, key) = (public.join("fullchain.pem"), public.join("privkey.pem"));

    // An atomic rename, key first: for a moment the pair does not match, which is refused.
    let renamed = public_cert(&pki);
    write(&public.join(".cert.tmp"), &renamed.cert_pem);
    write(&public.join(".key.tmp"), &renamed.key_pem);
    std::fs::rename(public.join(".key.tmp"), &key).unwrap();
    std::fs::rename(public.join(".cert.tmp"), &cert).unwrap();
    wait_for_leaf(&pki, &proxy, &renamed, "an atomic rename").await;
    assert_eq!(generation_serving(&renamed).await, 2);

    // Truncate and write in place, as an editor does.
    let rewritten = public_cert(&pki);
    write(&cert, &rewritten.cert_pem);
    write(&key, &rewritten.key_pem);
    wait_for_leaf(&pki, &proxy, &rewritten, "truncate and write").await;
    assert_eq!(generation_serving(&rewritten).await, 3);

    // A touch: the watch task looks, finds the bytes unchanged, and applies nothing.
    let looked = count_lines("reload: nothing changed");
    touch(&cert);
    touch(&proxy.config_path);
    eventually(
        "a reload that finds nothing changed",
        Duration::from_secs(10),
        || count_lines("reload: nothing changed") > looked,
    )
    .await;

    // Kubernetes: cert.pem -> ..data/cert.pem, ..data -> ..v1; then ..data swapped to ..v2.
    let mounted = public_cert(&pki);
    write(&public.join("..v1/fullchain.pem"), &mounted.cert_pem);
    write(&public.join("..v1/privkey.pem"), &mounted.key_pem);
    std::os::unix::fs::symlink("..v1", public.join("..data")).unwrap();
    for (name, file) in [("privkey.pem", &key), ("fullchain.pem", &cert)] {
        let link = public.join(format!(".{name}.link"));
        std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        std::fs::rename(&link, file).unwrap();
    }
    wait_for_leaf(&pki, &proxy, &mounted, "symlinks into ..data").await;
    // The touch made no generation of its own: this is the fourth.
    assert_eq!(generation_serving(&mounted).await, 4);

    let swapped = public_cert(&pki);
    write(&public.join("..v2/fullchain.pem"), &swapped.cert_pem);
    write(&public.join("..v2/privkey.pem"), &swapped.key_pem);
    std::os::unix::fs::symlink("..v2", public.join("..data_tmp")).unwrap();
    std::fs::rename(public.join("..data_tmp"), public.join("..data")).unwrap();
    wait_for_leaf(&pki, &proxy, &swapped, "a ..data symlink swap").await;
    assert_eq!(generation_serving(&swapped).await, 5);

    let got = get(&client(&pki, false), &proxy.url("/a/x")).await;
    assert_eq!(got.text(), "backend:a\n");
}

#[tokio::test]
async fn a_change_made_before_the_watch_starts_is_picked_up() {
    let pki = TestPki::new();
    let a = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    let proxy = Proxy::start(&pki, &route_to("/a", "backend-a", &a)).await;
    // On this single-threaded runtime the gateway's task has not run yet, so its folder watch
    // does not exist: no event will ever report this write.
    let rotated = public_cert(&pki);
    write(&pki.path("public/privkey.pem"), &rotated.key_pem);
    write(&pki.path("public/fullchain.pem"), &rotated.cert_pem);
    wait_for_leaf(&pki, &proxy, &rotated, "a write before the watch started").await;
}

/// An HTTP/2 backend (one multiplexed connection per proxy pool) that records the peer port of
/// every request and of every connection that closed.
struct PortBackend {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<u16>>>,
    closed: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PortBackend {
    async fn start(cert: &ServerCert) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config(&[b"h2"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, closed) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let (seen, ended) = (requests.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let (acceptor, seen, ended) = (acceptor.clone(), seen.clone(), ended.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        seen.lock().unwrap().push(peer.port());
                        async { Ok::<_, std::convert::Infallible>(Response::new(full("ok"))) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                    ended.lock().unwrap().push(peer.port());
                });
            }
        });
        Self {
            addr,
            requests,
            closed,
            task,
        }
    }

    fn requests(&self) -> Vec<u16> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for PortBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn trust_changes_keep_connections_that_still_verify_and_close_the_others() {
    let pki = TestPki::new();
    let backend = PortBackend::start(&pki.leaf(&["backend-a"])).await;
    let upstream = format!("https://backend-a:{}/", backend.addr.port());
    // HTTP/2 upstream (no preserved Host), so one pooled connection carries every request.
    let routes = format!(
        "{}preserve_host = false\n",
        route_at("/a", &upstream, backend.addr)
    );
    let proxy = Proxy::start_with(&pki, &config_text(false, "\"ca.pem\"", &routes)).await;
    let client = client(&pki, false);
    for _ in 0..2 {
        assert_eq!(
            get(&client, &proxy.url("/a/x")).await.status,
            StatusCode::OK
        );
    }
    let first = backend.requests()[0];
    assert_eq!(backend.requests(), [first, first], "one pooled connection");

    // A timeout the upstream connections do not depend on: the pool and its connection stay.
    write(
        &proxy.config_path,
        &config_text(
            false,
            "\"ca.pem\"",
            &format!("[timeouts]\nidle = \"30s\"\n\n{routes}"),
        ),
    );
    assert_eq!(applied(proxy.reloader.reload()), 2);
    assert_eq!(
        get(&client, &proxy.url("/a/x")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        backend.requests(),
        [first; 3],
        "the pool survived the reload"
    );

    // A second root: other trust, judged connection by connection. The open one still chains to
    // the first root, so it stays and carries the next request.
    let second = Ca::root("Second Internal Root", Validity::days(30)).unwrap();
    write(&pki.path("ca2.pem"), &second.cert_pem());
    let with_roots = |roots: &str| {
        config_text(
            false,
            roots,
            &format!("[timeouts]\nidle = \"30s\"\n\n{routes}"),
        )
    };
    write(&proxy.config_path, &with_roots("[\"ca.pem\", \"ca2.pem\"]"));
    assert_eq!(applied(proxy.reloader.reload()), 3);
    assert_eq!(
        get(&client, &proxy.url("/a/x")).await.status,
        StatusCode::OK
    );
    assert_eq!(backend.requests(), [first; 4], "still verifies: kept");

    // The first root dropped: the connection no longer verifies, so it is closed before the new
    // generation serves, and the next request makes a new handshake, which fails.
    write(&proxy.config_path, &with_roots("\"ca2.pem\""));
    let reloader = proxy.reloader.clone();
    let reloaded = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .unwrap();
    assert_eq!(applied(reloaded), 4);
    eventually(
        "the connection that no longer verifies to close",
        Duration::from_secs(5),
        || backend.closed.lock().unwrap().contains(&first),
    )
    .await;
    assert_eq!(
        get(&client, &proxy.url("/a/x")).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        backend.requests().len(),
        4,
        "no request on the old connection"
    );
}

#[tokio::test]
async fn shutdown_after_reloads_still_drains() {
    let pki = TestPki::new();
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = held_backend(&pki, arrived.clone(), release.clone()).await;
    let slow_route = route_to("/slow", "backend-slow", &slow);
    let timeouts = [
        "[timeouts]\nidle = \"30s\"\n\n",
        "[timeouts]\nidle = \"40s\"\n\n",
    ];
    let mut proxy = Proxy::start_with(&pki, &config_text(false, "\"ca.pem\"", &slow_route)).await;
    for (i, timeouts) in timeouts.iter().cycle().take(3).enumerate() {
        write(
            &proxy.config_path,
            &config_text(false, "\"ca.pem\"", &format!("{timeouts}{slow_route}")),
        );
        assert_eq!(applied(proxy.reloader.reload()), i as u64 + 2);
    }
    let client = client(&pki, false);
    let url = proxy.url("/slow/x");
    let in_flight = tokio::spawn(async move { get(&client, &url).await });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the request reached the backend");

    proxy.shutdown();
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
        .expect("the in-flight request finished")
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "finished");
    tokio::time::timeout(Duration::from_secs(5), proxy.task.take().unwrap())
        .await
        .expect("drained within the grace period")
        .unwrap();
}
