//! Attacks from the outside, each with bounded counts on real sockets: the proxy must stay within
//! its limits, free what the attacker held, and serve an ordinary client during and after.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use trustgate::server::linger::LINGER_TIME;

const H1: &[&[u8]] = &[b"http/1.1"];

/// A raw TLS connection to the proxy from `source` (any 127.0.0.0/8 address), offering `alpn`.
async fn tls_from(
    pki: &TestPki,
    proxy: SocketAddr,
    source: &str,
    alpn: &[&[u8]],
) -> std::io::Result<Tls> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))?;
    let tcp = socket.connect(proxy).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_tls(alpn)));
    tokio::time::timeout(
        Duration::from_secs(2),
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake not served within 2s"))?
}

/// An ordinary client, from its own address so per-IP limits on the attacker do not apply to it,
/// gets its answer.
async fn ordinary_client_is_served(pki: &TestPki, proxy: &Proxy) {
    let mut tls = tls_from(pki, proxy.addr, "127.0.0.200", H1)
        .await
        .expect("an ordinary client connects");
    tls.write_all(b"GET /api/ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A response body of `chunks` x 16 KiB, produced as fast as it is read; counts how many are
/// alive, so a test sees when the proxy lets go of the upstream exchange.
struct Counted {
    left: usize,
    alive: Arc<AtomicUsize>,
}

impl Counted {
    fn new(chunks: usize, alive: &Arc<AtomicUsize>) -> Self {
        alive.fetch_add(1, SeqCst);
        Self {
            left: chunks,
            alive: alive.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, SeqCst);
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))))
    }
}

/// A backend whose `/big` answers are `chunks` x 16 KiB; every other path answers "ok".
/// Returns it with the count of big bodies alive and the most ever alive at once.
async fn big_backend(
    pki: &TestPki,
    chunks: usize,
) -> (Backend, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let alive = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (a, m) = (alive.clone(), most.clone());
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, move |req, _| {
        let (alive, most) = (a.clone(), m.clone());
        async move {
            if req.uri().path() != "/big" {
                return Response::new(full("ok"));
            }
            let body = Counted::new(chunks, &alive);
            most.fetch_max(alive.load(SeqCst), SeqCst);
            Response::new(http_body_util::BodyExt::boxed(body))
        }
    })
    .await;
    (backend, alive, most)
}

async fn proxy_to(pki: &TestPki, backend: &Backend, settings: &str) -> Proxy {
    Proxy::start(
        pki,
        &format!("{settings}\n{}", route_to("/api", "backend-api", backend)),
    )
    .await
}

/// Waits until the proxy has closed `stream` (EOF or error); returns how long that took.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Duration {
    let started = Instant::now();
    let _ = read_until_close(stream, limit).await;
    let took = started.elapsed();
    assert!(
        took < limit,
        "the proxy kept the connection open for {limit:?}"
    );
    took
}

#[tokio::test]
async fn idle_tls_connections_and_partial_prefaces_are_closed_after_client_header() {
    let pki = TestPki::new();
    let (backend, _, _) = big_backend(&pki, 1).await;
    let proxy = proxy_to(&pki, &backend, "[timeouts]\nclient_header = \"400ms\"\n").await;

    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.unwrap());
    }
    let mut prefaces = Vec::new();
    for _ in 0..10 {
        let mut tls = tls_from(&pki, proxy.addr, "127.0.0.1", &[b"h2"])
            .await
            .unwrap();
        tls.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(); // 16 of the 24 bytes
        prefaces.push(tls);
    }
    // A head that trickles in never completes either.
    let mut trickle = tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.unwrap();
    ordinary_client_is_served(&pki, &proxy).await;

    for byte in b"GET /api/ok HTTP/1.1\r\n" {
        if trickle.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for tls in idle.iter_mut().chain(&mut prefaces).chain([&mut trickle]) {
        closed_within(tls, Duration::from_secs(3)).await;
    }
    ordinary_client_is_served(&pki, &proxy).await;
}

