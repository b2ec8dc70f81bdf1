//! Reloads under load: certificates and routes swapped 200 times without a failed request, the
//! internal root rotated by overlap, and a thousand reloads that leave no generation behind.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::StatusCode;
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use trustgate::pki::inspect::CertInfo;
use trustgate::pki::{Ca, LeafRequest, Validity};
use trustgate::reload::Outcome;

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The tests share the process's memory and the two cores: one at a time, so the RSS one
/// measures only itself.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Load

/// Counts reloads so a request can tell which generation served it: even while none runs
/// (generation `value / 2 + 1`), odd during one. A request that read the same even value before
/// it was sent and after its response ran wholly within that generation.
#[derive(Default)]
struct Epoch(AtomicU64);

impl Epoch {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// The generation a request served between two equal readings `before` and `after` saw.
    fn generation(before: u64, after: u64) -> Option<u64> {
        (before == after && before.is_multiple_of(2)).then_some(before / 2 + 1)
    }
}

/// Reloads `proxy` off the runtime's threads, bracketed by `epoch`.
async fn reload(proxy: &Proxy, epoch: &Epoch) -> Outcome {
    epoch.0.fetch_add(1, Ordering::SeqCst);
    let reloader = proxy.reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .expect("the reload task")
        .unwrap_or_else(|e| panic!("reload refused:\n{e}"));
    epoch.0.fetch_add(1, Ordering::SeqCst);
    outcome
}

/// One answered request: the body's first line and the epoch before and after it.
#[derive(Debug, Clone)]
struct Answer {
    backend: String,
    before: u64,
    after: u64,
}

/// Clients requesting `url` in a loop until [`Load::finish`]: keep-alive HTTP/1.1 and h2
/// clients, and clients that open a new connection (and handshake) for every request.
struct Load {
    epoch: Arc<Epoch>,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Each (h2, new connection per request) pair twice: eight clients.
    fn start(pki: &Arc<TestPki>, url: String) -> Self {
        let load = Self {
            epoch: Arc::default(),
            stop: Arc::default(),
            answers: Arc::default(),
            failures: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for _ in 0..2 {
            for (h2, fresh) in [(false, false), (true, false), (false, true), (true, true)] {
                let (pki, url) = (pki.clone(), url.clone());
                let (epoch, stop) = (load.epoch.clone(), load.stop.clone());
                let (answers, failures) = (load.answers.clone(), load.failures.clone());
                tasks.push(tokio::spawn(async move {
                    let kind = format!("h2={h2} new-connection={fresh}");
                    let mut pooled = client(&pki, h2);
                    while !stop.load(Ordering::SeqCst) {
                        if fresh {
                            pooled = client(&pki, h2);
                        }
                        let before = epoch.now();
                        match answer(&pooled, &url).await {
                            Ok(backend) => answers.lock().unwrap().push(Answer {
                                backend,
                                before,
                                after: epoch.now(),
                            }),
                            Err(e) => failures.lock().unwrap().push(format!("{kind}: {e}")),
                        }
                    }
                }));
            }
        }
        Self { tasks, ..load }
    }

    fn count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits until the clients got `more` answers than they had: the load is flowing.
    async fn flowing(&self, more: usize) {
        let from = self.count();
        eventually(
            &format!("{more} more answers under load"),
            Duration::from_secs(10),
            || self.count() >= from + more,
        )
        .await;
    }

    /// Stops the clients, asserts that no request failed and returns every answer.
    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed requests, the first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        self.answers.lock().unwrap().clone()
    }
}

/// GETs `url`; a 200 gives the body's first line, anything else is a failure.
async fn answer(client: &TestClient, url: &str) -> Result<String, String> {
    let body = try_get(client, url).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Config

/// A whole config: public chain and key from `public/<cert>/`, `ca` as a TOML value, `routes`.
fn config(cert: &str, ca: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/{cert}/fullchain.pem\"\n\
         key = \"public/{cert}/privkey.pem\"\nshutdown_grace = \"5s\"\nwatch = false\n\n\
         [upstream_tls]\nca = {ca}\n\n{routes}"
    )
}

/// Issues a public certificate for the listener into `public/<name>/`; returns its leaf.
fn public_cert(pki: &TestPki, name: &str) -> CertificateDer<'static> {
    let mut request = LeafRequest::server("localhost", 30);
    request.names.push("127.0.0.1".into());
    let issued = pki.public_ca.issue(&request).unwrap();
    write(
        &pki.path(&format!("public/{name}/fullchain.pem")),
        &issued.cert_pem,
    );
    write(
        &pki.path(&format!("public/{name}/privkey.pem")),
        &issued.key_pem,
    );
    issued.cert
}

/// The leaf the proxy presents on a fresh connection.
async fn served_leaf(pki: &TestPki, proxy: &Proxy) -> CertificateDer<'static> {
    let tls = raw_tls(pki, proxy.addr).await;
    let chain = tls.get_ref().1.peer_certificates().expect("a server chain");
    chain[0].clone().into_owned()
}

