//! Revocation findings, on both trust sides: CRLs past or near their nextUpdate (`crl-expired`,
//! `crl-expiring`) and, under `revocation = "chain"`, issuing CAs that publish no CRL the proxy
//! reads (`crl-missing`). CRLs are matched to CAs by name: a CRL's issuer DN against a
//! certificate's subject DN, as webpki matches them at handshake time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use super::named::Named;
use super::probe::Presented;
use super::{Finding, Severity, Side, span};
use crate::config::Config;
use crate::pki::inspect::CertInfo;
use crate::tls::revocation::{Crl, CrlSet, Depth};

/// How close to its nextUpdate a CRL is reported: the window in which `trustgate check` warns.
const EXPIRING: i64 = 48 * 3600;

/// The CRLs of both sides, and with `presented` (from `--probe`) the intermediates upstreams
/// present. When the config does not load, the CRL files its TOML names are still judged: an
/// expired one under `crl_expired = "deny"` is why it does not.
pub fn check(
    config_path: &Path,
    config: Option<&Config>,
    presented: &[Presented],
    findings: &mut Vec<Finding>,
) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let Some(config) = config else {
        let named = Named::read(config_path);
        for (side, path) in &named.crls {
            let allow_expired = named.allow_expired.contains(side);
            // A file that does not load is already in `config-invalid`.
            for crl in crate::tls::revocation::load(path).into_iter().flatten() {
                findings.extend(next_update(*side, &crl, allow_expired, now));
            }
        }
        return;
    };
    let upstream = &config.upstream_tls;
    let mut sides = vec![(
        Side::Upstream,
        &upstream.crls,
        &upstream.anchors,
        &upstream.ca_files,
        presented,
    )];
    if let Some(auth) = &config.server.client_auth {
        // Client chains are not seen by the audit: only the anchors are judged.
        sides.push((Side::Client, &auth.crls, &auth.anchors, &auth.ca_files, &[]));
    }
    for (side, crls, anchors, ca_files, presented) in sides {
        for crl in &crls.crls {
            findings.extend(next_update(side, crl, crls.policy.allow_expired, now));
        }
        // No CRL at all is no revocation checking, a choice; a CRL for some CAs only is a gap.
        if !crls.is_empty() && crls.policy.depth == Depth::Chain {
            missing(side, crls, anchors, ca_files, presented, findings);
        }
    }
}

/// `crl-expired` / `crl-expiring` for one CRL at `now` (seconds since the epoch).
fn next_update(side: Side, crl: &Crl, allow_expired: bool, now: i64) -> Option<Finding> {
    let next = crl.next_update?;
    let (side_word, issuer) = (side.word(), &crl.issuer);
    let fix = format!(
        "publish a fresh CRL now (trustgate pki crl --ca CADIR --out {}; --root ROOTDIR for a \
         root's) and re-publish it from cron well before every nextUpdate",
        crl.path.display()
    );
    let location = crl.path.display().to_string();
    if crl.expired_at(now) {
        let ago = span(time::Duration::seconds(now - next));
        let what = if allow_expired {
            format!(
                "the {side_word} CRL from \"{issuer}\" passed its nextUpdate {ago} ago and is \
                 still used (crl_expired = \"allow\"): revocations published since are not seen"
            )
        } else {
            format!(
                "the {side_word} CRL from \"{issuer}\" passed its nextUpdate {ago} ago: with \
                 crl_expired = \"deny\" every certificate it covers is refused, so the config \
                 does not load"
            )
        };
        Some(Finding::new(
            Severity::High,
            "crl-expired",
            what,
            location,
            fix,
        ))
    } else if next - now < EXPIRING {
        let left = span(time::Duration::seconds(next - now));
        let then = if allow_expired {
            "it is used stale (crl_expired = \"allow\") and new revocations are not seen"
        } else {
            "every certificate it covers is refused (crl_expired = \"deny\")"
        };
        Some(Finding::new(
            Severity::Medium,
            "crl-expiring",
            format!(
                "the {side_word} CRL from \"{issuer}\" reaches its nextUpdate in {left}; after \
                 that {then}"
            ),
            location,
            fix,
        ))
    } else {
        None
    }
}

