//! `--probe`: connect to every route's upstream exactly as the proxy would (same address, same
//! SNI, same trust anchors, same verifier) and judge the certificate it presents.
//!
//! The probe records the chain before verification runs, so it can say what a failing upstream
//! presents. It only ever completes handshakes the proxy would complete: the recording verifier
//! delegates every decision to the proxy's own verifier.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::{Finding, Severity, expiry};
use crate::config::Config;
use crate::pki::inspect::CertInfo;
use crate::routing::Route;
use crate::tls::verify::ServerVerifier;
use crate::upstream::describe;

/// What probing one upstream found.
struct Probed {
    /// The chain the upstream presented, leaf first (empty when no handshake got that far).
    chain: Vec<CertInfo>,
    /// `Err(reason)` when the proxy would refuse the upstream or cannot reach it.
    verdict: Result<(), Failure>,
}

enum Failure {
    Unreachable(String),
    Refused(String),
}

/// The chain one upstream presented, leaf first, for the checks that need it after the probe
/// (`crl-missing`: every intermediate in use needs a CRL).
#[derive(Debug, Clone)]
pub struct Presented {
    /// The route probed, as findings name it.
    pub location: String,
    pub chain: Vec<CertInfo>,
}

/// What each upstream presents: refusals, shared identities, expiry, CA or non-serverAuth leaves.
/// Returns every chain presented, refused ones too.
pub async fn check(config: &Config, warn_days: i64, findings: &mut Vec<Finding>) -> Vec<Presented> {
    let mut presented = Vec::new();
    let verifier = config.upstream_tls.verifier.clone();
    // Certificates and keys already seen, to catch one identity shared by several services.
    let mut by_cert: HashMap<String, String> = HashMap::new();
    let mut by_key: HashMap<Vec<u8>, String> = HashMap::new();
    let mut probed_targets = Vec::new();
    for route in config.routes.iter() {
        let host = route.upstream.host().to_owned();
        let target = (host.clone(), route.upstream.port());
        if probed_targets.contains(&target) {
            continue;
        }
        probed_targets.push(target);
        let location = format!("route {} -> {}", route.prefix, route.upstream);
        let probed = probe(route, verifier.clone(), config).await;

        if let Some(leaf) = probed.chain.first() {
            let issuer = probed
                .chain
                .get(1)
                .map_or(leaf.issuer.as_str(), |c| c.subject.as_str());
            findings.push(Finding::new(
                Severity::Info,
                "upstream-chain",
                format!(
                    "{host} presents \"{}\" (SAN {}) issued by \"{issuer}\", {} days left, {} certificate(s) in the chain",
                    leaf.subject,
                    if leaf.sans.is_empty() { "none".to_owned() } else { leaf.sans.join(", ") },
                    leaf.days_left(),
                    probed.chain.len()
                ),
                location.clone(),
                "",
            ));
            if leaf.is_ca {
                findings.push(Finding::new(
                    Severity::High,
                    "upstream-cert-is-ca",
                    format!("{host} presents a CA certificate as its own identity"),
                    location.clone(),
                    format!(
                        "issue {host} its own leaf: trustgate pki issue --ca CADIR --name {host}"
                    ),
                ));
            } else if leaf.server_auth != Some(true) {
                let what = match leaf.server_auth {
                    None => "has no extended key usage extension, so no serverAuth",
                    Some(_) => "lacks the serverAuth extended key usage",
                };
                findings.push(Finding::new(
                    Severity::High,
                    "upstream-no-server-auth",
                    format!("{host}'s certificate {what}"),
                    location.clone(),
                    format!(
                        "issue a server certificate: trustgate pki issue --ca CADIR --name {host}"
                    ),
                ));
            }
            findings.extend(expiry(
                leaf,
                &format!("{host}'s certificate"),
                &location,
                warn_days,
            ));
            if let Some(other) = by_cert.get(&leaf.sha256).filter(|other| **other != host) {
                findings.push(shared(&host, other, "the same certificate", &location));
            } else if let Some(other) = by_key.get(&leaf.spki).filter(|other| **other != host) {
                findings.push(shared(&host, other, "the same public key", &location));
            }
            by_cert
                .entry(leaf.sha256.clone())
                .or_insert_with(|| host.clone());
            by_key
                .entry(leaf.spki.clone())
                .or_insert_with(|| host.clone());
        }
        if !probed.chain.is_empty() {
            presented.push(Presented {
                location: location.clone(),
                chain: probed.chain,
            });
        }
        match probed.verdict {
            Ok(()) => {}
            Err(Failure::Refused(reason)) => findings.push(Finding::new(
                Severity::High,
                "upstream-refused",
                format!("the proxy refuses {host}: {reason}"),
                location,
                format!(
                    "serve a certificate from the internal CA with SAN {host}: trustgate pki issue \
                     --ca CADIR --name {host}"
                ),
            )),
            Err(Failure::Unreachable(reason)) => findings.push(Finding::new(
                Severity::Medium,
                "upstream-unreachable",
                format!("cannot probe {host}: {reason}"),
                location,
                "run the audit where the upstreams are reachable (inside the proxy's network)",
            )),
        }
    }
    presented
}

