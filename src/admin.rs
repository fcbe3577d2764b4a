//! The daemon's admin console: a small Postgres-protocol server (on the
//! `pgwire` crate) that `psql -h HOST -p ADMIN_PORT` talks to. Commands:
//! `SHOW MIGRATIONS | SESSIONS | VERSIONS | BACKFILL | SETTINGS`,
//! `PAUSE BACKFILL`, `RESUME BACKFILL`, `SET key = value`. What it changes
//! goes through the control schema like the CLI's verbs, so every daemon
//! (and `pgshift status`) sees the same state.

use crate::engine::state;
use async_trait::async_trait;
use futures_util::stream;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the console reads and controls.
pub struct Admin {
    pub url: String,
    pub schema: String,
    pub proxy: Arc<pgshift_proxy::Proxy>,
    pub control: Arc<crate::backfill::Control>,
}

const HELP: &str = "commands: SHOW MIGRATIONS, SHOW SESSIONS, SHOW VERSIONS, SHOW BACKFILL, SHOW SETTINGS, PAUSE BACKFILL, RESUME BACKFILL, SET <setting> = <value>";

fn user_error(code: &str, msg: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        msg.into(),
    )))
}

fn table(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> PgWireResult<Response> {
    let schema = Arc::new(
        columns
            .iter()
            .map(|c| FieldInfo::new((*c).into(), None, None, Type::TEXT, FieldFormat::Text))
            .collect::<Vec<_>>(),
    );
    let mut encoder = DataRowEncoder::new(schema.clone());
    let mut encoded = Vec::with_capacity(rows.len());
    for row in rows {
        for v in row {
            encoder.encode_field(&v)?;
        }
        encoded.push(Ok(encoder.take_row()));
    }
    Ok(Response::Query(QueryResponse::new(
        schema,
        stream::iter(encoded),
    )))
}

impl Admin {
    async fn db(&self) -> PgWireResult<tokio_postgres::Client> {
        crate::engine::connect(&self.url)
            .await
            .map_err(|e| user_error("08006", e.to_string()))
    }

    async fn run(&self, query: &str) -> PgWireResult<Response> {
        let q = query.trim().trim_end_matches(';').trim();
        let words: Vec<String> = q
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let pg = |e: crate::Error| user_error("XX000", e.to_string());
        match words.as_slice() {
            [] => Ok(Response::EmptyQuery),
            ["SHOW", "MIGRATIONS"] => {
                let c = self.db().await?;
                let rows = c
                    .query(
                        "SELECT name, phase, version_schema, parent, created_at::text, completed_at::text
                         FROM pgshift.migrations WHERE schema = $1 ORDER BY created_at",
                        &[&self.schema],
                    )
                    .await
                    .map_err(|e| user_error("XX000", e.to_string()))?;
                table(
                    &[
                        "name",
                        "phase",
                        "version_schema",
                        "parent",
                        "created_at",
                        "completed_at",
                    ],
                    rows.iter()
                        .map(|r| (0..6).map(|i| r.get::<_, Option<String>>(i)).collect())
                        .collect(),
                )
            }
            ["SHOW", "SESSIONS"] => table(
                &[
                    "id",
                    "version",
                    "user",
                    "database",
                    "application_name",
                    "client_addr",
                    "state",
                    "age_s",
                ],
                self.proxy
                    .registry
                    .snapshot()
                    .into_iter()
                    .map(|s| {
                        vec![
                            Some(s.id.to_string()),
                            s.version,
                            Some(s.user),
                            Some(s.database),
                            Some(s.application_name),
                            s.client_addr.map(|a| a.to_string()),
                            Some(s.state.as_str().to_string()),
                            Some(s.age.as_secs().to_string()),
                        ]
                    })
                    .collect(),
            ),
            ["SHOW", "VERSIONS"] => {
                let t = self.proxy.router.current();
                let counts = self.proxy.registry.count_by_version();
                table(
                    &["version", "search_path", "default", "sessions"],
                    t.versions
                        .iter()
                        .map(|v| {
                            vec![
                                Some(v.name.clone()),
                                Some(v.search_path.join(", ")),
                                Some((t.default.as_deref() == Some(v.name.as_str())).to_string()),
                                Some(counts.get(&v.name).copied().unwrap_or(0).to_string()),
                            ]
                        })
                        .collect(),
                )
            }
            ["SHOW", "BACKFILL"] => {
                let c = self.db().await?;
                let latest = state::latest(&c, &self.schema).await.map_err(pg)?;
                let mut rows = Vec::new();
                if let Some(m) = latest {
                    for b in state::backfills(&c, &self.schema, &m.name)
                        .await
                        .map_err(pg)?
                    {
                        rows.push(vec![
                            Some(m.name.clone()),
                            Some(b.table),
                            Some(b.rows_done.to_string()),
                            Some(b.rows_total.to_string()),
                            Some(b.batches.to_string()),
                            Some(b.done.to_string()),
                            self.control.state(),
                        ]);
                    }
                }
                table(
                    &[
                        "migration",
                        "table",
                        "rows_done",
                        "rows_total",
                        "batches",
                        "done",
                        "waiting",
                    ],
                    rows,
                )
            }
            ["SHOW", "SETTINGS"] => {
                let c = self.db().await?;
                let stored = state::settings(&c, &self.schema).await.map_err(pg)?;
                table(
                    &["setting", "value", "meaning"],
                    state::SETTINGS
                        .iter()
                        .map(|(k, what)| {
                            vec![
                                Some((*k).to_string()),
                                stored.get(*k).cloned(),
                                Some((*what).to_string()),
                            ]
                        })
                        .collect(),
                )
            }
            ["PAUSE", "BACKFILL"] | ["RESUME", "BACKFILL"] => {
                let c = self.db().await?;
                let v = if words[0] == "PAUSE" { "true" } else { "false" };
                state::set_setting(&c, &self.schema, "paused", v)
                    .await
                    .map_err(pg)?;
                Ok(Response::Execution(Tag::new(&format!(
                    "{} BACKFILL",
                    words[0]
                ))))
            }
            ["SET", ..] => {
                // SET key = value | SET key TO value (key and value as typed).
                let rest = q[3..].trim();
                let (key, value) = rest
                    .split_once('=')
                    .or_else(|| {
                        let lower = rest.to_ascii_lowercase();
                        lower.find(" to ").map(|i| (&rest[..i], &rest[i + 4..]))
                    })
                    .ok_or_else(|| {
                        user_error("42601", format!("SET needs `key = value`; {HELP}"))
                    })?;
                let (key, value) = (
                    key.trim().to_ascii_lowercase(),
                    value.trim().trim_matches('\'').to_string(),
                );
                let c = self.db().await?;
                state::set_setting(&c, &self.schema, &key, &value)
                    .await
                    .map_err(|e| user_error("22023", e.to_string()))?;
                Ok(Response::Execution(Tag::new("SET")))
            }
            _ => Err(user_error(
                "42601",
                format!("unknown command {q:?}; {HELP}"),
            )),
        }
    }
}

#[async_trait]
impl NoopStartupHandler for Admin {}

#[async_trait]
impl SimpleQueryHandler for Admin {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Unpin + Send + Sync,
    {
        Ok(vec![self.run(query).await?])
    }
}

struct Handlers(Arc<Admin>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.0.clone()
    }
}

/// Serve the console on `addr` (bind now, accept in the background).
pub async fn serve(addr: SocketAddr, admin: Admin) -> crate::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::io(format!("cannot listen on {addr} (admin console)"), e))?;
    let handlers = Arc::new(Handlers(Arc::new(admin)));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let h = handlers.clone();
            tokio::spawn(async move {
                if let Err(e) = pgwire::tokio::process_socket(socket, None, h).await {
                    tracing::debug!("admin console connection: {e}");
                }
            });
        }
    });
    Ok(())
}
