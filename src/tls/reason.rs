//! Why a TLS handshake failed, in words an operator can act on. One place says it for both
//! sides: the proxy's 502 log lines about upstreams, and the log line about a client
//! certificate the public listener refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError};

use super::verify::Refusal;

/// Whose certificate was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An upstream's server certificate, verified by the proxy.
    Upstream,
    /// A client's certificate, verified by the public listener.
    Client,
}

/// A failed handshake's rustls error, in words.
pub fn tls(err: &rustls::Error, side: Side) -> String {
    match (err, side) {
        (rustls::Error::InvalidCertificate(cert), _) => certificate(cert, side),
        (rustls::Error::NoCertificatesPresented, Side::Client) => {
            "no client certificate presented ([server.client_auth] mode = \"require\")".into()
        }
        (rustls::Error::AlertReceived(AlertDescription::CertificateRequired), Side::Upstream) => {
            "the upstream demanded a client certificate and the proxy has none for this route: \
             set [upstream_tls] client_cert and client_key (or the route's upstream_client_cert)"
                .into()
        }
        (rustls::Error::AlertReceived(alert), Side::Upstream) => {
            let hint = match alert {
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied => {
                    " (it refused the proxy's client certificate, or has none it trusts)"
                }
                _ => "",
            };
            format!("the upstream aborted the TLS handshake with alert {alert:?}{hint}")
        }
        (rustls::Error::AlertReceived(alert), Side::Client) => {
            format!("the client aborted the TLS handshake with alert {alert:?}")
        }
        (
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
            Side::Upstream,
        ) => "the upstream did not answer with valid TLS: is it serving plain HTTP on this port?"
            .into(),
        (rustls::Error::PeerIncompatible(why), Side::Upstream) => {
            format!("the upstream's TLS settings are incompatible: {why:?}")
        }
        (other, Side::Upstream) => format!("TLS handshake with the upstream failed: {other}"),
        (other, Side::Client) => format!("TLS handshake with the client failed: {other}"),
    }
}

/// The class of a failed upstream handshake, for `trustgate_upstream_tls_handshakes_total{reason}`:
/// the same decision as the words of [`tls`], in one of a fixed set of label values.
pub fn class(err: &rustls::Error) -> &'static str {
    use CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => "name_mismatch",
            C::UnknownIssuer => "unknown_issuer",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::Revoked => "revoked",
            C::UnknownRevocationStatus => "revocation_unknown",
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => "crl_expired",
            C::Other(other) => match other.0.downcast_ref::<Refusal>() {
                Some(Refusal::Revoked { .. }) => "revoked",
                Some(Refusal::RevocationUnknown { .. }) => "revocation_unknown",
                Some(Refusal::CrlExpired { .. }) => "crl_expired",
                Some(_) => "bad_chain",
                None => "other",
            },
            _ => "bad_chain",
        },
        rustls::Error::InvalidCertRevocationList(_) => "bad_chain",
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "client_cert_required"
        }
        _ => "other",
    }
}

