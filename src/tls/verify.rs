//! Certificate rules trustgate enforces on top of rustls-webpki's path validation.
//!
//! webpki checks the chain, the signatures, validity and the name, but it accepts a leaf that has
//! no extendedKeyUsage extension at all, and it never reads an issuer's keyUsage. An internal PKI
//! that issues every certificate for one purpose can demand both, so [`ServerVerifier`] runs
//! webpki first and then refuses:
//! - an end-entity certificate without the extendedKeyUsage extension, or without the purpose it
//!   is presented for ([`Purpose`]; serverAuth for upstreams, clientAuth for client certificates);
//! - a presented intermediate whose keyUsage is missing or lacks keyCertSign (RFC 5280 4.2.1.3).
//!
//! Refusals travel as `CertificateError::Other` carrying a [`Refusal`], so the proxy's 502 log line
//! can say exactly which rule failed.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use x509_parser::certificate::X509Certificate;

/// What an end-entity certificate is presented for: its extendedKeyUsage must name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A service's TLS server certificate (upstreams).
    ServerAuth,
    /// A client certificate for mutual TLS.
    ClientAuth,
}

impl Purpose {
    /// The certificate role an operator knows, for messages.
    fn role(self) -> &'static str {
        match self {
            Self::ServerAuth => "a service certificate",
            Self::ClientAuth => "a client certificate",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ServerAuth => "serverAuth",
            Self::ClientAuth => "clientAuth",
        })
    }
}

/// Why a certificate that passed path validation is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "certificate has no extendedKeyUsage extension: {} must carry {purpose}",
        purpose.role()
    )]
    NoExtendedKeyUsage { purpose: Purpose },
    #[error(
        "certificate's extendedKeyUsage lacks {purpose}: {} must carry it",
        purpose.role()
    )]
    WrongPurpose { purpose: Purpose },
    #[error("intermediate \"{subject}\" may not sign certificates: {why}")]
    IntermediateCannotSign { subject: String, why: CannotSign },
    #[error("certificate #{index} of the chain cannot be parsed: {reason}")]
    Unparseable { index: usize, reason: String },
}

impl From<Refusal> for rustls::Error {
    fn from(refusal: Refusal) -> Self {
        Self::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
    }
}

/// Why a CA certificate may not sign certificates (RFC 5280 4.2.1.3: a CA that signs certificates
/// must carry keyUsage with keyCertSign).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CannotSign {
    #[error("it has no keyUsage extension, so it does not assert keyCertSign")]
    NoKeyUsage,
    #[error("its keyUsage lacks keyCertSign")]
    NoKeyCertSign,
}

/// The keyUsage rule for a certificate that signs others. Presented intermediates must pass it
/// whole; trust anchors ([`super::anchors::check`]) may lack the extension.
pub fn may_sign(cert: &X509Certificate<'_>) -> Result<(), CannotSign> {
    // A duplicated extension (an `Err`) is malformed: treat it as absent, which refuses.
    match cert.key_usage() {
        Ok(Some(usage)) if usage.value.key_cert_sign() => Ok(()),
        Ok(Some(_)) => Err(CannotSign::NoKeyCertSign),
        Ok(None) | Err(_) => Err(CannotSign::NoKeyUsage),
    }
}

/// The extendedKeyUsage rule for an end-entity certificate: the extension must be present and
/// name `purpose` itself (anyExtendedKeyUsage is not enough, as in webpki).
pub fn check_purpose(leaf: &X509Certificate<'_>, purpose: Purpose) -> Result<(), Refusal> {
    let eku = match leaf.extended_key_usage() {
        Ok(Some(eku)) => eku.value,
        Ok(None) | Err(_) => return Err(Refusal::NoExtendedKeyUsage { purpose }),
    };
    let named = match purpose {
        Purpose::ServerAuth => eku.server_auth,
        Purpose::ClientAuth => eku.client_auth,
    };
    if named {
        Ok(())
    } else {
        Err(Refusal::WrongPurpose { purpose })
    }
}

/// Both rules over a presented chain, leaf first. Meant to run after path validation succeeded.
///
/// A presented copy of one of `anchors` (servers often send their root too) is skipped: anchors
/// are judged once, at load, by [`super::anchors::check`].
pub fn check_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    purpose: Purpose,
) -> Result<(), Refusal> {
    check_purpose(&parse(end_entity, 1)?, purpose)?;
    for (i, der) in intermediates.iter().enumerate() {
        if anchors.contains(der) {
            continue;
        }
        let cert = parse(der, i + 2)?;
        may_sign(&cert).map_err(|why| Refusal::IntermediateCannotSign {
            subject: cert.subject().to_string(),
            why,
        })?;
    }
    Ok(())
}

fn parse<'a>(der: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>, Refusal> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| Refusal::Unparseable {
            index,
            reason: e.to_string(),
        })
}

/// The upstream verifier: webpki's decision (chain to the anchors, signatures, validity, name),
/// then [`check_chain`] for serverAuth. The proxy's connections and `audit --probe` both use it.
#[derive(Debug)]
pub struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The anchors `webpki` trusts, to tell them apart in a presented chain.
    anchors: Vec<CertificateDer<'static>>,
}

impl ServerVerifier {
    pub fn new(webpki: Arc<WebPkiServerVerifier>, anchors: Vec<CertificateDer<'static>>) -> Self {
        Self { webpki, anchors }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki first: an untrusted chain is reported as such, and only chains that already
        // validated are parsed again.
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_chain(
            end_entity,
            intermediates,
            &self.anchors,
            Purpose::ServerAuth,
        )?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.webpki.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, LeafRequest, Usage, Validity};

    #[test]
    fn each_purpose_must_be_named_and_issuers_must_sign() {
        let root = Ca::root("Verify Root", Validity::days(1)).unwrap();
        let server = root.issue(&LeafRequest::server("svc", 1)).unwrap();
        let mut request = LeafRequest::server("proxy", 1);
        request.usage = Usage::Client;
        let client = root.issue(&request).unwrap();

        assert_eq!(
            check_chain(&server.cert, &[], &[], Purpose::ServerAuth),
            Ok(())
        );
        assert_eq!(
            check_chain(&client.cert, &[], &[], Purpose::ClientAuth),
            Ok(())
        );
        assert_eq!(
            check_chain(&server.cert, &[], &[], Purpose::ClientAuth),
            Err(Refusal::WrongPurpose {
                purpose: Purpose::ClientAuth
            })
        );
        let ca = root.cert().clone();
        assert_eq!(
            check_chain(&server.cert, &[ca], &[], Purpose::ServerAuth),
            Ok(())
        );
        // A leaf (keyUsage digitalSignature only) presented as an intermediate: refused, unless
        // it is one of the anchors (judged at load).
        let not_a_ca = [client.cert];
        assert_eq!(
            check_chain(&server.cert, &not_a_ca, &[], Purpose::ServerAuth),
            Err(Refusal::IntermediateCannotSign {
                subject: "CN=proxy".into(),
                why: CannotSign::NoKeyCertSign
            })
        );
        assert_eq!(
            check_chain(&server.cert, &not_a_ca, &not_a_ca, Purpose::ServerAuth),
            Ok(())
        );
    }
}
