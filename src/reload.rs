//! Reloading a running gateway: all or nothing, one at a time.
//!
//! [`Reloader::reload`] loads the config and every file it names through the same loader as
//! startup and `check`, builds the whole new [`Generation`], and only then swaps it in. Any
//! problem keeps the old generation serving and is logged as one `error` line per problem, in
//! `check`'s `file:line: key: reason` form. Inputs whose bytes did not change are not reloaded.
//!
//! Triggers ([`Triggers`]): SIGHUP, and with `[server] watch` a change in the folders holding the
//! config and the files it names. They pass through a channel of capacity one served by a single
//! task, so reloads never overlap and a trigger during a reload becomes one more reload after it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::balance::Resolve;
use crate::config::{Config, ConfigError, Problem};
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::pki::inspect::{CertInfo, rfc3339};
use crate::watch::FolderWatch;

/// How long triggers are gathered before a reload starts: an editor's or a deploy tool's burst of
/// writes becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new generation serves; `changes` says what changed.
    Applied { generation: u64, changes: String },
    /// The config and every file it names are byte for byte what is serving.
    Unchanged,
}

/// Settings read once at startup: the listener and its admission tables are built from them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fixed {
    listen: std::net::SocketAddr,
    shutdown_grace: Duration,
    max_connections: usize,
    workers: usize,
    max_connections_per_ip: usize,
    upstream_per_ip: usize,
    admin_listen: Option<std::net::SocketAddr>,
}

impl Fixed {
    fn of(config: &Config) -> Self {
        Self {
            listen: config.server.listen,
            shutdown_grace: config.server.shutdown_grace,
            max_connections: config.server.max_connections,
            workers: config.server.workers,
            max_connections_per_ip: config.limits.max_connections_per_ip,
            upstream_per_ip: config.limits.upstream_per_ip,
            admin_listen: config.admin.as_ref().map(|a| a.listen),
        }
    }

    /// One problem per setting that differs in `new`: applying it needs a restart.
    fn refuse_changes(&self, new: &Fixed, path: &std::path::Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut differs = |key: &str, old: String, new: String| {
            if old != new {
                problems.push(Problem {
                    file: path.to_path_buf(),
                    line: None,
                    key: Some(key.to_owned()),
                    reason: format!(
                        "changed from {old} to {new}: this setting takes a restart to change; \
                         nothing of this reload was applied"
                    ),
                });
            }
        };
        differs(
            "server.listen",
            self.listen.to_string(),
            new.listen.to_string(),
        );
        differs(
            "server.shutdown_grace",
            humantime::format_duration(self.shutdown_grace).to_string(),
            humantime::format_duration(new.shutdown_grace).to_string(),
        );
        differs(
            "server.max_connections",
            self.max_connections.to_string(),
            new.max_connections.to_string(),
        );
        differs(
            "server.workers",
            self.workers.to_string(),
            new.workers.to_string(),
        );
        differs(
            "limits.max_connections_per_ip",
            self.max_connections_per_ip.to_string(),
            new.max_connections_per_ip.to_string(),
        );
        differs(
            "limits.upstream_per_ip",
            self.upstream_per_ip.to_string(),
            new.upstream_per_ip.to_string(),
        );
        let admin = |listen: Option<std::net::SocketAddr>| {
            listen.map_or_else(|| "none".to_owned(), |a| a.to_string())
        };
        differs(
            "admin.listen",
            admin(self.admin_listen),
            admin(new.admin_listen),
        );
        problems
    }
}

/// What the serving generation was built from, to tell what a reload changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    /// SHA-256 over the config file and every file it names.
    inputs: [u8; 32],
    inputs_paths: Vec<PathBuf>,
    watch: bool,
    cert: String,
    anchors: Vec<String>,
    /// Each CRL in use (both sides): issuer, thisUpdate and revoked count.
    crls: Vec<String>,
    routes: BTreeMap<String, String>,
}

