//! The fuzz harness, written once: the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, nightly) call
//! it with libFuzzer's inputs, and `tests/fuzzing.rs` (stable, in `cargo test`) replays the
//! committed corpus and its property tests through the same functions.
//!
//! Each entry point takes raw bytes, drives one part of trustgate that reads outside input and
//! panics when an invariant breaks; a panic is a finding. Inputs are line-oriented text, so seeds
//! are written by hand. Only public functions are called, so the harness stays valid while their
//! insides change.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use rustls::CertificateError;
use rustls::pki_types::UnixTime;
use trustgate::config::Config;
use trustgate::pki::{Ca, LeafRequest, Validity};
use trustgate::proxy::headers::{self as rewrite, Forwarding};
use trustgate::routing::{self, Prefix, Route, RouteTable, Upstream};
use trustgate::tls::revocation::{self, CrlSet};
use trustgate::tls::{self, PemError};

// ---------------------------------------------------------------------------------------------
// Routing: Prefix::parse, Upstream::parse, RouteTable::find, Route::upstream_uri,
// Route::public_location, routing::unsafe_path.

/// Input: lines `prefix A`, `upstream A`, `prefix B`, `upstream B`, `request target`,
/// `Location from the upstream`, `public host`. Missing lines are empty.
pub fn routing(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut line = || lines.next().unwrap_or_default();
    let routes = [(line(), line()), (line(), line())];
    let (target, location, public_host) = (line(), line(), line());
    check_routes(&routes, target, location, public_host);
}

/// Parses each `(prefix, upstream)` pair, checks what the parsers accept, then routes `target`
/// through the table and rewrites `location` back for `public_host`.
pub fn check_routes(routes: &[(&str, &str)], target: &str, location: &str, public_host: &str) {
    let mut table = Vec::new();
    for (i, (prefix, upstream)) in routes.iter().enumerate() {
        let prefix = Prefix::parse(prefix).inspect(|p| check_prefix(prefix, p));
        let upstream = Upstream::parse(upstream).inspect(|u| check_upstream(upstream, u));
        let (Ok(prefix), Ok(upstream)) = (prefix, upstream) else {
            continue;
        };
        // The config loader refuses a prefix routed twice.
        if table.iter().any(|r: &Route| r.prefix == prefix) {
            continue;
        }
        table.push(Route {
            prefix,
            upstream,
            balancing: trustgate::balance::settings::Balancing::single(None),
            preserve_host: i % 2 == 0,
            client_identity: None,
            require_client_cert: false,
            max_request_body: 1 << 30,
        });
    }
    let table = RouteTable::new(table);
    let public_host = if public_host.is_empty() {
        "public.example"
    } else {
        public_host
    };
    check_request(&table, target, location, public_host);
}

fn check_prefix(raw: &str, prefix: &Prefix) {
    let s = prefix.as_str();
    assert!(s.starts_with('/'), "{raw:?} -> {s:?}");
    assert!(s == "/" || !s.ends_with('/'), "{raw:?} -> {s:?}");
    assert!(!s.contains("//"), "{raw:?} -> {s:?}");
    assert_eq!(Prefix::parse(s).as_ref(), Ok(prefix), "not idempotent");
    // An accepted prefix must be reachable: the prefix itself is a request path that the proxy
    // lets through and routes to it. Otherwise the route is dead config that `check` passes.
    let reachable = s
        .parse::<Uri>()
        .is_ok_and(|uri| uri.path() == s && routing::unsafe_path(s).is_none());
    assert!(
        reachable,
        "prefix {raw:?} is accepted but no request can reach it"
    );
}

fn check_upstream(raw: &str, upstream: &Upstream) {
    assert_eq!(upstream.to_string(), raw);
    let host = upstream.host();
    assert!(!host.is_empty(), "{raw:?}");
    assert_eq!(host, host.to_ascii_lowercase(), "{raw:?}");
    assert!(
        rustls::pki_types::ServerName::try_from(host).is_ok(),
        "{raw:?}: {host:?} is not a name the certificate can be checked against"
    );
    let authority = raw.parse::<Uri>().ok().and_then(|u| u.authority().cloned());
    let authority = authority.expect("accepted upstream has an authority");
    assert_eq!(upstream.port(), authority.port_u16().unwrap_or(443));
    assert_eq!(
        upstream.host_header().as_bytes(),
        authority.as_str().as_bytes()
    );
}

