//! The `pki` command line: what each command takes, checked by clap before anything runs.

use super::*;

/// Validity in days: at least one, at most a century (past that, dates overflow).
pub(super) fn days(raw: &str) -> Result<i64, String> {
    match raw.parse::<i64>() {
        Ok(days) if (1..=36_500).contains(&days) => Ok(days),
        _ => Err(format!("{raw:?} is not a number of days from 1 to 36500")),
    }
}

/// `trustgate pki ...`
#[derive(Debug, Args)]
pub struct PkiArgs {
    /// The proxy's config file: CA private keys are never written into a folder it names.
    /// Default: $TRUSTGATE_CONFIG, else ./trustgate.toml when it exists.
    #[arg(long, global = true, env = "TRUSTGATE_CONFIG")]
    pub proxy_config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: PkiCommand,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the root CA (self-signed; keyCertSign + cRLSign). Its folder belongs in offline
    /// storage: it is needed only to sign intermediates and the root's CRL.
    InitRoot {
        /// New folder for the root: ca.crt, ca.key (0600), index.txt.
        #[arg(long)]
        out: PathBuf,
        /// The root's common name.
        #[arg(long, default_value = "trustgate internal root CA")]
        cn: String,
        #[arg(long, default_value_t = 3650, value_parser = days)]
        days: i64,
        #[arg(long, value_enum, default_value_t)]
        key_type: KeyType,
    },
    /// Create an intermediate CA signed by the root (path length 0: it signs leaves only).
    ///
    /// With --permit-dns or --permit-ip, X.509 name constraints limit the intermediate to those
    /// DNS suffixes and IP ranges, and a name type with none given is excluded entirely: it can
    /// then never vouch for a public name such as a bank's, or a public IP, even if its key leaks.
    InitIntermediate {
        /// The root's folder (from init-root).
        #[arg(long)]
        root: PathBuf,
        /// New folder for the intermediate: ca.crt, ca.key (0600), root.crt, index.txt.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "trustgate internal intermediate CA")]
        cn: String,
        #[arg(long, default_value_t = 1825, value_parser = days)]
        days: i64,
        /// A DNS suffix the intermediate may issue for (repeatable), e.g. `internal` or
        /// `backend-api`.
        #[arg(long = "permit-dns", value_name = "SUFFIX")]
        permit_dns: Vec<String>,
        /// An IP range the intermediate may issue for (repeatable), e.g. `10.0.0.0/8`,
        /// `fd00::/8`, or one address. Without it, a constrained intermediate issues for no IP.
        #[arg(long = "permit-ip", value_name = "CIDR")]
        permit_ip: Vec<IpNet>,
        #[arg(long, value_enum, default_value_t)]
        key_type: KeyType,
    },
    /// Issue a leaf with a fresh key: server.crt (leaf + intermediate), server.key (0600) and
    /// ca-chain.pem (intermediate + root); with --client, client.crt and client.key.
    Issue {
        /// The intermediate's folder.
        #[arg(long)]
        ca: PathBuf,
        /// The service name (the Docker service): SNI and the SAN the proxy checks.
        #[arg(long, required_unless_present = "client", conflicts_with = "client")]
        name: Option<String>,
        /// Issue a client certificate (EKU clientAuth) for NAME instead: the proxy's mTLS identity.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Another DNS name for the SAN (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address for the SAN (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[arg(long, default_value_t = 90, value_parser = days)]
        days: i64,
        /// Folder for the files.
        #[arg(long)]
        out: PathBuf,
        /// Issue even though a live certificate for the name exists (it is marked superseded),
        /// and replace existing files atomically.
        #[arg(long)]
        renew: bool,
        #[arg(long, value_enum, default_value_t)]
        key_type: KeyType,
    },
    /// Mark a certificate revoked in the index; publish it with `pki crl`.
    Revoke {
        #[command(flatten)]
        issuer: IssuerDir,
        #[command(flatten)]
        target: RevokeTarget,
        #[arg(long, value_enum, default_value_t = Reason::Unspecified)]
        reason: Reason,
    },
    /// Write the CA's certificate revocation list (PEM).
    Crl {
        #[command(flatten)]
        issuer: IssuerDir,
        #[arg(long)]
        out: PathBuf,
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = 7, value_parser = days)]
        days: i64,
    },
    /// Re-issue every leaf under --certs that expires within --within: new key, files replaced
    /// atomically. Idempotent: safe from cron or CI/CD.
    Renew {
        #[arg(long)]
        ca: PathBuf,
        /// Folder searched (recursively) for server.crt and client.crt.
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30d")]
        within: Duration,
        /// Validity of the new certificates (default: the old certificate's lifetime).
        #[arg(long, value_parser = days)]
        days: Option<i64>,
    },
    /// List what a CA issued: name, serial, days left, status.
    List {
        #[command(flatten)]
        issuer: IssuerDir,
    },
    /// Describe every certificate in the given PEM (or DER) files.
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct IssuerDir {
    /// An intermediate's folder.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The root's folder (for intermediates).
    #[arg(long)]
    root: Option<PathBuf>,
}

impl IssuerDir {
    pub(super) fn path(&self) -> &Path {
        // The clap group makes exactly one of the two present.
        self.ca
            .as_deref()
            .or(self.root.as_deref())
            .unwrap_or(Path::new("."))
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// The serial number (hex, as `pki list` shows it).
    #[arg(long)]
    pub(super) serial: Option<String>,
    /// Every live certificate for this name.
    #[arg(long)]
    pub(super) name: Option<String>,
}

/// RFC 5280 revocation reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl Reason {
    pub(super) fn code(self) -> RevocationReason {
        match self {
            Self::Unspecified => RevocationReason::Unspecified,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::CaCompromise => RevocationReason::CaCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }

    pub(super) fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    pub(super) fn from_name(name: &str) -> Option<Self> {
        Self::from_str(name, true).ok()
    }
}
