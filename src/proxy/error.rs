//! Why a request was not proxied, the status code each reason maps to (in one place), and the
//! one-line reason an operator can act on, classified from the rustls error when TLS failed.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http::StatusCode;

use crate::balance::{Failure, NoEndpoint};
use crate::body::UploadFailed;
use crate::server::admission::is_resource_exhaustion;
use crate::server::{MAX_REQUEST_HEAD, MAX_REQUEST_HEADERS};
use crate::upstream::{ConnectTimeout, TcpConnectError, WriteStalled, describe};

/// A request that did not get an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the path")]
    NoRoute,
    /// The route has no endpoint to send to (503 when DNS gave none, else 502).
    #[error("{0}")]
    NoEndpoint(crate::balance::NoEndpoint),
    #[error(
        "the route requires a client certificate (require_client_cert) and the connection has no verified one"
    )]
    ClientCertRequired,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("CONNECT is not proxied: trustgate forwards requests, it does not open tunnels")]
    Connect,
    #[error("the path is too long to forward once rewritten")]
    UriTooLong,
    /// More header fields than [`MAX_REQUEST_HEADERS`], counted once cookies are joined.
    #[error("{0} header fields; at most {MAX_REQUEST_HEADERS} are accepted")]
    TooManyHeaders(usize),
    /// The client's request body failed while it was being sent upstream (the client went away).
    #[error("the client's request body ended early: {}", describe(.0))]
    ClientBody(hyper_util::client::legacy::Error),
    /// The client stopped sending its request body, sent it too slowly, or sent more than its
    /// route's `max_request_body`.
    #[error("{0}")]
    Upload(UploadFailed),
    /// Connecting, the TLS handshake, or the exchange with the upstream failed.
    #[error("{}", describe(.0))]
    Upstream(hyper_util::client::legacy::Error),
    #[error(
        "upstream sent no response headers within {} of receiving the whole request",
        humantime::format_duration(*.0)
    )]
    Timeout(Duration),
    #[error(
        "the upstream stopped reading the request body ({} without progress)",
        humantime::format_duration(*.0)
    )]
    UploadNotRead(Duration),
    /// The client connection already has `[limits] upstream_per_connection` requests at the
    /// upstreams, and none finished in time.
    #[error(
        "this connection's other requests held every upstream turn ([limits] \
         upstream_per_connection) for {}",
        humantime::format_duration(*.0)
    )]
    Busy(Duration),
    /// The proxy itself is out of descriptors, buffers or memory: not the upstream's fault.
    #[error("the proxy is out of resources: {}", describe(.0))]
    OutOfResources(hyper_util::client::legacy::Error),
    /// The upstream's response head is over [`MAX_REQUEST_HEAD`] (the same limit as for requests),
    /// counted by us or found by hyper; the text adds how HTTP/2 reported it.
    #[error("the upstream's response head is larger than {} KiB{}", MAX_REQUEST_HEAD / 1024, .0)]
    HeadTooLarge(&'static str),
    /// The upstream answered 101 with a protocol the client did not ask for: tunnelling it
    /// would hand the client a connection speaking something else than it agreed to.
    #[error("the upstream switched to {answered:?}, but the client asked for {}",
        requested.as_ref().map_or_else(|| "no upgrade".to_owned(), |r| format!("{r:?}")))]
    UnaskedSwitch {
        requested: Option<String>,
        answered: String,
    },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::ClientCertRequired => StatusCode::FORBIDDEN,
            Self::BadRequest(_) | Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::Upload(UploadFailed::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Upload(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::TooManyHeaders(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Upstream(_) | Self::HeadTooLarge(_) | Self::UnaskedSwitch { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout(_) | Self::UploadNotRead(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Busy(_) | Self::OutOfResources(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoEndpoint(NoEndpoint::Empty { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoEndpoint(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Sorts a failed exchange: the client's body failing is the client's doing (400, logged at
    /// info), the proxy running out of descriptors is its own (503), anything else is the
    /// upstream's (502).
    pub fn exchange(err: hyper_util::client::legacy::Error) -> Self {
        let mut client_side = false;
        let mut source = StdError::source(&err);
        while let Some(e) = source {
            if let Some(failed) = e.downcast_ref::<UploadFailed>() {
                return Self::Upload(*failed);
            }
            if e.downcast_ref::<TcpConnectError>()
                .is_some_and(|connect| is_resource_exhaustion(&connect.source))
            {
                return Self::OutOfResources(err);
            }
            if let Some(stalled) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<WriteStalled>())
            {
                return Self::UploadNotRead(stalled.0);
            }
            if let Some(how) = head_too_large(e) {
                return Self::HeadTooLarge(how);
            }
            client_side |= e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user);
            source = e.source();
        }
        if client_side {
            Self::ClientBody(err)
        } else {
            Self::Upstream(err)
        }
    }
}

/// What kind of failure a failed attempt at an endpoint was, for its passive health and the retry
/// rules; `None` for failures that say nothing about the endpoint (the client's body, the
/// proxy's own resources, a response the upstream sent but got wrong).
pub fn failure(err: &hyper_util::client::legacy::Error) -> Option<Failure> {
    let mut source = StdError::source(err);
    let mut failure = None;
    while let Some(e) = source {
        if e.downcast_ref::<TcpConnectError>()
            .is_some_and(|connect| is_resource_exhaustion(&connect.source))
            || e.downcast_ref::<UploadFailed>().is_some()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user)
        {
            return None;
        }
        if e.downcast_ref::<ConnectTimeout>().is_some() {
            failure = Some(Failure::Timeout);
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled())
        {
            failure = failure.or(Some(Failure::Closed));
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        {
            failure = failure.or(Some(Failure::Closed));
        }
        source = e.source();
    }
    if crate::upstream::tls_error(err).is_some() {
        return Some(Failure::Tls);
    }
    if err.is_connect() {
        return Some(
            failure
                .filter(|f| *f == Failure::Timeout)
                .unwrap_or(Failure::Connect),
        );
    }
    failure
}

/// Whether an error says the upstream's response head went over the client pool's limit. HTTP/1.1
/// says so plainly; HTTP/2 resets the stream with PROTOCOL_ERROR, which also covers a malformed
/// head, or, for a head far over the limit, closes the connection for too many CONTINUATION frames.
fn head_too_large(e: &(dyn StdError + 'static)) -> Option<&'static str> {
    if e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_parse_too_large)
    {
        return Some("");
    }
    let h2 = e.downcast_ref::<h2::Error>().filter(|h2| h2.is_library())?;
    match h2.reason()? {
        h2::Reason::PROTOCOL_ERROR if h2.is_reset() => {
            Some(" as HTTP/2 counts it, or malformed (PROTOCOL_ERROR)")
        }
        // h2 exposes a GOAWAY's debug data only in its message.
        h2::Reason::ENHANCE_YOUR_CALM if h2.to_string().contains("too_many_continuations") => {
            Some(" (too many HTTP/2 CONTINUATION frames)")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_pinned() {
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::NOT_FOUND);
        assert_eq!(ProxyError::Connect.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(ProxyError::UriTooLong.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(
            ProxyError::TooManyHeaders(101).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            ProxyError::HeadTooLarge("").status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::BadRequest("x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProxyError::Timeout(Duration::from_secs(1)).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[test]
    fn io_payloads_are_searched() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = io::Error::other(tls);
        let wrapped = TcpConnectErrorLike(io);
        assert!(describe(&wrapped).starts_with("unknown issuer"));
    }

    /// An error whose source is an io::Error carrying a rustls error, as tokio-rustls reports it.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct TcpConnectErrorLike(#[source] io::Error);
}
