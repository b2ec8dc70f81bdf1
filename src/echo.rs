//! A small HTTPS echo backend for the demo, the Docker example and the end-to-end tests: it
//! answers every request with what it received, including the SNI the client sent, the serial
//! of the certificate it serves and the host it runs on, so one can see what the proxy forwarded,
//! which certificate the backend presents and, with several replicas, which one answered.
//!
//! Served from files ([`serve_files`]), it reloads its certificate and key on SIGHUP and when
//! their folders change (the way `trustgate pki renew` replaces them), with no restart: new
//! connections get the new pair, open ones keep theirs. A pair that does not load or does not
//! match keeps the old one serving and logs why.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::connection::ConnectionInfo;
use crate::pki::inspect::CertInfo;
use crate::reload::{self, Triggers};
use crate::server::TlsServer;
use crate::tls;
use crate::tls::revocation::CrlSet;
use crate::tls::verify::ClientVerifier;
use crate::watch::FolderWatch;

/// Request bodies larger than this get 413: the echo keeps the body in memory to send it back.
pub const MAX_BODY: usize = 1 << 20;

/// The client certificates an echo demands (`--client-ca`): mutual TLS, required.
pub type ClientAuth = Option<Arc<ClientVerifier>>;

/// A verifier that requires a client certificate issued under the CAs in `ca` (no CRLs).
pub fn client_auth(ca: &Path) -> anyhow::Result<Arc<ClientVerifier>> {
    let anchors = tls::load_ca_certs(ca)?;
    tls::server::client_verifier(&anchors, &CrlSet::default(), true)
        .with_context(|| format!("cannot use {} as the client CA", ca.display()))
}

/// What the echo presents: its TLS config, and its certificate's serial for the answers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tls: Arc<ServerConfig>,
    /// Lowercase hex, as `trustgate pki list` and `inspect` print it.
    pub serial: String,
}

impl Identity {
    /// Fails when the key does not match the chain's first certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_auth: ClientAuth,
    ) -> anyhow::Result<Self> {
        let serial = CertInfo::parse(chain.first().ok_or_else(|| anyhow!("no certificate"))?)
            .map_err(|e| anyhow!(e))?
            .serial;
        Ok(Self {
            tls: tls::server::config(chain, key, client_auth)?,
            serial,
        })
    }

    /// Reads the pair; errors name the files and the reason.
    pub fn load(cert: &Path, key: &Path, client_auth: ClientAuth) -> anyhow::Result<Self> {
        Self::new(tls::load_certs(cert)?, tls::load_key(key)?, client_auth)
            .with_context(|| format!("cannot use {} with {}", cert.display(), key.display()))
    }
}

/// Serves the echo on `listener` with a fixed identity until `shutdown` completes.
pub async fn serve(listener: TcpListener, identity: Identity, shutdown: impl Future<Output = ()>) {
    serve_current(
        listener,
        Arc::new(ArcSwap::from_pointee(identity)),
        shutdown,
    )
    .await;
}

/// Serves the echo with the pair in `cert` and `key` until `shutdown` completes, reloading it on
/// SIGHUP and on changes in their folders. Fails only when the first pair does not load.
pub async fn serve_files(
    listener: TcpListener,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let client_auth = client_ca.as_deref().map(client_auth).transpose()?;
    let identity = Identity::load(&cert, &key, client_auth.clone())?;
    info!(serial = %identity.serial, "echo certificate loaded");
    let current = Arc::new(ArcSwap::from_pointee(identity));
    let (triggers, mut batches) = Triggers::new();
    let watch = {
        let triggers = triggers.clone();
        FolderWatch::new(&[cert.clone(), key.clone()], move || triggers.trigger())
            .map_err(
                |e| warn!(error = %e, "cannot watch the certificate's folders; reload with SIGHUP"),
            )
            .ok()
    };
    reload::spawn_sighup(triggers);
    let swapped = current.clone();
    let reloads = tokio::spawn(async move {
        let _watch = watch;
        while batches.next().await {
            let (cert, key, auth) = (cert.clone(), key.clone(), client_auth.clone());
            match tokio::task::spawn_blocking(move || Identity::load(&cert, &key, auth)).await {
                // The same pair again (a chown, a touch): nothing to do.
                Ok(Ok(new)) if new.serial == swapped.load().serial => {}
                Ok(Ok(new)) => {
                    info!(serial = %new.serial, "echo certificate reloaded");
                    swapped.store(Arc::new(new));
                }
                Ok(Err(e)) => error!(
                    error = format!("{e:#}"),
                    "echo certificate not reloaded; the previous one keeps serving"
                ),
                Err(e) => error!(error = %e, "the reload task failed"),
            }
        }
    });
    serve_current(listener, current, shutdown).await;
    reloads.abort();
    Ok(())
}

/// The name the answers give for this echo: `HOSTNAME` (Docker sets it to the container's
/// hostname, the short container id unless `hostname:` says otherwise), else `/etc/hostname`,
/// else `unknown`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn serve_current(
    listener: TcpListener,
    current: Arc<ArcSwap<Identity>>,
    shutdown: impl Future<Output = ()>,
) {
    // Read once: the answers name the host that served them.
    let host: Arc<str> = host_name().into();
    let tls = current.clone();
    TlsServer::with_tls(
        Arc::new(move || tls.load().tls.clone()),
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .serve(
        listener,
        move |req, info| respond(req, info, current.load().serial.clone(), host.clone()),
        shutdown,
    )
    .await;
}

/// `serial` is the certificate the echo serves now, to new connections; `host` names the echo.
async fn respond(
    req: Request<Incoming>,
    info: Arc<ConnectionInfo>,
    serial: String,
    host: Arc<str>,
) -> Response<Full<Bytes>> {
    let mut text = format!(
        "trustgate echo backend\ntls sni: {}\ntls certificate serial: {serial}\ntls client certificate: {}\npeer: {}\necho host: {host}\n\n{} {} {:?}\n",
        info.sni.as_deref().unwrap_or("(none)"),
        info.client_cert
            .as_ref()
            .map_or("(none)", |c| c.subject.as_str()),
        info.peer,
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version()
    );
    for (name, value) in req.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push('\n');
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            // Too large is the client's to fix; any other error is a body that did not arrive.
            let (status, text) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large for the echo\n",
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "the request body did not arrive whole\n",
                )
            };
            let mut response = Response::new(Full::from(text));
            *response.status_mut() = status;
            return response;
        }
    };
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&body);
    let mut response = Response::new(Full::from(bytes));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