fn serial(cert: &CertificateDer<'_>) -> String {
    CertInfo::parse(cert).expect("a parsable leaf").serial
}

/// Which of two configs alternated by reloads serves `generation`: the first (started with) in
/// odd generations, the second in even ones.
fn alternate(generation: u64) -> usize {
    usize::from(generation.is_multiple_of(2))
}

/// The upstream name the routes use: the address moves, the service name stays.
const UPSTREAM: &str = "https://backend-x:8443/";

/// `/x` to `backend` as `backend-x`.
fn route_x(backend: &Backend) -> String {
    route_at("/x", UPSTREAM, backend.addr)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_of_certificate_and_routes_under_load_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let pki = Arc::new(TestPki::new());
    let leaf = pki.leaf(&["backend-x"]);
    let a = Backend::recording(&leaf, H2_H1, "a").await;
    let b = Backend::recording(&leaf, H2_H1, "b").await;
    let certs = [public_cert(&pki, "one"), public_cert(&pki, "two")];
    // Table A with certificate one, then table B with certificate two, alternately.
    let configs = [
        config("one", "\"ca.pem\"", &route_x(&a)),
        config("two", "\"ca.pem\"", &route_x(&b)),
    ];
    let proxy = Proxy::start_with(&pki, &configs[0]).await;
    assert_eq!(served_leaf(&pki, &proxy).await, certs[0]);
    let load = Load::start(&pki, proxy.url("/x/"));
    load.flowing(20).await;

    for generation in 2..=201u64 {
        let next = alternate(generation);
        write(&proxy.config_path, &configs[next]);
        match reload(&proxy, &load.epoch).await {
            Outcome::Applied { generation: g, .. } => assert_eq!(g, generation),
            other => panic!("reload to generation {generation}: {other:?}"),
        }
        let served = served_leaf(&pki, &proxy).await;
        assert_eq!(
            serial(&served),
            serial(&certs[next]),
            "a handshake after reload {generation} must see the certificate just installed"
        );
        assert_eq!(served, certs[next]);
        if generation % 10 == 0 {
            // Let some requests run wholly inside this generation.
            load.flowing(8).await;
        }
    }
    load.flowing(20).await;
    let answers = load.finish().await;

    let (mut within, mut from) = (0, [0; 2]);
    for answer in &answers {
        let index = match answer.backend.as_str() {
            "backend:a" => 0,
            "backend:b" => 1,
            other => panic!("an answer from no route table: {other:?}"),
        };
        from[index] += 1;
        if let Some(generation) = Epoch::generation(answer.before, answer.after) {
            within += 1;
            assert_eq!(
                index,
                alternate(generation),
                "generation {generation} answered from the other table: {answer:?}"
            );
        }
    }
    eprintln!(
        "{} answers ({within} within one generation), {} from A, {} from B",
        answers.len(),
        from[0],
        from[1]
    );
    assert!(from[0] > 0 && from[1] > 0, "both tables answered: {from:?}");
    assert!(
        within >= 20,
        "only {within} answers ran within one generation"
    );
    a.join().await;
    b.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_root_rotates_by_overlap_under_load_and_the_old_root_is_then_refused() {
    let _serial = SERIAL.lock().await;
    let pki = Arc::new(TestPki::new());
    let public = public_cert(&pki, "one");
    let new_root = Ca::root("Test Internal Root 2", Validity::days(30)).unwrap();
    let new_intermediate = new_root
        .intermediate("Test Internal Intermediate 2", Validity::days(30), &[])
        .unwrap();
    write(&pki.path("new-ca.pem"), &new_root.cert_pem());

    // A second service still on the old root, to show what removing that root does.
    let stray = Backend::recording(&pki.leaf(&["backend-old"]), H2_H1, "stray").await;
    let stray_upstream = format!("https://backend-old:{}/", stray.port());
    let stray_route = route("/old", &stray_upstream, &stray);
    let step = |ca: &str, x: &Backend| config("one", ca, &format!("{}{stray_route}", route_x(x)));
    let client = client(&pki, false);

    // (a) The old root only; the backend on an old-root leaf.
    let old = Backend::recording(&pki.leaf(&["backend-x"]), H2_H1, "old").await;
    let proxy = Proxy::start_with(&pki, &step("\"ca.pem\"", &old)).await;
    assert_eq!(served_leaf(&pki, &proxy).await, public);
    let load = Load::start(&pki, proxy.url("/x/"));
    load.flowing(20).await;

    // (b) The new root next to the old one.
    write(
        &proxy.config_path,
        &step("[\"ca.pem\", \"new-ca.pem\"]", &old),
    );
    match reload(&proxy, &load.epoch).await {
        Outcome::Applied { changes, .. } => assert!(
            changes.contains("anchors added") && changes.contains("Test Internal Root 2"),
            "{changes}"
        ),
        other => panic!("{other:?}"),
    }
    load.flowing(20).await;

    // (c) The backend re-issued under the new root: it starts on a new port, the route moves to
    // it, then the old one stops. No request needs a retry.
    let renewed = ServerCert::from_issued(
        new_intermediate
            .issue(&LeafRequest::server("backend-x", 30))
            .unwrap(),
        &[&new_intermediate],
    );
    let new = Backend::recording(&renewed, H2_H1, "new").await;
    write(
        &proxy.config_path,
        &step("[\"ca.pem\", \"new-ca.pem\"]", &new),
    );
    assert!(matches!(
        reload(&proxy, &load.epoch).await,
        Outcome::Applied { .. }
    ));
    let moved = load.epoch.now();
    eventually("the new backend serving", Duration::from_secs(10), || {
        new.seen().len() >= 20
    })
    .await;
    let served_by_old = old.seen().len();
    old.join().await;
    load.flowing(20).await;

    // Before the old root goes, the stray backend is still trusted, and its pool now holds a warm
    // connection verified under the old root: removing the root must not let it be reused.
    let got = get(&client, &proxy.url("/old/")).await;
    assert_eq!(got.status, StatusCode::OK);

    // (d) The old root removed.
    write(&proxy.config_path, &step("\"new-ca.pem\"", &new));
    match reload(&proxy, &load.epoch).await {
        Outcome::Applied { changes, .. } => assert!(
            changes.contains("anchors removed") && changes.contains("Test Internal Root\""),
            "{changes}"
        ),
        other => panic!("{other:?}"),
    }
    load.flowing(20).await;
    let answers = load.finish().await;

    assert!(served_by_old > 0);
    for answer in &answers {
        assert!(
            ["backend:old", "backend:new"].contains(&answer.backend.as_str()),
            "{answer:?}"
        );
        if answer.before >= moved {
            assert_eq!(answer.backend, "backend:new", "{answer:?}");
        }
    }
    eprintln!(
        "{} answers, {served_by_old} from the old backend, {} from the new",
        answers.len(),
        new.seen().len()
    );

    // A backend still on the old root: 502, and the log says why.
    let seen_before = stray.seen().len();
    let line = bad_gateway(&pki, &proxy, "/old/", &stray_upstream).await;
    assert!(line.contains("reason=unknown issuer"), "{line}");
    assert_eq!(stray.seen().len(), seen_before, "never reached the stray");
    new.join().await;
    stray.join().await;
}

/// Resident memory of this process, from `/proc/self/status`.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in kB")
}

