//! DNS discovery: a route without `address`/`addresses` serves every A/AAAA record of its
//! upstream host (one per container of a scaled Docker service), looked up again every
//! `resolve_interval`. A failed or empty lookup keeps the last good set and is logged once, until
//! a lookup succeeds again.
//!
//! Lookups go through [`Resolve`], so tests feed changing address sets without touching system
//! files; the proxy uses the system resolver ([`SystemResolver`]: getaddrinfo, which reads
//! `/etc/hosts` and Docker's embedded DNS alike).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Weak;
use std::time::Duration;

use tracing::{info, warn};

use super::Balancer;
use super::settings::MAX_ENDPOINTS;

/// Looks up the addresses of a host. Blocking: called on tokio's blocking threads.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system's resolver (getaddrinfo).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// A lookup that hangs (a dead DNS server) is abandoned after this; the next one starts on time.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a route that has no endpoint at all asks again.
const EMPTY_RETRY: Duration = Duration::from_secs(1);

/// Sorted, without duplicates, or why there is nothing to use.
pub fn lookup(resolver: &dyn Resolve, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut addresses = resolver.resolve(host, port).map_err(|e| e.to_string())?;
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err("the lookup returned no address".into());
    }
    if addresses.len() > MAX_ENDPOINTS {
        warn!(
            host,
            found = addresses.len(),
            kept = MAX_ENDPOINTS,
            "DNS gave more addresses than a route uses; the lowest are kept"
        );
        addresses.truncate(MAX_ENDPOINTS);
    }
    Ok(addresses)
}

/// Looks the balancer's host up every `interval` until the balancer is dropped or retired.
pub async fn run(balancer: Weak<Balancer>, interval: Duration) {
    let mut failing = false;
    loop {
        let (resolver, host, port, wait) = {
            let Some(b) = balancer.upgrade().filter(|b| !b.retired()) else {
                return;
            };
            let wait = if b.endpoint_count() == 0 {
                interval.min(EMPTY_RETRY)
            } else {
                interval
            };
            (b.resolver.clone(), b.host.clone(), b.port, wait)
        };
        tokio::time::sleep(wait).await;
        let lookup_host = host.clone();
        let found = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            tokio::task::spawn_blocking(move || lookup(resolver.as_ref(), &lookup_host, port)),
        )
        .await;
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(join)) => Err(format!("the lookup task failed: {join}")),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(LOOKUP_TIMEOUT)
            )),
        };
        let Some(b) = balancer.upgrade().filter(|b| !b.retired()) else {
            return;
        };
        match found {
            Ok(addresses) => {
                if failing {
                    info!(route = %b.names.route, service = %b.names.service,
                        "DNS lookups of the upstream succeed again");
                    failing = false;
                }
                b.set_addresses(&addresses);
            }
            Err(why) if !failing => {
                failing = true;
                warn!(route = %b.names.route, service = %b.names.service, reason = %why,
                    kept = b.endpoint_count(),
                    "DNS lookup of the upstream failed; the last endpoints found are kept");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Vec<SocketAddr>);

    impl Resolve for Fixed {
        fn resolve(&self, _: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn lookups_are_sorted_deduplicated_and_never_empty() {
        let a: SocketAddr = "10.0.0.2:8443".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:8443".parse().unwrap();
        assert_eq!(lookup(&Fixed(vec![a, b, a]), "x", 1), Ok(vec![b, a]));
        assert!(lookup(&Fixed(vec![]), "x", 1).is_err());
        // A flood of records is cut to the lowest MAX_ENDPOINTS.
        let many: Vec<SocketAddr> = (0..1000u16)
            .map(|i| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8443)))
            .rev()
            .collect();
        let kept = lookup(&Fixed(many), "x", 1).unwrap();
        assert_eq!(kept.len(), MAX_ENDPOINTS);
        assert_eq!(kept[0], SocketAddr::from(([10, 0, 0, 0], 8443)));
        assert_eq!(
            lookup(&SystemResolver, "127.0.0.1", 8443),
            Ok(vec!["127.0.0.1:8443".parse().unwrap()])
        );
    }
}
