//! `[timeouts]` and `[limits]`: the clocks and counts that bound what a client may take, with
//! their defaults and the range each value must fall in.

use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use super::{Loader, file};

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake to an upstream; past it the client gets 502.
    pub connect: Duration,
    /// Request sent to response headers received; past it the client gets 504.
    pub response: Duration,
    /// The client's TLS handshake, the bytes before its first request and each request head
    /// must arrive within this; a request body may pause no longer than this.
    pub client_header: Duration,
    /// A client connection with no request in flight closes after this (HTTP/1.1 keep-alive and
    /// HTTP/2 alike).
    pub idle: Duration,
    /// A response the client does not read for this long is abandoned: the upstream side is
    /// freed and the client's connection closes.
    pub client_send: Duration,
    /// A WebSocket tunnel with no traffic either way for this long is closed.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            client_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            client_send: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(3600),
        }
    }
}

/// `[limits]`: what one client may take of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once from one IPv4 address or one IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams on one client connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_streams: u32,
    /// Requests one client connection may have at the upstreams at once; more wait for a turn.
    pub upstream_per_connection: usize,
    /// The same for all connections from one source (IPv4 address or IPv6 /64).
    pub upstream_per_ip: usize,
    /// Slowest request body upload accepted, in bytes per second, averaged over `client_header`.
    pub min_upload_rate: u64,
    /// Largest request body, in bytes, for routes that set none (Apache's `LimitRequestBody`).
    pub max_request_body: u64,
}

/// Most a `max_request_body` may be set to (1 PiB): any real limit fits, and byte counts stay
/// far from overflowing.
pub const MAX_REQUEST_BODY_CEILING: u64 = 1 << 50;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_ip: 256,
            h2_max_streams: 100,
            upstream_per_connection: 32,
            upstream_per_ip: 256,
            min_upload_rate: 1024,
            max_request_body: 1 << 30,
        }
    }
}

/// The longest duration any setting takes: timers past it are mistakes, and the clock arithmetic
/// stays far from overflowing.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Loader<'_> {
    pub(super) fn timeouts(&mut self, table: &file::TimeoutsTable) -> Timeouts {
        let default = Timeouts::default();
        Timeouts {
            connect: self.duration(table.connect.as_ref(), "timeouts.connect", default.connect),
            response: self.duration(
                table.response.as_ref(),
                "timeouts.response",
                default.response,
            ),
            client_header: self.duration(
                table.client_header.as_ref(),
                "timeouts.client_header",
                default.client_header,
            ),
            idle: self.duration(table.idle.as_ref(), "timeouts.idle", default.idle),
            client_send: self.duration(
                table.client_send.as_ref(),
                "timeouts.client_send",
                default.client_send,
            ),
            tunnel_idle: self.duration(
                table.tunnel_idle.as_ref(),
                "timeouts.tunnel_idle",
                default.tunnel_idle,
            ),
        }
    }

    pub(super) fn limits(&mut self, table: &file::LimitsTable) -> Limits {
        let default = Limits::default();
        let mut count = |value: &Option<Spanned<i64>>, key: &str, range, default: u64| {
            self.count(value.as_ref(), key, range, default)
                .unwrap_or(default)
        };
        Limits {
            max_connections_per_ip: count(
                &table.max_connections_per_ip,
                "limits.max_connections_per_ip",
                1..=1_000_000,
                default.max_connections_per_ip as u64,
            ) as usize,
            h2_max_streams: count(
                &table.h2_max_streams,
                "limits.h2_max_streams",
                1..=1000,
                u64::from(default.h2_max_streams),
            ) as u32,
            upstream_per_connection: count(
                &table.upstream_per_connection,
                "limits.upstream_per_connection",
                1..=1000,
                default.upstream_per_connection as u64,
            ) as usize,
            upstream_per_ip: count(
                &table.upstream_per_ip,
                "limits.upstream_per_ip",
                1..=1_000_000,
                default.upstream_per_ip as u64,
            ) as usize,
            min_upload_rate: count(
                &table.min_upload_rate,
                "limits.min_upload_rate",
                1..=1 << 30,
                default.min_upload_rate,
            ),
            max_request_body: count(
                &table.max_request_body,
                "limits.max_request_body",
                0..=MAX_REQUEST_BODY_CEILING,
                default.max_request_body,
            ),
        }
    }

    /// A whole number within `range`, or `default` when the key is absent.
    pub(super) fn count(
        &mut self,
        value: Option<&Spanned<i64>>,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> Option<u64> {
        let Some(value) = value else {
            return Some(default);
        };
        let parsed = u64::try_from(*value.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                format!(
                    "{} is not a number from {} to {}",
                    value.get_ref(),
                    range.start(),
                    range.end()
                )
            });
        self.check(value, key, parsed)
    }

    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let parsed = humantime::parse_duration(value.get_ref())
            .map_err(|e| {
                format!(
                    "{:?} is not a duration such as \"5s\" or \"1m 30s\": {e}",
                    value.get_ref()
                )
            })
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be greater than zero".to_owned())
                } else if d > MAX_DURATION {
                    Err("must be at most 1 year".to_owned())
                } else {
                    Ok(d)
                }
            });
        self.check(value, key, parsed).unwrap_or(default)
    }
}
