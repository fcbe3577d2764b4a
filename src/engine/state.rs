//! The control schema `pgshift`: migration rows (contents, checksum, plan,
//! phase, step cursor) and backfill progress, plus the advisory lock that
//! keeps two pgshift processes from working on one schema at once.

use crate::error::{Error, Result};
use crate::plan::Plan;
use serde::Serialize;
use std::fmt;
use tokio_postgres::Client;

const INIT_SQL: &str = include_str!("init.sql");
/// First key of pgshift's advisory locks (`pgsh`).
const LOCK_CLASS: i32 = 0x7067_7368;

/// Where a migration is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Backfilling,
    Active,
    Completing,
    Complete,
    RollingBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Backfilling => "backfilling",
            Phase::Active => "active",
            Phase::Completing => "completing",
            Phase::Complete => "complete",
            Phase::RollingBack => "rolling_back",
        }
    }

    fn parse(s: &str) -> Result<Phase> {
        Ok(match s {
            "starting" => Phase::Starting,
            "backfilling" => Phase::Backfilling,
            "active" => Phase::Active,
            "completing" => Phase::Completing,
            "complete" => Phase::Complete,
            "rolling_back" => Phase::RollingBack,
            other => {
                return Err(Error::state(format!(
                    "unknown phase {other:?} in pgshift.migrations"
                )))
            }
        })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `pgshift.migrations`.
#[derive(Debug, Clone)]
pub struct MigrationRow {
    pub schema: String,
    pub name: String,
    pub parent: Option<String>,
    pub version_schema: String,
    pub checksum: String,
    pub contents: String,
    pub plan: Plan,
    pub phase: Phase,
    pub step: usize,
}

/// Backfill progress of one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackfillRow {
    pub table: String,
    pub rows_done: i64,
    pub rows_total: i64,
    pub batches: i64,
    pub done: bool,
}

/// The control schema version `init.sql` installs; bump it with every change
/// to that file so existing installations pick the change up.
const SCHEMA_VERSION: i32 = 4;

/// Create the control schema if needed (idempotent, serialised by a lock).
/// Every command that writes runs this, so it first checks the stored
/// version in one cheap query and skips the file when it is current.
pub async fn init(client: &Client) -> Result<()> {
    match crate::pg::query_opt(client, "SELECT version FROM pgshift.version", &[]).await {
        Ok(Some(row)) if row.get::<_, i32>(0) >= SCHEMA_VERSION => return Ok(()),
        // Older, missing (42P01) or unreadable: run the idempotent file,
        // which reports any real problem.
        _ => {}
    }
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, 0); {INIT_SQL} COMMIT;"
        ))
        .await
        .map_err(|e| Error::db("creating the control schema pgshift", e))
}

/// Is the control schema there?
pub async fn initialized(client: &Client) -> Result<bool> {
    let row = crate::pg::query_one(
        client,
        "SELECT to_regclass('pgshift.migrations') IS NOT NULL",
        &[],
    )
    .await
    .map_err(|e| Error::db("checking the control schema", e))?;
    Ok(row.get(0))
}

/// How long a pgshift process waits for another one's advisory lock before
/// giving up. A process that was just killed holds it until its backend
/// notices the closed socket and exits, which takes milliseconds; a live
/// process holds it for its whole command.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The channel pgshift notifies on every phase change, with payload
/// `<schema>:<phase>:<migration>`; proxies and copiers listen to it.
pub const CHANNEL: &str = "pgshift";

/// A daemon that reported in the last few seconds.
#[derive(Debug, Clone)]
pub struct DaemonRow {
    pub id: String,
    pub listen: String,
    pub sessions: Vec<SessionRow>,
    pub gate_ack: Option<String>,
    /// Why its copier waits (paused, throttled), if it does.
    pub throttle: Option<String>,
}

/// A proxy session as a daemon reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SessionRow {
    pub version: Option<String>,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub age_s: u64,
}

impl std::fmt::Display for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version {} user {:?} application {:?} from {} connected {} s ago ({})",
            self.version.as_deref().unwrap_or("(base)"),
            self.user,
            self.application_name,
            self.client_addr.as_deref().unwrap_or("?"),
            self.age_s,
            self.state
        )
    }
}

