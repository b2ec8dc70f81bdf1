//! `trustgate pki` end to end, driving the real binary in a fresh temp folder per test: an offline
//! root, an intermediate and a service leaf whose files a backend serves and the proxy accepts;
//! revocation and numbered CRLs; `openssl verify` on the issued chain; name constraints enforced
//! by the CLI and, for a leaf forged with the constrained key, by the proxy; file modes and keys
//! that are never overwritten; client certificates; idempotent renewal; the refusal to write a CA
//! key into a folder the proxy config names; `list`, `inspect`, key types and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use http::StatusCode;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use trustgate::pki::inspect::CertInfo;
use trustgate::pki::{Ca, LeafRequest};
use x509_parser::x509::ReasonCode;

const BIN: &str = env!("CARGO_BIN_EXE_trustgate");
const H1: &[&[u8]] = &[b"http/1.1"];
const INTERMEDIATE: &str = "CN=trustgate internal intermediate CA";

/// Runs `trustgate pki args...` in `dir`, with `TRUSTGATE_CONFIG` set to `config` or removed.
fn run(dir: &Path, args: &[&str], config: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("pki")
        .args(args)
        .current_dir(dir)
        .env_remove("TRUSTGATE_CONFIG")
        .stdin(Stdio::null());
    if let Some(config) = config {
        command.env("TRUSTGATE_CONFIG", config);
    }
    command.output().expect("run trustgate")
}

/// Runs a `pki` command that must succeed; returns its stdout.
fn pki_ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pki {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks a `pki` run failed with exit code 1 and did not panic; returns its stderr.
fn failed(out: Output, args: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "pki {args:?} should fail: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "pki {args:?} panicked: {stderr}"
    );
    stderr
}

/// Runs a `pki` command that must fail cleanly; returns its stderr.
fn pki_err(dir: &Path, args: &[&str]) -> String {
    failed(run(dir, args, None), args)
}

/// `init-root --out offline/root` and `init-intermediate --out ca` with `flags` (such as
/// `--permit-dns internal`); returns what init-intermediate printed.
fn init_ca(dir: &Path, flags: &[&str]) -> String {
    pki_ok(dir, &["init-root", "--out", "offline/root"]);
    let args = ["init-intermediate", "--root", "offline/root", "--out", "ca"];
    pki_ok(dir, &[&args[..], flags].concat())
}

/// `pki issue --ca ca --name backend-api --out certs/backend-api`; returns the serial.
fn issue_backend_api(dir: &Path) -> String {
    let args = [
        "issue",
        "--ca",
        "ca",
        "--name",
        "backend-api",
        "--out",
        "certs/backend-api",
    ];
    printed_serial(&pki_ok(dir, &args))
}

/// The serial `pki issue` printed.
fn printed_serial(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial:"))
        .unwrap_or_else(|| panic!("no serial in {stdout}"))
        .trim()
        .to_owned()
}

/// The line of `<ca>/index.txt` for `serial`.
fn index_line(ca: &Path, serial: &str) -> String {
    let index = read(&ca.join("index.txt"));
    let prefix = format!("serial={serial} ");
    index
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("serial {serial} not in index:\n{index}"))
        .to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The facts of the first certificate in a PEM file.
fn leaf_info(path: &Path) -> CertInfo {
    let chain = trustgate::tls::load_certs(path).unwrap();
    CertInfo::parse(&chain[0]).unwrap()
}

/// The files of `pki issue --out folder`, loaded as the echo backend loads them (the key must
/// match the certificate), ready for a test backend to serve.
fn served(folder: &Path) -> ServerCert {
    let (cert, key) = (folder.join("server.crt"), folder.join("server.key"));
    let chain = trustgate::tls::load_certs(&cert).unwrap();
    let private = trustgate::tls::load_key(&key).unwrap();
    trustgate::tls::server::config(chain.clone(), private, None)
        .expect("key matches the certificate");
    ServerCert {
        chain,
        chain_pem: read(&cert),
        key_pem: read(&key),
    }
}

/// A test PKI for the proxy's public side whose upstream trust anchor (`ca.pem`) is the root
/// `pki init-root` wrote into `dir/offline/root`.
fn proxy_pki(dir: &Path) -> TestPki {
    let pki = TestPki::new();
    std::fs::copy(dir.join("offline/root/ca.crt"), pki.path("ca.pem")).unwrap();
    pki
}

