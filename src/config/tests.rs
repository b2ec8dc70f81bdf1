//! Unit tests of the loader's internals: the shipped example configuration loads as documented
//! once the files it names exist, and the helpers that turn a byte offset into the line number
//! (`line_of`) and dotted key (`key_at`) that every problem report names.

use super::*;
use crate::pki::{Ca, LeafRequest, Validity};

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

#[test]
fn example_config_loads_with_the_documented_values() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/trustgate.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // The files the example names: a public chain (leaf + intermediate) with its key, and the
    // internal root's certificate alone.
    let public_root = Ca::root("Example Public Root", Validity::days(30)).unwrap();
    let public_inter = public_root
        .intermediate("Example Public Intermediate", Validity::days(30), &[])
        .unwrap();
    let public = public_inter
        .issue(&LeafRequest::server("proxy.example.com", 30))
        .unwrap();
    let internal_root = Ca::root("Example Internal Root", Validity::days(30)).unwrap();
    write(
        &dir.join("certs/public/fullchain.pem"),
        &(public.cert_pem.clone() + &public_inter.cert_pem()),
    );
    write(&dir.join("certs/public/privkey.pem"), &public.key_pem);
    write(
        &dir.join("certs/internal/ca.pem"),
        &internal_root.cert_pem(),
    );

    let path = dir.join("trustgate.example.toml");
    let config = Config::from_toml(&path, &text).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.path, path);
    assert_eq!(config.server.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(config.server.cert, dir.join("certs/public/fullchain.pem"));
    assert_eq!(config.server.key, dir.join("certs/public/privkey.pem"));
    assert_eq!(config.server.chain.len(), 2);
    assert_eq!(config.server.chain[0], public.cert);
    assert_eq!(config.server.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(
        config.upstream_tls.ca_files,
        vec![dir.join("certs/internal/ca.pem")]
    );
    assert_eq!(
        config.upstream_tls.anchors,
        vec![internal_root.cert().clone()]
    );
    // The example spells out the defaults.
    assert_eq!(config.timeouts, Timeouts::default());
    assert_eq!(config.timeouts.connect, Duration::from_secs(5));
    assert_eq!(config.timeouts.response, Duration::from_secs(60));
    assert_eq!(config.timeouts.client_header, Duration::from_secs(10));

    assert_eq!(config.routes.len(), 2);
    let api = config.routes.find("/api/users").expect("/api route");
    assert_eq!(api.prefix.as_str(), "/api");
    assert_eq!(api.upstream.host(), "backend-api");
    assert_eq!(api.upstream.port(), 8443);
    assert_eq!(api.upstream.to_string(), "https://backend-api:8443/");
    assert_eq!(
        api.balancing.discovery.addresses(),
        None,
        "endpoints from DNS"
    );
    assert!(api.preserve_host);
    let reports = config.routes.find("/reports").expect("/reports route");
    assert_eq!(reports.upstream.host(), "backend-reports");
    assert_eq!(
        reports.balancing.discovery.addresses(),
        None,
        "the example's address is commented out"
    );
    assert!(reports.preserve_host, "preserve_host defaults to true");
    assert!(config.routes.find("/other").is_none());
}

#[test]
fn line_of_counts_newlines_before_the_offset() {
    let text = "a = 1\nb = 2\n\nc = 3";
    let cases = [
        (0, 1),                // start of the file
        (4, 1),                // inside line 1
        (5, 1),                // the '\n' itself still belongs to line 1
        (6, 2),                // first byte of line 2
        (12, 3),               // the empty line
        (13, 4),               // "c"
        (text.len(), 4),       // the end
        (text.len() + 100, 4), // past the end clamps
    ];
    for (offset, line) in cases {
        assert_eq!(line_of(text, offset), line, "offset {offset}");
    }
    assert_eq!(line_of("", 0), 1);
    assert_eq!(line_of("a\r\nb", 3), 2, "CRLF counts once");
}

/// The offset of the `n`th (0-based) occurrence of `needle` in `text`.
fn nth(text: &str, needle: &str, n: usize) -> usize {
    text.match_indices(needle)
        .nth(n)
        .unwrap_or_else(|| panic!("{needle:?} #{n} not in the text"))
        .0
}

#[test]
fn key_at_names_the_dotted_key_of_the_line() {
    let text = "\
top = 1
# a comment with = in it
[server]
listen = \"x\"
  key = \"indented\"   # trailing = comment
[[route]]
prefix = \"/a\"
# [[route]] commented out: not a new route
preserve_host = \"yes\"
[[ route ]] # spaced header, with a comment
prefix = \"/b\"
preserve_host = \"no\"
[timeouts]
connect = \"5 parsecs\"
[[route]]
upstream = \"u\"
";
    let cases: &[(usize, Option<&str>)] = &[
        (nth(text, "1", 0), Some("top")),
        (nth(text, "top", 0), Some("top")),
        (nth(text, "a comment", 0), None),
        (nth(text, "[server]", 0), None),
        (nth(text, "\"x\"", 0), Some("server.listen")),
        (nth(text, "listen", 0), Some("server.listen")),
        (nth(text, "\"indented\"", 0), Some("server.key")),
        (nth(text, "\"/a\"", 0), Some("route[0].prefix")),
        (nth(text, "\"yes\"", 0), Some("route[0].preserve_host")),
        (nth(text, "\"/b\"", 0), Some("route[1].prefix")),
        (nth(text, "\"no\"", 0), Some("route[1].preserve_host")),
        (nth(text, "parsecs", 0), Some("timeouts.connect")),
        (nth(text, "\"u\"", 0), Some("route[2].upstream")),
        (text.len(), None), // after the last newline: an empty line
        (text.len() + 10, None),
    ];
    for &(offset, want) in cases {
        assert_eq!(
            key_at(text, offset).as_deref(),
            want,
            "offset {offset} ({:?})",
            text.get(offset..).and_then(|rest| rest.lines().next())
        );
    }
}

#[test]
fn parse_errors_carry_the_line_and_key_from_key_at() {
    // The end-to-end path through `from_toml`: a type error points at a value, and the problem
    // names the value's line and its dotted key even inside the second `[[route]]`.
    let text = "\
[server]
listen = \"127.0.0.1:0\"
cert = \"c.pem\"
key = \"k.pem\"

[upstream_tls]
ca = \"ca.pem\"

[[route]]
prefix = \"/a\"
upstream = \"https://a:8443/\"

[[route]]
prefix = \"/b\"
upstream = \"https://b:8443/\"
preserve_host = 1
";
    let path = Path::new("/nonexistent/trustgate.toml");
    let error = Config::from_toml(path, text).unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    let problem = &error.problems[0];
    assert_eq!(problem.file, path);
    assert_eq!(problem.line, Some(16));
    assert_eq!(problem.key.as_deref(), Some("route[1].preserve_host"));
    assert!(problem.reason.contains("bool"), "{}", problem.reason);
}