/// True when the prefix matches `path` on a segment boundary, read straight from the rule.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn check_request(table: &RouteTable, target: &str, location: &str, public_host: &str) {
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let path = uri.path();
    assert_eq!(
        routing::unsafe_path(path).is_some(),
        climbs(path),
        "unsafe_path disagrees with a decoding reader about {path:?}"
    );
    let found = table.find(path);
    let longest = table
        .iter()
        .filter(|r| prefix_matches(r.prefix.as_str(), path))
        .max_by_key(|r| r.prefix.as_str().len());
    assert_eq!(
        found.map(|r| r.prefix.as_str()),
        longest.map(|r| r.prefix.as_str()),
        "find({path:?})"
    );
    // The proxy refuses these before it rewrites anything (proxy::check_request).
    if !path.starts_with('/') || routing::unsafe_path(path).is_some() {
        return;
    }
    let Some(route) = found else {
        return;
    };
    let upstream_uri = route
        .upstream_uri(&uri)
        .unwrap_or_else(|e| panic!("upstream_uri({target:?}) via {}: {e}", route.upstream));
    check_upstream_uri(route, &uri, &upstream_uri);

    // A redirect to exactly where the request went comes back as the public path it came from.
    let rest = path
        .strip_prefix(route.prefix.as_str())
        .filter(|_| route.prefix.as_str() != "/")
        .unwrap_or(path);
    if !rest.is_empty() {
        let back = format!(
            "https://{}{}",
            upstream_uri.authority().map_or("", |a| a.as_str()),
            upstream_uri.path_and_query().map_or("", |pq| pq.as_str())
        );
        // Built as upstream_uri reads the target: `Uri::path` is `/` for an empty path.
        let public = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        assert_eq!(
            route.public_location(&back, public_host),
            Some(format!("https://{public_host}{public}")),
            "round trip of {target:?} via {}",
            route.upstream
        );
    }
    check_location(route, location, public_host);
}

fn check_upstream_uri(route: &Route, original: &Uri, upstream: &Uri) {
    let configured: Uri = route.upstream.to_string().parse().expect("parsed before");
    let base = configured.path();
    assert_eq!(upstream.scheme_str(), Some("https"));
    assert_eq!(upstream.authority(), configured.authority());
    assert_eq!(upstream.query(), original.query(), "query changed");
    let path = upstream.path();
    let base_trimmed = base.trim_end_matches('/');
    assert!(
        path.starts_with(base_trimmed),
        "{path:?} left the base path {base:?} of {}",
        route.upstream
    );
    // Whatever follows the base is the client's path after the prefix, unchanged.
    let rest = &path[base_trimmed.len()..];
    let prefix = route.prefix.as_str();
    let client_rest = if prefix == "/" {
        original.path()
    } else {
        &original.path()[prefix.len()..]
    };
    if client_rest.is_empty() {
        assert_eq!(path, base);
    } else {
        assert_eq!(rest, client_rest);
    }
    if routing::unsafe_path(base).is_none() {
        assert!(
            routing::unsafe_path(path).is_none(),
            "{path:?} climbs out of {base:?}"
        );
    }
}

/// A rewritten `Location` stays under the route's public prefix on the public host.
fn check_location(route: &Route, location: &str, public_host: &str) {
    let Some(public) = route.public_location(location, public_host) else {
        return;
    };
    let prefix = route.prefix.as_str();
    let head = format!(
        "https://{public_host}{}",
        if prefix == "/" { "" } else { prefix }
    );
    let tail = public
        .strip_prefix(&head)
        .unwrap_or_else(|| panic!("{location:?} -> {public:?} is not under {head:?}"));
    assert!(
        tail.is_empty() || tail.starts_with(['/', '?', '#']),
        "{location:?} -> {public:?} leaves {head:?}"
    );
}

