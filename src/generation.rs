//! One immutable generation: everything the request path reads, built by one function from a
//! loaded [`Config`]. Startup and every reload go through [`Generation::build`]; `check` goes
//! through the same loader, so files become TLS configs on one code path only.
//!
//! A request holds the generation it started with to its end (an `Arc`); a connection takes the
//! public TLS config and its clocks from the generation current when it was accepted.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::proxy::Proxy;
use crate::server::PerConnection;
use crate::upstream::{Pool, PoolKey};

/// What the request path and new connections use, never changed once built.
pub struct Generation {
    /// 1 at startup, one more for each applied reload.
    pub number: u64,
    /// The public listener's TLS config and the clocks of each new connection.
    pub connections: PerConnection,
    pub proxy: Proxy,
    /// Every pool this generation uses, for the next generation to keep what did not change.
    pools: HashMap<PoolKey, Arc<Pool>>,
}

impl Generation {
    /// Builds generation `number` from `config`. Pools whose upstream, address, timeouts and
    /// trust are unchanged from `previous` are kept, warm connections and all; the others are
    /// new, so no connection verified under other trust is ever reused.
    pub fn build(config: &Config, number: u64, previous: Option<&Generation>) -> Self {
        let trust = config.upstream_tls.trust_id;
        let mut pools: HashMap<PoolKey, Arc<Pool>> = HashMap::new();
        let route_pools = config
            .routes
            .iter()
            .map(|route| {
                let key = PoolKey::new(route, trust, &config.timeouts);
                let pool = pools.entry(key.clone()).or_insert_with(|| {
                    previous
                        .and_then(|p| p.pools.get(&key).cloned())
                        .unwrap_or_else(|| Arc::new(Pool::new(&key, &config.upstream_tls.client)))
                });
                pool.clone()
            })
            .collect();
        Self {
            number,
            connections: PerConnection::new(
                config.server.tls.clone(),
                &config.timeouts,
                &config.limits,
            ),
            proxy: Proxy::new(
                config.routes.clone(),
                route_pools,
                &config.timeouts,
                &config.limits,
            ),
            pools,
        }
    }
}
