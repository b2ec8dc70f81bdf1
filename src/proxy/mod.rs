//! The request path: route, rewrite, forward, stream back.
//!
//! [`Proxy::handle`] always answers: it wraps `Proxy::forward`, which uses `?`, and turns every
//! error into a status code and one log line in a single place.

pub mod error;
pub mod headers;
pub mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use tracing::{info, warn};

pub use self::error::ProxyError;
use self::headers::Forwarding;
use crate::balance::{Balancer, Failure, InFlight};
use crate::body::{Reclaim, Streamed, UploadFailed, UploadPace, UpstreamBody};
use crate::config::{Limits, Timeouts};
use crate::connection::ConnectionInfo;
use crate::metrics::{Metrics, RouteMetrics};
use crate::routing::{self, Route, RouteTable};
use crate::server::{MAX_REQUEST_HEAD, MAX_REQUEST_HEADERS};
use crate::tls::reason::{self, Side};
use crate::upstream::{UpstreamClient, describe};

/// What a route sends through: its endpoints, and its prefix as logs name it (shared, not copied
/// per request).
struct Target {
    balancer: Arc<Balancer>,
    label: Arc<str>,
    metrics: RouteMetrics,
}

/// A response body: the upstream's, streamed, or a short one of our own.
pub type ProxyBody = Either<Streamed, Full<Bytes>>;

/// Everything the request path needs: immutable, part of one generation, shared by all
/// connections.
pub struct Proxy {
    routes: RouteTable,
    /// What each route sends through, in the table's order.
    targets: Box<[Target]>,
    response_timeout: Duration,
    /// How slowly a request body may arrive.
    upload_pace: UploadPace,
    tunnel_idle: Duration,
    /// `[server.client_auth] forward_chain`: send `Client-Cert-Chain` too.
    forward_chain: bool,
    /// Where requests no route matches are counted (`route="-"`).
    unrouted: RouteMetrics,
    /// `[log] access`: write one access line per request.
    access_log: bool,
}

impl Proxy {
    /// `balancers` holds each route's balancer in `routes`' order.
    pub fn new(
        routes: RouteTable,
        balancers: Box<[Arc<Balancer>]>,
        timeouts: &Timeouts,
        limits: &Limits,
        forward_chain: bool,
        metrics: &Arc<Metrics>,
        access_log: bool,
    ) -> Self {
        debug_assert_eq!(routes.len(), balancers.len());
        let targets = routes
            .iter()
            .zip(balancers)
            .map(|(route, balancer)| Target {
                balancer,
                label: Arc::from(route.prefix.as_str()),
                metrics: metrics.route(route.prefix.as_str()),
            })
            .collect();
        Self {
            routes,
            targets,
            response_timeout: timeouts.response,
            upload_pace: UploadPace {
                stall: timeouts.client_header,
                min_rate: limits.min_upload_rate,
            },
            tunnel_idle: timeouts.tunnel_idle,
            forward_chain,
            unrouted: metrics.route("-"),
            access_log,
        }
    }

