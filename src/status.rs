//! The trust status (`GET /trust` on the admin listener, `trustgate status`): whom the serving
//! generation trusts, with what, and what each upstream presented on its last handshake.
//!
//! The configuration's part is fixed when a generation is built; the upstreams' part is read from
//! their records ([`UpstreamStats`]) when asked. Serials and fingerprints are lowercase hex
//! without separators, times RFC 3339 UTC, as in the metric labels.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::balance::Balancer;
use crate::balance::settings::Discovery;
use crate::config::Config;
use crate::metrics::{SeenLeaf, UpstreamStats};
use crate::pki::inspect::{CertInfo, rfc3339};
use crate::tls::revocation::CrlSet;

/// The configuration's side of the trust status, and where each route's upstream record is.
#[derive(Debug)]
pub struct TrustStatus {
    generation: u64,
    loaded_at: OffsetDateTime,
    public_cert: Value,
    client_auth: Value,
    routes: Vec<(Value, Arc<Balancer>)>,
}

impl TrustStatus {
    /// `balancers` holds each route's balancer, in the config's route order.
    pub fn new(config: &Config, generation: u64, balancers: Vec<Arc<Balancer>>) -> Self {
        let anchors: Vec<Value> = config
            .upstream_tls
            .anchors
            .iter()
            .map(|c| cert(c))
            .collect();
        let upstream_crls = crls(&config.upstream_tls.crls);
        let routes = config
            .routes
            .iter()
            .zip(balancers)
            .map(|(route, balancer)| {
                let client_cert = route
                    .client_identity
                    .as_ref()
                    .and_then(|i| i.chain.first())
                    .map_or(Value::Null, |c| cert(c));
                let fixed = json!({
                    "prefix": route.prefix.as_str(),
                    "upstream": route.upstream.to_string(),
                    "name": route.upstream.host(),
                    "discovery": match &route.balancing.discovery {
                        Discovery::Dns { interval } => json!({
                            "dns": humantime::format_duration(*interval).to_string()
                        }),
                        Discovery::Static(addresses) => json!({
                            "addresses": addresses.iter().map(ToString::to_string).collect::<Vec<_>>()
                        }),
                    },
                    "balance": route.balancing.policy.to_string(),
                    "health_check": route.balancing.health.as_ref().map(|h| h.path.to_string()),
                    "anchors": anchors,
                    "crls": upstream_crls,
                    "revocation": if config.upstream_tls.crls.is_empty() {
                        Value::Null
                    } else {
                        Value::String(config.upstream_tls.crls.policy.to_string())
                    },
                    "client_cert": client_cert,
                    "require_client_cert": route.require_client_cert,
                    "max_request_body": route.max_request_body,
                });
                (fixed, balancer)
            })
            .collect();
        let client_auth = config
            .server
            .client_auth
            .as_ref()
            .map_or(Value::Null, |auth| {
                json!({
                    "mode": if auth.mandatory { "require" } else { "optional" },
                    "anchors": auth.anchors.iter().map(|c| cert(c)).collect::<Vec<_>>(),
                    "crls": crls(&auth.crls),
                })
            });
        Self {
            generation,
            loaded_at: OffsetDateTime::now_utc(),
            public_cert: config.server.chain.first().map_or(Value::Null, |c| cert(c)),
            client_auth,
            routes,
        }
    }

    /// The whole status as JSON, with each upstream's record as of now.
    pub fn to_json(&self) -> Value {
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(fixed, balancer)| {
                let mut route = fixed.clone();
                let endpoints = balancer.status();
                let records: Vec<Record> = endpoints.iter().map(|e| Record::of(&e.stats)).collect();
                // The route's own view: the latest leaf and refusal of any endpoint, and sums.
                let latest_leaf = records
                    .iter()
                    .filter_map(|r| r.leaf.as_ref())
                    .max_by_key(|l| l.seen_at);
                let latest_refusal = records
                    .iter()
                    .filter_map(|r| r.refusal.as_ref())
                    .max_by_key(|(_, at)| *at);
                route["last_leaf"] = latest_leaf.map_or(Value::Null, leaf_json);
                route["last_refusal"] = latest_refusal.map_or(Value::Null, refusal_json);
                route["verified"] = records.iter().map(|r| r.verified).sum::<u64>().into();
                route["refused"] = records.iter().map(|r| r.refused).sum::<u64>().into();
                route["endpoints"] = endpoints
                    .iter()
                    .zip(&records)
                    .map(|(e, r)| {
                        json!({
                            "address": e.address.to_string(),
                            "up": e.up,
                            "why": e.why,
                            "in_flight": e.pending,
                            "last_leaf": r.leaf.as_ref().map_or(Value::Null, leaf_json),
                            "last_refusal": r.refusal.as_ref().map_or(Value::Null, refusal_json),
                        })
                    })
                    .collect();
                route
            })
            .collect();
        json!({
            "generation": self.generation,
            "loaded_at": rfc3339(self.loaded_at),
            "public_cert": self.public_cert,
            "client_auth": self.client_auth,
            "routes": routes,
        })
    }
}

/// One endpoint's record, read once.
struct Record {
    leaf: Option<SeenLeaf>,
    refusal: Option<(String, u64)>,
    verified: u64,
    refused: u64,
}

impl Record {
    fn of(stats: &UpstreamStats) -> Self {
        Self {
            leaf: stats
                .last_leaf
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            refusal: stats
                .last_refusal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            verified: stats.verified.load(Ordering::Relaxed),
            refused: stats.refused.load(Ordering::Relaxed),
        }
    }
}

fn leaf_json(leaf: &SeenLeaf) -> Value {
    let mut value = info(&leaf.info);
    value["seen_at"] = Value::String(at(leaf.seen_at as i64));
    value
}

