//! `trustgate audit`, one check at a time: for every finding a fixture that triggers it and the
//! closest correct setup that does not, so each test proves the check discriminates.
//!
//! - Files: a CA key in the config folder or a folder the config names (`ca-key-exposed`, with the
//!   "root must be offline" wording for the root, and still scanned when the config does not load:
//!   `config-invalid`), public-looking trust bundles (`anchors-look-public`), expiring and expired
//!   public certificates (`cert-expiring`, `cert-expired`), a readable listener key
//!   (`key-readable`).
//! - Probe: real TLS backends on loopback presenting good, misnamed, foreign, expired, CA and
//!   client-only certificates and one without extendedKeyUsage, one certificate or one key shared
//!   by two services, and a dead port (`upstream-chain`, `upstream-refused`, `upstream-cert-is-ca`,
//!   `upstream-no-server-auth`, `shared-identity`, `upstream-unreachable`).
//! - Compose: published backend ports, non-internal networks, the proxy off the internal network, a
//!   missing proxy service, CA keys and one leaf certificate bind-mounted into services, broken YAML.
//! - The binary: exit code 1 on a critical finding and 0 when clean, and `--format json`.
//!
//! Every test uses its own temp folders and an explicit (empty or crafted) system trust store, so
//! the machine's /etc/ssl never changes a result (the config loader compares anchors with it too,
//! but every root here is made by the test).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use trustgate::Config;
use trustgate::audit::{Finding, Options, Report, Severity};
use trustgate::pki::{Ca, KeyType, LeafRequest, Usage, Validity};

const BIN: &str = env!("CARGO_BIN_EXE_trustgate");

/// `--warn-days` for these tests: every certificate `TestPki` makes is valid for 30 days.
const WARN_DAYS: i64 = 7;

/// One route to `backend-api`, without an address: enough when nothing is probed.
const API_ROUTE: &str = "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:8443/\"\n";

// ---------------------------------------------------------------------------------------------
// Fixture

/// A deployment to audit: `TestPki`'s files (internal root in `ca.pem`, the public certificate and
/// its key in `public/`), `trustgate.toml` next to them, and an empty system trust store kept in a
/// folder the audit does not scan.
struct Setup {
    pki: TestPki,
    config: PathBuf,
    /// The `[upstream_tls] ca` value, kept for [`Setup::routes`].
    ca: String,
    outside: tempfile::TempDir,
}

impl Setup {
    /// The clean deployment, with `routes` appended to the config and the key at mode 0600.
    fn new(routes: &str) -> Self {
        Self::with_ca("\"ca.pem\"", routes)
    }

    /// The clean deployment with `[upstream_tls] ca = <ca>` (a TOML value).
    fn with_ca(ca: &str, routes: &str) -> Self {
        let pki = TestPki::new();
        chmod(&pki.path("public/privkey.pem"), 0o600);
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("system-store.pem"), "");
        let setup = Self {
            config: pki.path("trustgate.toml"),
            pki,
            ca: ca.to_owned(),
            outside,
        };
        setup.routes(routes);
        setup
    }

    /// Rewrites the config with `routes` (once the backends, which need this PKI, are up).
    fn routes(&self, routes: &str) {
        self.tables("", "", routes);
    }

    /// Rewrites the config with `server` after the `[server]` keys (a `[server.client_auth]`
    /// table), `upstream` lines in `[upstream_tls]` after `ca`, and `routes`.
    fn tables(&self, server: &str, upstream: &str, routes: &str) {
        write(
            &self.config,
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\n\
                 key = \"public/privkey.pem\"\n{server}\n[upstream_tls]\nca = {}\n{upstream}\n\
                 {routes}",
                self.ca
            ),
        );
    }

    fn system_store(&self) -> PathBuf {
        self.outside.path().join("system-store.pem")
    }

    /// Options as `trustgate audit -c trustgate.toml --warn-days 7 --system-store <empty>`.
    fn options(&self) -> Options {
        Options {
            config: self.config.clone(),
            compose: None,
            proxy_service: "proxy".into(),
            probe: false,
            warn_days: WARN_DAYS,
            system_store: Some(self.system_store()),
        }
    }

    async fn audit(&self) -> Report {
        trustgate::audit::run(&self.options()).await
    }

    async fn probe(&self) -> Report {
        let options = Options {
            probe: true,
            ..self.options()
        };
        trustgate::audit::run(&options).await
    }

    async fn compose(&self, compose: &Path, proxy_service: &str) -> Report {
        let options = Options {
            compose: Some(compose.to_path_buf()),
            proxy_service: proxy_service.into(),
            ..self.options()
        };
        trustgate::audit::run(&options).await
    }

    /// Replaces the public certificate (from the public CA, for localhost) with one valid for
    /// `validity`; its key stays at mode 0600.
    fn public_cert(&self, validity: Validity) {
        let request = LeafRequest {
            names: vec!["localhost".into(), "127.0.0.1".into()],
            validity,
            usage: Usage::Server,
        };
        let issued = self.pki.public_ca.issue(&request).unwrap();
        write(&self.pki.path("public/fullchain.pem"), &issued.cert_pem);
        write(&self.pki.path("public/privkey.pem"), &issued.key_pem);
        chmod(&self.pki.path("public/privkey.pem"), 0o600);
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// How the audit names a scanned file: its canonical path.
fn real(path: &Path) -> String {
    path.canonicalize().unwrap().display().to_string()
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// A leaf for `name` from the internal intermediate, with a fresh key.
fn leaf(pki: &TestPki, name: &str) -> trustgate::pki::Issued {
    pki.intermediate
        .issue(&LeafRequest::server(name, 30))
        .unwrap()
}

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

// ---------------------------------------------------------------------------------------------
// Assertions

/// The findings with `id`.
fn with_id<'a>(report: &'a Report, id: &str) -> Vec<&'a Finding> {
    report.findings.iter().filter(|f| f.id == id).collect()
}

/// The one finding with `id`, checked to have `severity`.
#[track_caller]
fn only<'a>(report: &'a Report, id: &str, severity: Severity) -> &'a Finding {
    let found = with_id(report, id);
    assert_eq!(found.len(), 1, "exactly one {id} expected in:\n{report}");
    assert_eq!(found[0].severity, severity, "{report}");
    found[0]
}

/// Every finding's id, sorted: the whole report at a glance.
fn ids(report: &Report) -> Vec<&'static str> {
    let mut ids: Vec<_> = report.findings.iter().map(|f| f.id).collect();
    ids.sort_unstable();
    ids
}

#[track_caller]
fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "{needle:?} not found in {haystack:?}"
    );
}

#[track_caller]
fn assert_clean(report: &Report) {
    assert!(
        report.findings.is_empty(),
        "a correct setup must report nothing:\n{report}"
    );
    assert!(report.passed());
}

// ---------------------------------------------------------------------------------------------
// The control

#[tokio::test]
async fn clean_setup_reports_nothing() {
    // The control for every test below, which each change one thing of this deployment.
    let setup = Setup::new(API_ROUTE);
    let report = setup.audit().await;
    assert_clean(&report);
    assert_eq!(
        report.to_string(),
        "0 critical, 0 high, 0 medium, 0 info: PASS"
    );
}

// ---------------------------------------------------------------------------------------------
// ca-key-exposed and config-invalid

#[tokio::test]
async fn intermediate_key_in_the_config_folder_is_critical_a_leaf_key_is_not() {
    // The intermediate's folder as `pki init-intermediate` writes it, copied under the config's
    // folder, with a service's certificate and key next to it.
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    let service = leaf(pki, "backend-api");
    write(&pki.path("ca/ca.pem"), &pki.intermediate.cert_pem());
    write(&pki.path("ca/backend-api.pem"), &service.cert_pem);
    write(&pki.path("ca/backend-api.key"), &service.key_pem);
    let clean = setup.audit().await;
    assert_clean(&clean);

    write(&pki.path("ca/ca.key"), &pki.intermediate.key_pem());
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
    let finding = only(&report, "ca-key-exposed", Severity::Critical);
    assert_eq!(
        finding.what,
        "the private key of the CA \"CN=Test Internal Intermediate\" is in a folder the proxy reads"
    );
    assert_eq!(finding.location, real(&pki.path("ca/ca.key")));
    assert_contains(&finding.fix, "revoke and replace the intermediate");
    assert!(!report.passed());
}

