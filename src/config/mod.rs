//! Configuration: read the TOML file, check every value, load every file it names and build the
//! runtime types the proxy uses. `trustgate check` and `trustgate run` share this one loader.
//!
//! The loader does not stop at the first mistake: it collects every problem, each with the file,
//! line and key, so one `check` run shows everything to fix.

mod balancing;
mod certificates;
mod error;
mod file;
mod routes;
mod settings;
mod summary;
mod trust;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use toml::Spanned;

pub use self::certificates::NamedCert;
pub use self::error::{ConfigError, Problem};
use self::file::ConfigFile;
pub use self::settings::{Limits, Timeouts};
use crate::routing::RouteTable;
use crate::tls;
use crate::tls::client::Identity;
use crate::tls::revocation::CrlSet;
use crate::tls::verify::{ClientVerifier, ServerVerifier};

/// A fully loaded, valid configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was loaded from.
    pub path: PathBuf,
    pub server: Server,
    pub upstream_tls: UpstreamTls,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub routes: RouteTable,
    /// `[admin]`: the operators' listener, if any.
    pub admin: Option<Admin>,
    /// `[log]`: what is logged; reloadable.
    pub log: Log,
    /// What loads but deserves attention (a CRL close to its nextUpdate, an expired one in use
    /// under `crl_expired = "allow"`): printed by `check`, logged at startup and reload.
    pub warnings: Vec<String>,
}

/// `[server]`: the public listener.
#[derive(Debug)]
pub struct Server {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The public certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub tls: Arc<ServerConfig>,
    /// How long in-flight requests may run after SIGTERM / SIGINT.
    pub shutdown_grace: Duration,
    /// Client connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Threads of the async runtime that serves connections (`trustgate run` only).
    pub workers: usize,
    /// Reload when the config file or a file it names changes.
    pub watch: bool,
    /// `[server.client_auth]`: client certificates, when asked for.
    pub client_auth: Option<ClientAuth>,
}

/// `[admin]`: health, readiness and reloads for operators, on its own plain-HTTP listener that
/// shares nothing with the public one.
#[derive(Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Every request must carry `Authorization: Bearer <token>` when set.
    pub token: Option<Arc<str>>,
}

/// `[log]`: what the proxy logs.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    /// `access`: one `trustgate::access` line per request (default on). Errors and warnings are
    /// logged either way.
    pub access: bool,
}

/// The shortest admin token accepted: guessing it must be out of reach.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// `[server.client_auth]`: the anchors and CRLs client certificates are verified against,
/// never the upstream CA unless named here too.
#[derive(Debug)]
pub struct ClientAuth {
    pub ca_files: Vec<PathBuf>,
    pub anchors: Vec<CertificateDer<'static>>,
    pub crls: CrlSet,
    /// `mode = "require"`: no valid certificate, no TLS session.
    pub mandatory: bool,
    /// Forward the presented intermediates as `Client-Cert-Chain`.
    pub forward_chain: bool,
    pub verifier: Arc<ClientVerifier>,
    /// SHA-256 over anchors, CRLs and policy: a change re-checks open client connections.
    pub trust_id: [u8; 32],
}

/// `[upstream_tls]`: the internal CA, the only trust anchors for upstreams.
#[derive(Debug)]
pub struct UpstreamTls {
    pub ca_files: Vec<PathBuf>,
    pub anchors: Vec<CertificateDer<'static>>,
    /// `crl` and the revocation policy; empty: no revocation checking.
    pub crls: CrlSet,
    /// Trusts `anchors` only, checks revocation against `crls`.
    pub verifier: Arc<ServerVerifier>,
    /// SHA-256 over anchors, CRLs and policy: a change re-checks open upstream connections.
    pub trust_id: [u8; 32],
    /// `client_cert` / `client_key`: the proxy's default identity towards backends.
    pub identity: Option<Arc<Identity>>,
}

