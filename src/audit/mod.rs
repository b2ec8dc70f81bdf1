//! `trustgate audit`: catch the ways an internal PKI deployment goes wrong, one finding per
//! mistake, each with severity, what, where and the fix.
//!
//! - [`files`]: CA keys next to the proxy, public-looking trust bundles (upstream and client),
//!   expiring certificates (the proxy's client identities too), a readable listener key.
//! - [`probe`]: connect to every upstream as the proxy would and judge what it presents.
//! - [`revocation`]: CRLs past or near their nextUpdate, issuing CAs without a CRL.
//! - [`compose`]: the Docker Compose topology: internal networks, published ports, mounts.

pub mod compose;
pub mod files;
mod named;
pub mod probe;
pub mod revocation;

use std::fmt;
use std::path::PathBuf;

use clap::ValueEnum;
use serde::Serialize;

use crate::config::Config;

/// How bad a finding is. High and critical fail the audit (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Medium,
    High,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "INFO",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        })
    }
}

/// One mistake (or, at info level, one fact worth seeing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier, e.g. `ca-key-exposed`, for scripts and suppressions.
    pub id: &'static str,
    pub what: String,
    #[serde(rename = "where")]
    pub location: String,
    pub fix: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        id: &'static str,
        what: impl Into<String>,
        location: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            id,
            what: what.into(),
            location: location.into(),
            fix: fix.into(),
        }
    }
}

/// The two trust sides of the proxy, each with its own anchors and CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `[upstream_tls]`: the backends' certificates.
    Upstream,
    /// `[server.client_auth]`: the clients' certificates.
    Client,
}

impl Side {
    /// The TOML table, as findings name it.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Self::Upstream => "[upstream_tls]",
            Self::Client => "[server.client_auth]",
        }
    }

    /// The adjective in findings: "the upstream CRL", "the client CRL".
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Client => "client",
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// What to audit (also the `trustgate audit` command line).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The proxy's configuration file.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Also check this Docker Compose file's networks, ports and mounts.
    #[arg(long)]
    pub compose: Option<PathBuf>,
    /// The compose service that runs the proxy.
    #[arg(long, default_value = "proxy")]
    pub proxy_service: String,
    /// Connect to every upstream as the proxy would and check what it presents.
    #[arg(long)]
    pub probe: bool,
    /// Certificates expiring within this many days are reported.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(0..=36_500))]
    pub warn_days: i64,
    /// The system trust store to compare upstream anchors with (default: the distribution's).
    #[arg(long)]
    pub system_store: Option<PathBuf>,
}

/// Every finding, worst first.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing high or critical was found.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.severity < Severity::High)
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.to_string(),
            Format::Json => {
                #[derive(Serialize)]
                struct Json<'a> {
                    passed: bool,
                    findings: &'a [Finding],
                }
                serde_json::to_string_pretty(&Json {
                    passed: self.passed(),
                    findings: &self.findings,
                })
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(
                f,
                "{:<8} {}: {}",
                finding.severity, finding.id, finding.what
            )?;
            writeln!(f, "         where: {}", finding.location)?;
            if !finding.fix.is_empty() {
                writeln!(f, "         fix:   {}", finding.fix)?;
            }
        }
        let count = |s: Severity| self.findings.iter().filter(|f| f.severity == s).count();
        write!(
            f,
            "{} critical, {} high, {} medium, {} info: {}",
            count(Severity::Critical),
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Info),
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Runs every check the options ask for.
pub async fn run(options: &Options) -> Report {
    let mut findings = Vec::new();
    let config = match Config::load(&options.config) {
        Ok(config) => Some(config),
        Err(e) => {
            findings.push(Finding::new(
                Severity::Critical,
                "config-invalid",
                format!("the config does not load, so the proxy would not start:\n{e}"),
                options.config.display().to_string(),
                "fix each problem listed (trustgate check -c FILE shows them)",
            ));
            None
        }
    };
    let known_cas = files::check(&options.config, config.as_ref(), options, &mut findings);
    let presented = match config.as_ref().filter(|_| options.probe) {
        Some(config) => probe::check(config, options.warn_days, &mut findings).await,
        None => Vec::new(),
    };
    revocation::check(&options.config, config.as_ref(), &presented, &mut findings);
    if let Some(compose) = &options.compose {
        compose::check(compose, &options.proxy_service, &known_cas, &mut findings);
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Report { findings }
}

/// When a certificate is due: high and "expired … ago" once expired, medium and "expires in …"
/// within `warn_days`, else `None`. Every expiry finding of the audit is decided here.
pub(crate) fn due(
    info: &crate::pki::inspect::CertInfo,
    warn_days: i64,
) -> Option<(Severity, String)> {
    let left = info.not_after - time::OffsetDateTime::now_utc();
    if left.is_negative() {
        Some((Severity::High, format!("expired {} ago", span(-left))))
    } else if left < time::Duration::days(warn_days) {
        Some((Severity::Medium, format!("expires in {}", span(left))))
    } else {
        None
    }
}

/// A finding for a certificate that is expired or expires within `warn_days`.
pub(crate) fn expiry(
    info: &crate::pki::inspect::CertInfo,
    role: &str,
    location: &str,
    warn_days: i64,
) -> Option<Finding> {
    let (severity, when) = due(info, warn_days)?;
    let (id, fix) = if severity == Severity::High {
        (
            "cert-expired",
            "issue a new certificate (trustgate pki renew) and restart what serves it",
        )
    } else {
        (
            "cert-expiring",
            "renew it now (trustgate pki renew --within ...) and restart what serves it",
        )
    };
    Some(Finding::new(
        severity,
        id,
        format!("{role} \"{}\" {when}", info.subject),
        location,
        fix,
    ))
}

fn span(duration: time::Duration) -> String {
    crate::pki::inspect::human_span(duration.whole_seconds().unsigned_abs())
}