#[tokio::test]
async fn ca_key_next_to_the_ca_file_the_config_names_is_found_outside_the_config_folder() {
    // `[upstream_tls] ca` names the intermediate's certificate in its own folder, elsewhere.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("intermediate/ca.pem");
    let setup = Setup::with_ca(&format!("{:?}", display(&ca_file)), API_ROUTE);
    let pki = &setup.pki;
    write(&ca_file, &pki.intermediate.cert_pem());
    // A service's certificate and key next to it: not a CA key.
    let service = leaf(pki, "backend-api");
    write(
        &ca_dir.path().join("intermediate/backend-api.pem"),
        &service.cert_pem,
    );
    write(
        &ca_dir.path().join("intermediate/backend-api.key"),
        &service.key_pem,
    );
    let clean = setup.audit().await;
    assert_clean(&clean);

    let key = ca_dir.path().join("intermediate/ca.key");
    write(&key, &pki.intermediate.key_pem());
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
    let finding = only(&report, "ca-key-exposed", Severity::Critical);
    assert_contains(&finding.what, "\"CN=Test Internal Intermediate\"");
    assert_eq!(finding.location, real(&key));
}

#[tokio::test]
async fn a_key_that_matches_no_certificate_is_a_stray_key() {
    // The intermediate's key alone, without its certificate anywhere the audit looks: it cannot
    // be matched to a CA, but it matches nothing the proxy serves either.
    let setup = Setup::new(API_ROUTE);
    let key = setup.pki.path("internal/ca.key");
    write(&key, &setup.pki.intermediate.key_pem());
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["stray-private-key"], "{report}");
    let finding = only(&report, "stray-private-key", Severity::Medium);
    assert_eq!(finding.location, real(&key));
    assert_contains(&finding.what, "if it belongs to a CA");

    // With its certificate next to it, it is recognised for what it is.
    write(
        &setup.pki.path("internal/ca.pem"),
        &setup.pki.intermediate.cert_pem(),
    );
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
}

#[tokio::test]
async fn root_key_next_to_the_anchor_says_the_root_must_be_offline() {
    let setup = Setup::new(API_ROUTE);
    let key = setup.pki.path("root.key");
    write(&key, &setup.pki.root.key_pem());
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
    let finding = only(&report, "ca-key-exposed", Severity::Critical);
    assert_eq!(
        finding.what,
        "the private key of the root CA \"CN=Test Internal Root\" is in a folder the proxy reads: \
         the root must be offline"
    );
    assert_eq!(finding.location, real(&key));
    assert_contains(&finding.fix, "offline storage");
}

#[tokio::test]
async fn broken_config_is_critical_and_the_ca_key_scan_still_runs() {
    // Not TOML at all: the scan falls back to the config's own folder.
    let setup = Setup::new(API_ROUTE);
    write(&setup.config, "[server\nlisten = \n");
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["config-invalid"], "{report}");
    let finding = only(&report, "config-invalid", Severity::Critical);
    assert_contains(
        &finding.what,
        "the config does not load, so the proxy would not start:",
    );
    assert_eq!(finding.location, display(&setup.config));
    assert!(!report.passed());

    let key = setup.pki.path("root.key");
    write(&key, &setup.pki.root.key_pem());
    let report = setup.audit().await;
    assert_eq!(
        ids(&report),
        ["ca-key-exposed", "config-invalid"],
        "{report}"
    );
    let exposed = only(&report, "ca-key-exposed", Severity::Critical);
    assert_contains(&exposed.what, "the root must be offline");
    assert_eq!(exposed.location, real(&key));
}

#[tokio::test]
async fn config_that_parses_but_does_not_load_still_has_its_named_folders_scanned() {
    // Valid TOML naming a missing certificate, and a CA folder outside the config's folder.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("intermediate/ca.pem");
    let setup = Setup::with_ca(&format!("{:?}", display(&ca_file)), API_ROUTE);
    let pki = &setup.pki;
    write(&ca_file, &pki.intermediate.cert_pem());
    let key = ca_dir.path().join("intermediate/ca.key");
    write(&key, &pki.intermediate.key_pem());
    let text = std::fs::read_to_string(&setup.config).unwrap();
    write(
        &setup.config,
        &text.replace("public/fullchain.pem", "public/missing.pem"),
    );

    let report = setup.audit().await;
    assert_eq!(
        ids(&report),
        ["ca-key-exposed", "config-invalid"],
        "{report}"
    );
    assert_contains(
        &only(&report, "config-invalid", Severity::Critical).what,
        "public/missing.pem",
    );
    let exposed = only(&report, "ca-key-exposed", Severity::Critical);
    assert_contains(&exposed.what, "\"CN=Test Internal Intermediate\"");
    assert_eq!(exposed.location, real(&key));
}

// ---------------------------------------------------------------------------------------------
// anchors-look-public

#[tokio::test]
async fn bundle_of_eleven_anchors_looks_public_ten_or_two_do_not() {
    let setup = Setup::with_ca("\"bundle.pem\"", API_ROUTE);
    let bundle = setup.pki.path("bundle.pem");

    write(&bundle, &roots(11));
    let report = setup.audit().await;
    // `trustgate check` refuses the bundle by the same rule, so the config does not load either.
    assert_eq!(
        ids(&report),
        ["anchors-look-public", "config-invalid"],
        "{report}"
    );
    assert_contains(
        &only(&report, "config-invalid", Severity::Critical).what,
        &format!(
            "upstream_tls.ca: {} holds 11 CA certificates",
            display(&bundle)
        ),
    );
    let finding = only(&report, "anchors-look-public", Severity::High);
    assert_contains(
        &finding.what,
        "the upstream trust bundle holds 11 CA certificates",
    );
    assert_eq!(finding.location, display(&bundle));
    assert!(!report.passed());

    // The largest bundle that still passes.
    write(&bundle, &roots(10));
    assert_clean(&setup.audit().await);

    // Two roots, the internal one and another (a rollover), in the array form.
    write(&bundle, &roots(1));
    let text = std::fs::read_to_string(&setup.config).unwrap();
    write(
        &setup.config,
        &text.replace("ca = \"bundle.pem\"", "ca = [\"ca.pem\", \"bundle.pem\"]"),
    );
    let config = Config::load(&setup.config).unwrap();
    assert_eq!(config.upstream_tls.anchors.len(), 2);
    assert_clean(&setup.audit().await);
}

#[tokio::test]
async fn anchor_found_in_the_system_store_looks_public_others_do_not() {
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    let store = setup.system_store();
    // A system store of public roots, not holding the internal root.
    let public_roots = format!("{}{}", pki.public_ca.cert_pem(), roots(2));
    write(&store, &public_roots);
    assert_clean(&setup.audit().await);

    write(&store, &format!("{public_roots}{}", pki.root.cert_pem()));
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["anchors-look-public"], "{report}");
    let finding = only(&report, "anchors-look-public", Severity::High);
    assert_eq!(
        finding.what,
        "upstream trust anchor \"CN=Test Internal Root\" is also in the system trust store: \
         internal CA treated like a public CA / system trust store copied"
    );
    assert_eq!(finding.location, display(&pki.path("ca.pem")));
}

// ---------------------------------------------------------------------------------------------
// Expiry and key mode

#[tokio::test]
async fn public_certificate_expiring_within_warn_days_is_medium() {
    let setup = Setup::new(API_ROUTE);
    let warn = Options {
        warn_days: 14,
        ..setup.options()
    };

    setup.public_cert(Validity::days(20));
    assert_clean(&trustgate::audit::run(&warn).await);

    setup.public_cert(Validity::days(10));
    let report = trustgate::audit::run(&warn).await;
    assert_eq!(ids(&report), ["cert-expiring"], "{report}");
    let finding = only(&report, "cert-expiring", Severity::Medium);
    assert_eq!(
        finding.what,
        "public certificate \"CN=localhost\" expires in 10 days"
    );
    assert_eq!(
        finding.location,
        display(&setup.pki.path("public/fullchain.pem"))
    );
    assert!(report.passed(), "medium does not fail the audit");
    // The same certificate with the default window of these tests is fine.
    assert_clean(&setup.audit().await);
}

