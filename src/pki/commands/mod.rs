//! `trustgate pki`: run the internal CA the way the architecture needs it.
//!
//! An offline root signs an intermediate; the intermediate signs one leaf per service with the
//! service name in the SAN; each leaf gets a fresh key; only public CA certificates leave the CA
//! folders; and no command writes a CA key into a folder the proxy's config names.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::inspect::{CertInfo, rfc3339};
use super::store::{self, CaDir, Entry, Kind, Status};
use super::{IpNet, KeyType, LeafRequest, NameConstraints, Usage, Validity};
use crate::config::Config;

mod args;
mod renew;

pub use self::args::{IssuerDir, PkiArgs, PkiCommand, Reason, RevokeTarget};
use self::renew::renew;

/// Runs one `pki` command, printing what it did.
pub fn run(args: PkiArgs) -> anyhow::Result<()> {
    let guard = KeyGuard::new(args.proxy_config)?;
    match args.command {
        PkiCommand::InitRoot {
            out,
            cn,
            days,
            key_type,
        } => {
            guard.check(&out)?;
            let root = super::Ca::root_with(&cn, Validity::days(days), key_type)?;
            let dir = CaDir::create(&out, root, None)?;
            println!(
                "created root CA \"{}\" in {}",
                dir.info.subject,
                out.display()
            );
            println!(
                "  certificate: {} (public: distribute this one)",
                out.join(store::CA_CERT).display()
            );
            println!(
                "  private key: {} (mode 0600)",
                out.join(store::CA_KEY).display()
            );
            println!("  valid until: {}", rfc3339(dir.info.not_after));
            println!();
            println!(
                "Move {} to offline storage now. It is needed only to sign",
                out.display()
            );
            println!("intermediates (pki init-intermediate) and the root's CRL (pki crl --root).");
            Ok(())
        }
        PkiCommand::InitIntermediate {
            root,
            out,
            cn,
            days,
            permit_dns,
            permit_ip,
            key_type,
        } => {
            guard.check(&out)?;
            let mut root_dir = CaDir::open(&root)?;
            let validity = within_issuer(&root_dir, days)?;
            let constraints = NameConstraints::permit(&permit_dns, &permit_ip);
            let intermediate =
                root_dir
                    .ca
                    .intermediate_with(&cn, validity, &constraints, key_type)?;
            let dir = CaDir::create(&out, intermediate, Some(&root_dir.ca.cert_pem()))?;
            root_dir.entries.push(Entry::from_cert(&dir.info, Kind::Ca));
            root_dir.save()?;
            println!(
                "created intermediate CA \"{}\" in {}",
                dir.info.subject,
                out.display()
            );
            println!(
                "  signed by:   {} (path length 0: signs service certificates only)",
                root_dir.info.subject
            );
            if constraints.is_empty() {
                println!(
                    "  names:       any (add --permit-dns SUFFIX or --permit-ip CIDR to constrain \
                     it to internal names)"
                );
            } else {
                println!("  names:       {constraints}");
            }
            println!("  valid until: {}", rfc3339(dir.info.not_after));
            println!(
                "  private key: {} (mode 0600; keep it on the CA host, never on the proxy)",
                out.join(store::CA_KEY).display()
            );
            Ok(())
        }
        PkiCommand::Issue {
            ca,
            name,
            client,
            dns,
            ip,
            days,
            out,
            renew,
            key_type,
        } => {
            let (first, usage) = match (name, client) {
                (Some(name), _) => (name, Usage::Server),
                (None, Some(client)) => (client, Usage::Client),
                (None, None) => bail!("give --name SERVICE or --client NAME"),
            };
            let mut names = vec![first];
            names.extend(dns);
            names.extend(ip.iter().map(IpAddr::to_string));
            issue(&ca, names, usage, days, &out, renew, key_type)
        }
        PkiCommand::Revoke {
            issuer,
            target,
            reason,
        } => revoke(issuer.path(), &target, reason),
        PkiCommand::Crl { issuer, out, days } => crl(issuer.path(), &out, days),
        PkiCommand::Renew {
            ca,
            certs,
            within,
            days,
        } => renew(&ca, &certs, within, days),
        PkiCommand::List { issuer } => list(issuer.path()),
        PkiCommand::Inspect { files } => inspect(&files),
    }
}