/// Default for `[server] workers`: one connection thread per CPU the process may run on (its
/// affinity mask and cgroup quota included, so `taskset` and `docker --cpus` are honoured).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Default for `[server] max_connections`: far below the usual file-descriptor limits, so the
/// proxy keeps descriptors for its upstream connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default for `[server] shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Config {
    /// Loads `path` and every file it names. Relative paths resolve against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(path, &read(path)?)
    }

    /// Loads a configuration from TOML text; `path` names it in errors and anchors relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut loader = Loader {
            path,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            text,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let parsed = match toml::from_str::<ConfigFile>(text) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                let key = e.span().and_then(|span| key_at(text, span.start));
                loader.report(e.span(), key, e.message().trim());
                None
            }
        };
        let config = parsed.and_then(|file| loader.build(file));
        match config {
            Some(config) if loader.problems.is_empty() => Ok(config),
            _ => {
                let mut problems = loader.problems;
                problems.sort_by_key(|p| p.line.unwrap_or(0));
                Err(ConfigError { problems })
            }
        }
    }

    /// The folders a config file names (its own, and those of every certificate, key and CA
    /// file), read from the TOML alone so it works before those files exist. The PKI commands
    /// refuse to write CA keys into any of them, so a CA key can never be mounted into the proxy.
    pub fn named_folders(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
        let file = parse_only(path)?;
        let dir = Self::folder(path);
        let upstream = &file.upstream_tls;
        let optional =
            |value: &Option<Spanned<String>>| value.as_ref().map(|v| v.get_ref().clone());
        let many = |value: Option<&Spanned<file::OneOrMany>>| {
            value.map_or_else(Vec::new, |v| v.get_ref().as_slice().to_vec())
        };
        let mut raw: Vec<String> = vec![
            file.server.cert.get_ref().clone(),
            file.server.key.get_ref().clone(),
        ];
        raw.extend(many(Some(&upstream.ca)));
        raw.extend(many(upstream.crl.as_ref()));
        raw.extend(optional(&upstream.client_cert));
        raw.extend(optional(&upstream.client_key));
        if let Some(auth) = &file.server.client_auth {
            raw.extend(many(Some(&auth.ca)));
            raw.extend(many(auth.crl.as_ref()));
        }
        for route in &file.routes {
            raw.extend(optional(&route.upstream_client_cert));
            raw.extend(optional(&route.upstream_client_key));
        }
        let named = raw
            .iter()
            .map(|raw| dir.join(raw))
            .filter_map(|file| file.parent().map(Path::to_path_buf));
        let mut folders = vec![dir.clone()];
        for folder in named {
            if !folders.contains(&folder) {
                folders.push(folder);
            }
        }
        Ok(folders)
    }

    /// The `[upstream_tls] ca` files a config file names, resolved, read from the TOML alone: the
    /// audit judges the trust bundle even when the config does not load.
    pub fn named_ca_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
        let file = parse_only(path)?;
        // Resolved as the loader does, so the audit names them the same either way.
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(file
            .upstream_tls
            .ca
            .get_ref()
            .as_slice()
            .iter()
            .filter(|raw| !raw.trim().is_empty())
            .map(|raw| dir.join(raw))
            .collect())
    }

    /// The `[server.client_auth] ca` files a config file names (none without that table),
    /// resolved, read from the TOML alone: the audit judges the client trust bundle even when the
    /// loader refuses it.
    pub fn named_client_ca_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
        let file = parse_only(path)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let Some(auth) = &file.server.client_auth else {
            return Ok(Vec::new());
        };
        Ok(auth
            .ca
            .get_ref()
            .as_slice()
            .iter()
            .filter(|raw| !raw.trim().is_empty())
            .map(|raw| dir.join(raw))
            .collect())
    }

    /// Every file this config was built from: itself, the public certificate and key, the CA
    /// files. A reload is due when one of them changes.
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [&self.path, &self.server.cert, &self.server.key]
            .into_iter()
            .chain(&self.upstream_tls.ca_files)
            .chain(self.upstream_tls.crls.crls.iter().map(|crl| &crl.path))
            .cloned()
            .collect();
        if let Some(auth) = &self.server.client_auth {
            files.extend(auth.ca_files.iter().cloned());
            files.extend(auth.crls.crls.iter().map(|crl| crl.path.clone()));
        }
        let identities = self.upstream_tls.identity.iter().chain(
            self.routes
                .iter()
                .filter_map(|r| r.client_identity.as_ref()),
        );
        for identity in identities {
            files.push(identity.cert_file.clone());
            files.push(identity.key_file.clone());
        }
        files.extend(self.admin.iter().filter_map(|a| a.token_file.clone()));
        let mut seen = std::collections::HashSet::new();
        files.retain(|file| seen.insert(file.clone()));
        files
    }

    /// The folder of a config file: its relative paths start there (`.` for a bare file name).
    pub fn folder(path: &Path) -> PathBuf {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// A human summary of what was loaded, printed by `trustgate check`.
    pub fn summary(&self) -> impl fmt::Display + '_ {
        summary::Summary(self)
    }
}