/// Independent reading of the path rule: percent-decode each segment (its `;parameters` cut
/// first) as an upstream might; the path climbs when a segment decodes to `.` or `..`, or
/// decodes to a `/` or `\` that a server would take for a separator.
pub fn climbs(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = percent_decode(segment);
        let before_params = percent_decode(segment.split(';').next().unwrap_or_default());
        decoded.contains(&b'\\')
            || decoded.contains(&b'/')
            || before_params == b"."
            || before_params == b".."
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|pair| Some(hex(pair[0])? * 16 + hex(pair[1])?));
        if let Some(byte) = escape {
            out.push(byte as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Headers: proxy::headers::{upgrade_requested, prepare_request, prepare_response}.

/// The route every header input is rewritten for.
static HEADER_ROUTE: LazyLock<(Route, Route)> = LazyLock::new(|| {
    let route = |preserve_host| Route {
        prefix: Prefix::parse("/api").expect("valid prefix"),
        upstream: Upstream::parse("https://backend-api:8443/").expect("valid upstream"),
        balancing: trustgate::balance::settings::Balancing::single(None),
        preserve_host,
        client_identity: None,
        require_client_cert: false,
        max_request_body: 1 << 30,
    };
    (route(true), route(false))
});

/// Input: a flags line (words: `preserve` keeps the client's Host, `h2` means no upgrade is
/// possible), the client's host (empty: none), the peer's IP, then `name: value` request header
/// lines, an empty line, and `name: value` response header lines.
pub fn headers(data: &[u8]) {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let flags = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let host = lines.next().unwrap_or_default();
    let peer = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut request = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        request.extend(header_line(line));
    }
    let response: Vec<_> = lines.filter_map(header_line).collect();
    let Some(client_host) = client_host(host) else {
        return;
    };
    let peer = peer.trim().parse().unwrap_or(IpAddr::from([192, 0, 2, 1]));
    let preserve_host = flags.split_whitespace().any(|w| w == "preserve");
    let http2 = flags.split_whitespace().any(|w| w == "h2");
    check_headers(
        preserve_host,
        http2,
        client_host.as_ref(),
        peer,
        &request,
        &response,
    );
}

/// `name: value` with the optional whitespace trimmed, as hyper hands it over.
fn header_line(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(line[..colon].trim_ascii()).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

/// The host as the proxy accepts it (`proxy::client_host`): `None` inside when absent, outer
/// `None` when the proxy would answer 400 instead.
fn client_host(raw: &[u8]) -> Option<Option<HeaderValue>> {
    if raw.is_empty() {
        return Some(None);
    }
    let value = HeaderValue::from_bytes(raw).ok()?;
    let text = value.to_str().ok()?;
    (!text.contains('@') && text.parse::<http::uri::Authority>().is_ok()).then_some(Some(value))
}

/// Rewrites `request` and `response` as the proxy does and checks what reaches each side.
pub fn check_headers(
    preserve_host: bool,
    http2: bool,
    client_host: Option<&HeaderValue>,
    peer: IpAddr,
    request: &[(HeaderName, HeaderValue)],
    response: &[(HeaderName, HeaderValue)],
) {
    let route = if preserve_host {
        &HEADER_ROUTE.0
    } else {
        &HEADER_ROUTE.1
    };
    let original: HeaderMap = request.iter().cloned().collect();
    let upgrade = if http2 {
        None
    } else {
        rewrite::upgrade_requested(&original)
    };
    if let Some(protocol) = &upgrade {
        assert!(
            original
                .get_all(header::UPGRADE)
                .iter()
                .any(|v| v == protocol)
        );
    }
    let mut sent = original.clone();
    // As the connection formats it once for all its requests.
    let forwarded_for =
        HeaderValue::from_str(&peer.to_canonical().to_string()).expect("an IP address");
    rewrite::prepare_request(
        &mut sent,
        &Forwarding {
            route,
            peer: &forwarded_for,
            client_host,
            upgrade: upgrade.clone(),
            client_cert: None,
            forward_chain: false,
        },
    );
    check_stripped(
        &original,
        &sent,
        upgrade.as_ref(),
        &FORWARDING_HEADERS,
        false,
    );

    let hosts: Vec<_> = sent.get_all(header::HOST).iter().collect();
    let want_host = match client_host {
        Some(host) if preserve_host => host,
        _ => route.upstream.host_header(),
    };
    assert_eq!(hosts, [want_host], "Host");
    let proto: Vec<_> = sent.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(proto, ["https"], "X-Forwarded-Proto");
    let forwarded_for: Vec<_> = sent.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded_for.len(), 1, "X-Forwarded-For: {forwarded_for:?}");
    let peer = peer.to_canonical().to_string();
    let chain = forwarded_for[0].to_str().expect("ASCII");
    assert!(
        chain == peer || chain.ends_with(&format!(", {peer}")),
        "X-Forwarded-For {chain:?} does not end with the peer {peer}"
    );
    let forwarded_host: Vec<_> = sent.get_all("x-forwarded-host").iter().collect();
    assert_eq!(
        forwarded_host,
        Vec::from_iter(client_host),
        "X-Forwarded-Host"
    );

    let original: HeaderMap = response.iter().cloned().collect();
    let public_host = client_host.and_then(|h| h.to_str().ok());
    let mut returned = original.clone();
    rewrite::prepare_response(&mut returned, route, public_host, upgrade.clone());
    let locations = [header::LOCATION, header::CONTENT_LOCATION];
    check_stripped(&original, &returned, upgrade.as_ref(), &locations, true);
    for name in locations {
        let Some(after) = returned.get(&name) else {
            continue;
        };
        let rewritten = original
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .zip(public_host)
            .and_then(|(location, host)| route.public_location(location, host));
        match rewritten {
            Some(public) => assert_eq!(after, &public, "{name}"),
            None => assert_eq!(Some(after), original.get(&name), "{name} changed"),
        }
    }
}

const FORWARDING_HEADERS: [HeaderName; 4] = [
    header::HOST,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
];

/// Hop-by-hop headers and those `Connection` names are gone, except the upgrade pair when
/// tunnelling; every other header passes unchanged, apart from `rewritten` ones and, in a
/// `response` framed by `Transfer-Encoding`, `Content-Length` (RFC 9112 section 6.3).
fn check_stripped(
    before: &HeaderMap,
    after: &HeaderMap,
    upgrade: Option<&HeaderValue>,
    rewritten: &[HeaderName],
    response: bool,
) {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "close",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    ];
    let framed_by_te = response && before.contains_key(header::TRANSFER_ENCODING);
    let listed: Vec<HeaderName> = before
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
        .collect();
    for name in HOP_BY_HOP {
        let values: Vec<_> = after.get_all(name).iter().collect();
        match (name, upgrade) {
            ("connection", Some(_)) => assert_eq!(values, ["upgrade"], "{name}"),
            ("upgrade", Some(protocol)) => assert_eq!(values, [protocol], "{name}"),
            _ => assert!(values.is_empty(), "hop-by-hop {name} forwarded: {values:?}"),
        }
    }
    for name in before.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) || rewritten.contains(name) {
            continue;
        }
        let values: Vec<_> = after.get_all(name).iter().collect();
        if framed_by_te && name == header::CONTENT_LENGTH {
            assert!(
                values.is_empty(),
                "Content-Length kept next to Transfer-Encoding"
            );
        } else if listed.contains(name) {
            assert!(
                values.is_empty(),
                "{name} is named by Connection but forwarded"
            );
        } else {
            let want: Vec<_> = before.get_all(name).iter().collect();
            assert_eq!(values, want, "{name} changed on the way");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config: Config::from_toml with real files for the paths a config names.

/// A folder holding the files a fuzzed config may name (relative to `trustgate.toml` in it):
/// `public/fullchain.pem` + `public/privkey.pem` (a matching pair), `internal/ca.pem` (a CA
/// certificate), `internal/leaf.pem` (not a CA) and `internal/with-key.pem` (CA plus its key).
pub struct ConfigFixture {
    path: PathBuf,
}

impl ConfigFixture {
    /// Writes the files into `dir` (created if needed). Panics when it cannot: no fuzzing then.
    pub fn new(dir: &Path) -> Self {
        let root = Ca::root("fuzz internal root", Validity::days(30)).expect("root CA");
        let public = Ca::root("fuzz public root", Validity::days(30)).expect("public CA");
        let leaf = public
            .issue(&LeafRequest::server("proxy.example", 30))
            .expect("leaf");
        let files = [
            (
                "public/fullchain.pem",
                leaf.cert_pem.clone() + &public.cert_pem(),
            ),
            ("public/privkey.pem", leaf.key_pem.clone()),
            ("internal/ca.pem", root.cert_pem()),
            ("internal/leaf.pem", leaf.cert_pem.clone()),
            ("internal/with-key.pem", root.cert_pem() + &root.key_pem()),
        ];
        for (name, contents) in files {
            let path = dir.join(name);
            let parent = path.parent().expect("file in a folder");
            std::fs::create_dir_all(parent).expect("fixture folder");
            std::fs::write(&path, contents).expect("fixture file");
        }
        Self {
            path: dir.join("trustgate.toml"),
        }
    }

    /// Where the config "lives": relative paths in it resolve against the fixture folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Input: TOML text. `Config::from_toml` must answer `Ok` or a `ConfigError` whose problems name
/// the file and a line inside it; never panic.
pub fn config(fixture: &ConfigFixture, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_a_special_file(text) {
        return;
    }
    match Config::from_toml(&fixture.path, text) {
        Ok(config) => {
            assert!(!config.routes.is_empty());
            assert!(!config.upstream_tls.anchors.is_empty());
            for route in config.routes.iter() {
                let found = config.routes.find(route.prefix.as_str());
                assert_eq!(found.map(|r| &r.prefix), Some(&route.prefix));
            }
            assert!(!config.summary().to_string().is_empty());
        }
        Err(error) => {
            assert!(!error.problems.is_empty(), "an error with no problem");
            let lines = text.lines().count().max(1) + 1;
            for problem in &error.problems {
                assert_eq!(problem.file, fixture.path);
                assert!(!problem.reason.is_empty(), "{problem:?}");
                if let Some(line) = problem.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} of {lines}: {problem}"
                    );
                }
            }
            assert!(!error.to_string().is_empty());
        }
    }
}