/// The CRL number and the revoked (serial, reason) pairs of a PEM CRL; asserts its issuer.
fn parse_crl(path: &Path) -> (String, Vec<(String, Option<ReasonCode>)>) {
    let der = CertificateRevocationListDer::from_pem_slice(&bytes(path)).expect("PEM CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("DER CRL");
    assert_eq!(crl.issuer().to_string(), INTERMEDIATE);
    let number = crl.crl_number().expect("CRL number").to_string();
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| {
            let serial = trustgate::pki::inspect::hex(r.raw_serial());
            (serial, r.reason_code().map(|(_, code)| code))
        })
        .collect();
    (number, revoked)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `openssl verify args...` in `dir`: (success, combined output), or None without openssl.
fn openssl_verify(dir: &Path, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("openssl")
        .arg("verify")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issued_files_serve_through_the_proxy_and_revocation_reaches_the_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    let serial = issue_backend_api(d);
    assert_eq!(serial.len(), 32, "128-bit serial: {serial}");
    let line = index_line(&d.join("ca"), &serial);
    assert!(line.contains("status=valid kind=server"), "{line}");
    assert!(line.ends_with("names=backend-api"), "{line}");

    let cert = served(&d.join("certs/backend-api"));
    assert_eq!(cert.chain.len(), 2, "server.crt = leaf + intermediate");
    assert_eq!(CertInfo::parse(&cert.chain[0]).unwrap().serial, serial);
    let backend = Backend::recording(&cert, H1, "api").await;
    let pki = proxy_pki(d);
    let upstream = format!("https://backend-api:{}/", backend.port());
    let proxy = Proxy::start(&pki, &route("/api", &upstream, &backend)).await;
    let got = get(&client(&pki, false), &proxy.url("/api/hello")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "backend:api\n");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("backend-api"));
    backend.join().await;

    let out = pki_ok(
        d,
        &[
            "revoke",
            "--ca",
            "ca",
            "--name",
            "backend-api",
            "--reason",
            "key-compromise",
        ],
    );
    assert!(
        out.contains(&format!("revoked {serial} (backend-api)")),
        "{out}"
    );
    assert!(index_line(&d.join("ca"), &serial).contains("status=revoked"));
    pki_ok(d, &["crl", "--ca", "ca", "--out", "ca.crl"]);
    let (number, revoked) = parse_crl(&d.join("ca.crl"));
    assert_eq!(number, "1");
    assert_eq!(revoked, [(serial.clone(), Some(ReasonCode::KeyCompromise))]);

    let out = pki_ok(d, &["crl", "--ca", "ca", "--out", "ca.crl"]);
    assert!(out.contains("wrote CRL #2"), "{out}");
    let (number, revoked) = parse_crl(&d.join("ca.crl"));
    assert_eq!(number, "2");
    assert_eq!(revoked.len(), 1, "still listed: {revoked:?}");
    #[cfg(unix)]
    assert_eq!(mode(&d.join("ca.crl")), 0o644);
}

/// `[server]` on `pki`'s public certificate and `[upstream_tls] ca = "ca.pem"`, then `upstream`
/// lines (`crl = ...`) and one route: the config `trustgate check` would load.
fn crl_config(pki: &TestPki, upstream: &str) -> PathBuf {
    let path = pki.path("crl-check.toml");
    write(
        &path,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\n\
             key = \"public/privkey.pem\"\n\n[upstream_tls]\nca = \"ca.pem\"\n{upstream}\n\
             [[route]]\nprefix = \"/\"\nupstream = \"https://backend-api:8443/\"\n"
        ),
    );
    path
}