    /// Proxies one request. Never fails: errors become a status code, a short plain-text body
    /// (never internal detail) and one log line with route, upstream, peer and reason.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        let peer = conn.peer;
        let found = self.routes.lookup(req.uri().path());
        let route = found.map(|(_, route)| route);
        let route_name = route.map_or("-", |r| r.prefix.as_str());
        // Without the access line, nothing of the request is cloned for it.
        let mut access = AccessLog {
            peer,
            request: self
                .access_log
                .then(|| (req.method().clone(), req.uri().clone())),
            route: route_name,
            client_cert: conn.client_cert.as_deref().map(|c| c.subject.as_str()),
            started: Instant::now(),
            status: None,
            metrics: found.map_or(&self.unrouted, |(i, _)| &self.targets[i].metrics),
        };
        headers::join_cookies(req.headers_mut());
        // Requests that must never pass are refused before routing, so their status does not
        // depend on whether some route happens to match.
        let result = match (check_request(&req), route) {
            (Err(err), _) => Err(err),
            (Ok(()), Some(route)) if route.require_client_cert && conn.client_cert.is_none() => {
                Err(ProxyError::ClientCertRequired)
            }
            (Ok(()), Some(route)) => {
                let target = &self.targets[found.map_or(0, |(i, _)| i)];
                // On the heap: this future's state is most of a request's, and hyper moves the
                // handler's future (into its dispatcher, into a spawned HTTP/2 stream task) by
                // value; boxed, those moves copy a few hundred bytes instead of kilobytes.
                Box::pin(self.forward(route, target, req, conn)).await
            }
            (Ok(()), None) => Err(ProxyError::NoRoute),
        };
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                let status = err.status();
                let upstream = route.map_or_else(|| "-".to_owned(), |r| r.upstream.to_string());
                if status.is_server_error() {
                    warn!(route = %route_name, %upstream, %peer, status = status.as_u16(), reason = %err, "request not proxied");
                } else {
                    info!(route = %route_name, %upstream, %peer, status = status.as_u16(), reason = %err, "request refused");
                }
                error_response(status)
            }
        };
        access.status = Some(response.status());
        response
    }

    async fn forward(
        &self,
        route: &Route,
        target: &Target,
        mut req: Request<Incoming>,
        conn: &ConnectionInfo,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let peer = conn.peer;
        // Only HTTP/1.1 can upgrade a connection; HTTP/2 has no Upgrade header.
        let upgrade = if req.version() == Version::HTTP_11 {
            headers::upgrade_requested(req.headers())
        } else {
            None
        };
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // A declared length over the limit is refused before anything is sent; a body without
        // one is counted as it arrives.
        if body.size_hint().lower() > route.max_request_body {
            return Err(ProxyError::Upload(UploadFailed::TooLarge(
                route.max_request_body,
            )));
        }
        let client_host = client_host(&parts)?;
        headers::prepare_request(
            &mut parts.headers,
            &Forwarding {
                route,
                peer: &conn.forwarded_for,
                client_host: client_host.as_ref(),
                upgrade: upgrade.clone(),
                client_cert: conn.client_cert.as_deref(),
                forward_chain: self.forward_chain,
            },
        );
        parts.uri = route
            .upstream_uri(&parts.uri)
            .map_err(|_| ProxyError::UriTooLong)?;
        // The pooled client picks HTTP/2 per connection when the upstream negotiates it.
        parts.version = Version::HTTP_11;
        // hyper's HTTP/1.1 client sends a GET or HEAD body of unknown length as no body at all
        // unless chunked framing is asked for (HTTP/2 upstreams drop the header themselves).
        if !body.is_end_stream() && body.size_hint().exact().is_none() {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // HTTP/2 carries the host in :authority, which must stay the service name the
        // certificate is checked against; a preserved Host therefore travels over HTTP/1.1, as
        // does an upgrade, which HTTP/2 cannot carry.
        let http1_only = upgrade.is_some() || route.preserve_host;
        // One client connection has at most `upstream_per_connection` requests at the upstreams;
        // the turn is held until the response body has been sent.
        let turn = conn
            .upstream_turn(self.response_timeout)
            .await
            .ok_or(ProxyError::Busy(self.response_timeout))?;
        let (mut response, in_flight) = self
            .exchange(
                &target.balancer,
                Request::from_parts(parts, body),
                http1_only,
                route.max_request_body,
            )
            .await?;

        // hyper checks its HTTP/1.1 buffer limit only when a read leaves the head incomplete,
        // and a read may fill more than the limit (all spare capacity, larger on a reused
        // connection): heads up to about twice the limit pass it. This check makes it exact.
        if headers::head_len(response.headers()) > MAX_REQUEST_HEAD {
            return Err(ProxyError::HeadTooLarge(""));
        }
        let mut kept_upgrade = None;
        let mut turn = Some(turn);
        let mut in_flight = Some(in_flight);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let answered = response.headers().get(header::UPGRADE);
            let (Some(client_upgrade), Some(requested)) = (client_upgrade, upgrade.as_ref()) else {
                return Err(unasked_switch(None, answered));
            };
            if !answered.is_some_and(|answered| headers::same_upgrade(requested, answered)) {
                return Err(unasked_switch(Some(requested), answered));
            }
            kept_upgrade = answered.cloned();
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            upgrade::tunnel(
                client_upgrade,
                upstream_upgrade,
                upgrade::Tunnel {
                    guard: conn.hold_for_tunnel(),
                    turn: turn.take(),
                    in_flight: in_flight.take(),
                    idle: self.tunnel_idle,
                    route: target.label.clone(),
                    peer,
                },
            );
        }
        let (mut parts, body) = response.into_parts();
        let public_host = client_host.as_ref().and_then(|h| h.to_str().ok());
        headers::prepare_response(&mut parts.headers, route, public_host, kept_upgrade);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(
            parts,
            Either::Left(Streamed::new(
                body,
                turn,
                in_flight,
                self.response_timeout,
                target.label.clone(),
            )),
        ))
    }
}