/// Daemons serving `schema` that reported within 5 s.
pub async fn live_daemons(client: &Client, schema: &str) -> Result<Vec<DaemonRow>> {
    let rows = crate::pg::query(
        client,
        "SELECT id, listen, sessions, gate_ack, throttle FROM pgshift.daemons
             WHERE schema = $1 AND updated_at > now() - interval '5 seconds' ORDER BY id",
        &[&schema],
    )
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(vec![])
        }
        Err(e) => return Err(Error::db("reading pgshift.daemons", e)),
    };
    Ok(rows
        .iter()
        .map(|r| DaemonRow {
            id: r.get(0),
            listen: r.get(1),
            sessions: serde_json::from_value(r.get(2)).unwrap_or_default(),
            gate_ack: r.get(3),
            throttle: r.get(4),
        })
        .collect())
}

/// Ask every daemon of `schema` to act: `close_gate` / `open_gate` (`arg`:
/// a request id they acknowledge in `gate_ack`) or `drain` (`arg`: the
/// version to keep; sessions on any other are closed). Payload
/// `req|<action>|<arg>|<schema>`.
pub async fn request(client: &Client, schema: &str, action: &str, arg: &str) -> Result<()> {
    crate::pg::execute(
        client,
        &format!("SELECT pg_notify('{CHANNEL}', 'req|' || $1 || '|' || $2 || '|' || $3)"),
        &[&action, &arg, &schema],
    )
    .await
    .map_err(|e| Error::db(format!("asking the daemons to {action}"), e))?;
    Ok(())
}

/// Live copier settings: key, what the value is.
pub const SETTINGS: &[(&str, &str)] = &[
    (
        "paused",
        "true or false: hold the copier before its next batch",
    ),
    ("rate_limit", "rows per second, 0 for none"),
    (
        "batch_target_ms",
        "target duration of one batch, in milliseconds (positive)",
    ),
    (
        "batch_size",
        "rows per batch, 0 to size batches to batch_target_ms",
    ),
    (
        "max_p99_ms",
        "throttle while the proxy's p99 request latency is above this, 0 for none",
    ),
    (
        "max_p99_ratio",
        "throttle while the proxy's p99 is above this many times the application's own p99 (over 1), 0 for none",
    ),
    (
        "max_replica_lag_ms",
        "throttle while a replica's replay lag is above this, 0 for none",
    ),
];

/// Check a setting's key and value.
pub fn check_setting(key: &str, value: &str) -> Result<()> {
    let Some((_, what)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
        return Err(Error::config(format!(
            "unknown setting {key:?}; settings: {}",
            SETTINGS
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let ok = match key {
        "paused" => matches!(value, "true" | "false"),
        "batch_target_ms" => value.parse::<u64>().is_ok_and(|v| v > 0),
        "max_p99_ms" => value
            .parse::<f64>()
            .is_ok_and(|v| v.is_finite() && v >= 0.0),
        "max_p99_ratio" => value
            .parse::<f64>()
            .is_ok_and(|v| v.is_finite() && (v == 0.0 || v > 1.0)),
        _ => value.parse::<u64>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "setting {key}: {value:?} is not valid ({what})"
        )))
    }
}

/// Store a setting and tell the daemons.
pub async fn set_setting(client: &Client, schema: &str, key: &str, value: &str) -> Result<()> {
    check_setting(key, value)?;
    crate::pg::execute(
        client,
        "INSERT INTO pgshift.settings (schema, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (schema, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        &[&schema, &key, &value],
    )
    .await
    .map_err(|e| Error::db(format!("storing setting {key}"), e))?;
    request(client, schema, "settings", key).await
}

/// Every stored setting of `schema`.
pub async fn settings(
    client: &Client,
    schema: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let rows = crate::pg::query(
        client,
        "SELECT key, value FROM pgshift.settings WHERE schema = $1",
        &[&schema],
    )
    .await;
    match rows {
        Ok(rows) => Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ok(Default::default())
        }
        Err(e) => Err(Error::db("reading pgshift.settings", e)),
    }
}

/// Become the copier leader of `schema` (session advisory lock, held until
/// the connection closes). Returns false when another process leads.
pub async fn try_lead_copier(client: &Client, schema: &str) -> Result<bool> {
    Ok(crate::pg::query_one(
        client,
        "SELECT pg_try_advisory_lock($1, hashtext('copier:' || $2))",
        &[&LOCK_CLASS, &schema],
    )
    .await
    .map_err(|e| Error::db("taking the copier leader lock", e))?
    .get(0))
}

