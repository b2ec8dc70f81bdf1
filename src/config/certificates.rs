//! Every certificate and CRL a loaded configuration names, in one place: the set the expiry
//! metrics, the trust status and the audit read.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::Config;
use crate::tls::client::Identity;
use crate::tls::revocation::Crl;

/// One certificate the configuration names, with its role. [`Config::certificates`] is the one
/// set the metrics (`trustgate_cert_not_after_timestamp_seconds`) and the audit read.
#[derive(Debug, Clone)]
pub struct NamedCert {
    /// `public`, `anchor`, `upstream_client` or `client_ca`.
    pub role: &'static str,
    /// Where it was read from (the files of a bundle, joined).
    pub file: String,
    /// Its place in its file: 0 for a chain's leaf.
    pub index: usize,
    pub der: CertificateDer<'static>,
    /// For `upstream_client`: the routes presenting it (empty: `[upstream_tls] client_cert`).
    pub routes: Vec<String>,
}

impl Config {
    /// Every certificate this configuration names: the public chain, the upstream anchors, each
    /// distinct client identity for upstreams (with the routes presenting it), the client CAs.
    pub fn certificates(&self) -> Vec<NamedCert> {
        let joined = |files: &[PathBuf]| {
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut certs = Vec::new();
        let mut add =
            |role, file: String, ders: &[CertificateDer<'static>], routes: Vec<String>| {
                for (index, der) in ders.iter().enumerate() {
                    certs.push(NamedCert {
                        role,
                        file: file.clone(),
                        index,
                        der: der.clone(),
                        routes: routes.clone(),
                    });
                }
            };
        add(
            "public",
            self.server.cert.display().to_string(),
            &self.server.chain,
            Vec::new(),
        );
        let anchors_file = joined(&self.upstream_tls.ca_files);
        add(
            "anchor",
            anchors_file,
            &self.upstream_tls.anchors,
            Vec::new(),
        );
        let global = self.upstream_tls.identity.as_ref();
        if let Some(identity) = global {
            let leaf = &identity.chain[..identity.chain.len().min(1)];
            add(
                "upstream_client",
                identity.cert_file.display().to_string(),
                leaf,
                Vec::new(),
            );
        }
        // Each route's own identity once, with every route presenting it.
        let mut overrides: Vec<(&Identity, Vec<String>)> = Vec::new();
        for route in self.routes.iter() {
            let Some(identity) = route.client_identity.as_ref() else {
                continue;
            };
            if global.is_some_and(|global| Arc::ptr_eq(global, identity)) {
                continue;
            }
            let prefix = route.prefix.to_string();
            match overrides
                .iter_mut()
                .find(|(seen, _)| seen.cert_file == identity.cert_file)
            {
                Some((_, prefixes)) => prefixes.push(prefix),
                None => overrides.push((identity, vec![prefix])),
            }
        }
        for (identity, routes) in overrides {
            let leaf = &identity.chain[..identity.chain.len().min(1)];
            add(
                "upstream_client",
                identity.cert_file.display().to_string(),
                leaf,
                routes,
            );
        }
        if let Some(auth) = &self.server.client_auth {
            add(
                "client_ca",
                joined(&auth.ca_files),
                &auth.anchors,
                Vec::new(),
            );
        }
        certs
    }

    /// Every CRL in use: the upstream side's, then the client side's.
    pub fn crls(&self) -> impl Iterator<Item = &Crl> {
        let client = self.server.client_auth.iter().flat_map(|a| &a.crls.crls);
        self.upstream_tls.crls.crls.iter().chain(client)
    }
}