fn issue(
    ca: &Path,
    names: Vec<String>,
    usage: Usage,
    days: i64,
    out: &Path,
    renew: bool,
    key_type: KeyType,
) -> anyhow::Result<()> {
    let mut dir = CaDir::open(ca)?;
    let mut seen = HashSet::new();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect();
    for name in &names {
        rustls::pki_types::ServerName::try_from(name.as_str())
            .map_err(|_| anyhow!("{name:?} is not a valid DNS name or IP address"))?;
    }
    check_name_constraints(&dir, &names)?;
    let kind = if usage == Usage::Server {
        Kind::Server
    } else {
        Kind::Client
    };
    let live: Vec<usize> = dir
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == kind && e.is_live() && e.names.first() == names.first())
        .map(|(i, _)| i)
        .collect();
    if let (Some(&i), false) = (live.first(), renew) {
        let existing = &dir.entries[i];
        bail!(
            "a live certificate for {} exists (serial {}, valid until {}): one certificate per \
             service; pass --renew to replace it (the old one is marked superseded)",
            names[0],
            existing.serial,
            rfc3339(existing.not_after)
        );
    }
    let validity = within_issuer(&dir, days)?;
    let issued = dir.ca.issue_with(
        &LeafRequest {
            names: names.clone(),
            validity,
            usage,
        },
        key_type,
    )?;
    let info = CertInfo::parse(&issued.cert).map_err(|e| anyhow!(e))?;
    let written = write_leaf(&dir, out, usage, &issued.cert_pem, &issued.key_pem, renew)?;
    for i in live {
        dir.entries[i].status = Status::Superseded;
    }
    dir.entries.push(Entry::from_cert(&info, kind));
    dir.save()?;
    println!(
        "issued {} certificate for {}",
        kind.as_str(),
        names.join(", ")
    );
    println!("  serial:      {}", info.serial);
    println!(
        "  valid until: {} ({} days)",
        rfc3339(info.not_after),
        info.days_left()
    );
    for file in written {
        println!("  wrote        {}", file.display());
    }
    Ok(())
}

/// Writes the leaf's files; returns their paths. New files never replace existing ones unless
/// `replace`, and then atomically.
fn write_leaf(
    dir: &CaDir,
    out: &Path,
    usage: Usage,
    cert_pem: &str,
    key_pem: &str,
    replace: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (cert_name, key_name) = match usage {
        Usage::Server => ("server.crt", "server.key"),
        Usage::Client => ("client.crt", "client.key"),
    };
    let chain = format!("{cert_pem}{}", dir.ca.cert_pem());
    let ca_chain = format!(
        "{}{}",
        dir.ca.cert_pem(),
        dir.root_cert_pem()?.unwrap_or_default()
    );
    let files = [
        (out.join(key_name), key_pem.to_owned(), 0o600),
        (out.join(cert_name), chain, 0o644),
        (out.join("ca-chain.pem"), ca_chain, 0o644),
    ];
    // A ca-chain.pem with the same content (a server and a client certificate of one CA in one
    // folder) is no conflict.
    let unchanged = |path: &Path, contents: &str| {
        std::fs::read_to_string(path).is_ok_and(|existing| existing == contents)
    };
    if !replace
        && let Some((path, _, _)) = files
            .iter()
            .find(|(path, contents, _)| path.exists() && !unchanged(path, contents))
    {
        bail!(
            "{} already exists; pass --renew to replace the files atomically",
            path.display()
        );
    }
    for (path, contents, mode) in &files {
        if unchanged(path, contents) {
            continue;
        }
        if replace {
            store::replace_atomic(path, contents.as_bytes(), *mode)?;
        } else {
            store::write_new(path, contents.as_bytes(), *mode)?;
        }
    }
    Ok(files.into_iter().map(|(path, _, _)| path).collect())
}

/// A validity of `days` from now, refused when it would outlive the issuing CA.
fn within_issuer(issuer: &CaDir, days: i64) -> anyhow::Result<Validity> {
    let validity = Validity::days(days);
    if validity.not_after > issuer.info.not_after {
        bail!(
            "the certificate would outlive its issuer \"{}\" (valid until {}); use --days {} or less",
            issuer.info.subject,
            rfc3339(issuer.info.not_after),
            issuer.info.days_left().max(1)
        );
    }
    Ok(validity)
}

/// Refuses names outside the issuing CA's name constraints, DNS names and IP addresses alike:
/// the proxy would reject them.
fn check_name_constraints(dir: &CaDir, names: &[String]) -> anyhow::Result<()> {
    let constraints = NameConstraints::of(dir.ca.cert())
        .map_err(|e| anyhow!("{}: {e}", dir.dir.join(store::CA_CERT).display()))?;
    for name in names {
        if let Some(reason) = constraints.refusal(name) {
            bail!(
                "{name:?} is outside the names \"{}\" may issue for ({constraints}): {reason}; \
                 the proxy would refuse it",
                dir.info.subject
            );
        }
    }
    Ok(())
}

fn revoke(issuer: &Path, target: &RevokeTarget, reason: Reason) -> anyhow::Result<()> {
    let mut dir = CaDir::open(issuer)?;
    let now = OffsetDateTime::now_utc();
    let wanted_serial = target.serial.as_deref().map(normalize_serial);
    let mut revoked = Vec::new();
    for entry in &mut dir.entries {
        let hit = match (&wanted_serial, &target.name) {
            (Some(serial), _) => &entry.serial == serial,
            (None, Some(name)) => {
                entry.names.first() == Some(name) && entry.status == Status::Valid
            }
            (None, None) => false,
        };
        if hit && !matches!(entry.status, Status::Revoked { .. }) {
            entry.status = Status::Revoked {
                at: now,
                reason: reason.name(),
            };
            revoked.push(format!("{} ({})", entry.serial, entry.names.join(",")));
        }
    }
    if revoked.is_empty() {
        bail!(
            "no unrevoked certificate in {} matches",
            dir.dir.join(store::INDEX).display()
        );
    }
    dir.save()?;
    for line in revoked {
        println!("revoked {line}: {}", reason.name());
    }
    let flag = if dir.info.is_self_signed() {
        "--root"
    } else {
        "--ca"
    };
    println!(
        "Publish it: trustgate pki crl {flag} {} --out FILE",
        issuer.display()
    );
    Ok(())
}