/// `crl-missing`: under `revocation = "chain"`, every certificate but the anchor is checked, so
/// every anchor (a root issues the intermediates) and every intermediate the upstreams present
/// must have published a CRL the proxy reads.
///
/// High under `unknown_status = "deny"`: every certificate that CA issued is refused, an outage
/// of that side. Medium under `"allow"`: the proxy works, but revoking one of those certificates
/// changes nothing, which the operator accepted for unknown issuers when choosing "allow".
fn missing(
    side: Side,
    crls: &CrlSet,
    anchors: &[CertificateDer<'static>],
    ca_files: &[PathBuf],
    presented: &[Presented],
    findings: &mut Vec<Finding>,
) {
    let published: HashSet<&str> = crls.crls.iter().map(|crl| crl.issuer.as_str()).collect();
    let (severity, consequence) = if crls.policy.allow_unknown {
        (
            Severity::Medium,
            "unknown_status = \"allow\" lets those certificates pass unchecked, so revoking one \
             has no effect",
        )
    } else {
        (
            Severity::High,
            "unknown_status = \"deny\" refuses every one of those certificates",
        )
    };
    let table = side.table();
    let anchors: Vec<CertInfo> = anchors
        .iter()
        .filter_map(|der| CertInfo::parse(der).ok())
        .collect();
    let ca_files = ca_files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut reported: HashSet<String> = HashSet::new();
    for anchor in &anchors {
        if published.contains(anchor.subject.as_str()) || !reported.insert(anchor.subject.clone()) {
            continue;
        }
        let (issues, flag, or_leaf) = if anchor.is_self_signed() {
            (
                " (a root issues the intermediates)",
                "--root ROOTDIR",
                ", or set revocation = \"leaf\" if intermediates are never revoked",
            )
        } else {
            ("", "--ca CADIR", "")
        };
        findings.push(Finding::new(
            severity,
            "crl-missing",
            format!(
                "revocation = \"chain\" checks every certificate the {} anchor \"{}\" \
                 issues{issues}, but {table} crl holds no CRL from it: {consequence}",
                side.word(),
                anchor.subject
            ),
            ca_files.clone(),
            format!(
                "publish its CRL (trustgate pki crl {flag} --out FILE) and add the file to \
                 {table} crl{or_leaf}"
            ),
        ));
    }
    for one in presented {
        for intermediate in intermediates(&one.chain, &anchors) {
            if published.contains(intermediate.subject.as_str())
                || !reported.insert(intermediate.subject.clone())
            {
                continue;
            }
            findings.push(Finding::new(
                severity,
                "crl-missing",
                format!(
                    "revocation = \"chain\" checks every certificate the intermediate \"{}\" \
                     issues (the upstream presents it), but {table} crl holds no CRL from it: \
                     {consequence}",
                    intermediate.subject
                ),
                one.location.clone(),
                format!(
                    "publish its CRL (trustgate pki crl --ca CADIR --out FILE) and add the file \
                     to {table} crl"
                ),
            ));
        }
    }
}

/// The CA certificates of a presented chain (leaf excluded) that chain up to `anchors` by name:
/// the intermediates the proxy checks. Anchors sent along and foreign CAs are left out.
fn intermediates<'a>(chain: &'a [CertInfo], anchors: &[CertInfo]) -> Vec<&'a CertInfo> {
    let mut known: HashSet<&str> = anchors.iter().map(|a| a.subject.as_str()).collect();
    let candidates: Vec<&CertInfo> = chain
        .iter()
        .skip(1)
        .filter(|c| c.is_ca && !known.contains(c.subject.as_str()))
        .collect();
    let mut found: Vec<&CertInfo> = Vec::new();
    // Each pass admits the intermediates issued by one admitted before, in whatever order the
    // upstream sent them; a pass that admits none ends it.
    for _ in 0..candidates.len() {
        let admitted: Vec<&CertInfo> = candidates
            .iter()
            .copied()
            .filter(|c| known.contains(c.issuer.as_str()))
            .filter(|c| !found.iter().any(|f| f.subject == c.subject))
            .collect();
        if admitted.is_empty() {
            break;
        }
        for c in admitted {
            known.insert(c.subject.as_str());
            found.push(c);
        }
    }
    found
}
