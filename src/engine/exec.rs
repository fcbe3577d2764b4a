//! Lock-safe execution of plan steps.
//!
//! Every step runs under a short `lock_timeout`. When Postgres cannot grant
//! the lock in time (SQLSTATE 55P03) or picks the step as a deadlock victim
//! (40P01), the step is rolled back and retried after a jittered exponential
//! backoff, a bounded number of times; the last failure names the statement
//! and the sessions holding locks on its table. An autovacuum in the way of a
//! blocking step is cancelled first (see `autovacuum`). A transactional step commits
//! together with the migration's step cursor, so a crash never runs a step
//! twice nor skips one.

use super::state::{self, Phase};
use super::{autovacuum, failpoint};
use crate::error::{describe_db_error, Error, Result};
use crate::plan::{Action, Step};
use crate::sql::{literal, qualified};
use std::time::Duration;
use tokio_postgres::Client;

/// How DDL waits for locks.
#[derive(Debug, Clone)]
pub struct LockPolicy {
    /// `lock_timeout` of each attempt.
    pub timeout: Duration,
    /// Attempts before giving up.
    pub attempts: u32,
    /// First backoff; doubles per attempt up to `max_backoff`, with full jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// When daemons serve the schema (its name here), each attempt of a step
    /// that takes a blocking lock runs with their proxies' gates closed, so
    /// no lock queue forms behind it.
    pub gate: Option<String>,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            timeout: Duration::from_millis(500),
            attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            gate: None,
        }
    }
}

impl LockPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self.backoff.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_backoff);
        // Full jitter, but never less than a quarter of the step.
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(millis / 4 + fastrand::u64(0..=millis - millis / 4))
    }
}

/// `lock_timeout` of steps whose locks never block reads or writes
/// (validation, concurrent index builds): waiting costs the application
/// nothing, and an autovacuum in the way is cancelled by Postgres after
/// `deadlock_timeout` only if the step is still waiting then.
pub const WEAK_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Is this error worth retrying (lock not granted in time, deadlock victim)?
pub fn is_lock_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("55P03") | Some("40P01"))
}

/// Where the step cursor lives.
pub struct Cursor<'a> {
    pub schema: &'a str,
    pub migration: &'a str,
    pub phase: Phase,
}

/// Run `steps[from..]`, advancing the cursor after each.
pub async fn run_steps(
    client: &Client,
    steps: &[Step],
    from: usize,
    cursor: &Cursor<'_>,
    policy: &LockPolicy,
) -> Result<()> {
    for (i, step) in steps.iter().enumerate().skip(from) {
        tracing::info!(phase = %cursor.phase, step = i + 1, of = steps.len(), "{}", step.describe);
        run_step(client, step, Some((cursor, i + 1)), policy)
            .await
            .map_err(|e| {
                e.context(format!(
                    "{} step {} ({})",
                    cursor.phase,
                    i + 1,
                    step.describe
                ))
            })?;
        failpoint::hit(cursor.phase.as_str(), i + 1, false);
    }
    Ok(())
}

/// Run one step with lock retries. When `cursor` is given, the cursor moves
/// to the given position in the same transaction as the step.
pub async fn run_step(
    client: &Client,
    step: &Step,
    cursor: Option<(&Cursor<'_>, usize)>,
    policy: &LockPolicy,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let strong = !step.weak_lock && !matches!(step.action, Action::CreateIndex { .. });
        // An autovacuum on the table would outlast every short attempt.
        let timeout = match (&step.lock_table, strong) {
            (_, false) => policy.timeout.max(WEAK_LOCK_TIMEOUT),
            (Some((s, t)), true) => match autovacuum::clear(client, s, t).await {
                autovacuum::Clearance::Clear => policy.timeout,
                autovacuum::Clearance::WaitForPostgres(d) => policy.timeout.max(d),
            },
            (None, true) => policy.timeout,
        };
        let gated = match &policy.gate {
            Some(schema) if step.lock_table.is_some() && strong => {
                close_gates(client, schema).await?;
                Some(schema)
            }
            _ => None,
        };
        let res = attempt_step(client, step, cursor, timeout).await;
        if let Some(schema) = gated {
            // Whatever happened, let the held sessions go.
            if let Err(e) = state::request(
                client,
                schema,
                "open_gate",
                &format!("{:08x}", fastrand::u32(..)),
            )
            .await
            {
                tracing::warn!("reopening the proxies' gates: {e}");
            }
        }
        let outcome = match &res {
            Ok(()) => "granted",
            Err(Failure::Pg(e)) if is_lock_conflict(e) && attempt < policy.attempts => "timed_out",
            Err(Failure::Pg(e)) if is_lock_conflict(e) => "exhausted",
            Err(_) => "failed",
        };
        metrics::counter!("pgshift_lock_attempts_total", "outcome" => outcome).increment(1);
        if let (Some((schema, _)), true) = (&step.lock_table, outcome != "failed") {
            count_lock_attempt(schema, outcome);
        }
        let e = match res {
            Ok(()) => return Ok(()),
            Err(Failure::Pgshift(e)) => return Err(e),
            Err(Failure::Pg(e)) => e,
        };
        match e {
            e if is_lock_conflict(&e) && attempt < policy.attempts => {
                let wait = policy.delay(attempt);
                tracing::warn!(
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "{}: lock not granted ({}); retrying",
                    step.describe,
                    describe_db_error(&e)
                );
                tokio::time::sleep(wait).await;
            }
            e if is_lock_conflict(&e) => {
                let blockers = match &step.lock_table {
                    Some((s, t)) => blockers(client, s, t).await,
                    None => String::from("unknown (the step names no table)"),
                };
                return Err(Error::new(
                    crate::error::Kind::LockExhausted,
                    format!(
                        "could not take the lock for \"{}\" after {attempt} attempts of lock_timeout {} ms ({}).\nstatement: {}\nsessions holding locks on the table: {blockers}",
                        step.describe,
                        policy.timeout.as_millis(),
                        describe_db_error(&e),
                        first_line(&step.render()),
                    ),
                ));
            }
            e => {
                return Err(Error::db(
                    format!("statement failed: {}", first_line(&step.render())),
                    e,
                ))
            }
        }
    }
}

