//! X.509 name constraints in operator terms: which DNS suffixes and IP ranges an intermediate may
//! vouch for. Built for `init-intermediate`, read back from a CA certificate, and checked at
//! `pki issue` the way the proxy's verifier (rustls-webpki) checks them, so the CLI refuses what
//! the proxy would refuse.
//!
//! RFC 5280 constrains a name type only when a subtree of that type is present: permitting DNS
//! suffixes alone leaves every IP address allowed. So whenever any constraint is asked for, a name
//! type with nothing permitted is excluded entirely (`0.0.0.0/0` and `::/0`; the empty DNS name,
//! which matches every DNS name).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{CidrSubnet, GeneralSubtree};
use x509_parser::extensions::GeneralName;

/// An IP range: an address with a prefix length whose host bits are zero. A bare address is a
/// single host (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `--permit-ip` value is not an IP range.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not an IP range: {reason} (write 10.0.0.0/8, fd00::/8 or one address)")]
pub struct BadIpNet {
    input: String,
    reason: String,
}

impl IpNet {
    /// Every IPv4 address.
    const ALL_V4: Self = Self {
        addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        prefix: 0,
    };
    /// Every IPv6 address.
    const ALL_V6: Self = Self {
        addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        prefix: 0,
    };

    /// Whether `ip` lies in this range. An IPv4 address is never in an IPv6 range, nor the
    /// reverse, as in webpki.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn subnet(self) -> CidrSubnet {
        CidrSubnet::from_addr_prefix(self.addr, self.prefix)
    }

    /// From the iPAddress form of a subtree: address then mask, 8 or 32 bytes. `None` when the
    /// length or the mask is malformed (the mask must be ones then zeros).
    fn from_subtree(bytes: &[u8]) -> Option<Self> {
        let (addr, mask) = match bytes.len() {
            8 => {
                let addr = u32::from_be_bytes(bytes[..4].try_into().ok()?);
                let mask = u32::from_be_bytes(bytes[4..].try_into().ok()?);
                (IpAddr::from(addr.to_be_bytes()), u128::from(mask) << 96)
            }
            32 => {
                let addr = u128::from_be_bytes(bytes[..16].try_into().ok()?);
                let mask = u128::from_be_bytes(bytes[16..].try_into().ok()?);
                (IpAddr::from(addr.to_be_bytes()), mask)
            }
            _ => return None,
        };
        let prefix = mask.leading_ones();
        if mask.checked_shl(prefix).unwrap_or(0) != 0 {
            return None;
        }
        let prefix = u8::try_from(prefix.min(max_prefix(addr).into())).ok()?;
        // webpki compares under the mask, so host bits in the address do not matter.
        Some(Self {
            addr: network(addr, prefix),
            prefix,
        })
    }
}

impl FromStr for IpNet {
    type Err = BadIpNet;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| BadIpNet {
            input: input.to_owned(),
            reason,
        };
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(raw) => raw
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(format!("the prefix length must be 0 to {max}")))?,
        };
        let net = network(addr, prefix);
        if net != addr {
            // Most likely a typo; silently widening or narrowing it would vouch for other hosts.
            return Err(bad(format!(
                "it has host bits set; the range is {net}/{prefix}"
            )));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// `addr` with the bits past `prefix` cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::from((u32::from(v4) & mask_v4(prefix)).to_be_bytes()),
        IpAddr::V6(v6) => IpAddr::from((u128::from(v6) & mask_v6(prefix)).to_be_bytes()),
    }
}

/// DNS and IP subtrees of one kind (permitted or excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Subtrees {
    dns: Vec<String>,
    ips: Vec<IpNet>,
}

/// The name constraints of a CA, as far as DNS names and IP addresses go (the only names our
/// leaves carry). Empty: any name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameConstraints {
    permitted: Subtrees,
    excluded: Subtrees,
}

impl NameConstraints {
    /// Only names under the `dns` suffixes and addresses in the `ips` ranges; a type with none
    /// given is excluded entirely. Nothing given: no constraints.
    pub fn permit(dns: &[String], ips: &[IpNet]) -> Self {
        if dns.is_empty() && ips.is_empty() {
            return Self::default();
        }
        let mut excluded = Subtrees::default();
        if dns.is_empty() {
            // The empty DNS constraint matches every DNS name (RFC 5280 4.2.1.10, webpki).
            excluded.dns.push(String::new());
        }
        if ips.is_empty() {
            excluded.ips = vec![IpNet::ALL_V4, IpNet::ALL_V6];
        }
        Self {
            permitted: Subtrees {
                dns: dns.to_vec(),
                ips: ips.to_vec(),
            },
            excluded,
        }
    }

