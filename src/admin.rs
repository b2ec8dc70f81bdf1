//! The admin listener (`[admin]`): health, readiness and reloads for operators and orchestrators.
//!
//! Plain HTTP/1.1 on its own socket, bound to loopback unless a token guards it; it shares nothing
//! with the public listener (no routes, no TLS config, no limits of the proxy's). Its own bounds
//! keep a misbehaving caller from holding it: a few connections at once, a deadline on each
//! request head, and no request body is ever read.
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text ([`crate::metrics`]); OpenMetrics when `Accept` asks for it |
//! | `GET /trust` | the trust status as JSON ([`crate::status`]) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while the proxy accepts; 503 once it drains after SIGTERM |
//! | `POST /reload` | the reload SIGHUP runs: 200 with the generation, or 422 with the problems |

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::reload::{Outcome, Reloader};

/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;
/// How long a caller may take to send a request head, and may idle between requests.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub reloader: Arc<Reloader>,
    /// Set when the proxy stops accepting (SIGTERM): `/readyz` turns 503.
    pub draining: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// Serves the admin endpoints on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: AdminState) {
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "admin listener"),
        Err(e) => warn!(error = %e, "admin listener address unknown"),
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(req, &state).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), service);
            // A connection idle past the head timeout is closed by hyper; one that keeps sending
            // requests is bounded by the endpoints, all of which answer at once.
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn respond(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let current = state.reloader.current();
    if let Some(token) = &current.admin_token
        && !authorized(&req, token)
    {
        let mut response = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n".into());
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") if state.draining.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        }
        (&Method::GET, "/readyz") => text(
            StatusCode::OK,
            format!("ready: generation {}\n", current.number),
        ),
        (&Method::GET, "/metrics") => metrics(&req, state),
        (&Method::GET, "/trust") => {
            let mut response = text(StatusCode::OK, format!("{:#}\n", current.trust.to_json()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        (&Method::POST, "/reload") => reload(state).await,
        (_, "/healthz" | "/readyz" | "/reload" | "/metrics" | "/trust") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "404 Not Found\n".into()),
    }
}

/// Prometheus text, or OpenMetrics when the scraper asks for it.
fn metrics(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let mut response = text(StatusCode::OK, state.metrics.encode(openmetrics));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The same reload as SIGHUP, off the runtime's threads.
async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    info!("reload requested on the admin listener");
    let reloader = state.reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await;
    match outcome {
        Ok(Ok(Outcome::Applied {
            generation,
            changes,
        })) => text(
            StatusCode::OK,
            format!("generation {generation}: {changes}\n"),
        ),
        Ok(Ok(Outcome::Unchanged)) => text(
            StatusCode::OK,
            format!(
                "generation {}: nothing changed\n",
                state.reloader.current().number
            ),
        ),
        Ok(Err(e)) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the reload task failed: {e}\n"),
        ),
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(given, token.as_bytes()).is_ok()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