#[tokio::test]
async fn expired_public_certificate_loads_but_is_high() {
    let setup = Setup::new(API_ROUTE);
    setup.public_cert(Validity::relative(
        time::Duration::days(-30),
        time::Duration::days(-2),
    ));
    // The loader does not refuse it: only the audit says so.
    Config::load(&setup.config).unwrap_or_else(|e| panic!("{e}"));
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["cert-expired"], "{report}");
    let finding = only(&report, "cert-expired", Severity::High);
    assert_eq!(
        finding.what,
        "public certificate \"CN=localhost\" expired 2 days ago"
    );
    assert_eq!(
        finding.location,
        display(&setup.pki.path("public/fullchain.pem"))
    );
    assert!(!report.passed());
}

#[tokio::test]
async fn listener_key_readable_by_group_or_others_is_medium() {
    let setup = Setup::new(API_ROUTE);
    let key = setup.pki.path("public/privkey.pem");
    for (mode, shown) in [(0o644, "644"), (0o640, "640"), (0o604, "604")] {
        chmod(&key, mode);
        let report = setup.audit().await;
        assert_eq!(ids(&report), ["key-readable"], "{report}");
        let finding = only(&report, "key-readable", Severity::Medium);
        assert_eq!(
            finding.what,
            format!("the listener's private key is readable by group or others (mode {shown})")
        );
        assert_eq!(finding.location, display(&key));
        assert_eq!(finding.fix, format!("chmod 600 {}", key.display()));
    }
    chmod(&key, 0o600);
    assert_clean(&setup.audit().await);
    chmod(&key, 0o400);
    assert_clean(&setup.audit().await);
}

// ---------------------------------------------------------------------------------------------
// Probe

/// `[[route]]` blocks for `(prefix, service name, backend)`, each on port 8443.
fn route_blocks(entries: &[(&str, &str, &Backend)]) -> String {
    entries
        .iter()
        .map(|(prefix, name, backend)| route(prefix, &format!("https://{name}:8443/"), backend))
        .collect()
}

async fn serve(cert: &ServerCert, name: &str) -> Backend {
    Backend::recording(cert, &[b"http/1.1"], name).await
}

#[tokio::test]
async fn probe_of_a_good_upstream_reports_its_chain_only() {
    let setup = Setup::new(API_ROUTE);
    let api = serve(&setup.pki.leaf(&["backend-api"]), "api").await;
    setup.routes(&route_blocks(&[("/api", "backend-api", &api)]));

    let report = setup.probe().await;
    assert_eq!(ids(&report), ["upstream-chain"], "{report}");
    let finding = only(&report, "upstream-chain", Severity::Info);
    assert_eq!(
        finding.what,
        "backend-api presents \"CN=backend-api\" (SAN backend-api) issued by \
         \"CN=Test Internal Intermediate\", 30 days left, 2 certificate(s) in the chain"
    );
    assert_eq!(finding.location, "route /api -> https://backend-api:8443/");
    assert!(report.passed());
    assert!(api.seen().is_empty(), "the probe sends no request");
    api.join().await;
}

#[tokio::test]
async fn probe_refuses_a_wrong_name_an_unknown_issuer_and_an_expired_certificate() {
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    // The control next to them: a correct backend on its own route.
    let ok = serve(&pki.leaf(&["backend-ok"]), "ok").await;
    let misnamed = serve(&pki.leaf(&["backend-web"]), "api").await;
    let foreign = serve(&pki.foreign("backend-foreign"), "foreign").await;
    let expired = serve(&pki.expired("backend-old"), "old").await;
    setup.routes(&route_blocks(&[
        ("/ok", "backend-ok", &ok),
        ("/api", "backend-api", &misnamed),
        ("/foreign", "backend-foreign", &foreign),
        ("/old", "backend-old", &expired),
    ]));

    let report = setup.probe().await;
    assert!(!report.passed());
    let refused = with_id(&report, "upstream-refused");
    assert_eq!(refused.len(), 3, "{report}");
    assert!(refused.iter().all(|f| f.severity == Severity::High));
    let refusal = |host: &str| {
        refused
            .iter()
            .find(|f| f.what.starts_with(&format!("the proxy refuses {host}: ")))
            .unwrap_or_else(|| panic!("no refusal of {host}:\n{report}"))
    };
    let api = refusal("backend-api");
    assert_contains(
        &api.what,
        "certificate not valid for name \"backend-api\"; it is valid for \"backend-web\"",
    );
    assert_eq!(api.location, "route /api -> https://backend-api:8443/");
    assert_contains(&api.fix, "--name backend-api");
    assert_contains(&refusal("backend-foreign").what, "unknown issuer");
    assert_contains(
        &refusal("backend-old").what,
        "certificate expired 2 days ago",
    );
    assert!(
        refused.iter().all(|f| !f.what.contains("backend-ok")),
        "{report}"
    );

    // The expired leaf is also reported as such; the others are within their validity.
    let old = only(&report, "cert-expired", Severity::High);
    assert_eq!(
        old.what,
        "backend-old's certificate \"CN=backend-old\" expired 2 days ago"
    );
    assert_eq!(old.location, "route /old -> https://backend-old:8443/");
    // Every upstream presented a chain, so each gets its info line, foreign issuer included.
    let chains = with_id(&report, "upstream-chain");
    assert_eq!(chains.len(), 4, "{report}");
    assert!(chains.iter().any(|f| f.what.contains(
        "backend-foreign presents \"CN=backend-foreign\" (SAN backend-foreign) issued by \
         \"CN=Foreign Intermediate\""
    )));
    assert_eq!(
        ids(&report),
        [
            "cert-expired",
            "upstream-chain",
            "upstream-chain",
            "upstream-chain",
            "upstream-chain",
            "upstream-refused",
            "upstream-refused",
            "upstream-refused",
        ]
    );
    for backend in [ok, misnamed, foreign, expired] {
        backend.join().await;
    }
}

#[tokio::test]
async fn one_certificate_served_for_two_services_is_a_shared_identity() {
    let setup = Setup::new(API_ROUTE);
    let both = setup.pki.leaf(&["backend-api", "backend-web"]);
    let api = serve(&both, "api").await;
    let web = serve(&both, "web").await;
    setup.routes(&route_blocks(&[
        ("/api", "backend-api", &api),
        ("/web", "backend-web", &web),
    ]));

    let report = setup.probe().await;
    assert_eq!(
        ids(&report),
        ["shared-identity", "upstream-chain", "upstream-chain"],
        "{report}"
    );
    let finding = only(&report, "shared-identity", Severity::High);
    assert_eq!(
        finding.what,
        "backend-web and backend-api present the same certificate: one leak compromises all"
    );
    assert_eq!(finding.location, "route /web -> https://backend-web:8443/");
    assert!(!report.passed());
    api.join().await;
    web.join().await;
}

/// Two certificates for `names` (one name each), both over one key pair, signed by the internal
/// intermediate: what reusing a key when renewing or adding a service looks like.
fn certificates_over_one_key(pki: &TestPki, names: [&str; 2]) -> [ServerCert; 2] {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &pki.intermediate.cert_pem(),
        rcgen::KeyPair::from_pem(&pki.intermediate.key_pem()).unwrap(),
    )
    .unwrap();
    let key = KeyType::P256.generate().unwrap();
    let validity = Validity::days(30);
    let mut serial = 0u8;
    names.map(|name| {
        serial += 1;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial]));
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), pki.intermediate.cert().clone()],
            chain_pem: format!("{}{}", cert.pem(), pki.intermediate.cert_pem()),
            key_pem: key.serialize_pem(),
        }
    })
}