/// An HTTP/2 client (the `h2` crate) on a fresh TLS connection with ALPN h2, offering `window`
/// as its streams' initial window. The connection runs in a task; the watch reports the most
/// streams the proxy allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS).
async fn h2_client(
    pki: &TestPki,
    proxy: SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<usize>,
) {
    let tls = tls_from(pki, proxy, "127.0.0.1", &[b"h2"]).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tls)
        .await
        .unwrap();
    let (streams, watch) = tokio::sync::watch::channel(0);
    let task = tokio::spawn(async move {
        tokio::pin!(connection);
        loop {
            tokio::select! {
                _ = &mut connection => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    let _ = streams.send(connection.max_concurrent_send_streams());
                }
            }
        }
    });
    (send, task, watch)
}

#[tokio::test]
async fn http2_connections_without_streams_close_after_idle() {
    let pki = TestPki::new();
    let (backend, _, _) = big_backend(&pki, 1).await;
    let proxy = proxy_to(
        &pki,
        &backend,
        "[timeouts]\nclient_header = \"300ms\"\nidle = \"800ms\"\n",
    )
    .await;

    // The h2 crate answers pings and settings: the connection looks alive but carries nothing.
    let (mut send, connection, _) = h2_client(&pki, proxy.addr, 65_535).await;
    let started = Instant::now();
    // One request first: idleness counts from the end of the last stream, not the handshake.
    let request = Request::get("https://localhost/api/ok").body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    let took = started.elapsed();
    assert!(ended.is_ok(), "idle HTTP/2 connection kept open");
    assert!(
        took >= Duration::from_millis(700),
        "closed after {took:?}: before [timeouts] idle"
    );
    ordinary_client_is_served(&pki, &proxy).await;
}

#[tokio::test]
async fn zero_window_http2_streams_cannot_park_upstream_connections() {
    let pki = TestPki::new();
    let (backend, alive, most) = big_backend(&pki, 16 * 1024).await;
    let proxy = proxy_to(
        &pki,
        &backend,
        "[timeouts]\nclient_send = \"2s\"\n\n[limits]\nupstream_per_connection = 4\n\
         upstream_per_ip = 6\nh2_max_streams = 10\n",
    )
    .await;

    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the proxy may send headers but no body data.
    let (mut first, first_connection, max_streams) = h2_client(&pki, proxy.addr, 0).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        first = first.ready().await.unwrap();
        let request = Request::get("https://localhost/api/big").body(()).unwrap();
        streams.push(first.send_request(request, true).unwrap().0);
    }
    // One client connection holds [limits] upstream_per_connection upstream exchanges, well
    // before client_send abandons any.
    // The proxy advertises [limits] h2_max_streams (the client reads it every 20ms).
    eventually(
        "4 upstream exchanges, 10 streams",
        Duration::from_secs(5),
        || alive.load(SeqCst) == 4 && *max_streams.borrow() == 10,
    )
    .await;
    // A second connection from the same host gets only what is left of the host's share.
    let (mut second, second_connection, _) = h2_client(&pki, proxy.addr, 0).await;
    for _ in 0..10 {
        second = second.ready().await.unwrap();
        let request = Request::get("https://localhost/api/big").body(()).unwrap();
        streams.push(second.send_request(request, true).unwrap().0);
    }
    eventually("6 upstream exchanges", Duration::from_secs(5), || {
        alive.load(SeqCst) == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        alive.load(SeqCst) <= 6,
        "one host holds at most [limits] upstream_per_ip upstream exchanges"
    );
    ordinary_client_is_served(&pki, &proxy).await;

    // Each stalled response is abandoned after client_send, freeing its upstream exchange; once
    // every request on a connection has been abandoned, the connection closes.
    eventually(
        "every upstream body released",
        Duration::from_secs(40),
        || {
            alive.load(SeqCst) == 0
                && first_connection.is_finished()
                && second_connection.is_finished()
        },
    )
    .await;
    // The backend counts an exchange until it sees its connection close, a moment after the
    // proxy let go of it and gave its turn to a waiting stream: while the abandoned ones are torn
    // down, it may see up to twice the share (the steady state above is exact). Unlimited, it
    // would see all 20.
    assert!(
        most.load(SeqCst) <= 12,
        "at most 6 at once (12 while torn down), saw {most:?}"
    );
    logs()
        .line_with(&["client stopped reading", "client_send"])
        .await;
    drop(streams);
    ordinary_client_is_served(&pki, &proxy).await;
}

