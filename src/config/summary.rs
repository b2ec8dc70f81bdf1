//! What `trustgate check` prints about a loaded configuration.

use std::fmt;

use super::Config;
use crate::pki::inspect::rfc3339;
use crate::tls;
use crate::tls::client::Identity;
use crate::tls::revocation::CrlSet;

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
        crls(f, "upstream", &config.upstream_tls.crls)?;
        if let Some(identity) = &config.upstream_tls.identity {
            writeln!(
                f,
                "client certificate for upstreams: {}",
                self::identity(identity)
            )?;
        }
        if let Some(auth) = &config.server.client_auth {
            writeln!(
                f,
                "client certificates on the listener: {} ({}), anchors:",
                if auth.mandatory {
                    "required"
                } else {
                    "optional, routes decide"
                },
                if auth.forward_chain {
                    "leaf and chain forwarded"
                } else {
                    "leaf forwarded"
                }
            )?;
            for anchor in &auth.anchors {
                writeln!(f, "  {}", tls::subject(anchor))?;
            }
            crls(f, "client", &auth.crls)?;
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
            let balancing = &route.balancing;
            write!(f, "  {}", balancing.discovery)?;
            if balancing.discovery.addresses().is_none_or(|a| a.len() > 1) {
                write!(
                    f,
                    "  {} retries {} fails {} within {}",
                    balancing.policy,
                    balancing.retries,
                    balancing.fails,
                    humantime::format_duration(balancing.fail_timeout)
                )?;
            }
            if let Some(check) = &balancing.health {
                write!(
                    f,
                    "  health GET {} every {} expect {}",
                    check.path,
                    humantime::format_duration(check.interval),
                    check.expect
                )?;
            }
            if route.require_client_cert {
                write!(f, "  client certificate required")?;
            }
            if route.max_request_body != config.limits.max_request_body {
                write!(f, "  bodies up to {} bytes", route.max_request_body)?;
            }
            let global = config.upstream_tls.identity.as_ref().map(|i| i.id);
            if let Some(identity) = &route.client_identity
                && Some(identity.id) != global
            {
                write!(f, "  presents {}", self::identity(identity))?;
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
             connection ({} per IP), uploads at least {} bytes/s and at most {} bytes",
            config.server.max_connections,
            l.max_connections_per_ip,
            l.h2_max_streams,
            l.upstream_per_connection,
            l.upstream_per_ip,
            l.min_upload_rate,
            l.max_request_body
        )?;
        write!(f, "\nworkers: {} runtime thread(s)", config.server.workers)
    }
}

/// One line per CRL: issuer, thisUpdate, nextUpdate, revoked serials; or that revocation is off.
fn crls(f: &mut fmt::Formatter<'_>, side: &str, set: &CrlSet) -> fmt::Result {
    if set.is_empty() {
        return writeln!(f, "{side} revocation: off (no crl)");
    }
    writeln!(f, "{side} revocation: {}", set.policy)?;
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| secs.to_string(), rfc3339)
    };
    for crl in &set.crls {
        writeln!(
            f,
            "  CRL {} from \"{}\": thisUpdate {}, nextUpdate {}, {} revoked",
            crl.path.display(),
            crl.issuer,
            at(crl.this_update),
            crl.next_update.map_or_else(|| "none".to_owned(), at),
            crl.revoked_count()
        )?;
    }
    Ok(())
}

fn identity(identity: &Identity) -> String {
    let subject = identity.chain.first().map(tls::subject).unwrap_or_default();
    format!("{} ({subject})", identity.cert_file.display())
}