#[tokio::test]
async fn two_certificates_over_one_key_are_a_shared_identity() {
    let setup = Setup::new(API_ROUTE);
    let [api_cert, web_cert] =
        certificates_over_one_key(&setup.pki, ["backend-api", "backend-web"]);
    assert_ne!(
        api_cert.chain[0], web_cert.chain[0],
        "two distinct certificates"
    );
    let api = serve(&api_cert, "api").await;
    let web = serve(&web_cert, "web").await;
    setup.routes(&route_blocks(&[
        ("/api", "backend-api", &api),
        ("/web", "backend-web", &web),
    ]));

    let report = setup.probe().await;
    assert_eq!(
        ids(&report),
        ["shared-identity", "upstream-chain", "upstream-chain"],
        "{report}"
    );
    assert_eq!(
        only(&report, "shared-identity", Severity::High).what,
        "backend-web and backend-api present the same public key: one leak compromises all"
    );
    api.join().await;
    web.join().await;
}

#[tokio::test]
async fn each_service_with_its_own_certificate_shares_nothing() {
    let setup = Setup::new(API_ROUTE);
    let api = serve(&setup.pki.leaf(&["backend-api"]), "api").await;
    let web = serve(&setup.pki.leaf(&["backend-web"]), "web").await;
    // Two routes to one service are one identity, not a shared one.
    setup.routes(&route_blocks(&[
        ("/api", "backend-api", &api),
        ("/api-v2", "backend-api", &api),
        ("/web", "backend-web", &web),
    ]));

    let report = setup.probe().await;
    assert_eq!(
        ids(&report),
        ["upstream-chain", "upstream-chain"],
        "{report}"
    );
    assert!(report.passed());
    api.join().await;
    web.join().await;
}

#[tokio::test]
async fn dead_upstream_port_is_unreachable_not_refused() {
    let setup = Setup::new(API_ROUTE);
    // A port held bound but never listening: connecting is refused, and no other test can take
    // the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = socket.local_addr().unwrap();
    setup.routes(&format!(
        "[[route]]\nprefix = \"/api\"\nupstream = \"https://backend-api:8443/\"\naddress = \"{dead}\"\n"
    ));

    let report = setup.probe().await;
    assert_eq!(ids(&report), ["upstream-unreachable"], "{report}");
    let finding = only(&report, "upstream-unreachable", Severity::Medium);
    assert_contains(
        &finding.what,
        &format!("cannot probe backend-api: cannot connect to backend-api:8443 at {dead}: "),
    );
    assert_eq!(finding.location, "route /api -> https://backend-api:8443/");
    assert!(report.passed(), "medium does not fail the audit");
    drop(socket);
}

#[tokio::test]
async fn upstream_presenting_a_ca_certificate_is_flagged() {
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    // The intermediate's own certificate and key served as a service's identity, and a
    // self-signed certificate as `openssl req -x509` makes it; a correct leaf as the control.
    let intermediate = ServerCert {
        chain: vec![pki.intermediate.cert().clone()],
        chain_pem: pki.intermediate.cert_pem(),
        key_pem: pki.intermediate.key_pem(),
    };
    let as_ca = serve(&intermediate, "api").await;
    let self_signed = serve(&pki.self_signed("backend-self"), "self").await;
    let ok = serve(&pki.leaf(&["backend-ok"]), "ok").await;
    setup.routes(&route_blocks(&[
        ("/api", "backend-api", &as_ca),
        ("/self", "backend-self", &self_signed),
        ("/ok", "backend-ok", &ok),
    ]));

    let report = setup.probe().await;
    let is_ca = with_id(&report, "upstream-cert-is-ca");
    assert_eq!(is_ca.len(), 2, "{report}");
    for (host, prefix) in [("backend-api", "/api"), ("backend-self", "/self")] {
        let finding = is_ca
            .iter()
            .find(|f| f.what.starts_with(host))
            .unwrap_or_else(|| panic!("{host} not flagged:\n{report}"));
        assert_eq!(finding.severity, Severity::High);
        assert_eq!(
            finding.what,
            format!("{host} presents a CA certificate as its own identity")
        );
        assert_eq!(
            finding.location,
            format!("route {prefix} -> https://{host}:8443/")
        );
    }
    // The proxy refuses both, and says why for the one that chains to the internal root.
    let refused = with_id(&report, "upstream-refused");
    assert_eq!(refused.len(), 2, "{report}");
    assert_contains(
        &refused
            .iter()
            .find(|f| f.what.contains("backend-api"))
            .unwrap()
            .what,
        "the upstream presents a CA certificate as its own",
    );
    let about_ok: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.what.contains("backend-ok"))
        .map(|f| f.id)
        .collect();
    assert_eq!(about_ok, ["upstream-chain"], "{report}");
    for backend in [as_ca, self_signed, ok] {
        backend.join().await;
    }
}

#[tokio::test]
async fn upstream_with_a_client_only_certificate_lacks_server_auth() {
    let setup = Setup::new(API_ROUTE);
    let client_only = serve(&setup.pki.client_only("backend-api"), "api").await;
    let server = serve(&setup.pki.leaf(&["backend-web"]), "web").await;
    setup.routes(&route_blocks(&[
        ("/api", "backend-api", &client_only),
        ("/web", "backend-web", &server),
    ]));

    let report = setup.probe().await;
    assert_eq!(
        ids(&report),
        [
            "upstream-chain",
            "upstream-chain",
            "upstream-no-server-auth",
            "upstream-refused"
        ],
        "{report}"
    );
    let finding = only(&report, "upstream-no-server-auth", Severity::High);
    assert_eq!(
        finding.what,
        "backend-api's certificate lacks the serverAuth extended key usage"
    );
    assert_eq!(finding.location, "route /api -> https://backend-api:8443/");
    assert_contains(
        &only(&report, "upstream-refused", Severity::High).what,
        "the proxy refuses backend-api: certificate is not for server authentication",
    );
    client_only.join().await;
    server.join().await;
}

#[tokio::test]
async fn upstream_whose_certificate_has_no_extended_key_usage_is_refused() {
    // The probe judges with the proxy's own verifier, rules beyond webpki's included.
    let setup = Setup::new(API_ROUTE);
    let no_eku = serve(&setup.pki.leaf_without_eku("backend-api"), "api").await;
    setup.routes(&route_blocks(&[("/api", "backend-api", &no_eku)]));

    let report = setup.probe().await;
    assert_eq!(
        ids(&report),
        [
            "upstream-chain",
            "upstream-no-server-auth",
            "upstream-refused"
        ],
        "{report}"
    );
    assert_eq!(
        only(&report, "upstream-no-server-auth", Severity::High).what,
        "backend-api's certificate has no extended key usage extension, so no serverAuth"
    );
    assert_contains(
        &only(&report, "upstream-refused", Severity::High).what,
        "the proxy refuses backend-api: certificate has no extendedKeyUsage extension: a \
         service certificate must carry serverAuth",
    );
    no_eku.join().await;
}

// ---------------------------------------------------------------------------------------------
// Compose

/// The architecture as it should be: only the proxy publishes a port, it sits on `edge` and on
/// the internal `backend` network, each backend mounts its own certificate and key, and every
/// service mounts the internal root certificate (short and long bind syntax, list and map
/// networks).
const COMPOSE: &str = "\
services:
  proxy:
    image: trustgate
    ports:
      - \"443:8443\"
    networks: [edge, backend]
    volumes:
      - ./proxy:/etc/trustgate:ro
  backend-api:
    image: api
    networks: [backend]
    volumes:
      - ./api:/certs:ro
  backend-web:
    image: web
    networks:
      backend: {}
    volumes:
      - type: bind
        source: ./web
        target: /certs
        read_only: true
      - type: volume
        source: webdata
        target: /data
networks:
  edge: {}
  backend:
    internal: true
volumes:
  webdata: {}
";

/// `COMPOSE` with its one occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        COMPOSE.matches(from).count(),
        1,
        "{from:?} must occur once in COMPOSE"
    );
    COMPOSE.replacen(from, to, 1)
}

/// A deployment folder for `COMPOSE`, apart from the config's folder (so only the compose
/// checks can see what is mounted): `proxy/ca.pem`, `api/` and `web/` each with its own leaf,
/// key and the internal root.
struct Deploy {
    dir: tempfile::TempDir,
}

