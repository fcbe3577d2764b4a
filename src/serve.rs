//! `pgshift proxy`: the wire proxy on its own. Routes come from the control
//! schema (every started or completed version whose schema exists; the
//! newest completed one is the default) plus `--route` rules, and are
//! re-read every `--refresh-ms` without touching open sessions.

use crate::engine::connect;
use crate::error::{Error, Result};
use crate::sql::literal;
use pgshift_proxy::{ProxyConfig, RoutingTable, Rule, SslMode, Target, Upstream, Version};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// Options of `pgshift proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address to accept clients on.
    #[arg(long, default_value = "127.0.0.1:6432", env = "PGSHIFT_LISTEN")]
    pub listen: String,
    /// PEM certificate chain for TLS towards clients (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS towards clients.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Routing rule, repeatable: `user=U,application_name=A,database=D,version=V`
    /// (any of the first three; every one given must match).
    #[arg(long = "route", value_name = "RULE")]
    pub routes: Vec<String>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "PGSHIFT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest protocol message accepted from either side, in bytes.
    #[arg(long, default_value_t = 0x4000_0000 + 1024)]
    pub max_message_size: u32,
    /// Longest a session waits at a closed gate, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub gate_max_hold_ms: u64,
    /// Longest a graceful shutdown waits for open transactions, in seconds.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// How often the routing table is re-read from the control schema, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub refresh_ms: u64,
    /// Threads serving connections; 0 runs everything on one thread.
    #[arg(long, env = "PGSHIFT_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

/// The TLS settings of a connection string that tokio-postgres does not
/// parse (`sslmode=verify-full`, `sslrootcert`), removed from it.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<PathBuf>) {
    let mut mode = None;
    let mut root = None;
    let mut keep = |k: &str, v: &str| match k {
        "sslmode" => {
            mode = Some(v.to_string());
            false
        }
        "sslrootcert" => {
            root = Some(PathBuf::from(v));
            false
        }
        _ => true,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        keep(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                keep(k.trim(), v.trim())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root)
}

/// Where and how to reach Postgres, from a libpq-style connection string.
pub fn upstream_from_url(url: &str) -> Result<Upstream> {
    let (rest, mode, root) = split_tls_params(url);
    let cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| Error::config(format!("--postgres-url: {e}")))?;
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let target = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Target::Tcp {
            host: h.clone(),
            port,
        },
        Some(tokio_postgres::config::Host::Unix(dir)) => {
            Target::Unix(dir.join(format!(".s.PGSQL.{port}")))
        }
        None => Target::Tcp {
            host: "localhost".into(),
            port,
        },
    };
    let mode = SslMode::parse(mode.as_deref().unwrap_or("disable"))
        .map_err(|e| Error::config(format!("--postgres-url: {e}")))?;
    Upstream::new(target, mode, root.as_deref())
        .map_err(|e| Error::config(format!("--postgres-url: {e}")))
}

/// The versions clients can use on `schema` and the default, read from the
/// control schema. Empty when pgshift was never initialised there.
pub async fn versions(client: &Client, schema: &str) -> Result<(Vec<Version>, Option<String>)> {
    let rows = client
        .query(
            "SELECT name, version_schema, phase FROM pgshift.migrations
             WHERE schema = $1 AND phase IN ('active', 'completing', 'complete')
               AND to_regnamespace(quote_ident(version_schema)) IS NOT NULL
             ORDER BY completed_at DESC NULLS FIRST, created_at DESC",
            &[&schema],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        // No control schema yet: nothing to route to.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok((vec![], None))
        }
        Err(e) => return Err(Error::db("reading pgshift.migrations for routing", e)),
    };
    let mut versions = Vec::new();
    let mut default = None;
    for r in rows {
        let name: String = r.get(0);
        let version_schema: String = r.get(1);
        let phase: String = r.get(2);
        if phase == "complete" && default.is_none() {
            default = Some(name.clone());
        }
        versions.push(Version {
            name,
            search_path: vec![version_schema, schema.to_string()],
        });
    }
    Ok((versions, default))
}

/// The connection `pgshift proxy` reads its routes over.
async fn routes_client(url: &str) -> Result<Client> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "SET application_name = {}",
            literal("pgshift-proxy-routes")
        ))
        .await
        .map_err(|e| Error::db("", e))?;
    Ok(client)
}

