//! Header rewriting on the way in and out: hop-by-hop headers dropped, `X-Forwarded-*` added,
//! `Host` preserved or replaced, and redirects into the upstream mapped back to the public origin.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::connection::ClientCert;
use crate::routing::Route;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
static CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");
static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// Headers some proxy in front of a backend uses to say who the client is (Apache's mod_ssl
/// `X-SSL-Client-*` conventions): only trustgate may say it, so every inbound copy is deleted.
const X_SSL_CLIENT: &str = "x-ssl-client-";
/// Identity headers that only trustgate sets: inbound copies are always deleted.
const IDENTITY: [&HeaderName; 4] = [
    &CLIENT_CERT,
    &CLIENT_CERT_CHAIN,
    &X_CLIENT_CERT_SUBJECT,
    &X_FORWARDED_CLIENT_CERT,
];
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// A reserved field name (RFC 9110 section 16.3.2.1): `Connection: close` names it, so it never
/// passes.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// Headers that describe one connection and must not be forwarded (RFC 9110 section 7.6.1).
/// `HTTP2-Settings` only ever accompanies an h2c upgrade of the connection (RFC 7540 section 3.2).
const HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &CLOSE,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &HTTP2_SETTINGS,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// The protocol a client asks to switch to (`Connection: upgrade` plus `Upgrade: x`), if any.
pub fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// The protocol names in an `Upgrade` value, without versions (`websocket`, `h2c`).
fn protocols(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(|p| p.split('/').next().unwrap_or_default().trim())
        .filter(|p| !p.is_empty())
}

/// Whether the request's `Upgrade` names h2c, in whatever case. Over TLS HTTP/2 is negotiated by
/// ALPN, so an h2c upgrade through the proxy can only be an attempt to smuggle requests past it
/// in a tunnel to the backend.
pub fn names_h2c(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(protocols)
        .any(|p| p.eq_ignore_ascii_case("h2c"))
}

/// Whether a 101's `Upgrade` switches only to protocols the client asked for (RFC 9110 section
/// 7.8), compared without regard to case.
pub fn same_upgrade(requested: &HeaderValue, answered: &HeaderValue) -> bool {
    let mut answered = protocols(answered).peekable();
    answered.peek().is_some()
        && answered.all(|a| protocols(requested).any(|r| r.eq_ignore_ascii_case(a)))
}

/// The size of a response head as HTTP/1.1 writes it: status line, `name: value` lines, blank line.
pub fn head_len(headers: &HeaderMap) -> usize {
    const STATUS_LINE: usize = "HTTP/1.1 200 OK\r\n".len();
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    STATUS_LINE + fields + 2
}

/// Joins several `cookie` fields into one, as HTTP/2 clients may split them (RFC 9113 section
/// 8.2.3) and HTTP/1.1 backends expect a single line.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for cookie in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(cookie.as_bytes());
    }
    // The parts were valid field values; joined with "; " they still are.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// What the request rewrite needs to know besides the headers.
pub struct Forwarding<'a> {
    pub route: &'a Route,
    /// The client's address, as [`crate::connection::ConnectionInfo::forwarded_for`] holds it.
    pub peer: &'a HeaderValue,
    /// The `Host` (or HTTP/2 `:authority`) the client asked for.
    pub client_host: Option<&'a HeaderValue>,
    /// Set when the request upgrades the connection: the `Upgrade` value to keep.
    pub upgrade: Option<HeaderValue>,
    /// The connection's verified client certificate, forwarded as the identity headers.
    pub client_cert: Option<&'a ClientCert>,
    /// Forward `Client-Cert-Chain` too.
    pub forward_chain: bool,
}

/// Rewrites request headers for the upstream.
pub fn prepare_request(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    strip_hop_by_hop(headers);
    strip_identity(headers);
    if let Some(cert) = fwd.client_cert {
        headers.insert(CLIENT_CERT.clone(), cert.leaf.clone());
        headers.insert(X_CLIENT_CERT_SUBJECT.clone(), cert.subject_header.clone());
        if let (true, Some(chain)) = (fwd.forward_chain, &cert.chain) {
            headers.insert(CLIENT_CERT_CHAIN.clone(), chain.clone());
        }
    }
    if let Some(protocol) = &fwd.upgrade {
        keep_upgrade(headers, protocol.clone());
    }

    if headers.contains_key(&X_FORWARDED_FOR) {
        let mut forwarded_for = String::with_capacity(64);
        for earlier in headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            forwarded_for.push_str(earlier.trim());
            forwarded_for.push_str(", ");
        }
        forwarded_for.push_str(fwd.peer.to_str().unwrap_or_default());
        // The string becomes the value's buffer: no second copy.
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded_for)) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    } else {
        // The common case: the connection's own value, shared, not copied.
        headers.insert(X_FORWARDED_FOR.clone(), fwd.peer.clone());
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    match fwd.client_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    let host = match fwd.client_host {
        Some(client) if fwd.route.preserve_host => client,
        _ => fwd.route.upstream.host_header(),
    };
    headers.insert(header::HOST, host.clone());
}

