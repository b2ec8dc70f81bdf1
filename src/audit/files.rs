//! Findings from the files the proxy reads and the folders around them: CA private keys (by
//! matching every private key against every CA certificate's public key), trust bundles that look
//! public (upstream and client), certificates near expiry (the proxy's client certificates too),
//! and a listener key others can read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::named::Named;
use super::{Finding, Options, Severity, Side, due, expiry};
use crate::config::Config;
use crate::pki::inspect::CertInfo;
use crate::tls::anchors::{self, PublicSign, SystemStore};

/// A CA certificate the audit knows of, and the file it came from.
#[derive(Debug, Clone)]
pub struct KnownCa {
    pub info: CertInfo,
    pub path: PathBuf,
}

/// What one PEM file holds.
#[derive(Debug, Default)]
pub struct PemFile {
    pub path: PathBuf,
    pub certs: Vec<CertInfo>,
    /// SubjectPublicKeyInfo of each private key in the file.
    pub key_spkis: Vec<Vec<u8>>,
}

impl PemFile {
    /// Reads `path` if it is a small file holding PEM; `None` otherwise.
    pub fn read(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        let bytes = std::fs::read(path).ok()?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return None;
        }
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .filter_map(|der| CertInfo::parse(&der).ok())
            .collect();
        let key_spkis = PrivateKeyDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .filter_map(|key| rcgen::KeyPair::try_from(&key).ok())
            .map(|pair| rcgen::PublicKeyData::subject_public_key_info(&pair))
            .collect();
        Some(Self {
            path: path.to_path_buf(),
            certs,
            key_spkis,
        })
    }
}

/// Every PEM file under `folders` (recursively, bounded), each read once.
pub fn scan(folders: &[PathBuf]) -> Vec<PemFile> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for folder in folders {
        walk(folder, 0, &mut seen, &mut out);
    }
    out
}

fn walk(path: &Path, depth: usize, seen: &mut HashSet<PathBuf>, out: &mut Vec<PemFile>) {
    let Ok(real) = path.canonicalize() else {
        return;
    };
    if !seen.insert(real.clone()) {
        return;
    }
    if real.is_file() {
        out.extend(PemFile::read(&real));
        return;
    }
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&real) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        let name = child
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if matches!(name, ".git" | "target" | "node_modules") {
            continue;
        }
        walk(&child, depth + 1, seen, out);
    }
}

/// The CA certificates among `files` and `extra`, one per fingerprint.
pub fn known_cas(files: &[PemFile], extra: &[KnownCa]) -> Vec<KnownCa> {
    let mut seen = HashSet::new();
    let mut cas = Vec::new();
    for ca in extra.iter().cloned().chain(files.iter().flat_map(|file| {
        file.certs.iter().filter(|c| c.is_ca).map(|info| KnownCa {
            info: info.clone(),
            path: file.path.clone(),
        })
    })) {
        if seen.insert(ca.info.sha256.clone()) {
            cas.push(ca);
        }
    }
    cas
}

/// A critical finding for every private key in `files` that belongs to a CA in `cas`.
pub fn ca_keys(files: &[PemFile], cas: &[KnownCa], context: &str, findings: &mut Vec<Finding>) {
    for file in files {
        for spki in &file.key_spkis {
            let Some(ca) = cas.iter().find(|ca| &ca.info.spki == spki) else {
                continue;
            };
            let (what, fix) = if ca.info.is_self_signed() {
                (
                    format!(
                        "the private key of the root CA \"{}\" is {context}: the root must be offline",
                        ca.info.subject
                    ),
                    "move it to offline storage, delete it here, and re-key the whole PKI if this \
                     folder was ever copied into an image or a backup you do not control",
                )
            } else {
                (
                    format!(
                        "the private key of the CA \"{}\" is {context}",
                        ca.info.subject
                    ),
                    "keep CA keys on the CA host only; delete it here and revoke and replace the \
                     intermediate if this folder was ever copied into an image",
                )
            };
            findings.push(Finding::new(
                Severity::Critical,
                "ca-key-exposed",
                what,
                file.path.display().to_string(),
                fix,
            ));
        }
    }
}

