//! The command line. Parsing only; the work happens in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "trustgate",
    version,
    about = "TLS reverse proxy that trusts only your internal CA for upstreams"
)]
pub struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in the foreground until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Load the configuration and every file it names, exactly as `run` does; print a summary,
    /// or every problem found (exit code 1).
    Check {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show the whole trust chain working: throwaway internal CA, echo backend and proxy.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Folder for the demo's certificates and config (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Find the mistakes that undo an internal PKI: CA keys near the proxy, public trust
    /// anchors, shared or mismatched certificates, expiry, exposed backends. Exit code 1 when
    /// anything high or critical is found.
    Audit {
        #[command(flatten)]
        options: trustgate::audit::Options,
        /// Findings as text for people or JSON for scripts.
        #[arg(long, value_enum, default_value_t)]
        format: trustgate::audit::Format,
    },
    /// Run the internal CA: offline root, intermediate, one certificate per service.
    Pki(trustgate::pki::commands::PkiArgs),
    /// Print the trust status of a running proxy (its admin listener's /trust): every
    /// certificate with its days left, and what each upstream presented.
    Status {
        /// The admin listener, e.g. http://127.0.0.1:9901.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// The admin token, when [admin] token_file is set.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the JSON as served instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Run the HTTPS echo backend: it answers each request with what it received. Reloads its
    /// certificate and key on SIGHUP and when they change.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// Certificate chain (leaf first), PEM.
        #[arg(long)]
        cert: PathBuf,
        /// Private key, PEM.
        #[arg(long)]
        key: PathBuf,
        /// Require a client certificate issued under this CA (PEM) and print its subject in
        /// each answer: a backend that demands mutual TLS.
        #[arg(long)]
        client_ca: Option<PathBuf>,
    },
}