struct Loader<'a> {
    path: &'a Path,
    dir: PathBuf,
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Loader<'_> {
    fn build(&mut self, file: ConfigFile) -> Option<Config> {
        let client_auth_on = file.server.client_auth.is_some();
        let server = self.server(file.server);
        let upstream_tls = self.upstream_tls(file.upstream_tls);
        let timeouts = self.timeouts(&file.timeouts);
        let limits = self.limits(&file.limits);
        let default_identity = upstream_tls.as_ref().and_then(|u| u.identity.clone());
        let routes = self.routes(file.routes, default_identity, client_auth_on, &limits);
        let admin = file.admin.map(|table| self.admin(table));
        Some(Config {
            path: self.path.to_path_buf(),
            server: server?,
            upstream_tls: upstream_tls?,
            timeouts,
            limits,
            routes: routes?,
            admin: match admin {
                None => None,
                Some(admin) => Some(admin?),
            },
            log: Log {
                access: file.log.access.unwrap_or(true),
            },
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn server(&mut self, table: file::ServerTable) -> Option<Server> {
        let listen = table.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            format!(
                "{:?} is not an address:port such as \"0.0.0.0:8443\"",
                table.listen.get_ref()
            )
        });
        let listen = self.check(&table.listen, "server.listen", listen);
        let shutdown_grace = self.duration(
            table.shutdown_grace.as_ref(),
            "server.shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
        );
        let max_connections = self.count(
            table.max_connections.as_ref(),
            "server.max_connections",
            1..=1_000_000,
            DEFAULT_MAX_CONNECTIONS as u64,
        );
        let workers = self.count(
            table.workers.as_ref(),
            "server.workers",
            1..=1024,
            default_workers() as u64,
        );
        let cert = self.resolve(table.cert.get_ref());
        let key = self.resolve(table.key.get_ref());
        let chain = tls::load_certs(&cert);
        let chain = self.check(&table.cert, "server.cert", chain);
        let private_key = tls::load_key(&key);
        let private_key = self.check(&table.key, "server.key", private_key);
        // `None`: the table is there but wrong; `Some(None)`: no client auth.
        let client_auth = match table.client_auth {
            None => Some(None),
            Some(auth) => self.client_auth(auth).map(Some),
        };
        let verifier = client_auth
            .as_ref()
            .and_then(|auth| auth.as_ref().map(|auth| auth.verifier.clone()));
        let tls = match (&chain, private_key) {
            (Some(chain), Some(private_key)) => {
                match tls::server::config(chain.clone(), private_key, verifier) {
                    Ok(tls) => Some(tls),
                    Err(rustls::Error::InconsistentKeys(_)) => {
                        let reason = format!(
                            "the private key in {} does not match the certificate in {}",
                            key.display(),
                            cert.display()
                        );
                        self.report(Some(table.key.span()), Some("server.key".into()), reason);
                        None
                    }
                    Err(rustls::Error::InvalidCertificate(e)) => {
                        let reason =
                            format!("{} holds an unusable certificate: {e:?}", cert.display());
                        self.report(Some(table.cert.span()), Some("server.cert".into()), reason);
                        None
                    }
                    Err(other) => {
                        let reason = format!(
                            "cannot use {} with {}: {other}",
                            cert.display(),
                            key.display()
                        );
                        self.report(Some(table.key.span()), Some("server.key".into()), reason);
                        None
                    }
                }
            }
            _ => None,
        };
        Some(Server {
            listen: listen?,
            cert,
            key,
            chain: chain?,
            tls: tls?,
            shutdown_grace,
            max_connections: max_connections? as usize,
            workers: workers? as usize,
            watch: table.watch.unwrap_or(true),
            client_auth: client_auth?,
        })
    }

    fn admin(&mut self, table: file::AdminTable) -> Option<Admin> {
        let listen = table.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            format!(
                "{:?} is not an address:port such as \"127.0.0.1:9901\"",
                table.listen.get_ref()
            )
        });
        let listen = self.check(&table.listen, "admin.listen", listen)?;
        let Some(raw) = &table.token_file else {
            if !listen.ip().is_loopback() {
                self.report(
                    Some(table.listen.span()),
                    Some("admin.listen".into()),
                    format!(
                        "{listen} is not a loopback address: set admin.token_file so that every \
                         request must carry the token, or listen on 127.0.0.1"
                    ),
                );
                return None;
            }
            return Some(Admin {
                listen,
                token_file: None,
                token: None,
            });
        };
        let path = self.resolve(raw.get_ref());
        let token = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                let token = text.trim();
                if token.len() < MIN_ADMIN_TOKEN || token.chars().any(|c| c.is_whitespace()) {
                    Err(format!(
                        "{} must hold one token of at least {MIN_ADMIN_TOKEN} characters without \
                         spaces (e.g. openssl rand -hex 32)",
                        path.display()
                    ))
                } else {
                    Ok(Arc::<str>::from(token))
                }
            });
        let token = self.check(raw, "admin.token_file", token)?;
        Some(Admin {
            listen,
            token_file: Some(path),
            token: Some(token),
        })
    }

    /// Keeps the value, or records the error against `spanned`'s line and `key`.
    fn check<S, T, E: fmt::Display>(
        &mut self,
        spanned: &Spanned<S>,
        key: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        result
            .map_err(|e| self.report(Some(spanned.span()), Some(key.into()), e))
            .ok()
    }

    fn report(
        &mut self,
        span: Option<Range<usize>>,
        key: Option<String>,
        reason: impl fmt::Display,
    ) {
        self.problems.push(Problem {
            file: self.path.to_path_buf(),
            line: span.map(|s| self.line(s.start)),
            key,
            reason: reason.to_string(),
        });
    }

    fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    fn resolve(&self, raw: &str) -> PathBuf {
        let path = Path::new(raw);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![Problem {
            file: path.into(),
            line: None,
            key: None,
            reason: format!("cannot read the config file: {e}"),
        }],
    })
}

/// Parses `path` without checking values or loading the files it names.
fn parse_only(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = read(path)?;
    toml::from_str::<ConfigFile>(&text).map_err(|e| ConfigError {
        problems: vec![Problem {
            file: path.into(),
            line: e.span().map(|span| line_of(&text, span.start)),
            key: e.span().and_then(|span| key_at(&text, span.start)),
            reason: e.message().trim().to_owned(),
        }],
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key (`server.listen`, `route[1].prefix`) of the `key = value` line holding
/// `offset`, for parse errors that point at a value without naming its key.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let mut table = String::new();
    let mut array_counts: HashMap<&str, usize> = HashMap::new();
    for header in text[..line_start].lines().map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            let name = name.0.trim();
            let count = array_counts.entry(name).or_default();
            table = format!("{name}[{count}]");
            *count += 1;
        } else if let Some(name) = header.strip_prefix('[').and_then(|r| r.split_once(']')) {
            table = name.0.trim().to_owned();
        }
    }
    Some(if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    })
}

#[cfg(test)]
mod tests;
