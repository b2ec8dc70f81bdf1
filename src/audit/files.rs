//! Findings from the files the proxy reads and the folders around them: CA private keys (by
//! matching every private key against every CA certificate's public key), trust bundles that look
//! public, certificates near expiry, and a listener key others can read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Finding, Options, Severity, expiry};
use crate::config::Config;
use crate::pki::inspect::CertInfo;

/// Where distributions keep the system trust store.
const SYSTEM_STORES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// More roots than an internal PKI ever needs: a bundle this large is a public store.
const MAX_INTERNAL_ANCHORS: usize = 10;

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
    let anchors: Vec<KnownCa> = config
        .map(|config| {
            config
                .upstream_tls
                .anchors
                .iter()
                .filter_map(|der| CertInfo::parse(der).ok())
                .map(|info| KnownCa {
                    info,
                    path: config
                        .upstream_tls
                        .ca_files
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let cas = known_cas(&files, &anchors);
    ca_keys(&files, &cas, "in a folder the proxy reads", findings);
    stray_keys(&files, &cas, findings);

    let Some(config) = config else {
        return cas;
    };
    let ca_files = config
        .upstream_tls
        .ca_files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if anchors.len() > MAX_INTERNAL_ANCHORS {
        findings.push(Finding::new(
            Severity::High,
            "anchors-look-public",
            format!(
                "the upstream trust bundle holds {} CA certificates: internal CA treated like a \
                 public CA / system trust store copied",
                anchors.len()
            ),
            ca_files.clone(),
            "put only the internal root (or intermediate) certificate in [upstream_tls].ca",
        ));
    }
    let system = match system_store(options.system_store.as_deref()) {
        Ok(system) => system,
        Err(e) => {
            findings.push(Finding::new(
                Severity::Medium,
                "system-store-unreadable",
                format!("the system trust store given cannot be read ({e}), so anchors were not compared with it"),
                options.system_store.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                "pass a readable --system-store, or none to use the distribution's",
            ));
            HashSet::new()
        }
    };
    for anchor in anchors.iter().filter(|a| system.contains(&a.info.sha256)) {
        findings.push(Finding::new(
            Severity::High,
            "anchors-look-public",
            format!(
                "upstream trust anchor \"{}\" is also in the system trust store: internal CA \
                 treated like a public CA / system trust store copied",
                anchor.info.subject
            ),
            ca_files.clone(),
            "trust only the internal CA for upstreams; remove public roots from the bundle",
        ));
    }

    let public = config.server.cert.display().to_string();
    for (i, der) in config.server.chain.iter().enumerate() {
        if let Ok(info) = CertInfo::parse(der) {
            let role = if i == 0 {
                "public certificate"
            } else {
                "public chain certificate"
            };
            findings.extend(expiry(&info, role, &public, options.warn_days));
        }
    }
    for anchor in &anchors {
        findings.extend(expiry(
            &anchor.info,
            "internal CA certificate",
            &ca_files,
            options.warn_days,
        ));
    }
    key_mode(&config.server.key, findings);
    cas
}

/// Fingerprints of the system trust store's certificates: from `explicit`, which must be
/// readable, else from whichever of the distributions' stores exist.
fn system_store(explicit: Option<&Path>) -> std::io::Result<HashSet<String>> {
    let stores: Vec<Vec<u8>> = match explicit {
        Some(path) => vec![std::fs::read(path)?],
        None => SYSTEM_STORES
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .collect(),
    };
    Ok(stores
        .into_iter()
        .flat_map(|bytes| {
            CertificateDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .map(|der| crate::pki::inspect::sha256_hex(&der))
                .collect::<Vec<_>>()
        })
        .collect())
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