impl Proxy {
    /// Sends `request` to an endpoint of `balancer` and waits for the response head. A request
    /// that failed before any of it reached an upstream goes to another endpoint, up to the
    /// route's `retries`: after a failed connect or TLS handshake (its body, never polled, comes
    /// back untouched), and, for GET, HEAD and OPTIONS without a body, after the upstream closed
    /// the connection before any response byte. A body is never replayed, and is cut off past
    /// `max_body` bytes.
    async fn exchange(
        &self,
        balancer: &Balancer,
        request: Request<Incoming>,
        http1_only: bool,
        max_body: u64,
    ) -> Result<(Response<Incoming>, InFlight), ProxyError> {
        let set = balancer.endpoints();
        let (parts, body) = request.into_parts();
        let bodiless = body.is_end_stream();
        let idempotent = matches!(
            parts.method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        // What a retry is rebuilt from; copied only where a retry can happen.
        let again = (balancer.retries() > 0 && set.len() > 1).then(|| Again {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
        let mut parts = Some(parts);
        let mut body = Some(body);
        let mut tried = Vec::new();
        loop {
            let endpoint = balancer
                .pick(&set, &tried)
                .map_err(ProxyError::NoEndpoint)?;
            let head = match parts.take() {
                Some(head) => head,
                None => again
                    .as_ref()
                    .map(Again::head)
                    .ok_or_else(|| ProxyError::NoEndpoint(balancer.exhausted()))?,
            };
            let in_flight = endpoint.begin();
            let (mut upstream_body, mut upload) =
                UpstreamBody::new(body.take(), self.upload_pace, max_body);
            let reclaim = again.is_some().then(|| upstream_body.reclaimable());
            let client: &UpstreamClient = if http1_only {
                endpoint.pool.http1_client()
            } else {
                endpoint.pool.client()
            };
            // The response timeout runs from the moment the request body has been sent in
            // full, so a long upload is not mistaken for a slow upstream.
            let answered = async {
                if let Err(waited) = upload.sent(self.response_timeout).await {
                    return ProxyError::UploadNotRead(waited);
                }
                tokio::time::sleep(self.response_timeout).await;
                ProxyError::Timeout(self.response_timeout)
            };
            let exchanged = tokio::select! {
                result = client.request(Request::from_parts(head, upstream_body)) => result,
                timed_out = answered => {
                    if matches!(timed_out, ProxyError::Timeout(_)) {
                        balancer.failed(&endpoint, Failure::Timeout, &timed_out, set.len());
                    }
                    return Err(timed_out);
                }
            };
            let err = match exchanged {
                Ok(response) => {
                    endpoint.answered();
                    return Ok((response, in_flight));
                }
                Err(err) => err,
            };
            // An HTTP/2 upstream reports the client's failed body only as a reset stream.
            if let Some(failed) = upload.failed() {
                return Err(ProxyError::Upload(failed));
            }
            let failure = error::failure(&err);
            if let Some(failure) = failure {
                balancer.failed(&endpoint, failure, &describe(&err), set.len());
            }
            // TLS 1.3 ends the handshake before the upstream judges the client certificate: its
            // demand for one arrives with the exchange, not the connect.
            if !err.is_connect()
                && let Some(tls) = crate::upstream::tls_error(&err)
                && reason::class(tls) == "client_cert_required"
            {
                let metrics = endpoint.pool.metrics();
                metrics.refused("client_cert_required", reason::tls(tls, Side::Upstream));
            }
            drop(in_flight);
            let reclaimed = reclaim.and_then(Reclaim::take);
            let retry = match failure {
                Some(Failure::Connect | Failure::Tls | Failure::Timeout) if err.is_connect() => {
                    bodiless || reclaimed.is_some()
                }
                Some(Failure::Closed) => idempotent && bodiless,
                _ => false,
            };
            let Some(failure) = failure.filter(|_| retry && again.is_some()) else {
                return Err(ProxyError::exchange(err));
            };
            if tried.len() as u32 >= balancer.retries() {
                return Err(ProxyError::exchange(err));
            }
            warn!(route = %balancer.route(), endpoint = %endpoint.address,
                reason = %describe(&err), "retrying the request on another endpoint");
            balancer.retried(failure);
            body = reclaimed;
            tried.push(endpoint);
        }
    }
}

/// A request's method, target and headers, to send it again after a failed attempt.
struct Again {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Again {
    fn head(&self) -> http::request::Parts {
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = self.method.clone();
        head.uri = self.uri.clone();
        head.headers = self.headers.clone();
        head
    }
}

/// The host the client asked for: HTTP/2's `:authority` or an absolute-form target's authority
/// (which wins over `Host`, RFC 9112 section 3.2.2), else the one `Host` header, which HTTP/1.1
/// requires (section 3.2). Every source is validated alike: it becomes `X-Forwarded-Host`, and
/// `Host` with `preserve_host`.
fn client_host(parts: &http::request::Parts) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
        (host, _) => host
            .map(|h| {
                checked_host(h.as_bytes(), "the Host header is not a valid host[:port]")
                    .map(|()| h.clone())
            })
            .transpose()?,
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| {
            let invalid = "the request target's authority is not a valid host[:port]";
            checked_host(a.as_str().as_bytes(), invalid)?;
            HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest(invalid))
        })
        .transpose()?;
    if host.is_none() && parts.version == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("HTTP/1.1 requires a Host header"));
    }
    if let (Some(authority), Some(host)) = (&authority, &host)
        && parts.version == Version::HTTP_2
        && !authority.as_bytes().eq_ignore_ascii_case(host.as_bytes())
    {
        // RFC 9113 section 8.3.1: a Host that differs from :authority makes the request malformed.
        return Err(ProxyError::BadRequest(
            "the Host header differs from :authority",
        ));
    }
    Ok(authority.or(host))
}

