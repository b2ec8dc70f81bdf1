//! `trustgate echo` served from files: a renewed pair replaced by atomic rename reaches new
//! handshakes without a restart, and a pair that does not match keeps the old one serving. Every
//! answer names the host the echo runs on.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use trustgate::pki::LeafRequest;
use trustgate::pki::inspect::CertInfo;

/// Writes `contents` beside `path` and renames it over `path`, as `trustgate pki renew` does.
fn replace_atomic(path: &Path, contents: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// The serial of the certificate a fresh handshake gets, and the serial the echo's answer names.
async fn presented(pki: &TestPki, addr: std::net::SocketAddr) -> (String, String) {
    let mut tls = raw_tls(pki, addr).await;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let serial = CertInfo::parse(&leaf).unwrap().serial;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_close(&mut tls, Duration::from_secs(5)).await;
    let named = answer
        .lines()
        .find_map(|line| line.strip_prefix("tls certificate serial: "))
        .unwrap_or_else(|| panic!("no serial in the answer: {answer}"))
        .to_owned();
    // Which replica answered: the host the echo runs on, read once at start.
    let host = trustgate::echo::host_name();
    assert!(!host.is_empty());
    assert!(
        answer
            .lines()
            .any(|line| line == format!("echo host: {host}")),
        "no `echo host: {host}` line in the answer: {answer}"
    );
    (serial, named)
}

#[tokio::test]
async fn a_renewed_pair_serves_new_handshakes_and_a_bad_pair_changes_nothing() {
    logs();
    let pki = TestPki::new();
    let issue = || {
        pki.public_ca
            .issue(&LeafRequest::server("localhost", 30))
            .unwrap()
    };
    let first = issue();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    write(&cert, &first.cert_pem);
    write(&key, &first.key_pem);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let echo = tokio::spawn(trustgate::echo::serve_files(
        listener,
        cert.clone(),
        key.clone(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let first_serial = CertInfo::parse(&first.cert).unwrap().serial;
    assert_eq!(
        presented(&pki, addr).await,
        (first_serial.clone(), first_serial)
    );

    // Renewed: new key first, then the certificate, each by atomic rename.
    let second = issue();
    let second_serial = CertInfo::parse(&second.cert).unwrap().serial;
    replace_atomic(&key, &second.key_pem);
    replace_atomic(&cert, &second.cert_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (serial, named) = presented(&pki, addr).await;
        if serial == second_serial {
            assert_eq!(
                named, second_serial,
                "the answer names the served certificate"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the echo still presents {serial} 10 s after the renewal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    logs()
        .line_with(&["echo certificate reloaded", &second_serial])
        .await;

    // A certificate whose key is not the one beside it: refused, the renewed pair keeps serving.
    let stranger = issue();
    replace_atomic(&cert, &stranger.cert_pem);
    let refusal = logs()
        .line_with(&[
            "echo certificate not reloaded",
            "previous one keeps serving",
        ])
        .await;
    assert!(refusal.contains(&cert.display().to_string()), "{refusal}");
    assert_eq!(
        presented(&pki, addr).await,
        (second_serial.clone(), second_serial)
    );

    let _ = stop.send(());
    echo.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_pair_that_does_not_load_at_start_is_an_error_naming_the_files() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let one = pki
        .public_ca
        .issue(&LeafRequest::server("localhost", 30))
        .unwrap();
    let other = pki
        .public_ca
        .issue(&LeafRequest::server("localhost", 30))
        .unwrap();
    write(&cert, &one.cert_pem);
    write(&key, &other.key_pem);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = trustgate::echo::serve_files(listener, cert.clone(), key.clone(), None, async {})
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(&cert.display().to_string()), "{text}");
    assert!(text.contains(&key.display().to_string()), "{text}");
}
