//! A route's endpoints, balancing, retries and health checks: `address`/`addresses`, `balance`,
//! `resolve_interval`, `retries`, `fails`, `fail_timeout` and `[route.health]`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use toml::Spanned;

use super::{Loader, file};
use crate::balance::settings::{
    Balancing, Discovery, HealthCheck, MAX_ENDPOINTS as MAX_ADDRESSES, Policy, StatusRanges,
};

/// DNS is not asked more often than this.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
/// Health checks do not run more often than this.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl Loader<'_> {
    /// The balancing of route `entry`; `key` makes its dotted keys (`route[0].balance`). Every
    /// problem is reported; the defaults stand in for values in error.
    pub(super) fn balancing(
        &mut self,
        entry: &file::RouteEntry,
        key: &dyn Fn(&str) -> String,
    ) -> Balancing {
        let defaults = Balancing::single(None);
        let discovery = self.discovery(entry, key);
        let policy = entry
            .balance
            .as_ref()
            .and_then(|raw| self.check(raw, &key("balance"), Policy::parse(raw.get_ref())))
            .unwrap_or(defaults.policy);
        let count = |loader: &mut Self, value: &Option<Spanned<i64>>, name: &str, max, default| {
            loader
                .count(value.as_ref(), &key(name), 0..=max, u64::from(default))
                .map_or(default, |n| n as u32)
        };
        let retries = count(self, &entry.retries, "retries", 10, defaults.retries);
        let fails = count(self, &entry.fails, "fails", 1000, defaults.fails);
        let fail_timeout = self.duration(
            entry.fail_timeout.as_ref(),
            &key("fail_timeout"),
            defaults.fail_timeout,
        );
        let health = entry
            .health
            .as_ref()
            .map(|table| self.health_check(table, &|field| key(&format!("health.{field}"))));
        Balancing {
            discovery,
            policy,
            retries,
            fails,
            fail_timeout,
            health,
        }
    }

    fn discovery(&mut self, entry: &file::RouteEntry, key: &dyn Fn(&str) -> String) -> Discovery {
        let dns = || Discovery::Dns {
            interval: Balancing::DEFAULT_RESOLVE_INTERVAL,
        };
        match (&entry.address, &entry.addresses) {
            (Some(_), Some(list)) => {
                self.report(
                    Some(list.span()),
                    Some(key("addresses")),
                    "set either address (one endpoint) or addresses (several), not both",
                );
                dns()
            }
            (Some(one), None) => {
                let parsed = parse_address(one.get_ref());
                self.check(one, &key("address"), parsed)
                    .map_or_else(dns, |a| Discovery::Static(Box::new([a])))
            }
            (None, Some(list)) => {
                let mut addresses = Vec::new();
                let mut seen = HashSet::new();
                for raw in list.get_ref() {
                    let parsed = parse_address(raw).and_then(|a| {
                        if seen.insert(a) {
                            Ok(a)
                        } else {
                            Err(format!("{a} is listed twice"))
                        }
                    });
                    addresses.extend(self.check(list, &key("addresses"), parsed));
                }
                if list.get_ref().is_empty() || list.get_ref().len() > MAX_ADDRESSES {
                    self.report(
                        Some(list.span()),
                        Some(key("addresses")),
                        format!(
                            "list from 1 to {MAX_ADDRESSES} endpoints, or leave addresses out to \
                             use every address DNS gives the upstream host"
                        ),
                    );
                }
                if let Some(raw) = &entry.resolve_interval {
                    self.report(
                        Some(raw.span()),
                        Some(key("resolve_interval")),
                        "resolve_interval applies to endpoints found by DNS; this route lists \
                         its addresses",
                    );
                }
                addresses.sort();
                Discovery::Static(addresses.into())
            }
            (None, None) => {
                let interval = self.duration(
                    entry.resolve_interval.as_ref(),
                    &key("resolve_interval"),
                    Balancing::DEFAULT_RESOLVE_INTERVAL,
                );
                self.at_least(
                    entry.resolve_interval.as_ref(),
                    &key("resolve_interval"),
                    interval,
                    MIN_RESOLVE_INTERVAL,
                );
                Discovery::Dns {
                    interval: interval.max(MIN_RESOLVE_INTERVAL),
                }
            }
        }
    }

    fn health_check(
        &mut self,
        table: &file::HealthTable,
        key: &dyn Fn(&str) -> String,
    ) -> HealthCheck {
        let path = self
            .check(&table.path, &key("path"), parse_path(table.path.get_ref()))
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let interval = self.duration(
            table.interval.as_ref(),
            &key("interval"),
            HealthCheck::DEFAULT_INTERVAL,
        );
        self.at_least(
            table.interval.as_ref(),
            &key("interval"),
            interval,
            MIN_CHECK_INTERVAL,
        );
        let timeout = self.duration(
            table.timeout.as_ref(),
            &key("timeout"),
            HealthCheck::DEFAULT_TIMEOUT.min(interval),
        );
        if timeout > interval {
            self.report(
                table.timeout.as_ref().map(Spanned::span),
                Some(key("timeout")),
                format!(
                    "a check may take at most its interval ({}); lower timeout or raise interval",
                    humantime::format_duration(interval)
                ),
            );
        }
        let mut threshold = |value: &Option<Spanned<i64>>, name: &str, default: u32| {
            self.count(value.as_ref(), &key(name), 1..=100, u64::from(default))
                .map_or(default, |n| n as u32)
        };
        let rise = threshold(&table.rise, "rise", HealthCheck::DEFAULT_RISE);
        let fall = threshold(&table.fall, "fall", HealthCheck::DEFAULT_FALL);
        let expect = match &table.expect {
            Some(raw) => self.check(raw, &key("expect"), StatusRanges::parse(raw.get_ref())),
            None => None,
        }
        .unwrap_or_else(|| {
            StatusRanges::parse(HealthCheck::DEFAULT_EXPECT).expect("the default parses")
        });
        HealthCheck {
            path,
            interval: interval.max(MIN_CHECK_INTERVAL),
            timeout: timeout.min(interval),
            rise,
            fall,
            expect,
        }
    }

    /// Reports `value` (parsed as `got`) when it is below `min`.
    fn at_least(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        got: Duration,
        min: Duration,
    ) {
        if let Some(raw) = value
            && got < min
        {
            self.report(
                Some(raw.span()),
                Some(key.into()),
                format!("must be at least {}", humantime::format_duration(min)),
            );
        }
    }
}

fn parse_address(raw: &str) -> Result<SocketAddr, String> {
    raw.parse::<SocketAddr>()
        .map_err(|_| format!("{raw:?} is not an ip:port such as \"10.0.0.5:8443\""))
}

fn parse_path(raw: &str) -> Result<PathAndQuery, String> {
    if !raw.starts_with('/') {
        return Err(format!("{raw:?} must be a path starting with '/'"));
    }
    raw.parse::<PathAndQuery>()
        .map_err(|_| format!("{raw:?} is not a valid request path (percent-encode what it needs)"))
}
