//! Certificate revocation lists: loaded and checked when the config loads, never on the request
//! path, and the words for a refusal that a person can act on.
//!
//! rustls-webpki decides revocation during the handshake (with the CRLs given to the verifier
//! builders in [`super::client`] and [`super::server`]) but reports only `Revoked` or
//! `UnknownRevocationStatus`. [`CrlSet::explain`] turns that into which certificate, which serial,
//! when and why, or which issuer published no CRL, from the CRLs parsed here once.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use x509_parser::prelude::*;

use super::verify::Refusal;

/// `revocation`: which certificates of a presented chain must not be revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Depth {
    /// Every certificate but the trust anchor.
    #[default]
    Chain,
    /// Only the end-entity certificate.
    Leaf,
}

/// The revocation settings shared by `[upstream_tls]` and `[server.client_auth]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub depth: Depth,
    /// `unknown_status = "allow"`: a certificate whose issuer published no CRL here passes.
    pub allow_unknown: bool,
    /// `crl_expired = "allow"`: a CRL past its nextUpdate is still used (and warned about).
    pub allow_expired: bool,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |allow: bool| if allow { "allow" } else { "deny" };
        write!(
            f,
            "revocation {}, unknown status {}, expired CRL {}",
            match self.depth {
                Depth::Chain => "chain",
                Depth::Leaf => "leaf",
            },
            word(self.allow_unknown),
            word(self.allow_expired)
        )
    }
}

/// Why a CRL file cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} holds a PRIVATE KEY block: a CRL file is public; keep CA keys offline",
        path.display()
    )]
    HoldsPrivateKey { path: PathBuf },
    #[error("{} holds a certificate, not a CRL (expected \"-----BEGIN X509 CRL-----\" or DER)", path.display())]
    Certificate { path: PathBuf },
    #[error("{} holds no CRL (expected \"-----BEGIN X509 CRL-----\" or DER)", path.display())]
    Empty { path: PathBuf },
    #[error("{} is not a valid CRL: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// One parsed CRL and the facts `check`, the audit and refusals need.
#[derive(Debug, Clone)]
pub struct Crl {
    pub path: PathBuf,
    pub der: CertificateRevocationListDer<'static>,
    /// The issuer as `check` prints it (`CN=Example Intermediate, O=…`).
    pub issuer: String,
    /// The issuer's common name, else the whole name: what refusals quote.
    pub issuer_name: String,
    /// The issuer's DER name, matched against certificates' issuer fields.
    issuer_raw: Vec<u8>,
    /// Seconds since the epoch.
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// Revoked serials (DER integer bytes, as in certificates) to when and why.
    revoked: HashMap<Vec<u8>, Revoked>,
}

/// One revoked serial.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Revoked {
    at: i64,
    reason: Option<u8>,
}

impl Crl {
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Whether both CRLs are published by one issuer: webpki consults only the first of them.
    pub fn same_issuer(&self, other: &Crl) -> bool {
        self.issuer_raw == other.issuer_raw
    }

    /// Whether nextUpdate has passed at `now` (seconds since the epoch).
    pub fn expired_at(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }
}

/// Reads every CRL in a file: PEM (`X509 CRL` blocks) or one DER CRL. Refuses files holding a
/// private key or a certificate, and any CRL rustls-webpki would not parse at handshake time.
pub fn load(path: &Path) -> Result<Vec<Crl>, CrlError> {
    let bytes = std::fs::read(path).map_err(|error| CrlError::Read {
        path: path.into(),
        error,
    })?;
    parse(path, &bytes)
}

/// [`load`] on bytes already read; `path` names them in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Crl>, CrlError> {
    if super::holds_private_key(bytes) {
        return Err(CrlError::HoldsPrivateKey { path: path.into() });
    }
    let invalid = |reason: String| CrlError::Invalid {
        path: path.into(),
        reason,
    };
    let ders: Vec<Vec<u8>> = if bytes.starts_with(b"-----") || looks_like_text(bytes) {
        let mut ders = Vec::new();
        let mut certificates = false;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            match section.map_err(|e| invalid(e.to_string()))? {
                (SectionKind::Crl, der) => ders.push(der),
                (SectionKind::Certificate, _) => certificates = true,
                _ => {}
            }
        }
        if ders.is_empty() {
            return Err(if certificates {
                CrlError::Certificate { path: path.into() }
            } else {
                CrlError::Empty { path: path.into() }
            });
        }
        ders
    } else {
        if parse_x509_certificate(bytes).is_ok() {
            return Err(CrlError::Certificate { path: path.into() });
        }
        vec![bytes.to_vec()]
    };
    ders.into_iter()
        .map(|der| parse_one(path, der).map_err(invalid))
        .collect()
}

fn looks_like_text(bytes: &[u8]) -> bool {
    // DER starts with a SEQUENCE tag (0x30); PEM, possibly after comments, is text.
    bytes.first().is_some_and(|&b| b != 0x30)
}