impl Deploy {
    fn new(pki: &TestPki) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = pki.root.cert_pem();
        write(&dir.path().join("proxy/ca.pem"), &root);
        for name in ["api", "web"] {
            let issued = leaf(pki, &format!("backend-{name}"));
            write(
                &dir.path().join(format!("{name}/cert.pem")),
                &issued.cert_pem,
            );
            write(&dir.path().join(format!("{name}/key.pem")), &issued.key_pem);
            write(&dir.path().join(format!("{name}/ca.pem")), &root);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` as `compose.yaml` and returns its path.
    fn compose(&self, text: &str) -> PathBuf {
        let path = self.path("compose.yaml");
        write(&path, text);
        path
    }
}

#[tokio::test]
async fn correct_compose_topology_reports_nothing() {
    // Also the proof that one CA certificate mounted into every service is fine.
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);
    let compose = deploy.compose(COMPOSE);
    assert_clean(&setup.compose(&compose, "proxy").await);
}

#[tokio::test]
async fn backend_publishing_a_port_is_high() {
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);
    let compose = deploy.compose(
        &edit(
            "    image: api\n",
            "    image: api\n    ports:\n      - \"8443:8443\"\n",
        )
        .replacen(
            "    image: web\n",
            "    image: web\n    ports:\n      - target: 8443\n        published: 9443\n",
            1,
        ),
    );

    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(
        ids(&report),
        ["backend-publishes-port", "backend-publishes-port"],
        "{report}"
    );
    let published = with_id(&report, "backend-publishes-port");
    assert!(published.iter().all(|f| f.severity == Severity::High));
    let at = |name: &str| format!("{}: services.{name}.ports", compose.display());
    assert_eq!(
        published[0].what,
        "service \"backend-api\" publishes 8443:8443: only the proxy may be reachable from outside"
    );
    assert_eq!(published[0].location, at("backend-api"));
    assert_contains(
        &published[1].what,
        "service \"backend-web\" publishes 9443:8443",
    );
    assert_eq!(published[1].location, at("backend-web"));
    assert!(!report.passed());
}

#[tokio::test]
async fn backend_on_a_network_that_is_not_internal_is_high() {
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);
    // backend-api also joins `edge`; backend-web names no network, so compose puts it on
    // `default`.
    let compose = deploy.compose(
        &edit(
            "    networks: [backend]\n",
            "    networks: [backend, edge]\n",
        )
        .replacen("    networks:\n      backend: {}\n", "", 1),
    );

    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(
        ids(&report),
        ["backend-not-internal", "backend-not-internal"],
        "{report}"
    );
    let found = with_id(&report, "backend-not-internal");
    assert!(found.iter().all(|f| f.severity == Severity::High));
    assert_eq!(
        found[0].what,
        "service \"backend-api\" is on network \"edge\", which is not internal: true"
    );
    assert_eq!(
        found[0].location,
        format!("{}: services.backend-api.networks", compose.display())
    );
    assert_eq!(
        found[1].what,
        "service \"backend-web\" is on network \"default\", which is not internal: true"
    );
}

#[tokio::test]
async fn proxy_on_no_internal_network_is_high() {
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);
    let compose = deploy.compose(&edit(
        "    networks: [edge, backend]\n",
        "    networks: [edge]\n",
    ));

    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(ids(&report), ["proxy-not-internal"], "{report}");
    let finding = only(&report, "proxy-not-internal", Severity::High);
    assert_contains(
        &finding.what,
        "the proxy \"proxy\" is on no internal network",
    );
    assert_eq!(
        finding.location,
        format!("{}: services.proxy.networks", compose.display())
    );

    // `internal: false` is not internal either.
    let compose = deploy.compose(&edit("    internal: true\n", "    internal: false\n"));
    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(
        ids(&report),
        [
            "backend-not-internal",
            "backend-not-internal",
            "proxy-not-internal"
        ],
        "{report}"
    );
}

#[tokio::test]
async fn missing_proxy_service_is_medium_naming_it_fixes_that() {
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);
    let compose = deploy.compose(&edit("  proxy:\n", "  gateway:\n"));

    // Named right, the renamed proxy is as clean as before.
    assert_clean(&setup.compose(&compose, "gateway").await);

    let report = setup.compose(&compose, "proxy").await;
    let finding = only(&report, "compose-no-proxy", Severity::Medium);
    assert_eq!(
        finding.what,
        "no service named \"proxy\": the proxy's own checks were skipped"
    );
    assert_eq!(finding.location, display(&compose));
    assert_contains(&finding.fix, "--proxy-service");
    // Unknown as the proxy, `gateway` is judged as a backend: it publishes and is on `edge`.
    assert_eq!(
        ids(&report),
        [
            "backend-not-internal",
            "backend-publishes-port",
            "compose-no-proxy"
        ],
        "{report}"
    );
    assert!(
        report
            .findings
            .iter()
            .filter(|f| f.id != "compose-no-proxy")
            .all(|f| f.what.starts_with("service \"gateway\" ")),
        "{report}"
    );
}

#[tokio::test]
async fn ca_key_in_a_bind_mount_is_critical_short_and_long_syntax() {
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    let deploy = Deploy::new(pki);
    // The intermediate's folder mounted into backend-api (short syntax) and an `offline` folder
    // mounted into backend-web (long syntax): fine while neither holds a CA key.
    write(&deploy.path("ca/ca.pem"), &pki.intermediate.cert_pem());
    write(
        &deploy.path("offline/README"),
        "the root key lives on a USB stick\n",
    );
    let mounted = edit(
        "      - ./api:/certs:ro\n",
        "      - ./api:/certs:ro\n      - ./ca:/ca:ro\n",
    )
    .replacen(
        "      - type: volume\n",
        "      - type: bind\n        source: ./offline\n        target: /offline\n      - type: volume\n",
        1,
    );
    let compose = deploy.compose(&mounted);
    assert_clean(&setup.compose(&compose, "proxy").await);

    let intermediate_key = deploy.path("ca/ca.key");
    let root_key = deploy.path("offline/root.key");
    write(&intermediate_key, &pki.intermediate.key_pem());
    write(&root_key, &pki.root.key_pem());
    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(
        ids(&report),
        ["ca-key-exposed", "ca-key-exposed"],
        "{report}"
    );
    let exposed = with_id(&report, "ca-key-exposed");
    assert!(exposed.iter().all(|f| f.severity == Severity::Critical));
    let at = |path: &Path| {
        exposed
            .iter()
            .find(|f| f.location == real(path))
            .unwrap_or_else(|| panic!("nothing at {}:\n{report}", path.display()))
    };
    assert_eq!(
        at(&intermediate_key).what,
        "the private key of the CA \"CN=Test Internal Intermediate\" is mounted into the \
         container \"backend-api\""
    );
    assert_eq!(
        at(&root_key).what,
        "the private key of the root CA \"CN=Test Internal Root\" is mounted into the container \
         \"backend-web\": the root must be offline"
    );

    // A single key file bind-mounted by itself is found too.
    let single = edit(
        "      - ./proxy:/etc/trustgate:ro\n",
        "      - ./proxy:/etc/trustgate:ro\n      - type: bind\n        source: ./offline/root.key\n        target: /root.key\n",
    );
    let compose = deploy.compose(&single);
    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
    assert_contains(
        &only(&report, "ca-key-exposed", Severity::Critical).what,
        "mounted into the container \"proxy\": the root must be offline",
    );
}

#[tokio::test]
async fn one_leaf_mounted_into_two_services_is_shared() {
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);

    // The same folder mounted into both backends.
    let compose = deploy.compose(&edit("        source: ./web\n", "        source: ./api\n"));
    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(ids(&report), ["shared-certificate"], "{report}");
    let finding = only(&report, "shared-certificate", Severity::High);
    assert_eq!(
        finding.what,
        "the certificate \"CN=backend-api\" is mounted into backend-api, backend-web: one leak \
         compromises all"
    );
    assert_eq!(
        finding.location,
        format!(
            "{}: {}",
            compose.display(),
            real(&deploy.path("api/cert.pem"))
        )
    );

    // Identical copies in each service's own folder are the same certificate.
    std::fs::copy(deploy.path("api/cert.pem"), deploy.path("web/cert.pem")).unwrap();
    std::fs::copy(deploy.path("api/key.pem"), deploy.path("web/key.pem")).unwrap();
    let compose = deploy.compose(COMPOSE);
    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(ids(&report), ["shared-certificate"], "{report}");
    assert_contains(
        &only(&report, "shared-certificate", Severity::High).what,
        "mounted into backend-api, backend-web",
    );
}

#[tokio::test]
async fn compose_file_that_is_not_yaml_or_missing_is_reported() {
    let setup = Setup::new(API_ROUTE);
    let deploy = Deploy::new(&setup.pki);

    let compose = deploy.compose("services:\n  proxy: [unclosed\n    image: trustgate\n");
    let report = setup.compose(&compose, "proxy").await;
    assert_eq!(ids(&report), ["compose-invalid"], "{report}");
    let finding = only(&report, "compose-invalid", Severity::High);
    assert_contains(&finding.what, "the compose file is not valid YAML: ");
    assert_eq!(finding.location, display(&compose));

    let missing = deploy.path("docker-compose.yml");
    let report = setup.compose(&missing, "proxy").await;
    assert_eq!(ids(&report), ["compose-unreadable"], "{report}");
    assert_contains(
        &only(&report, "compose-unreadable", Severity::High).what,
        "cannot read the compose file: ",
    );
}

// ---------------------------------------------------------------------------------------------
// The binary

/// Runs `trustgate audit -c <config> --warn-days 7 --system-store <empty> extra...`.
fn audit_bin(setup: &Setup, extra: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .arg("audit")
        .arg("-c")
        .arg(&setup.config)
        .args(["--warn-days", &WARN_DAYS.to_string()])
        .arg("--system-store")
        .arg(setup.system_store())
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[test]
fn binary_exits_1_on_a_critical_finding_and_0_when_clean() {
    let setup = Setup::new(API_ROUTE);
    let (code, stdout) = audit_bin(&setup, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(stdout, "0 critical, 0 high, 0 medium, 0 info: PASS\n");

    let key = setup.pki.path("root.key");
    write(&key, &setup.pki.root.key_pem());
    let (code, stdout) = audit_bin(&setup, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with(
            "CRITICAL ca-key-exposed: the private key of the root CA \"CN=Test Internal Root\""
        ),
        "{stdout}"
    );
    assert_contains(&stdout, &format!("         where: {}\n", real(&key)));
    assert!(
        stdout.ends_with("1 critical, 0 high, 0 medium, 0 info: FAIL\n"),
        "{stdout}"
    );
}

#[test]
fn binary_json_output_has_passed_and_the_findings() {
    let setup = Setup::new(API_ROUTE);
    let (code, stdout) = audit_bin(&setup, &["--format", "json"]);
    assert_eq!(code, Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json, serde_json::json!({"passed": true, "findings": []}));

    // A readable key (medium) alone still passes; with a CA key (critical) it fails.
    let listener_key = setup.pki.path("public/privkey.pem");
    chmod(&listener_key, 0o644);
    let (code, stdout) = audit_bin(&setup, &["--format", "json"]);
    assert_eq!(code, Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["findings"][0]["id"], "key-readable");

    let ca_key = setup.pki.path("ca.key");
    write(&ca_key, &setup.pki.root.key_pem());
    let (code, stdout) = audit_bin(&setup, &["--format", "json"]);
    assert_eq!(code, Some(1), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["passed"], false);
    let findings = json["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2, "{stdout}");
    // Worst first, each with the five fields under their JSON names.
    assert_eq!(findings[0]["severity"], "critical");
    assert_eq!(findings[0]["id"], "ca-key-exposed");
    assert_eq!(findings[0]["where"], real(&ca_key));
    assert_contains(
        findings[0]["what"].as_str().unwrap(),
        "the root must be offline",
    );
    assert_contains(findings[0]["fix"].as_str().unwrap(), "offline storage");
    assert_eq!(findings[1]["severity"], "medium");
    assert_eq!(findings[1]["id"], "key-readable");
    assert_eq!(findings[1]["where"], display(&listener_key));
    assert_eq!(
        findings[1]["fix"],
        format!("chmod 600 {}", listener_key.display())
    );
    let mut keys: Vec<&str> = findings[1]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["fix", "id", "severity", "what", "where"]);
}

#[tokio::test]
async fn bind_paths_as_compose_resolves_them_secrets_and_merge_keys() {
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    let deploy = Deploy::new(pki);
    write(&deploy.path("ca/ca.pem"), &pki.intermediate.cert_pem());
    write(&deploy.path("ca/ca.key"), &pki.intermediate.key_pem());

    // Long syntax with a bare relative source is a bind mount of ./ca.
    let bare = edit("        source: ./web\n", "        source: ca\n");
    let report = setup.compose(&deploy.compose(&bare), "proxy").await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
    assert_contains(&report.findings[0].what, "\"backend-web\"");

    // A top-level secret with `file:` used by a service puts the file in the container.
    let secret = format!(
        "{}secrets:\n  ca_key:\n    file: ./ca/ca.key\n  ca_cert:\n    file: ./ca/ca.pem\n",
        edit(
            "    image: api\n",
            "    image: api\n    secrets: [ca_key, {source: ca_cert}]\n"
        )
    );
    let report = setup.compose(&deploy.compose(&secret), "proxy").await;
    assert_eq!(ids(&report), ["ca-key-exposed"], "{report}");
    assert_contains(&report.findings[0].what, "\"backend-api\"");

    // Networks taken from a merge key count: no false "default network" finding.
    let merged = format!(
        "x-backend: &backend\n  networks: [backend]\n{}",
        edit(
            "  backend-api:\n    image: api\n    networks: [backend]\n",
            "  backend-api:\n    <<: *backend\n    image: api\n",
        )
    );
    assert_clean(&setup.compose(&deploy.compose(&merged), "proxy").await);
}

#[tokio::test]
async fn an_unreadable_system_store_is_reported_not_ignored() {
    let setup = Setup::new(API_ROUTE);
    let options = trustgate::audit::Options {
        config: setup.pki.path("trustgate.toml"),
        compose: None,
        proxy_service: "proxy".into(),
        probe: false,
        warn_days: WARN_DAYS,
        system_store: Some(setup.pki.path("no-such-store.pem")),
    };
    let report = trustgate::audit::run(&options).await;
    assert_eq!(ids(&report), ["system-store-unreadable"], "{report}");
    assert!(report.passed(), "a medium finding does not fail the audit");
}

// ---------------------------------------------------------------------------------------------
// Revocation (crl-expired, crl-expiring, crl-missing), client trust (client-ca-looks-public) and
// the proxy's client certificate (upstream-client-cert-expiring)

/// A PEM CRL signed by `ca`, revoking nothing, whose nextUpdate is `next` from now (negative:
/// already passed). rcgen through the crate's own CA, as `trustgate pki crl` signs them.
fn crl(ca: &Ca, next: time::Duration) -> String {
    let key = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem(), key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now.min(now + next) - time::Duration::days(1),
        next_update: now + next,
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&issuer).unwrap().pem().unwrap()
}

const WEEK: time::Duration = time::Duration::days(7);

/// `[upstream_tls]` lines naming the root's and the intermediate's CRLs, both written valid for
/// a week, plus `extra` lines.
fn upstream_crls(setup: &Setup, extra: &str) -> String {
    write(&setup.pki.path("crl/root.crl"), &crl(&setup.pki.root, WEEK));
    write(
        &setup.pki.path("crl/intermediate.crl"),
        &crl(&setup.pki.intermediate, WEEK),
    );
    format!("crl = [\"crl/root.crl\", \"crl/intermediate.crl\"]\n{extra}")
}

/// A client CA (its certificate in `clients/ca.pem`, its CRL valid for a week in
/// `clients/ca.crl`) and the `[server.client_auth]` table naming both, plus `extra` lines.
fn client_auth(setup: &Setup, extra: &str) -> (Ca, String) {
    let ca = Ca::root("Test Client Root", Validity::days(30)).unwrap();
    write(&setup.pki.path("clients/ca.pem"), &ca.cert_pem());
    write(&setup.pki.path("clients/ca.crl"), &crl(&ca, WEEK));
    let table = format!(
        "\n[server.client_auth]\nca = \"clients/ca.pem\"\ncrl = \"clients/ca.crl\"\n\
         mode = \"optional\"\n{extra}"
    );
    (ca, table)
}

#[tokio::test]
async fn crl_reaching_its_next_update_within_48_hours_is_medium_on_both_sides() {
    let setup = Setup::new("");
    let upstream = upstream_crls(&setup, "");
    let (client_ca, server) = client_auth(&setup, "");
    setup.tables(&server, &upstream, API_ROUTE);
    // The control: every CA in use publishes a CRL good for a week.
    let config = Config::load(&setup.config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstream_tls.crls.crls.len(), 2);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_clean(&setup.audit().await);

    let intermediate_crl = setup.pki.path("crl/intermediate.crl");
    write(
        &intermediate_crl,
        &crl(&setup.pki.intermediate, time::Duration::hours(20)),
    );
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["crl-expiring"], "{report}");
    let finding = only(&report, "crl-expiring", Severity::Medium);
    assert_eq!(
        finding.what,
        "the upstream CRL from \"CN=Test Internal Intermediate\" reaches its nextUpdate in 20 \
         hours; after that every certificate it covers is refused (crl_expired = \"deny\")"
    );
    assert_eq!(finding.location, display(&intermediate_crl));
    assert_contains(&finding.fix, "trustgate pki crl --ca CADIR --out");
    assert_contains(&finding.fix, "cron");
    assert!(report.passed(), "medium does not fail the audit");

    // 49 hours is outside the window; on the client side 10 hours is inside it.
    write(
        &intermediate_crl,
        &crl(&setup.pki.intermediate, time::Duration::hours(49)),
    );
    let client_crl = setup.pki.path("clients/ca.crl");
    write(&client_crl, &crl(&client_ca, time::Duration::hours(10)));
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["crl-expiring"], "{report}");
    let finding = only(&report, "crl-expiring", Severity::Medium);
    assert_contains(
        &finding.what,
        "the client CRL from \"CN=Test Client Root\" reaches its nextUpdate in 10 hours",
    );
    assert_eq!(finding.location, display(&client_crl));
}

#[tokio::test]
async fn expired_crl_is_high_whether_allowed_and_used_or_denied_and_the_config_refused() {
    let setup = Setup::new("");
    let upstream = upstream_crls(&setup, "crl_expired = \"allow\"\n");
    let (client_ca, server) = client_auth(&setup, "");
    setup.tables(&server, &upstream, API_ROUTE);
    assert_clean(&setup.audit().await);

    // Under "allow" the config loads with a warning and the stale CRL stays in use.
    let intermediate_crl = setup.pki.path("crl/intermediate.crl");
    write(
        &intermediate_crl,
        &crl(&setup.pki.intermediate, time::Duration::hours(-3)),
    );
    let config = Config::load(&setup.config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["crl-expired"], "{report}");
    let finding = only(&report, "crl-expired", Severity::High);
    assert_eq!(
        finding.what,
        "the upstream CRL from \"CN=Test Internal Intermediate\" passed its nextUpdate 3 hours \
         ago and is still used (crl_expired = \"allow\"): revocations published since are not seen"
    );
    assert_eq!(finding.location, display(&intermediate_crl));
    assert!(!report.passed());

    // Under "deny" (the default) the config refuses it; the audit still names the file.
    setup.tables(&server, &upstream_crls(&setup, ""), API_ROUTE);
    write(
        &intermediate_crl,
        &crl(&setup.pki.intermediate, time::Duration::hours(-3)),
    );
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["config-invalid", "crl-expired"], "{report}");
    let finding = only(&report, "crl-expired", Severity::High);
    assert_eq!(
        finding.what,
        "the upstream CRL from \"CN=Test Internal Intermediate\" passed its nextUpdate 3 hours \
         ago: with crl_expired = \"deny\" every certificate it covers is refused, so the config \
         does not load"
    );
    assert_eq!(finding.location, display(&intermediate_crl));

    // The client side, refused the same way.
    write(
        &intermediate_crl,
        &crl(&setup.pki.intermediate, time::Duration::days(7)),
    );
    let client_crl = setup.pki.path("clients/ca.crl");
    write(&client_crl, &crl(&client_ca, time::Duration::days(-2)));
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["config-invalid", "crl-expired"], "{report}");
    let finding = only(&report, "crl-expired", Severity::High);
    assert_contains(
        &finding.what,
        "the client CRL from \"CN=Test Client Root\" passed its nextUpdate 2 days ago",
    );
    assert_eq!(finding.location, display(&client_crl));
}

#[tokio::test]
async fn anchor_without_a_crl_under_chain_is_missing_high_on_deny_medium_on_allow() {
    let setup = Setup::new("");
    write(
        &setup.pki.path("crl/intermediate.crl"),
        &crl(&setup.pki.intermediate, WEEK),
    );
    // Only the intermediate's CRL: the root, the anchor, issues the intermediate unchecked.
    let only_intermediate = "crl = \"crl/intermediate.crl\"\n";
    setup.tables("", only_intermediate, API_ROUTE);
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["crl-missing"], "{report}");
    let finding = only(&report, "crl-missing", Severity::High);
    assert_eq!(
        finding.what,
        "revocation = \"chain\" checks every certificate the upstream anchor \"CN=Test Internal \
         Root\" issues (a root issues the intermediates), but [upstream_tls] crl holds no CRL \
         from it: unknown_status = \"deny\" refuses every one of those certificates"
    );
    assert_eq!(finding.location, display(&setup.pki.path("ca.pem")));
    assert_contains(&finding.fix, "trustgate pki crl --root ROOTDIR --out FILE");
    assert!(!report.passed());

    setup.tables(
        "",
        &format!("{only_intermediate}unknown_status = \"allow\"\n"),
        API_ROUTE,
    );
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["crl-missing"], "{report}");
    assert_contains(
        &only(&report, "crl-missing", Severity::Medium).what,
        "unknown_status = \"allow\" lets those certificates pass unchecked",
    );

    // "leaf" checks only leaves, which the intermediate issues; and with the root's CRL too,
    // "chain" is covered.
    setup.tables(
        "",
        &format!("{only_intermediate}revocation = \"leaf\"\n"),
        API_ROUTE,
    );
    assert_clean(&setup.audit().await);
    setup.tables("", &upstream_crls(&setup, ""), API_ROUTE);
    assert_clean(&setup.audit().await);
}

#[tokio::test]
async fn client_anchor_without_its_own_crl_is_missing() {
    let setup = Setup::new(API_ROUTE);
    let (_client_ca, covered) = client_auth(&setup, "");
    setup.tables(&covered, "", API_ROUTE);
    assert_clean(&setup.audit().await);

    // A CRL, but from another CA (the upstream root's): the client root publishes none here.
    write(&setup.pki.path("crl/root.crl"), &crl(&setup.pki.root, WEEK));
    let other = covered.replace("crl = \"clients/ca.crl\"", "crl = \"crl/root.crl\"");
    setup.tables(&other, "", API_ROUTE);
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["crl-missing"], "{report}");
    let finding = only(&report, "crl-missing", Severity::High);
    assert_contains(
        &finding.what,
        "the client anchor \"CN=Test Client Root\" issues (a root issues the intermediates), but \
         [server.client_auth] crl holds no CRL from it",
    );
    assert_eq!(finding.location, display(&setup.pki.path("clients/ca.pem")));

    // No CRL at all is no revocation checking: a choice, not a gap.
    let none = covered.replace("crl = \"clients/ca.crl\"\n", "");
    setup.tables(&none, "", API_ROUTE);
    assert_clean(&setup.audit().await);
}

#[tokio::test]
async fn probe_finds_the_presented_intermediate_without_a_crl_not_a_foreign_one() {
    let setup = Setup::new(API_ROUTE);
    let pki = &setup.pki;
    let api = serve(&pki.leaf(&["backend-api"]), "api").await;
    let foreign = serve(&pki.foreign("backend-foreign"), "foreign").await;
    let routes = route_blocks(&[
        ("/api", "backend-api", &api),
        ("/foreign", "backend-foreign", &foreign),
    ]);
    write(&pki.path("crl/root.crl"), &crl(&pki.root, WEEK));
    let only_root = "crl = \"crl/root.crl\"\nunknown_status = \"allow\"\n";
    setup.tables("", only_root, &routes);
    // Without --probe the audit cannot know of the intermediate: the anchor has its CRL.
    assert_clean(&setup.audit().await);

    let report = setup.probe().await;
    assert_eq!(
        ids(&report),
        [
            "crl-missing",
            "upstream-chain",
            "upstream-chain",
            "upstream-refused"
        ],
        "{report}"
    );
    let finding = only(&report, "crl-missing", Severity::Medium);
    assert_eq!(
        finding.what,
        "revocation = \"chain\" checks every certificate the intermediate \"CN=Test Internal \
         Intermediate\" issues (the upstream presents it), but [upstream_tls] crl holds no CRL \
         from it: unknown_status = \"allow\" lets those certificates pass unchecked, so revoking \
         one has no effect"
    );
    assert_eq!(finding.location, "route /api -> https://backend-api:8443/");
    assert_contains(&finding.fix, "trustgate pki crl --ca CADIR --out FILE");
    // The foreign upstream is refused for its issuer; its intermediate is not the proxy's.
    assert_contains(
        &only(&report, "upstream-refused", Severity::High).what,
        "backend-foreign",
    );

    // Under "deny" the same gap refuses the upstream, and the finding is high.
    setup.tables("", "crl = \"crl/root.crl\"\n", &routes);
    let report = setup.probe().await;
    assert_eq!(
        only(&report, "crl-missing", Severity::High).location,
        finding.location
    );
    assert!(
        with_id(&report, "upstream-refused")
            .iter()
            .any(|f| f.what.starts_with("the proxy refuses backend-api: ")),
        "{report}"
    );

    // With the intermediate's CRL as well, nothing is missing.
    setup.tables("", &upstream_crls(&setup, ""), &routes);
    let report = setup.probe().await;
    assert!(with_id(&report, "crl-missing").is_empty(), "{report}");
    assert!(
        with_id(&report, "upstream-refused")
            .iter()
            .all(|f| !f.what.contains("backend-api")),
        "{report}"
    );
    api.join().await;
    foreign.join().await;
}

#[tokio::test]
async fn client_ca_bundle_of_eleven_or_holding_a_system_root_looks_public() {
    let setup = Setup::new(API_ROUTE);
    let bundle = setup.pki.path("clients/bundle.pem");
    let server = "\n[server.client_auth]\nca = \"clients/bundle.pem\"\n";
    setup.tables(server, "", API_ROUTE);

    write(&bundle, &roots(11));
    let report = setup.audit().await;
    // The loader refuses it by the same rule, so the audit reads the bundle from the TOML.
    assert_eq!(
        ids(&report),
        ["client-ca-looks-public", "config-invalid"],
        "{report}"
    );
    assert_contains(
        &only(&report, "config-invalid", Severity::Critical).what,
        &format!(
            "server.client_auth.ca: {} holds 11 CA certificates",
            display(&bundle)
        ),
    );
    let finding = only(&report, "client-ca-looks-public", Severity::High);
    assert_contains(
        &finding.what,
        "the client certificate trust bundle holds 11 CA certificates",
    );
    assert_eq!(finding.location, display(&bundle));
    assert_contains(&finding.fix, "[server.client_auth].ca");

    write(&bundle, &roots(10));
    assert_clean(&setup.audit().await);

    // One client root that is also in the system store; the upstream anchor is not.
    write(&bundle, &roots(2));
    let client_roots = std::fs::read_to_string(&bundle).unwrap();
    let second = &client_roots[client_roots.find("-----END").unwrap()..];
    let second = &second[second.find("-----BEGIN").unwrap()..];
    write(&setup.system_store(), second);
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["client-ca-looks-public"], "{report}");
    assert_eq!(
        only(&report, "client-ca-looks-public", Severity::High).what,
        "client trust anchor \"CN=Bundle Root 1\" is also in the system trust store: anyone who \
         gets a certificate from that public CA passes client authentication"
    );
}

/// The proxy's client certificate for `name` from the internal intermediate, valid for
/// `validity`, written as `<stem>.crt` (leaf + intermediate) and `<stem>.key`.
fn client_cert(setup: &Setup, stem: &str, name: &str, validity: Validity) -> PathBuf {
    let request = LeafRequest {
        names: vec![name.into()],
        validity,
        usage: Usage::Client,
    };
    let issued = setup.pki.intermediate.issue(&request).unwrap();
    let cert = setup.pki.path(&format!("{stem}.crt"));
    write(
        &cert,
        &format!("{}{}", issued.cert_pem, setup.pki.intermediate.cert_pem()),
    );
    write(&setup.pki.path(&format!("{stem}.key")), &issued.key_pem);
    cert
}

#[tokio::test]
async fn proxy_client_certificate_expiring_is_medium_expired_is_high_per_route_too() {
    let setup = Setup::new(API_ROUTE);
    let global = "client_cert = \"proxy/client.crt\"\nclient_key = \"proxy/client.key\"\n";
    let reports = "[[route]]\nprefix = \"/reports\"\nupstream = \"https://backend-reports:8443/\"\n\
         upstream_client_cert = \"proxy/reports.crt\"\nupstream_client_key = \"proxy/reports.key\"\n";
    let routes = format!("{API_ROUTE}\n{reports}");
    client_cert(
        &setup,
        "proxy/client",
        "trustgate-proxy",
        Validity::days(20),
    );
    let reports_cert = client_cert(
        &setup,
        "proxy/reports",
        "trustgate-reports",
        Validity::days(20),
    );
    setup.tables("", global, &routes);
    assert_clean(&setup.audit().await);

    // Within --warn-days (7): the global identity...
    let cert = client_cert(&setup, "proxy/client", "trustgate-proxy", Validity::days(5));
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["upstream-client-cert-expiring"], "{report}");
    let finding = only(&report, "upstream-client-cert-expiring", Severity::Medium);
    assert_eq!(
        finding.what,
        "the proxy's client certificate \"CN=trustgate-proxy\" expires in 5 days: backends that \
         require a client certificate refuse the proxy once it has expired"
    );
    assert_eq!(finding.location, display(&cert));
    assert_contains(&finding.fix, "trustgate pki renew --ca CADIR --certs");
    assert!(report.passed());

    // ...and a route's own, reported once, naming the route.
    client_cert(
        &setup,
        "proxy/client",
        "trustgate-proxy",
        Validity::days(20),
    );
    client_cert(
        &setup,
        "proxy/reports",
        "trustgate-reports",
        Validity::days(3),
    );
    let report = setup.audit().await;
    assert_eq!(ids(&report), ["upstream-client-cert-expiring"], "{report}");
    let finding = only(&report, "upstream-client-cert-expiring", Severity::Medium);
    assert_contains(
        &finding.what,
        "the client certificate of route /reports \"CN=trustgate-reports\" expires in 3 days",
    );
    assert_eq!(finding.location, display(&reports_cert));

    // Expired: the loader refuses it, the audit reads it from the TOML and says high.
    client_cert(
        &setup,
        "proxy/client",
        "trustgate-proxy",
        Validity::relative(time::Duration::days(-30), time::Duration::days(-2)),
    );
    client_cert(
        &setup,
        "proxy/reports",
        "trustgate-reports",
        Validity::days(20),
    );
    let report = setup.audit().await;
    assert_eq!(
        ids(&report),
        ["config-invalid", "upstream-client-cert-expiring"],
        "{report}"
    );
    let finding = only(&report, "upstream-client-cert-expiring", Severity::High);
    assert_contains(
        &finding.what,
        "the proxy's client certificate \"CN=trustgate-proxy\" expired 2 days ago",
    );
    assert_eq!(finding.location, display(&cert));
    assert!(!report.passed());
}
