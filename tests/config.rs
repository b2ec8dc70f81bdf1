//! The configuration loader, through `Config::load` on real files: every way a file can be wrong
//! is reported with the file, the exact line, the dotted key and a reason that says what to fix;
//! several mistakes are all reported at once, sorted by line; the `ca` array form and relative
//! paths work.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use trustgate::Config;
use trustgate::config::{ConfigError, Problem};
use trustgate::pki::{Ca, LeafRequest, Validity};

/// A valid configuration over the files `TestPki` writes. Line numbers, which the tests assert:
///  1 `[server]`, 2 listen, 3 cert, 4 key, 6 `[upstream_tls]`, 7 ca, 9 `[[route]]`, 10 prefix,
/// 11 upstream. A test appending lines starts at line 12.
const BASE: &str = "\
[server]
listen = \"127.0.0.1:0\"
cert = \"public/fullchain.pem\"
key = \"public/privkey.pem\"

[upstream_tls]
ca = \"ca.pem\"

[[route]]
prefix = \"/api\"
upstream = \"https://backend-api:8443/\"
";

/// `BASE` with its one occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "{from:?} must occur once in BASE"
    );
    BASE.replacen(from, to, 1)
}

/// Writes `text` as `trustgate.toml` in the PKI folder and loads it.
fn load(pki: &TestPki, text: &str) -> (PathBuf, Result<Config, ConfigError>) {
    let path = pki.path("trustgate.toml");
    write(&path, text);
    let loaded = Config::load(&path);
    (path, loaded)
}

fn problems(pki: &TestPki, text: &str) -> (PathBuf, Vec<Problem>) {
    let (path, loaded) = load(pki, text);
    match loaded {
        Ok(_) => panic!("expected problems, the config loaded:\n{text}"),
        Err(e) => {
            assert!(!e.problems.is_empty(), "a ConfigError is never empty");
            (path, e.problems)
        }
    }
}

/// The one problem of `text`; fails when there are none or several.
fn only_problem(pki: &TestPki, text: &str) -> (PathBuf, Problem) {
    let (path, mut problems) = problems(pki, text);
    assert_eq!(
        problems.len(),
        1,
        "expected exactly one problem: {problems:#?}"
    );
    (path, problems.remove(0))
}

#[track_caller]
fn assert_problem(problem: &Problem, file: &Path, line: Option<usize>, key: &str, reason: &str) {
    assert_eq!(problem.file, file, "{problem}");
    assert_eq!(problem.line, line, "{problem}");
    assert_eq!(problem.key.as_deref(), Some(key), "{problem}");
    assert!(
        problem.reason.contains(reason),
        "reason {:?} should contain {reason:?}",
        problem.reason
    );
}

#[test]
fn base_config_loads() {
    // The control for every test below: each one breaks exactly one thing of this file.
    let pki = TestPki::new();
    let (path, loaded) = load(&pki, BASE);
    let config = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.path, path);
    assert_eq!(config.server.listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(config.upstream_tls.anchors, vec![pki.root.cert().clone()]);
    assert_eq!(config.routes.len(), 1);
}

