//! `[[route]]`: prefixes, upstreams, client identities and balancing, checked together (unique
//! prefixes, client certificates only where client authentication is on).

use std::collections::HashMap;
use std::sync::Arc;

use super::settings::MAX_REQUEST_BODY_CEILING;
use super::{Limits, Loader, file};
use crate::routing::{Prefix, Route, RouteTable, Upstream};
use crate::tls::client::Identity;

impl Loader<'_> {
    pub(super) fn routes(
        &mut self,
        entries: Vec<file::RouteEntry>,
        default_identity: Option<Arc<Identity>>,
        client_auth_on: bool,
        limits: &Limits,
    ) -> Option<RouteTable> {
        if entries.is_empty() {
            self.report(
                None,
                Some("route".into()),
                "no [[route]] is defined: every request would get 404",
            );
            return None;
        }
        let mut routes = Vec::new();
        let mut prefixes: HashMap<String, usize> = HashMap::new();
        let mut complete = true;
        for (i, entry) in entries.into_iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            let prefix = self.check(
                &entry.prefix,
                &key("prefix"),
                Prefix::parse(entry.prefix.get_ref()),
            );
            let upstream = self.check(
                &entry.upstream,
                &key("upstream"),
                Upstream::parse(entry.upstream.get_ref()),
            );
            let balancing = self.balancing(&entry, &key);
            let identity = self.identity(
                entry.upstream_client_cert.as_ref(),
                entry.upstream_client_key.as_ref(),
                (&key("upstream_client_cert"), &key("upstream_client_key")),
            );
            let Some(identity) = identity else {
                complete = false;
                continue;
            };
            let require_client_cert = entry.require_client_cert.unwrap_or(false);
            if require_client_cert && !client_auth_on {
                self.report(
                    Some(entry.prefix.span()),
                    Some(key("require_client_cert")),
                    "no client can present a certificate: add [server.client_auth] (mode = \
                     \"optional\" lets routes decide)",
                );
                complete = false;
            }
            let max_request_body = self.count(
                entry.max_request_body.as_ref(),
                &key("max_request_body"),
                0..=MAX_REQUEST_BODY_CEILING,
                limits.max_request_body,
            );
            let (Some(prefix), Some(upstream), Some(max_request_body)) =
                (prefix, upstream, max_request_body)
            else {
                complete = false;
                continue;
            };
            let line = self.line(entry.prefix.span().start);
            if let Some(first) = prefixes.insert(prefix.as_str().to_owned(), line) {
                self.report(
                    Some(entry.prefix.span()),
                    Some(key("prefix")),
                    format!("prefix \"{prefix}\" is already routed on line {first}"),
                );
                complete = false;
            }
            routes.push(Route {
                prefix,
                upstream,
                balancing,
                preserve_host: entry.preserve_host.unwrap_or(true),
                client_identity: identity.or_else(|| default_identity.clone()),
                require_client_cert,
                max_request_body,
            });
        }
        complete.then(|| RouteTable::new(routes))
    }
}
