//! `trustgate demo`: the whole trust chain in one command, with no files to prepare.
//!
//! It creates a throwaway internal CA (root -> intermediate -> leaf for `backend-api`) and a
//! public certificate for `localhost`, starts the echo backend on loopback with the leaf, writes a
//! config and loads it through the same loader as `trustgate run`, then serves the proxy.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::echo;
use crate::gateway::Gateway;
use crate::pki::{Ca, LeafRequest, Usage, Validity};
use crate::server::shutdown_signal;

/// Files the demo writes, relative to its folder.
const CONFIG: &str = "trustgate.toml";
const PUBLIC_CA: &str = "public/ca.pem";

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("trustgate-demo-{}", std::process::id()))
    });
    let backend = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo backend on 127.0.0.1")?;
    let backend_addr = backend.local_addr()?;
    write_files(&dir, listen, backend_addr)?;

    // The backend demands a client certificate from the internal CA: the proxy presents its own.
    let client_auth = echo::client_auth(&dir.join("internal/ca.pem"))?;
    let backend_tls = echo::Identity::load(
        &dir.join("backend/server.crt"),
        &dir.join("backend/server.key"),
        Some(client_auth),
    )?;
    let config = Config::load(&dir.join(CONFIG))?;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (use --listen to pick another address)")
    })?;
    let public_port = listener.local_addr()?.port();

    println!("trustgate demo: files in {}", dir.display());
    println!("{}", config.summary());
    println!();
    println!(
        "The proxy trusts only the demo's internal root for upstreams, sends SNI \"backend-api\""
    );
    println!("and checks that name against the backend certificate; the backend in turn demands");
    println!(
        "the proxy's client certificate (mutual TLS, \"tls client certificate\" in the answer)."
    );
    println!("Try it:");
    println!();
    println!(
        "  curl --cacert {} https://localhost:{public_port}/api/hello",
        dir.join(PUBLIC_CA).display()
    );
    println!();
    println!("Ctrl-C stops the proxy and the backend.");

    let (stop_backend, backend_stopped) = tokio::sync::oneshot::channel::<()>();
    let backend_task = tokio::spawn(echo::serve(backend, backend_tls, async {
        let _ = backend_stopped.await;
    }));
    Gateway::new(&config)
        .serve(listener, shutdown_signal())
        .await;
    let _ = stop_backend.send(());
    let _ = backend_task.await;
    Ok(())
}

/// Writes the demo PKI and config. Only public certificates go where the proxy reads; the CA
/// keys are never written at all.
fn write_files(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> anyhow::Result<()> {
    let root = Ca::root("trustgate demo root CA", Validity::days(365))?;
    let intermediate =
        root.intermediate("trustgate demo intermediate CA", Validity::days(365), &[])?;
    let leaf = intermediate.issue(&LeafRequest::server("backend-api", 30))?;
    let mut proxy_request = LeafRequest::server("trustgate-proxy", 30);
    proxy_request.usage = Usage::Client;
    let proxy_identity = intermediate.issue(&proxy_request)?;
    let public_ca = Ca::root("trustgate demo public CA", Validity::days(30))?;
    let mut public_request = LeafRequest::server("localhost", 30);
    public_request.names.push("127.0.0.1".into());
    let public = public_ca.issue(&public_request)?;

    let mut config = String::new();
    writeln!(
        config,
        "# Written by `trustgate demo`; the backend's port changes on every run."
    )?;
    writeln!(config, "[server]\nlisten = \"{listen}\"")?;
    writeln!(
        config,
        "cert = \"public/fullchain.pem\"\nkey = \"public/privkey.pem\"\n"
    )?;
    writeln!(
        config,
        "[upstream_tls]\nca = \"internal/ca.pem\"\n\
         client_cert = \"proxy/client.crt\"\nclient_key = \"proxy/client.key\"\n"
    )?;
    writeln!(config, "[[route]]\nprefix = \"/api\"")?;
    writeln!(
        config,
        "upstream = \"https://backend-api:{}/\"",
        backend.port()
    )?;
    writeln!(config, "address = \"{backend}\"")?;

    let files = [
        ("internal/ca.pem", root.cert_pem()),
        (
            "backend/server.crt",
            leaf.cert_pem + &intermediate.cert_pem(),
        ),
        ("backend/server.key", leaf.key_pem),
        (
            "proxy/client.crt",
            proxy_identity.cert_pem + &intermediate.cert_pem(),
        ),
        ("proxy/client.key", proxy_identity.key_pem),
        ("public/fullchain.pem", public.cert_pem),
        ("public/privkey.pem", public.key_pem),
        (PUBLIC_CA, public_ca.cert_pem()),
        (CONFIG, config),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_private(&path, contents.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Writes a file readable by its owner only (the demo's keys sit among its certificates).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, contents)
}
