//! The series computed at scrape time: the serving configuration's certificates, CRLs and
//! generation, and the leaf each backend presented last.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{SeenLeaf, State};
use crate::config::Config;
use crate::pki::inspect::CertInfo;

/// The series that belong to one configuration: every certificate it names, its CRLs, routes.
#[derive(Debug, Default)]
pub struct ConfigSeries {
    /// (role, subject, serial, notAfter seconds).
    certs: Vec<(&'static str, String, String, i64)>,
    /// (issuer, nextUpdate seconds, revoked entries).
    crls: Vec<(String, Option<i64>, usize)>,
    pub(super) routes: Vec<String>,
}

impl ConfigSeries {
    pub(super) fn of(config: &Config) -> Self {
        let mut certs = Vec::new();
        for cert in config.certificates() {
            if let Ok(info) = CertInfo::parse(&cert.der) {
                let entry = (
                    cert.role,
                    info.subject,
                    info.serial,
                    info.not_after.unix_timestamp(),
                );
                if !certs.contains(&entry) {
                    certs.push(entry);
                }
            }
        }
        let crls = config
            .crls()
            .map(|crl| (crl.issuer.clone(), crl.next_update, crl.revoked_count()))
            .collect();
        let mut routes: Vec<String> = config.routes.iter().map(|r| r.prefix.to_string()).collect();
        routes.push("-".into());
        Self {
            certs,
            crls,
            routes,
        }
    }
}

/// Computes the configuration's series at scrape time.
pub(super) struct ConfigCollector(pub(super) Arc<State>);

impl fmt::Debug for ConfigCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigCollector")
    }
}

impl Collector for ConfigCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let state = &self.0;
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let metric = ConstGauge::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(family.encode_family(&Vec::<(&str, &str)>::new())?)
        };
        gauge(
            &mut encoder,
            "config_generation",
            "The serving generation: 1 at start, one more per applied reload",
            state.generation.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "config_last_reload_successful",
            "1 when the last reload applied or found nothing to apply, 0 when it was refused",
            state.last_reload_ok.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "config_last_reload_success_timestamp_seconds",
            "When the configuration last loaded successfully",
            state.last_success.load(Ordering::Relaxed) as i64,
        )?;
        {
            let dropped = ConstCounter::new(crate::logging::log_lines_dropped());
            let mut family = encoder.encode_descriptor(
                "log_lines_dropped",
                "Log lines dropped because the log writer's buffer was full (a slow log sink)",
                None,
                dropped.metric_type(),
            )?;
            dropped.encode(family.encode_family(&Vec::<(&str, &str)>::new())?)?;
        }
        {
            let metric = ConstGauge::new(1i64);
            let mut family = encoder.encode_descriptor(
                "build_info",
                "The running build",
                None,
                MetricType::Gauge,
            )?;
            metric.encode(family.encode_family(&vec![("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        if let Some(upstreams) = state.upstreams.load_full() {
            // Replicas of one service present the same leaf: one series each, the latest seen.
            let mut seen: Vec<(String, SeenLeaf)> = Vec::new();
            for (route, stats) in upstreams() {
                let Some(leaf) = stats
                    .last_leaf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                else {
                    continue;
                };
                let same = |(r, l): &&mut (String, SeenLeaf)| {
                    *r == route
                        && l.name == leaf.name
                        && l.info.serial == leaf.info.serial
                        && l.info.issuer == leaf.info.issuer
                };
                match seen.iter_mut().find(same) {
                    Some(kept) if kept.1.seen_at < leaf.seen_at => kept.1 = leaf,
                    Some(_) => {}
                    None => seen.push((route, leaf)),
                }
            }
            type Pick = fn(&SeenLeaf) -> i64;
            let series: [(&str, &str, Pick); 2] = [
                (
                    "upstream_cert_not_after_timestamp_seconds",
                    "notAfter of the leaf each upstream presented on its last verified handshake",
                    |leaf| leaf.info.not_after.unix_timestamp(),
                ),
                (
                    "upstream_cert_last_seen_timestamp_seconds",
                    "When each upstream last presented that leaf",
                    |leaf| leaf.seen_at as i64,
                ),
            ];
            for (name, help, pick) in series {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (route, leaf) in &seen {
                    let labels = vec![
                        ("route", route.as_str()),
                        ("name", leaf.name.as_str()),
                        ("serial", leaf.info.serial.as_str()),
                        ("issuer", leaf.info.issuer.as_str()),
                    ];
                    ConstGauge::new(pick(leaf)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let Some(config) = state.config.load_full() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "cert_not_after_timestamp_seconds",
            "notAfter of every certificate the configuration names, by role",
            None,
            MetricType::Gauge,
        )?;
        for (role, subject, serial, not_after) in &config.certs {
            let labels = vec![("role", *role), ("subject", subject), ("serial", serial)];
            ConstGauge::new(*not_after).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of every CRL in use, by issuer",
            None,
            MetricType::Gauge,
        )?;
        for (issuer, next_update, _) in &config.crls {
            if let Some(next) = next_update {
                ConstGauge::new(*next).encode(family.encode_family(&vec![("issuer", issuer)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "crl_revoked_entries",
            "Serials each CRL in use revokes, by issuer",
            None,
            MetricType::Gauge,
        )?;
        for (issuer, _, revoked) in &config.crls {
            ConstGauge::new(*revoked as i64)
                .encode(family.encode_family(&vec![("issuer", issuer)])?)?;
        }
        Ok(())
    }
}