#[tokio::test]
async fn rapid_reset_closes_the_connection() {
    let pki = TestPki::new();
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, |_, _| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full("slow"))
    })
    .await;
    let proxy = proxy_to(&pki, &backend, "").await;
    let (mut send, connection, _) = h2_client(&pki, proxy.addr, 65_535).await;
    // Each request reaches the proxy's handler (which sends it upstream), then is cancelled.
    let mut sent = 0;
    for _ in 0..400 {
        let Ok(ready) = send.ready().await else { break };
        send = ready;
        let request = Request::get("https://localhost/api/x").body(()).unwrap();
        let Ok((_, mut stream)) = send.send_request(request, true) else {
            break;
        };
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        stream.send_reset(h2::Reason::CANCEL);
        if connection.is_finished() {
            break;
        }
    }
    eventually("the connection closed", Duration::from_secs(5), || {
        connection.is_finished()
    })
    .await;
    assert!(sent < 400, "the proxy took {sent} cancelled requests");
    logs()
        .line_with(&["cancelled more requests than it let finish"])
        .await;
    ordinary_client_is_served(&pki, &proxy).await;
}

#[tokio::test]
async fn a_client_that_never_reads_frees_the_upstream_after_client_send() {
    let pki = TestPki::new();
    // 256 MiB: far more than the socket buffers between here and the proxy hold.
    let (backend, alive, _) = big_backend(&pki, 16 * 1024).await;
    let proxy = proxy_to(&pki, &backend, "[timeouts]\nclient_send = \"500ms\"\n").await;

    let mut tls = tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.unwrap();
    tls.write_all(b"GET /api/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    eventually("the upstream body started", Duration::from_secs(5), || {
        alive.load(SeqCst) == 1
    })
    .await;
    ordinary_client_is_served(&pki, &proxy).await;
    // Never read: the proxy must let go of the upstream and of the client.
    eventually(
        "the upstream body released",
        Duration::from_secs(15),
        || alive.load(SeqCst) == 0,
    )
    .await;
    logs()
        .line_with(&["stopped reading its responses", "client_send"])
        .await;
    ordinary_client_is_served(&pki, &proxy).await;
}

#[tokio::test]
async fn a_trickled_upload_below_the_minimum_rate_gets_408() {
    let pki = TestPki::new();
    let backend = Backend::recording(&pki.leaf(&["backend-api"]), H1, "api").await;
    let proxy = proxy_to(
        &pki,
        &backend,
        "[timeouts]\nclient_header = \"600ms\"\n\n[limits]\nmin_upload_rate = 100\n",
    )
    .await;

    // One byte every 100 ms is 10 bytes/s, never idle for long, but far below 100 bytes/s.
    let mut tls = tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.unwrap();
    tls.write_all(b"POST /api/up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..100 {
        if tls.write_all(b"x").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let answer = read_until_close(&mut tls, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let line = logs().line_with(&["status=408", "min_upload_rate"]).await;
    assert!(line.contains("slower than 100 bytes/s"), "{line}");
    ordinary_client_is_served(&pki, &proxy).await;
}

#[tokio::test]
async fn one_host_cannot_take_every_connection() {
    let pki = TestPki::new();
    let (backend, _, _) = big_backend(&pki, 1).await;
    let proxy = proxy_to(&pki, &backend, "[limits]\nmax_connections_per_ip = 5\n").await;

    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.unwrap());
    }
    // The next ones from the same host are closed at once, before any TLS.
    for _ in 0..20 {
        assert!(tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.is_err());
    }
    ordinary_client_is_served(&pki, &proxy).await;
    let line = logs()
        .line_with(&["per-IP connection limit reached", "127.0.0.1"])
        .await;
    assert!(line.contains("WARN"), "{line}");
    drop(held);
    admitted_again_soon(&pki, &proxy, "127.0.0.1", "closed connections").await;
}