impl Facts {
    fn of(config: &Config) -> Self {
        let cert = match config.server.chain.first().map(|c| CertInfo::parse(c)) {
            Some(Ok(info)) => format!(
                "serial {} valid until {}",
                info.serial,
                rfc3339(info.not_after)
            ),
            _ => "an unreadable certificate".to_owned(),
        };
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let mut to = route.upstream.to_string();
                let _ = write!(to, " ({}", route.balancing.discovery);
                let _ = write!(to, ", {})", route.balancing.policy);
                if !route.preserve_host {
                    to.push_str(" (host rewritten)");
                }
                (route.prefix.to_string(), to)
            })
            .collect();
        let inputs_paths = config.inputs();
        let crls = config
            .crls()
            .map(|crl| {
                format!(
                    "{} of {} ({} revoked)",
                    crl.issuer_name,
                    crate::pki::inspect::rfc3339(
                        time::OffsetDateTime::from_unix_timestamp(crl.this_update)
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                    ),
                    crl.revoked_count()
                )
            })
            .collect();
        Self {
            inputs: hash_files(&inputs_paths),
            inputs_paths,
            watch: config.server.watch,
            cert,
            anchors: config
                .upstream_tls
                .anchors
                .iter()
                .map(crate::tls::subject)
                .collect(),
            crls,
            routes,
        }
    }

    /// "public certificate: serial .. valid until ..; anchors added: ..; routes changed: .."
    fn changes_to(&self, new: &Facts) -> String {
        let mut parts = Vec::new();
        if self.cert != new.cert {
            parts.push(format!("public certificate now {}", new.cert));
        }
        let added: Vec<_> = new
            .anchors
            .iter()
            .filter(|a| !self.anchors.contains(a))
            .collect();
        let removed: Vec<_> = self
            .anchors
            .iter()
            .filter(|a| !new.anchors.contains(a))
            .collect();
        if !added.is_empty() {
            parts.push(format!("anchors added: {}", join(&added)));
        }
        if !removed.is_empty() {
            parts.push(format!("anchors removed: {}", join(&removed)));
        }
        let published: Vec<_> = new.crls.iter().filter(|c| !self.crls.contains(c)).collect();
        if !published.is_empty() {
            parts.push(format!("CRLs now {}", join(&published)));
        }
        let mut routes = Vec::new();
        for (prefix, to) in &new.routes {
            match self.routes.get(prefix) {
                None => routes.push(format!("+{prefix} -> {to}")),
                Some(old) if old != to => routes.push(format!("~{prefix} -> {to}")),
                Some(_) => {}
            }
        }
        for prefix in self.routes.keys().filter(|p| !new.routes.contains_key(*p)) {
            routes.push(format!("-{prefix}"));
        }
        if !routes.is_empty() {
            parts.push(format!("routes {}", routes.join(", ")));
        }
        if parts.is_empty() {
            "settings only (timeouts, limits or file contents)".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SHA-256 over each file's path and bytes; a file that cannot be read counts by its error.
fn hash_files(paths: &[PathBuf]) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in paths {
        context.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                context.update(&(bytes.len() as u64).to_be_bytes());
                context.update(&bytes);
            }
            Err(e) => context.update(e.to_string().as_bytes()),
        }
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(context.finish().as_ref());
    hash
}

/// Rebuilds and swaps the gateway's generation.
pub struct Reloader {
    path: PathBuf,
    current: Arc<ArcSwap<Generation>>,
    fixed: Fixed,
    /// What the serving generation was built from; the lock also makes reloads single-flight.
    serving: Mutex<Facts>,
    metrics: Arc<Metrics>,
    /// Finds the endpoints of routes that rely on DNS.
    resolver: Arc<dyn Resolve>,
}

