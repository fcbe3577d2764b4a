//! `pgshift daemon`: the proxy, the background copier and the metrics and
//! health endpoints in one process. Migration state stays in the control
//! schema (one source of truth); the daemon learns of changes through
//! LISTEN/NOTIFY on [`CHANNEL`], with a slow poll as a fallback.
//!
//! Several daemons may serve one database: all run the proxy, one leads the
//! copier (a session advisory lock); when the leader dies its lock goes with
//! its connection and another daemon takes over from the persisted mark.

pub mod config;
mod throttle;

use crate::engine::state::{self, CHANNEL};
use crate::engine::{Engine, Options};
use crate::error::{Error, Result};
use crate::progress::ProgressMode;
use config::{Config, Overrides};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Options of `pgshift daemon` (the file's keys can be overridden here).
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration file (see docs/daemon.md).
    #[arg(long, env = "PGSHIFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the proxy accepts clients on [default: 127.0.0.1:6432].
    #[arg(long, env = "PGSHIFT_LISTEN")]
    pub listen: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "PGSHIFT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Address of the admin console.
    #[arg(long, env = "PGSHIFT_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Threads serving connections; 0 runs everything on one thread.
    #[arg(long, env = "PGSHIFT_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

/// Settings SIGHUP and the live settings can change.
struct Live {
    config: Mutex<Config>,
    /// Pause, throttle and rate limit of the copier.
    control: Arc<crate::backfill::Control>,
    /// The throttle's bounds.
    bounds: Mutex<throttle::Bounds>,
}

impl Live {
    fn get(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn bounds(&self) -> throttle::Bounds {
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply the live settings from the control schema over the file's.
    fn apply(&self, settings: &std::collections::BTreeMap<String, String>) {
        let num = |k: &str| settings.get(k).and_then(|v| v.parse::<u64>().ok());
        self.control
            .set_paused(settings.get("paused").is_some_and(|v| v == "true"));
        self.control.set_rate_limit(num("rate_limit").unwrap_or(0));
        let float = |k: &str| {
            settings
                .get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(0.0)
        };
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner()) = throttle::Bounds {
            max_p99: Duration::from_secs_f64(float("max_p99_ms") / 1000.0),
            max_lag: Duration::from_millis(num("max_replica_lag_ms").unwrap_or(0)),
            p99_ratio: float("max_p99_ratio"),
        };
        let mut c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ms) = num("batch_target_ms").filter(|v| *v > 0) {
            c.backfill.target = Duration::from_millis(ms);
        }
        if let Some(n) = num("batch_size") {
            c.backfill.batch_size = (n > 0).then_some(n);
        }
        // A running backfill picks these up at its next batch.
        self.control
            .set_sizing(c.backfill.target, c.backfill.batch_size);
    }
}

/// A connection that LISTENs on pgshift's channel; each notification is
/// one message on the receiver, which closes when the connection does.
async fn listening(url: &str, app: &str) -> Result<(Client, mpsc::UnboundedReceiver<String>)> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.map_err(|e| {
        Error::db(
            format!("cannot connect to {}", crate::engine::redact(url)),
            e,
        )
    })?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("listening connection closed: {e}");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!(
            "SET application_name = {}; LISTEN {CHANNEL}",
            crate::sql::literal(app)
        ))
        .await
        .map_err(|e| Error::db("LISTEN", e))?;
    Ok((client, rx))
}

/// Wait for a notification or `every`; false when the connection closed.
async fn next_event(rx: &mut mpsc::UnboundedReceiver<String>, every: Duration) -> bool {
    tokio::select! {
        m = rx.recv() => m.is_some(),
        _ = tokio::time::sleep(every) => true,
    }
}

/// This daemon's row in `pgshift.daemons`.
fn daemon_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// The sessions of the proxy as the control schema stores them.
fn sessions_json(proxy: &pgshift_proxy::Proxy) -> serde_json::Value {
    let rows: Vec<state::SessionRow> = proxy
        .registry
        .snapshot()
        .into_iter()
        .map(|s| state::SessionRow {
            version: s.version,
            user: s.user,
            database: s.database,
            application_name: s.application_name,
            client_addr: s.client_addr.map(|a| a.to_string()),
            state: s.state.as_str().to_string(),
            age_s: s.age.as_secs(),
        })
        .collect();
    serde_json::to_value(rows).unwrap_or_default()
}

