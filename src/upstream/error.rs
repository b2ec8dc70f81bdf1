//! What went wrong with an upstream exchange, in words for the 502 log line: the most specific
//! cause in hyper-util's error chain, which reports only `client error (Connect)` itself.

use std::io;

use super::{ConnectTimeout, TcpConnectError};
use crate::tls::reason::{self, Side};

/// The rustls error inside a connector's error chain, if TLS is what failed. `io::Error::source()`
/// skips its payload, so each payload is looked into as well.
pub fn tls_error<'e>(mut e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(tls) = tls_error(inner)
        {
            return Some(tls);
        }
        e = e.source()?;
    }
}

/// Finds the most specific cause in an error chain and says it in words.
///
/// hyper-util reports only `client error (Connect)`; the cause sits deeper. `io::Error::source()`
/// skips the error it wraps, so each `io::Error`'s payload is inspected through `get_ref()` too.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let connecting = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_none_or(|e| e.is_connect());
    if let Some(reason) = find_cause(err, connecting) {
        return reason;
    }
    if let Some(hyper) = err.source().and_then(|s| s.downcast_ref::<hyper::Error>()) {
        if hyper.is_incomplete_message() {
            return "the upstream closed the connection before sending a complete response".into();
        }
        if hyper.is_user() {
            return format!("the request could not be sent: {hyper}");
        }
    }
    let mut innermost = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    format!("upstream exchange failed: {innermost}")
}

/// Depth-first search of the chain, descending into `io::Error` payloads (which may nest).
/// `connecting`: the error happened while connecting (TCP + TLS), not in the exchange after.
fn find_cause(e: &(dyn std::error::Error + 'static), connecting: bool) -> Option<String> {
    known_cause(e, connecting)
        .or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| find_cause(inner, connecting))
        })
        .or_else(|| e.source().and_then(|source| find_cause(source, connecting)))
}

fn known_cause(e: &(dyn std::error::Error + 'static), connecting: bool) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(reason::tls(tls, Side::Upstream));
    }
    if let Some(stalled) = e.downcast_ref::<crate::body::UploadFailed>() {
        return Some(stalled.to_string());
    }
    if let Some(timeout) = e.downcast_ref::<ConnectTimeout>() {
        return Some(timeout.to_string());
    }
    if let Some(connect) = e.downcast_ref::<TcpConnectError>() {
        return Some(match connect.source.kind() {
            io::ErrorKind::ConnectionRefused => {
                format!(
                    "connection refused by {}: is the service up?",
                    connect.target
                )
            }
            _ => connect.to_string(),
        });
    }
    if let Some(io) = e.downcast_ref::<io::Error>()
        && io.kind() == io::ErrorKind::UnexpectedEof
    {
        return Some(if connecting {
            "the upstream closed the connection during the TLS handshake".into()
        } else {
            "the upstream closed the connection before sending a complete response".into()
        });
    }
    None
}