    /// The constraints of a DER certificate; empty when it has none. Fails on a constraint it
    /// cannot read, rather than treat the CA as unconstrained.
    pub fn of(cert: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let Some(extension) = cert
            .name_constraints()
            .map_err(|e| format!("unreadable name constraints: {e}"))?
        else {
            return Ok(Self::default());
        };
        let read = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
            let mut out = Subtrees::default();
            for subtree in subtrees.iter().flatten() {
                match &subtree.base {
                    GeneralName::DNSName(dns) => out.dns.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => out.ips.push(
                        IpNet::from_subtree(bytes)
                            .ok_or("a malformed IP address name constraint")?,
                    ),
                    // Other name types never appear in our leaves.
                    _ => {}
                }
            }
            Ok::<_, String>(out)
        };
        Ok(Self {
            permitted: read(&extension.value.permitted_subtrees)?,
            excluded: read(&extension.value.excluded_subtrees)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The rcgen extension; `None` when there is nothing to constrain.
    pub(crate) fn to_rcgen(&self) -> Option<rcgen::NameConstraints> {
        let subtrees = |s: &Subtrees| -> Vec<GeneralSubtree> {
            let dns = s.dns.iter().cloned().map(GeneralSubtree::DnsName);
            let ips = s
                .ips
                .iter()
                .map(|ip| GeneralSubtree::IpAddress(ip.subnet()));
            dns.chain(ips).collect()
        };
        (!self.is_empty()).then(|| rcgen::NameConstraints {
            permitted_subtrees: subtrees(&self.permitted),
            excluded_subtrees: subtrees(&self.excluded),
        })
    }

    /// Why `name` (a DNS name or an IP address) is outside these constraints, naming the
    /// constraint; `None` when it is allowed.
    pub fn refusal(&self, name: &str) -> Option<String> {
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                if let Some(net) = self.excluded.ips.iter().find(|net| net.contains(ip)) {
                    return Some(format!("its name constraints exclude {net}"));
                }
                let permitted = &self.permitted.ips;
                (!permitted.is_empty() && !permitted.iter().any(|net| net.contains(ip))).then(
                    || {
                        format!(
                            "its name constraints permit only IP addresses in {}",
                            list(permitted)
                        )
                    },
                )
            }
            Err(_) => {
                if let Some(suffix) = self.excluded.dns.iter().find(|s| under(name, s)) {
                    return Some(if suffix.is_empty() {
                        "its name constraints exclude every DNS name".to_owned()
                    } else {
                        format!("its name constraints exclude names under {suffix}")
                    });
                }
                let permitted = &self.permitted.dns;
                (!permitted.is_empty() && !permitted.iter().any(|s| under(name, s))).then(|| {
                    format!(
                        "its name constraints permit only DNS names under {}",
                        list(permitted)
                    )
                })
            }
        }
    }
}

/// What the constraints allow, for `init-intermediate`, `inspect` and refusals: "DNS names only
/// under backend-api; no IP addresses".
impl fmt::Display for NameConstraints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (permitted, excluded) = (&self.permitted, &self.excluded);
        let dns = if excluded.dns.iter().any(String::is_empty) {
            "no DNS names".to_owned()
        } else {
            let mut dns = if permitted.dns.is_empty() {
                "any DNS name".to_owned()
            } else {
                format!("DNS names only under {}", list(&permitted.dns))
            };
            if !excluded.dns.is_empty() {
                dns += &format!(" except under {}", list(&excluded.dns));
            }
            dns
        };
        let all = [IpNet::ALL_V4, IpNet::ALL_V6];
        let ips = if all.iter().all(|net| excluded.ips.contains(net)) {
            "no IP addresses".to_owned()
        } else {
            let mut ips = if permitted.ips.is_empty() {
                "any IP address".to_owned()
            } else {
                format!("IP addresses only in {}", list(&permitted.ips))
            };
            if !excluded.ips.is_empty() {
                ips += &format!(" except in {}", list(&excluded.ips));
            }
            ips
        };
        write!(f, "{dns}; {ips}")
    }
}