/// Read the routes over `client`, opening it (again) when it is missing or
/// closed; a failure drops it so the next call reconnects.
async fn refresh_routes(
    client: &mut Option<Client>,
    url: &str,
    schema: &str,
    rules: &[Rule],
) -> Result<RoutingTable> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(routes_client(url).await?);
    }
    let Some(c) = client.as_ref() else {
        return Err(Error::state("no connection for routes"));
    };
    let res = table_from(c, schema, rules).await;
    if res.is_err() {
        *client = None;
    }
    res
}

/// The routing table of `schema` read over `client`, with `rules`.
pub async fn table_from(client: &Client, schema: &str, rules: &[Rule]) -> Result<RoutingTable> {
    let (versions, default) = versions(client, schema).await?;
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| Error::db("", e))?
        .get(0);
    Ok(RoutingTable {
        versions,
        rules: rules.to_vec(),
        default,
        database: Some(database),
    })
}

/// Install a routing table, logging when it changed.
pub(crate) fn set_routes(proxy: &pgshift_proxy::Proxy, table: RoutingTable) {
    if proxy.router.set(table) {
        let t = proxy.router.current();
        tracing::info!(
            versions = ?t.versions.iter().map(|v| &v.name).collect::<Vec<_>>(),
            default = ?t.default,
            "routing table changed"
        );
    }
}

/// Wait for SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Run the proxy until SIGTERM/SIGINT, then shut down gracefully.
pub async fn run(url: &str, schema: &str, args: &ProxyArgs) -> Result<()> {
    let mut config = ProxyConfig::new(upstream_from_url(url)?);
    config.max_message = args.max_message_size.max(1024);
    config.gate_max_hold = Duration::from_millis(args.gate_max_hold_ms);
    config.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(pgshift_proxy::tls::server_config(cert, key).map_err(Error::config)?);
    }
    let rules = args
        .routes
        .iter()
        .map(|r| Rule::parse(r).map_err(|e| Error::config(format!("--route: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    if let Some(addr) = args.metrics_listen {
        let metrics = crate::http::install_recorder()?;
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        crate::http::serve(addr, crate::http::Endpoints { metrics, ready }).await?;
    }
    let mut routes_conn: Option<Client> = None;
    let table = match refresh_routes(&mut routes_conn, url, schema, &rules).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot read routes yet ({e}); starting with no versions");
            RoutingTable {
                rules: rules.clone(),
                ..RoutingTable::default()
            }
        }
    };
    let proxy = pgshift_proxy::Proxy::new(config, table);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", args.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    println!("pgshift proxy listening on {local}");
    tracing::info!(%local, upstream = %proxy.config.upstream.target, "proxy started");

    let refresher = {
        let (proxy, url, schema) = (Arc::clone(&proxy), url.to_string(), schema.to_string());
        let every = Duration::from_millis(args.refresh_ms.max(50));
        tokio::spawn(async move {
            let mut conn = routes_conn;
            loop {
                tokio::time::sleep(every).await;
                match refresh_routes(&mut conn, &url, &schema, &rules).await {
                    Ok(t) => set_routes(&proxy, t),
                    Err(e) => tracing::debug!("refreshing routes: {e}"),
                }
            }
        })
    };
    let res = pgshift_proxy::run(listener, proxy, shutdown_signal()).await;
    refresher.abort();
    res.map_err(|e| Error::io("proxy", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_split_from_both_url_forms() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u@h:5/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        );
        assert_eq!(rest, "postgres://u@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root, Some(PathBuf::from("/ca.pem")));
        let (rest, mode, _) = split_tls_params("host=h port=5 sslmode=require user=u");
        assert_eq!(rest, "host=h port=5 user=u");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn upstream_targets_tcp_and_unix_sockets() {
        let u = upstream_from_url("postgres://u@db.example:6543/x").unwrap();
        assert_eq!(u.target.to_string(), "db.example:6543");
        let u = upstream_from_url("host=/tmp/pg port=5999 user=u").unwrap();
        assert_eq!(u.target.to_string(), "/tmp/pg/.s.PGSQL.5999");
        assert!(upstream_from_url("postgres://h/x?sslmode=verify-ca").is_err());
    }
}
