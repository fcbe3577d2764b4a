//! The accept loop and graceful shutdown.

use crate::config::ProxyConfig;
use crate::gate::Gate;
use crate::registry::Registry;
use crate::routing::{Router, RoutingTable};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One proxy: its settings, routing table, live sessions and gate. Shared
/// with whoever drives it (the CLI, the daemon, tests).
pub struct Proxy {
    pub config: ProxyConfig,
    pub router: Router,
    pub registry: Registry,
    pub gate: Gate,
    /// Recent request durations (the copier throttles on their p99).
    pub latency: crate::latency::LatencyWindow,
}

impl Proxy {
    pub fn new(config: ProxyConfig, table: RoutingTable) -> Arc<Proxy> {
        Arc::new(Proxy {
            config,
            router: Router::new(table),
            registry: Registry::default(),
            gate: Gate::default(),
            latency: Default::default(),
        })
    }
}

/// Where the proxy is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// No new sessions; sessions close at their next transaction boundary.
    Draining,
    /// The shutdown deadline passed: every session closes now.
    Forced,
}

/// Accept connections on `listener` until `shutdown` resolves, then drain:
/// stop accepting, let open transactions finish up to the configured
/// deadline, and close every session with `57P01`.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (phase, watch_rx) = watch::channel(Phase::Running);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    sessions.spawn(crate::session::handle(proxy.clone(), tcp, Some(peer), watch_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        sessions = sessions.len(),
        "proxy shutting down: closing sessions at their transaction boundaries"
    );
    let _ = phase.send(Phase::Draining);
    let all = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(proxy.config.shutdown_timeout, all)
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = sessions.len(),
            "shutdown deadline passed: closing sessions inside transactions"
        );
        let _ = phase.send(Phase::Forced);
        let rest = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), rest)
            .await
            .is_err()
        {
            sessions.abort_all();
        }
    }
    Ok(())
}