/// Whether DNS `name` is within the subtree `suffix`, as webpki matches a constraint: the empty
/// suffix holds every name, `.internal` only names below it, `internal` itself and those below.
fn under(name: &str, suffix: &str) -> bool {
    let (name, suffix) = (name.to_ascii_lowercase(), suffix.to_ascii_lowercase());
    if suffix.is_empty() {
        return true;
    }
    if suffix.starts_with('.') {
        return name.len() > suffix.len() && name.ends_with(&suffix);
    }
    name == suffix || name.ends_with(&format!(".{suffix}"))
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Validity};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ip_ranges_parse_or_say_why_not() {
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(net("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(net("::1").to_string(), "::1/128");
        assert_eq!(net("0.0.0.0/0"), IpNet::ALL_V4);
        for (input, want) in [
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("fd00::/129", "prefix length must be 0 to 128"),
            ("10.0.0.0/x", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("backend-api", "\"backend-api\" is not an IP address"),
            ("10.0.0.1/8", "host bits set; the range is 10.0.0.0/8"),
            ("fd00::1/8", "the range is fd00::/8"),
            ("", "is not an IP address"),
        ] {
            let err = input.parse::<IpNet>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(
                err.starts_with(&format!("{input:?} is not an IP range")),
                "{err}"
            );
        }
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("127.0.0.0/8").contains(ip("127.255.0.1")));
        assert!(!net("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(net("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!net("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(IpNet::ALL_V4.contains(ip("8.8.8.8")));
        assert!(!IpNet::ALL_V4.contains(ip("::1")), "families never mix");
        assert!(IpNet::ALL_V6.contains(ip("2001:db8::1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
    }

    #[test]
    fn dns_only_excludes_every_ip_and_ip_only_every_dns_name() {
        let dns = NameConstraints::permit(&["internal".into()], &[]);
        assert_eq!(dns.refusal("api.internal"), None);
        assert_eq!(dns.refusal("internal"), None);
        assert!(
            dns.refusal("bank.com")
                .unwrap()
                .contains("only DNS names under internal")
        );
        assert!(dns.refusal("notinternal").is_some());
        assert!(
            dns.refusal("8.8.8.8")
                .unwrap()
                .contains("exclude 0.0.0.0/0")
        );
        assert!(dns.refusal("::1").unwrap().contains("exclude ::/0"));
        assert_eq!(
            dns.to_string(),
            "DNS names only under internal; no IP addresses"
        );

        let ips = NameConstraints::permit(&[], &[net("127.0.0.0/8")]);
        assert_eq!(ips.refusal("127.0.0.1"), None);
        assert!(
            ips.refusal("8.8.8.8")
                .unwrap()
                .contains("only IP addresses in 127.0.0.0/8")
        );
        assert!(
            ips.refusal("::1").is_some(),
            "an IPv6 address is outside an IPv4 range"
        );
        assert!(
            ips.refusal("backend-api")
                .unwrap()
                .contains("every DNS name")
        );
        assert_eq!(
            ips.to_string(),
            "no DNS names; IP addresses only in 127.0.0.0/8"
        );

        let both = NameConstraints::permit(&["backend-api".into()], &[net("fd00::/8")]);
        assert_eq!(both.refusal("backend-api"), None);
        assert_eq!(both.refusal("fd00::5"), None);
        assert!(both.refusal("10.0.0.1").is_some());
        assert_eq!(
            both.to_string(),
            "DNS names only under backend-api; IP addresses only in fd00::/8"
        );

        let none = NameConstraints::permit(&[], &[]);
        assert!(none.is_empty() && none.to_rcgen().is_none());
        assert_eq!(none.refusal("8.8.8.8"), None);
    }

    #[test]
    fn a_leading_dot_holds_only_names_below() {
        assert!(under("a.internal", ".internal"));
        assert!(!under("internal", ".internal"));
        assert!(under("A.Internal", "internal"));
        assert!(!under("xinternal", "internal"));
        assert!(under("anything", ""));
    }

    #[test]
    fn constraints_read_back_as_written() {
        let root = Ca::root("Root", Validity::days(2)).unwrap();
        for written in [
            NameConstraints::permit(&["backend-api".into()], &[]),
            NameConstraints::permit(&[], &[net("10.0.0.0/8"), net("fd00::/8")]),
            NameConstraints::permit(&["internal".into()], &[net("192.0.2.7")]),
            NameConstraints::default(),
        ] {
            let inter = root
                .intermediate_with("Inter", Validity::days(1), &written, Default::default())
                .unwrap();
            assert_eq!(NameConstraints::of(inter.cert()).unwrap(), written);
        }
    }

    #[test]
    fn malformed_ip_subtrees_are_refused() {
        assert_eq!(
            IpNet::from_subtree(&[10, 0, 0, 0, 255, 0, 0, 0]),
            Some(net("10.0.0.0/8"))
        );
        assert_eq!(
            IpNet::from_subtree(&[10, 9, 9, 9, 255, 0, 0, 0]),
            Some(net("10.0.0.0/8")),
            "host bits are masked, as webpki does"
        );
        assert_eq!(IpNet::from_subtree(&[10, 0, 0, 0, 255, 0, 255, 0]), None);
        assert_eq!(IpNet::from_subtree(&[10, 0, 0, 0]), None);
    }
}
