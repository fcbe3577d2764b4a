//! A very small HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`:
//! GET only, one response per connection. Enough for Prometheus and
//! orchestrator probes without pulling in a web framework.

use crate::error::{Error, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HELP texts of every metric pgshift exports.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "pgshift_build_info",
        "pgshift build, value 1; labels: version"
    );
    describe_gauge!("pgshift_sessions", "Live proxy sessions per schema version");
    describe_gauge!(
        "pgshift_sessions_on_old_versions",
        "Proxy sessions on another version than the active migration's (they block complete)"
    );
    describe_counter!(
        "pgshift_client_connections_total",
        "Client connection attempts by outcome"
    );
    describe_counter!(
        "pgshift_queries_total",
        "Requests answered (one per ReadyForQuery) per version"
    );
    describe_histogram!(
        "pgshift_query_duration_seconds",
        Unit::Seconds,
        "Request duration seen by the proxy, per version"
    );
    describe_counter!(
        "pgshift_server_errors_total",
        "ErrorResponses from Postgres by SQLSTATE class"
    );
    describe_counter!(
        "pgshift_proxy_errors_total",
        "The proxy's own errors by kind"
    );
    describe_counter!(
        "pgshift_bytes_total",
        Unit::Bytes,
        "Bytes forwarded by direction"
    );
    describe_counter!(
        "pgshift_cancel_requests_total",
        "Cancel requests by outcome"
    );
    describe_gauge!(
        "pgshift_gate_closed",
        "1 while the proxy's transaction gate is closed"
    );
    describe_counter!(
        "pgshift_gate_holds_total",
        "Sessions held at the gate, by how the hold ended"
    );
    describe_histogram!(
        "pgshift_gate_hold_seconds",
        Unit::Seconds,
        "How long each gate hold lasted"
    );
    describe_gauge!(
        "pgshift_copier_leader",
        "1 when this daemon leads the copier"
    );
    describe_counter!(
        "pgshift_copier_errors_total",
        "Copier runs that failed (retried)"
    );
    describe_gauge!(
        "pgshift_backfill_rows_done",
        "Rows backfilled so far, per table"
    );
    describe_gauge!("pgshift_backfill_rows_total", "Rows to backfill, per table");
    describe_gauge!(
        "pgshift_backfill_rows_remaining",
        "Rows left to backfill, per table"
    );
    describe_counter!(
        "pgshift_backfill_rows_copied_total",
        "Rows the copier updated, per table"
    );
    describe_gauge!(
        "pgshift_backfill_rows_per_second",
        "Current backfill rate, per table"
    );
    describe_gauge!(
        "pgshift_backfill_eta_seconds",
        Unit::Seconds,
        "Estimated time to finish the table's backfill"
    );
    describe_histogram!(
        "pgshift_backfill_batch_duration_seconds",
        Unit::Seconds,
        "Duration of one backfill batch"
    );
    describe_gauge!(
        "pgshift_backfill_throttled",
        "1 while the copier waits (paused or throttled)"
    );
    describe_gauge!(
        "pgshift_backfill_slowdown_ratio",
        "graded throttle: the copier rests this many times each batch's duration (0: full speed)"
    );
    describe_gauge!(
        "pgshift_backfill_pace_cap_rows_per_second",
        "under a latency bound, the most rows per second the copier may go: twice its mean pace of its last working minutes (0: none)"
    );
    describe_gauge!(
        "pgshift_backfill_throttle_reason",
        "1 for the reason the copier waits: paused, latency or replica_lag"
    );
    describe_gauge!(
        "pgshift_migration_phase",
        "1 for the newest migration's current phase"
    );
    describe_counter!(
        "pgshift_lock_attempts_total",
        "DDL lock attempts by outcome (granted, timed_out, exhausted)"
    );
    describe_gauge!(
        "pgshift_proxy_p99_seconds",
        Unit::Seconds,
        "p99 of proxy requests over the last second (throttle input)"
    );
    describe_gauge!(
        "pgshift_proxy_own_p99_seconds",
        Unit::Seconds,
        "the application's own p99, measured with the copier resting (max_p99_ratio)"
    );
    describe_gauge!(
        "pgshift_replica_lag_seconds",
        Unit::Seconds,
        "Largest replica replay lag (throttle input)"
    );
}

/// Install the Prometheus recorder (real histograms for `*_seconds`) and
/// its upkeep task. Call from within the runtime.
pub fn install_recorder() -> Result<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::config(format!("metrics: {e}")))?;
    describe();
    metrics::gauge!("pgshift_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Histogram samples pile up until drained: without this, a daemon nobody
    // scrapes would keep one sample of every query it proxied.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What the endpoints report.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: PrometheusHandle,
    /// `/readyz` answers 200 while this is true.
    pub ready: Arc<AtomicBool>,
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {addr} (metrics)"), e))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let ep = endpoints.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let mut parts = head.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/metrics") => {
                        ("200 OK", "text/plain; version=0.0.4", ep.metrics.render())
                    }
                    ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
                    ("GET", "/readyz") if ep.ready.load(Ordering::Acquire) => {
                        ("200 OK", "text/plain", "ready\n".to_string())
                    }
                    ("GET", "/readyz") => (
                        "503 Service Unavailable",
                        "text/plain",
                        "not ready: Postgres or the control schema cannot be read\n".to_string(),
                    ),
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                    _ => (
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET only\n".to_string(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}
