//! The internal PKI: an offline root, an intermediate that signs one leaf per service, and the
//! leaves themselves (SAN = the Docker service name), generated with rcgen.
//!
//! The demo and the test suite build their certificates through this module too, so the code that
//! operators use to run their CA is the code the tests exercise.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

pub mod commands;
pub mod constraints;
pub mod inspect;
pub mod store;

use std::path::PathBuf;

pub use constraints::{IpNet, NameConstraints};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("a certificate needs at least one name")]
    NoName,
    #[error("no secure random bytes for a serial number")]
    Random,
    #[error("{0} is not a CA certificate")]
    NotCa(String),
    // The io error is part of the message, not a `source`, so a printed chain says it once.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} already exists; it is never overwritten silently", .0.display())]
    Exists(PathBuf),
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl PkiError {
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// The key algorithm of a new key pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, universally supported.
    #[default]
    P256,
    /// ECDSA on P-384 with SHA-384.
    P384,
    /// RSA 3072 with SHA-256, for peers that cannot do ECDSA.
    Rsa3072,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// A fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair, PkiError> {
        Ok(match self {
            Self::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            Self::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            Self::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)?
            }
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
        })
    }
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

/// A leaf to issue. The first name is also the subject's common name, unless it is an IP
/// address: then the subject is empty and the SAN alone names the leaf.
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
    /// The serial number, lowercase hex.
    pub serial: String,
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    /// PKCS#8 PEM. Belongs only on the host that serves the certificate.
    pub key_pem: String,
}

/// A certificate authority: its certificate and signing key.
#[derive(Debug)]
pub struct Ca {
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root CA with a P-256 key. Its key belongs in offline storage.
    pub fn root(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        Self::root_with(common_name, validity, KeyType::default())
    }

    pub fn root_with(
        common_name: &str,
        validity: Validity,
        key_type: KeyType,
    ) -> Result<Self, PkiError> {
        let params = ca_params(common_name, validity, BasicConstraints::Unconstrained)?;
        let key = key_type.generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA signed by this one, allowed to sign leaves only (path length 0).
    ///
    /// With `permitted_dns`, X.509 name constraints limit it to those DNS suffixes and no IP
    /// address, so it can never vouch for a public name.
    pub fn intermediate(
        &self,
        common_name: &str,
        validity: Validity,
        permitted_dns: &[String],
    ) -> Result<Self, PkiError> {
        let constraints = NameConstraints::permit(permitted_dns, &[]);
        self.intermediate_with(common_name, validity, &constraints, KeyType::default())
    }

    /// An intermediate limited to `constraints` (none when empty), with a `key_type` key.
    pub fn intermediate_with(
        &self,
        common_name: &str,
        validity: Validity,
        constraints: &NameConstraints,
        key_type: KeyType,
    ) -> Result<Self, PkiError> {
        let mut params = ca_params(common_name, validity, BasicConstraints::Constrained(0))?;
        params.name_constraints = constraints.to_rcgen();
        let key = key_type.generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Self {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and PEM private key (as `pki init-*` writes them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        if !parsed.is_ca() {
            return Err(PkiError::NotCa(parsed.subject().to_string()));
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert,
            issuer,
        })
    }

    /// Issues a leaf with a fresh P-256 key pair.
    pub fn issue(&self, request: &LeafRequest) -> Result<Issued, PkiError> {
        self.issue_with(request, KeyType::default())
    }

    /// Issues a leaf with a fresh key pair of `key_type`: keys are never reused.
    pub fn issue_with(&self, request: &LeafRequest, key_type: KeyType) -> Result<Issued, PkiError> {
        let first = request.names.first().ok_or(PkiError::NoName)?;
        let mut params = CertificateParams::new(request.names.clone())?;
        // OpenSSL checks a common name that looks like a host name against the DNS name
        // constraints when the SAN has no DNS name, and `127.0.0.1` looks like one: a leaf for an
        // address permitted by --permit-ip would fail there. An empty subject is what RFC 5280
        // allows instead (rcgen then marks the SAN critical), and rustls never reads the CN.
        params.distinguished_name = if first.parse::<std::net::IpAddr>().is_ok() {
            DistinguishedName::new()
        } else {
            name(first)
        };
        let (serial, hex) = serial()?;
        params.serial_number = Some(serial);
        params.not_before = request.validity.not_before;
        params.not_after = request.validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_type == KeyType::Rsa3072 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![match request.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = key_type.generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            serial: hex,
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key, PKCS#8 PEM: for offline storage only, never for the proxy.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The rcgen issuer, to sign CRLs.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

fn ca_params(
    common_name: &str,
    validity: Validity,
    constraints: BasicConstraints,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.serial_number = Some(serial()?.0);
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

/// A random positive 128-bit serial (RFC 5280 wants them unpredictable), and its hex form.
fn serial() -> Result<(SerialNumber, String), PkiError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and exactly 16 bytes long
    Ok((SerialNumber::from_slice(&bytes), inspect::hex(&bytes)))
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
        assert_eq!(inspect::hex(&serial(&a.cert)), a.serial);
    }
}