fn refusal_json((reason, when): &(String, u64)) -> Value {
    json!({ "reason": reason, "at": at(*when as i64) })
}

fn cert(der: &[u8]) -> Value {
    CertInfo::parse(der).map_or(Value::Null, |i| info(&i))
}

fn info(info: &CertInfo) -> Value {
    json!({
        "subject": info.subject,
        "sans": info.sans,
        "issuer": info.issuer,
        "serial": info.serial,
        "not_before": rfc3339(info.not_before),
        "not_after": rfc3339(info.not_after),
        "sha256": info.sha256,
    })
}

fn crls(set: &CrlSet) -> Vec<Value> {
    set.crls
        .iter()
        .map(|crl| {
            json!({
                "issuer": crl.issuer,
                "file": crl.path.display().to_string(),
                "this_update": at(crl.this_update),
                "next_update": crl.next_update.map(at),
                "revoked": crl.revoked_count(),
            })
        })
        .collect()
}

fn at(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| secs.to_string(), rfc3339)
}

/// `trustgate status`: fetches `/trust` from the admin listener at `admin` (`http://host:port`),
/// with the token in `token_file` when given.
pub async fn fetch(admin: &str, token_file: Option<&std::path::Path>) -> anyhow::Result<Value> {
    use anyhow::{Context as _, bail};
    use http_body_util::{BodyExt, Empty, Limited};

    let uri: http::Uri = admin
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("{admin:?} is not a URL such as http://127.0.0.1:9901"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{admin}: the admin listener speaks plain http://");
    }
    let authority = uri
        .authority()
        .context("the admin URL names no host")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let mut request =
            http::Request::get("/trust").header(http::header::HOST, authority.as_str());
        if let Some(token) = &token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender
            .send_request(request.body(Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("{admin} did not answer within 10 s"))??;
    if !status.is_success() {
        bail!(
            "{admin}/trust answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body).context("the answer is not the trust status JSON")
}

/// Certificates with fewer days left than this are marked `!`.
const WARN_DAYS: i64 = 30;

/// The trust status as tables for a person: every certificate with its days left (`!` under
/// 30 days), then each route's upstream.
pub fn render(status: &Value, now: OffsetDateTime) -> String {
    use std::fmt::Write as _;
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let days = |v: &Value| {
        v.as_str()
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| (t - now).whole_days())
    };
    let mark = |d: Option<i64>| match d {
        Some(d) if d < WARN_DAYS => format!("{d} !"),
        Some(d) => d.to_string(),
        None => "-".into(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "generation {} loaded {}",
        status["generation"],
        text(&status["loaded_at"])
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:<44} {:<22} {:>9}",
        "ROLE", "SUBJECT", "NOT AFTER", "DAYS LEFT"
    );
    let mut cert = |role: &str, c: &Value| {
        if c.is_object() {
            let _ = writeln!(
                out,
                "{role:<16} {:<44} {:<22} {:>9}",
                text(&c["subject"]),
                text(&c["not_after"]),
                mark(days(&c["not_after"]))
            );
        }
    };
    cert("public", &status["public_cert"]);
    let routes = status["routes"].as_array().cloned().unwrap_or_default();
    let mut anchors_seen = Vec::new();
    for route in &routes {
        for anchor in route["anchors"].as_array().into_iter().flatten() {
            if !anchors_seen.contains(anchor) {
                cert("anchor", anchor);
                anchors_seen.push(anchor.clone());
            }
        }
    }
    for anchor in status["client_auth"]["anchors"]
        .as_array()
        .into_iter()
        .flatten()
    {
        cert("client_ca", anchor);
    }
    for route in &routes {
        cert("upstream_client", &route["client_cert"]);
        cert(
            &format!("upstream {}", text(&route["name"])),
            &route["last_leaf"],
        );
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<36} {:>8} {:>7}  LAST REFUSAL",
        "ROUTE", "UPSTREAM", "VERIFIED", "REFUSED"
    );
    for route in &routes {
        let refusal = &route["last_refusal"];
        let last = if refusal.is_object() {
            format!("{} ({})", text(&refusal["reason"]), text(&refusal["at"]))
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<12} {:<36} {:>8} {:>7}  {last}",
            text(&route["prefix"]),
            text(&route["upstream"]),
            route["verified"],
            route["refused"],
        );
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<40} {:<5} {:>9}  WHY / LEAF",
        "ROUTE", "ENDPOINT", "STATE", "IN FLIGHT"
    );
    for route in &routes {
        for endpoint in route["endpoints"].as_array().into_iter().flatten() {
            let up = endpoint["up"].as_bool().unwrap_or(false);
            let detail = if up {
                let leaf = &endpoint["last_leaf"];
                if leaf.is_object() {
                    format!("serial {}", text(&leaf["serial"]))
                } else {
                    "-".into()
                }
            } else {
                text(&endpoint["why"])
            };
            let _ = writeln!(
                out,
                "{:<12} {:<40} {:<5} {:>9}  {detail}",
                text(&route["prefix"]),
                text(&endpoint["address"]),
                if up { "up" } else { "DOWN" },
                endpoint["in_flight"],
            );
        }
    }
    let crls: Vec<&Value> = routes
        .first()
        .and_then(|r| r["crls"].as_array())
        .into_iter()
        .flatten()
        .chain(
            status["client_auth"]["crls"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .collect();
    if !crls.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<44} {:<22} {:>7}",
            "CRL ISSUER", "NEXT UPDATE", "REVOKED"
        );
        for crl in crls {
            let _ = writeln!(
                out,
                "{:<44} {:<22} {:>7}",
                text(&crl["issuer"]),
                text(&crl["next_update"]),
                crl["revoked"]
            );
        }
    }
    out
}
