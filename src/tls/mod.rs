//! TLS material: the one crypto provider, PEM loading whose errors name the file, and the refusal
//! of private keys where only public certificates belong.
//!
//! All rustls configs are built in this module ([`server`] for the public listener, [`client`] for
//! upstreams), always with the provider passed explicitly, never a process-wide default. What may
//! be a trust anchor is [`anchors`]' concern; the certificate rules added to webpki's are
//! [`verify`]'s.

pub mod anchors;
pub mod client;
pub mod reason;
pub mod revocation;
pub mod server;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider every config uses (aws-lc-rs, post-quantum hybrid key exchange first).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Why a PEM file could not be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    // Causes are part of the message, not a `source`, so a printed chain says them once.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not valid PEM: {error}", path.display())]
    Malformed {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no CERTIFICATE block", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no private key (expected a PKCS#8, PKCS#1 or SEC1 PEM block)", path.display())]
    NoKey { path: PathBuf },
    #[error(
        "{} holds a PRIVATE KEY block: CA private keys never belong on the proxy; \
         keep only the CA's public certificate in this file and the key offline",
        path.display()
    )]
    HoldsPrivateKey { path: PathBuf },
}

/// Reads every certificate of a PEM file, in order. Fails on an empty or unreadable file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certs(path, &read(path)?)
}

/// Reads trust anchors: like [`load_certs`], but a file that also holds a private key is refused,
/// since a CA key next to the proxy defeats the point of an offline CA. Whether each certificate
/// may be an anchor, and the bundle as a whole, is [`anchors`]' to judge.
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_ca_certs(path, &read(path)?)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    parse_key(path, &read(path)?)
}

/// [`load_certs`] on bytes already read; `path` only names them in errors.
pub fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PemError::Malformed {
            path: path.into(),
            error,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// [`load_ca_certs`] on bytes already read; `path` only names them in errors.
pub fn parse_ca_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    if holds_private_key(pem) {
        return Err(PemError::HoldsPrivateKey { path: path.into() });
    }
    parse_certs(path, pem)
}

/// [`load_key`] on bytes already read; `path` only names them in errors.
pub fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::NoKey { path: path.into() },
        error => PemError::Malformed {
            path: path.into(),
            error,
        },
    })
}

/// True when PEM text holds any private key block, encrypted or not, of any algorithm.
pub fn holds_private_key(pem: &[u8]) -> bool {
    pem.windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        path: path.into(),
        error,
    })
}

/// A one-line description of a certificate for summaries and logs: its subject.
pub fn subject(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, parsed)) => parsed.subject().to_string(),
        Err(_) => "<unparseable certificate>".into(),
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs, `+` inside
/// one, the usual short names (else the dotted OID with the value's DER in hex). Every byte that
/// is not printable ASCII is escaped as `\XX`, so the result fits an HTTP header.
pub fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.6" => Some("C"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (short, attr.as_str()) {
                (Some(short), Ok(value)) => {
                    out.push_str(short);
                    out.push('=');
                    escape_rfc4514(value, &mut out);
                }
                _ => {
                    out.push_str(&oid);
                    out.push_str("=#");
                    let value = attr.attr_value();
                    let mut der = vec![value.header.tag().0 as u8];
                    let len = value.data.len();
                    if len < 0x80 {
                        der.push(len as u8);
                    } else {
                        let bytes: Vec<u8> = len
                            .to_be_bytes()
                            .into_iter()
                            .skip_while(|&b| b == 0)
                            .collect();
                        der.push(0x80 | bytes.len() as u8);
                        der.extend(bytes);
                    }
                    der.extend_from_slice(value.data);
                    out.push_str(&crate::pki::inspect::hex(&der));
                }
            }
        }
    }
    out
}

fn escape_rfc4514(value: &str, out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (i, byte) in value.bytes().enumerate() {
        let special = matches!(byte, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && matches!(byte, b' ' | b'#'))
            || (i == last && byte == b' ');
        if special {
            out.push('\\');
            out.push(byte as char);
        } else if byte.is_ascii_graphic() || byte == b' ' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("\\{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_every_kind_of_private_key_block() {
        for label in [
            "PRIVATE KEY",
            "EC PRIVATE KEY",
            "RSA PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ] {
            let pem = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            assert!(holds_private_key(pem.as_bytes()), "{label}");
        }
        assert!(!holds_private_key(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ));
    }
}