fn parse_one(path: &Path, der: Vec<u8>) -> Result<Crl, String> {
    // The parser the handshake uses decides what is valid.
    webpki::OwnedCertRevocationList::from_der(&der).map_err(|e| format!("{e:?}"))?;
    let (rest, crl) = parse_x509_crl(&der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the CRL", rest.len()));
    }
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| {
            let revoked = Revoked {
                at: entry.revocation_date.timestamp(),
                reason: entry.reason_code().map(|(_, code)| code.0),
            };
            (entry.raw_serial().to_vec(), revoked)
        })
        .collect();
    let (issuer, issuer_name, issuer_raw) = (
        crl.issuer().to_string(),
        short_name(crl.issuer()),
        crl.issuer().as_raw().to_vec(),
    );
    let (this_update, next_update) = (
        crl.last_update().timestamp(),
        crl.next_update().map(|t| t.timestamp()),
    );
    Ok(Crl {
        path: path.into(),
        der: CertificateRevocationListDer::from(der),
        issuer,
        issuer_name,
        issuer_raw,
        this_update,
        next_update,
        revoked,
    })
}

/// A name as refusals quote it: its common name, else the whole name.
fn short_name(name: &X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| name.to_string(), str::to_owned)
}

/// The CRLs of one trust side and its policy: what the verifier was built with, kept to explain
/// its refusals.
#[derive(Debug, Clone, Default)]
pub struct CrlSet {
    pub crls: Vec<Crl>,
    pub policy: Policy,
}

impl CrlSet {
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The DER CRLs for a rustls verifier builder.
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.iter().map(|crl| crl.der.clone()).collect()
    }

    /// Turns webpki's bare revocation verdict on `chain` (leaf first, as presented) into a
    /// [`Refusal`] that names the certificate, serial, date and reason, or the issuer whose CRL
    /// is missing or expired. `None` when the error is not about revocation.
    pub fn explain(
        &self,
        error: &rustls::Error,
        chain: &[&CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<Refusal> {
        use rustls::CertificateError as E;
        let rustls::Error::InvalidCertificate(cert_error) = error else {
            if let rustls::Error::InvalidCertRevocationList(why) = error {
                return Some(Refusal::BadCrl {
                    issuers: self.issuers_for(chain),
                    why: format!("{why:?}"),
                });
            }
            return None;
        };
        let checked = match self.policy.depth {
            Depth::Chain => chain.len(),
            Depth::Leaf => 1,
        };
        let certs: Vec<_> = chain
            .iter()
            .take(checked)
            .filter_map(|der| parse_x509_certificate(der).ok().map(|(_, c)| c))
            .collect();
        match cert_error {
            E::Revoked => certs.iter().enumerate().find_map(|(index, cert)| {
                let revoked = self.crl_for(cert)?.revoked.get(cert.raw_serial())?;
                Some(Refusal::Revoked {
                    leaf: index == 0,
                    subject: short_name(cert.subject()),
                    serial: crate::pki::inspect::hex(cert.raw_serial()),
                    at: revoked.at,
                    reason: revoked.reason,
                })
            }),
            E::UnknownRevocationStatus => certs.iter().find_map(|cert| {
                self.crl_for(cert)
                    .is_none()
                    .then(|| Refusal::RevocationUnknown {
                        issuer: short_name(cert.issuer()),
                    })
            }),
            E::ExpiredRevocationList | E::ExpiredRevocationListContext { .. } => {
                let now = now.as_secs() as i64;
                certs.iter().find_map(|cert| {
                    let crl = self.crl_for(cert).filter(|crl| crl.expired_at(now))?;
                    Some(Refusal::CrlExpired {
                        issuer: crl.issuer_name.clone(),
                        ago: (now - crl.next_update.unwrap_or(now)).max(0) as u64,
                    })
                })
            }
            _ => None,
        }
    }

    /// The CRLs in use that have passed their nextUpdate at `now`, for the `allow` warning.
    pub fn expired(&self, now: i64) -> impl Iterator<Item = &Crl> {
        self.crls.iter().filter(move |crl| crl.expired_at(now))
    }

    fn crl_for(&self, cert: &X509Certificate<'_>) -> Option<&Crl> {
        let issuer = cert.issuer().as_raw();
        self.crls.iter().find(|crl| crl.issuer_raw == issuer)
    }

    fn issuers_for(&self, chain: &[&CertificateDer<'_>]) -> String {
        let names: Vec<String> = chain
            .iter()
            .filter_map(|der| parse_x509_certificate(der).ok())
            .filter(|(_, cert)| self.crl_for(cert).is_some())
            .map(|(_, cert)| format!("\"{}\"", short_name(cert.issuer())))
            .collect();
        if names.is_empty() {
            "its issuer".to_owned()
        } else {
            names.join(", ")
        }
    }
}

/// RFC 5280 section 5.3.1 reason names.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0 => "unspecified",
        1 => "keyCompromise",
        2 => "cACompromise",
        3 => "affiliationChanged",
        4 => "superseded",
        5 => "cessationOfOperation",
        6 => "certificateHold",
        8 => "removeFromCRL",
        9 => "privilegeWithdrawn",
        10 => "aACompromise",
        _ => "unknown reason",
    }
}
