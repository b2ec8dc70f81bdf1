//! trustgate: a TLS reverse proxy that is the single trust enforcement point between public clients
//! and internal HTTPS backends.
//!
//! # Trust model
//! Clients reach trustgate over HTTPS with a public certificate. trustgate forwards each request, by
//! path prefix, over HTTPS to a backend whose certificate comes from an internal CA. The internal CA
//! is the *only* trust anchor for upstreams: SNI is the service name, the certificate's SAN must match
//! it, the chain and validity are checked, and anything else is refused with a 502 and a log line
//! that says why. Verification cannot be switched off; there is no code path that skips it.
//!
//! # Request lifecycle
//! 1. [`server`] admits the connection ([`server::admission`]: the `max_connections` permit, the
//!    per-IP share), runs the public TLS handshake and serves HTTP/1.1 or HTTP/2 on it, while
//!    [`server::watchdog`] closes it when the client stalls, idles or stops reading.
//! 2. [`gateway::Gateway`] hands the request to the current [`generation::Generation`]'s
//!    [`proxy::Proxy::handle`], which picks the route ([`routing`]), rewrites the path and headers
//!    ([`proxy::headers`]), waits for a turn ([`connection`]), picks one of the route's endpoints
//!    ([`balance`]: DNS discovery, balancing, health, retries) and sends the request through that
//!    endpoint's pool of verified connections ([`upstream`]).
//! 3. The response streams back ([`body`]); failures become a status code in one place
//!    ([`proxy::error`]).
//!
//! # Generations and reloads
//! Everything the request path reads (the public TLS config, connection clocks, routes, one
//! balancer per route with a pool per endpoint) is one immutable [`generation::Generation`], built from a
//! [`config::Config`] (the loader `check` uses too) and held in an `ArcSwap`: the request path
//! takes no lock of its own. [`reload`] builds a new generation on SIGHUP or when a watched file
//! changes ([`watch`]) and swaps it in, all or nothing; a request finishes on the generation it
//! started with.
//!
//! # Around the proxy
//! - [`pki`] runs the internal CA (offline root, constrained intermediate, one leaf per service);
//!   the demo and the tests make their certificates with it too.
//! - [`audit`] finds the deployment mistakes that undo the trust model.
//! - [`admin`] serves health, readiness and reloads on the operators' own listener.
//! - [`echo`] and [`demo`] are the example backend and the one-command quickstart.

pub mod admin;
pub mod audit;
pub mod balance;
pub mod body;
pub mod config;
pub mod connection;
pub mod demo;
pub mod echo;
pub mod gateway;
pub mod generation;
pub mod io;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod status;
pub mod tls;
pub mod upstream;
pub mod watch;

pub use config::Config;
pub use gateway::Gateway;
