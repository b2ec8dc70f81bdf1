//! A small HTTPS echo backend for the demo, the Docker example and the end-to-end tests: it
//! answers every request with what it received, including the SNI the client sent, so one can
//! see what the proxy forwarded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls::ServerConfig;
use tokio::net::TcpListener;

use crate::connection::ConnectionInfo;
use crate::server::TlsServer;

/// Request bodies larger than this get 413: the echo keeps the body in memory to send it back.
pub const MAX_BODY: usize = 1 << 20;

/// Serves the echo on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    TlsServer::new(tls, Duration::from_secs(10), Duration::from_secs(5))
        .serve(listener, respond, shutdown)
        .await;
}

async fn respond(req: Request<Incoming>, info: Arc<ConnectionInfo>) -> Response<Full<Bytes>> {
    let mut text = format!(
        "trustgate echo backend\ntls sni: {}\npeer: {}\n\n{} {} {:?}\n",
        info.sni.as_deref().unwrap_or("(none)"),
        info.peer,
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version()
    );
    for (name, value) in req.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push('\n');
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let mut response = Response::new(Full::from("request body too large for the echo\n"));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&body);
    let mut response = Response::new(Full::from(bytes));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
