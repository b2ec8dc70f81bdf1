//! The upstream side's TLS: trust only the internal CA, check revocation against its CRLs, and
//! present the proxy's client certificate when one is configured.
//!
//! The root store starts empty and holds exactly the certificates of `[upstream_tls].ca`. No
//! system or webpki roots exist in this build (hyper-rustls is compiled without those features),
//! and there is no verifier that skips checks: chain, validity, name and (with CRLs) revocation
//! are always verified, and [`super::verify`] adds the rules webpki leaves out (serverAuth
//! required, issuers' keyCertSign).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::{ClientConfig, RootCertStore};

use super::revocation::{CrlSet, Depth};
use super::verify::{self, Purpose, ServerVerifier};

/// Why the trust anchors could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("certificate #{index} is not a usable trust anchor: {source}")]
    BadAnchor { index: usize, source: rustls::Error },
    #[error("no trust anchors: the internal CA certificate is required")]
    Empty,
    #[error(transparent)]
    Config(#[from] rustls::Error),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
}

/// The roots of a verifier: exactly `anchors`.
pub(super) fn roots(anchors: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TrustError> {
    let mut roots = RootCertStore::empty();
    for (index, anchor) in anchors.iter().enumerate() {
        roots
            .add(anchor.clone())
            .map_err(|source| TrustError::BadAnchor {
                index: index + 1,
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TrustError::Empty);
    }
    Ok(Arc::new(roots))
}

/// The verifier every upstream connection (and `trustgate audit --probe`) uses: chain to one of
/// `anchors`, valid now, valid for the server name, for serverAuth, issued by intermediates that
/// may sign certificates, and not revoked by `crls` (none: no revocation checking).
pub fn verifier(
    anchors: &[CertificateDer<'static>],
    crls: &CrlSet,
) -> Result<Arc<ServerVerifier>, TrustError> {
    let mut builder =
        WebPkiServerVerifier::builder_with_provider(roots(anchors)?, super::provider())
            .with_crls(crls.ders());
    if crls.policy.depth == Depth::Leaf {
        builder = builder.only_check_end_entity_revocation();
    }
    if crls.policy.allow_unknown {
        builder = builder.allow_unknown_revocation_status();
    }
    if !crls.policy.allow_expired {
        builder = builder.enforce_revocation_expiration();
    }
    let webpki = builder
        .build()
        .map_err(|e| TrustError::Verifier(e.to_string()))?;
    Ok(Arc::new(ServerVerifier::new(
        webpki,
        anchors.to_vec(),
        crls.clone(),
    )))
}

/// Builds an upstream client config around `verifier`, presenting `identity` when a backend asks
/// for a client certificate. Each call starts empty session storage, so a session resumed under
/// one trust is never resumed under another.
///
/// ALPN stays empty: hyper-rustls sets it from the HTTP versions it is told to offer.
pub fn config(
    verifier: Arc<ServerVerifier>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, TrustError> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        // `dangerous()` is rustls's only door for a custom verifier; ours delegates every webpki
        // check and only adds refusals.
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match identity {
        Some(identity) => {
            builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?
        }
        None => builder.with_no_client_auth(),
    })
}

/// Identifies what connections are verified with: SHA-256 over the anchors, the CRLs, the
/// revocation policy and `rules` (anything else the verifier decides by, such as a client-auth
/// mode).
pub fn trust_id(anchors: &[CertificateDer<'static>], crls: &CrlSet, rules: &str) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(rules.as_bytes());
    for anchor in anchors {
        context.update(&(anchor.len() as u64).to_be_bytes());
        context.update(anchor);
    }
    for crl in &crls.crls {
        context.update(&(crl.der.len() as u64).to_be_bytes());
        context.update(&crl.der);
    }
    context.update(crls.policy.to_string().as_bytes());
    let mut id = [0u8; 32];
    id.copy_from_slice(context.finish().as_ref());
    id
}

/// A client certificate the proxy presents to backends that ask for one (mutual TLS upstream).
#[derive(Debug)]
pub struct Identity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 over chain and key: routes presenting the same identity share pools.
    pub id: [u8; 32],
}

/// Why a client certificate cannot be the proxy's identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {reason}", cert.display())]
    Unusable { cert: PathBuf, reason: String },
}

impl Identity {
    /// Checks what a backend would otherwise refuse in the handshake: the key matches, and the
    /// leaf is an end-entity certificate for clientAuth, valid `now`.
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        now: UnixTime,
    ) -> Result<Self, IdentityError> {
        let unusable = |reason: String| IdentityError::Unusable {
            cert: cert_file.clone(),
            reason,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| unusable("holds no certificate".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| unusable(format!("the first certificate cannot be parsed: {e}")))?;
        if parsed.is_ca() {
            return Err(unusable(
                "the first certificate is a CA certificate; the proxy's identity must be a client \
                 certificate (trustgate pki issue --client NAME)"
                    .into(),
            ));
        }
        verify::check_purpose(&parsed, Purpose::ClientAuth).map_err(|e| unusable(e.to_string()))?;
        let validity = parsed.validity();
        let now = now.as_secs() as i64;
        if validity.not_after.timestamp() < now {
            return Err(unusable(format!(
                "the certificate expired on {}",
                validity.not_after
            )));
        }
        if validity.not_before.timestamp() > now {
            return Err(unusable(format!(
                "the certificate is not valid before {}",
                validity.not_before
            )));
        }
        let certified = rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            key.clone_key(),
            &super::provider(),
        );
        match certified {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(IdentityError::KeyMismatch {
                    cert: cert_file,
                    key: key_file,
                });
            }
            Err(e) => {
                return Err(unusable(format!(
                    "cannot be used with {}: {e}",
                    key_file.display()
                )));
            }
        }
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for cert in &chain {
            context.update(&(cert.len() as u64).to_be_bytes());
            context.update(cert);
        }
        context.update(key.secret_der());
        let mut id = [0u8; 32];
        id.copy_from_slice(context.finish().as_ref());
        Ok(Self {
            cert_file,
            key_file,
            chain,
            key,
            id,
        })
    }
}
