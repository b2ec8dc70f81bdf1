//! What trustgate costs per request: the same GET sent straight to an HTTPS backend ("direct")
//! and through the proxy ("proxied"), for HTTP/1.1 and HTTP/2 clients and for a small (13-byte)
//! and a 64 KiB response body.
//!
//! Everything runs in this process on 127.0.0.1 ephemeral ports, in one multi-thread tokio runtime:
//! - the backend is a [`TlsServer`] presenting "backend-api" (internal root -> intermediate ->
//!   leaf, served as leaf + intermediate) and answering `GET /small` and `GET /64k` from
//!   pre-built `Bytes`, so the payload is never allocated per request;
//! - the proxy is loaded by [`trustgate::Config::load`] from a TOML file in a temp folder (public
//!   certificate for "localhost" from a separate public CA, `[upstream_tls] ca` = the internal
//!   root, one route `/` -> `https://backend-api:<port>/` with a fixed `address`) and served by
//!   [`trustgate::Gateway`];
//! - the clients are hyper-util legacy clients over hyper-rustls, with pooled keep-alive
//!   connections; each request's body is read to the end. Both connect to 127.0.0.1 and pin the
//!   TLS server name with `FixedServerNameResolver` ("localhost" for the proxy, "backend-api" for
//!   the backend), so the two paths differ only by the proxy.
//!
//! The backend offers ALPN `h2` then `http/1.1`, as the proxy's own listener does, so the proxy's
//! upstream leg negotiates HTTP/2 whatever the client speaks: "h1 proxied" is HTTP/1.1 to the
//! proxy and HTTP/2 from the proxy to the backend, a realistic deployment.
//!
//! # Why the ratio matters
//! A proxied request pays a second TLS session (decrypt from the client, re-encrypt to the
//! backend), a second HTTP parse and serialization, the header rewrite and a pool checkout. On
//! loopback the network costs nothing, so `proxied / direct` shows that overhead at its most
//! visible; in production the network round trip dilutes it. The absolute numbers mean little:
//! client, proxy and backend share the same cores here, and, as rpxy's benchmark notes warn,
//! loopback figures taken on a small shared machine (such as 2 cores with other work running) are
//! only comparable with each other within one run, never across runs or machines. That is why,
//! after criterion's groups, `main` measures both paths side by side in interleaved rounds and
//! prints `ratio <case> proxied/direct = ...` with the per-request medians.
//!
//! Run with `cargo bench --bench proxy`; a criterion filter (`-- h2_64k`) runs fewer groups, but
//! the ratio step always covers all four cases. `cargo test --benches` runs every benchmark once
//! and the ratio step with a handful of requests, as a smoke test.

use std::collections::HashSet;
use std::future::Ready;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tower_service::Service;
use trustgate::pki::{Ca, LeafRequest, Validity};
use trustgate::server::{ConnectionInfo, TlsServer};

/// The `/small` body: 13 bytes.
const SMALL_BODY: &[u8] = b"hello, proxy\n";
/// The `/64k` body length.
const LARGE_LEN: usize = 64 * 1024;

/// Requests per side (direct, proxied) and per case in the ratio step, split into interleaved
/// rounds that alternate which side goes first, so drift in machine load hits both alike.
const RATIO_REQUESTS: usize = 2000;
const RATIO_ROUNDS: usize = 4;
/// The same under `cargo test --benches`: just enough to exercise the code.
const SMOKE_REQUESTS: usize = 20;
const SMOKE_ROUNDS: usize = 2;

type HttpsClient = Client<HttpsConnector<CountingConnector>, Empty<Bytes>>;

/// A pooled client and the number of TCP connections it has opened.
struct BenchClient {
    client: HttpsClient,
    opened: Arc<AtomicUsize>,
}

impl BenchClient {
    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }
}

/// hyper-util's `HttpConnector`, counting the connections it opens, so the run can show that
/// requests went over pooled keep-alive connections.
#[derive(Clone)]
struct CountingConnector {
    inner: HttpConnector,
    opened: Arc<AtomicUsize>,
}

impl Service<Uri> for CountingConnector {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = <HttpConnector as Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.inner.call(dst)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    proto: Proto,
    path: &'static str,
    len: usize,
}

const CASES: [Case; 4] = [
    Case {
        name: "h1_small",
        proto: Proto::H1,
        path: "/small",
        len: SMALL_BODY.len(),
    },
    Case {
        name: "h1_64k",
        proto: Proto::H1,
        path: "/64k",
        len: LARGE_LEN,
    },
    Case {
        name: "h2_small",
        proto: Proto::H2,
        path: "/small",
        len: SMALL_BODY.len(),
    },
    Case {
        name: "h2_64k",
        proto: Proto::H2,
        path: "/64k",
        len: LARGE_LEN,
    },
];