#[test]
fn missing_config_file_names_the_path() {
    let pki = TestPki::new();
    let path = pki.path("does-not-exist.toml");
    let error = Config::load(&path).unwrap_err();
    assert_eq!(error.problems.len(), 1);
    let problem = &error.problems[0];
    assert_eq!(problem.file, path);
    assert_eq!(problem.line, None);
    assert_eq!(problem.key, None);
    assert!(
        problem.reason.starts_with("cannot read the config file: "),
        "{}",
        problem.reason
    );
    assert!(
        error.to_string().starts_with(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(
        &pki,
        &edit("listen = \"127.0.0.1:0\"", "lisen = \"127.0.0.1:0\""),
    );
    assert_problem(
        &problem,
        &path,
        Some(2),
        "server.lisen",
        "unknown field `lisen`",
    );
    assert!(
        problem.reason.contains("`listen`"),
        "lists the keys: {}",
        problem.reason
    );
}

#[test]
fn wrong_type_names_the_route_key() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(&pki, &format!("{BASE}preserve_host = \"yes\"\n"));
    assert_problem(
        &problem,
        &path,
        Some(12),
        "route[0].preserve_host",
        "invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn bad_duration_is_refused() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(
        &pki,
        &format!("{BASE}\n[timeouts]\nconnect = \"5 parsecs\"\n"),
    );
    assert_problem(
        &problem,
        &path,
        Some(14),
        "timeouts.connect",
        "\"5 parsecs\" is not a duration such as \"5s\"",
    );
}

#[test]
fn zero_duration_is_refused() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(
        &pki,
        &edit(
            "key = \"public/privkey.pem\"\n",
            "key = \"public/privkey.pem\"\nshutdown_grace = \"0s\"\n",
        ),
    );
    assert_problem(
        &problem,
        &path,
        Some(5),
        "server.shutdown_grace",
        "must be greater than zero",
    );

    let (path, problem) = only_problem(&pki, &format!("{BASE}\n[timeouts]\nresponse = \"0ms\"\n"));
    assert_problem(
        &problem,
        &path,
        Some(14),
        "timeouts.response",
        "must be greater than zero",
    );
}

#[test]
fn bad_listen_address_is_refused() {
    let pki = TestPki::new();
    // A host name is not resolved at load: the listener needs an IP.
    let (path, problem) = only_problem(
        &pki,
        &edit("listen = \"127.0.0.1:0\"", "listen = \"localhost:8443\""),
    );
    assert_problem(
        &problem,
        &path,
        Some(2),
        "server.listen",
        "\"localhost:8443\" is not an address:port",
    );
}

#[test]
fn bad_route_address_is_refused() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(&pki, &format!("{BASE}address = \"backend-api:8443\"\n"));
    assert_problem(
        &problem,
        &path,
        Some(12),
        "route[0].address",
        "\"backend-api:8443\" is not an ip:port",
    );
}

#[test]
fn http_upstream_is_refused() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(
        &pki,
        &edit(
            "upstream = \"https://backend-api:8443/\"",
            "upstream = \"http://backend-api:8080/\"",
        ),
    );
    assert_problem(
        &problem,
        &path,
        Some(11),
        "route[0].upstream",
        "plain http upstreams are refused, all internal traffic is encrypted",
    );
}

#[test]
fn non_https_scheme_is_refused() {
    let pki = TestPki::new();
    let cases = [
        (
            "ftp://backend-api/",
            "scheme \"ftp\" is not supported, use https://",
        ),
        ("ws://backend-api:8080/", "scheme \"ws\" is not supported"),
        ("backend-api:8443", "must be an absolute https:// URL"),
    ];
    for (upstream, reason) in cases {
        let (path, problem) = only_problem(
            &pki,
            &edit(
                "upstream = \"https://backend-api:8443/\"",
                &format!("upstream = \"{upstream}\""),
            ),
        );
        assert_problem(&problem, &path, Some(11), "route[0].upstream", reason);
    }
}

#[test]
fn prefix_must_start_with_a_slash() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(&pki, &edit("prefix = \"/api\"", "prefix = \"api\""));
    assert_problem(
        &problem,
        &path,
        Some(10),
        "route[0].prefix",
        "prefix \"api\" must start with '/'",
    );
}

#[test]
fn duplicate_prefix_names_the_first_line() {
    let pki = TestPki::new();
    // "/api/" normalises to "/api": the same prefix.
    let text = format!(
        "{BASE}\n[[route]]\nprefix = \"/api/\"\nupstream = \"https://backend-other:8443/\"\n"
    );
    let (path, problem) = only_problem(&pki, &text);
    assert_problem(
        &problem,
        &path,
        Some(14),
        "route[1].prefix",
        "prefix \"/api\" is already routed on line 10",
    );
}

#[test]
fn routes_to_one_upstream_may_use_different_endpoints() {
    // Each route has its own endpoints and pools: another route to the same service may list
    // other addresses (a canary, say).
    let pki = TestPki::new();
    let text = format!(
        "{BASE}address = \"127.0.0.1:9001\"\n\n[[route]]\nprefix = \"/v2\"\n\
         upstream = \"https://BACKEND-API:8443/v2/\"\naddresses = [\"127.0.0.2:9001\", \"127.0.0.3:9001\"]\n"
    );
    let (_, loaded) = load(&pki, &text);
    let config = loaded.unwrap_or_else(|e| panic!("must load: {e}"));
    let v2 = config.routes.find("/v2").unwrap();
    assert_eq!(v2.balancing.discovery.addresses().map(<[_]>::len), Some(2));
}

