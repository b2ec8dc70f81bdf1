//! The `trustgate` binary: parse the command line, set up logging, dispatch, exit code.

mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::net::TcpListener;

use cli::{Cli, Command, LogFormat};
use trustgate::server::shutdown_signal;
use trustgate::{Config, Gateway, demo, echo};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::Demo { .. } | Command::Echo { .. }
    ) {
        restore_sigpipe();
    }
    // Lives to the end of main, after the runtime, so the last lines are written out.
    let _log_guard = trustgate::logging::init(matches!(cli.log_format, LogFormat::Json));
    // `run` loads its configuration before the runtime exists: it decides the runtime's shape.
    let loaded = match &cli.command {
        Command::Run { config } => match Config::load(config) {
            Ok(config) => Some(config),
            Err(e) => return report_config_error(&e),
        },
        _ => None,
    };
    let runtime = match runtime(loaded.is_some()) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trustgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, loaded)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trustgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime. The proxy's is single-threaded: with `[server] workers` = 1 it runs
/// everything; with more, the connections are served on that many threads of their own
/// ([`trustgate::server::workers`]) and it keeps the accept loop, reloads, admin, discovery and
/// health checks. Other commands get a thread per CPU.
fn runtime(proxy: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if proxy {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(trustgate::config::default_workers());
        builder
    };
    builder.enable_all().build()
}

/// Runs `command`; `loaded` is `run`'s configuration, loaded before the runtime started.
async fn dispatch(command: Command, loaded: Option<Config>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { .. } => {
            let config = loaded.context("the configuration was not loaded")?;
            let listen = config.server.listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} ([server] listen)"))?;
            for route in config.routes.iter() {
                tracing::info!(
                    route = %route.prefix,
                    upstream = %route.upstream,
                    verified_name = route.upstream.host(),
                    "route"
                );
            }
            for warning in &config.warnings {
                tracing::warn!(%warning, "configuration");
            }
            let admin = match &config.admin {
                Some(admin) => Some(TcpListener::bind(admin.listen).await.with_context(|| {
                    format!("cannot listen on {} ([admin] listen)", admin.listen)
                })?),
                None => None,
            };
            let bound = listener.local_addr().unwrap_or(listen);
            tracing::info!(listen = %bound, routes = config.routes.len(), "trustgate listening");
            let gateway = Gateway::new(&config);
            let admin = admin.map(|listener| gateway.spawn_admin(listener));
            gateway.serve(listener, shutdown_signal()).await;
            if let Some(admin) = admin {
                admin.abort();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                println!("{}", config.summary());
                for warning in &config.warnings {
                    println!("warning: {warning}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(report_config_error(&e)),
        },
        Command::Demo { listen, dir } => {
            demo::run(listen, dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { options, format } => {
            let report = trustgate::audit::run(&options).await;
            println!("{}", report.render(format));
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Pki(args) => {
            trustgate::pki::commands::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            admin,
            token_file,
            json,
        } => {
            let status = trustgate::status::fetch(&admin, token_file.as_deref()).await?;
            if json {
                println!("{status:#}");
            } else {
                print!(
                    "{}",
                    trustgate::status::render(&status, time::OffsetDateTime::now_utc())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo {
            listen,
            cert,
            key,
            client_ca,
        } => {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(%listen, "echo backend listening");
            echo::serve_files(listener, cert, key, client_ca, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report_config_error(error: &trustgate::config::ConfigError) -> ExitCode {
    let count = error.problems.len();
    eprintln!(
        "trustgate: the configuration has {count} problem{}:",
        if count == 1 { "" } else { "s" }
    );
    eprintln!("{error}");
    ExitCode::FAILURE
}

/// One-shot commands die quietly on a closed pipe (`trustgate pki list | head`) instead of
/// panicking on the failed write. Servers keep Rust's default of ignoring SIGPIPE.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
