//! Configuration: read the TOML file, check every value, load every file it names and build the
//! runtime types the proxy uses. `trustgate check` and `trustgate run` share this one loader.
//!
//! The loader does not stop at the first mistake: it collects every problem, each with the file,
//! line and key, so one `check` run shows everything to fix.

mod balancing;
mod error;
mod file;
mod settings;
mod summary;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, UnixTime};
use toml::Spanned;

pub use self::error::{ConfigError, Problem};
use self::file::ConfigFile;
pub use self::settings::{Limits, Timeouts};
use crate::routing::{Prefix, Route, RouteTable, Upstream};
use crate::tls;
use crate::tls::client::Identity;
use crate::tls::revocation::{Crl, CrlSet, Depth, Policy};
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

/// One certificate the configuration names, with its role. [`Config::certificates`] is the one
/// set the metrics (`trustgate_cert_not_after_timestamp_seconds`) and the audit read.
#[derive(Debug, Clone)]
pub struct NamedCert {
    /// `public`, `anchor`, `upstream_client` or `client_ca`.
    pub role: &'static str,
    /// Where it was read from (the files of a bundle, joined).
    pub file: String,
    /// Its place in its file: 0 for a chain's leaf.
    pub index: usize,
    pub der: CertificateDer<'static>,
    /// For `upstream_client`: the routes presenting it (empty: `[upstream_tls] client_cert`).
    pub routes: Vec<String>,
}

