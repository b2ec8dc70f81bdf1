//! Test harness: a per-test PKI built with trustgate's own `pki` module, HTTPS backends on
//! ephemeral loopback ports that record what they saw, the proxy started in-process, clients that
//! trust the public CA, raw TLS sockets for malformed traffic, and a log capture.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use trustgate::Config;
use trustgate::pki::{Ca, LeafRequest, Usage, Validity};
use trustgate::server::{ConnectionInfo, TlsServer};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Waits until `condition` holds, checking every 20 ms for at most `within`; panics otherwise.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PKI

/// A certificate chain and key a test server presents.
#[derive(Clone)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub chain_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    /// `issued` presented with `intermediates` after it.
    pub fn from_issued(issued: trustgate::pki::Issued, intermediates: &[&Ca]) -> Self {
        let mut chain = vec![issued.cert];
        let mut chain_pem = issued.cert_pem;
        for ca in intermediates {
            chain.push(ca.cert().clone());
            chain_pem.push_str(&ca.cert_pem());
        }
        Self {
            chain,
            chain_pem,
            key_pem: issued.key_pem,
        }
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("test key parses")
    }

    /// A server config offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        self.server_config_with(alpn, None)
    }

    /// As [`ServerCert::server_config`], requiring a client certificate issued under `client_ca`.
    pub fn mtls_config(&self, alpn: &[&[u8]], client_ca: &Ca) -> Arc<ServerConfig> {
        let verifier = trustgate::tls::server::client_verifier(
            &[client_ca.cert().clone()],
            &trustgate::tls::revocation::CrlSet::default(),
            true,
        )
        .expect("client verifier");
        self.server_config_with(alpn, Some(verifier))
    }

    fn server_config_with(
        &self,
        alpn: &[&[u8]],
        client_auth: Option<Arc<trustgate::tls::verify::ClientVerifier>>,
    ) -> Arc<ServerConfig> {
        let base = trustgate::tls::server::config(self.chain.clone(), self.key(), client_auth)
            .expect("config");
        let mut config = (*base).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Root -> intermediate for the internal CA, a separate public CA for the listener, and a temp
/// folder holding `ca.pem` (internal root) and `public/fullchain.pem` + `public/privkey.pem`.
pub struct TestPki {
    pub root: Ca,
    pub intermediate: Ca,
    pub public_ca: Ca,
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let root = Ca::root("Test Internal Root", Validity::days(30)).unwrap();
        let intermediate = root
            .intermediate("Test Internal Intermediate", Validity::days(30), &[])
            .unwrap();
        let public_ca = Ca::root("Test Public CA", Validity::days(30)).unwrap();
        let mut request = LeafRequest::server("localhost", 30);
        request.names.push("127.0.0.1".into());
        let public = public_ca.issue(&request).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("ca.pem"), &root.cert_pem());
        write(&dir.path().join("public/fullchain.pem"), &public.cert_pem);
        write(&dir.path().join("public/privkey.pem"), &public.key_pem);
        Self {
            root,
            intermediate,
            public_ca,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A good leaf for `names`, chain = leaf + intermediate.
    pub fn leaf(&self, names: &[&str]) -> ServerCert {
        self.leaf_valid(names, Validity::days(30))
    }

    pub fn leaf_valid(&self, names: &[&str], validity: Validity) -> ServerCert {
        let request = LeafRequest {
            names: names.iter().map(|n| n.to_string()).collect(),
            validity,
            usage: Usage::Server,
        };
        ServerCert::from_issued(
            self.intermediate.issue(&request).unwrap(),
            &[&self.intermediate],
        )
    }

    pub fn expired(&self, name: &str) -> ServerCert {
        self.leaf_valid(
            &[name],
            Validity::relative(time::Duration::days(-30), time::Duration::days(-2)),
        )
    }

    pub fn not_yet_valid(&self, name: &str) -> ServerCert {
        self.leaf_valid(
            &[name],
            Validity::relative(time::Duration::days(3), time::Duration::days(30)),
        )
    }

    /// A client certificate for `name` from `ca`, chain = leaf + `ca` (unless `ca` is the root).
    pub fn client_cert_from(&self, ca: &Ca, name: &str) -> ServerCert {
        let mut request = LeafRequest::server(name, 30);
        request.usage = Usage::Client;
        let issued = ca.issue(&request).unwrap();
        if ca.cert() == self.root.cert() {
            ServerCert::from_issued(issued, &[])
        } else {
            ServerCert::from_issued(issued, &[ca])
        }
    }

    /// Client TLS config trusting the public CA and presenting `cert`, offering `alpn`.
    pub fn client_tls_with_cert(&self, alpn: &[&[u8]], cert: &ServerCert) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.public_ca.cert().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(trustgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(cert.chain.clone(), cert.key())
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A leaf whose key usage is client authentication only.
    pub fn client_only(&self, name: &str) -> ServerCert {
        let mut request = LeafRequest::server(name, 30);
        request.usage = Usage::Client;
        ServerCert::from_issued(
            self.intermediate.issue(&request).unwrap(),
            &[&self.intermediate],
        )
    }

    /// A leaf from the internal intermediate, served without the intermediate.
    pub fn leaf_without_intermediate(&self, name: &str) -> ServerCert {
        ServerCert::from_issued(
            self.intermediate
                .issue(&LeafRequest::server(name, 30))
                .unwrap(),
            &[],
        )
    }

    /// A perfectly good chain from another CA.
    pub fn foreign(&self, name: &str) -> ServerCert {
        let root = Ca::root("Foreign Root", Validity::days(30)).unwrap();
        let inter = root
            .intermediate("Foreign Intermediate", Validity::days(30), &[])
            .unwrap();
        ServerCert::from_issued(
            inter.issue(&LeafRequest::server(name, 30)).unwrap(),
            &[&inter],
        )
    }

    /// A chain from the public CA the clients trust: still not trusted for upstreams.
    pub fn issued_by_public_ca(&self, name: &str) -> ServerCert {
        ServerCert::from_issued(
            self.public_ca
                .issue(&LeafRequest::server(name, 30))
                .unwrap(),
            &[],
        )
    }

    /// A self-signed certificate for `name` (a CA of itself, as `openssl req -x509` makes).
    pub fn self_signed(&self, name: &str) -> ServerCert {
        let own = Ca::root(name, Validity::days(30)).unwrap();
        ServerCert::from_issued(own.issue(&LeafRequest::server(name, 30)).unwrap(), &[])
            .with_chain_of(&own)
    }

    /// A leaf from the internal intermediate with no extendedKeyUsage extension at all (what
    /// `openssl x509 -req` makes without an extensions file): webpki takes it for any purpose.
    pub fn leaf_without_eku(&self, name: &str) -> ServerCert {
        let mut params = rcgen_params(name, false);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let mut signed = rcgen_sign(params, &rcgen_issuer(&self.intermediate));
        signed.chain.push(self.intermediate.cert().clone());
        signed.chain_pem.push_str(&self.intermediate.cert_pem());
        signed
    }

    /// A leaf for `name` issued by an intermediate (under the internal root) whose keyUsage has
    /// no keyCertSign; the chain is leaf + that intermediate.
    pub fn leaf_via_intermediate_without_key_cert_sign(&self, name: &str) -> ServerCert {
        let mut params = rcgen_params("Test Non-Signing Intermediate", true);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &rcgen_issuer(&self.root)).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        let mut leaf = rcgen_params(name, false);
        leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let mut signed = rcgen_sign(leaf, &issuer);
        signed.chain.push(cert.der().clone());
        signed.chain_pem.push_str(&cert.pem());
        signed
    }

    /// Client TLS config trusting the public CA, offering `alpn`.
    pub fn client_tls(&self, alpn: &[&[u8]]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.public_ca.cert().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(trustgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl ServerCert {
    /// Replaces the chain with the CA's own certificate: a lone self-signed cert.
    fn with_chain_of(mut self, ca: &Ca) -> Self {
        self.chain = vec![ca.cert().clone()];
        self.chain_pem = ca.cert_pem();
        self.key_pem = ca.key_pem();
        self
    }
}

/// A PEM CRL signed by `ca` revoking `revoked` (keyCompromise, an hour ago), current from a
/// minute ago until `next_update` from now (negative: already expired).
pub fn crl(ca: &Ca, revoked: &[&CertificateDer<'_>], next_update: time::Duration) -> String {
    crl_signed_by(&rcgen_issuer(ca), revoked, next_update)
}

/// As [`crl`], signed by any issuer (a foreign key under a borrowed name, say).
pub fn crl_signed_by(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    revoked: &[&CertificateDer<'_>],
    next_update: time::Duration,
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|der| rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial_of(der)),
            revocation_time: now - time::Duration::hours(1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let this_update =
        (now + next_update - time::Duration::days(1)).min(now - time::Duration::minutes(1));
    let params = rcgen::CertificateRevocationListParams {
        this_update,
        next_update: now + next_update,
        crl_number: rcgen::SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).unwrap().pem().unwrap()
}

/// A certificate's serial, as its DER integer bytes.
pub fn serial_of(der: &CertificateDer<'_>) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

/// An issuer with `ca`'s name but a key of its own: what signs a forged CRL.
pub fn impostor_of(ca: &Ca) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem(), key).unwrap()
}

/// A self-signed CA certificate (PEM) whose keyUsage has no keyCertSign: RFC 5280 forbids it to
/// sign certificates, though webpki would take it as an anchor.
pub fn root_without_key_cert_sign(common_name: &str) -> String {
    let mut params = rcgen_params(common_name, true);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// rcgen parameters for certificates `trustgate::pki` never makes: a CA (path length 0)
/// or a leaf named `name`, valid 30 days, with no key usages yet.
fn rcgen_params(name: &str, ca: bool) -> rcgen::CertificateParams {
    let sans = if ca {
        Vec::new()
    } else {
        vec![name.to_owned()]
    };
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = if ca {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0))
    } else {
        rcgen::IsCa::ExplicitNoCa
    };
    let validity = Validity::days(30);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.use_authority_key_identifier_extension = true;
    params
}

/// `ca` as an rcgen issuer, to sign what `trustgate::pki` would not.
fn rcgen_issuer(ca: &Ca) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
    rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem(), key).unwrap()
}

/// Signs `params` with a fresh key; the chain holds the new certificate alone.
fn rcgen_sign(
    params: rcgen::CertificateParams,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> ServerCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    ServerCert {
        chain: vec![cert.der().clone()],
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Client certificates

/// A client PKI of its own (root -> intermediate), never the upstream CA: its root at
/// `clients/ca.pem`, both CRLs at `clients/crl.pem`.
pub struct ClientPki {
    pub root: Ca,
    pub intermediate: Ca,
}

impl ClientPki {
    pub fn new(pki: &TestPki) -> Self {
        let root = Ca::root("Test Client Root", Validity::days(30)).unwrap();
        let intermediate = root
            .intermediate("Test Client Intermediate", Validity::days(30), &[])
            .unwrap();
        write(&pki.path("clients/ca.pem"), &root.cert_pem());
        let clients = Self { root, intermediate };
        clients.publish(pki, &[]);
        clients
    }

    /// A client certificate from the client intermediate, presented with it.
    pub fn issue(&self, pki: &TestPki, name: &str) -> ServerCert {
        pki.client_cert_from(&self.intermediate, name)
    }

    /// Publishes both client CRLs; the intermediate's revokes `revoked`.
    pub fn publish(&self, pki: &TestPki, revoked: &[&ServerCert]) {
        let serials: Vec<_> = revoked.iter().map(|c| &c.chain[0]).collect();
        let both = crl(&self.intermediate, &serials, time::Duration::days(7))
            + &crl(&self.root, &[], time::Duration::days(7));
        write(&pki.path("clients/crl.pem"), &both);
    }
}

/// A `[server.client_auth]` table for [`ClientPki`]'s files, for `config_text`'s `server_extra`.
pub fn client_auth(mode: &str, extra: &str) -> String {
    format!(
        "\n[server.client_auth]\nca = \"clients/ca.pem\"\ncrl = \"clients/crl.pem\"\nmode = \"{mode}\"\n{extra}"
    )
}

// ---------------------------------------------------------------------------------------------
// Backends

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub sni: Option<String>,
    pub peer: SocketAddr,
    /// The subject of the client certificate the backend verified, if any.
    pub client_cert: Option<String>,
}

type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            Arc<ConnectionInfo>,
        ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// An HTTPS test backend on `127.0.0.1:0`.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Records every request and answers 200 with `backend:<name>` (and the request body).
    pub async fn recording(cert: &ServerCert, alpn: &[&[u8]], name: &str) -> Self {
        Self::recording_with(cert.server_config(alpn), name).await
    }

    /// As [`Backend::recording`], listening on `addr` (a port another backend used, or another
    /// loopback address).
    pub async fn recording_at(
        cert: &ServerCert,
        alpn: &[&[u8]],
        name: &str,
        addr: SocketAddr,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::recording_on(cert.server_config(alpn), name, listener).await
    }

    /// As [`Backend::recording`], serving with `tls` (mutual TLS, say).
    pub async fn recording_with(tls: Arc<ServerConfig>, name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::recording_on(tls, name, listener).await
    }

    async fn recording_on(tls: Arc<ServerConfig>, name: &str, listener: TcpListener) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let name = name.to_owned();
        let handler: Handler = Arc::new(move |req, info| {
            let log = log.clone();
            let name = name.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                log.lock().unwrap().push(Seen {
                    method: parts.method,
                    uri: parts.uri,
                    version: parts.version,
                    headers: parts.headers,
                    body: body.clone(),
                    sni: info.sni.clone(),
                    peer: info.peer,
                    client_cert: info.client_cert.as_ref().map(|c| c.subject.clone()),
                });
                let mut text = format!("backend:{name}\n").into_bytes();
                text.extend_from_slice(&body);
                Response::new(full(text))
            })
        });
        Self::serve(tls, handler, seen, listener)
    }

    /// Serves with a custom handler; `seen` stays empty unless the handler fills it.
    pub async fn custom<F, Fut>(cert: &ServerCert, alpn: &[&[u8]], handler: F) -> Self
    where
        F: Fn(Request<Incoming>, Arc<ConnectionInfo>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req, info| Box::pin(handler(req, info)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(cert.server_config(alpn), handler, Arc::default(), listener)
    }

    fn serve(
        tls: Arc<ServerConfig>,
        handler: Handler,
        seen: Arc<Mutex<Vec<Seen>>>,
        listener: TcpListener,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = TlsServer::new(tls, Duration::from_secs(10), Duration::from_secs(1));
        let task = tokio::spawn(async move {
            let handler = move |req, info| handler(req, info);
            server
                .serve(listener, handler, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            seen,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops the backend and re-raises a panic from its task.
    pub async fn join(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

// ---------------------------------------------------------------------------------------------
// Proxy

/// The proxy, served in-process on an ephemeral port.
pub struct Proxy {
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    /// Reloads the config at `config_path`, as SIGHUP does.
    pub reloader: Arc<trustgate::reload::Reloader>,
    /// The admin listener's address, when the config has `[admin]` (bound on an ephemeral port).
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with `[server]`/`[upstream_tls]` from `pki` and `rest` (routes,
    /// timeouts) appended verbatim.
    pub async fn start(pki: &TestPki, rest: &str) -> Self {
        Self::start_with(pki, &config_text("", "", rest)).await
    }

    /// Starts the proxy with the whole config `text` (its `listen` is replaced by an ephemeral
    /// port).
    pub async fn start_with(pki: &TestPki, text: &str) -> Self {
        Self::start_resolving(pki, text, Arc::new(trustgate::balance::SystemResolver)).await
    }

    /// [`Proxy::start_with`], finding DNS-discovered endpoints with `resolver`.
    pub async fn start_resolving(
        pki: &TestPki,
        text: &str,
        resolver: Arc<dyn trustgate::balance::Resolve>,
    ) -> Self {
        logs(); // capture from the first line on
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config_path = pki.path(&format!("trustgate-{n}.toml"));
        write(&config_path, text);
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config:\n{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = trustgate::Gateway::with_resolver(&config, resolver);
        let reloader = gateway.reloader();
        let admin = match config.admin {
            Some(_) => {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                gateway.spawn_admin(listener);
                Some(addr)
            }
            None => None,
        };
        let task = tokio::spawn(gateway.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            config_path,
            reloader,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `https://localhost:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// Reloads as SIGHUP does: off the runtime's threads, while connections go on.
    pub async fn reload(&self) -> trustgate::reload::Outcome {
        let reloader = self.reloader.clone();
        tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .unwrap()
            .expect("reload applies")
    }

    /// Begins shutdown; `task` completes when the drain is over.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A whole config: `[server]` (plus `server_extra`, which may open `[server.client_auth]`),
/// `[upstream_tls]` trusting the test root (plus `upstream_extra`), then `rest` verbatim.
pub fn config_text(server_extra: &str, upstream_extra: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\nkey = \"public/privkey.pem\"\n\
         shutdown_grace = \"5s\"\n{server_extra}\n\n[upstream_tls]\nca = \"ca.pem\"\n{upstream_extra}\n\n{rest}"
    )
}

/// A `[[route]]` from `prefix` to `https://<service>:<backend port>/`, dialling `backend`.
pub fn route_to(prefix: &str, service: &str, backend: &Backend) -> String {
    route(
        prefix,
        &format!("https://{service}:{}/", backend.port()),
        backend,
    )
}

/// An address that refuses connections: bound, never listening. Keep the socket while the
/// address is in use, so no other test can take the port meanwhile.
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A `[[route]]` block with `address` pointing at `backend`.
pub fn route(prefix: &str, upstream: &str, backend: &Backend) -> String {
    route_at(prefix, upstream, backend.addr)
}

/// A `[[route]]` block with `address` pointing at `addr` (a socket that is not a `Backend`).
pub fn route_at(prefix: &str, upstream: &str, addr: SocketAddr) -> String {
    format!("[[route]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\naddress = \"{addr}\"\n\n")
}

/// GETs `path` through `proxy`, asserts a bare 502 and returns the proxy's log line for
/// `upstream`, which holds the reason.
pub async fn bad_gateway(pki: &TestPki, proxy: &Proxy, path: &str, upstream: &str) -> String {
    let got = get(&client(pki, false), &proxy.url(path)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.text(),
        "502 Bad Gateway\n",
        "no internal detail for the client"
    );
    logs()
        .line_with(&[&format!("upstream={upstream}"), "reason="])
        .await
}

// ---------------------------------------------------------------------------------------------
// Clients

pub type TestClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A pooled client trusting the public CA; offers `h2` too when `h2` is set.
pub fn client(pki: &TestPki, h2: bool) -> TestClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_tls(&[]))
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A finished response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &TestClient, req: Request<Body>) -> Got {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("response within 20s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

pub async fn get(client: &TestClient, url: &str) -> Got {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

/// One GET; `Err` unless it answered 200 with a whole body.
pub async fn try_get(client: &TestClient, url: &str) -> Result<Bytes, String> {
    let request = Request::get(url).body(empty()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .map_err(|_| "no response within 20 s".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

/// A raw TLS connection to the proxy (ALPN http/1.1) for hand-written requests.
pub async fn raw_tls(
    pki: &TestPki,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_tls(&[b"http/1.1"])));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Writes `request` on a fresh raw TLS connection and returns everything read until the proxy
/// closes the connection or 5 s pass.
pub async fn raw_exchange(pki: &TestPki, addr: SocketAddr, request: &[u8]) -> String {
    let mut tls = raw_tls(pki, addr).await;
    tls.write_all(request).await.unwrap();
    read_until_close(&mut tls, Duration::from_secs(5)).await
}

pub async fn read_until_close(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Everything the process logged, captured once per test binary.
pub struct Logs(Arc<Mutex<Vec<u8>>>);

pub fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        Logs(buffer)
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The first log line containing every one of `needles`, waiting up to 5 s for it.
    pub async fn line_with(&self, needles: &[&str]) -> String {
        let find = || {
            self.text()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_owned)
        };
        eventually(
            &format!("a log line with {needles:?}"),
            Duration::from_secs(5),
            || find().is_some(),
        )
        .await;
        find().expect("found above")
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// A backend that accepts a WebSocket upgrade and echoes every read with an `echo:` prefix.
pub async fn websocket_backend(pki: &TestPki) -> Backend {
    websocket_backend_with(&pki.leaf(&["backend-ws"])).await
}

/// As [`websocket_backend`], presenting `cert`.
pub async fn websocket_backend_with(cert: &ServerCert) -> Backend {
    Backend::custom(cert, &[b"h2", b"http/1.1"], |mut req, _| async move {
        let wants_ws = req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket");
        if !wants_ws {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(empty())
                .unwrap();
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.expect("upgrade"));
            let mut buf = [0u8; 1024];
            loop {
                let n = match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                if io.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(empty())
            .unwrap()
    })
    .await
}

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a WebSocket through the proxy; returns the socket and the 101 head, lowercased.
pub async fn open_websocket(pki: &TestPki, proxy: &Proxy) -> (Tls, String) {
    upgrade_to_websocket(raw_tls(pki, proxy.addr).await).await
}

/// Asks for a WebSocket at `/ws/chat` on an open TLS connection to the proxy; returns it and the
/// 101 head, lowercased.
pub async fn upgrade_to_websocket(mut tls: Tls) -> (Tls, String) {
    tls.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed before the 101 head ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (tls, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

pub async fn assert_echo(tls: &mut Tls, message: &str) {
    tls.write_all(message.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 5 + message.len()];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&buf), format!("echo:{message}"));
}

// ---------------------------------------------------------------------------------------------
// Hand-written backends

/// An HTTPS backend (HTTP/1.1 by ALPN) that answers each request head it reads with whatever
/// `respond` returns, verbatim: framing no HTTP library would write. Request bodies are not read.
pub struct RawBackend {
    pub addr: SocketAddr,
    /// Every request head read, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start<F>(cert: &ServerCert, respond: F) -> Self
    where
        F: Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config(&[b"http/1.1"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let respond = Arc::new(respond);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, respond) = (acceptor.clone(), seen.clone(), respond.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                            buf.drain(..end + 4);
                            seen.lock().unwrap().push(head.clone());
                            if tls.write_all(&respond(&head)).await.is_err() {
                                return;
                            }
                        }
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self { addr, heads, task }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Admin listener

/// One request with `Connection: close`; the status and the body.
pub async fn call(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{headers}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_close(&mut tcp, Duration::from_secs(25)).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// `/metrics` parsed by a Prometheus text parser.
pub async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = call(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition")
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?}: {} samples",
        matching.len()
    );
    matching.first().map(|s| match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max)
        }
        prometheus_parse::Value::Summary(_) => f64::NAN,
    })
}
