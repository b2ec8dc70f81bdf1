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
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use x509_parser::certificate::X509Certificate;

use super::revocation::{self, CrlSet};

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
    #[error("{} (serial 0x{serial}, revoked {}{})",
        if *leaf { "certificate revoked".to_owned() } else { format!("issuing CA \"{subject}\" revoked") },
        rfc3339(*at),
        reason.map(|code| format!(", reason {}", revocation::reason_name(code))).unwrap_or_default())]
    Revoked {
        /// The end-entity certificate itself, not one of its issuers.
        leaf: bool,
        subject: String,
        serial: String,
        at: i64,
        reason: Option<u8>,
    },
    #[error("revocation status unknown: no CRL from \"{issuer}\"")]
    RevocationUnknown { issuer: String },
    #[error("CRL from \"{issuer}\" expired {} ago", crate::pki::inspect::human_span(*ago))]
    CrlExpired { issuer: String, ago: u64 },
    #[error(
        "the CRL from {issuers} cannot be used ({why}): is it signed by another CA under the same name?"
    )]
    BadCrl { issuers: String, why: String },
}

fn rfc3339(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
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

/// What both verifiers add to webpki's decision: the anchors (to tell them apart in a presented
/// chain), the CRLs (to explain a revocation refusal), and the throttle of the warning that an
/// expired CRL is in use under `crl_expired = "allow"`.
#[derive(Debug)]
struct Rules {
    anchors: Vec<CertificateDer<'static>>,
    crls: CrlSet,
    purpose: Purpose,
    /// When the expired-CRL warning was last logged (seconds since the epoch).
    warned_expired: AtomicI64,
}

impl Rules {
    /// webpki's `verdict` on `end_entity` + `intermediates`, then [`check_chain`]; refusals about
    /// revocation are explained.
    fn judge<T>(
        &self,
        verdict: Result<T, rustls::Error>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<T, rustls::Error> {
        let verified = verdict.map_err(|error| {
            let chain: Vec<&CertificateDer<'_>> =
                std::iter::once(end_entity).chain(intermediates).collect();
            match self.crls.explain(&error, &chain, now) {
                Some(refusal) => refusal.into(),
                None => error,
            }
        })?;
        check_chain(end_entity, intermediates, &self.anchors, self.purpose)?;
        if self.crls.policy.allow_expired {
            self.warn_expired(now.as_secs() as i64);
        }
        Ok(verified)
    }

    /// Under `crl_expired = "allow"`, an expired CRL in use is logged, at most once an hour.
    fn warn_expired(&self, now: i64) {
        let last = self.warned_expired.load(Relaxed);
        if now - last < 3600 || self.crls.expired(now).next().is_none() {
            return;
        }
        if self
            .warned_expired
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
        {
            for crl in self.crls.expired(now) {
                tracing::warn!(
                    crl = %crl.path.display(),
                    issuer = %crl.issuer_name,
                    "CRL past its nextUpdate still in use (crl_expired = \"allow\"); publish a new \
                     one (logged at most hourly)"
                );
            }
        }
    }
}

/// The upstream verifier: webpki's decision (chain to the anchors, signatures, validity, name,
/// revocation), then [`check_chain`] for serverAuth. The proxy's connections, the re-check of
/// live connections after a trust change and `audit --probe` all use it.
#[derive(Debug)]
pub struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    rules: Rules,
}

impl ServerVerifier {
    pub fn new(
        webpki: Arc<WebPkiServerVerifier>,
        anchors: Vec<CertificateDer<'static>>,
        crls: CrlSet,
    ) -> Self {
        Self {
            webpki,
            rules: Rules {
                anchors,
                crls,
                purpose: Purpose::ServerAuth,
                warned_expired: AtomicI64::new(i64::MIN / 2),
            },
        }
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
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        self.rules.judge(verdict, end_entity, intermediates, now)
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

/// The public listener's verifier for client certificates: webpki's decision (chain to
/// `[server.client_auth] ca`, validity, revocation), then [`check_chain`] for clientAuth.
#[derive(Debug)]
pub struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    rules: Rules,
}

impl ClientVerifier {
    pub fn new(
        webpki: Arc<dyn ClientCertVerifier>,
        anchors: Vec<CertificateDer<'static>>,
        crls: CrlSet,
    ) -> Self {
        Self {
            webpki,
            rules: Rules {
                anchors,
                crls,
                purpose: Purpose::ClientAuth,
                warned_expired: AtomicI64::new(i64::MIN / 2),
            },
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now);
        self.rules.judge(verdict, end_entity, intermediates, now)
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