/// One URL, the pooled client that fetches it and the body length it must return.
struct Target {
    client: HttpsClient,
    uri: Uri,
    len: usize,
}

impl Target {
    /// GET, check the status, read the whole body and check its length.
    async fn fetch(&self) -> Version {
        let response = self
            .client
            .get(self.uri.clone())
            .await
            .unwrap_or_else(|e| panic!("GET {}: {e:?}", self.uri));
        assert_eq!(response.status(), StatusCode::OK, "GET {}", self.uri);
        let version = response.version();
        let mut body = response.into_body();
        let mut len = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("GET {} body: {e}", self.uri));
            if let Some(data) = frame.data_ref() {
                len += data.len();
            }
        }
        assert_eq!(len, self.len, "GET {} body length", self.uri);
        version
    }
}

/// The running backend and proxy, and the four clients.
struct Setup {
    runtime: Runtime,
    backend: SocketAddr,
    proxy: SocketAddr,
    /// The proxy's upstream connections that carried a request to the backend (told apart from
    /// direct ones by `X-Forwarded-For`).
    upstream_peers: Arc<Mutex<HashSet<SocketAddr>>>,
    direct_h1: BenchClient,
    direct_h2: BenchClient,
    proxied_h1: BenchClient,
    proxied_h2: BenchClient,
    /// Holds the proxy's config and certificates; removed on drop.
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");

        let root = Ca::root("Bench Internal Root", Validity::days(2)).expect("root");
        let intermediate = root
            .intermediate("Bench Internal Intermediate", Validity::days(2), &[])
            .expect("intermediate");
        let leaf = intermediate
            .issue(&LeafRequest::server("backend-api", 1))
            .expect("backend leaf");
        let backend_tls = trustgate::tls::server::config(
            vec![leaf.cert.clone(), intermediate.cert().clone()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("backend key"),
            None,
        )
        .expect("backend TLS config");

        let public_ca = Ca::root("Bench Public CA", Validity::days(2)).expect("public CA");
        let public = public_ca
            .issue(&LeafRequest::server("localhost", 1))
            .expect("public leaf");
        let dir = tempfile::tempdir().expect("temp dir");
        write(&dir.path().join("ca.pem"), &root.cert_pem());
        write(&dir.path().join("public/fullchain.pem"), &public.cert_pem);
        write(&dir.path().join("public/privkey.pem"), &public.key_pem);

        let upstream_peers = Arc::new(Mutex::new(HashSet::new()));
        let (backend, proxy) = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend");
            let backend = listener.local_addr().expect("backend address");
            let server = TlsServer::new(
                backend_tls.clone(),
                Duration::from_secs(10),
                Duration::from_secs(1),
            );
            let handler = backend_handler(upstream_peers.clone());
            tokio::spawn(server.serve(listener, handler, std::future::pending()));
            // The same backend on two more loopback addresses: the three endpoints of `/three`.
            for ip in [[127, 0, 0, 2], [127, 0, 0, 3]] {
                let listener = TcpListener::bind(SocketAddr::from((ip, backend.port())))
                    .await
                    .expect("bind backend on another loopback address");
                let server = TlsServer::new(
                    backend_tls.clone(),
                    Duration::from_secs(10),
                    Duration::from_secs(1),
                );
                let handler = backend_handler(upstream_peers.clone());
                tokio::spawn(server.serve(listener, handler, std::future::pending()));
            }

            let config_path = dir.path().join("trustgate.toml");
            write(
                &config_path,
                &format!(
                    "[server]\n\
                     listen = \"127.0.0.1:0\"\n\
                     cert = \"public/fullchain.pem\"\n\
                     key = \"public/privkey.pem\"\n\
                     \n\
                     [upstream_tls]\n\
                     ca = \"ca.pem\"\n\
                     \n\
                     [[route]]\n\
                     prefix = \"/\"\n\
                     upstream = \"https://backend-api:{port}/\"\n\
                     address = \"{backend}\"\n\
                     \n\
                     [[route]]\n\
                     prefix = \"/three\"\n\
                     upstream = \"https://backend-api:{port}/\"\n\
                     addresses = [\"127.0.0.1:{port}\", \"127.0.0.2:{port}\", \"127.0.0.3:{port}\"]\n",
                    port = backend.port(),
                ),
            );
            let config = trustgate::Config::load(&config_path)
                .unwrap_or_else(|e| panic!("proxy config:\n{e}"));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            let proxy = listener.local_addr().expect("proxy address");
            tokio::spawn(trustgate::Gateway::new(&config).serve(listener, std::future::pending()));
            (backend, proxy)
        });

        let internal = client_tls(root.cert());
        let public = client_tls(public_ca.cert());
        Self {
            runtime,
            backend,
            proxy,
            upstream_peers,
            direct_h1: client(internal.clone(), "backend-api", Proto::H1),
            direct_h2: client(internal, "backend-api", Proto::H2),
            proxied_h1: client(public.clone(), "localhost", Proto::H1),
            proxied_h2: client(public, "localhost", Proto::H2),
            _dir: dir,
        }
    }

    fn direct(&self, case: Case) -> Target {
        let client = match case.proto {
            Proto::H1 => &self.direct_h1,
            Proto::H2 => &self.direct_h2,
        };
        target(client, self.backend, case)
    }

    fn proxied(&self, case: Case) -> Target {
        let client = match case.proto {
            Proto::H1 => &self.proxied_h1,
            Proto::H2 => &self.proxied_h2,
        };
        target(client, self.proxy, case)
    }

    /// As [`Setup::proxied`], through the route whose three endpoints are this same backend.
    fn proxied_three(&self, case: Case) -> Target {
        let mut target = self.proxied(case);
        target.uri = format!("https://{}/three{}", self.proxy, case.path)
            .parse()
            .expect("valid URI");
        target
    }

    /// One request per case and path, checking that each client speaks the version it should.
    fn check(&self) {
        for case in CASES {
            let expected = match case.proto {
                Proto::H1 => Version::HTTP_11,
                Proto::H2 => Version::HTTP_2,
            };
            for (side, target) in [
                ("direct", self.direct(case)),
                ("proxied", self.proxied(case)),
            ] {
                let version = self.runtime.block_on(target.fetch());
                assert_eq!(version, expected, "{} {side}", case.name);
            }
        }
    }
}

