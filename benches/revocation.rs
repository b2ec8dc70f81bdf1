//! What revocation checking costs an upstream handshake: the proxy's verifier judging a backend's
//! chain (internal root -> intermediate -> leaf) with no CRL, and with the intermediate's CRL
//! holding 10,000 revoked serials plus the root's CRL (`revocation = "chain"`, the default).
//!
//! Two measurements per side:
//! - `verify`: `ServerCertVerifier::verify_server_cert` alone, the part CRLs change (webpki checks
//!   each CRL's signature on every handshake, then looks the serial up);
//! - `handshake`: a whole TLS 1.3 handshake in memory (rustls client and server, no sockets),
//!   which is what a new upstream connection costs the proxy's CPU.
//!
//! Pooled keep-alive connections never repeat the handshake, so per request the cost is this
//! figure divided by the requests each connection carries. After criterion's groups, `main` prints
//! `ratio <case> crl10k/plain` from interleaved rounds, as benches/proxy.rs does.
//! `cargo test --benches` runs it once as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConnection, ServerConnection};
use trustgate::pki::{Ca, LeafRequest, Validity};
use trustgate::tls::revocation::{self, CrlSet, Policy};
use trustgate::tls::verify::ServerVerifier;

const REVOKED: usize = 10_000;

struct Side {
    name: &'static str,
    verifier: Arc<ServerVerifier>,
}

struct Setup {
    chain: Vec<CertificateDer<'static>>,
    server: Arc<rustls::ServerConfig>,
    sides: [Side; 2],
}

fn issuer(ca: &Ca) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::from_pem(&ca.key_pem()).expect("CA key");
    rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem(), key).expect("CA issuer")
}

/// A CRL from `ca` revoking `count` made-up serials.
fn crl(ca: &Ca, count: usize) -> String {
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = (0..count as u64)
        .map(|i| rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&(0x7000_0000_0000 + i).to_be_bytes()),
            revocation_time: now - time::Duration::hours(1),
            reason_code: Some(rcgen::RevocationReason::Superseded),
            invalidity_date: None,
        })
        .collect();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params
        .signed_by(&issuer(ca))
        .expect("CRL")
        .pem()
        .expect("PEM")
}

impl Setup {
    fn new() -> Self {
        let root = Ca::root("Bench Root", Validity::days(2)).expect("root");
        let intermediate = root
            .intermediate("Bench Intermediate", Validity::days(2), &[])
            .expect("intermediate");
        let leaf = intermediate
            .issue(&LeafRequest::server("backend-api", 1))
            .expect("leaf");
        let chain = vec![leaf.cert.clone(), intermediate.cert().clone()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let server = trustgate::tls::server::config(chain.clone(), key, None).expect("server");
        let anchors = [root.cert().clone()];
        let path = std::path::Path::new("bench.crl");
        let pem = crl(&intermediate, REVOKED) + &crl(&root, 0);
        let crls = revocation::parse(path, pem.as_bytes()).expect("CRLs parse");
        assert_eq!(crls[0].revoked_count(), REVOKED);
        let with_crls = CrlSet {
            crls,
            policy: Policy::default(),
        };
        let verifier =
            |crls: &CrlSet| trustgate::tls::client::verifier(&anchors, crls).expect("verifier");
        Self {
            chain,
            server,
            sides: [
                Side {
                    name: "plain",
                    verifier: verifier(&CrlSet::default()),
                },
                Side {
                    name: "crl10k",
                    verifier: verifier(&with_crls),
                },
            ],
        }
    }

    fn verify(&self, side: &Side) {
        let name = ServerName::try_from("backend-api").expect("name");
        side.verifier
            .verify_server_cert(
                &self.chain[0],
                &self.chain[1..],
                &name,
                &[],
                UnixTime::now(),
            )
            .expect("the chain verifies");
    }

    /// One TLS handshake between an in-memory client (the proxy's upstream config) and server.
    fn handshake(&self, side: &Side) {
        let config = trustgate::tls::client::config(side.verifier.clone(), None).expect("client");
        let name = ServerName::try_from("backend-api").expect("name");
        let mut client = ClientConnection::new(Arc::new(config), name).expect("client connection");
        let mut server = ServerConnection::new(self.server.clone()).expect("server connection");
        let mut buffer = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            buffer.clear();
            client.write_tls(&mut buffer).expect("client writes");
            let mut slice = buffer.as_slice();
            while !slice.is_empty() {
                server.read_tls(&mut slice).expect("server reads");
            }
            server.process_new_packets().expect("server accepts");
            buffer.clear();
            server.write_tls(&mut buffer).expect("server writes");
            let mut slice = buffer.as_slice();
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("client reads");
            }
            client
                .process_new_packets()
                .expect("client accepts the backend");
        }
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Interleaved rounds, each side timed per call; prints the medians and their ratio.
fn ratios(setup: &Setup, calls: usize, rounds: usize) {
    type Step = fn(&Setup, &Side);
    let steps: [(&str, Step); 2] = [("verify", Setup::verify), ("handshake", Setup::handshake)];
    for (case, step) in steps {
        let mut samples = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for i in 0..2 {
                let which = (i + round) % 2;
                for _ in 0..calls / rounds {
                    let started = Instant::now();
                    step(setup, &setup.sides[which]);
                    samples[which].push(started.elapsed());
                }
            }
        }
        let [plain, crl] = samples.map(|mut s| median(&mut s));
        println!(
            "ratio {case} crl10k/plain = {:.2} (plain {plain:?}, crl10k {crl:?} per call, median)",
            crl.as_secs_f64() / plain.as_secs_f64()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    // `cargo bench` passes --bench; `cargo test --benches` does not (criterion's test mode).
    let benchmarking = flag("--bench") && !flag("--test");
    let listing = flag("--list") || args.iter().any(|a| a.starts_with("--profile-time"));

    let setup = Setup::new();
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for side in &setup.sides {
        criterion.bench_function(&format!("verify/{}", side.name), |b| {
            b.iter(|| setup.verify(side))
        });
        criterion.bench_function(&format!("handshake/{}", side.name), |b| {
            b.iter(|| setup.handshake(side))
        });
    }
    criterion.final_summary();
    if listing {
        return;
    }
    let (calls, rounds) = if benchmarking { (400, 4) } else { (4, 2) };
    ratios(&setup, calls, rounds);
}
