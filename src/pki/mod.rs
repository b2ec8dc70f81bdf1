//! The internal PKI: an offline root, an intermediate that signs one leaf per service, and the
//! leaves themselves (SAN = the Docker service name), generated with rcgen.
//!
//! The demo and the test suite build their certificates through this module too, so the code that
//! operators use to run their CA is the code the tests exercise.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("a certificate needs at least one name")]
    NoName,
    #[error("no secure random bytes for a serial number")]
    Random,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hosts) to `days` from now.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// Valid from `start` to `end`, both relative to now (negative is in the past).
    pub fn relative(start: Duration, end: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now + start,
            not_after: now + end,
        }
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A service's TLS server identity (EKU serverAuth).
    Server,
    /// A client identity for mutual TLS (EKU clientAuth).
    Client,
}

/// A leaf to issue. The first name is also the subject's common name.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// DNS names or IP addresses, all placed in the SAN.
    pub names: Vec<String>,
    pub validity: Validity,
    pub usage: Usage,
}

impl LeafRequest {
    /// A server certificate for `name`, valid for `days`.
    pub fn server(name: &str, days: i64) -> Self {
        Self {
            names: vec![name.to_owned()],
            validity: Validity::days(days),
            usage: Usage::Server,
        }
    }
}

/// An issued certificate with its fresh private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    /// PKCS#8 PEM. Belongs only on the host that serves the certificate.
    pub key_pem: String,
}

/// A certificate authority: its certificate and signing key.
#[derive(Debug)]
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root CA. Its key belongs in offline storage.
    pub fn root(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        let params = ca_params(common_name, validity, BasicConstraints::Unconstrained)?;
        let key = KeyPair::generate()?;
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, key)?,
        })
    }

    /// An intermediate CA signed by this one, allowed to sign leaves only (path length 0).
    ///
    /// With `permitted_dns`, X.509 name constraints limit it to those DNS suffixes, so it can
    /// never vouch for a public name.
    pub fn intermediate(
        &self,
        common_name: &str,
        validity: Validity,
        permitted_dns: &[String],
    ) -> Result<Self, PkiError> {
        let mut params = ca_params(common_name, validity, BasicConstraints::Constrained(0))?;
        if !permitted_dns.is_empty() {
            params.name_constraints = Some(NameConstraints {
                permitted_subtrees: permitted_dns
                    .iter()
                    .map(|dns| GeneralSubtree::DnsName(dns.clone()))
                    .collect(),
                excluded_subtrees: Vec::new(),
            });
        }
        let key = KeyPair::generate()?;
        Ok(Self {
            issuer: CertifiedIssuer::signed_by(params, key, &self.issuer)?,
        })
    }

    /// Issues a leaf with a fresh key pair.
    pub fn issue(&self, request: &LeafRequest) -> Result<Issued, PkiError> {
        let first = request.names.first().ok_or(PkiError::NoName)?;
        let mut params = CertificateParams::new(request.names.clone())?;
        params.distinguished_name = name(first);
        params.serial_number = Some(serial()?);
        params.not_before = request.validity.not_before;
        params.not_after = request.validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match request.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PKCS#8 PEM: for offline storage only, never for the proxy.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }
}

fn ca_params(
    common_name: &str,
    validity: Validity,
    constraints: BasicConstraints,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.serial_number = Some(serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.is_ca = IsCa::Ca(constraints);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random positive 128-bit serial, as RFC 5280 asks for unpredictable serials.
fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and exactly 16 bytes long
    Ok(SerialNumber::from_slice(&bytes))
}

/// True when `name` is an IP address rather than a DNS name.
pub fn is_ip(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_parses_with_expected_shape() {
        let root = Ca::root("Test Root", Validity::days(30)).unwrap();
        let inter = root
            .intermediate(
                "Test Intermediate",
                Validity::days(10),
                &["internal".into()],
            )
            .unwrap();
        let leaf = inter.issue(&LeafRequest::server("backend-api", 1)).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.cert).unwrap();
        assert_eq!(parsed.issuer().to_string(), "CN=Test Intermediate");
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"backend-api\")]"
        );
        assert!(!parsed.is_ca());
        let (_, inter_parsed) = x509_parser::parse_x509_certificate(inter.cert()).unwrap();
        let bc = inter_parsed.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn every_leaf_gets_its_own_key_and_serial() {
        let root = Ca::root("Test Root", Validity::days(30)).unwrap();
        let a = root.issue(&LeafRequest::server("a", 1)).unwrap();
        let b = root.issue(&LeafRequest::server("a", 1)).unwrap();
        assert_ne!(a.key_pem, b.key_pem);
        let serial = |der: &CertificateDer<'_>| {
            x509_parser::parse_x509_certificate(der)
                .unwrap()
                .1
                .raw_serial()
                .to_vec()
        };
        assert_ne!(serial(&a.cert), serial(&b.cert));
        assert!(is_ip("127.0.0.1") && !is_ip("backend-api"));
    }
}