/// A client refused while it keeps sending lingers (tests/failures.rs) and holds its host's share
/// until its socket is closed. A client cut off for stalling its head does not linger: its share
/// is back at once.
#[tokio::test]
async fn lingering_keeps_the_share_and_a_cut_off_client_does_not_linger() {
    let pki = TestPki::new();
    let (backend, _, _) = big_backend(&pki, 1).await;
    let settings = "[limits]\nmax_connections_per_ip = 1\n[timeouts]\nclient_header = \"300ms\"\n";
    let proxy = proxy_to(&pki, &backend, settings).await;

    let mut refused = tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.unwrap();
    let mut head = b"GET /api/ok HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 128 * 1024));
    refused.write_all(&head).await.unwrap();
    // The proxy answered and shut its side; the client has not closed its own.
    let answer = read_until_close(&mut refused, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.is_err(),
        "a lingering connection holds its share"
    );
    // The share is back once the lingering socket is closed, LINGER_TIME after the 431.
    let by = Instant::now() + LINGER_TIME + Duration::from_secs(3);
    let mut stalled = loop {
        match tls_from(&pki, proxy.addr, "127.0.0.1", H1).await {
            Ok(tls) => break tls,
            Err(e) => assert!(Instant::now() < by, "the share never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(refused);

    stalled
        .write_all(b"GET /api/ok HTTP/1.1\r\n")
        .await
        .unwrap();
    closed_within(&mut stalled, Duration::from_secs(3)).await;
    admitted_again_soon(
        &pki,
        &proxy,
        "127.0.0.1",
        "a connection cut off for a stalled head",
    )
    .await;
    drop(stalled);

    // Nor does one that stalls its TLS handshake (from a source of its own, whose share nothing
    // else holds).
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut silent = socket.connect(proxy.addr).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(3)).await;
    admitted_again_soon(
        &pki,
        &proxy,
        "127.0.0.3",
        "a connection cut off for a stalled handshake",
    )
    .await;
    drop(silent);
}

/// Connects from `source` until admitted, right after `what` from there ended: their shares
/// must come back at once, well before a lingering socket would give its own back.
async fn admitted_again_soon(pki: &TestPki, proxy: &Proxy, source: &str, what: &str) {
    let ended = Instant::now();
    loop {
        if tls_from(pki, proxy.addr, source, H1).await.is_ok() {
            return;
        }
        assert!(
            ended.elapsed() < LINGER_TIME * 3 / 4,
            "{what} did not give their share back (lingering?)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn websocket_tunnels_keep_their_permit_and_close_when_silent() {
    let pki = TestPki::new();
    let backend = websocket_backend(&pki).await;
    let proxy = Proxy::start(
        &pki,
        &format!(
            "[timeouts]\ntunnel_idle = \"1s\"\n\n{}",
            route_to("/ws", "backend-ws", &backend)
        ),
    )
    .await;
    let (mut tunnel, head) = open_websocket(&pki, &proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // Traffic keeps it open past tunnel_idle.
    for message in ["one", "two", "three"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_echo(&mut tunnel, message).await;
    }
    let took = closed_within(&mut tunnel, Duration::from_secs(5)).await;
    // From the client's last read, a little after the tunnel saw the echo pass.
    assert!(took >= Duration::from_millis(700), "closed after {took:?}");
    logs().line_with(&["tunnel closed", "tunnel_idle"]).await;
}

#[tokio::test]
async fn a_tunnel_counts_against_max_connections() {
    let pki = TestPki::new();
    let backend = websocket_backend(&pki).await;
    let listen = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"public/fullchain.pem\"\n\
         key = \"public/privkey.pem\"\nmax_connections = 1\n\n[upstream_tls]\nca = \"ca.pem\"\n\n{}",
        route_to("/ws", "backend-ws", &backend)
    );
    let proxy = Proxy::start_with(&pki, &listen).await;
    let (mut tunnel, head) = open_websocket(&pki, &proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_echo(&mut tunnel, "hello").await;
    // The one permit is the tunnel's: a second client is not served while it is open.
    let waiting = tls_from(&pki, proxy.addr, "127.0.0.1", H1).await;
    assert!(waiting.is_err(), "a second client was served");
    assert_echo(&mut tunnel, "still open").await;
    drop(tunnel);
    let served = async {
        for _ in 0..50 {
            if tls_from(&pki, proxy.addr, "127.0.0.1", H1).await.is_ok() {
                return true;
            }
        }
        false
    };
    assert!(served.await, "the permit came back when the tunnel closed");
}

/// Sets the soft descriptor limit of process `pid`; the hard limit stays 100 (raising it back
/// would need a privilege).
#[cfg(target_os = "linux")]
fn set_fd_limit(pid: u32, limit: u64) {
    let limit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: 100,
    };
    // SAFETY: prlimit reads the struct we own; a null old-limit pointer is allowed.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Sends `count` GETs for `path` on one HTTP/2 connection and returns each status (0: no answer),
/// calling `between` after each answer.
async fn h2_burst(
    pki: &TestPki,
    addr: SocketAddr,
    path: &str,
    count: usize,
    between: impl Fn(),
) -> Vec<u16> {
    let (mut send, _connection, _) = h2_client(pki, addr, 65_535).await;
    let mut pending = Vec::new();
    for _ in 0..count {
        send = send.ready().await.unwrap();
        let request = Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        pending.push(send.send_request(request, true).unwrap().0);
    }
    let mut statuses = Vec::new();
    for response in pending {
        let status = tokio::time::timeout(Duration::from_secs(20), response)
            .await
            .expect("an answer within 20s")
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        statuses.push(status);
        between();
    }
    statuses
}

/// The real binary with a descriptor limit of 100: the proxy splits what the limit leaves between
/// client and upstream connections, so a stream flood waits for upstream turns (503 after
/// `response`) instead of exhausting descriptors. With the limit then lowered under its feet,
/// upstream connects fail with EMFILE: that is the proxy's own trouble, 503, never 502; and it
/// recovers when descriptors come back.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn descriptors_are_budgeted_and_exhaustion_is_a_503() {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};

    let pki = TestPki::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (held, a, m) = (release.clone(), active.clone(), most.clone());
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, move |req, _| {
        let (held, active, most) = (held.clone(), a.clone(), m.clone());
        async move {
            if req.uri().path() == "/hold" {
                most.fetch_max(active.fetch_add(1, SeqCst) + 1, SeqCst);
                // Shorter than the proxy's response timeout: no request is given up on (504)
                // while the backend still holds it.
                tokio::time::timeout(Duration::from_secs(2), held.notified())
                    .await
                    .ok();
                active.fetch_sub(1, SeqCst);
            }
            Response::new(full("released"))
        }
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = pki.path("fd.toml");
    write(
        &config,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ncert = \"public/fullchain.pem\"\n\
             key = \"public/privkey.pem\"\n\n[upstream_tls]\nca = \"ca.pem\"\n\n\
             [timeouts]\nresponse = \"3s\"\n\n\
             [limits]\nupstream_per_connection = 200\nh2_max_streams = 200\n\n{}",
            route_to("/api", "backend-api", &backend)
        ),
    );
    let log = pki.path("fd.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_trustgate"));
    command
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 100,
                rlim_max: 100,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The budget is logged once the gateway is built, after "trustgate listening", by a log
    // writer of its own: wait for the line itself.
    eventually(
        "the descriptor budget logged",
        Duration::from_secs(10),
        || log_text().contains("descriptor budget"),
    )
    .await;
    // 100 descriptors - 64 reserved = 36: 18 for clients, 18 for upstream connections.
    let text = log_text();
    assert!(
        text.contains("descriptor budget") && text.contains("clients=18 upstream_connections=18"),
        "{text}"
    );

    // Descriptors taken away under the proxy's feet (24, about 10 in use): upstream connects fail
    // with EMFILE, which is the proxy's own trouble: 503, never 502.
    set_fd_limit(child.id(), 24);
    let count = |statuses: &[u16], code| statuses.iter().filter(|s| **s == code).count();
    let statuses = h2_burst(&pki, addr, "/api/hold", 30, || release.notify_waiters()).await;
    let text = log_text();
    assert!(count(&statuses, 503) > 0, "{statuses:?}\n{text}");
    assert_eq!(
        count(&statuses, 502),
        0,
        "out of descriptors is not the upstream's fault\n{text}"
    );
    assert!(text.contains("the proxy is out of resources"), "{text}");

    // Descriptors back. A flood of 150 streams on one connection: at most 18 reach the backend
    // at once, those that wait past `response` get 503, none gets 502, nothing runs out.
    set_fd_limit(child.id(), 100);
    let before = log_text().matches("Too many open files").count();
    most.store(0, SeqCst);
    // The backend holds each for 2 s: two rounds of 18 are served, the rest wait out the 3 s.
    let statuses = h2_burst(&pki, addr, "/api/hold", 150, || {}).await;
    let text = log_text();
    assert!(count(&statuses, 503) > 0, "{statuses:?}\n{text}");
    assert_eq!(count(&statuses, 502), 0, "{statuses:?}\n{text}");
    assert!(
        most.load(SeqCst) <= 18,
        "{} upstream requests at once",
        most.load(SeqCst)
    );
    assert_eq!(
        text.matches("Too many open files").count(),
        before,
        "{text}"
    );
    let served = statuses.contains(&200);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        served,
        "not served after the descriptors came back\n{}",
        log_text()
    );
}

/// A response body fed by a channel, one frame per message.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl HttpBody for Channel {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|d| Ok(Frame::data(d))))
    }
}