fn checked_host(value: &[u8], invalid: &'static str) -> Result<(), ProxyError> {
    headers::valid_host(value)
        .then_some(())
        .ok_or(ProxyError::BadRequest(invalid))
}

/// A 101 the client did not ask for, or to another protocol than it asked for.
fn unasked_switch(requested: Option<&HeaderValue>, answered: Option<&HeaderValue>) -> ProxyError {
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    ProxyError::UnaskedSwitch {
        requested: requested.map(text),
        answered: answered.map_or_else(|| "no protocol".to_owned(), text),
    }
}

/// One access-log line per request, written when it is dropped: at the end of
/// [`Proxy::handle`], or earlier when the client resets its stream or hangs up before the
/// response, which drops the handler mid-flight and is logged as status 499 ("client closed
/// request", as nginx has it). The request's metrics are recorded at the same moment; under
/// `[log] access = false` only they are.
struct AccessLog<'a> {
    peer: std::net::SocketAddr,
    /// Method and target, for the line; `None` under `[log] access = false`.
    request: Option<(http::Method, http::Uri)>,
    route: &'a str,
    /// The verified client certificate's subject, if any.
    client_cert: Option<&'a str>,
    started: Instant,
    status: Option<StatusCode>,
    metrics: &'a RouteMetrics,
}

impl Drop for AccessLog<'_> {
    fn drop(&mut self) {
        let status = self.status.map_or(499, |s| s.as_u16());
        let elapsed = self.started.elapsed();
        self.metrics.observe(status, elapsed);
        let Some((method, uri)) = &self.request else {
            return;
        };
        info!(
            target: "trustgate::access",
            peer = %self.peer,
            method = %method,
            path = %uri.path(),
            status,
            route = %self.route,
            client_cert = self.client_cert.map(tracing::field::display),
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
        );
    }
}

/// Refuses requests that must never reach an upstream.
fn check_request(req: &Request<Incoming>) -> Result<(), ProxyError> {
    // Framing is settled before a request gets here: hyper's HTTP/1 parser answers 400 to an
    // invalid or conflicting Content-Length and to a Transfer-Encoding that does not end in
    // chunked; with both headers it applies RFC 9112 section 6.1 (chunked wins, Content-Length is
    // dropped, the connection closes after the response), so bytes smuggled behind the body are
    // never read as a request. tests/failures.rs pins that behaviour.
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    // HTTP/1.1 parsing stops at MAX_REQUEST_HEADERS; HTTP/2 only bounds the bytes.
    let fields = req.headers().len();
    if fields > MAX_REQUEST_HEADERS {
        return Err(ProxyError::TooManyHeaders(fields));
    }
    if headers::names_h2c(req.headers()) {
        return Err(ProxyError::BadRequest(
            "h2c upgrades are refused: HTTP/2 is negotiated by ALPN over TLS",
        ));
    }
    // Only origin-form targets (and HTTP/2's absolute ones) name a path; `OPTIONS *` does not.
    if !req.uri().path().starts_with('/') {
        return Err(ProxyError::BadRequest("the request target is not a path"));
    }
    if let Some(why) = routing::unsafe_path(req.uri().path()) {
        return Err(ProxyError::BadRequest(why));
    }
    Ok(())
}

/// A short plain-text response that names the status and nothing internal.
fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let body = match status {
        StatusCode::BAD_REQUEST => Bytes::from_static(b"400 Bad Request\n"),
        StatusCode::NOT_FOUND => Bytes::from_static(b"404 Not Found\n"),
        StatusCode::BAD_GATEWAY => Bytes::from_static(b"502 Bad Gateway\n"),
        StatusCode::GATEWAY_TIMEOUT => Bytes::from_static(b"504 Gateway Timeout\n"),
        other => Bytes::from(format!(
            "{} {}\n",
            other.as_u16(),
            other.canonical_reason().unwrap_or("Error")
        )),
    };
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