/// Default for `[server] workers`: one runtime thread per CPU the process may run on (its
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

    /// Every certificate this configuration names: the public chain, the upstream anchors, each
    /// distinct client identity for upstreams (with the routes presenting it), the client CAs.
    pub fn certificates(&self) -> Vec<NamedCert> {
        let joined = |files: &[PathBuf]| {
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut certs = Vec::new();
        let mut add =
            |role, file: String, ders: &[CertificateDer<'static>], routes: Vec<String>| {
                for (index, der) in ders.iter().enumerate() {
                    certs.push(NamedCert {
                        role,
                        file: file.clone(),
                        index,
                        der: der.clone(),
                        routes: routes.clone(),
                    });
                }
            };
        add(
            "public",
            self.server.cert.display().to_string(),
            &self.server.chain,
            Vec::new(),
        );
        let anchors_file = joined(&self.upstream_tls.ca_files);
        add(
            "anchor",
            anchors_file,
            &self.upstream_tls.anchors,
            Vec::new(),
        );
        let global = self.upstream_tls.identity.as_ref();
        if let Some(identity) = global {
            let leaf = &identity.chain[..identity.chain.len().min(1)];
            add(
                "upstream_client",
                identity.cert_file.display().to_string(),
                leaf,
                Vec::new(),
            );
        }
        // Each route's own identity once, with every route presenting it.
        let mut overrides: Vec<(&Identity, Vec<String>)> = Vec::new();
        for route in self.routes.iter() {
            let Some(identity) = route.client_identity.as_ref() else {
                continue;
            };
            if global.is_some_and(|global| Arc::ptr_eq(global, identity)) {
                continue;
            }
            let prefix = route.prefix.to_string();
            match overrides
                .iter_mut()
                .find(|(seen, _)| seen.cert_file == identity.cert_file)
            {
                Some((_, prefixes)) => prefixes.push(prefix),
                None => overrides.push((identity, vec![prefix])),
            }
        }
        for (identity, routes) in overrides {
            let leaf = &identity.chain[..identity.chain.len().min(1)];
            add(
                "upstream_client",
                identity.cert_file.display().to_string(),
                leaf,
                routes,
            );
        }
        if let Some(auth) = &self.server.client_auth {
            add(
                "client_ca",
                joined(&auth.ca_files),
                &auth.anchors,
                Vec::new(),
            );
        }
        certs
    }

    /// Every CRL in use: the upstream side's, then the client side's.
    pub fn crls(&self) -> impl Iterator<Item = &Crl> {
        let client = self.server.client_auth.iter().flat_map(|a| &a.crls.crls);
        self.upstream_tls.crls.crls.iter().chain(client)
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

/// The revocation keys `[upstream_tls]` and `[server.client_auth]` share.
struct RevocationKeys<'a> {
    table: &'static str,
    crl: Option<&'a Spanned<file::OneOrMany>>,
    revocation: Option<&'a Spanned<String>>,
    unknown_status: Option<&'a Spanned<String>>,
    crl_expired: Option<&'a Spanned<String>>,
}

/// How close to its nextUpdate a CRL gets a warning.
const CRL_WARNING: i64 = 48 * 3600;

impl Loader<'_> {
    fn build(&mut self, file: ConfigFile) -> Option<Config> {
        let client_auth_on = file.server.client_auth.is_some();
        let server = self.server(file.server);
        let upstream_tls = self.upstream_tls(file.upstream_tls);
        let timeouts = self.timeouts(&file.timeouts);
        let limits = self.limits(&file.limits);
        let default_identity = upstream_tls.as_ref().and_then(|u| u.identity.clone());
        let routes = self.routes(file.routes, default_identity, client_auth_on);
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

    fn client_auth(&mut self, table: file::ClientAuthTable) -> Option<ClientAuth> {
        let mandatory = match table.mode.as_ref() {
            None => Some(true),
            Some(mode) => self.choice(
                mode,
                "server.client_auth.mode",
                &[("require", true), ("optional", false)],
            ),
        };
        let anchors = self.anchors(&table.ca, "server.client_auth.ca");
        let crls = self.revocation(RevocationKeys {
            table: "server.client_auth",
            crl: table.crl.as_ref(),
            revocation: table.revocation.as_ref(),
            unknown_status: table.unknown_status.as_ref(),
            crl_expired: table.crl_expired.as_ref(),
        });
        let ((ca_files, anchors), crls, mandatory) = (anchors?, crls?, mandatory?);
        let verifier = tls::server::client_verifier(&anchors, &crls, mandatory);
        let verifier = self.check(&table.ca, "server.client_auth.ca", verifier)?;
        let mode = if mandatory {
            "client require"
        } else {
            "client optional"
        };
        Some(ClientAuth {
            trust_id: tls::client::trust_id(&anchors, &crls, mode),
            ca_files,
            anchors,
            crls,
            mandatory,
            forward_chain: table.forward_chain.unwrap_or(false),
            verifier,
        })
    }

    /// The CA files of `ca`, each loaded and the bundle judged as trust anchors.
    fn anchors(
        &mut self,
        ca: &Spanned<file::OneOrMany>,
        key: &str,
    ) -> Option<(Vec<PathBuf>, Vec<CertificateDer<'static>>)> {
        let files = ca.get_ref().as_slice();
        if files.is_empty() {
            self.report(
                Some(ca.span()),
                Some(key.into()),
                format!(
                    "names no file: the {} CA certificate is required",
                    if key.starts_with("upstream") {
                        "internal"
                    } else {
                        "client"
                    }
                ),
            );
            return None;
        }
        let mut bundle = Vec::new();
        let mut complete = true;
        for raw in files {
            if raw.trim().is_empty() {
                self.report(
                    Some(ca.span()),
                    Some(key.into()),
                    "an empty path: name the CA certificate file",
                );
                complete = false;
                continue;
            }
            let path = self.resolve(raw);
            match self.check(ca, key, tls::load_ca_certs(&path)) {
                Some(certs) => bundle.push((path, certs)),
                None => complete = false,
            }
        }
        if !complete {
            return None;
        }
        let system = tls::anchors::SystemStore::distribution();
        let errors = tls::anchors::judge(&bundle, &system, time::OffsetDateTime::now_utc());
        if !errors.is_empty() {
            for error in errors {
                self.report(Some(ca.span()), Some(key.into()), error);
            }
            return None;
        }
        let (ca_files, anchors): (Vec<_>, Vec<_>) = bundle.into_iter().unzip();
        Some((ca_files, anchors.into_iter().flatten().collect()))
    }

    /// `crl` and the policy keys. Without `crl` there is no revocation checking, so the policy
    /// keys alone are a mistake. An expired CRL under `crl_expired = "deny"` is an error (every
    /// certificate it covers would be refused); one close to its nextUpdate is a warning.
    fn revocation(&mut self, keys: RevocationKeys<'_>) -> Option<CrlSet> {
        let table = keys.table;
        let key = |name: &str| format!("{table}.{name}");
        let depth = keys.revocation.map(|v| {
            self.choice(
                v,
                &key("revocation"),
                &[("chain", Depth::Chain), ("leaf", Depth::Leaf)],
            )
        });
        let allow = [("deny", false), ("allow", true)];
        let unknown = keys
            .unknown_status
            .map(|v| self.choice(v, &key("unknown_status"), &allow));
        let expired = keys
            .crl_expired
            .map(|v| self.choice(v, &key("crl_expired"), &allow));
        let policy = Policy {
            depth: depth.unwrap_or(Some(Depth::Chain))?,
            allow_unknown: unknown.unwrap_or(Some(false))?,
            allow_expired: expired.unwrap_or(Some(false))?,
        };
        let Some(crl) = keys.crl else {
            let set = [
                ("revocation", keys.revocation),
                ("unknown_status", keys.unknown_status),
                ("crl_expired", keys.crl_expired),
            ];
            let mut misplaced = false;
            for (name, value) in set {
                if let Some(value) = value {
                    misplaced = true;
                    self.report(
                        Some(value.span()),
                        Some(key(name)),
                        format!("has no effect without {table}.crl: name the CRL files to check"),
                    );
                }
            }
            return (!misplaced).then(CrlSet::default);
        };
        let files = crl.get_ref().as_slice();
        if files.is_empty() {
            self.report(
                Some(crl.span()),
                Some(key("crl")),
                "names no file: remove the key to turn revocation checking off",
            );
            return None;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut crls = Vec::new();
        let mut complete = true;
        for raw in files {
            let path = self.resolve(raw);
            let Some(loaded) = self.check(crl, &key("crl"), tls::revocation::load(&path)) else {
                complete = false;
                continue;
            };
            for one in loaded {
                let next = one.next_update.unwrap_or(i64::MAX);
                let when = |seconds: i64| crate::pki::inspect::human_span(seconds.unsigned_abs());
                if next < now && !policy.allow_expired {
                    self.report(
                        Some(crl.span()),
                        Some(key("crl")),
                        format!(
                            "{}: the CRL from \"{}\" expired {} ago, and crl_expired = \"deny\" \
                             would refuse every certificate it covers; publish a new one \
                             (trustgate pki crl)",
                            path.display(),
                            one.issuer_name,
                            when(now - next)
                        ),
                    );
                    complete = false;
                } else if next < now {
                    self.warnings.push(format!(
                        "{}: the CRL from \"{}\" expired {} ago and is still used \
                         (crl_expired = \"allow\")",
                        path.display(),
                        one.issuer_name,
                        when(now - next)
                    ));
                } else if next - now < CRL_WARNING {
                    self.warnings.push(format!(
                        "{}: the CRL from \"{}\" reaches its nextUpdate in {}; publish the next \
                         one before then",
                        path.display(),
                        one.issuer_name,
                        when(next - now)
                    ));
                }
                // webpki checks a certificate against the first CRL from its issuer only: a
                // revocation in a second one (a newer list next to the old) would not count.
                if let Some(first) = crls
                    .iter()
                    .find(|c: &&tls::revocation::Crl| c.same_issuer(&one))
                {
                    self.report(
                        Some(crl.span()),
                        Some(key("crl")),
                        format!(
                            "{} and {} both hold a CRL from \"{}\": only the first would be \
                             checked; keep only the current one",
                            first.path.display(),
                            path.display(),
                            one.issuer_name
                        ),
                    );
                    complete = false;
                }
                crls.push(one);
            }
        }
        complete.then_some(CrlSet { crls, policy })
    }

    /// One of `options`, by name.
    fn choice<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options
            .iter()
            .find(|(name, _)| *name == value.get_ref().as_str())
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            self.report(
                Some(value.span()),
                Some(key.into()),
                format!("{:?} is not one of {}", value.get_ref(), names.join(", ")),
            );
        }
        found
    }

    /// A client certificate and key for upstreams: both keys or neither.
    fn identity(
        &mut self,
        cert: Option<&Spanned<String>>,
        key: Option<&Spanned<String>>,
        names: (&str, &str),
    ) -> Option<Option<Arc<Identity>>> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Some(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(given), None) | (None, Some(given)) => {
                self.report(
                    Some(given.span()),
                    Some(if cert.is_some() { names.0 } else { names.1 }.into()),
                    format!("{} and {} go together: set both", names.0, names.1),
                );
                return None;
            }
        };
        let cert_file = self.resolve(cert.get_ref());
        let key_file = self.resolve(key.get_ref());
        let chain = tls::load_certs(&cert_file);
        let chain = self.check(cert, names.0, chain);
        let private_key = tls::load_key(&key_file);
        let private_key = self.check(key, names.1, private_key);
        let identity = Identity::new(cert_file, key_file, chain?, private_key?, UnixTime::now());
        self.check(cert, names.0, identity)
            .map(|i| Some(Arc::new(i)))
    }

    fn upstream_tls(&mut self, table: file::UpstreamTlsTable) -> Option<UpstreamTls> {
        let anchors = self.anchors(&table.ca, "upstream_tls.ca");
        let crls = self.revocation(RevocationKeys {
            table: "upstream_tls",
            crl: table.crl.as_ref(),
            revocation: table.revocation.as_ref(),
            unknown_status: table.unknown_status.as_ref(),
            crl_expired: table.crl_expired.as_ref(),
        });
        let identity = self.identity(
            table.client_cert.as_ref(),
            table.client_key.as_ref(),
            ("upstream_tls.client_cert", "upstream_tls.client_key"),
        );
        let ((ca_files, anchors), crls, identity) = (anchors?, crls?, identity?);
        let verifier = tls::client::verifier(&anchors, &crls);
        let verifier = self.check(&table.ca, "upstream_tls.ca", verifier)?;
        Some(UpstreamTls {
            trust_id: tls::client::trust_id(&anchors, &crls, "upstream"),
            ca_files,
            anchors,
            crls,
            verifier,
            identity,
        })
    }

    fn routes(
        &mut self,
        entries: Vec<file::RouteEntry>,
        default_identity: Option<Arc<Identity>>,
        client_auth_on: bool,
    ) -> Option<RouteTable> {
        if entries.is_empty() {
            self.report(
                None,
                Some("route".into()),
                "no [[route]] is defined: every request would get 404",
            );
            return None;
        }
        let mut routes = Vec::new();
        let mut prefixes: HashMap<String, usize> = HashMap::new();
        let mut complete = true;
        for (i, entry) in entries.into_iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            let prefix = self.check(
                &entry.prefix,
                &key("prefix"),
                Prefix::parse(entry.prefix.get_ref()),
            );
            let upstream = self.check(
                &entry.upstream,
                &key("upstream"),
                Upstream::parse(entry.upstream.get_ref()),
            );
            let balancing = self.balancing(&entry, &key);
            let identity = self.identity(
                entry.upstream_client_cert.as_ref(),
                entry.upstream_client_key.as_ref(),
                (&key("upstream_client_cert"), &key("upstream_client_key")),
            );
            let Some(identity) = identity else {
                complete = false;
                continue;
            };
            let require_client_cert = entry.require_client_cert.unwrap_or(false);
            if require_client_cert && !client_auth_on {
                self.report(
                    Some(entry.prefix.span()),
                    Some(key("require_client_cert")),
                    "no client can present a certificate: add [server.client_auth] (mode = \
                     \"optional\" lets routes decide)",
                );
                complete = false;
            }
            let (Some(prefix), Some(upstream)) = (prefix, upstream) else {
                complete = false;
                continue;
            };
            let line = self.line(entry.prefix.span().start);
            if let Some(first) = prefixes.insert(prefix.as_str().to_owned(), line) {
                self.report(
                    Some(entry.prefix.span()),
                    Some(key("prefix")),
                    format!("prefix \"{prefix}\" is already routed on line {first}"),
                );
                complete = false;
            }
            routes.push(Route {
                prefix,
                upstream,
                balancing,
                preserve_host: entry.preserve_host.unwrap_or(true),
                client_identity: identity.or_else(|| default_identity.clone()),
                require_client_cert,
            });
        }
        complete.then(|| RouteTable::new(routes))
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
