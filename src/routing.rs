//! The route table: which upstream serves a request path, and how the path and redirect locations
//! are rewritten on the way (Apache's `ProxyPass` and `ProxyPassReverse`).
//!
//! Pure and immutable after load: matching is a scan over a handful of prefixes sorted longest
//! first, with no allocation and no lock.

use std::fmt;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use rustls::pki_types::ServerName;

use crate::balance::settings::Balancing;
use crate::tls::client::Identity;

/// A path prefix that matches on segment boundaries: `/api` matches `/api` and `/api/x`, not
/// `/apix`. Stored without a trailing slash, except the root prefix `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("prefix {raw:?} must start with '/'"));
        }
        if raw.contains(['?', '#']) || raw.chars().any(|c| c.is_ascii_whitespace()) {
            return Err(format!(
                "prefix {raw:?} must be a plain path (no query, fragment or spaces)"
            ));
        }
        if raw.parse::<PathAndQuery>().is_err() {
            return Err(format!(
                "prefix {raw:?} holds characters a request path cannot carry; write them \
                 percent-encoded, as clients send them"
            ));
        }
        if raw.contains("//") {
            return Err(format!("prefix {raw:?} must not contain an empty segment"));
        }
        // The proxy refuses these request paths before routing, so such a prefix would be a
        // route that `check` accepts and no request can ever reach.
        if let Some(why) = unsafe_path(raw) {
            return Err(format!(
                "prefix {raw:?} can never match: {why}, and the proxy refuses such paths"
            ));
        }
        let trimmed = raw.trim_end_matches('/');
        Ok(Self(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The part of `path` after this prefix (empty or starting with '/'), if the prefix matches.
    fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.is_root() {
            return Some(path);
        }
        let rest = path.strip_prefix(self.0.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An `https://` upstream. Its host is the service name: the SNI sent and the name the
/// certificate must carry in its SAN.
#[derive(Debug, Clone)]
pub struct Upstream {
    url: String,
    authority: Authority,
    host: String,
    port: u16,
    /// The URL's path as written (`/` or `/base/`): what the prefix itself maps to.
    base: String,
    /// Origins that the upstream may use in absolute redirects to itself.
    origins: Vec<String>,
    host_header: HeaderValue,
}

impl Upstream {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri: Uri = raw
            .parse()
            .map_err(|e| format!("{raw:?} is not a valid URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                return Err(format!(
                    "{raw:?}: plain http upstreams are refused, all internal traffic is encrypted; \
                     use https:// and a certificate from the internal CA"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "{raw:?}: scheme {other:?} is not supported, use https://"
                ));
            }
            None => return Err(format!("{raw:?} must be an absolute https:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{raw:?} has no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(format!("{raw:?} must not carry user information"));
        }
        if uri.query().is_some() {
            return Err(format!("{raw:?} must not have a query string"));
        }
        // The URI parser lets text through between an IPv6 literal's `]` and the port
        // (`[::1]z:8443`), takes an empty port, and reads a port above 65535 as none at all,
        // which would silently connect to 443. A leading zero (`:0443`) would reach the
        // upstream in `Host` but never match the origin its redirects are rewritten from.
        let after_host = &authority.as_str()[authority.host().len()..];
        let port_only = after_host.strip_prefix(':').is_some_and(|port| {
            port.bytes().all(|b| b.is_ascii_digit())
                && !port.starts_with('0')
                && authority.port_u16().is_some()
        });
        if !after_host.is_empty() && !port_only {
            return Err(format!(
                "{raw:?}: {:?} is not host[:port] with a port from 1 to 65535 (no leading zero)",
                authority.as_str()
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host)
            .map_err(|_| format!("{raw:?}: {host:?} is not a valid DNS name or IP address"))?;
        let port = authority.port_u16().unwrap_or(443);
        let mut origins = vec![format!("https://{}:{port}", authority.host())];
        if port == 443 {
            origins.push(format!("https://{}", authority.host()));
        }
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{raw:?}: host is not a valid header value"))?;
        Ok(Self {
            url: raw.to_owned(),
            host: host.to_ascii_lowercase(),
            port,
            base: uri.path().to_owned(),
            origins,
            authority,
            host_header,
        })
    }

    /// The service name: SNI and the name verified against the certificate.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `Host` header value for `preserve_host = false`.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    fn base_trimmed(&self) -> &str {
        self.base.trim_end_matches('/')
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: Prefix,
    pub upstream: Upstream,
    /// Where the service's endpoints are and how requests are spread over them; the verified
    /// name is the upstream host whatever address a connection goes to.
    pub balancing: Balancing,
    /// Forward the client's `Host` (Apache's `ProxyPreserveHost On`).
    pub preserve_host: bool,
    /// The client certificate presented to this upstream when it asks for one: the route's
    /// `upstream_client_cert`, else `[upstream_tls] client_cert`.
    pub client_identity: Option<Arc<Identity>>,
    /// Refuse (403) requests whose connection carries no verified client certificate.
    pub require_client_cert: bool,
    /// Largest request body forwarded, in bytes; larger gets 413.
    pub max_request_body: u64,
}

impl Route {
    /// The upstream URI for a request to `path_and_query`, which must match this route.
    pub fn upstream_uri(&self, original: &Uri) -> Result<Uri, http::Error> {
        let rest = self.prefix.strip(original.path()).unwrap_or_default();
        let mut target = if rest.is_empty() {
            self.upstream.base.clone()
        } else {
            let base = self.upstream.base_trimmed();
            let mut target = String::with_capacity(base.len() + rest.len() + 32);
            target.push_str(base);
            target.push_str(rest);
            target
        };
        if let Some(query) = original.query() {
            target.push('?');
            target.push_str(query);
        }
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.upstream.authority.clone())
            .path_and_query(PathAndQuery::try_from(target)?)
            .build()
    }

    /// Rewrites an absolute `Location` that points into this upstream's origin and base path to
    /// the public origin and this route's prefix. `None` when the location points elsewhere.
    pub fn public_location(&self, location: &str, public_host: &str) -> Option<String> {
        let after_origin = self.upstream.origins.iter().find_map(|origin| {
            let head = location.get(..origin.len())?;
            head.eq_ignore_ascii_case(origin)
                .then(|| &location[origin.len()..])
        })?;
        let rest = after_origin.strip_prefix(self.upstream.base_trimmed())?;
        if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
            return None;
        }
        let prefix = if self.prefix.is_root() {
            ""
        } else {
            self.prefix.as_str()
        };
        let mut public = format!("https://{public_host}{prefix}{rest}");
        if prefix.is_empty() && rest.is_empty() {
            public.push('/');
        }
        Some(public)
    }
}

/// All routes, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
}

impl RouteTable {
    /// Builds the table. Prefixes must be unique; the config loader checks that with line numbers.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.0.len()));
        Self {
            routes: routes.into(),
        }
    }

    /// The route with the longest prefix that matches `path` on a segment boundary.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.lookup(path).map(|(_, route)| route)
    }

    /// [`find`](Self::find), with the route's position in [`iter`](Self::iter)'s order, so
    /// callers can keep per-route data beside the table.
    pub fn lookup(&self, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.prefix.strip(path).is_some())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Why a request path is refused before routing, if it is: a path that some upstream could