#[tokio::test]
async fn crl_output_is_crl_input_as_is_and_a_short_one_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    let revoked = issue_backend_api(d);
    let kept_args = [
        "issue",
        "--ca",
        "ca",
        "--name",
        "backend-web",
        "--out",
        "certs/backend-web",
    ];
    let kept = printed_serial(&pki_ok(d, &kept_args));
    assert_ne!(kept, revoked);
    pki_ok(
        d,
        &[
            "revoke",
            "--ca",
            "ca",
            "--name",
            "backend-api",
            "--reason",
            "key-compromise",
        ],
    );
    // `pki crl` does not create the folder it writes into.
    std::fs::create_dir_all(d.join("crl")).unwrap();
    pki_ok(d, &["crl", "--ca", "ca", "--out", "crl/intermediate.crl"]);
    pki_ok(
        d,
        &["crl", "--root", "offline/root", "--out", "crl/root.crl"],
    );
    let (intermediate_crl, root_crl) = (d.join("crl/intermediate.crl"), d.join("crl/root.crl"));

    // The loader's own CRL reader takes the files as written.
    let loaded = trustgate::tls::revocation::load(&intermediate_crl).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].issuer, INTERMEDIATE);
    assert_eq!(loaded[0].revoked_count(), 1);
    let week = loaded[0].next_update.unwrap() - loaded[0].this_update;
    assert_eq!(week, 7 * 86_400, "the default --days 7");
    let root = trustgate::tls::revocation::load(&root_crl).unwrap();
    assert_eq!(root[0].issuer, "CN=trustgate internal root CA");
    assert_eq!(root[0].revoked_count(), 0);

    // As `crl = "<file>"`, the config loads, with no warning a week ahead.
    let pki = proxy_pki(d);
    let config = crl_config(&pki, &format!("crl = {:?}\n", path_str(&intermediate_crl)));
    let loaded = trustgate::Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.upstream_tls.crls.crls.len(), 1);
    assert_eq!(loaded.upstream_tls.crls.crls[0].revoked_count(), 1);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    // And the proxy refuses the revoked serial while the other leaf passes.
    let api = Backend::recording(&served(&d.join("certs/backend-api")), H1, "api").await;
    let web = Backend::recording(&served(&d.join("certs/backend-web")), H1, "web").await;
    let crls = format!(
        "crl = [{:?}, {:?}]\n\n",
        path_str(&intermediate_crl),
        path_str(&root_crl)
    );
    let api_upstream = format!("https://backend-api:{}/", api.port());
    let web_upstream = format!("https://backend-web:{}/", web.port());
    let routes = format!(
        "{crls}{}{}",
        route("/api", &api_upstream, &api),
        route("/web", &web_upstream, &web)
    );
    let proxy = Proxy::start(&pki, &routes).await;
    let got = get(&client(&pki, false), &proxy.url("/web/hello")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(web.seen().len(), 1);
    let line = bad_gateway(&pki, &proxy, "/api/hello", &api_upstream).await;
    assert!(
        line.contains(&format!("certificate revoked (serial 0x{revoked}")),
        "{line}"
    );
    assert!(line.contains("reason keyCompromise"), "{line}");
    assert!(
        api.seen().is_empty(),
        "no request reaches a revoked backend"
    );

    // A CRL published with --days 1 loads, with a warning naming the file.
    pki_ok(
        d,
        &["crl", "--ca", "ca", "--out", "crl/short.crl", "--days", "1"],
    );
    let short = d.join("crl/short.crl");
    let config = crl_config(&pki, &format!("crl = {:?}\n", path_str(&short)));
    let loaded = trustgate::Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].starts_with(&format!(
            "{}: the CRL from \"trustgate internal intermediate CA\" reaches its nextUpdate in",
            short.display()
        )),
        "{:?}",
        loaded.warnings
    );
    api.join().await;
    web.join().await;
}

#[test]
fn openssl_verifies_the_issued_chain_and_rejects_another_roots_leaf() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "backend-api",
            "--out",
            "certs/backend-api",
        ],
    );
    let leaf = "certs/backend-api/server.crt";
    let (ok, text) = openssl_verify(
        d,
        &[
            "-CAfile",
            "offline/root/ca.crt",
            "-untrusted",
            "ca/ca.crt",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "backend-api",
            leaf,
        ],
    )
    .unwrap();
    assert!(ok && text.contains(": OK"), "{text}");
    let (ok, text) =
        openssl_verify(d, &["-CAfile", "certs/backend-api/ca-chain.pem", leaf]).unwrap();
    assert!(ok && text.contains(": OK"), "{text}");

    // A leaf from another root, checked against ours, even with its own intermediate.
    pki_ok(d, &["init-root", "--out", "other/root"]);
    pki_ok(
        d,
        &[
            "init-intermediate",
            "--root",
            "other/root",
            "--out",
            "other/ca",
        ],
    );
    pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "other/ca",
            "--name",
            "backend-api",
            "--out",
            "other/certs",
        ],
    );
    let (ok, text) = openssl_verify(
        d,
        &[
            "-CAfile",
            "offline/root/ca.crt",
            "-untrusted",
            "other/ca/ca.crt",
            "other/certs/server.crt",
        ],
    )
    .unwrap();
    assert!(!ok, "another root's leaf must not verify: {text}");
    assert!(text.contains("unable to get"), "{text}");
}

#[tokio::test]
async fn name_constraints_are_enforced_by_the_cli_and_by_the_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &["--permit-dns", "internal"]);
    pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "api.internal",
            "--out",
            "certs/api",
        ],
    );
    let index_before = read(&d.join("ca/index.txt"));
    let err = pki_err(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "bank.com",
            "--out",
            "certs/bank",
        ],
    );
    assert!(
        err.contains("\"bank.com\"") && err.contains("outside"),
        "{err}"
    );
    assert!(
        !d.join("certs/bank").exists(),
        "nothing written for a refused name"
    );
    assert_eq!(read(&d.join("ca/index.txt")), index_before);

    // Someone with the intermediate's key forges a leaf for bank.com anyway.
    let ca = Ca::from_pem(&read(&d.join("ca/ca.crt")), &read(&d.join("ca/ca.key"))).unwrap();
    let forged = ca.issue(&LeafRequest::server("bank.com", 30)).unwrap();
    let forged = ServerCert {
        chain: vec![forged.cert, ca.cert().clone()],
        chain_pem: forged.cert_pem + &ca.cert_pem(),
        key_pem: forged.key_pem,
    };
    let bank = Backend::recording(&forged, H1, "bank").await;
    let api = Backend::recording(&served(&d.join("certs/api")), H1, "api").await;
    let pki = proxy_pki(d);
    let bank_upstream = format!("https://bank.com:{}/", bank.port());
    let api_upstream = format!("https://api.internal:{}/", api.port());
    let routes = route("/bank", &bank_upstream, &bank) + &route("/api", &api_upstream, &api);
    let proxy = Proxy::start(&pki, &routes).await;
    let client = client(&pki, false);

    let got = get(&client, &proxy.url("/api/x")).await;
    assert_eq!(got.status, StatusCode::OK, "the permitted name passes");
    let got = get(&client, &proxy.url("/bank/x")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(bank.seen().is_empty(), "the forged backend got the request");
    let line = logs()
        .line_with(&[&format!("upstream={bank_upstream}"), "reason="])
        .await;
    assert!(line.contains("name constraints"), "{line}");
}

