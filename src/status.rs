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

use crate::config::Config;
use crate::metrics::UpstreamStats;
use crate::pki::inspect::{CertInfo, rfc3339};
use crate::tls::revocation::CrlSet;

/// The configuration's side of the trust status, and where each route's upstream record is.
#[derive(Debug)]
pub struct TrustStatus {
    generation: u64,
    loaded_at: OffsetDateTime,
    public_cert: Value,
    client_auth: Value,
    routes: Vec<(Value, Arc<UpstreamStats>)>,
}

impl TrustStatus {
    /// `stats` holds each route's upstream record, in the config's route order.
    pub fn new(config: &Config, generation: u64, stats: Vec<Arc<UpstreamStats>>) -> Self {
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
            .zip(stats)
            .map(|(route, stats)| {
                let client_cert = route
                    .client_identity
                    .as_ref()
                    .and_then(|i| i.chain.first())
                    .map_or(Value::Null, |c| cert(c));
                let fixed = json!({
                    "prefix": route.prefix.as_str(),
                    "upstream": route.upstream.to_string(),
                    "name": route.upstream.host(),
                    "address": route.address.map(|a| a.to_string()),
                    "anchors": anchors,
                    "crls": upstream_crls,
                    "revocation": if config.upstream_tls.crls.is_empty() {
                        Value::Null
                    } else {
                        Value::String(config.upstream_tls.crls.policy.to_string())
                    },
                    "client_cert": client_cert,
                    "require_client_cert": route.require_client_cert,
                });
                (fixed, stats)
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
            .map(|(fixed, stats)| {
                let mut route = fixed.clone();
                let leaf = stats
                    .last_leaf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let refusal = stats
                    .last_refusal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                route["last_leaf"] = leaf.map_or(Value::Null, |leaf| {
                    let mut value = info(&leaf.info);
                    value["seen_at"] = Value::String(at(leaf.seen_at as i64));
                    value
                });
                route["last_refusal"] = refusal.map_or(
                    Value::Null,
                    |(reason, when)| json!({ "reason": reason, "at": at(when as i64) }),
                );
                route["verified"] = stats.verified.load(Ordering::Relaxed).into();
                route["refused"] = stats.refused.load(Ordering::Relaxed).into();
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