#[test]
fn balancing_settings_load_with_their_defaults() {
    let pki = TestPki::new();
    let (_, loaded) = load(&pki, BASE);
    let config = loaded.unwrap();
    let api = &config.routes.find("/api").unwrap().balancing;
    assert_eq!(api.discovery.addresses(), None, "DNS by default");
    assert_eq!(api.policy.to_string(), "least_pending");
    assert_eq!((api.retries, api.fails), (2, 3));
    assert_eq!(api.fail_timeout, std::time::Duration::from_secs(10));
    assert!(api.health.is_none());

    let text = format!(
        "{BASE}addresses = [\"127.0.0.2:9001\", \"127.0.0.1:9001\"]\nbalance = \"round_robin\"\n\
         retries = 0\nfails = 0\nfail_timeout = \"30s\"\n\n[route.health]\npath = \"/healthz?full=1\"\n"
    );
    let (_, loaded) = load(&pki, &text);
    let config = loaded.unwrap_or_else(|e| panic!("{e}"));
    let api = &config.routes.find("/api").unwrap().balancing;
    let listed: Vec<String> = api
        .discovery
        .addresses()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listed, ["127.0.0.1:9001", "127.0.0.2:9001"], "sorted");
    assert_eq!(api.policy.to_string(), "round_robin");
    assert_eq!((api.retries, api.fails), (0, 0));
    let check = api.health.as_ref().unwrap();
    assert_eq!(check.path.as_str(), "/healthz?full=1");
    assert_eq!(
        (
            check.interval.as_secs(),
            check.timeout.as_secs(),
            check.rise,
            check.fall
        ),
        (5, 2, 2, 3)
    );
    assert_eq!(check.expect.to_string(), "200-399");
}

#[test]
fn balancing_mistakes_are_named() {
    let pki = TestPki::new();
    // (lines appended after BASE, line of the problem, key, reason)
    let cases = [
        (
            "address = \"127.0.0.1:1\"\naddresses = [\"127.0.0.1:2\"]\n",
            13,
            "route[0].addresses",
            "either address (one endpoint) or addresses (several), not both",
        ),
        (
            "addresses = []\n",
            12,
            "route[0].addresses",
            "list from 1 to 256 endpoints",
        ),
        (
            "addresses = [\"127.0.0.1:1\", \"backend:1\"]\n",
            12,
            "route[0].addresses",
            "\"backend:1\" is not an ip:port",
        ),
        (
            "addresses = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
            12,
            "route[0].addresses",
            "127.0.0.1:1 is listed twice",
        ),
        (
            "addresses = [\"127.0.0.1:1\"]\nresolve_interval = \"2s\"\n",
            13,
            "route[0].resolve_interval",
            "applies to endpoints found by DNS",
        ),
        (
            "resolve_interval = \"100ms\"\n",
            12,
            "route[0].resolve_interval",
            "must be at least 1s",
        ),
        (
            "balance = \"random\"\n",
            12,
            "route[0].balance",
            "\"random\" is not a balancing policy",
        ),
        (
            "retries = 11\n",
            12,
            "route[0].retries",
            "is not a number from 0 to 10",
        ),
        (
            "fail_timeout = \"0s\"\n",
            12,
            "route[0].fail_timeout",
            "must be greater than zero",
        ),
        (
            "\n[route.health]\npath = \"healthz\"\n",
            14,
            "route[0].health.path",
            "must be a path starting with '/'",
        ),
        (
            "\n[route.health]\npath = \"/h\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
            16,
            "route[0].health.timeout",
            "a check may take at most its interval (1s)",
        ),
        (
            "\n[route.health]\npath = \"/h\"\nexpect = \"200-99\"\n",
            15,
            "route[0].health.expect",
            "is not a status code from 100 to 599",
        ),
        (
            "\n[route.health]\npath = \"/h\"\nrise = 0\n",
            15,
            "route[0].health.rise",
            "is not a number from 1 to 100",
        ),
        (
            "\n[route.health]\npath = \"/h\"\ninterval = \"10ms\"\ntimeout = \"5ms\"\n",
            15,
            "route[0].health.interval",
            "must be at least 100ms",
        ),
    ];
    for (extra, line, key, reason) in cases {
        let (path, problem) = only_problem(&pki, &format!("{BASE}{extra}"));
        assert_problem(&problem, &path, Some(line), key, reason);
    }
    // A typo in the health table is a parse error that names it.
    let (path, problem) = only_problem(
        &pki,
        &format!("{BASE}\n[route.health]\npath = \"/h\"\nintervall = \"1s\"\n"),
    );
    assert_eq!(problem.file, path);
    assert!(problem.reason.contains("intervall"), "{problem:?}");
}