impl Reloader {
    /// For a gateway started from `config`, whose generation is `current`.
    pub fn new(
        config: &Config,
        current: Arc<ArcSwap<Generation>>,
        metrics: Arc<Metrics>,
        resolver: Arc<dyn Resolve>,
    ) -> Self {
        Self {
            path: config.path.clone(),
            current,
            fixed: Fixed::of(config),
            serving: Mutex::new(Facts::of(config)),
            metrics,
            resolver,
        }
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Reloads now; logs the outcome (one `info` line, or one `error` line per problem).
    pub fn reload(&self) -> Result<Outcome, ConfigError> {
        let result = self.try_reload();
        match &result {
            Ok(Outcome::Applied {
                generation,
                changes,
            }) => {
                self.metrics.reloaded("applied");
                info!(generation, %changes, "reload applied");
            }
            Ok(Outcome::Unchanged) => {
                self.metrics.reloaded("unchanged");
                info!("reload: nothing changed");
            }
            Err(e) => {
                self.metrics.reloaded("refused");
                for problem in &e.problems {
                    error!(%problem, "reload refused; the previous configuration keeps serving");
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Outcome, ConfigError> {
        let started = Instant::now();
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        // Hashed before loading: a file that changes while it loads makes the next trigger differ.
        let before = hash_files(&serving.inputs_paths);
        if before == serving.inputs {
            return Ok(Outcome::Unchanged);
        }
        let config = Config::load(&self.path)?;
        for warning in &config.warnings {
            warn!(%warning, "reload");
        }
        let problems = self.fixed.refuse_changes(&Fixed::of(&config), &self.path);
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let mut facts = Facts::of(&config);
        if facts.inputs_paths == serving.inputs_paths {
            facts.inputs = before;
        }
        let previous = self.current.load_full();
        let generation = Generation::build(
            &config,
            previous.number + 1,
            Some(&previous),
            &self.metrics,
            &self.resolver,
        );
        let number = generation.number;
        let upstreams = generation.upstreams();
        self.current.store(Arc::new(generation));
        self.metrics.serving(&config, number, upstreams);
        let changes = format!(
            "{} (built in {} ms)",
            serving.changes_to(&facts),
            started.elapsed().as_millis()
        );
        *serving = facts;
        Ok(Outcome::Applied {
            generation: number,
            changes,
        })
    }

    /// The files to watch, and whether to watch them, as of the serving generation.
    fn watched(&self) -> Option<Vec<PathBuf>> {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        serving.watch.then(|| serving.inputs_paths.clone())
    }
}

/// Sends reload triggers to the one task that reloads.
#[derive(Clone, Debug)]
pub struct Triggers(mpsc::Sender<()>);

impl Triggers {
    /// A trigger channel of capacity one; its [`Batches`] goes to the one task that reloads.
    pub fn new() -> (Self, Batches) {
        let (tx, rx) = mpsc::channel::<()>(1);
        (Self(tx), Batches(rx))
    }

    /// Asks for a reload; coalesces with one already waiting.
    pub fn trigger(&self) {
        let _ = self.0.try_send(());
    }
}

/// The receiving end of [`Triggers`]: one batch per [`DEBOUNCE`] window.
#[derive(Debug)]
pub struct Batches(mpsc::Receiver<()>);

impl Batches {
    /// Waits for a trigger, then gathers those that follow within [`DEBOUNCE`]. `false` once
    /// every [`Triggers`] is dropped.
    pub async fn next(&mut self) -> bool {
        if self.0.recv().await.is_none() {
            return false;
        }
        tokio::time::sleep(DEBOUNCE).await;
        while self.0.try_recv().is_ok() {}
        true
    }
}

/// Runs reloads for `reloader` until the returned task is aborted: on SIGHUP, on a trigger, and
/// with `[server] watch` on a change in the watched folders.
pub fn spawn(reloader: Arc<Reloader>) -> (Triggers, tokio::task::JoinHandle<()>) {
    let (triggers, mut batches) = Triggers::new();
    let on_change = triggers.clone();
    let task = tokio::spawn(async move {
        let mut watching = rewatch(&reloader, None, &on_change);
        // A change made after the config was loaded but before the watch began raised no event:
        // look once (the hash makes it cheap when nothing changed).
        if watching.is_some() {
            on_change.trigger();
        }
        while batches.next().await {
            let worker = reloader.clone();
            match tokio::task::spawn_blocking(move || worker.reload()).await {
                Ok(Ok(Outcome::Applied { .. })) => {
                    watching = rewatch(&reloader, watching.take(), &on_change);
                }
                Ok(_) => {}
                Err(e) => error!(error = %e, "the reload task failed"),
            }
        }
    });
    spawn_sighup(triggers.clone());
    (triggers, task)
}

/// Watches the folders of the files the serving generation was built from (none when
/// `[server] watch = false`), replacing `old`. `old` watches until the new watch is in place, so
/// a change made meanwhile is not lost; it stays when no new watch can be made.
fn rewatch(
    reloader: &Reloader,
    old: Option<FolderWatch>,
    triggers: &Triggers,
) -> Option<FolderWatch> {
    let files = reloader.watched()?;
    let triggers = triggers.clone();
    match FolderWatch::new(&files, move || triggers.trigger()) {
        Ok(watch) => Some(watch),
        Err(e) => {
            warn!(
                error = %e,
                "cannot watch the config's files (a previous watch, if any, stays); reload with \
                 SIGHUP"
            );
            old
        }
    }
}

/// Turns SIGHUP into a reload trigger.
pub fn spawn_sighup(triggers: Triggers) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reloads come from file changes only");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            info!("received SIGHUP: reloading");
            triggers.trigger();
        }
    });
    #[cfg(not(unix))]
    drop(triggers);
}
