//! The proxy's own per-request work, without sockets or TLS: the request and response header
//! rewrites and the path check, on the headers a browser and a typical backend send. The guard
//! for the optimisations of issue 12 (one pass over the names instead of a hashed removal of
//! every hop-by-hop and identity header; no segment split for paths without a dot segment; the
//! Host check without allocation for the common form):
//! `cargo bench --bench hot_path`.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use trustgate::balance::settings::Balancing;
use trustgate::proxy::headers::{self, Forwarding};
use trustgate::routing::{Prefix, Route, Upstream, unsafe_path};

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn hot_path(c: &mut Criterion) {
    let route = Route {
        prefix: Prefix::parse("/api").expect("prefix"),
        upstream: Upstream::parse("https://backend-api:8443/").expect("upstream"),
        balancing: Balancing::single(None),
        preserve_host: true,
        client_identity: None,
        require_client_cert: false,
        max_request_body: 1 << 30,
    };
    let request = map(&[
        ("host", "www.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("connection", "keep-alive"),
    ]);
    let client_host = HeaderValue::from_static("www.example.com");
    let forwarding = Forwarding {
        route: &route,
        peer: &HeaderValue::from_static("203.0.113.7"),
        client_host: Some(&client_host),
        upgrade: None,
        client_cert: None,
        forward_chain: false,
    };
    c.bench_function("prepare_request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |headers| headers::prepare_request(headers, &forwarding),
            criterion::BatchSize::SmallInput,
        );
    });
    let response = map(&[
        ("content-type", "application/json"),
        ("content-length", "1234"),
        ("date", "Mon, 07 Dec 2026 12:00:00 GMT"),
        ("server", "backend"),
        ("cache-control", "no-store"),
        ("keep-alive", "timeout=60"),
    ]);
    c.bench_function("prepare_response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| headers::prepare_response(headers, &route, Some("www.example.com"), None),
            criterion::BatchSize::SmallInput,
        );
    });
    c.bench_function("unsafe_path", |b| {
        b.iter(|| unsafe_path(std::hint::black_box("/api/v1/users/12345/orders")));
    });
    // The common Host form takes the fast check; an IPv6 literal takes the full authority parse,
    // which every Host took before.
    for (name, host) in [
        ("valid_host_name", "www.example.com:8443"),
        ("valid_host_ipv6", "[2001:db8::1]:8443"),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| headers::valid_host(std::hint::black_box(host.as_bytes())));
        });
    }
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