#[test]
fn no_route_is_refused() {
    let pki = TestPki::new();
    let text = edit(
        "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:8443/\"\n",
        "",
    );
    let (path, problem) = only_problem(&pki, &text);
    assert_eq!(problem.file, path);
    assert_eq!(problem.line, None, "no line holds the missing route");
    assert_eq!(problem.key.as_deref(), Some("route"));
    assert!(
        problem.reason.contains("no [[route]] is defined"),
        "{}",
        problem.reason
    );
}

#[test]
fn missing_cert_file_names_the_path() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(
        &pki,
        &edit(
            "cert = \"public/fullchain.pem\"",
            "cert = \"public/missing.pem\"",
        ),
    );
    let missing = pki.path("public/missing.pem");
    assert_problem(
        &problem,
        &path,
        Some(3),
        "server.cert",
        &format!("cannot read {}: ", missing.display()),
    );
}

#[test]
fn empty_ca_file_is_refused() {
    let pki = TestPki::new();
    write(&pki.path("empty.pem"), "");
    let (path, problem) = only_problem(&pki, &edit("ca = \"ca.pem\"", "ca = \"empty.pem\""));
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{} holds no CERTIFICATE block",
            pki.path("empty.pem").display()
        ),
    );
}

#[test]
fn ca_file_holding_a_private_key_is_refused() {
    let pki = TestPki::new();
    // The certificate is perfectly usable; the key next to it is what is refused.
    write(
        &pki.path("ca-with-key.pem"),
        &(pki.root.cert_pem() + &pki.root.key_pem()),
    );
    let (path, problem) = only_problem(&pki, &edit("ca = \"ca.pem\"", "ca = \"ca-with-key.pem\""));
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{} holds a PRIVATE KEY block: CA private keys never belong on the proxy",
            pki.path("ca-with-key.pem").display()
        ),
    );
}

#[test]
fn key_that_does_not_match_the_cert_is_refused() {
    let pki = TestPki::new();
    let other = pki
        .public_ca
        .issue(&LeafRequest::server("localhost", 30))
        .unwrap();
    write(&pki.path("public/other.key"), &other.key_pem);
    let (path, problem) = only_problem(
        &pki,
        &edit("key = \"public/privkey.pem\"", "key = \"public/other.key\""),
    );
    assert_problem(
        &problem,
        &path,
        Some(4),
        "server.key",
        &format!(
            "the private key in {} does not match the certificate in {}",
            pki.path("public/other.key").display(),
            pki.path("public/fullchain.pem").display()
        ),
    );
}

#[test]
fn garbage_pem_is_refused() {
    let pki = TestPki::new();
    write(
        &pki.path("public/garbage.pem"),
        "-----BEGIN CERTIFICATE-----\n!!! this is not base64 !!!\n-----END CERTIFICATE-----\n",
    );
    let (path, problem) = only_problem(
        &pki,
        &edit(
            "cert = \"public/fullchain.pem\"",
            "cert = \"public/garbage.pem\"",
        ),
    );
    assert_problem(
        &problem,
        &path,
        Some(3),
        "server.cert",
        &format!(
            "{} is not valid PEM",
            pki.path("public/garbage.pem").display()
        ),
    );

    // Text with no PEM block at all, as a key: named as such.
    write(&pki.path("public/garbage.key"), "just some words\n");
    let (path, problem) = only_problem(
        &pki,
        &edit(
            "key = \"public/privkey.pem\"",
            "key = \"public/garbage.key\"",
        ),
    );
    assert_problem(
        &problem,
        &path,
        Some(4),
        "server.key",
        &format!(
            "{} holds no private key",
            pki.path("public/garbage.key").display()
        ),
    );
}