/// A leaf forged with the constrained intermediate's key (the CLI would refuse it), as a backend
/// serves it: leaf + intermediate.
fn forged(dir: &Path, name: &str) -> ServerCert {
    let ca = Ca::from_pem(&read(&dir.join("ca/ca.crt")), &read(&dir.join("ca/ca.key"))).unwrap();
    let leaf = ca.issue(&LeafRequest::server(name, 30)).unwrap();
    ServerCert {
        chain: vec![leaf.cert, ca.cert().clone()],
        chain_pem: leaf.cert_pem + &ca.cert_pem(),
        key_pem: leaf.key_pem,
    }
}

/// RFC 5280 leaves IP addresses unconstrained when only DNS subtrees are permitted: an
/// intermediate limited to `backend-api` must still vouch for no IP address, public or not.
#[tokio::test]
async fn dns_constraints_exclude_every_ip_address_in_the_cli_and_the_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let printed = init_ca(d, &["--permit-dns", "backend-api"]);
    let scope = "DNS names only under backend-api; no IP addresses";
    assert!(
        printed.contains(&format!("names:       {scope}\n")),
        "{printed}"
    );
    let inspected = pki_ok(d, &["inspect", "ca/ca.crt"]);
    assert!(
        inspected.contains(&format!("names:       {scope}\n")),
        "{inspected}"
    );

    let index = read(&d.join("ca/index.txt"));
    for (args, name, excluded) in [
        (&["--name", "8.8.8.8"][..], "8.8.8.8", "0.0.0.0/0"),
        (
            &["--name", "backend-api", "--ip", "1.1.1.1"],
            "1.1.1.1",
            "0.0.0.0/0",
        ),
        (&["--name", "backend-api", "--ip", "::1"], "::1", "::/0"),
        (&["--client", "10.0.0.9"], "10.0.0.9", "0.0.0.0/0"),
    ] {
        let args = [&["issue", "--ca", "ca", "--out", "certs/ip"][..], args].concat();
        let err = pki_err(d, &args);
        for want in [
            &format!("{name:?} is outside the names"),
            &format!("({scope}): its name constraints exclude {excluded}"),
            "the proxy would refuse it",
        ] {
            assert!(err.contains(want), "{args:?} lacks {want:?}: {err}");
        }
    }
    assert!(
        !d.join("certs/ip").exists(),
        "nothing written for a refused name"
    );
    assert_eq!(read(&d.join("ca/index.txt")), index);

    // Someone with the intermediate's key forges a leaf for an IP address anyway.
    let backend = Backend::recording(&forged(d, "127.0.0.1"), H1, "ip").await;
    let pki = proxy_pki(d);
    let upstream = format!("https://127.0.0.1:{}/", backend.port());
    let proxy = Proxy::start(&pki, &route("/ip", &upstream, &backend)).await;
    let line = bad_gateway(&pki, &proxy, "/ip/x", &upstream).await;
    assert!(line.contains("name constraints"), "{line}");
    assert!(
        backend.seen().is_empty(),
        "the forged backend got the request"
    );
}

