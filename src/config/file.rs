//! The TOML file format, as serde sees it. Never used outside `config/`: the loader turns it into
//! runtime types that cannot hold an invalid value.
//!
//! Every table rejects unknown keys, so a typo is an error instead of a silently ignored setting.
//! Values that need checking after parsing are `Spanned`, so the error can name their line.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    pub(super) server: ServerTable,
    pub(super) upstream_tls: UpstreamTlsTable,
    #[serde(default)]
    pub(super) timeouts: TimeoutsTable,
    #[serde(default)]
    pub(super) limits: LimitsTable,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteEntry>,
    pub(super) admin: Option<AdminTable>,
    #[serde(default)]
    pub(super) log: LogTable,
}

/// `[log]`: what the proxy logs. A bool needs no check after parsing, so it is not `Spanned`: a
/// value of the wrong type is a parse error, which names the key and line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogTable {
    pub(super) access: Option<bool>,
}

/// `[admin]`: the operators' listener, plain HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminTable {
    pub(super) listen: Spanned<String>,
    pub(super) token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerTable {
    pub(super) listen: Spanned<String>,
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) watch: Option<bool>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) workers: Option<Spanned<i64>>,
    pub(super) client_auth: Option<ClientAuthTable>,
}

/// `[server.client_auth]`: client certificates on the public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientAuthTable {
    pub(super) ca: Spanned<OneOrMany>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) forward_chain: Option<bool>,
    pub(super) crl: Option<Spanned<OneOrMany>>,
    pub(super) revocation: Option<Spanned<String>>,
    pub(super) unknown_status: Option<Spanned<String>>,
    pub(super) crl_expired: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamTlsTable {
    pub(super) ca: Spanned<OneOrMany>,
    pub(super) crl: Option<Spanned<OneOrMany>>,
    pub(super) revocation: Option<Spanned<String>>,
    pub(super) unknown_status: Option<Spanned<String>>,
    pub(super) crl_expired: Option<Spanned<String>>,
    pub(super) client_cert: Option<Spanned<String>>,
    pub(super) client_key: Option<Spanned<String>>,
}

/// `ca = "file"` or `ca = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a file path or an array of file paths")]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn as_slice(&self) -> &[String] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeoutsTable {
    pub(super) connect: Option<Spanned<String>>,
    pub(super) response: Option<Spanned<String>>,
    pub(super) client_header: Option<Spanned<String>>,
    pub(super) idle: Option<Spanned<String>>,
    pub(super) client_send: Option<Spanned<String>>,
    pub(super) tunnel_idle: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsTable {
    pub(super) max_connections_per_ip: Option<Spanned<i64>>,
    pub(super) h2_max_streams: Option<Spanned<i64>>,
    pub(super) upstream_per_connection: Option<Spanned<i64>>,
    pub(super) upstream_per_ip: Option<Spanned<i64>>,
    pub(super) min_upload_rate: Option<Spanned<i64>>,
    pub(super) max_request_body: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteEntry {
    pub(super) prefix: Spanned<String>,
    pub(super) upstream: Spanned<String>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) preserve_host: Option<bool>,
    pub(super) upstream_client_cert: Option<Spanned<String>>,
    pub(super) upstream_client_key: Option<Spanned<String>>,
    pub(super) require_client_cert: Option<bool>,
    pub(super) max_request_body: Option<Spanned<i64>>,
    pub(super) addresses: Option<Spanned<Vec<String>>>,
    pub(super) balance: Option<Spanned<String>>,
    pub(super) resolve_interval: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) fails: Option<Spanned<i64>>,
    pub(super) fail_timeout: Option<Spanned<String>>,
    pub(super) health: Option<HealthTable>,
}

/// `[route.health]`: the route's active health check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthTable {
    pub(super) path: Spanned<String>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) expect: Option<Spanned<String>>,
}
