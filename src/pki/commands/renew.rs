//! `pki renew`: re-issue the leaves that expire within a window, atomically, idempotently.

use super::*;

pub(super) fn renew(
    ca: &Path,
    certs: &Path,
    within: Duration,
    days: Option<i64>,
) -> anyhow::Result<()> {
    let mut dir = CaDir::open(ca)?;
    let mut found = Vec::new();
    find_leaves(certs, 0, &mut found)?;
    if found.is_empty() {
        bail!("no server.crt or client.crt under {}", certs.display());
    }
    found.sort();
    let window = time::Duration::try_from(within).map_err(|e| anyhow!("--within: {e}"))?;
    let (mut renewed, mut unchanged) = (0, 0);
    for path in found {
        let pem = store::read_string(&path)?;
        let leaf = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or_else(|| anyhow!("{} holds no certificate", path.display()))?
            .with_context(|| format!("{} is not valid PEM", path.display()))?;
        let info = CertInfo::parse(&leaf).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let Some(index) = dir.entries.iter().position(|e| e.serial == info.serial) else {
            println!(
                "skipped   {}: not issued by \"{}\"",
                path.display(),
                dir.info.subject
            );
            continue;
        };
        match dir.entries[index].status {
            Status::Revoked { .. } => {
                println!(
                    "skipped   {}: revoked; issue a new one with pki issue",
                    path.display()
                );
                continue;
            }
            Status::Superseded => {
                println!(
                    "skipped   {}: superseded by a newer certificate for {}; remove this stale copy",
                    path.display(),
                    info.name()
                );
                continue;
            }
            Status::Valid => {}
        }
        if info.not_after - OffsetDateTime::now_utc() > window {
            println!(
                "unchanged {} ({}): {} days left",
                path.display(),
                info.name(),
                info.days_left()
            );
            unchanged += 1;
            continue;
        }
        let (kind, usage) = match dir.entries[index].kind {
            Kind::Client => (Kind::Client, Usage::Client),
            _ => (Kind::Server, Usage::Server),
        };
        let lifetime =
            days.unwrap_or_else(|| (info.not_after - info.not_before).whole_days().max(1));
        if time::Duration::days(lifetime) <= window {
            println!(
                "warning   {}: a {lifetime}-day certificate is always within the {}-day window, \
                 so every run renews it; pass --days or a shorter --within",
                path.display(),
                window.whole_days()
            );
        }
        let validity = within_issuer(&dir, lifetime)?;
        let names = dir.entries[index].names.clone();
        let key_type = match info.key_type.as_str() {
            "ECDSA P-384" => KeyType::P384,
            "Ed25519" => KeyType::Ed25519,
            t if t.starts_with("RSA") => KeyType::Rsa3072,
            _ => KeyType::P256,
        };
        let issued = dir.ca.issue_with(
            &LeafRequest {
                names,
                validity,
                usage,
            },
            key_type,
        )?;
        let new_info = CertInfo::parse(&issued.cert).map_err(|e| anyhow!(e))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        write_leaf(&dir, folder, usage, &issued.cert_pem, &issued.key_pem, true)?;
        dir.entries[index].status = Status::Superseded;
        dir.entries.push(Entry::from_cert(&new_info, kind));
        // Saved after each renewal, so an interruption leaves files and index consistent.
        dir.save()?;
        println!(
            "renewed   {} ({}): serial {} -> {}, valid until {}",
            path.display(),
            info.name(),
            info.serial,
            new_info.serial,
            rfc3339(new_info.not_after)
        );
        renewed += 1;
    }
    println!("{renewed} renewed, {unchanged} unchanged");
    if renewed > 0 {
        println!(
            "trustgate run and trustgate echo reload renewed files by themselves (mount their \
             folders, not the files); restart other services that use them."
        );
    }
    Ok(())
}

fn find_leaves(folder: &Path, depth: usize, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(folder).with_context(|| format!("cannot read {}", folder.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            find_leaves(&path, depth + 1, found)?;
        } else if matches!(
            path.file_name().and_then(|n| n.to_str()),
            Some("server.crt" | "client.crt")
        ) {
            found.push(path);
        }
    }
    Ok(())
}
