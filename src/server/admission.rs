//! Who gets what: the `max_connections` permit and the per-IP share of client connections; the
//! turns at the upstreams (per client connection, per source and for the whole proxy, so neither
//! one connection nor one host can hold every upstream connection); the process's file-descriptor
//! budget, split between the two; and an accept loop that backs off quietly when descriptors run out.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// What one admitted connection holds: its `max_connections` permit and its per-IP count. Shared
/// by the connection and, after an upgrade, its tunnel; released when the last holder ends.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _ip: IpShare,
}

impl Admission {
    pub fn new(permit: OwnedSemaphorePermit, ip: IpShare) -> Arc<Self> {
        Arc::new(Self {
            _permit: permit,
            _ip: ip,
        })
    }
}

/// Client connections and upstream turns per source, so one host can take neither every
/// `max_connections` permit nor every upstream connection. An IPv6 client is counted by its /64,
/// the block one host usually gets.
#[derive(Debug)]
pub struct PerIp {
    connections: usize,
    upstream_turns: usize,
    open: Mutex<HashMap<IpAddr, Source>>,
}

#[derive(Debug)]
struct Source {
    connections: usize,
    /// Shared by the source's connections while any is open.
    upstream_turns: Arc<Semaphore>,
}

/// One connection's place in its source's count.
#[derive(Debug)]
pub struct IpShare {
    table: Arc<PerIp>,
    source: IpAddr,
    /// The source's turns at the upstreams.
    pub upstream_turns: Arc<Semaphore>,
}

impl PerIp {
    pub fn new(connections: usize, upstream_turns: usize) -> Arc<Self> {
        Arc::new(Self {
            connections,
            upstream_turns,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A share for one more connection from `ip`, or `None` when its source is at the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpShare> {
        let source = source_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let entry = open.entry(source).or_insert_with(|| Source {
            connections: 0,
            upstream_turns: Arc::new(Semaphore::new(self.upstream_turns)),
        });
        if entry.connections >= self.connections {
            return None;
        }
        entry.connections += 1;
        Some(IpShare {
            table: self.clone(),
            source,
            upstream_turns: entry.upstream_turns.clone(),
        })
    }
}

impl Drop for IpShare {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = open.get_mut(&self.source) {
            entry.connections -= 1;
            if entry.connections == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// How the process's descriptors are split: client connections and upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    pub clients: usize,
    pub upstreams: usize,
}

impl DescriptorBudget {
    /// Splits `usable` descriptors: clients get at most half, upstream connections the rest.
    pub fn split(usable: u64, max_connections: usize) -> Self {
        let usable = usize::try_from(usable).unwrap_or(usize::MAX).max(2);
        let clients = max_connections.min(usable / 2).max(1);
        Self {
            clients,
            upstreams: usable - clients,
        }
    }
}

/// The address a connection counts against: IPv4 as is (also when mapped into IPv6), IPv6 by /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Descriptors kept back from client connections for upstream connections, certificate and
/// config reads and logs.
const FD_RESERVE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the descriptors left for client
/// and upstream connections after a small reserve. `None` when the limit cannot be read.
pub fn usable_descriptors() -> Option<u64> {
    Some(raise_fd_limit()?.saturating_sub(FD_RESERVE))
}

#[cfg(unix)]
fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(error = %io::Error::last_os_error(), "cannot read the file descriptor limit");
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard limit
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            warn!(error = %io::Error::last_os_error(), "cannot raise the file descriptor limit");
        }
    }
    info!(
        limit = limit.rlim_cur,
        raised_from = before,
        "file descriptor limit (RLIMIT_NOFILE)"
    );
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn raise_fd_limit() -> Option<u64> {
    None
}

/// True for errors that mean this process or the system is out of a resource (descriptors,
/// buffers, memory), not that a peer misbehaved.
pub fn is_resource_exhaustion(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        error.kind() == io::ErrorKind::OutOfMemory
    }
}

/// One log line per period for an event that can repeat thousands of times a second (a flood
/// must not become a log flood).
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn every(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Counts one event; `Some(events left unlogged since the last line)` when this one is to be
    /// logged.
    pub fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Backoff for failing `accept` calls: out of descriptors, accept fails at once again and again,
/// so the loop sleeps (10 ms doubling to 1 s) and logs one line per 10 s.
#[derive(Debug)]
pub struct AcceptErrors {
    backoff: Duration,
    log: Throttle,
}

impl Default for AcceptErrors {
    fn default() -> Self {
        Self {
            backoff: Self::FIRST,
            log: Throttle::every(Duration::from_secs(10)),
        }
    }
}

impl AcceptErrors {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure; returns how long to wait before accepting again.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        if let Some(suppressed) = self.log.hit() {
            warn!(
                %error,
                suppressed,
                out_of_resources = is_resource_exhaustion(error),
                "accept failed; backing off (further failures are counted, logged every 10s)"
            );
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Self::MAX);
        wait
    }

    /// An accept succeeded: the next failure starts the backoff over.
    pub fn succeeded(&mut self) {
        self.backoff = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_split_between_clients_and_upstreams() {
        assert_eq!(
            DescriptorBudget::split(1000, 10_000),
            DescriptorBudget {
                clients: 500,
                upstreams: 500
            }
        );
        assert_eq!(
            DescriptorBudget::split(1_000_000, 10_000),
            DescriptorBudget {
                clients: 10_000,
                upstreams: 990_000
            }
        );
        assert_eq!(DescriptorBudget::split(0, 10).clients, 1);
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let table = PerIp::new(2, 8);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let first = table.admit(a).unwrap();
        let _second = table.admit(b).unwrap();
        assert!(table.admit(a).is_none(), "same /64 is at its limit");
        assert!(table.admit(other).is_some(), "another /64 is not");
        drop(first);
        assert!(
            table.admit(b).is_some(),
            "a closed connection frees its share"
        );
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let table = PerIp::new(1, 8);
        let _v4 = table.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert!(table.admit("::ffff:192.0.2.7".parse().unwrap()).is_none());
    }

    #[test]
    fn accept_backoff_doubles_to_a_ceiling_and_resets() {
        let mut errors = AcceptErrors::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_resource_exhaustion(&emfile));
        let waits: Vec<_> = (0..10).map(|_| errors.failed(&emfile)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert_eq!(waits[9], Duration::from_secs(1));
        assert_eq!(errors.log.suppressed, 9);
        errors.succeeded();
        assert_eq!(errors.failed(&emfile), Duration::from_millis(10));
    }
}