async fn heartbeat(
    client: &Client,
    id: &str,
    cfg: &Config,
    listen: &str,
    proxy: &pgshift_proxy::Proxy,
    ack: Option<&str>,
    throttle: Option<String>,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgshift.daemons (id, schema, listen, sessions, gate_ack, throttle) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET sessions = EXCLUDED.sessions, gate_ack = coalesce(EXCLUDED.gate_ack, pgshift.daemons.gate_ack),
               throttle = EXCLUDED.throttle, updated_at = now()",
            &[&id, &cfg.schema, &listen, &sessions_json(proxy), &ack, &throttle],
        )
        .await
        .map_err(|e| Error::db("daemon heartbeat", e))?;
    Ok(())
}

/// Carry out a request from a CLI (`req|action|arg|schema`); returns the
/// id to acknowledge, if any.
async fn handle_request(
    payload: &str,
    cfg: &Config,
    proxy: &pgshift_proxy::Proxy,
    control: &crate::backfill::Control,
    closed_at: &mut Option<std::time::Instant>,
) -> Option<String> {
    let mut parts = payload.splitn(4, '|');
    let (Some("req"), Some(action), Some(arg), Some(schema)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if schema != cfg.schema {
        return None;
    }
    match action {
        "close_gate" => {
            proxy.gate.close().await;
            *closed_at = Some(std::time::Instant::now());
            Some(arg.to_string())
        }
        "open_gate" => {
            proxy.gate.open();
            *closed_at = None;
            Some(arg.to_string())
        }
        "step_aside" => {
            tracing::info!(
                migration = arg,
                "copier: stepping aside for a pgshift command (rollback)"
            );
            control.step_aside(arg, crate::engine::STEP_ASIDE_PERIOD);
            None
        }
        "step_back" => {
            control.step_back(arg);
            None
        }
        "drain" => {
            let db = proxy.router.current().database.clone();
            let n = proxy.registry.terminate(
                |s| {
                    s.version.as_deref() != Some(arg)
                        && db.as_deref().is_none_or(|d| d == s.database)
                },
                &format!("version retired: pgshift completed migration {arg}; reconnect to use it"),
            );
            tracing::info!(keep = arg, closed = n, "drained sessions on other versions");
            None
        }
        _ => None,
    }
}

/// Keep the proxy's routing table in step with the control schema, report
/// this daemon's sessions every second, and carry out gate and drain
/// requests.
async fn control_loop(
    live: Arc<Live>,
    proxy: Arc<pgshift_proxy::Proxy>,
    ready: Arc<AtomicBool>,
    listen: String,
) {
    let id = daemon_id();
    let mut closed_at: Option<std::time::Instant> = None;
    loop {
        let cfg = live.get();
        match listening(&cfg.postgres_url, "pgshift-daemon").await {
            Ok((client, mut rx)) => {
                if let Err(e) = state::init(&client).await {
                    tracing::warn!("control schema: {e}");
                }
                let mut ack: Option<String> = None;
                loop {
                    let cfg = live.get();
                    let step = async {
                        live.apply(&state::settings(&client, &cfg.schema).await?);
                        heartbeat(
                            &client,
                            &id,
                            &cfg,
                            &listen,
                            &proxy,
                            ack.as_deref(),
                            live.control.state(),
                        )
                        .await?;
                        phase_metric(&client, &cfg.schema, &proxy).await?;
                        crate::serve::table_from(&client, &cfg.schema, &cfg.routes).await
                    };
                    match step.await {
                        Ok(t) => {
                            ready.store(true, Ordering::Release);
                            crate::serve::set_routes(&proxy, t);
                        }
                        Err(e) => {
                            ready.store(false, Ordering::Release);
                            tracing::warn!("control: {e}");
                            break;
                        }
                    }
                    // Fail safe: a CLI that died with the gate closed.
                    if closed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(
                            "the gate was closed for 30 s without a reopen request; opening it"
                        );
                        proxy.gate.open();
                        closed_at = None;
                    }
                    let msg = tokio::select! {
                        m = rx.recv() => match m { Some(m) => Some(m), None => break },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => None,
                    };
                    if let Some(m) = msg {
                        if let Some(a) =
                            handle_request(&m, &cfg, &proxy, &live.control, &mut closed_at).await
                        {
                            ack = Some(a);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("control: {e}"),
        }
        ready.store(false, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Lead the copier when no other daemon does, and run every backfill a
/// `start` handed over.
async fn copier_loop(live: Arc<Live>) {
    let leader = metrics::gauge!("pgshift_copier_leader");
    let errors = metrics::counter!("pgshift_copier_errors_total");
    errors.increment(0);
    loop {
        leader.set(0.0);
        let cfg = live.get();
        let (client, mut rx) = match listening(&cfg.postgres_url, "pgshift-copier").await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("copier: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Wait to lead (a leader that dies frees the lock with its connection).
        let mut alive = true;
        loop {
            match state::try_lead_copier(&client, &cfg.schema).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("copier: {e}");
                    alive = false;
                    break;
                }
            }
            if !next_event(&mut rx, Duration::from_secs(1)).await {
                alive = false;
                break;
            }
        }
        if !alive {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tracing::info!(schema = %cfg.schema, "copier: this daemon leads the backfill");
        leader.set(1.0);
        let mut engine = match Engine::with_client(client, options(&cfg, &live.control)).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("copier: {e}");
                continue;
            }
        };
        loop {
            engine.set_backfill_options(options(&live.get(), &live.control).backfill);
            match engine.run_pending_backfill().await {
                Ok(Some(name)) => tracing::info!("copier: backfill of {name:?} done"),
                Ok(None) => {}
                Err(e) if e.kind() == crate::error::Kind::SteppedAside => {
                    tracing::info!("copier: {e}")
                }
                Err(e) => {
                    errors.increment(1);
                    tracing::warn!("copier: {e}");
                }
            }
            if engine.client().is_closed() || !next_event(&mut rx, Duration::from_secs(2)).await {
                break;
            }
        }
    }
}

/// `pgshift_migration_phase{migration, phase}` = 1 for the newest
/// migration, sessions on old versions, and lock attempts from the control
/// schema (CLI runs record them there).
async fn phase_metric(client: &Client, schema: &str, proxy: &pgshift_proxy::Proxy) -> Result<()> {
    if let Ok(rows) = client
        .query(
            "SELECT outcome, attempts FROM pgshift.lock_stats WHERE schema = $1",
            &[&schema],
        )
        .await
    {
        for r in rows {
            let (outcome, n): (String, i64) = (r.get(0), r.get(1));
            metrics::counter!("pgshift_lock_attempts_total", "outcome" => outcome)
                .absolute(u64::try_from(n).unwrap_or(0));
        }
    }
    let latest = state::latest_phase(client, schema).await?;
    let active = latest
        .as_ref()
        .filter(|(_, phase)| *phase == state::Phase::Active)
        .map(|(name, _)| name.clone());
    let old = match &active {
        Some(v) => proxy
            .registry
            .snapshot()
            .iter()
            .filter(|s| s.version.as_deref() != Some(v))
            .count(),
        None => 0,
    };
    metrics::gauge!("pgshift_sessions_on_old_versions").set(old as f64);
    if let Some((name, phase)) = latest {
        for p in [
            "starting",
            "backfilling",
            "active",
            "completing",
            "complete",
            "rolling_back",
        ] {
            let on = if phase.as_str() == p { 1.0 } else { 0.0 };
            metrics::gauge!("pgshift_migration_phase", "migration" => name.clone(), "phase" => p)
                .set(on);
        }
    }
    Ok(())
}

fn options(cfg: &Config, control: &Arc<crate::backfill::Control>) -> Options {
    let mut backfill = cfg.backfill.clone();
    backfill.control = Some(control.clone());
    Options {
        schema: cfg.schema.clone(),
        backfill,
        progress: ProgressMode::Log,
        ..Options::default()
    }
}

/// Wait for SIGHUP forever, reloading the configuration each time.
async fn reload_loop(
    live: Arc<Live>,
    file: Option<PathBuf>,
    over: Overrides,
    proxy: Arc<pgshift_proxy::Proxy>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match config::load(file.as_deref(), &over) {
            Ok(new) => {
                let mut table = proxy.router.current().as_ref().clone();
                table.rules = new.routes.clone();
                proxy.router.set(table);
                *live.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
                tracing::info!("configuration reloaded");
            }
            Err(e) => tracing::error!("configuration not reloaded, keeping the old one: {e}"),
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT.
pub async fn run(g: &crate::cli::GlobalOpts, args: &DaemonArgs) -> Result<()> {
    let over = Overrides {
        postgres_url: g.postgres_url.clone(),
        schema: g.schema.clone(),
        listen: args.listen.clone(),
        metrics_listen: args.metrics_listen.clone(),
        admin_listen: args.admin_listen.clone(),
    };
    let cfg = config::load(args.config.as_deref(), &over)?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = crate::http::install_recorder()?;
    if let Some(addr) = cfg.metrics_listen {
        crate::http::serve(
            addr,
            crate::http::Endpoints {
                metrics,
                ready: ready.clone(),
            },
        )
        .await?;
    }
    let mut pcfg =
        pgshift_proxy::ProxyConfig::new(crate::serve::upstream_from_url(&cfg.postgres_url)?);
    if let Some(n) = cfg.proxy.max_message_size {
        pcfg.max_message = n.max(1024);
    }
    if let Some(ms) = cfg.proxy.gate_max_hold_ms {
        pcfg.gate_max_hold = Duration::from_millis(ms);
    }
    if let Some(s) = cfg.proxy.shutdown_timeout_s {
        pcfg.shutdown_timeout = Duration::from_secs(s);
    }
    if let (Some(cert), Some(key)) = (&cfg.proxy.tls_cert, &cfg.proxy.tls_key) {
        pcfg.tls = Some(pgshift_proxy::tls::server_config(cert, key).map_err(Error::config)?);
    }
    let proxy = pgshift_proxy::Proxy::new(
        pcfg,
        pgshift_proxy::RoutingTable {
            rules: cfg.routes.clone(),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", cfg.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    println!("pgshift daemon listening on {local}");
    if let Some(m) = cfg.metrics_listen {
        println!("metrics on http://{m}/metrics");
    }
    let admin_listen = cfg.admin_listen;
    let live = Arc::new(Live {
        config: Mutex::new(cfg),
        control: Arc::new(crate::backfill::Control::default()),
        bounds: Mutex::new(throttle::Bounds::default()),
    });
    if let Some(addr) = admin_listen {
        let cfg = live.get();
        crate::admin::serve(
            addr,
            crate::admin::Admin {
                url: cfg.postgres_url.clone(),
                schema: cfg.schema.clone(),
                proxy: proxy.clone(),
                control: live.control.clone(),
            },
        )
        .await?;
        println!(
            "admin console on {addr} (psql -h {} -p {})",
            addr.ip(),
            addr.port()
        );
    }
    let tasks = [
        tokio::spawn(control_loop(
            live.clone(),
            proxy.clone(),
            ready.clone(),
            local.to_string(),
        )),
        tokio::spawn(copier_loop(live.clone())),
        tokio::spawn(throttle::run(live.clone(), proxy.clone())),
        tokio::spawn(reload_loop(
            live.clone(),
            args.config.clone(),
            over,
            proxy.clone(),
        )),
    ];
    let res = pgshift_proxy::run(listener, proxy, crate::serve::shutdown_signal()).await;
    for t in tasks {
        t.abort();
    }
    res.map_err(|e| Error::io("proxy", e))
}