/// Rewrites response headers for the client.
pub fn prepare_response(
    headers: &mut HeaderMap,
    route: &Route,
    public_host: Option<&str>,
    upgrade: Option<HeaderValue>,
) {
    // A response framed by Transfer-Encoding has no meaningful Content-Length, whatever it says
    // (RFC 9112 section 6.3); forwarded next to the re-framed body, it would cut the client's
    // connection short or stall its stream.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        keep_upgrade(headers, protocol);
    }
    let Some(public_host) = public_host else {
        return;
    };
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let rewritten = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|location| route.public_location(location, public_host))
            .and_then(|public| HeaderValue::from_str(&public).ok());
        if let Some(value) = rewritten {
            headers.insert(name, value);
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Connection may name more hop-by-hop headers. Host and Content-Length are never taken from
    // the message that way: losing them would change where or how the body is delivered.
    // `Connection: keep-alive` / `close` / `upgrade`, the common cases, name nothing extra and
    // cost no allocation.
    let names_more = |token: &str| {
        let token = token.trim();
        const REMOVED_ANYWAY: [&str; 9] = [
            "http2-settings",
            "close",
            "keep-alive",
            "upgrade",
            "te",
            "trailer",
            "transfer-encoding",
            "proxy-connection",
            "connection",
        ];
        !token.is_empty()
            && !REMOVED_ANYWAY
                .iter()
                .any(|known| token.eq_ignore_ascii_case(known))
    };
    let connection = headers.get_all(header::CONNECTION);
    let tokens = || {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
    };
    if tokens().any(names_more) {
        let listed: Vec<HeaderName> = tokens()
            .filter(|token| names_more(token))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    // One pass over the names present, then a hashed removal of those found only, rather than of
    // every name that might be there: most messages carry none of them, or only `Connection`.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present[i] = true;
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, found)| *found) {
        headers.remove(*name);
    }
}

/// Deletes every inbound claim of a client identity: only the verified certificate may make one.
fn strip_identity(headers: &mut HeaderMap) {
    // Names are lowercase in a HeaderMap, and `claims_identity` takes the exact names too; most
    // requests carry no such header: one pass over the names, no lookup, no allocation.
    if headers.keys().any(claims_identity) {
        let claimed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| claims_identity(name))
            .cloned()
            .collect();
        for name in claimed {
            headers.remove(name);
        }
    }
}

/// Whether `name` is an identity header once `_` reads as `-`: CGI-style backends (PHP, WSGI,
/// Rack) see `Client_Cert` and `Client-Cert` as the same `HTTP_CLIENT_CERT`.
fn claims_identity(name: &HeaderName) -> bool {
    let same = |got: &[u8], identity: &str| {
        got.len() == identity.len()
            && got
                .iter()
                .zip(identity.bytes())
                .all(|(&g, i)| g == i || (g == b'_' && i == b'-'))
    };
    let name = name.as_str().as_bytes();
    name.get(..X_SSL_CLIENT.len())
        .is_some_and(|start| same(start, X_SSL_CLIENT))
        || IDENTITY
            .iter()
            .any(|identity| same(name, identity.as_str()))
}

fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// `host[:port]` and nothing else: no userinfo (`user:pw@`), no path, a numeric port. What a
/// `Host` header, an HTTP/2 `:authority` or an absolute request target must be to be forwarded.
pub fn valid_host(value: &[u8]) -> bool {
    plain_host(value) || authority_host(value)
}

/// The full check: what `http` parses as an authority, without userinfo and with a numeric port
/// if it has one (IPv6 literals, percent-encoding, the rarer reg-name characters).
fn authority_host(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .filter(|h| !h.contains('@'))
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .is_some_and(|a| a.as_str().len() == a.host().len() || a.port_u16().is_some())
}