/// A backend that answers `backend:<name>` and records nothing: the harness's own memory stays
/// out of the proxy's figures.
async fn answering(cert: &ServerCert, name: &'static str) -> Backend {
    Backend::custom(cert, H2_H1, move |_, _| async move {
        http::Response::new(full(format!("backend:{name}\n")))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_keep_memory_flat_and_free_old_generations() {
    const WARM_UP: u64 = 50;
    const RELOADS: u64 = 1000;
    /// Every this many reloads a request goes through, so that generation's upstream pool holds
    /// a live connection when it is replaced.
    const REQUEST_EVERY: u64 = 4;
    const ALLOWED_KIB: u64 = 8 * 1024;
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let leaf = pki.leaf(&["backend-x"]);
    let a = answering(&leaf, "a").await;
    let b = answering(&leaf, "b").await;
    public_cert(&pki, "one");
    public_cert(&pki, "two");
    let configs = [
        config("one", "\"ca.pem\"", &route_x(&a)),
        config("two", "\"ca.pem\"", &route_x(&b)),
    ];
    let proxy = Proxy::start_with(&pki, &configs[0]).await;
    let client = client(&pki, true);
    let epoch = Epoch::default();
    assert_eq!(get(&client, &proxy.url("/x/")).await.text(), "backend:a\n");
    let early = Arc::downgrade(&proxy.reloader.current());

    let mut baseline = 0;
    for generation in 2..=RELOADS + 1 {
        let next = alternate(generation);
        write(&proxy.config_path, &configs[next]);
        match reload(&proxy, &epoch).await {
            Outcome::Applied { generation: g, .. } => assert_eq!(g, generation),
            other => panic!("reload to generation {generation}: {other:?}"),
        }
        if generation % REQUEST_EVERY == 0 {
            let got = get(&client, &proxy.url("/x/")).await;
            assert_eq!(got.text(), ["backend:a\n", "backend:b\n"][next]);
        }
        if generation == WARM_UP + 1 {
            baseline = rss_kib();
        }
    }
    let after = rss_kib();
    eprintln!(
        "VmRSS after {WARM_UP} reloads: {baseline} KiB; after {RELOADS}: {after} KiB \
         ({:+} KiB)",
        after as i64 - baseline as i64
    );
    assert!(
        after <= baseline + ALLOWED_KIB,
        "RSS grew from {baseline} KiB to {after} KiB over {} reloads",
        RELOADS - WARM_UP
    );
    // Generation 1 is long gone: nothing (a pool, a connection, a request) kept it.
    eventually("generation 1 freed", Duration::from_secs(5), || {
        early.strong_count() == 0
    })
    .await;
    assert_eq!(proxy.reloader.current().number, RELOADS + 1);
    a.join().await;
    b.join().await;
}
