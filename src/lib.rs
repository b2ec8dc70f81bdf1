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
//! 2. [`proxy::Proxy::handle`] picks the route ([`routing`]), rewrites the path and headers
//!    ([`proxy::headers`]) and sends the request through the pooled upstream client ([`upstream`]).
//! 3. The response streams back; failures become a status code in one place ([`proxy::error`]).
//!
//! Everything the proxy needs is built once, at load, by [`config::Config::load`]: TLS configs,
//! trust roots and the route table are immutable afterwards, so the request path takes no lock of
//! its own (the upstream connection pool inside hyper-util keeps its own).
//!
//! # Around the proxy
//! - [`pki`] runs the internal CA (offline root, constrained intermediate, one leaf per service);
//!   the demo and the tests make their certificates with it too.
//! - [`audit`] finds the deployment mistakes that undo the trust model.
//! - [`echo`] and [`demo`] are the example backend and the one-command quickstart.

pub mod audit;
pub mod body;
pub mod config;
pub mod connection;
pub mod demo;
pub mod echo;
pub mod gateway;
pub mod generation;
pub mod pki;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watch;

pub use config::Config;
pub use gateway::Gateway;
