//! Bodies stream through the proxy both ways, never buffered whole.
//!
//! Two proofs: the far side receives the first chunk while the near side still holds back the
//! rest (a proxy that buffered whole bodies would deadlock here), and the process's peak memory
//! stays flat while hundreds of MiB pass through. This is its own test binary so no other test's
//! allocations blur the peak-memory reading.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;

const CHUNK: usize = 64 * 1024;
const TOTAL: u64 = 256 * 1024 * 1024;

/// A body of `remaining` bytes made of one shared chunk: nothing is stored as it streams. After
/// the first chunk it waits for `gate`, if any, before sending the rest.
struct Generated {
    chunk: Bytes,
    remaining: u64,
    sent_first: bool,
    gate: Option<oneshot::Receiver<()>>,
}

impl Generated {
    fn new(total: u64, gate: Option<oneshot::Receiver<()>>) -> Self {
        Self {
            chunk: Bytes::from(vec![b'x'; CHUNK]),
            remaining: total,
            sent_first: false,
            gate,
        }
    }
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.sent_first
            && let Some(gate) = self.gate.as_mut()
        {
            match Pin::new(gate).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => self.gate = None,
            }
        }
        self.sent_first = true;
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

use std::future::Future as _;

/// Peak resident memory of this process so far, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    let pki = TestPki::new();
    // Upload: the backend counts bytes and reports when the first chunk arrived.
    let first_upload_chunk: Arc<Mutex<Option<oneshot::Sender<()>>>> = Arc::default();
    let first_upload_tx = first_upload_chunk.clone();
    // Download: the backend holds back all but the first chunk until the client saw it.
    let download_gate: Arc<Mutex<Option<oneshot::Receiver<()>>>> = Arc::default();
    let download_gate_rx = download_gate.clone();
    let backend = Backend::custom(
        &pki.leaf(&["backend-bulk"]),
        &[b"h2", b"http/1.1"],
        move |req, _| {
            let first_upload_tx = first_upload_tx.clone();
            let download_gate_rx = download_gate_rx.clone();
            async move {
                if req.uri().path() == "/download" {
                    let gate = download_gate_rx.lock().unwrap().take();
                    return Response::new(Generated::new(TOTAL, gate).boxed());
                }
                let mut body = req.into_body();
                let mut received = 0u64;
                while let Some(frame) = body.frame().await {
                    let Ok(data) = frame.map(|f| f.into_data().unwrap_or_default()) else {
                        break;
                    };
                    if received == 0
                        && !data.is_empty()
                        && let Some(tx) = first_upload_tx.lock().unwrap().take()
                    {
                        let _ = tx.send(());
                    }
                    received += data.len() as u64;
                }
                Response::new(full(received.to_string()))
            }
        },
    )
    .await;
    let proxy = Proxy::start(&pki, &route_to("/bulk", "backend-bulk", &backend)).await;
    let client = client(&pki, false);
    let baseline = peak_rss_kib();

    // Upload: the client sends one chunk, then waits until the backend has it.
    let (first_tx, first_rx) = oneshot::channel();
    *first_upload_chunk.lock().unwrap() = Some(first_tx);
    let (release_tx, release_rx) = oneshot::channel();
    let request = Request::post(proxy.url("/bulk/upload"))
        .body(Generated::new(TOTAL, Some(release_rx)).boxed())
        .unwrap();
    let upload = tokio::spawn({
        let client = client.clone();
        async move { send(&client, request).await }
    });
    tokio::time::timeout(Duration::from_secs(10), first_rx)
        .await
        .expect("the backend got the first chunk while the client still held the rest")
        .unwrap();
    release_tx.send(()).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(120), upload)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), TOTAL.to_string());

    // Download: the client must see the first chunk before the backend sends the rest.
    let (gate_tx, gate_rx) = oneshot::channel();
    *download_gate.lock().unwrap() = Some(gate_rx);
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(
            Request::get(proxy.url("/bulk/download"))
                .body(empty())
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut gate_tx = Some(gate_tx);
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("next chunk in time")
    {
        received += frame
            .unwrap()
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or(0);
        if let Some(tx) = gate_tx.take() {
            tx.send(()).unwrap();
        }
    }
    assert_eq!(received, TOTAL);

    if let (Some(before), Some(after)) = (baseline, peak_rss_kib()) {
        let growth_mib = after.saturating_sub(before) / 1024;
        // 512 MiB went through; a proxy that buffered would grow by hundreds of MiB.
        assert!(
            growth_mib < 64,
            "peak memory grew by {growth_mib} MiB while streaming 2 x 256 MiB"
        );
    }
}
