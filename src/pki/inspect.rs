//! What a certificate says, in the terms an operator checks: names, issuer, validity and days
//! left, serial, fingerprint, key type, CA or not, what it may be used for.

use std::fmt;
use std::net::IpAddr;

use ::time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

/// The facts of one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of the subject alternative name.
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Lowercase hex, no separators.
    pub serial: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256: String,
    pub key_type: String,
    pub is_ca: bool,
    /// `None` when the certificate has no extended key usage extension (any use).
    pub server_auth: Option<bool>,
    pub client_auth: Option<bool>,
    /// The DER SubjectPublicKeyInfo, to match private keys against.
    pub spki: Vec<u8>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let sans = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(general_name)
                .collect(),
            _ => Vec::new(),
        };
        let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            serial: hex(cert.raw_serial()),
            sha256: sha256_hex(der),
            key_type: key_type(cert.public_key()),
            is_ca: cert.is_ca(),
            server_auth: eku.map(|e| e.any || e.server_auth),
            client_auth: eku.map(|e| e.any || e.client_auth),
            spki: cert.public_key().raw.to_vec(),
        })
    }

    /// Days until `not_after`, to the nearest day (negative once expired).
    pub fn days_left(&self) -> i64 {
        days_until(self.not_after)
    }

    pub fn is_expired(&self) -> bool {
        self.not_after < OffsetDateTime::now_utc()
    }

    pub fn is_self_signed(&self) -> bool {
        self.subject == self.issuer
    }

    /// The service name: the first SAN, else the subject.
    pub fn name(&self) -> &str {
        self.sans.first().map_or(&self.subject, String::as_str)
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let usage = match (self.is_ca, self.server_auth, self.client_auth) {
            (true, _, _) => "CA".to_owned(),
            (false, None, _) => "any (no extended key usage)".to_owned(),
            (false, Some(server), Some(client)) => {
                let mut uses = Vec::new();
                if server {
                    uses.push("serverAuth");
                }
                if client {
                    uses.push("clientAuth");
                }
                if uses.is_empty() {
                    "neither server nor client".to_owned()
                } else {
                    uses.join(", ")
                }
            }
            (false, Some(_), None) => "unknown".to_owned(),
        };
        writeln!(
            f,
            "  subject:     {}",
            if self.subject.is_empty() {
                "(empty: the SANs name it)"
            } else {
                &self.subject
            }
        )?;
        writeln!(
            f,
            "  SANs:        {}",
            if self.sans.is_empty() {
                "(none)".to_owned()
            } else {
                self.sans.join(", ")
            }
        )?;
        writeln!(f, "  issuer:      {}", self.issuer)?;
        writeln!(f, "  not before:  {}", rfc3339(self.not_before))?;
        let left = self.days_left();
        let state = if self.is_expired() {
            format!("EXPIRED {} days ago", -left)
        } else {
            format!("{left} days left")
        };
        writeln!(f, "  not after:   {} ({state})", rfc3339(self.not_after))?;
        writeln!(f, "  serial:      {}", self.serial)?;
        writeln!(f, "  sha256:      {}", self.sha256)?;
        writeln!(f, "  key:         {}", self.key_type)?;
        write!(
            f,
            "  CA:          {}\n  usage:       {usage}",
            if self.is_ca { "yes" } else { "no" }
        )
    }
}

fn general_name(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    const ED25519: &str = "1.3.101.112";
    if spki.algorithm.algorithm.to_id_string() == ED25519 {
        return "Ed25519".into();
    }
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(point)) => match point.key_size() {
            256 => "ECDSA P-256".into(),
            384 => "ECDSA P-384".into(),
            521 => "ECDSA P-521".into(),
            bits => format!("ECDSA {bits}-bit"),
        },
        _ => spki.algorithm.algorithm.to_id_string(),
    }
}

/// Days from now until `at`, to the nearest day: a 90-day certificate issued a second ago shows 90.
pub fn days_until(at: OffsetDateTime) -> i64 {
    let seconds = (at - OffsetDateTime::now_utc()).whole_seconds();
    (seconds + 43_200).div_euclid(86_400)
}

/// A coarse human duration, to the nearest unit: "2 days", "5 hours", "12 minutes", "42 seconds"
/// (a certificate issued for 10 days a second ago expires "in 10 days").
pub fn human_span(seconds: u64) -> String {
    let (n, unit) = if seconds >= 86_400 - 1_800 {
        ((seconds + 43_200) / 86_400, "day")
    } else if seconds >= 3_600 - 30 {
        ((seconds + 1_800) / 3_600, "hour")
    } else if seconds >= 60 {
        ((seconds + 30) / 60, "minute")
    } else {
        (seconds, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(at: OffsetDateTime) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::from(at)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, KeyType, LeafRequest, Usage, Validity};

    #[test]
    fn reads_back_what_was_issued() {
        let root = Ca::root("Inspect Root", Validity::days(10)).unwrap();
        let mut request = LeafRequest::server("backend-api", 5);
        request.names.push("10.0.0.5".into());
        let leaf = root.issue_with(&request, KeyType::P384).unwrap();
        let info = CertInfo::parse(&leaf.cert).unwrap();
        assert_eq!(info.subject, "CN=backend-api");
        assert_eq!(info.issuer, "CN=Inspect Root");
        assert_eq!(info.sans, ["backend-api", "10.0.0.5"]);
        assert_eq!(info.serial, leaf.serial);
        assert_eq!(info.key_type, "ECDSA P-384");
        assert!((4..=5).contains(&info.days_left()));
        assert_eq!(
            (info.is_ca, info.server_auth, info.client_auth),
            (false, Some(true), Some(false))
        );
        assert_eq!(info.sha256.len(), 64);

        let root_info = CertInfo::parse(root.cert()).unwrap();
        assert!(root_info.is_ca && root_info.is_self_signed());

        request.usage = Usage::Client;
        let client = root.issue_with(&request, KeyType::Ed25519).unwrap();
        let info = CertInfo::parse(&client.cert).unwrap();
        assert_eq!(info.key_type, "Ed25519");
        assert_eq!(info.client_auth, Some(true));
        assert!(info.to_string().contains("usage:       clientAuth"));
    }
}