#[test]
fn empty_ca_array_is_refused() {
    let pki = TestPki::new();
    let (path, problem) = only_problem(&pki, &edit("ca = \"ca.pem\"", "ca = []"));
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        "names no file: the internal CA certificate is required",
    );
}

#[tokio::test]
async fn ca_array_trusts_every_root_and_only_those() {
    let pki = TestPki::new();
    let second = Ca::root("Second Internal Root", Validity::days(30)).unwrap();
    write(&pki.path("ca2.pem"), &second.cert_pem());
    let (_, loaded) = load(
        &pki,
        &edit("ca = \"ca.pem\"", "ca = [\"ca.pem\", \"ca2.pem\"]"),
    );
    let config = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.upstream_tls.ca_files,
        vec![pki.path("ca.pem"), pki.path("ca2.pem")]
    );
    assert_eq!(
        config.upstream_tls.anchors,
        vec![pki.root.cert().clone(), second.cert().clone()]
    );

    // The upstream client config really trusts both roots, and nothing else.
    let issued = second
        .issue(&LeafRequest::server("backend-api", 30))
        .unwrap();
    let from_second = ServerCert {
        chain: vec![issued.cert],
        chain_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    };
    let client =
        trustgate::tls::client::config(config.upstream_tls.verifier.clone(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let handshake = |cert: ServerCert| {
        let connector = connector.clone();
        async move {
            let backend = Backend::recording(&cert, &[b"http/1.1"], "b").await;
            let tcp = tokio::net::TcpStream::connect(backend.addr).await.unwrap();
            let result = connector
                .connect(ServerName::try_from("backend-api").unwrap(), tcp)
                .await
                .map(drop);
            backend.join().await;
            result
        }
    };
    handshake(pki.leaf(&["backend-api"]))
        .await
        .expect("a leaf under the first root is trusted");
    handshake(from_second)
        .await
        .expect("a leaf under the second root is trusted");
    let refused = handshake(pki.foreign("backend-api"))
        .await
        .expect_err("a leaf under another root is refused");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let pki = TestPki::new();
    // The config lives two folders down; its paths are relative to that folder, not to the
    // working directory of the test (the crate root), where none of these files exist.
    let sub = pki.path("etc/trustgate");
    write(
        &sub.join("tls/fullchain.pem"),
        &std::fs::read_to_string(pki.path("public/fullchain.pem")).unwrap(),
    );
    write(
        &sub.join("tls/privkey.pem"),
        &std::fs::read_to_string(pki.path("public/privkey.pem")).unwrap(),
    );
    let text = edit(
        "cert = \"public/fullchain.pem\"",
        "cert = \"tls/fullchain.pem\"",
    )
    .replace(
        "key = \"public/privkey.pem\"",
        "key = \"./tls/privkey.pem\"",
    )
    .replace("ca = \"ca.pem\"", "ca = \"../../ca.pem\"");
    let path = sub.join("trustgate.toml");
    write(&path, &text);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.cert, sub.join("tls/fullchain.pem"));
    assert_eq!(config.server.key, sub.join("./tls/privkey.pem"));
    assert_eq!(config.upstream_tls.ca_files, vec![sub.join("../../ca.pem")]);
    assert_eq!(config.upstream_tls.anchors, vec![pki.root.cert().clone()]);

    // An absolute path is taken as is.
    let absolute = pki.path("ca.pem");
    let text = text.replace(
        "ca = \"../../ca.pem\"",
        &format!("ca = {:?}", absolute.display().to_string()),
    );
    write(&path, &text);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstream_tls.ca_files, vec![absolute]);
}