/// With --permit-ip, the intermediate issues for addresses in those ranges, which the proxy and
/// OpenSSL accept, and for no DNS name.
#[tokio::test]
async fn permit_ip_allows_its_ranges_and_no_dns_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let printed = init_ca(
        d,
        &["--permit-ip", "127.0.0.0/8", "--permit-ip", "fd00::/8"],
    );
    let scope = "no DNS names; IP addresses only in 127.0.0.0/8, fd00::/8";
    assert!(
        printed.contains(&format!("names:       {scope}\n")),
        "{printed}"
    );

    let index = read(&d.join("ca/index.txt"));
    for (args, name, reason) in [
        (
            &["--name", "10.0.0.1"][..],
            "\"10.0.0.1\"",
            "permit only IP addresses in 127.0.0.0/8, fd00::/8",
        ),
        (
            &["--name", "127.0.0.1", "--ip", "::1"],
            "\"::1\"",
            "permit only IP addresses in",
        ),
        (
            &["--name", "backend-api"],
            "\"backend-api\"",
            "exclude every DNS name",
        ),
        (
            &["--name", "127.0.0.1", "--dns", "localhost"],
            "\"localhost\"",
            "exclude every DNS name",
        ),
        (
            &["--client", "proxy"],
            "\"proxy\"",
            "exclude every DNS name",
        ),
    ] {
        let args = [&["issue", "--ca", "ca", "--out", "certs/refused"][..], args].concat();
        let err = pki_err(d, &args);
        let want = format!(
            "{name} is outside the names \"{INTERMEDIATE}\" may issue for ({scope}): its name constraints {reason}"
        );
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    assert!(!d.join("certs/refused").exists());
    assert_eq!(read(&d.join("ca/index.txt")), index);

    let out = pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "127.0.0.1",
            "--ip",
            "fd00::5",
            "--out",
            "certs/ip",
        ],
    );
    let info = leaf_info(&d.join("certs/ip/server.crt"));
    assert_eq!(info.serial, printed_serial(&out));
    assert_eq!(info.sans, ["127.0.0.1", "fd00::5"]);
    assert_eq!(info.subject, "", "an address is named by the SAN only");

    let backend = Backend::recording(&served(&d.join("certs/ip")), H1, "ip").await;
    let pki = proxy_pki(d);
    let upstream = format!("https://127.0.0.1:{}/", backend.port());
    let proxy = Proxy::start(&pki, &route("/ip", &upstream, &backend)).await;
    let got = get(&client(&pki, false), &proxy.url("/ip/hello")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "backend:ip\n");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni, None, "no SNI for an address (RFC 6066)");
    backend.join().await;

    // OpenSSL reads a common name of 127.0.0.1 as a DNS name and checks it against the
    // constraints, which exclude every DNS name: the empty subject is what lets it pass.
    let chain = ["-CAfile", "offline/root/ca.crt", "-untrusted", "ca/ca.crt"];
    let leaf = "certs/ip/server.crt";
    if let Some((ok, text)) = openssl_verify(
        d,
        &[&chain[..], &["-verify_ip", "127.0.0.1", leaf]].concat(),
    ) {
        assert!(ok && text.contains(": OK"), "{text}");
        let (ok, text) = openssl_verify(
            d,
            &[&chain[..], &["-verify_ip", "127.0.0.2", leaf]].concat(),
        )
        .unwrap();
        assert!(!ok, "{text}");
    }
}

#[cfg(unix)]
#[test]
fn keys_are_private_and_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    let first = pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "backend-api",
            "--out",
            "certs/api",
        ],
    );
    for key in ["offline/root/ca.key", "ca/ca.key", "certs/api/server.key"] {
        assert_eq!(mode(&d.join(key)), 0o600, "{key}");
    }
    for cert in [
        "offline/root/ca.crt",
        "ca/ca.crt",
        "ca/root.crt",
        "certs/api/server.crt",
        "certs/api/ca-chain.pem",
    ] {
        assert_eq!(mode(&d.join(cert)), 0o644, "{cert}");
    }

    let root_key = bytes(&d.join("offline/root/ca.key"));
    let err = pki_err(d, &["init-root", "--out", "offline/root"]);
    assert!(err.contains("ca.key already exists"), "{err}");
    assert_eq!(bytes(&d.join("offline/root/ca.key")), root_key);
    let ca_key = bytes(&d.join("ca/ca.key"));
    let err = pki_err(
        d,
        &["init-intermediate", "--root", "offline/root", "--out", "ca"],
    );
    assert!(err.contains("ca.key already exists"), "{err}");
    assert_eq!(bytes(&d.join("ca/ca.key")), ca_key);

    let old_serial = printed_serial(&first);
    let old_key = bytes(&d.join("certs/api/server.key"));
    let args = [
        "issue",
        "--ca",
        "ca",
        "--name",
        "backend-api",
        "--out",
        "certs/api",
    ];
    let err = pki_err(d, &args);
    assert!(
        err.contains("live certificate for backend-api") && err.contains(&old_serial),
        "{err}"
    );
    assert_eq!(bytes(&d.join("certs/api/server.key")), old_key);

    let renewed = pki_ok(d, &[&args[..], &["--renew"]].concat());
    let new_serial = printed_serial(&renewed);
    assert_ne!(new_serial, old_serial);
    assert_ne!(bytes(&d.join("certs/api/server.key")), old_key, "a new key");
    assert_eq!(mode(&d.join("certs/api/server.key")), 0o600);
    assert_eq!(
        leaf_info(&d.join("certs/api/server.crt")).serial,
        new_serial
    );
    served(&d.join("certs/api")); // the new key matches the new certificate
    let ca = d.join("ca");
    assert!(index_line(&ca, &old_serial).contains("status=superseded"));
    assert!(index_line(&ca, &new_serial).contains("status=valid"));
}

