//! The CRL and client certificate files a config's TOML names, read without loading it. The
//! loader refuses an expired CRL under `crl_expired = "deny"` and an expired client certificate,
//! so when the config does not load, these are read here to still say which file is to blame.

use std::path::{Path, PathBuf};

use super::Side;

/// What the TOML names; empty when it cannot be read or parsed (`config-invalid` says why).
#[derive(Debug, Default)]
pub(crate) struct Named {
    /// Every `crl` file, with its side, resolved as the loader resolves it.
    pub crls: Vec<(Side, PathBuf)>,
    /// The sides with `crl_expired = "allow"`.
    pub allow_expired: Vec<Side>,
    /// The proxy's client certificates: (route prefix, or `None` for `[upstream_tls]`, file).
    pub client_certs: Vec<(Option<String>, PathBuf)>,
}

impl Named {
    pub(crate) fn read(config_path: &Path) -> Self {
        let Some(root) = std::fs::read_to_string(config_path)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        else {
            return Self::default();
        };
        // Relative paths start at the config's folder, as in the loader.
        let dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolve = |raw: &str| dir.join(raw);
        let upstream = root.get("upstream_tls").and_then(toml::Value::as_table);
        let client = root
            .get("server")
            .and_then(|server| server.get("client_auth"))
            .and_then(toml::Value::as_table);
        let mut named = Self::default();
        for (side, table) in [(Side::Upstream, upstream), (Side::Client, client)] {
            let Some(table) = table else { continue };
            for raw in strings(table.get("crl")) {
                named.crls.push((side, resolve(raw)));
            }
            if table.get("crl_expired").and_then(toml::Value::as_str) == Some("allow") {
                named.allow_expired.push(side);
            }
        }
        if let Some(cert) = upstream
            .and_then(|t| t.get("client_cert"))
            .and_then(toml::Value::as_str)
        {
            named.client_certs.push((None, resolve(cert)));
        }
        let routes = root.get("route").and_then(toml::Value::as_array);
        for route in routes.into_iter().flatten() {
            let cert = route
                .get("upstream_client_cert")
                .and_then(toml::Value::as_str);
            if let Some(cert) = cert {
                let prefix = route.get("prefix").and_then(toml::Value::as_str);
                named
                    .client_certs
                    .push((Some(prefix.unwrap_or("?").to_owned()), resolve(cert)));
            }
        }
        named
    }
}

/// A string or an array of strings, as `crl` takes; empty paths are skipped.
fn strings(value: Option<&toml::Value>) -> Vec<&str> {
    let all = match value {
        Some(toml::Value::String(one)) => vec![one.as_str()],
        Some(toml::Value::Array(many)) => many.iter().filter_map(toml::Value::as_str).collect(),
        _ => Vec::new(),
    };
    all.into_iter()
        .filter(|raw| !raw.trim().is_empty())
        .collect()
}
