//! One immutable generation: everything the request path reads, built by one function from a
//! loaded [`Config`]. Startup and every reload go through [`Generation::build`]; `check` goes
//! through the same loader, so files become TLS configs on one code path only.
//!
//! A request holds the generation it started with to its end (an `Arc`); a connection takes the
//! public TLS config and its clocks from the generation current when it was accepted.
//!
//! When a reload changes whom the proxy trusts, building the next generation also judges the
//! connections already open under the new trust ([`crate::live`]): upstream connections (pooled
//! or tunnelled) whose backend no longer verifies, and client connections whose certificate no
//! longer verifies, are closed before the new generation serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::UnixTime;
use tracing::{info, warn};

use crate::balance::{Balancer, BalancerKey, Resolve};
use crate::config::{ClientAuth, Config};
use crate::live::{self, ClientPeers, Peer};
use crate::metrics::{Metrics, UpstreamSource};
use crate::proxy::Proxy;
use crate::server::PerConnection;
use crate::status::TrustStatus;
use crate::tls::reason::{self, Side};
use crate::upstream::{Pool, PoolKey};

/// How long a reload waits for the connections it severed to be dropped by their holders.
const SEVERED_DROP_WAIT: Duration = Duration::from_secs(2);

/// What the request path and new connections use, never changed once built.
pub struct Generation {
    /// 1 at startup, one more for each applied reload.
    pub number: u64,
    /// The public listener's TLS config and the clocks of each new connection.
    pub connections: PerConnection,
    pub proxy: Proxy,
    /// Whom this generation trusts and what its upstreams presented (`GET /trust`).
    pub trust: TrustStatus,
    /// `[admin] token_file`'s token: the admin listener checks each request against it.
    pub admin_token: Option<Arc<str>>,
    /// Each route's balancer, in the route table's order, for the next generation to keep what
    /// did not change.
    balancers: Box<[Arc<Balancer>]>,
    /// What upstream connections are verified with, to tell whether a reload changes it.
    upstream_trust: [u8; 32],
    /// The same for client certificates (`None`: no client auth).
    client_trust: Option<[u8; 32]>,
    /// Open client connections with a verified certificate, shared by all generations.
    clients: Arc<ClientPeers>,
}

impl Generation {
    /// Builds generation `number` from `config`. A route whose balancing, upstream, client
    /// identity and timeouts are unchanged from `previous` keeps its balancer (endpoints, health
    /// and warm connections); a changed one gets a new balancer that still keeps the warm pools of
    /// the endpoints it shares with the old. When the upstream or client trust changed, open
    /// connections are judged again first. DNS is asked for the endpoints of new routes.
    pub fn build(
        config: &Config,
        number: u64,
        previous: Option<&Generation>,
        metrics: &Arc<Metrics>,
        resolver: &Arc<dyn Resolve>,
    ) -> Self {
        let upstream = &config.upstream_tls;
        let retrust = previous.filter(|p| p.upstream_trust != upstream.trust_id);
        // New handshakes in every old pool use the new trust before open connections are judged,
        // so none opened meanwhile escapes both.
        for balancer in retrust.iter().flat_map(|p| p.balancers.iter()) {
            balancer.retrust(&upstream.verifier);
        }
        let warm: HashMap<PoolKey, Arc<Pool>> = previous
            .iter()
            .flat_map(|p| p.balancers.iter())
            .flat_map(|b| b.pools())
            .collect();
        let balancers: Box<[Arc<Balancer>]> = config
            .routes
            .iter()
            .map(|route| {
                let key = BalancerKey::new(route, &config.timeouts);
                previous
                    .and_then(|p| p.balancers.iter().find(|b| b.key == key).cloned())
                    .unwrap_or_else(|| {
                        Balancer::new(
                            route,
                            &config.timeouts,
                            upstream.verifier.clone(),
                            metrics,
                            resolver.clone(),
                            &|key| warm.get(key).cloned(),
                        )
                    })
            })
            .collect();
        for old in previous.iter().flat_map(|p| p.balancers.iter()) {
            if !balancers.iter().any(|b| Arc::ptr_eq(b, old)) {
                old.retire(&|route, address| {
                    balancers
                        .iter()
                        .any(|b| b.route() == route && b.has(address))
                });
            }
        }
        let trust = TrustStatus::new(config, number, balancers.to_vec());
        let mut severed: Vec<Arc<Peer>> = retrust
            .iter()
            .flat_map(|p| p.balancers.iter())
            .flat_map(|b| b.recheck(&upstream.verifier))
            .collect();

        let client_auth = config.server.client_auth.as_ref();
        let clients = previous.map_or_else(Arc::default, |p| p.clients.clone());
        let client_trust = client_auth.map(|auth| auth.trust_id);
        // Handshakes still running under the previous trust are judged again when they end.
        clients.set_current(client_auth.map(|auth| auth.verifier.clone()));
        if let (Some(previous), Some(auth)) = (previous, client_auth)
            && previous.client_trust != client_trust
        {
            severed.extend(recheck_clients(&clients, auth));
        }
        if !severed.is_empty() {
            let count = severed.len();
            let held = live::wait_closed(severed, SEVERED_DROP_WAIT);
            info!(
                count,
                still_held = held,
                "connections that no longer verify were closed"
            );
        }

        Self {
            number,
            connections: PerConnection::new(
                config.server.tls.clone(),
                &config.timeouts,
                &config.limits,
                client_auth.map(|auth| (clients.clone(), auth.verifier.clone())),
                Some(metrics.clone()),
            ),
            proxy: Proxy::new(
                config.routes.clone(),
                balancers.clone(),
                &config.timeouts,
                &config.limits,
                client_auth.is_some_and(|auth| auth.forward_chain),
                metrics,
                config.log.access,
            ),
            admin_token: config.admin.as_ref().and_then(|a| a.token.clone()),
            trust,
            balancers,
            upstream_trust: upstream.trust_id,
            client_trust,
            clients,
        }
    }
}

impl Generation {
    /// Lists each upstream endpoint's record, with the route its metrics are labelled by, as the
    /// endpoints are when asked.
    pub fn upstreams(&self) -> UpstreamSource {
        let balancers = self.balancers.clone();
        Box::new(move || {
            balancers
                .iter()
                .flat_map(|b| {
                    let route = b.route().to_owned();
                    b.stats().into_iter().map(move |s| (route.clone(), s))
                })
                .collect()
        })
    }
}

/// Judges the open client connections' certificates under the new client trust; severs and logs
/// those that fail.
fn recheck_clients(clients: &ClientPeers, auth: &ClientAuth) -> Vec<Arc<Peer>> {
    let now = UnixTime::now();
    let severed = clients
        .peers
        .sever_failing(|verified| live::judge_client(&auth.verifier, verified, now));
    severed
        .into_iter()
        .map(|(peer, err)| {
            warn!(
                peer = %peer.address,
                reason = %reason::tls(&err, Side::Client),
                "closed a client connection: it no longer passes the reloaded client trust (a revoked or \
                 untrusted certificate, or none where one is now required)"
            );
            peer
        })
        .collect()
}