#[test]
fn every_mistake_is_reported_at_once_sorted_by_line() {
    let pki = TestPki::new();
    write(&pki.path("empty.pem"), "");
    let text = "\
[server]
listen = \"nowhere\"
cert = \"public/fullchain.pem\"
key = \"public/missing.key\"
shutdown_grace = \"0s\"

[upstream_tls]
ca = \"empty.pem\"

[timeouts]
connect = \"5 parsecs\"

[[route]]
prefix = \"api\"
upstream = \"http://backend-api:8080/\"

[[route]]
prefix = \"/reports\"
upstream = \"https://backend-reports:8443/\"
address = \"backend-reports\"
";
    let (path, problems) = problems(&pki, text);
    let want: &[(usize, &str, &str)] = &[
        (2, "server.listen", "\"nowhere\" is not an address:port"),
        (4, "server.key", "cannot read"),
        (5, "server.shutdown_grace", "must be greater than zero"),
        (8, "upstream_tls.ca", "holds no CERTIFICATE block"),
        (11, "timeouts.connect", "is not a duration"),
        (14, "route[0].prefix", "must start with '/'"),
        (15, "route[0].upstream", "all internal traffic is encrypted"),
        (20, "route[1].address", "is not an ip:port"),
    ];
    let got: Vec<_> = problems
        .iter()
        .map(|p| (p.line, p.key.as_deref()))
        .collect();
    let expected: Vec<_> = want
        .iter()
        .map(|&(line, key, _)| (Some(line), Some(key)))
        .collect();
    assert_eq!(got, expected, "{problems:#?}");
    for (problem, &(line, key, reason)) in problems.iter().zip(want) {
        assert_problem(problem, &path, Some(line), key, reason);
    }

    // Displayed one per line as `file:line: key: reason`.
    let shown = ConfigError { problems }.to_string();
    let lines: Vec<_> = shown.lines().collect();
    assert_eq!(lines.len(), want.len(), "{shown}");
    for (shown, &(line, key, reason)) in lines.iter().zip(want) {
        let head = format!("{}:{line}: {key}: ", path.display());
        assert!(
            shown.starts_with(&head),
            "{shown:?} should start with {head:?}"
        );
        assert!(shown.contains(reason), "{shown:?}");
    }
}

#[test]
fn max_connections_must_be_a_sensible_count() {
    let pki = TestPki::new();
    for bad in ["0", "-3", "2000000"] {
        let text = edit(
            "key = \"public/privkey.pem\"",
            &format!("key = \"public/privkey.pem\"\nmax_connections = {bad}"),
        );
        let (path, problem) = only_problem(&pki, &text);
        assert_problem(
            &problem,
            &path,
            Some(5),
            "server.max_connections",
            "is not a number from 1 to 1000000",
        );
    }
    let (_, loaded) = load(&pki, BASE);
    assert_eq!(loaded.unwrap().server.max_connections, 10_000);
}

#[test]
fn max_request_body_defaults_to_1_gib_and_a_route_may_set_its_own() {
    let pki = TestPki::new();
    let (_, loaded) = load(&pki, BASE);
    let config = loaded.unwrap();
    assert_eq!(config.limits.max_request_body, 1 << 30);
    assert_eq!(
        config.routes.iter().next().unwrap().max_request_body,
        1 << 30
    );

    let text = format!("{BASE}max_request_body = 0\n\n[limits]\nmax_request_body = 5000\n");
    let (_, loaded) = load(&pki, &text);
    let config = loaded.unwrap();
    assert_eq!(config.limits.max_request_body, 5000);
    assert_eq!(config.routes.iter().next().unwrap().max_request_body, 0);
    assert!(
        config
            .summary()
            .to_string()
            .contains("bodies up to 0 bytes"),
        "{}",
        config.summary()
    );

    // The route's own key (line 12, in its table), then [limits]' (line 14).
    let places = [
        ("", 12, "route[0].max_request_body"),
        ("\n[limits]\n", 14, "limits.max_request_body"),
    ];
    for bad in ["-1", "1125899906842625"] {
        for (table, line, key) in places {
            let text = format!("{BASE}{table}max_request_body = {bad}\n");
            let (path, problem) = only_problem(&pki, &text);
            assert_problem(
                &problem,
                &path,
                Some(line),
                key,
                "is not a number from 0 to 1125899906842624",
            );
        }
    }
}

