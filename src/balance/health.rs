//! The health loop of one route: active checks (`[route.health]`), re-verification of endpoints
//! out for a TLS failure, and the moment a passive ejection runs out.
//!
//! Checks go through the endpoint's own pool: the same anchors, CRLs, client certificate and SNI
//! as data requests, so a check can never call a backend healthy that a request would refuse. An
//! endpoint out for TLS is re-verified with a fresh handshake (a pooled connection would prove
//! nothing new) before its HTTP check counts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Limited};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use super::Balancer;
use super::endpoint::{Endpoint, now_ms};
use super::settings::HealthCheck;
use crate::body::UpstreamBody;
use crate::upstream::{describe, tls_error};

/// How often ejections that ran out are noticed (logged, `endpoint_up` back to 1).
const TICK: Duration = Duration::from_secs(1);
/// A health response body is read up to this much, then dropped.
const MAX_BODY: usize = 64 * 1024;

/// Runs until the balancer is dropped or retired.
pub async fn run(balancer: Weak<Balancer>) {
    let Some(b) = balancer.upgrade() else {
        return;
    };
    let check = b.settings.health.clone();
    let tick = check.as_ref().map_or(TICK, |c| c.interval.min(TICK));
    let verify_every = b.settings.fail_timeout.max(TICK);
    drop(b);
    // The first checks run at once, so a bad endpoint is found before traffic finds it.
    let mut next_check = Instant::now();
    let mut next_verify = Instant::now() + verify_every;
    loop {
        let Some(b) = balancer.upgrade().filter(|b| !b.retired()) else {
            return;
        };
        let set = b.endpoints();
        let now = now_ms();
        set.iter().for_each(|e| e.refresh(now));
        let mut probes = JoinSet::new();
        match &check {
            Some(check) if Instant::now() >= next_check => {
                next_check = Instant::now() + check.interval;
                for endpoint in set.iter() {
                    let uri = b.check_uri.clone();
                    let probe_uri = b.probe_uri.clone();
                    probes.spawn(probe(endpoint.clone(), check.clone(), uri, probe_uri));
                }
            }
            None if Instant::now() >= next_verify => {
                next_verify = Instant::now() + verify_every;
                for endpoint in set.iter().filter(|e| !e.trusted()) {
                    probes.spawn(reverify(endpoint.clone(), b.probe_uri.clone()));
                }
            }
            _ => {}
        }
        drop((b, set));
        probes.join_all().await;
        tokio::time::sleep(tick).await;
    }
}

/// One active check of `endpoint`: a fresh handshake first if it is out for TLS, then a GET of
/// the check path through its pool.
async fn probe(endpoint: Arc<Endpoint>, check: HealthCheck, uri: Uri, probe_uri: Uri) {
    if !endpoint.trusted() {
        match timeout(check.timeout, endpoint.pool.handshake(probe_uri)).await {
            Ok(Ok(())) => endpoint.verified(),
            Ok(Err(e)) => {
                return endpoint.check_failed(
                    result_of(e.as_ref()),
                    &describe(e.as_ref()),
                    check.fall,
                );
            }
            Err(_) => return endpoint.check_failed("timeout", &timed_out(&check), check.fall),
        }
    }
    let request = Request::get(uri)
        .header(header::USER_AGENT, "trustgate-health-check")
        .body(UpstreamBody::empty());
    let Ok(request) = request else {
        return;
    };
    let exchange = async {
        let response = endpoint.pool.client().request(request).await?;
        let status = response.status();
        // Read (a bounded part of) the body, so the connection can serve again.
        let _: Option<Bytes> = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .ok()
            .map(|b| b.to_bytes());
        Ok::<_, hyper_util::client::legacy::Error>(status)
    };
    match timeout(check.timeout, exchange).await {
        Ok(Ok(status)) if check.expect.contains(status.as_u16()) => {
            endpoint.verified();
            endpoint.check_passed(check.rise);
        }
        Ok(Ok(status)) => endpoint.check_failed(
            "status",
            &format_args!(
                "GET {} answered {}, expected {}",
                check.path,
                status.as_u16(),
                check.expect
            ),
            check.fall,
        ),
        Ok(Err(e)) => endpoint.check_failed(result_of(&e), &describe(&e), check.fall),
        Err(_) => endpoint.check_failed("timeout", &timed_out(&check), check.fall),
    }
}

fn timed_out(check: &HealthCheck) -> String {
    format!(
        "GET {} got no answer within {}",
        check.path,
        humantime::format_duration(check.timeout)
    )
}

/// A fresh handshake with an endpoint out for TLS (routes without active checks).
async fn reverify(endpoint: Arc<Endpoint>, probe_uri: Uri) {
    match endpoint.pool.handshake(probe_uri).await {
        Ok(()) => endpoint.reverified(),
        Err(e) => endpoint.still_untrusted(result_of(e.as_ref()), &describe(e.as_ref())),
    }
}

/// The `result` label of a failed connection.
fn result_of(e: &(dyn std::error::Error + 'static)) -> &'static str {
    if tls_error(e).is_some() {
        "tls"
    } else {
        "connect"
    }
}