fn crl(issuer: &Path, out: &Path, days: i64) -> anyhow::Result<()> {
    let dir = CaDir::open(issuer)?;
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::new();
    for entry in &dir.entries {
        if let Status::Revoked { at, reason } = &entry.status {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&decode_hex(&entry.serial)?),
                revocation_time: *at,
                reason_code: Reason::from_name(reason).map(Reason::code),
                invalidity_date: None,
            });
        }
    }
    let number = dir.next_crl_number()?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(days),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(dir.ca.issuer())?;
    store::replace_atomic(out, crl.pem()?.as_bytes(), 0o644)?;
    println!(
        "wrote CRL #{number} of \"{}\" to {}: {} revoked, next update {}",
        dir.info.subject,
        out.display(),
        params.revoked_certs.len(),
        rfc3339(params.next_update)
    );
    Ok(())
}

fn list(issuer: &Path) -> anyhow::Result<()> {
    let dir = CaDir::open(issuer)?;
    println!("certificates issued by \"{}\":", dir.info.subject);
    println!(
        "{:<32} {:<32} {:>9}  {:<10} KIND",
        "NAME", "SERIAL", "DAYS LEFT", "STATUS"
    );
    for entry in &dir.entries {
        let days = super::inspect::days_until(entry.not_after);
        println!(
            "{:<32} {:<32} {:>9}  {:<10} {}",
            entry.names.join(","),
            entry.serial,
            days,
            entry.state(),
            entry.kind.as_str()
        );
    }
    Ok(())
}

fn inspect(files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} is not valid PEM", file.display()))?;
        if certs.is_empty() && !bytes.starts_with(b"-----") {
            certs.push(CertificateDer::from(bytes.clone()));
        }
        if certs.is_empty() {
            bail!("{} holds no certificate", file.display());
        }
        for (i, cert) in certs.iter().enumerate() {
            let info =
                CertInfo::parse(cert).map_err(|e| anyhow!("{} #{}: {e}", file.display(), i + 1))?;
            // What a CA may vouch for; a leaf has no name constraints and shows no line.
            let names = match NameConstraints::of(cert) {
                Ok(constraints) if constraints.is_empty() => String::new(),
                Ok(constraints) => format!("\n  names:       {constraints}"),
                Err(e) => format!("\n  names:       {e}"),
            };
            println!("{} #{}:\n{info}{names}\n", file.display(), i + 1);
        }
        if crate::tls::holds_private_key(&bytes) {
            println!("{} also holds a PRIVATE KEY (not shown)\n", file.display());
        }
    }
    Ok(())
}

fn normalize_serial(serial: &str) -> String {
    serial
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

fn decode_hex(hex: &str) -> anyhow::Result<Vec<u8>> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("serial {hex:?} is not hex");
    }
    if !hex.len().is_multiple_of(2) {
        bail!("serial {hex:?} has an odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| anyhow!("serial {hex:?} is not hex"))
        })
        .collect()
}

/// Keeps CA keys out of every folder the proxy's config names.
struct KeyGuard {
    config: Option<PathBuf>,
    folders: Vec<PathBuf>,
}

impl KeyGuard {
    fn new(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        let config = explicit.or_else(|| {
            let default = PathBuf::from("trustgate.toml");
            default.exists().then_some(default)
        });
        let folders = match &config {
            Some(path) => Config::named_folders(path)
                .map_err(|e| anyhow!("cannot read the proxy config to protect its folders:\n{e}"))?
                .iter()
                .map(|f| resolve(f))
                .collect(),
            None => Vec::new(),
        };
        Ok(Self { config, folders })
    }

    /// Refuses `out` when it is, or lies inside, a folder the proxy config names.
    fn check(&self, out: &Path) -> anyhow::Result<()> {
        if self.config.is_none() {
            eprintln!(
                "warning: no proxy config known (--proxy-config, $TRUSTGATE_CONFIG or \
                 ./trustgate.toml), so nothing checks that {} is outside the proxy's folders",
                out.display()
            );
        }
        let target = resolve(out);
        if let (Some(config), Some(folder)) = (
            &self.config,
            self.folders.iter().find(|f| target.starts_with(f)),
        ) {
            bail!(
                "refusing to write a CA private key into {}: {} is a folder the proxy config {} \
                 names, and CA keys must never reach the proxy or its image; choose a folder \
                 outside it",
                out.display(),
                folder.display(),
                config.display()
            );
        }
        Ok(())
    }
}

/// An absolute path with symlinks resolved as far as it exists, so `a/../b` and links compare
/// by where they really point.
fn resolve(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // `..` in a part that does not exist yet would survive canonicalize below: apply it first,
    // as the kernel will when the folder is created.
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let absolute = normal;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}