#[test]
fn client_certificates_are_for_client_auth_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    let out = pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--client",
            "trustgate-proxy",
            "--out",
            "certs/client",
        ],
    );
    let folder = d.join("certs/client");
    assert!(folder.join("client.key").exists() && !folder.join("server.crt").exists());
    let info = leaf_info(&folder.join("client.crt"));
    assert_eq!(info.serial, printed_serial(&out));
    assert_eq!(info.sans, ["trustgate-proxy"]);
    assert_eq!(
        (info.client_auth, info.server_auth),
        (Some(true), Some(false))
    );
    assert!(!info.is_ca);
    assert!(index_line(&d.join("ca"), &info.serial).contains("kind=client"));
    #[cfg(unix)]
    assert_eq!(mode(&folder.join("client.key")), 0o600);
}

#[test]
fn renew_replaces_only_what_expires_soon_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    let short = pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "short",
            "--days",
            "10",
            "--out",
            "certs/short",
        ],
    );
    pki_ok(
        d,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "long",
            "--out",
            "certs/long",
        ],
    );
    let files = |name: &str| -> Vec<(PathBuf, Vec<u8>)> {
        ["server.crt", "server.key", "ca-chain.pem"]
            .iter()
            .map(|f| d.join("certs").join(name).join(f))
            .map(|p| (p.clone(), bytes(&p)))
            .collect()
    };
    let (short_before, long_before) = (files("short"), files("long"));
    let old_serial = printed_serial(&short);

    let out = pki_ok(
        d,
        &["renew", "--ca", "ca", "--certs", "certs", "--within", "30d"],
    );
    assert!(out.contains("1 renewed, 1 unchanged"), "{out}");
    assert_eq!(files("long"), long_before, "the 90-day leaf is untouched");
    let short_after = files("short");
    assert_ne!(short_after[0].1, short_before[0].1, "new certificate");
    assert_ne!(short_after[1].1, short_before[1].1, "new key");
    let info = leaf_info(&d.join("certs/short/server.crt"));
    assert_ne!(info.serial, old_serial);
    assert_eq!(info.sans, ["short"]);
    assert!(
        (9..=10).contains(&info.days_left()),
        "same lifetime: {}",
        info.days_left()
    );
    served(&d.join("certs/short"));
    let ca = d.join("ca");
    assert!(index_line(&ca, &old_serial).contains("status=superseded"));
    assert!(index_line(&ca, &info.serial).contains("status=valid"));

    let index = bytes(&ca.join("index.txt"));
    let out = pki_ok(
        d,
        &["renew", "--ca", "ca", "--certs", "certs", "--within", "5d"],
    );
    assert!(out.contains("0 renewed, 2 unchanged"), "{out}");
    assert_eq!(files("short"), short_after);
    assert_eq!(files("long"), long_before);
    assert_eq!(bytes(&ca.join("index.txt")), index);
}

#[test]
fn ca_keys_are_never_written_into_a_folder_the_proxy_config_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = d.join("proxy/trustgate.toml");
    write(
        &config,
        "[server]\nlisten = \"0.0.0.0:8443\"\ncert = \"certs/public/fullchain.pem\"\n\
         key = \"certs/public/privkey.pem\"\n\n[upstream_tls]\nca = \"internal/ca.pem\"\n",
    );
    let flag = ["--proxy-config", path_str(&config)];
    let refused = |out: Output, args: &[&str], target: &Path| {
        let err = failed(out, args);
        assert!(err.contains("refusing to write a CA private key"), "{err}");
        assert!(!target.join("ca.key").exists(), "{}", target.display());
    };

    let offline = d.join("offline/root");
    pki_ok(
        d,
        &[&["init-root", "--out", path_str(&offline)][..], &flag].concat(),
    );
    assert!(offline.join("ca.key").exists());
    let root_index = read(&offline.join("index.txt"));

    for inside in [
        "proxy/internal/root",
        "proxy/certs/public/root",
        "proxy/keys",
    ] {
        let target = d.join(inside);
        let args = [&["init-root", "--out", path_str(&target)][..], &flag].concat();
        refused(run(d, &args, None), &args, &target);
        let args = ["init-root", "--out", path_str(&target)];
        refused(run(d, &args, Some(&config)), &args, &target);
    }
    let relative = Path::new("proxy/internal/ca");
    let args = [
        &["init-intermediate", "--root", path_str(&offline), "--out"][..],
        &[path_str(relative)],
        &flag,
    ]
    .concat();
    refused(run(d, &args, None), &args, &d.join(relative));
    let args = &args[..args.len() - 2];
    refused(run(d, args, Some(&config)), args, &d.join(relative));
    assert_eq!(
        read(&offline.join("index.txt")),
        root_index,
        "no intermediate recorded"
    );

    let intermediate = d.join("offline/ca");
    let args = ["init-intermediate", "--root", path_str(&offline), "--out"];
    let out = run(
        d,
        &[&args[..], &[path_str(&intermediate)]].concat(),
        Some(&config),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(intermediate.join("ca.key").exists());
}