/// The common form, checked without parsing or allocating: a DNS name or an IPv4 address, and
/// an optional port. Everything it accepts the full check accepts too (a property test holds
/// them together); anything else takes the full check.
fn plain_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    let port_ok = |port: &[u8]| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= u32::from(u16::MAX)
    };
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(port_ok)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::routing::{Prefix, Upstream};

    fn route(preserve_host: bool) -> Route {
        Route {
            prefix: Prefix::parse("/api").unwrap(),
            upstream: Upstream::parse("https://backend-api:8443/").unwrap(),
            balancing: crate::balance::settings::Balancing::single(None),
            preserve_host,
            client_identity: None,
            require_client_cert: false,
            max_request_body: 1 << 30,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn request_loses_hop_by_hop_and_gains_forwarding_headers() {
        let route = route(true);
        let host = HeaderValue::from_static("public.example:8443");
        let mut h = headers(&[
            ("host", "public.example:8443"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-host", "spoofed"),
            ("accept", "*/*"),
        ]);
        let fwd = Forwarding {
            route: &route,
            peer: &HeaderValue::from_static("192.0.2.1"),
            client_host: Some(&host),
            upgrade: None,
            client_cert: None,
            forward_chain: false,
        };
        prepare_request(&mut h, &fwd);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "public.example:8443");
        assert_eq!(h["host"], "public.example:8443");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn host_is_the_upstream_authority_without_preserve_host() {
        let route = route(false);
        let host = HeaderValue::from_static("public.example");
        let mut h = headers(&[("host", "public.example")]);
        let fwd = Forwarding {
            route: &route,
            peer: &HeaderValue::from_static("192.0.2.1"),
            client_host: Some(&host),
            upgrade: None,
            client_cert: None,
            forward_chain: false,
        };
        prepare_request(&mut h, &fwd);
        assert_eq!(h["host"], "backend-api:8443");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn connection_cannot_strip_host_or_content_length() {
        let route = route(true);
        let host = HeaderValue::from_static("h");
        let mut h = headers(&[
            ("host", "h"),
            ("content-length", "3"),
            ("connection", "host, content-length"),
        ]);
        let fwd = Forwarding {
            route: &route,
            peer: &HeaderValue::from_static("192.0.2.1"),
            client_host: Some(&host),
            upgrade: None,
            client_cert: None,
            forward_chain: false,
        };
        prepare_request(&mut h, &fwd);
        assert_eq!(h["content-length"], "3");
        assert_eq!(h["host"], "h");
    }

    #[test]
    fn upgrade_is_kept_only_when_tunnelling() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let protocol = upgrade_requested(&h).unwrap();
        assert_eq!(protocol, "websocket");
        assert!(upgrade_requested(&headers(&[("upgrade", "websocket")])).is_none());

        let route = route(true);
        let mut h = h.clone();
        let fwd = Forwarding {
            route: &route,
            peer: &HeaderValue::from_static("192.0.2.1"),
            client_host: None,
            upgrade: Some(protocol),
            client_cert: None,
            forward_chain: false,
        };
        prepare_request(&mut h, &fwd);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["host"], "backend-api:8443");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn response_locations_point_back_at_the_public_origin() {
        let route = route(true);
        let mut h = headers(&[
            ("location", "https://backend-api:8443/login"),
            ("content-location", "https://elsewhere/x"),
            ("transfer-encoding", "chunked"),
        ]);
        prepare_response(&mut h, &route, Some("public.example"), None);
        assert_eq!(h["location"], "https://public.example/api/login");
        assert_eq!(h["content-location"], "https://elsewhere/x");
        assert!(!h.contains_key("transfer-encoding"));
    }

    #[test]
    fn transfer_encoding_voids_content_length() {
        let route = route(true);
        let mut h = headers(&[("content-length", "100"), ("transfer-encoding", "chunked")]);
        prepare_response(&mut h, &route, None, None);
        assert!(h.is_empty(), "{h:?}");
        let mut h = headers(&[("content-length", "100")]);
        prepare_response(&mut h, &route, None, None);
        assert_eq!(h["content-length"], "100");
    }

    #[test]
    fn cookies_join_and_upgrades_compare() {
        let mut h = headers(&[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);

        let value = HeaderValue::from_static;
        assert!(same_upgrade(&value("websocket"), &value("WebSocket")));
        assert!(same_upgrade(
            &value("foo, websocket/13"),
            &value("websocket")
        ));
        assert!(!same_upgrade(&value("websocket"), &value("h2c")));
        assert!(!same_upgrade(&value("websocket"), &value("")));
        assert!(names_h2c(&headers(&[("upgrade", "foo, H2C")])));
        assert!(!names_h2c(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn plain_hosts() {
        for ok in [
            "localhost",
            "api.example.com",
            "10.0.0.1:8443",
            "a-b:1",
            "h:65535",
        ] {
            assert!(plain_host(ok.as_bytes()), "{ok}");
            assert!(authority_host(ok.as_bytes()), "{ok}");
        }
        // Not plain: left to the full check, which takes the first two.
        for other in [
            "[::1]:443",
            "a_b",
            "h:65536",
            "h:",
            ":80",
            "",
            "u@h",
            "h/p",
            "h:8a",
        ] {
            assert!(!plain_host(other.as_bytes()), "{other}");
        }
        for bad in ["h:65536", "h:", "u@h", "h/p", "h:8a", "h:1:2"] {
            assert!(!authority_host(bad.as_bytes()), "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The fast path never accepts what the full check refuses.
        #[test]
        fn plain_host_is_a_subset_of_the_full_check(host in "[a-zA-Z0-9.:_@%\\[\\]/ -]{0,12}") {
            if plain_host(host.as_bytes()) {
                prop_assert!(authority_host(host.as_bytes()), "{host:?}");
            }
        }

        #[test]
        fn plain_host_accepts_names_with_ports(
            name in "[a-z0-9][a-z0-9.-]{0,20}",
            port in proptest::option::of(0u16..=u16::MAX),
        ) {
            let host = match port {
                Some(port) => format!("{name}:{port}"),
                None => name,
            };
            prop_assert!(plain_host(host.as_bytes()), "{host:?}");
            prop_assert!(authority_host(host.as_bytes()), "{host:?}");
        }
    }
}
