//! How a route spreads its requests over the endpoints of its service, as the config states it.
//! Plain data, checked by the config loader; [`super::Balancer`] runs it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;

/// Where a route's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Discovery {
    /// Every A/AAAA record of the upstream host, looked up again every `interval`.
    Dns { interval: Duration },
    /// `address` or `addresses`: a fixed set, changed by a reload only.
    Static(Box<[SocketAddr]>),
}

impl Discovery {
    /// The fixed addresses, when the route lists them.
    pub fn addresses(&self) -> Option<&[SocketAddr]> {
        match self {
            Self::Static(addresses) => Some(addresses),
            Self::Dns { .. } => None,
        }
    }
}

impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns { interval } => write!(
                f,
                "endpoints from DNS every {}",
                humantime::format_duration(*interval)
            ),
            Self::Static(addresses) => {
                f.write_str("at ")?;
                for (i, address) in addresses.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{address}")?;
                }
                Ok(())
            }
        }
    }
}

/// The most endpoints a route uses: a longer `addresses` list is refused, a longer DNS answer is
/// cut (the lowest addresses are kept) and said so.
pub const MAX_ENDPOINTS: usize = 256;

/// Which endpoint gets the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Power of two choices: of two endpoints drawn at random, the one with fewer requests in
    /// flight.
    LeastPending,
    RoundRobin,
}

impl Policy {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "least_pending" => Ok(Self::LeastPending),
            "round_robin" => Ok(Self::RoundRobin),
            other => Err(format!(
                "{other:?} is not a balancing policy: use \"least_pending\" or \"round_robin\""
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LeastPending => "least_pending",
            Self::RoundRobin => "round_robin",
        })
    }
}

/// A route's balancing, retries and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Balancing {
    pub discovery: Discovery,
    pub policy: Policy,
    /// Further endpoints a request that never reached an upstream may be sent to.
    pub retries: u32,
    /// Passive health: this many failures within `fail_timeout` take an endpoint out of
    /// rotation for `fail_timeout` (0: never).
    pub fails: u32,
    pub fail_timeout: Duration,
    pub health: Option<HealthCheck>,
}

impl Balancing {
    pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_RETRIES: u32 = 2;
    pub const DEFAULT_FAILS: u32 = 3;
    pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

    /// One fixed address (or DNS when `None`), with every other setting at its default.
    pub fn single(address: Option<SocketAddr>) -> Self {
        Self {
            discovery: match address {
                Some(address) => Discovery::Static(Box::new([address])),
                None => Discovery::Dns {
                    interval: Self::DEFAULT_RESOLVE_INTERVAL,
                },
            },
            policy: Policy::LeastPending,
            retries: Self::DEFAULT_RETRIES,
            fails: Self::DEFAULT_FAILS,
            fail_timeout: Self::DEFAULT_FAIL_TIMEOUT,
            health: None,
        }
    }
}

/// `[route.health]`: an active check, a GET of `path` on every endpoint every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a failed endpoint back.
    pub rise: u32,
    /// Consecutive failures that take an endpoint out.
    pub fall: u32,
    pub expect: StatusRanges,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;
    pub const DEFAULT_EXPECT: &str = "200-399";
}

/// Status codes a health check accepts: `"200-399"`, `"200"`, `"200,204,300-399"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusRanges(Box<[(u16, u16)]>);

impl StatusRanges {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let code = |s: &str| -> Result<u16, String> {
            let s = s.trim();
            s.parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("{s:?} is not a status code from 100 to 599"))
        };
        let ranges = raw
            .split(',')
            .map(|part| match part.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (code(low)?, code(high)?);
                    if low > high {
                        return Err(format!("{part:?}: the range runs backwards"));
                    }
                    Ok((low, high))
                }
                None => code(part).map(|c| (c, c)),
            })
            .collect::<Result<Box<[_]>, String>>()
            .map_err(|e| format!("{raw:?}: {e}; write codes and ranges such as \"200-399\""))?;
        Ok(Self(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(low, high)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let r = StatusRanges::parse("200-399").unwrap();
        assert!(r.contains(200) && r.contains(399) && !r.contains(400) && !r.contains(199));
        let r = StatusRanges::parse("204, 300-302").unwrap();
        assert!(r.contains(204) && r.contains(301) && !r.contains(200));
        assert_eq!(r.to_string(), "204,300-302");
        for bad in ["", "abc", "99", "600", "300-200", "200-", "2xx"] {
            assert!(StatusRanges::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policies() {
        assert_eq!(Policy::parse("round_robin"), Ok(Policy::RoundRobin));
        assert!(
            Policy::parse("random")
                .unwrap_err()
                .contains("least_pending")
        );
    }
}