/// A refused certificate, in words.
pub fn certificate(err: &CertificateError, side: Side) -> String {
    let anchors = match side {
        Side::Upstream => "[upstream_tls].ca",
        Side::Client => "[server.client_auth].ca",
    };
    match err {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = presented
                .iter()
                .map(|name| format!("\"{}\"", unwrap_debug_name(name)))
                .collect::<Vec<_>>();
            let valid_for = if names.is_empty() {
                "it carries no DNS or IP name in its SAN".to_owned()
            } else {
                format!("it is valid for {}", names.join(", "))
            };
            format!(
                "certificate not valid for name \"{}\"; {valid_for}",
                expected.to_str()
            )
        }
        CertificateError::NotValidForName => "certificate not valid for the upstream's name".into(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "certificate expired {} ago (not valid after {})",
            span(not_after, time),
            date(not_after)
        ),
        CertificateError::Expired => "certificate expired".into(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "certificate not valid yet: valid from {} (in {}); check the clocks",
            date(not_before),
            span(time, not_before)
        ),
        CertificateError::NotValidYet => "certificate not valid yet".into(),
        CertificateError::UnknownIssuer => format!(
            "unknown issuer: the certificate does not chain to {anchors} (issued by another CA, \
             self-signed, or the {} does not send its intermediate)",
            match side {
                Side::Upstream => "upstream",
                Side::Client => "client",
            }
        ),
        CertificateError::BadSignature => "bad signature in the certificate chain".into(),
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::UnknownRevocationStatus => {
            "revocation status unknown: no CRL from the certificate's issuer".into()
        }
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => "a CRL has expired".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            match side {
                Side::Upstream => {
                    "certificate is not for server authentication (its extended key \
                                   usage lacks serverAuth)"
                }
                Side::Client => {
                    "certificate is not for client authentication (its extended key \
                                 usage lacks clientAuth)"
                }
            }
            .into()
        }
        CertificateError::BadEncoding => "certificate is malformed".into(),
        // Our own rules beyond path validation say their reason themselves.
        CertificateError::Other(other) if other.0.is::<Refusal>() => other.0.to_string(),
        other => {
            let detail = format!("{other:?}");
            if detail.contains("CaUsedAsEndEntity") {
                match side {
                    Side::Upstream => {
                        "the upstream presents a CA certificate as its own (a \
                        self-signed certificate?), not a service certificate issued by the \
                        internal CA"
                    }
                    Side::Client => {
                        "the client presents a CA certificate as its own, not a \
                        client certificate issued under [server.client_auth].ca"
                    }
                }
                .into()
            } else if detail.contains("NameConstraintViolation") {
                "certificate name is outside the names its CA may issue for (name constraints)"
                    .into()
            } else {
                format!("certificate rejected: {detail}")
            }
        }
    }
}

/// `DnsName("other-service")` -> `other-service`: rustls-webpki reports names in Debug form.
fn unwrap_debug_name(name: &str) -> &str {
    let inner = name
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(name);
    inner.trim_matches('"')
}

/// How long from `earlier` to `later`, in words.
fn span(earlier: &UnixTime, later: &UnixTime) -> String {
    crate::pki::inspect::human_span(later.as_secs().saturating_sub(earlier.as_secs()))
}

fn date(t: &UnixTime) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at.max(SystemTime::UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn certificate_reasons_name_the_problem() {
        let up = Side::Upstream;
        let wrong_name = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("backend-api").unwrap().to_owned(),
            presented: vec![
                "DnsName(\"other-service\")".into(),
                "IpAddress(10.0.0.1)".into(),
            ],
        };
        assert_eq!(
            certificate(&wrong_name, up),
            "certificate not valid for name \"backend-api\"; it is valid for \"other-service\", \"10.0.0.1\""
        );
        let expired = CertificateError::ExpiredContext {
            time: at(1_000_000 + 2 * 86400 + 5),
            not_after: at(1_000_000),
        };
        assert!(certificate(&expired, up).starts_with("certificate expired 2 days ago"));
        let not_yet = CertificateError::NotValidYetContext {
            time: at(1_000_000),
            not_before: at(1_000_000 + 3 * 3600),
        };
        assert!(certificate(&not_yet, up).contains("(in 3 hours)"));
        assert!(certificate(&CertificateError::UnknownIssuer, up).contains("[upstream_tls].ca"));
        assert!(
            certificate(&CertificateError::UnknownIssuer, Side::Client)
                .contains("[server.client_auth].ca")
        );
        let refused = rustls::Error::from(Refusal::NoExtendedKeyUsage {
            purpose: crate::tls::verify::Purpose::ServerAuth,
        });
        assert_eq!(
            tls(&refused, up),
            "certificate has no extendedKeyUsage extension: a service certificate must carry \
             serverAuth"
        );
        let demanded = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(tls(&demanded, up).contains("demanded a client certificate"));
        assert_eq!(class(&demanded), "client_cert_required");
        assert_eq!(
            class(&rustls::Error::InvalidCertificate(wrong_name)),
            "name_mismatch"
        );
        assert_eq!(
            class(&rustls::Error::InvalidCertificate(expired)),
            "expired"
        );
        assert_eq!(class(&refused), "bad_chain");
        let revoked = rustls::Error::from(Refusal::Revoked {
            leaf: true,
            subject: "CN=x".into(),
            serial: "01".into(),
            at: 0,
            reason: None,
        });
        assert_eq!(class(&revoked), "revoked");
        assert_eq!(span(&at(0), &at(120)), "2 minutes");
    }
}
