//! The trust material: upstream anchors and CRLs with their revocation policy, the client
//! identity presented to upstreams, and client authentication on the public listener.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use toml::Spanned;

use super::{ClientAuth, Loader, UpstreamTls, file};
use crate::tls;
use crate::tls::client::Identity;
use crate::tls::revocation::{CrlSet, Depth, Policy};

/// The revocation keys `[upstream_tls]` and `[server.client_auth]` share.
pub(super) struct RevocationKeys<'a> {
    table: &'static str,
    crl: Option<&'a Spanned<file::OneOrMany>>,
    revocation: Option<&'a Spanned<String>>,
    unknown_status: Option<&'a Spanned<String>>,
    crl_expired: Option<&'a Spanned<String>>,
}

/// How close to its nextUpdate a CRL gets a warning.
const CRL_WARNING: i64 = 48 * 3600;

impl Loader<'_> {
    pub(super) fn client_auth(&mut self, table: file::ClientAuthTable) -> Option<ClientAuth> {
        let mandatory = match table.mode.as_ref() {
            None => Some(true),
            Some(mode) => self.choice(
                mode,
                "server.client_auth.mode",
                &[("require", true), ("optional", false)],
            ),
        };
        let anchors = self.anchors(&table.ca, "server.client_auth.ca");
        let crls = self.revocation(RevocationKeys {
            table: "server.client_auth",
            crl: table.crl.as_ref(),
            revocation: table.revocation.as_ref(),
            unknown_status: table.unknown_status.as_ref(),
            crl_expired: table.crl_expired.as_ref(),
        });
        let ((ca_files, anchors), crls, mandatory) = (anchors?, crls?, mandatory?);
        let verifier = tls::server::client_verifier(&anchors, &crls, mandatory);
        let verifier = self.check(&table.ca, "server.client_auth.ca", verifier)?;
        let mode = if mandatory {
            "client require"
        } else {
            "client optional"
        };
        Some(ClientAuth {
            trust_id: tls::client::trust_id(&anchors, &crls, mode),
            ca_files,
            anchors,
            crls,
            mandatory,
            forward_chain: table.forward_chain.unwrap_or(false),
            verifier,
        })
    }

    /// The CA files of `ca`, each loaded and the bundle judged as trust anchors.
    pub(super) fn anchors(
        &mut self,
        ca: &Spanned<file::OneOrMany>,
        key: &str,
    ) -> Option<(Vec<PathBuf>, Vec<CertificateDer<'static>>)> {
        let files = ca.get_ref().as_slice();
        if files.is_empty() {
            self.report(
                Some(ca.span()),
                Some(key.into()),
                format!(
                    "names no file: the {} CA certificate is required",
                    if key.starts_with("upstream") {
                        "internal"
                    } else {
                        "client"
                    }
                ),
            );
            return None;
        }
        let mut bundle = Vec::new();
        let mut complete = true;
        for raw in files {
            if raw.trim().is_empty() {
                self.report(
                    Some(ca.span()),
                    Some(key.into()),
                    "an empty path: name the CA certificate file",
                );
                complete = false;
                continue;
            }
            let path = self.resolve(raw);
            match self.check(ca, key, tls::load_ca_certs(&path)) {
                Some(certs) => bundle.push((path, certs)),
                None => complete = false,
            }
        }
        if !complete {
            return None;
        }
        let system = tls::anchors::SystemStore::distribution();
        let errors = tls::anchors::judge(&bundle, &system, time::OffsetDateTime::now_utc());
        if !errors.is_empty() {
            for error in errors {
                self.report(Some(ca.span()), Some(key.into()), error);
            }
            return None;
        }
        let (ca_files, anchors): (Vec<_>, Vec<_>) = bundle.into_iter().unzip();
        Some((ca_files, anchors.into_iter().flatten().collect()))
    }

    /// `crl` and the policy keys. Without `crl` there is no revocation checking, so the policy
    /// keys alone are a mistake. An expired CRL under `crl_expired = "deny"` is an error (every
    /// certificate it covers would be refused); one close to its nextUpdate is a warning.
    pub(super) fn revocation(&mut self, keys: RevocationKeys<'_>) -> Option<CrlSet> {
        let table = keys.table;
        let key = |name: &str| format!("{table}.{name}");
        let depth = keys.revocation.map(|v| {
            self.choice(
                v,
                &key("revocation"),
                &[("chain", Depth::Chain), ("leaf", Depth::Leaf)],
            )
        });
        let allow = [("deny", false), ("allow", true)];
        let unknown = keys
            .unknown_status
            .map(|v| self.choice(v, &key("unknown_status"), &allow));
        let expired = keys
            .crl_expired
            .map(|v| self.choice(v, &key("crl_expired"), &allow));
        let policy = Policy {
            depth: depth.unwrap_or(Some(Depth::Chain))?,
            allow_unknown: unknown.unwrap_or(Some(false))?,
            allow_expired: expired.unwrap_or(Some(false))?,
        };
        let Some(crl) = keys.crl else {
            let set = [
                ("revocation", keys.revocation),
                ("unknown_status", keys.unknown_status),
                ("crl_expired", keys.crl_expired),
            ];
            let mut misplaced = false;
            for (name, value) in set {
                if let Some(value) = value {
                    misplaced = true;
                    self.report(
                        Some(value.span()),
                        Some(key(name)),
                        format!("has no effect without {table}.crl: name the CRL files to check"),
                    );
                }
            }
            return (!misplaced).then(CrlSet::default);
        };
        let files = crl.get_ref().as_slice();
        if files.is_empty() {
            self.report(
                Some(crl.span()),
                Some(key("crl")),
                "names no file: remove the key to turn revocation checking off",
            );
            return None;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut crls = Vec::new();
        let mut complete = true;
        for raw in files {
            let path = self.resolve(raw);
            let Some(loaded) = self.check(crl, &key("crl"), tls::revocation::load(&path)) else {
                complete = false;
                continue;
            };
            for one in loaded {
                let next = one.next_update.unwrap_or(i64::MAX);
                let when = |seconds: i64| crate::pki::inspect::human_span(seconds.unsigned_abs());
                if next < now && !policy.allow_expired {
                    self.report(
                        Some(crl.span()),
                        Some(key("crl")),
                        format!(
                            "{}: the CRL from \"{}\" expired {} ago, and crl_expired = \"deny\" \
                             would refuse every certificate it covers; publish a new one \
                             (trustgate pki crl)",
                            path.display(),
                            one.issuer_name,
                            when(now - next)
                        ),
                    );
                    complete = false;
                } else if next < now {
                    self.warnings.push(format!(
                        "{}: the CRL from \"{}\" expired {} ago and is still used \
                         (crl_expired = \"allow\")",
                        path.display(),
                        one.issuer_name,
                        when(now - next)
                    ));
                } else if next - now < CRL_WARNING {
                    self.warnings.push(format!(
                        "{}: the CRL from \"{}\" reaches its nextUpdate in {}; publish the next \
                         one before then",
                        path.display(),
                        one.issuer_name,
                        when(next - now)
                    ));
                }
                // webpki checks a certificate against the first CRL from its issuer only: a
                // revocation in a second one (a newer list next to the old) would not count.
                if let Some(first) = crls
                    .iter()
                    .find(|c: &&tls::revocation::Crl| c.same_issuer(&one))
                {
                    self.report(
                        Some(crl.span()),
                        Some(key("crl")),
                        format!(
                            "{} and {} both hold a CRL from \"{}\": only the first would be \
                             checked; keep only the current one",
                            first.path.display(),
                            path.display(),
                            one.issuer_name
                        ),
                    );
                    complete = false;
                }
                crls.push(one);
            }
        }
        complete.then_some(CrlSet { crls, policy })
    }

    /// One of `options`, by name.
    pub(super) fn choice<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options
            .iter()
            .find(|(name, _)| *name == value.get_ref().as_str())
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            self.report(
                Some(value.span()),
                Some(key.into()),
                format!("{:?} is not one of {}", value.get_ref(), names.join(", ")),
            );
        }
        found
    }

    /// A client certificate and key for upstreams: both keys or neither.
    pub(super) fn identity(
        &mut self,
        cert: Option<&Spanned<String>>,
        key: Option<&Spanned<String>>,
        names: (&str, &str),
    ) -> Option<Option<Arc<Identity>>> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Some(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(given), None) | (None, Some(given)) => {
                self.report(
                    Some(given.span()),
                    Some(if cert.is_some() { names.0 } else { names.1 }.into()),
                    format!("{} and {} go together: set both", names.0, names.1),
                );
                return None;
            }
        };
        let cert_file = self.resolve(cert.get_ref());
        let key_file = self.resolve(key.get_ref());
        let chain = tls::load_certs(&cert_file);
        let chain = self.check(cert, names.0, chain);
        let private_key = tls::load_key(&key_file);
        let private_key = self.check(key, names.1, private_key);
        let identity = Identity::new(cert_file, key_file, chain?, private_key?, UnixTime::now());
        self.check(cert, names.0, identity)
            .map(|i| Some(Arc::new(i)))
    }

    pub(super) fn upstream_tls(&mut self, table: file::UpstreamTlsTable) -> Option<UpstreamTls> {
        let anchors = self.anchors(&table.ca, "upstream_tls.ca");
        let crls = self.revocation(RevocationKeys {
            table: "upstream_tls",
            crl: table.crl.as_ref(),
            revocation: table.revocation.as_ref(),
            unknown_status: table.unknown_status.as_ref(),
            crl_expired: table.crl_expired.as_ref(),
        });
        let identity = self.identity(
            table.client_cert.as_ref(),
            table.client_key.as_ref(),
            ("upstream_tls.client_cert", "upstream_tls.client_key"),
        );
        let ((ca_files, anchors), crls, identity) = (anchors?, crls?, identity?);
        let verifier = tls::client::verifier(&anchors, &crls);
        let verifier = self.check(&table.ca, "upstream_tls.ca", verifier)?;
        Some(UpstreamTls {
            trust_id: tls::client::trust_id(&anchors, &crls, "upstream"),
            ca_files,
            anchors,
            crls,
            verifier,
            identity,
        })
    }
}