fn target(client: &BenchClient, addr: SocketAddr, case: Case) -> Target {
    Target {
        client: client.client.clone(),
        uri: format!("https://{addr}{}", case.path)
            .parse()
            .expect("valid URI"),
        len: case.len,
    }
}

/// The backend's handler: pre-built bodies, cloned (a reference count) per request. It notes
/// the proxy's connections in `upstream_peers`.
fn backend_handler(
    upstream_peers: Arc<Mutex<HashSet<SocketAddr>>>,
) -> impl Fn(Request<Incoming>, Arc<ConnectionInfo>) -> Ready<Response<Full<Bytes>>>
+ Clone
+ Send
+ Sync
+ 'static {
    let small = Bytes::from_static(SMALL_BODY);
    let large = Bytes::from(vec![b'x'; LARGE_LEN]);
    move |req: Request<Incoming>, info: Arc<ConnectionInfo>| {
        if req.headers().contains_key("x-forwarded-for") {
            upstream_peers.lock().expect("peers lock").insert(info.peer);
        }
        let response = match req.uri().path() {
            "/small" => Response::new(Full::new(small.clone())),
            "/64k" => Response::new(Full::new(large.clone())),
            _ => {
                let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        };
        std::future::ready(response)
    }
}

/// A client config trusting `anchor` alone.
fn client_tls(anchor: &CertificateDer<'static>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(anchor.clone()).expect("trust anchor");
    ClientConfig::builder_with_provider(trustgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A pooled client that connects to whatever address the URL holds but verifies (and sends as
/// SNI) `server_name`. HTTP/1.1 offers no ALPN; HTTP/2 offers only `h2`.
fn client(tls: ClientConfig, server_name: &'static str, proto: Proto) -> BenchClient {
    let mut inner = HttpConnector::new();
    inner.enforce_http(false);
    inner.set_nodelay(true);
    let opened = Arc::new(AtomicUsize::new(0));
    let tcp = CountingConnector {
        inner,
        opened: opened.clone(),
    };
    let name = ServerName::try_from(server_name).expect("valid server name");
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(name));
    let connector = match proto {
        Proto::H1 => builder.enable_http1().wrap_connector(tcp),
        Proto::H2 => builder.enable_http2().wrap_connector(tcp),
    };
    BenchClient {
        client: Client::builder(TokioExecutor::new()).build(connector),
        opened,
    }
}

fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create folder");
    }
    std::fs::write(path, contents).expect("write file");
}

/// Criterion's groups: `<case>/direct` and `<case>/proxied`.
fn bench_cases(c: &mut Criterion, setup: &Setup) {
    for case in CASES {
        let mut group = c.benchmark_group(case.name);
        for (side, target) in [
            ("direct", setup.direct(case)),
            ("proxied", setup.proxied(case)),
        ] {
            group.bench_function(side, |b| {
                b.to_async(&setup.runtime).iter(|| target.fetch());
            });
        }
        group.finish();
    }
    for case in BALANCE_CASES {
        let mut group = c.benchmark_group(format!("endpoints_{}", case.name));
        for (side, target) in [
            ("one", setup.proxied(case)),
            ("three", setup.proxied_three(case)),
        ] {
            group.bench_function(side, |b| {
                b.to_async(&setup.runtime).iter(|| target.fetch());
            });
        }
        group.finish();
    }
}

