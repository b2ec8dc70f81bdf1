//! The fuzz harness on stable: every committed input under `fuzz/corpus/<target>/` (and any
//! `fuzz/artifacts/<target>/` crash left by a local run) goes through the same functions the
//! cargo-fuzz targets call, and property tests feed them structured inputs that libFuzzer would
//! take long to build byte by byte. Case counts stay small: this file runs in a few seconds.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::LazyLock;

use http::header::{HeaderName, HeaderValue};
use proptest::prelude::*;
use trustgate::config::Config;
use trustgate::routing::unsafe_path;

use harness::ConfigFixture;

/// Runs every file of `fuzz/corpus/<target>` and `fuzz/artifacts/<target>` through `run`, naming
/// the file that fails. Returns how many corpus files there were.
fn replay(target: &str, run: impl Fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                panic!("{} breaks an invariant (message above)", file.display());
            }
            if dir == "corpus" {
                seeds += 1;
            }
        }
    }
    assert!(seeds > 0, "fuzz/corpus/{target} holds no seed");
    seeds
}

/// One folder of real certificate files for the whole test binary.
static FIXTURE: LazyLock<(tempfile::TempDir, ConfigFixture)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let fixture = ConfigFixture::new(dir.path());
    (dir, fixture)
});

#[test]
fn routing_corpus() {
    replay("routing", harness::routing);
}

#[test]
fn headers_corpus() {
    replay("headers", harness::headers);
}

#[test]
fn config_corpus() {
    replay("config", |data| harness::config(&FIXTURE.1, data));
}

#[test]
fn pem_corpus() {
    replay("pem", harness::pem);
}

#[test]
fn crl_pem_corpus() {
    replay("crl_pem", harness::crl_pem);
}

/// The config seeds reach the end of the loader: without that the fuzzer would only ever see
/// the error paths.
#[test]
fn config_seed_loads_against_the_fixture() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/config/valid.toml");
    let text = std::fs::read_to_string(seed).unwrap();
    let config = Config::from_toml(FIXTURE.1.path(), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), 3);
}

/// Path segments that matter to the path rule, plus plain ones.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9]{1,4}",
        3 => "[a-z.;%2eEfF5cC]{1,6}",
        1 => prop::sample::select(vec![
            ".", "..", "%2e", "%2E%2e", ".%2e", "..;x", ".;a=1", "%2f", "%2F", "%5c", "%5C", "%2",
            "a..b", "...", ".well-known", "", "a\\b", "%252e", "..%3b", "a;b=%2f",
        ])
        .prop_map(str::to_owned),
    ]
}

fn path(max_segments: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..=max_segments).prop_map(|s| format!("/{}", s.join("/")))
}

/// Prefixes and request paths over a tiny alphabet, so that they overlap often.
fn overlapping_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "ab", "b", "a.b"]), 0..=3)
        .prop_map(|s| format!("/{}", s.join("/")))
}

fn upstream() -> impl Strategy<Value = String> {
    let host = prop::sample::select(vec![
        "backend",
        "Backend-API:8443",
        "svc:443",
        "10.0.0.5:9443",
        "[::1]:8443",
    ]);
    let base = prop::collection::vec("[a-z]{1,3}", 0..=2);
    (host, base, any::<bool>()).prop_map(|(host, base, slash)| {
        let mut url = format!("https://{host}/{}", base.join("/"));
        if slash && !url.ends_with('/') {
            url.push('/');
        }
        url
    })
}

fn query() -> impl Strategy<Value = String> {
    prop::option::of("[a-z=&%./]{0,6}").prop_map(|q| q.map(|q| format!("?{q}")).unwrap_or_default())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `unsafe_path` refuses exactly the paths that climb once percent-decoded.
    #[test]
    fn unsafe_path_is_the_decoding_rule(path in path(4)) {
        prop_assert_eq!(unsafe_path(&path).is_some(), harness::climbs(&path), "{}", path);
    }

    /// A path the proxy lets through reaches the upstream under the base path, with no `..` or
    /// encoded separator; the query is kept; redirects map back to the public path.
    #[test]
    fn rewriting_stays_under_the_upstream_base(
        prefix in path(2),
        upstream in upstream(),
        rest in path(3),
        query in query(),
        location in prop::option::of(path(3)),
    ) {
        let target = format!("{}{}{}", prefix.trim_end_matches('/'), rest, query);
        let location = location.map(|l| format!("{}{l}", upstream.trim_end_matches('/')));
        harness::check_routes(
            &[(&prefix, &upstream)],
            &target,
            location.as_deref().unwrap_or_default(),
            "public.example",
        );
    }

    /// `RouteTable::find` picks the longest prefix that matches on a segment boundary.
    #[test]
    fn find_takes_the_longest_prefix_on_a_segment_boundary(
        prefixes in prop::collection::vec(overlapping_path(), 1..=4),
        target in overlapping_path(),
    ) {
        let routes: Vec<(&str, &str)> =
            prefixes.iter().map(|p| (p.as_str(), "https://backend/")).collect();
        harness::check_routes(&routes, &target, "", "public.example");
    }
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop::sample::select(vec![
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "location",
        "content-location",
        "x-a",
        "accept",
    ])
    .prop_map(HeaderName::from_static)
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    let tokens = prop::collection::vec(
        prop::sample::select(vec![
            "close",
            "Upgrade",
            " KEEP-ALIVE ",
            "x-a",
            "host",
            "content-length",
            "te",
            "x-forwarded-for",
            "location",
            "accept",
            "",
            "bad name",
        ]),
        1..=3,
    )
    .prop_map(|t| t.join(","));
    let urls = prop::sample::select(vec![
        "https://backend-api:8443/login",
        "https://BACKEND-API:8443",
        "https://backend-api:8443@evil.example/",
        "https://backend-api:84430/x",
        "/relative",
        "websocket",
        "203.0.113.7",
    ])
    .prop_map(str::to_owned);
    prop_oneof![tokens, urls, "[ -~]{0,8}"].prop_map(|v| HeaderValue::from_str(&v).unwrap())
}