#[tokio::test]
async fn requests_beyond_the_connections_upstream_turns_wait_then_get_503() {
    let pki = TestPki::new();
    // `/drip` sends a byte every 150 ms for 1.5 s: an upstream exchange that stays busy.
    let backend = Backend::custom(&pki.leaf(&["backend-api"]), H1, |req, _| async move {
        if req.uri().path() != "/drip" {
            return Response::new(full("ok"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if tx.send(Bytes::from_static(b".")).await.is_err() {
                    return;
                }
            }
        });
        Response::new(http_body_util::BodyExt::boxed(Channel(rx)))
    })
    .await;
    let proxy = proxy_to(
        &pki,
        &backend,
        "[timeouts]\nresponse = \"500ms\"\n\n[limits]\nupstream_per_connection = 1\n",
    )
    .await;
    let (mut send, _connection, _) = h2_client(&pki, proxy.addr, 65_535).await;
    let drip = Request::get("https://localhost/api/drip").body(()).unwrap();
    let (dripping, _) = send.send_request(drip, true).unwrap();
    let dripping = dripping.await.unwrap();
    assert_eq!(dripping.status(), StatusCode::OK);

    // The connection's one turn is taken by the drip: the next request waits, then gets 503.
    send = send.ready().await.unwrap();
    let started = Instant::now();
    let ok = Request::get("https://localhost/api/ok").body(()).unwrap();
    let (waiting, _) = send.send_request(ok, true).unwrap();
    assert_eq!(
        waiting.await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    logs()
        .line_with(&["status=503", "upstream_per_connection"])
        .await;

    // Once the drip has been read to its end, the turn is free again.
    let mut body = dripping.into_body();
    let mut dots = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        dots += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(dots, 10);
    send = send.ready().await.unwrap();
    let ok = Request::get("https://localhost/api/ok").body(()).unwrap();
    let (served, _) = send.send_request(ok, true).unwrap();
    assert_eq!(served.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_negotiates_h2_but_trickles_an_http1_head_is_cut_off() {
    let pki = TestPki::new();
    let (backend, _, _) = big_backend(&pki, 1).await;
    let proxy = proxy_to(
        &pki,
        &backend,
        "[timeouts]\nclient_header = \"400ms\"\nidle = \"30s\"\n",
    )
    .await;
    // ALPN says h2, the bytes say HTTP/1.1: the head clock applies, not the 30 s idle one.
    let mut tls = tls_from(&pki, proxy.addr, "127.0.0.1", &[b"h2"])
        .await
        .unwrap();
    let started = Instant::now();
    // More than the 24 bytes of an HTTP/2 preface at once, then a trickle.
    tls.write_all(b"GET /api/ok HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    for byte in b"X-Slow: 1\r\nX-Slower: 2\r\nX-Slowest: 3\r\n" {
        if tls.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    closed_within(&mut tls, Duration::from_secs(3)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    ordinary_client_is_served(&pki, &proxy).await;
}