fn shared(host: &str, other: &str, what: &str, location: &str) -> Finding {
    Finding::new(
        Severity::High,
        "shared-identity",
        format!("{host} and {other} present {what}: one leak compromises all"),
        location,
        "give every service its own key and certificate (trustgate pki issue --name SERVICE)",
    )
}

async fn probe(route: &Route, verifier: Arc<ServerVerifier>, config: &Config) -> Probed {
    let recorder = Arc::new(Recorder {
        inner: verifier,
        chain: Mutex::default(),
    });
    let tls = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|builder| {
            let builder = builder
                .dangerous()
                .with_custom_certificate_verifier(recorder.clone());
            // The identity the proxy presents, so a backend that demands one answers the probe.
            match &route.client_identity {
                Some(identity) => {
                    builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                }
                None => Ok(builder.with_no_client_auth()),
            }
        });
    let tls = match tls {
        Ok(tls) => tls,
        Err(e) => {
            return Probed {
                chain: Vec::new(),
                verdict: Err(Failure::Unreachable(e.to_string())),
            };
        }
    };
    let host = route.upstream.host().to_owned();
    let port = route.upstream.port();
    let timeout = config.timeouts.connect;
    // The first listed endpoint, or whichever address DNS gives first.
    let address = route
        .balancing
        .discovery
        .addresses()
        .and_then(|a| a.first().copied());
    let handshake = async {
        let tcp = match address {
            Some(address) => TcpStream::connect(address).await,
            None => TcpStream::connect((host.as_str(), port)).await,
        }
        .map_err(|e| {
            Failure::Unreachable(format!(
                "cannot connect to {}: {e}",
                target(&host, port, address)
            ))
        })?;
        let name = ServerName::try_from(host.clone()).map_err(|e| {
            Failure::Unreachable(format!("{host:?} is not a valid server name: {e}"))
        })?;
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map(drop)
            .map_err(|e| Failure::Refused(describe(&e)))
    };
    let verdict = match tokio::time::timeout(timeout, handshake).await {
        Ok(verdict) => verdict,
        Err(_) => Err(Failure::Unreachable(format!(
            "no TLS handshake within {}",
            humantime::format_duration(timeout)
        ))),
    };
    let chain = recorder
        .chain
        .lock()
        .map(|chain| {
            chain
                .iter()
                .filter_map(|der| CertInfo::parse(der).ok())
                .collect()
        })
        .unwrap_or_default();
    Probed { chain, verdict }
}

fn target(host: &str, port: u16, address: Option<SocketAddr>) -> String {
    match address {
        Some(address) => format!("{host}:{port} at {address}"),
        None => format!("{host}:{port}"),
    }
}

/// Records the presented chain, then lets the proxy's verifier decide.
#[derive(Debug)]
struct Recorder {
    inner: Arc<ServerVerifier>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
