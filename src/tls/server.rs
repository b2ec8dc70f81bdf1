//! The public listener's TLS: TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, and optionally
//! client certificates verified against `[server.client_auth]`'s own anchors and CRLs.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::client::{TrustError, roots};
use super::revocation::{CrlSet, Depth};
use super::verify::ClientVerifier;

/// Builds the listener's config. Fails when the key does not match the chain's first certificate.
///
/// Every call starts with empty session storage: a reload never resumes a session verified under
/// the previous client trust.
pub fn config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: Option<Arc<ClientVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client-certificate verifier of the public listener: chain to `anchors`, clientAuth, not
/// revoked by `crls`. `mandatory`: a client without a valid certificate gets no TLS session;
/// otherwise the handshake succeeds without one and routes decide.
pub fn client_verifier(
    anchors: &[CertificateDer<'static>],
    crls: &CrlSet,
    mandatory: bool,
) -> Result<Arc<ClientVerifier>, TrustError> {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots(anchors)?, super::provider())
            .with_crls(crls.ders());
    if !mandatory {
        builder = builder.allow_unauthenticated();
    }
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
    Ok(Arc::new(ClientVerifier::new(
        webpki,
        anchors.to_vec(),
        crls.clone(),
    )))
}