/// With `./trustgate.toml` (the default the guard looks for) or a bare `--proxy-config
/// trustgate.toml`, the config's folder is the empty path, every path starts with it, and every
/// CA key is refused, even far outside the proxy's folders ("refusing ... into /x:  is a folder").
#[test]
fn a_config_in_the_current_folder_guards_only_its_own_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let proxy = d.join("proxy");
    write(
        &proxy.join("trustgate.toml"),
        "[server]\nlisten = \"0.0.0.0:8443\"\ncert = \"certs/public/fullchain.pem\"\n\
         key = \"certs/public/privkey.pem\"\n\n[upstream_tls]\nca = \"internal/ca.pem\"\n",
    );
    let outside = d.join("offline/root");
    let out = pki_ok(&proxy, &["init-root", "--out", path_str(&outside)]);
    assert!(out.contains("created root CA"), "{out}");
    let err = pki_err(&proxy, &["init-root", "--out", "internal/root"]);
    assert!(err.contains("refusing to write a CA private key"), "{err}");
}

#[test]
fn list_and_inspect_show_what_an_operator_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    let serial = issue_backend_api(d);
    let row = |listing: &str| -> Vec<String> {
        let line = listing
            .lines()
            .find(|l| l.starts_with("backend-api "))
            .unwrap_or_else(|| panic!("no row for backend-api:\n{listing}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    let listing = pki_ok(d, &["list", "--ca", "ca"]);
    let header: Vec<&str> = listing.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SERIAL", "DAYS", "LEFT", "STATUS", "KIND"]);
    let cells = row(&listing);
    assert_eq!(cells[..2], ["backend-api", serial.as_str()]);
    let days: i64 = cells[2].parse().unwrap();
    assert!((89..=90).contains(&days), "{days}");
    assert_eq!(cells[3..], ["valid", "server"]);
    pki_ok(d, &["revoke", "--ca", "ca", "--serial", &serial]);
    assert_eq!(row(&pki_ok(d, &["list", "--ca", "ca"]))[3], "revoked");

    let file = "certs/backend-api/server.crt";
    let text = pki_ok(d, &["inspect", file]);
    let (first, second) = text
        .split_once(&format!("{file} #2:"))
        .unwrap_or_else(|| panic!("no second certificate:\n{text}"));
    assert!(first.starts_with(&format!("{file} #1:")), "{text}");
    assert!(!text.contains("#3"), "{text}");
    let sha256 = leaf_info(&d.join(file)).sha256;
    for want in [
        "SANs:        backend-api\n",
        &format!("issuer:      {INTERMEDIATE}\n"),
        "days left)",
        &format!("serial:      {serial}\n"),
        &format!("sha256:      {sha256}\n"),
        "key:         ECDSA P-256\n",
        "CA:          no\n",
        "usage:       serverAuth",
    ] {
        assert!(first.contains(want), "#1 lacks {want:?}:\n{first}");
    }
    for want in [
        &format!("subject:     {INTERMEDIATE}\n"),
        "issuer:      CN=trustgate internal root CA\n",
        "CA:          yes\n",
    ] {
        assert!(second.contains(want), "#2 lacks {want:?}:\n{second}");
    }
}

#[test]
fn key_types_are_what_was_asked_for_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    init_ca(d, &[]);
    for (flag, shown) in [
        ("p384", "ECDSA P-384"),
        ("ed25519", "Ed25519"),
        ("rsa3072", "RSA 3072"),
    ] {
        let name = format!("svc-{flag}");
        let folder = format!("certs/{name}");
        let args = ["issue", "--ca", "ca", "--name", &name, "--out", &folder];
        pki_ok(d, &[&args[..], &["--key-type", flag]].concat());
        let text = pki_ok(d, &["inspect", &format!("{folder}/server.crt")]);
        let leaf = text.split(" #2:").next().unwrap();
        assert!(
            leaf.contains(&format!("key:         {shown}\n")),
            "{flag}: {leaf}"
        );
        assert_eq!(
            leaf_info(&d.join(&folder).join("server.crt")).key_type,
            shown
        );
        served(&d.join(&folder));
    }
}

#[test]
fn bad_input_fails_cleanly_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = pki_err(
        d,
        &[
            "issue",
            "--ca",
            "does-not-exist",
            "--name",
            "x",
            "--out",
            "certs/x",
        ],
    );
    assert!(err.contains("does-not-exist/ca.crt"), "{err}");
    assert!(!d.join("certs").exists());

    init_ca(d, &[]);
    let index = read(&d.join("ca/index.txt"));
    let err = pki_err(d, &["revoke", "--ca", "ca", "--serial", "ffff"]);
    assert!(err.contains("no unrevoked certificate"), "{err}");
    assert_eq!(read(&d.join("ca/index.txt")), index);

    for (args, want) in [
        (&["list", "--ca", "nowhere"][..], "nowhere/ca.crt"),
        (
            &["crl", "--ca", "nowhere", "--out", "x.crl"],
            "nowhere/ca.crt",
        ),
        (
            &["init-intermediate", "--root", "nowhere", "--out", "ca2"],
            "nowhere/ca.crt",
        ),
        (&["renew", "--ca", "ca", "--certs", "nowhere"], "nowhere"),
        (&["inspect", "missing.crt"], "missing.crt"),
        (&["inspect", "ca/ca.key"], "ca/ca.key holds no certificate"),
        (
            &["issue", "--ca", "ca", "--name", "bad name!", "--out", "c"],
            "not a valid DNS name",
        ),
        (
            &[
                "issue", "--ca", "ca", "--name", "x", "--days", "5000", "--out", "c",
            ],
            "would outlive its issuer",
        ),
    ] {
        let err = pki_err(d, args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Out-of-range numbers and bad IP ranges are refused by the argument parser (usage error,
    // exit code 2) before any CA exists.
    for (cidr, want) in [
        ("10.0.0.0/33", "the prefix length must be 0 to 32"),
        ("fd00::/200", "the prefix length must be 0 to 128"),
        (
            "10.0.0.1/8",
            "it has host bits set; the range is 10.0.0.0/8",
        ),
        ("backend-api", "\"backend-api\" is not an IP address"),
    ] {
        let args = [
            "init-intermediate",
            "--root",
            "offline/root",
            "--out",
            "ca2",
            "--permit-ip",
            cidr,
        ];
        let out = run(d, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{cidr:?} is not an IP range: {want}")),
            "{cidr}: {stderr}"
        );
    }
    // Out-of-range numbers are refused by the argument parser (usage error, exit code 2).
    for days in ["0", "99999999"] {
        let args = [
            "issue", "--ca", "ca", "--name", "x", "--days", days, "--out", "c",
        ];
        let out = run(d, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("from 1 to 36500"), "{stderr}");
    }
    assert!(!d.join("ca2").exists() && !d.join("c").exists());
}

#[test]
fn renew_skips_stale_copies_and_shared_folders_and_failed_creates_leave_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir, &[]);
    // A stale copy of a superseded certificate is not brought back to life by renew.
    pki_ok(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "svc",
            "--days",
            "10",
            "--out",
            "certs/old",
        ],
    );
    pki_ok(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--name",
            "svc",
            "--days",
            "10",
            "--out",
            "certs/new",
            "--renew",
        ],
    );
    let out = pki_ok(
        dir,
        &[
            "renew", "--ca", "ca", "--certs", "certs", "--within", "30d", "--days", "60",
        ],
    );
    assert!(out.contains("certs/old/server.crt: superseded"), "{out}");
    assert!(out.contains("1 renewed"), "{out}");
    let list = pki_ok(dir, &["list", "--ca", "ca"]);
    let valid_svc = list
        .lines()
        .filter(|l| l.starts_with("svc ") && l.contains(" valid "))
        .count();
    assert_eq!(valid_svc, 1, "one live certificate per service:\n{list}");

    // A client certificate may share a folder with a server certificate of the same CA.
    pki_ok(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--client",
            "proxy",
            "--out",
            "certs/new",
        ],
    );
    assert!(dir.join("certs/new/client.key").exists() && dir.join("certs/new/server.key").exists());

    // init-root refuses a folder holding a CA certificate without writing a stray key.
    std::fs::create_dir_all(dir.join("r2")).unwrap();
    std::fs::copy(dir.join("offline/root/ca.crt"), dir.join("r2/ca.crt")).unwrap();
    let err = pki_err(dir, &["init-root", "--out", "r2"]);
    assert!(err.contains("already exists"), "{err}");
    assert!(
        !dir.join("r2/ca.key").exists(),
        "a failed init-root left a key behind"
    );
}

#[test]
fn dot_dot_through_a_missing_folder_does_not_dodge_the_guard() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = d.join("proxy/trustgate.toml");
    write(
        &config,
        "[server]\nlisten = \"0.0.0.0:8443\"\ncert = \"certs/public/fullchain.pem\"\n\
         key = \"certs/public/privkey.pem\"\n\n[upstream_tls]\nca = \"internal/ca.pem\"\n",
    );
    // `missing/..` does not exist, so canonicalizing alone would not resolve it.
    let sneaky = d.join("missing/../proxy/root");
    let args = [
        "init-root",
        "--out",
        sneaky.to_str().unwrap(),
        "--proxy-config",
        config.to_str().unwrap(),
    ];
    let err = pki_err(d, &args);
    assert!(err.contains("refusing to write a CA private key"), "{err}");
    assert!(!d.join("proxy/root/ca.key").exists());

    // Without any proxy config, the command works but says that nothing was checked.
    let out = run(d, &["init-root", "--out", "elsewhere/root"], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no proxy config known"));
}