#[test]
fn workers_default_to_the_cpus_and_must_be_a_sensible_count() {
    let pki = TestPki::new();
    for bad in ["0", "1025"] {
        let text = edit(
            "key = \"public/privkey.pem\"",
            &format!("key = \"public/privkey.pem\"\nworkers = {bad}"),
        );
        let (path, problem) = only_problem(&pki, &text);
        assert_problem(
            &problem,
            &path,
            Some(5),
            "server.workers",
            "is not a number from 1 to 1024",
        );
    }
    let (_, loaded) = load(&pki, BASE);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(loaded.unwrap().server.workers, cpus);
    let text = edit(
        "key = \"public/privkey.pem\"",
        "key = \"public/privkey.pem\"\nworkers = 3",
    );
    let (_, loaded) = load(&pki, &text);
    let config = loaded.unwrap();
    assert_eq!(config.server.workers, 3);
    assert!(
        config
            .summary()
            .to_string()
            .contains("workers: 3 runtime thread(s)"),
        "{}",
        config.summary()
    );
}

#[test]
fn unparseable_certificate_is_blamed_on_the_cert() {
    let pki = TestPki::new();
    write(
        &pki.path("public/bogus.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let (path, problem) = only_problem(
        &pki,
        &edit(
            "cert = \"public/fullchain.pem\"",
            "cert = \"public/bogus.pem\"",
        ),
    );
    assert_problem(
        &problem,
        &path,
        Some(3),
        "server.cert",
        &format!(
            "{} holds an unusable certificate",
            pki.path("public/bogus.pem").display()
        ),
    );
}

#[test]
fn ca_files_must_hold_ca_certificates() {
    let pki = TestPki::new();
    // A service's own leaf pinned as a trust anchor: refused, naming the file and the subject.
    write(&pki.path("leaf.pem"), &pki.leaf(&["backend-api"]).chain_pem);
    let (path, problem) = only_problem(
        &pki,
        &edit("ca = \"ca.pem\"", "ca = [\"ca.pem\", \"leaf.pem\"]"),
    );
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{}: certificate #1 (CN=backend-api) is not a CA certificate",
            pki.path("leaf.pem").display()
        ),
    );
    // A block that is not a certificate at all names its position in the file.
    write(
        &pki.path("bad-ca.pem"),
        &format!(
            "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            pki.root.cert_pem()
        ),
    );
    let (_, problem) = only_problem(&pki, &edit("ca = \"ca.pem\"", "ca = \"bad-ca.pem\""));
    assert!(
        problem
            .reason
            .contains("bad-ca.pem: certificate #2 cannot be parsed"),
        "{problem}"
    );
    // And an empty path says so instead of reading the folder.
    let (_, problem) = only_problem(&pki, &edit("ca = \"ca.pem\"", "ca = \"\""));
    assert!(problem.reason.contains("an empty path"), "{problem}");
}

// ---------------------------------------------------------------------------------------------
// Trust anchors webpki would take but the loader refuses

/// `n` distinct self-signed roots in one PEM bundle.
fn roots(n: usize) -> String {
    (0..n)
        .map(|i| {
            Ca::root(&format!("Bundle Root {i}"), Validity::days(30))
                .unwrap()
                .cert_pem()
        })
        .collect()
}

/// The one problem of `BASE` with `ca = "<name>"`, where `name` holds `pem`.
fn anchor_problem(pki: &TestPki, name: &str, pem: &str) -> (PathBuf, Problem) {
    write(&pki.path(name), pem);
    only_problem(pki, &edit("ca = \"ca.pem\"", &format!("ca = \"{name}\"")))
}

#[test]
fn expired_root_is_refused_saying_when() {
    let pki = TestPki::new();
    let validity = Validity::relative(time::Duration::days(-30), time::Duration::days(-3));
    let old = Ca::root("Old Root", validity).unwrap();
    let (path, problem) = anchor_problem(&pki, "old.pem", &old.cert_pem());
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{}: certificate #1 (CN=Old Root) expired 3 days ago (not valid after {}",
            pki.path("old.pem").display(),
            trustgate::pki::inspect::rfc3339(validity.not_after)
        ),
    );
}

