//! `--compose`: the Docker Compose topology the architecture asks for. Backends only on
//! `internal: true` networks, only the proxy publishing a port, the proxy on an internal network,
//! no CA key mounted anywhere, and no certificate shared by several services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use super::files::{self, KnownCa, PemFile};
use super::{Finding, Severity};

/// One service as far as the audit cares.
#[derive(Debug, Default)]
struct Service {
    networks: Vec<String>,
    ports: Vec<String>,
    /// Host paths bind-mounted into the service, resolved against the compose file's folder.
    mounts: Vec<PathBuf>,
}

/// Runs the compose checks against `path`.
pub fn check(path: &Path, proxy: &str, known_cas: &[KnownCa], findings: &mut Vec<Finding>) {
    let location = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            findings.push(Finding::new(
                Severity::High,
                "compose-unreadable",
                format!("cannot read the compose file: {e}"),
                location,
                "pass the compose file the deployment uses",
            ));
            return;
        }
    };
    let doc = match YamlLoader::load_from_str(&text) {
        Ok(mut docs) if !docs.is_empty() => docs.swap_remove(0),
        Ok(_) => Yaml::Null,
        Err(e) => {
            findings.push(Finding::new(
                Severity::High,
                "compose-invalid",
                format!("the compose file is not valid YAML: {e}"),
                location,
                "fix the YAML (docker compose config validates it)",
            ));
            return;
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let internal: BTreeSet<String> = entries(&doc["networks"])
        .filter(|(_, net)| net["internal"].as_bool() == Some(true))
        .map(|(name, _)| name)
        .collect();
    // Top-level secrets and configs with `file:` are bind mounts too.
    let files_of = |section: &str| -> BTreeMap<String, PathBuf> {
        entries(&doc[section])
            .filter_map(|(name, node)| Some((name, host_path(node["file"].as_str()?, base, true)?)))
            .collect()
    };
    let secrets = files_of("secrets");
    let configs = files_of("configs");
    let services: BTreeMap<String, Service> = entries(&doc["services"])
        .map(|(name, node)| (name, service(&merged(node), base, &secrets, &configs)))
        .collect();

    match services.get(proxy) {
        None => findings.push(Finding::new(
            Severity::Medium,
            "compose-no-proxy",
            format!("no service named {proxy:?}: the proxy's own checks were skipped"),
            location.clone(),
            "name the proxy service with --proxy-service",
        )),
        Some(service) if !service.networks.iter().any(|n| internal.contains(n)) => {
            findings.push(Finding::new(
                Severity::High,
                "proxy-not-internal",
                format!("the proxy {proxy:?} is on no internal network, so it cannot reach the backends there"),
                format!("{location}: services.{proxy}.networks"),
                "attach the proxy to the backends' network declared with internal: true",
            ));
        }
        Some(_) => {}
    }
    for (name, service) in services.iter().filter(|(name, _)| name.as_str() != proxy) {
        if !service.ports.is_empty() {
            findings.push(Finding::new(
                Severity::High,
                "backend-publishes-port",
                format!(
                    "service {name:?} publishes {}: only the proxy may be reachable from outside",
                    service.ports.join(", ")
                ),
                format!("{location}: services.{name}.ports"),
                format!("remove ports: from {name}; reach it through the proxy"),
            ));
        }
        for network in service.networks.iter().filter(|n| !internal.contains(*n)) {
            findings.push(Finding::new(
                Severity::High,
                "backend-not-internal",
                format!("service {name:?} is on network {network:?}, which is not internal: true"),
                format!("{location}: services.{name}.networks"),
                format!("put {name} only on networks declared with internal: true"),
            ));
        }
    }
    mounts(&services, known_cas, &location, findings);
}

fn mounts(
    services: &BTreeMap<String, Service>,
    known_cas: &[KnownCa],
    location: &str,
    findings: &mut Vec<Finding>,
) {
    let mounted: Vec<(&String, Vec<PemFile>)> = services
        .iter()
        .map(|(name, service)| (name, files::scan(&service.mounts)))
        .collect();
    let all: Vec<&PemFile> = mounted.iter().flat_map(|(_, files)| files).collect();
    let cas: Vec<KnownCa> = known_cas
        .iter()
        .cloned()
        .chain(all.iter().flat_map(|file| {
            file.certs.iter().filter(|c| c.is_ca).map(|info| KnownCa {
                info: info.clone(),
                path: file.path.clone(),
            })
        }))
        .collect();
    // Leaf certificate fingerprint -> (services, a file).
    let mut leaves: BTreeMap<String, (BTreeSet<&String>, PathBuf, String)> = BTreeMap::new();
    for (name, files) in &mounted {
        files::ca_keys(
            files,
            &cas,
            &format!("mounted into the container {name:?}"),
            findings,
        );
        for file in files {
            for leaf in file.certs.iter().filter(|c| !c.is_ca).take(1) {
                leaves
                    .entry(leaf.sha256.clone())
                    .or_insert_with(|| (BTreeSet::new(), file.path.clone(), leaf.subject.clone()))
                    .0
                    .insert(*name);
            }
        }
    }
    for (services, path, subject) in leaves.values().filter(|(s, _, _)| s.len() > 1) {
        let names: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
        findings.push(Finding::new(
            Severity::High,
            "shared-certificate",
            format!(
                "the certificate \"{subject}\" is mounted into {}: one leak compromises all",
                names.join(", ")
            ),
            format!("{location}: {}", path.display()),
            "issue one certificate per service (trustgate pki issue --name SERVICE) and mount \
             each only into its service",
        ));
    }
}

/// `node` with YAML merge keys (`<<: *anchor`) applied, as Compose applies them: the node's own
/// keys win over merged ones.
fn merged(node: &Yaml) -> Yaml {
    let Some(hash) = node.as_hash() else {
        return node.clone();
    };
    let merge_key = Yaml::String("<<".into());
    let Some(sources) = hash.get(&merge_key) else {
        return node.clone();
    };
    let mut out = yaml_rust2::yaml::Hash::new();
    let sources = match sources {
        Yaml::Array(list) => list.clone(),
        other => vec![other.clone()],
    };
    for source in sources {
        if let Yaml::Hash(source) = merged(&source) {
            out.extend(source);
        }
    }
    for (key, value) in hash.iter().filter(|(key, _)| **key != merge_key) {
        out.insert(key.clone(), value.clone());
    }
    Yaml::Hash(out)
}

fn service(
    node: &Yaml,
    base: &Path,
    secrets: &BTreeMap<String, PathBuf>,
    configs: &BTreeMap<String, PathBuf>,
) -> Service {
    let networks = match &node["networks"] {
        Yaml::Array(list) => list
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        Yaml::Hash(_) => entries(&node["networks"]).map(|(name, _)| name).collect(),
        // Compose attaches a service without networks to the project's "default" network.
        _ => vec!["default".to_owned()],
    };
    let ports = node["ports"]
        .as_vec()
        .map(|ports| ports.iter().map(scalar).collect())
        .unwrap_or_default();
    let mut mounts: Vec<PathBuf> = node["volumes"]
        .as_vec()
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(|v| bind_source(v, base))
                .collect()
        })
        .unwrap_or_default();
    for (section, files) in [("secrets", secrets), ("configs", configs)] {
        for used in node[section].as_vec().into_iter().flatten() {
            // `- name` or `- source: name`
            let name = used.as_str().or_else(|| used["source"].as_str());
            mounts.extend(name.and_then(|name| files.get(name)).cloned());
        }
    }
    Service {
        networks,
        ports,
        mounts,
    }
}