/// A config naming `/dev/zero` or a FIFO would make the loader read forever: operator input the
/// fuzzer should not spend its time on. Checked on every string the TOML holds, escapes decoded.
fn names_a_special_file(text: &str) -> bool {
    fn special(value: &toml::Value) -> bool {
        match value {
            toml::Value::String(s) => ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p)),
            toml::Value::Array(items) => items.iter().any(special),
            toml::Value::Table(table) => table.values().any(special),
            _ => false,
        }
    }
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.values().any(special))
}

// ---------------------------------------------------------------------------------------------
// PEM: tls::{parse_certs, parse_ca_certs, parse_key, holds_private_key}, and what the loader
// builds from them.

/// Input: a PEM file's bytes, read as a server chain, as trust anchors and as a private key.
pub fn pem(data: &[u8]) {
    let path = Path::new("fuzz.pem");
    let names_file = |e: &PemError| assert!(e.to_string().contains("fuzz.pem"), "{e}");
    let holds_key = tls::holds_private_key(data);

    let certs = tls::parse_certs(path, data).inspect_err(names_file);
    if let Ok(certs) = &certs {
        assert!(!certs.is_empty());
        for cert in certs {
            let _ = tls::subject(cert);
        }
    }
    match tls::parse_ca_certs(path, data).inspect_err(names_file) {
        Ok(anchors) => {
            assert!(
                !holds_key,
                "a PEM holding a private key was taken as trust anchors"
            );
            assert_eq!(Some(&anchors), certs.as_ref().ok());
            if let Ok(verifier) = tls::client::verifier(&anchors, &CrlSet::default()) {
                let _ = tls::client::config(verifier, None);
            }
        }
        Err(PemError::HoldsPrivateKey { .. }) => assert!(holds_key),
        Err(_) => assert!(!holds_key, "a key block must be refused as such first"),
    }
    if let Ok(key) = tls::parse_key(path, data).inspect_err(names_file) {
        let _ = tls::provider()
            .key_provider
            .load_private_key(key.clone_key());
        if let Ok(certs) = certs {
            let _ = tls::server::config(certs, key, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CRL files: trustgate's loader (PEM or DER, webpki's parser and x509-parser's), then the
// verifier built with what it accepted, and the refusal explanation over a chain.

/// One CA that every CRL input is attached to.
static CRL_ROOT: LazyLock<Ca> =
    LazyLock::new(|| Ca::root("fuzz CRL issuer", Validity::days(30)).expect("root CA"));

/// Input: a CRL file's bytes.
pub fn crl_pem(data: &[u8]) {
    let path = Path::new("fuzz.crl");
    let crls = match revocation::parse(path, data) {
        Ok(crls) => crls,
        Err(e) => {
            assert!(e.to_string().contains("fuzz.crl"), "unnamed file: {e}");
            return;
        }
    };
    let set = CrlSet {
        crls,
        policy: revocation::Policy::default(),
    };
    for crl in &set.crls {
        let _ = (crl.revoked_count(), crl.expired_at(0), &crl.issuer);
    }
    let anchor = CRL_ROOT.cert().clone();
    if tls::client::verifier(std::slice::from_ref(&anchor), &set).is_ok() {
        let chain = [&anchor];
        for error in [
            CertificateError::Revoked,
            CertificateError::UnknownRevocationStatus,
            CertificateError::ExpiredRevocationList,
        ] {
            let _ = set.explain(
                &rustls::Error::InvalidCertificate(error),
                &chain,
                UnixTime::now(),
            );
        }
    }
}