/// resolve above its base path after decoding it. That is a `.` or `..` segment (literally,
/// percent-encoded, or followed by `;parameters` as Tomcat reads them), an encoded `/` or `\`,
/// or a literal `\`. Checked byte by byte without allocating.
pub fn unsafe_path(path: &str) -> Option<&'static str> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Some("the path holds a backslash");
    }
    let encoded_separator = bytes.windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    if encoded_separator {
        return Some("the path holds an encoded '/' or '\\'");
    }
    // A dot segment starts right after a '/' with '.' or an encoded one: paths with neither (all
    // but a few) skip the split into segments.
    let may_have_dots = bytes.windows(2).any(|w| w == b"/.")
        || bytes
            .windows(4)
            .any(|w| w[0] == b'/' && w[1] == b'%' && w[2..].eq_ignore_ascii_case(b"2e"));
    if may_have_dots && path.split('/').any(is_dot_segment) {
        return Some("the path holds '.' or '..' segments");
    }
    None
}

/// `.` or `..`, possibly percent-encoded, ignoring `;parameters`.
fn is_dot_segment(segment: &str) -> bool {
    let segment = segment.split(';').next().unwrap_or_default().as_bytes();
    let mut dots = 0;
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'.' {
            i += 1;
        } else if segment.len() - i >= 3
            && segment[i] == b'%'
            && segment[i + 1..i + 3].eq_ignore_ascii_case(b"2e")
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, upstream: &str) -> Route {
        Route {
            prefix: Prefix::parse(prefix).unwrap(),
            upstream: Upstream::parse(upstream).unwrap(),
            balancing: Balancing::single(None),
            preserve_host: true,
            client_identity: None,
            require_client_cert: false,
            max_request_body: 1 << 30,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("/api", "https://backend-api:8443/"),
            route("/api/v2", "https://backend-v2:8443/"),
            route("/files/", "https://files:9443/base/"),
        ])
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = table();
        let host = |p: &str| t.find(p).map(|r| r.upstream.host().to_owned());
        assert_eq!(host("/api").as_deref(), Some("backend-api"));
        assert_eq!(host("/api/").as_deref(), Some("backend-api"));
        assert_eq!(host("/api/x").as_deref(), Some("backend-api"));
        assert_eq!(host("/api/v2").as_deref(), Some("backend-v2"));
        assert_eq!(host("/api/v2/users").as_deref(), Some("backend-v2"));
        assert_eq!(host("/api/v20").as_deref(), Some("backend-api"));
        assert_eq!(host("/apix"), None);
        assert_eq!(host("/"), None);
        assert_eq!(host("/files"), Some("files".into()));
    }

    #[test]
    fn root_prefix_matches_everything_but_loses_to_longer() {
        let t = RouteTable::new(vec![
            route("/", "https://web:443/"),
            route("/api", "https://api:1/"),
        ]);
        assert_eq!(t.find("/anything").unwrap().upstream.host(), "web");
        assert_eq!(t.find("/").unwrap().upstream.host(), "web");
        assert_eq!(t.find("/api/x").unwrap().upstream.host(), "api");
    }

    #[test]
    fn rewrites_paths_against_the_upstream_base() {
        let t = table();
        let cases = [
            ("/api/x?q=1", "https://backend-api:8443/x?q=1"),
            ("/api", "https://backend-api:8443/"),
            ("/api/", "https://backend-api:8443/"),
            ("/api?q=1", "https://backend-api:8443/?q=1"),
            ("/files/x", "https://files:9443/base/x"),
            ("/files", "https://files:9443/base/"),
            ("/api/v2/a/b", "https://backend-v2:8443/a/b"),
        ];
        for (path, want) in cases {
            let uri: Uri = path.parse().unwrap();
            let got = t.find(uri.path()).unwrap().upstream_uri(&uri).unwrap();
            assert_eq!(got.to_string(), want, "{path}");
        }
    }

    #[test]
    fn rewrites_locations_back_to_the_public_origin() {
        let api = route("/api", "https://backend-api:8443/");
        let files = route("/files", "https://files/base/");
        let root = route("/", "https://web:8443/");
        let host = "example.com";
        let cases = [
            (
                &api,
                "https://backend-api:8443/login?next=1",
                Some("https://example.com/api/login?next=1"),
            ),
            (
                &api,
                "https://BACKEND-API:8443/x",
                Some("https://example.com/api/x"),
            ),
            (
                &api,
                "https://backend-api:8443",
                Some("https://example.com/api"),
            ),
            (&api, "https://backend-api:9999/x", None),
            (&api, "https://other:8443/x", None),
            (&api, "/relative", None),
            (
                &files,
                "https://files/base/a",
                Some("https://example.com/files/a"),
            ),
            (
                &files,
                "https://files:443/base/a",
                Some("https://example.com/files/a"),
            ),
            (&files, "https://files/based", None),
            (&files, "https://files/other", None),
            (&root, "https://web:8443/", Some("https://example.com/")),
            (&root, "https://web:8443", Some("https://example.com/")),
        ];
        for (route, location, want) in cases {
            assert_eq!(
                route.public_location(location, host).as_deref(),
                want,
                "{location}"
            );
        }
    }

    #[test]
    fn prefix_validation() {
        assert_eq!(Prefix::parse("/api/").unwrap().as_str(), "/api");
        assert_eq!(Prefix::parse("/").unwrap().as_str(), "/");
        for bad in ["api", "/a?b", "/a#b", "/a b", "/a//b", "/a/../b", "/."] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }

    /// Found by `cargo fuzz run routing`: a prefix with bytes no request target carries was
    /// accepted, a route no request could reach.
    #[test]
    fn prefixes_with_characters_no_path_carries_are_refused() {
        for bad in ["/api\u{1}", "/a\u{7f}", "/a<b", "/a`b"] {
            let err = Prefix::parse(bad).unwrap_err();
            assert!(err.contains("percent-encoded"), "{bad:?}: {err}");
        }
        // Raw UTF-8 is taken by hyper's parser as by the URI type.
        for good in ["/caf%C3%A9", "/caf\u{e9}"] {
            assert!(Prefix::parse(good).is_ok(), "{good}");
        }
    }

    /// Found by tests/fuzzing.rs: a prefix that `unsafe_path` refuses as a request path was
    /// accepted, so its route could never be reached.
    #[test]
    fn prefixes_no_request_can_reach_are_refused() {
        for bad in [
            "/%2f",
            "/a%2Fb",
            "/files/%5c",
            "/a\\b",
            "/%2e%2e/x",
            "/a/.;x",
        ] {
            let err = Prefix::parse(bad).unwrap_err();
            assert!(err.contains("can never match"), "{bad}: {err}");
        }
    }

    #[test]
    fn upstream_validation() {
        let up = Upstream::parse("https://backend-api:8443/").unwrap();
        assert_eq!((up.host(), up.port()), ("backend-api", 8443));
        assert_eq!(
            Upstream::parse("https://[::1]:8443/").unwrap().host(),
            "::1"
        );
        assert_eq!(Upstream::parse("https://svc").unwrap().port(), 443);
        let err = Upstream::parse("http://backend-api:8080/").unwrap_err();
        assert!(err.contains("all internal traffic is encrypted"), "{err}");
        for bad in [
            "ftp://x/",
            "backend-api:8443",
            "/path",
            "https://u:p@x/",
            "https://x/?a=1",
            "https://bad_name!/",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }

    /// Found by `cargo fuzz run routing`: `[::1]z:8443` parsed as host `[::1]`, port 8443, and
    /// the whole string became the upstream's `Host`. Its neighbours: port 99999 read as 443,
    /// and `:0649` sent in `Host` while redirects were matched against `:649`.
    #[test]
    fn authority_is_host_and_port_only() {
        let bad = [
            "https://[::1]z:8443/",
            "https://[::1]z/",
            "https://[::1]:/",
            "https://h:/",
            "https://h:99999/",
            "https://h:0/",
            "https://h:0649/",
        ];
        for bad in bad {
            let err = Upstream::parse(bad).unwrap_err();
            assert!(err.contains("is not host[:port]"), "{bad}: {err}");
        }
        for good in [
            "https://[::1]:8443/",
            "https://[::1]/",
            "https://h:1/",
            "https://h/",
        ] {
            assert!(Upstream::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn paths_that_could_climb_out_of_a_base_are_refused() {
        let bad = [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a/%2E",
            "/a/..;/b",
            "/a/.;x=1/b",
            "/files/..%2fsecret",
            "/files/..%2Fsecret",
            "/files/..%5csecret",
            "/files/a\\b",
        ];
        for path in bad {
            assert!(unsafe_path(path).is_some(), "{path}");
        }
        let good = [
            "/",
            "/a/b",
            "/a/.well-known",
            "/a/..b",
            "/a/b..",
            "/app.js",
            "/a%20b",
            "/a;v=1/b",
            "/%2",
        ];
        for path in good {
            assert_eq!(unsafe_path(path), None, "{path}");
        }
    }
}
