//! What `trustgate check` prints about a loaded configuration.

use std::fmt;

use super::Config;
use crate::tls;

/// A human summary of a loaded configuration.
pub(super) struct Summary<'a>(pub(super) &'a Config);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.0;
        writeln!(f, "config {}: OK", config.path.display())?;
        writeln!(
            f,
            "listen {} with {} ({}, {} certificate(s) in the chain)",
            config.server.listen,
            config.server.cert.display(),
            config
                .server
                .chain
                .first()
                .map(tls::subject)
                .unwrap_or_default(),
            config.server.chain.len()
        )?;
        writeln!(
            f,
            "upstream trust anchors (the only CAs trusted for upstreams):"
        )?;
        for anchor in &config.upstream_tls.anchors {
            writeln!(f, "  {}", tls::subject(anchor))?;
        }
        writeln!(f, "routes:")?;
        for route in config.routes.iter() {
            write!(
                f,
                "  {} -> {}  verified name \"{}\"",
                route.prefix,
                route.upstream,
                route.upstream.host()
            )?;
            if let Some(address) = route.address {
                write!(f, "  via {address}")?;
            }
            writeln!(
                f,
                "  host {}",
                if route.preserve_host {
                    "preserved"
                } else {
                    "rewritten"
                }
            )?;
        }
        let t = config.timeouts;
        let d = humantime::format_duration;
        writeln!(
            f,
            "timeouts: connect {}, response {}, client header {}, idle {}, client send {}, \
             tunnel idle {}; shutdown grace {}",
            d(t.connect),
            d(t.response),
            d(t.client_header),
            d(t.idle),
            d(t.client_send),
            d(t.tunnel_idle),
            d(config.server.shutdown_grace)
        )?;
        let l = config.limits;
        write!(
            f,
            "limits: {} connections ({} per IP), {} HTTP/2 streams and {} upstream requests per \
             connection ({} per IP), uploads at least {} bytes/s",
            config.server.max_connections,
            l.max_connections_per_ip,
            l.h2_max_streams,
            l.upstream_per_connection,
            l.upstream_per_ip,
            l.min_upload_rate
        )
    }
}
