//! Which certificates may be the upstream trust anchors.
//!
//! webpki takes a trust anchor as a bare name and key: it never looks at the anchor's validity or
//! keyUsage, and it cannot know that a bundle of 140 roots is the system store. So each anchor is
//! checked here ([`check`]: a CA, valid now, not denied keyCertSign), and so is the bundle
//! ([`looks_public`]: a handful of internal roots, none of them a public root). `trustgate check`
//! and `run` refuse what breaks these rules; `trustgate audit` reports a public-looking bundle
//! through the same [`looks_public`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::verify::{CannotSign, may_sign};
use crate::pki::inspect::{human_span, rfc3339};

/// Where distributions keep the system trust store.
pub const SYSTEM_STORES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// More roots than an internal PKI ever needs: a bundle this large is a public store.
pub const MAX_INTERNAL_ANCHORS: usize = 10;

/// Why one certificate cannot be a trust anchor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorProblem {
    #[error("cannot be parsed: {0}")]
    Unparseable(String),
    #[error(
        "({subject}) is not a CA certificate; [upstream_tls].ca must hold the internal CA's \
         certificate, which then vouches for every service's own certificate"
    )]
    NotCa { subject: String },
    #[error(
        "({subject}) expired {ago} ago (not valid after {not_after}): an expired CA vouches for \
         nothing; put the CA's current certificate here"
    )]
    Expired {
        subject: String,
        ago: String,
        not_after: String,
    },
    #[error(
        "({subject}) is not valid yet: valid from {not_before} (in {until}); check the clock, \
         or deploy it once it is valid"
    )]
    NotYetValid {
        subject: String,
        not_before: String,
        until: String,
    },
    #[error(
        "({subject}) may not sign certificates: {why} (RFC 5280 4.2.1.3); re-issue the CA \
         certificate with keyUsage keyCertSign"
    )]
    CannotSign { subject: String, why: CannotSign },
}

/// Checks one anchor at `now`: a CA certificate, within its validity, whose keyUsage (if any)
/// allows it to sign certificates.
pub fn check(der: &CertificateDer<'_>, now: OffsetDateTime) -> Result<(), AnchorProblem> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AnchorProblem::Unparseable(e.to_string()))?;
    let subject = cert.subject().to_string();
    if !cert.is_ca() {
        return Err(AnchorProblem::NotCa { subject });
    }
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now > not_after {
        return Err(AnchorProblem::Expired {
            subject,
            ago: span(now - not_after),
            not_after: rfc3339(not_after),
        });
    }
    if now < not_before {
        return Err(AnchorProblem::NotYetValid {
            subject,
            not_before: rfc3339(not_before),
            until: span(not_before - now),
        });
    }
    // A keyUsage without keyCertSign forbids signing certificates (RFC 5280 4.2.1.3). An anchor
    // with no keyUsage at all is taken: anchors are configured out of band (RFC 5280 6.1.1), and
    // `openssl req -x509` makes roots without one. Presented intermediates get the strict rule.
    match may_sign(&cert) {
        Err(why @ CannotSign::NoKeyCertSign) => Err(AnchorProblem::CannotSign { subject, why }),
        Ok(()) | Err(CannotSign::NoKeyUsage) => Ok(()),
    }
}

fn span(duration: time::Duration) -> String {
    human_span(duration.whole_seconds().unsigned_abs())
}

/// The certificates of a system trust store, compared byte for byte.
#[derive(Debug, Default, Clone)]
pub struct SystemStore {
    certs: HashSet<Vec<u8>>,
}

impl SystemStore {
    /// Whichever of the distributions' stores ([`SYSTEM_STORES`]) exist and can be read; empty
    /// when none does (a scratch image). Parsed once and kept while the files' sizes and times
    /// stay the same: every reload asks, and parsing ~150 roots costs far more than a stat.
    pub fn distribution() -> Self {
        type Stamp = Vec<Option<(u64, std::time::SystemTime)>>;
        static CACHE: std::sync::Mutex<Option<(Stamp, SystemStore)>> = std::sync::Mutex::new(None);
        let stamp: Stamp = SYSTEM_STORES
            .iter()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.len(), meta.modified().ok()?))
            })
            .collect();
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, store)) = cache.as_ref()
            && *cached == stamp
        {
            return store.clone();
        }
        let mut store = Self::default();
        for path in SYSTEM_STORES {
            if let Ok(bytes) = std::fs::read(path) {
                store.add_pem(&bytes);
            }
        }
        *cache = Some((stamp, store.clone()));
        store
    }

    /// The store in `path`, which must be readable.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let mut store = Self::default();
        store.add_pem(&std::fs::read(path)?);
        Ok(store)
    }

    fn add_pem(&mut self, bytes: &[u8]) {
        self.certs.extend(
            CertificateDer::pem_slice_iter(bytes)
                .filter_map(Result::ok)
                .map(|der| der.to_vec()),
        );
    }

    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.contains(cert.as_ref())
    }
}

/// One reason a trust bundle looks like a public or system store rather than an internal CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicSign {
    /// More than [`MAX_INTERNAL_ANCHORS`] anchors.
    TooMany { count: usize },
    /// `anchors[index]` is also in the system trust store.
    InSystemStore { index: usize },
}