/// The host path of a bind mount (short `src:dst[:mode]` or long syntax); named volumes: none.
fn bind_source(volume: &Yaml, base: &Path) -> Option<PathBuf> {
    match volume {
        // In the short syntax a bare name is a named volume; a path starts with / . or ~.
        Yaml::String(short) => host_path(short.split(':').next()?, base, false),
        Yaml::Hash(_) if volume["type"].as_str() == Some("bind") => {
            host_path(volume["source"].as_str()?, base, true)
        }
        _ => None,
    }
}

/// A host path as Compose resolves it: absolute, `~/` from $HOME, else relative to the compose
/// file's folder (`bare_is_path`: also without a leading `./`).
fn host_path(source: &str, base: &Path, bare_is_path: bool) -> Option<PathBuf> {
    if source.starts_with('/') {
        Some(PathBuf::from(source))
    } else if let Some(rest) = source.strip_prefix("~/") {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(rest))
    } else if source.starts_with('.') || bare_is_path {
        Some(base.join(source))
    } else {
        None
    }
}

fn entries(node: &Yaml) -> impl Iterator<Item = (String, &Yaml)> {
    node.as_hash()
        .into_iter()
        .flat_map(|hash| hash.iter())
        .filter_map(|(key, value)| key.as_str().map(|k| (k.to_owned(), value)))
}

fn scalar(node: &Yaml) -> String {
    match node {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Hash(_) => {
            let published = scalar(&node["published"]);
            let target = scalar(&node["target"]);
            format!("{published}:{target}")
        }
        other => format!("{other:?}"),
    }
}