/// The cases the balancing cost is measured on: small bodies, where it weighs most.
const BALANCE_CASES: [Case; 2] = [CASES[0], CASES[2]];

/// Times `count` sequential requests one by one, appending each duration to `samples`.
fn sample(runtime: &Runtime, target: &Target, count: usize, samples: &mut Vec<Duration>) {
    runtime.block_on(async {
        for _ in 0..count {
            let started = Instant::now();
            std::hint::black_box(target.fetch().await);
            samples.push(started.elapsed());
        }
    });
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The medians of `a` and `b` (per request), measured in interleaved rounds after a warm-up.
fn side_by_side(
    setup: &Setup,
    a: &Target,
    b: &Target,
    requests: usize,
    rounds: usize,
) -> (Duration, Duration) {
    let per_round = requests.div_ceil(rounds);
    let mut discard = Vec::new();
    sample(&setup.runtime, a, 20, &mut discard);
    sample(&setup.runtime, b, 20, &mut discard);
    let mut a_times = Vec::with_capacity(per_round * rounds);
    let mut b_times = Vec::with_capacity(per_round * rounds);
    for round in 0..rounds {
        if round % 2 == 0 {
            sample(&setup.runtime, a, per_round, &mut a_times);
            sample(&setup.runtime, b, per_round, &mut b_times);
        } else {
            sample(&setup.runtime, b, per_round, &mut b_times);
            sample(&setup.runtime, a, per_round, &mut a_times);
        }
    }
    (median(&mut a_times), median(&mut b_times))
}

/// One endpoint against three (the same backend on three addresses), side by side: what
/// picking an endpoint costs per request.
fn balance_ratios(setup: &Setup, requests: usize, rounds: usize) {
    for case in BALANCE_CASES {
        let (one, three) = side_by_side(
            setup,
            &setup.proxied(case),
            &setup.proxied_three(case),
            requests,
            rounds,
        );
        println!(
            "ratio {} three/one endpoints = {:.3} (one {:.1} us, three {:.1} us, difference {:+.1} us)",
            case.name,
            three.as_secs_f64() / one.as_secs_f64(),
            one.as_secs_f64() * 1e6,
            three.as_secs_f64() * 1e6,
            (three.as_secs_f64() - one.as_secs_f64()) * 1e6,
        );
    }
}

/// Direct and proxied side by side, in interleaved rounds; prints one ratio line per case.
fn ratios(setup: &Setup, requests: usize, rounds: usize) {
    let per_round = requests.div_ceil(rounds);
    println!(
        "\nproxied/direct, median per request over {} sequential requests per side \
         in {rounds} interleaved rounds:",
        per_round * rounds
    );
    for case in CASES {
        let (direct_median, proxied_median) = side_by_side(
            setup,
            &setup.direct(case),
            &setup.proxied(case),
            requests,
            rounds,
        );
        println!(
            "ratio {} proxied/direct = {:.2} (direct {:.0} us, proxied {:.0} us)",
            case.name,
            proxied_median.as_secs_f64() / direct_median.as_secs_f64(),
            direct_median.as_secs_f64() * 1e6,
            proxied_median.as_secs_f64() * 1e6,
        );
    }
    println!(
        "TCP connections opened in the whole run (pooled keep-alive; hyper-util may open a spare \
         one when a request starts before the previous HTTP/1.1 connection is back in the pool): \
         direct h1 {}, direct h2 {}, proxied h1 {}, proxied h2 {}; proxy to backend {}",
        setup.direct_h1.opened(),
        setup.direct_h2.opened(),
        setup.proxied_h1.opened(),
        setup.proxied_h2.opened(),
        setup.upstream_peers.lock().expect("peers lock").len(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    // `cargo bench` passes --bench; `cargo test --benches` does not (criterion's test mode).
    let benchmarking = flag("--bench") && !flag("--test");
    let listing = flag("--list") || args.iter().any(|a| a.starts_with("--profile-time"));

    let setup = Setup::new();
    setup.check();

    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_cases(&mut criterion, &setup);
    criterion.final_summary();

    if listing {
        return;
    }
    if benchmarking {
        ratios(&setup, RATIO_REQUESTS, RATIO_ROUNDS);
        balance_ratios(&setup, RATIO_REQUESTS, RATIO_ROUNDS);
    } else {
        ratios(&setup, SMOKE_REQUESTS, SMOKE_ROUNDS);
        balance_ratios(&setup, SMOKE_REQUESTS, SMOKE_ROUNDS);
    }
}