/// CA keys and stray keys near the proxy, public-looking anchors, expiry of the public and CA
/// certificates, the listener key's mode; returns the CA certificates found, for the compose
/// checks.
pub fn check(
    config_path: &Path,
    config: Option<&Config>,
    options: &Options,
    findings: &mut Vec<Finding>,
) -> Vec<KnownCa> {
    let folders =
        Config::named_folders(config_path).unwrap_or_else(|_| vec![Config::folder(config_path)]);
    let files = scan(&folders);
    // The trust bundle, from the loaded config or, when it does not load (a bundle the loader
    // refuses, say), from the files its TOML names, so the bundle is still judged.
    let (ca_files, anchor_ders) = match config {
        Some(config) => (
            config.upstream_tls.ca_files.clone(),
            config.upstream_tls.anchors.clone(),
        ),
        None => {
            let ca_files = Config::named_ca_files(config_path).unwrap_or_default();
            let ders = ca_files
                .iter()
                .filter_map(|path| crate::tls::load_certs(path).ok())
                .flatten()
                .collect();
            (ca_files, ders)
        }
    };
    // The client trust bundle, the same way: the loader refuses a public-looking one too.
    let (client_ca_files, client_ders) = match config {
        Some(config) => config
            .server
            .client_auth
            .as_ref()
            .map(|auth| (auth.ca_files.clone(), auth.anchors.clone()))
            .unwrap_or_default(),
        None => {
            let ca_files = Config::named_client_ca_files(config_path).unwrap_or_default();
            let ders = ca_files
                .iter()
                .filter_map(|path| crate::tls::load_certs(path).ok())
                .flatten()
                .collect();
            (ca_files, ders)
        }
    };
    let anchors: Vec<KnownCa> = anchor_ders
        .iter()
        .filter_map(|der| CertInfo::parse(der).ok())
        .map(|info| KnownCa {
            info,
            path: ca_files.first().cloned().unwrap_or_default(),
        })
        .collect();
    let client_anchors = client_ders
        .iter()
        .filter_map(|der| CertInfo::parse(der).ok())
        .map(|info| KnownCa {
            info,
            path: client_ca_files.first().cloned().unwrap_or_default(),
        });
    let extra: Vec<KnownCa> = anchors.iter().cloned().chain(client_anchors).collect();
    let cas = known_cas(&files, &extra);
    ca_keys(&files, &cas, "in a folder the proxy reads", findings);
    stray_keys(&files, &cas, findings);
    if !ca_files.is_empty() || !client_ca_files.is_empty() {
        let system = system_store(options, findings);
        if !ca_files.is_empty() {
            public_anchors(Side::Upstream, &ca_files, &anchor_ders, &system, findings);
        }
        if !client_ca_files.is_empty() {
            public_anchors(
                Side::Client,
                &client_ca_files,
                &client_ders,
                &system,
                findings,
            );
        }
    }

    let Some(config) = config else {
        // The loader refuses an expired client certificate: judge the files the TOML names.
        for (route, path) in Named::read(config_path).client_certs {
            let leaf = crate::tls::load_certs(&path)
                .ok()
                .and_then(|chain| chain.into_iter().next())
                .and_then(|der| CertInfo::parse(&der).ok());
            if let Some(leaf) = leaf {
                let who = match route {
                    None => "the proxy's client certificate".to_owned(),
                    Some(prefix) => format!("the client certificate of route {prefix}"),
                };
                findings.extend(client_cert_expiry(&leaf, &who, &path, options.warn_days));
            }
        }
        return cas;
    };
    // Expiry over the one certificate set the metrics publish too.
    for cert in config.certificates() {
        let Ok(info) = CertInfo::parse(&cert.der) else {
            continue;
        };
        let role = match (cert.role, cert.index) {
            ("public", 0) => "public certificate",
            ("public", _) => "public chain certificate",
            ("anchor", _) => "internal CA certificate",
            ("client_ca", _) => "client CA certificate",
            _ => {
                let who = match cert.routes.as_slice() {
                    [] => "the proxy's client certificate".to_owned(),
                    [one] => format!("the client certificate of route {one}"),
                    many => format!("the client certificate of routes {}", many.join(", ")),
                };
                let file = Path::new(&cert.file);
                findings.extend(client_cert_expiry(&info, &who, file, options.warn_days));
                continue;
            }
        };
        findings.extend(expiry(&info, role, &cert.file, options.warn_days));
    }
    key_mode(&config.server.key, findings);
    cas
}

/// The system trust store anchors are compared with: `--system-store` when given (reported
/// when unreadable), else the distribution's.
fn system_store(options: &Options, findings: &mut Vec<Finding>) -> SystemStore {
    match options.system_store.as_deref() {
        None => SystemStore::distribution(),
        Some(path) => SystemStore::read(path).unwrap_or_else(|e| {
            findings.push(Finding::new(
                Severity::Medium,
                "system-store-unreadable",
                format!("the system trust store given cannot be read ({e}), so anchors were not compared with it"),
                path.display().to_string(),
                "pass a readable --system-store, or none to use the distribution's",
            ));
            SystemStore::default()
        }),
    }
}