/// The backend pid of the copier leader of `schema`, if a daemon leads.
pub async fn copier_leader(client: &Client, schema: &str) -> Result<Option<i32>> {
    let row = crate::pg::query_opt(
        client,
        "SELECT l.pid FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.classid = $1::int::oid AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.objid = hashtext('copier:' || $2)::oid AND l.objsubid = 2 LIMIT 1",
        &[&LOCK_CLASS, &schema],
    )
    .await
    .map_err(|e| Error::db("looking for a copier leader", e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Take the session-level advisory lock of `schema`, waiting at most
/// [`LOCK_GRACE`], or fail naming the process that holds it. Released when
/// the connection closes.
pub async fn lock(client: &Client, schema: &str) -> Result<()> {
    lock_within(client, schema, LOCK_GRACE).await
}

/// [`lock`], waiting at most `grace`.
pub async fn lock_within(client: &Client, schema: &str, grace: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + grace;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        let got: bool = crate::pg::query_one(
            client,
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await
        .map_err(|e| Error::db("taking pgshift's advisory lock", e))?
        .get(0);
        if got {
            return Ok(());
        }
        if std::time::Instant::now() + pause > deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
    let holder = crate::pg::query_opt(
        client,
        "SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local'),
                    coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS'), '')
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.classid = $1::int::oid
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.objid = hashtext($2)::oid AND l.objsubid = 2 AND l.granted LIMIT 1",
        &[&LOCK_CLASS, &schema],
    )
    .await
    .ok()
    .flatten()
    .map(|r| {
        let pid: i32 = r.get(0);
        let app: String = r.get(1);
        let addr: String = r.get(2);
        let since: String = r.get(3);
        format!(" (backend pid {pid}, application {app:?}, from {addr}, connected {since})")
    })
    .unwrap_or_default();
    Err(Error::state(format!(
        "another pgshift process is working on schema {schema:?}{holder}; wait for it to finish, or stop it"
    )))
}

fn row_to_migration(r: &tokio_postgres::Row) -> Result<MigrationRow> {
    let plan: serde_json::Value = r.get("plan");
    let phase: String = r.get("phase");
    let step: i32 = r.get("step");
    Ok(MigrationRow {
        schema: r.get("schema"),
        name: r.get("name"),
        parent: r.get("parent"),
        version_schema: r.get("version_schema"),
        checksum: r.get("checksum"),
        contents: r.get("contents"),
        plan: serde_json::from_value(plan).map_err(|e| {
            Error::state(format!(
                "stored plan cannot be read (written by another pgshift version?): {e}"
            ))
        })?,
        phase: Phase::parse(&phase)?,
        step: usize::try_from(step).unwrap_or(0),
    })
}

const COLUMNS: &str =
    "schema::text AS schema, name, parent, version_schema, checksum, contents, plan, phase, step";

/// The migration in progress on `schema`, if any.
pub async fn active(client: &Client, schema: &str) -> Result<Option<MigrationRow>> {
    let row = crate::pg::query_opt(
        client,
        &format!(
            "SELECT {COLUMNS} FROM pgshift.migrations WHERE schema = $1 AND phase <> 'complete'"
        ),
        &[&schema],
    )
    .await
    .map_err(|e| Error::db("reading pgshift.migrations", e))?;
    row.as_ref().map(row_to_migration).transpose()
}

/// Every migration of `schema`, oldest first.
pub async fn history(client: &Client, schema: &str) -> Result<Vec<MigrationRow>> {
    let rows = crate::pg::query(
        client,
        &format!(
            "SELECT {COLUMNS} FROM pgshift.migrations WHERE schema = $1 ORDER BY created_at, name"
        ),
        &[&schema],
    )
    .await
    .map_err(|e| Error::db("reading pgshift.migrations", e))?;
    rows.iter().map(row_to_migration).collect()
}

/// Name and phase of the newest migration, without reading its plan (the
/// daemon asks every second).
pub async fn latest_phase(client: &Client, schema: &str) -> Result<Option<(String, Phase)>> {
    let row = crate::pg::query_opt(client, "SELECT name, phase FROM pgshift.migrations WHERE schema = $1 ORDER BY created_at DESC, name DESC LIMIT 1",
            &[&schema],
        )
        .await
        .map_err(|e| Error::db("reading pgshift.migrations", e))?;
    row.map(|r| Ok((r.get(0), Phase::parse(&r.get::<_, String>(1))?)))
        .transpose()
}

/// The newest migration (active or complete).
pub async fn latest(client: &Client, schema: &str) -> Result<Option<MigrationRow>> {
    Ok(history(client, schema).await?.pop())
}

pub struct NewMigration<'a> {
    pub schema: &'a str,
    pub name: &'a str,
    pub parent: Option<&'a str>,
    pub version_schema: &'a str,
    pub contents: &'a str,
    pub checksum: &'a str,
    pub migration: serde_json::Value,
    pub plan: serde_json::Value,
}

pub async fn insert(client: &Client, m: NewMigration<'_>) -> Result<()> {
    crate::pg::execute(client, "INSERT INTO pgshift.migrations (schema, name, parent, version_schema, contents, checksum, migration, plan, phase)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'starting')",
            &[&m.schema, &m.name, &m.parent, &m.version_schema, &m.contents, &m.checksum, &m.migration, &m.plan],
        )
        .await
        .map_err(|e| Error::db(format!("recording migration {:?}", m.name), e))?;
    Ok(())
}

/// Move a migration to `phase` with step cursor `step`.
pub async fn set_phase(
    client: &Client,
    schema: &str,
    name: &str,
    phase: Phase,
    step: usize,
) -> Result<()> {
    let step = i32::try_from(step).unwrap_or(i32::MAX);
    let extra = match phase {
        Phase::Active => ", backfilled_at = coalesce(backfilled_at, now())",
        Phase::Complete => ", completed_at = now()",
        _ => "",
    };
    crate::pg::execute(client, &format!(
                "WITH u AS (UPDATE pgshift.migrations SET phase = $3, step = $4, updated_at = now(){extra} WHERE schema = $1 AND name = $2 RETURNING 1)
                 SELECT pg_notify('{CHANNEL}', $1 || ':' || $3 || ':' || $2) FROM u"
            ),
            &[&schema, &name, &phase.as_str(), &step],
        )
        .await
        .map_err(|e| Error::db(format!("recording phase {phase} of {name:?}"), e))?;
    Ok(())
}

/// The statement that advances the step cursor, run inside each step's
/// transaction. Its values are written in (quoted) so that it can go in one
/// simple query with the step's own statements.
pub fn advance_step_statement(schema: &str, name: &str, step: usize) -> String {
    format!(
        "UPDATE pgshift.migrations SET step = {step}, updated_at = now() WHERE schema = {} AND name = {}",
        crate::sql::literal(schema),
        crate::sql::literal(name)
    )
}

pub async fn delete(client: &Client, schema: &str, name: &str) -> Result<()> {
    crate::pg::execute(
        client,
        &format!(
            "WITH d AS (DELETE FROM pgshift.migrations WHERE schema = $1 AND name = $2 RETURNING 1)
                 SELECT pg_notify('{CHANNEL}', $1 || ':rolled_back:' || $2) FROM d"
        ),
        &[&schema, &name],
    )
    .await
    .map_err(|e| {
        Error::db(
            format!("removing migration {name:?} from pgshift.migrations"),
            e,
        )
    })?;
    Ok(())
}

pub async fn backfills(client: &Client, schema: &str, name: &str) -> Result<Vec<BackfillRow>> {
    let rows = crate::pg::query(
        client,
        "SELECT table_name, rows_done, rows_total, batches, done FROM pgshift.backfills
             WHERE schema = $1 AND migration = $2 ORDER BY table_name",
        &[&schema, &name],
    )
    .await
    .map_err(|e| Error::db("reading pgshift.backfills", e))?;
    Ok(rows
        .iter()
        .map(|r| BackfillRow {
            table: r.get(0),
            rows_done: r.get(1),
            rows_total: r.get(2),
            batches: r.get(3),
            done: r.get(4),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_sql_installs_the_version_the_code_expects() {
        let want = format!("VALUES ({})", super::SCHEMA_VERSION);
        assert!(
            super::INIT_SQL.contains(&want),
            "init.sql must insert {want} into pgshift.version"
        );
    }
}
