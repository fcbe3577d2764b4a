//! A very small HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`:
//! GET only, one response per connection. Enough for Prometheus and
//! orchestrator probes without pulling in a web framework.

use crate::error::{Error, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Install the Prometheus recorder (real histograms for `*_seconds`).
pub fn install_recorder() -> Result<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::config(format!("metrics: {e}")))
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