/// `anchors-look-public` (upstream) and `client-ca-looks-public`: the rule `trustgate check`
/// enforces on both bundles ([`anchors::looks_public`]).
fn public_anchors(
    side: Side,
    ca_files: &[PathBuf],
    anchors: &[CertificateDer<'static>],
    system: &SystemStore,
    findings: &mut Vec<Finding>,
) {
    let location = ca_files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for sign in anchors::looks_public(anchors, system) {
        let finding = match (side, sign) {
            (Side::Upstream, PublicSign::TooMany { count }) => Finding::new(
                Severity::High,
                "anchors-look-public",
                format!(
                    "the upstream trust bundle holds {count} CA certificates: internal CA \
                     treated like a public CA / system trust store copied"
                ),
                location.clone(),
                "put only the internal root (or intermediate) certificate in [upstream_tls].ca",
            ),
            (Side::Upstream, PublicSign::InSystemStore { index }) => Finding::new(
                Severity::High,
                "anchors-look-public",
                format!(
                    "upstream trust anchor \"{}\" is also in the system trust store: internal CA \
                     treated like a public CA / system trust store copied",
                    crate::tls::subject(&anchors[index])
                ),
                location.clone(),
                "trust only the internal CA for upstreams; remove public roots from the bundle",
            ),
            (Side::Client, PublicSign::TooMany { count }) => Finding::new(
                Severity::High,
                "client-ca-looks-public",
                format!(
                    "the client certificate trust bundle holds {count} CA certificates: a public \
                     or system trust store copied, so a certificate any of them issued, to \
                     anyone, passes client authentication"
                ),
                location.clone(),
                "put only the CA that issues your clients' certificates in [server.client_auth].ca",
            ),
            (Side::Client, PublicSign::InSystemStore { index }) => Finding::new(
                Severity::High,
                "client-ca-looks-public",
                format!(
                    "client trust anchor \"{}\" is also in the system trust store: anyone who \
                     gets a certificate from that public CA passes client authentication",
                    crate::tls::subject(&anchors[index])
                ),
                location.clone(),
                "trust only your own client CA in [server.client_auth].ca; remove public roots",
            ),
        };
        findings.push(finding);
    }
}

/// A finding for the proxy's client certificate when it has expired (high: backends that
/// demand it refuse the proxy) or expires within `warn_days` (medium).
fn client_cert_expiry(
    leaf: &CertInfo,
    who: &str,
    cert_file: &Path,
    warn_days: i64,
) -> Option<Finding> {
    let (severity, when) = due(leaf, warn_days)?;
    Some(Finding::new(
        severity,
        "upstream-client-cert-expiring",
        format!(
            "{who} \"{}\" {when}: backends that require a client certificate refuse the proxy \
             once it has expired",
            leaf.subject
        ),
        cert_file.display().to_string(),
        format!(
            "renew it (trustgate pki renew --ca CADIR --certs {} for client.crt files, or pki \
             issue --ca CADIR --client NAME --renew) and reload the proxy (SIGHUP; watched \
             files reload by themselves)",
            cert_file
                .parent()
                .map_or_else(|| ".".into(), |p| p.display().to_string())
        ),
    ))
}

/// A private key that belongs to no certificate found near the proxy: it serves nothing here,
/// and it may be a CA key whose certificate the audit has not seen (an intermediate's).
fn stray_keys(files: &[PemFile], cas: &[KnownCa], findings: &mut Vec<Finding>) {
    let known: HashSet<&[u8]> = files
        .iter()
        .flat_map(|f| f.certs.iter().map(|c| c.spki.as_slice()))
        .chain(cas.iter().map(|ca| ca.info.spki.as_slice()))
        .collect();
    for file in files {
        if file
            .key_spkis
            .iter()
            .any(|spki| !known.contains(spki.as_slice()))
        {
            findings.push(Finding::new(
                Severity::Medium,
                "stray-private-key",
                "a private key that matches no certificate in the folders the proxy reads: if it \
                 belongs to a CA (an intermediate's key, say), it must not be here",
                file.path.display().to_string(),
                "identify it (openssl pkey -in FILE -pubout) and delete it unless the proxy needs it",
            ));
        }
    }
}

fn key_mode(path: &Path, findings: &mut Vec<Finding>) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                findings.push(Finding::new(
                    Severity::Medium,
                    "key-readable",
                    format!(
                        "the listener's private key is readable by group or others (mode {mode:o})"
                    ),
                    path.display().to_string(),
                    format!("chmod 600 {}", path.display()),
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, findings);
}