/// Every reason `anchors` look public; empty for an internal CA's bundle.
pub fn looks_public(anchors: &[CertificateDer<'_>], system: &SystemStore) -> Vec<PublicSign> {
    let too_many = (anchors.len() > MAX_INTERNAL_ANCHORS).then_some(PublicSign::TooMany {
        count: anchors.len(),
    });
    too_many
        .into_iter()
        .chain(
            anchors
                .iter()
                .enumerate()
                .filter(|(_, anchor)| system.contains(anchor))
                .map(|(index, _)| PublicSign::InSystemStore { index }),
        )
        .collect()
}

/// What is wrong with a trust bundle, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(
        "{files} {verb} {count} CA certificates, more than an internal CA needs (at most \
         {MAX_INTERNAL_ANCHORS}): this looks like a public or system trust store; put only the \
         internal root (or intermediate) certificate here",
        verb = if files.contains(", ") { "hold" } else { "holds" }
    )]
    TooMany { files: String, count: usize },
    #[error(
        "{}: certificate #{index} ({subject}){more} also in the system trust store: upstreams \
         are trusted through the internal CA only; remove the public roots",
        path.display(),
        more = match others {
            0 => " is".to_owned(),
            n => format!(" and {n} more of its certificates are"),
        }
    )]
    InSystemStore {
        path: PathBuf,
        index: usize,
        subject: String,
        others: usize,
    },
    #[error("{}: certificate #{index} {problem}", path.display())]
    Anchor {
        path: PathBuf,
        index: usize,
        problem: AnchorProblem,
    },
}

/// Everything wrong with the bundle made of `files` (each file with its certificates, in order),
/// at `now`. A bundle that looks public is reported as that alone: its roots' own flaws (a public
/// store holds expired roots too) would only bury the one fix that matters.
pub fn judge(
    files: &[(PathBuf, Vec<CertificateDer<'static>>)],
    system: &SystemStore,
    now: OffsetDateTime,
) -> Vec<BundleError> {
    let anchors: Vec<_> = files.iter().flat_map(|(_, certs)| certs.clone()).collect();
    // (file index, 1-based position in that file) of each anchor.
    let origin: Vec<(usize, usize)> = files
        .iter()
        .enumerate()
        .flat_map(|(file, (_, certs))| (1..=certs.len()).map(move |i| (file, i)))
        .collect();
    let mut errors = Vec::new();
    let mut in_store = Vec::new();
    for sign in looks_public(&anchors, system) {
        match sign {
            PublicSign::TooMany { count } => errors.push(BundleError::TooMany {
                files: files
                    .iter()
                    .map(|(path, _)| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                count,
            }),
            PublicSign::InSystemStore { index } => in_store.push(index),
        }
    }
    // One error per file, naming its first public root: a copied system store is one mistake.
    for (file, (path, _)) in files.iter().enumerate() {
        let mut hits = in_store.iter().filter(|&&index| origin[index].0 == file);
        if let Some(&first) = hits.next() {
            errors.push(BundleError::InSystemStore {
                path: path.clone(),
                index: origin[first].1,
                subject: super::subject(&anchors[first]),
                others: hits.count(),
            });
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    anchors
        .iter()
        .zip(origin)
        .filter_map(|(anchor, (file, index))| {
            check(anchor, now).err().map(|problem| BundleError::Anchor {
                path: files[file].0.clone(),
                index,
                problem,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Validity};

    #[test]
    fn expiry_and_start_are_said_with_dates() {
        let root = Ca::root("Anchor Root", Validity::days(30)).unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(check(root.cert(), now), Ok(()));
        let later = check(root.cert(), now + time::Duration::days(33));
        assert!(
            matches!(&later, Err(AnchorProblem::Expired { ago, .. }) if ago == "3 days"),
            "{later:?}"
        );
        let earlier = check(root.cert(), now - time::Duration::days(2));
        assert!(
            matches!(&earlier, Err(AnchorProblem::NotYetValid { until, .. }) if until == "2 days"),
            "{earlier:?}"
        );
    }

    #[test]
    fn key_usage_without_key_cert_sign_is_refused_no_key_usage_is_not() {
        let root = |usages: Vec<rcgen::KeyUsagePurpose>| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "R");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = usages;
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let now = OffsetDateTime::now_utc();
        assert_eq!(check(&root(Vec::new()), now), Ok(()));
        assert_eq!(
            check(&root(vec![rcgen::KeyUsagePurpose::CrlSign]), now),
            Err(AnchorProblem::CannotSign {
                subject: "CN=R".into(),
                why: CannotSign::NoKeyCertSign
            })
        );
    }

    #[test]
    fn eleven_roots_and_system_roots_look_public() {
        let roots: Vec<_> = (0..11)
            .map(|i| {
                Ca::root(&format!("Root {i}"), Validity::days(1))
                    .unwrap()
                    .cert()
                    .clone()
            })
            .collect();
        let none = SystemStore::default();
        assert!(looks_public(&roots[..10], &none).is_empty());
        assert_eq!(
            looks_public(&roots, &none),
            [PublicSign::TooMany { count: 11 }]
        );
        let mut system = SystemStore::default();
        system.certs.insert(roots[1].to_vec());
        assert_eq!(
            looks_public(&roots[..2], &system),
            [PublicSign::InSystemStore { index: 1 }]
        );
    }
}