/// Lock attempts of this process not yet written to `pgshift.lock_stats`.
static LOCK_COUNTS: std::sync::Mutex<Vec<(String, &'static str, i64)>> =
    std::sync::Mutex::new(Vec::new());

fn count_lock_attempt(schema: &str, outcome: &'static str) {
    let mut v = LOCK_COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    match v.iter_mut().find(|(s, o, _)| s == schema && *o == outcome) {
        Some(e) => e.2 += 1,
        None => v.push((schema.to_string(), outcome, 1)),
    }
}

/// Add this process's lock attempts to `pgshift.lock_stats` (daemons export
/// them); best effort, once per command.
pub async fn flush_lock_stats(client: &Client) {
    let counts = std::mem::take(&mut *LOCK_COUNTS.lock().unwrap_or_else(|p| p.into_inner()));
    for (schema, outcome, n) in counts {
        let _ = crate::pg::execute(client, "INSERT INTO pgshift.lock_stats (schema, outcome, attempts) VALUES ($1, $2, $3)
                 ON CONFLICT (schema, outcome) DO UPDATE SET attempts = pgshift.lock_stats.attempts + EXCLUDED.attempts",
                &[&schema, &outcome, &n],
            )
            .await;
    }
}

/// Close the gates of every live daemon's proxy and wait (at most 2 s) for
/// each to acknowledge; a daemon that does not answer is logged, not waited
/// for (its holds fail open anyway).
async fn close_gates(client: &Client, schema: &str) -> Result<()> {
    let id = format!("{:08x}", fastrand::u32(..));
    state::request(client, schema, "close_gate", &id).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let daemons = state::live_daemons(client, schema).await?;
        let waiting: Vec<&str> = daemons
            .iter()
            .filter(|d| d.gate_ack.as_deref() != Some(id.as_str()))
            .map(|d| d.id.as_str())
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(daemons = ?waiting, "proxies did not confirm closing their gate; going on");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn first_line(s: &str) -> String {
    let s = s.trim();
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{} ...", &s[..cut])
    } else {
        s.to_string()
    }
}

/// Why an attempt failed: Postgres said no (maybe retryable), or pgshift did.
enum Failure {
    Pg(tokio_postgres::Error),
    Pgshift(Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

async fn attempt_step(
    client: &Client,
    step: &Step,
    cursor: Option<(&Cursor<'_>, usize)>,
    wait: Duration,
) -> std::result::Result<(), Failure> {
    let timeout = format!(
        "SET lock_timeout = {}",
        literal(&format!("{}ms", wait.as_millis()))
    );
    match &step.action {
        Action::Sql {
            sql,
            transactional: true,
            guard: None,
        } => transact(client, format!("BEGIN; {timeout};\n{sql}"), cursor).await,
        Action::Sql {
            sql,
            transactional: true,
            guard: Some(guard),
        } => {
            in_transaction(client, &format!("BEGIN; {timeout}"), cursor, || async {
                if guard_passes(client, Some(guard)).await? {
                    client.batch_execute(sql).await?;
                }
                Ok::<(), Failure>(())
            })
            .await
        }
        Action::Views(spec) => {
            // The look-ups take no lock: made before the transaction, they
            // leave the DDL alone in it.
            let stmts = spec.statements(client).await.map_err(Failure::Pgshift)?;
            transact(
                client,
                format!("BEGIN; {timeout};\n{}", stmts.join(";\n")),
                cursor,
            )
            .await
        }
        Action::Sql {
            sql,
            transactional: false,
            guard,
        } => {
            client.batch_execute(&timeout).await?;
            if guard_passes(client, guard.as_deref()).await? {
                client.batch_execute(sql).await?;
            }
            Ok(advance(client, cursor).await?)
        }
        Action::CreateIndex { sql, schema, index } => {
            client.batch_execute(&timeout).await?;
            let name = qualified(schema, index);
            for _ in 0..3 {
                drop_if_invalid(client, &name).await?;
                client.batch_execute(sql).await?;
                if index_valid(client, &name).await? {
                    break;
                }
                tracing::warn!("index {name} came out INVALID; dropping it and building again");
            }
            if !index_valid(client, &name).await? {
                // The INVALID index is dropped on the next attempt or on rollback.
                return Err(Failure::Pgshift(Error::invalid(format!(
                    "index {name} stays INVALID after 3 concurrent builds (a duplicate key or a failed expression?)"
                ))));
            }
            // Built but not yet recorded: a crash here leaves the step to redo.
            before_record(cursor);
            Ok(advance(client, cursor).await?)
        }
    }
}

/// The crash hook for a step whose work is done but not yet committed as
/// done (`PGSHIFT_CRASH_AT=<phase>:<step>:before-commit`).
fn before_record(cursor: Option<(&Cursor<'_>, usize)>) {
    if let Some((c, i)) = cursor {
        failpoint::hit(c.phase.as_str(), i, true);
    }
}

/// Run `sql` (which starts the transaction), move the cursor and commit,
/// all in one simple query: one round trip, so the locks the step takes are
/// held only while the server runs it, not over client round trips (the
/// other sessions queued behind an ACCESS EXCLUSIVE lock wait that long).
/// An error stops the rest of the string; the transaction is rolled back.
async fn transact(
    client: &Client,
    mut sql: String,
    cursor: Option<(&Cursor<'_>, usize)>,
) -> std::result::Result<(), Failure> {
    // Each `;` on a line of its own: a step's SQL may end in a `--` comment.
    if let Some((c, i)) = cursor {
        sql.push_str("\n;\n");
        sql.push_str(&state::advance_step_statement(c.schema, c.migration, i));
    }
    let res = if cursor.is_some_and(|(c, i)| failpoint::armed(c.phase.as_str(), i, true)) {
        // The crash test's point between the step and its commit.
        async {
            client.batch_execute(&sql).await?;
            before_record(cursor);
            client.batch_execute("COMMIT").await
        }
        .await
    } else {
        sql.push_str("\n;\nCOMMIT");
        client.batch_execute(&sql).await
    };
    if res.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    Ok(res?)
}

/// Run `begin` (which starts the transaction and may carry the first
/// statements), then `body`, advance the cursor and commit; roll back on any
/// error.
async fn in_transaction<F, Fut>(
    client: &Client,
    begin: &str,
    cursor: Option<(&Cursor<'_>, usize)>,
    body: F,
) -> std::result::Result<(), Failure>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), Failure>>,
{
    let res = async {
        client.batch_execute(begin).await?;
        body().await?;
        advance(client, cursor).await?;
        before_record(cursor);
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
    .await;
    if res.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    res
}

async fn advance(
    client: &Client,
    cursor: Option<(&Cursor<'_>, usize)>,
) -> std::result::Result<(), tokio_postgres::Error> {
    if let Some((c, i)) = cursor {
        client
            .batch_execute(&state::advance_step_statement(c.schema, c.migration, i))
            .await?;
    }
    Ok(())
}

async fn guard_passes(
    client: &Client,
    guard: Option<&str>,
) -> std::result::Result<bool, tokio_postgres::Error> {
    match guard {
        None => Ok(true),
        Some(g) => Ok(
            crate::pg::query_one(client, &format!("SELECT ({g})::boolean"), &[])
                .await?
                .get(0),
        ),
    }
}

async fn index_valid(
    client: &Client,
    name: &str,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let row = crate::pg::query_opt(
        client,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
        &[&name],
    )
    .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

async fn drop_if_invalid(
    client: &Client,
    name: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    let row = crate::pg::query_opt(
        client,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
        &[&name],
    )
    .await?;
    if let Some(r) = row {
        let valid: bool = r.get(0);
        if !valid {
            tracing::warn!("dropping INVALID index {name} left by an earlier build");
            client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                .await?;
        }
    }
    Ok(())
}

/// The sessions holding granted locks on a table, for error messages.
pub async fn blockers(client: &Client, schema: &str, table: &str) -> String {
    let rows = crate::pg::query(client, "SELECT DISTINCT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), coalesce(a.state, ''),
                    coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0), l.mode,
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 120)
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.relation = to_regclass($1) AND l.granted AND l.pid <> pg_backend_pid()
             ORDER BY a.pid",
            &[&qualified(schema, table)],
        )
        .await;
    match rows {
        Ok(rows) if rows.is_empty() => "none now (the conflicting lock was released)".into(),
        Ok(rows) => rows
            .iter()
            .map(|r| {
                let pid: i32 = r.get(0);
                let user: String = r.get(1);
                let app: String = r.get(2);
                let st: String = r.get(3);
                let age: i64 = r.get(4);
                let mode: String = r.get(5);
                let q: String = r.get(6);
                format!("\n  pid {pid} user {user:?} application {app:?} state {st:?} in transaction for {age}s holding {mode}: {q}")
            })
            .collect(),
        Err(e) => format!("(could not read pg_locks: {e})"),
    }
}