fn headers() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    prop::collection::vec((header_name(), header_value()), 0..=8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// No hop-by-hop header reaches either side (bar the upgrade pair when tunnelling), nothing
    /// else is lost, exactly one Host and one X-Forwarded-For ending with the peer.
    #[test]
    fn header_rewrite_keeps_its_promises(
        preserve_host in any::<bool>(),
        http2 in any::<bool>(),
        host in prop::option::of(prop::sample::select(vec![
            "public.example", "public.example:8443", "[::1]:443",
        ])),
        peer in prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            any::<[u8; 4]>().prop_map(|v4| IpAddr::from(std::net::Ipv4Addr::from(v4).to_ipv6_mapped())),
        ],
        request in headers(),
        response in headers(),
    ) {
        let host = host.map(HeaderValue::from_static);
        harness::check_headers(preserve_host, http2, host.as_ref(), peer, &request, &response);
    }
}

/// A config in the shape operators write, each value drawn from good and bad choices, then
/// optionally cut or spliced with arbitrary text so the TOML parser errors in odd places.
fn config_text() -> impl Strategy<Value = String> {
    let file = || {
        prop::sample::select(vec![
            "public/fullchain.pem",
            "public/privkey.pem",
            "internal/ca.pem",
            "internal/leaf.pem",
            "internal/with-key.pem",
            "missing.pem",
            "public",
            "",
        ])
    };
    let listen = prop::sample::select(vec!["0.0.0.0:8443", "[::]:443", "x", "1.2.3.4:99999", ""]);
    let duration = prop::sample::select(vec!["5s", "1m 30s", "0s", "-1s", "5", ""]);
    let route = (
        prop::sample::select(vec!["/", "/api", "/api/", "/a/../b", "api", "/a%2fb", "/é"]),
        prop::sample::select(vec![
            "https://backend:8443/",
            "https://backend/base/",
            "http://backend/",
            "https://u@backend/",
            "https://bad_name!/",
        ]),
        prop::option::of(prop::sample::select(vec![
            "10.0.0.5:8443",
            "10.0.0.6:8443",
            "x",
        ])),
    );
    (
        listen,
        file(),
        file(),
        prop::collection::vec(file(), 0..=2),
        prop::option::of(duration),
        prop::option::of(any::<i64>()),
        prop::collection::vec(route, 0..=3),
        prop::option::of((any::<prop::sample::Index>(), "\\PC{0,4}")),
    )
        .prop_map(|(listen, cert, key, ca, timeout, limit, routes, splice)| {
            let ca = ca
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut text = format!(
                "[server]\nlisten = {listen:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
                 [upstream_tls]\nca = [{ca}]\n"
            );
            if let Some(timeout) = timeout {
                text += &format!("\n[timeouts]\nconnect = {timeout:?}\n");
            }
            if let Some(limit) = limit {
                text += &format!("\n[limits]\nh2_max_streams = {limit}\n");
            }
            for (prefix, upstream, address) in routes {
                text += &format!("\n[[route]]\nprefix = {prefix:?}\nupstream = {upstream:?}\n");
                if let Some(address) = address {
                    text += &format!("address = {address:?}\n");
                }
            }
            if let Some((at, insert)) = splice {
                let mut at = at.index(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, &insert);
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// `Config::from_toml` answers every text with a config or problems inside the file, never
    /// a panic.
    #[test]
    fn config_loader_never_panics(text in config_text()) {
        harness::config(&FIXTURE.1, text.as_bytes());
    }
}
