//! The upstream side's TLS: trust only the internal CA.
//!
//! The root store starts empty and holds exactly the certificates of `[upstream_tls].ca`. No
//! system or webpki roots exist in this build (hyper-rustls is compiled without those features),
//! and there is no verifier that skips checks: chain, validity and name are always verified, and
//! [`super::verify`] adds the rules webpki leaves out (serverAuth required, issuers' keyCertSign).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::verify::ServerVerifier;

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

/// Builds the upstream client config from the internal CA's certificates alone.
///
/// ALPN stays empty: hyper-rustls sets it from the HTTP versions it is told to offer.
pub fn config(anchors: &[CertificateDer<'static>]) -> Result<ClientConfig, TrustError> {
    Ok(ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        // `dangerous()` is rustls's only door for a custom verifier; ours delegates every webpki
        // check and only adds refusals.
        .dangerous()
        .with_custom_certificate_verifier(verifier(anchors)?)
        .with_no_client_auth())
}

/// The verifier every upstream connection (and `trustgate audit --probe`) uses: chain to one of
/// `anchors`, valid now, valid for the server name, for serverAuth, issued by intermediates that
/// may sign certificates.
pub fn verifier(anchors: &[CertificateDer<'static>]) -> Result<Arc<ServerVerifier>, TrustError> {
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
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
        .build()
        .map_err(|e| TrustError::Verifier(e.to_string()))?;
    Ok(Arc::new(ServerVerifier::new(webpki, anchors.to_vec())))
}

/// Identifies what upstream connections are verified with: SHA-256 over the anchors, in order.
pub fn trust_id(anchors: &[CertificateDer<'static>]) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for anchor in anchors {
        context.update(&(anchor.len() as u64).to_be_bytes());
        context.update(anchor);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(context.finish().as_ref());
    id
}