#[test]
fn not_yet_valid_root_is_refused_saying_when() {
    let pki = TestPki::new();
    let validity = Validity::relative(time::Duration::days(3), time::Duration::days(30));
    let future = Ca::root("Future Root", validity).unwrap();
    let (path, problem) = anchor_problem(&pki, "future.pem", &future.cert_pem());
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{}: certificate #1 (CN=Future Root) is not valid yet: valid from {} (in 3 days)",
            pki.path("future.pem").display(),
            trustgate::pki::inspect::rfc3339(validity.not_before)
        ),
    );
}

#[test]
fn root_whose_key_usage_lacks_key_cert_sign_is_refused() {
    let pki = TestPki::new();
    // Second in the file, after a good root: the position is named.
    let pem = pki.root.cert_pem() + &root_without_key_cert_sign("No Signing Root");
    let (path, problem) = anchor_problem(&pki, "nosign.pem", &pem);
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{}: certificate #2 (CN=No Signing Root) may not sign certificates: its keyUsage \
             lacks keyCertSign",
            pki.path("nosign.pem").display()
        ),
    );
}

#[test]
fn more_than_ten_roots_look_like_a_public_store() {
    let pki = TestPki::new();
    let (path, problem) = anchor_problem(&pki, "bundle.pem", &roots(11));
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{} holds 11 CA certificates, more than an internal CA needs (at most 10): this \
             looks like a public or system trust store",
            pki.path("bundle.pem").display()
        ),
    );
    // Counted across the files of the array form.
    write(&pki.path("bundle.pem"), &roots(10));
    let (_, problem) = only_problem(
        &pki,
        &edit("ca = \"ca.pem\"", "ca = [\"ca.pem\", \"bundle.pem\"]"),
    );
    assert!(
        problem.reason.starts_with(&format!(
            "{}, {} hold 11 CA certificates",
            pki.path("ca.pem").display(),
            pki.path("bundle.pem").display()
        )),
        "{problem}"
    );
    // Ten is the largest bundle that loads.
    let (_, loaded) = load(&pki, &edit("ca = \"ca.pem\"", "ca = \"bundle.pem\""));
    assert_eq!(loaded.unwrap().upstream_tls.anchors.len(), 10);
}

/// The distribution's trust store, or `None` (with a note) on a machine without one.
fn system_store() -> Option<String> {
    const STORE: &str = "/etc/ssl/certs/ca-certificates.crt";
    let store = std::fs::read_to_string(STORE).ok();
    if store.is_none() {
        println!("note: {STORE} does not exist here; the system store case is skipped");
    }
    store
}

#[test]
fn a_copy_of_the_system_trust_store_is_refused() {
    let Some(store) = system_store() else {
        return;
    };
    let pki = TestPki::new();
    write(&pki.path("system-copy.pem"), &store);
    let count = store.matches("-----BEGIN CERTIFICATE-----").count();
    let (path, problems) = problems(&pki, &edit("ca = \"ca.pem\"", "ca = \"system-copy.pem\""));
    // The two signs of a public store, not each public root's own flaws (some are expired).
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let file = pki.path("system-copy.pem").display().to_string();
    assert_problem(
        &problems[0],
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!("{file} holds {count} CA certificates"),
    );
    assert_problem(
        &problems[1],
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "and {} more of its certificates are also in the system trust store",
            count - 1
        ),
    );
}

#[test]
fn one_root_from_the_system_store_is_refused() {
    let Some(store) = system_store() else {
        return;
    };
    let pki = TestPki::new();
    let end = store.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let pem = format!("{}\n", &store[..end]);
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let (path, problem) = anchor_problem(&pki, "public-root.pem", &pem);
    assert_problem(
        &problem,
        &path,
        Some(7),
        "upstream_tls.ca",
        &format!(
            "{}: certificate #1 ({}) is also in the system trust store: upstreams are trusted \
             through the internal CA only",
            pki.path("public-root.pem").display(),
            trustgate::tls::subject(&der)
        ),
    );
}
