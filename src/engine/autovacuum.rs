//! An autovacuum in the way of a DDL step.
//!
//! An autovacuum worker holds SHARE UPDATE EXCLUSIVE on the table it
//! vacuums, which conflicts with every lock a DDL statement takes. Postgres
//! cancels the worker itself, but only once a waiter has waited
//! `deadlock_timeout` (1 s by default) and only if the vacuum is not one
//! "to prevent wraparound". A step that waits 500 ms per attempt never waits
//! that long, so on a big, busy table (where autovacuum passes run for
//! minutes) every attempt would time out behind the worker.
//!
//! Before each attempt of a step that takes a blocking lock, pgshift looks
//! for autovacuum workers holding a lock on the step's table and does what
//! Postgres would do a second later: it cancels them (the launcher starts
//! the vacuum again later; its work so far is not lost for the pages it
//! already marked). A role that may not cancel them (before PostgreSQL 18
//! only superusers may), or may not even see that they are autovacuum
//! workers (without pg_read_all_stats), gets an attempt long enough for
//! Postgres to do it.
//! An anti-wraparound vacuum is left alone: it is what keeps the database
//! writable, so the step waits for it like for any other session.

use crate::sql::qualified;
use std::time::Duration;
use tokio_postgres::Client;

/// What the next attempt should do about autovacuum.
#[derive(Debug, PartialEq, Eq)]
pub enum Clearance {
    /// None in the way (or cancelled): the usual `lock_timeout`.
    Clear,
    /// Workers this role may not cancel: wait this long so that Postgres
    /// cancels them (`deadlock_timeout` and a margin).
    WaitForPostgres(Duration),
}

/// Margin over `deadlock_timeout` for Postgres to cancel the worker and for
/// the worker to let its lock go.
const CANCEL_MARGIN: Duration = Duration::from_millis(500);

/// Cancel the (non-wraparound) autovacuum workers holding a lock on
/// `schema.table`; say how long to wait when they cannot be cancelled.
/// Best effort: a failed look-up means no autovacuum handling, not a
/// failed step.
pub async fn clear(client: &Client, schema: &str, table: &str) -> Clearance {
    let name = qualified(schema, table);
    // Nearly always nobody holds that lock: a look at pg_locks alone says
    // so in a fraction of the full query's time (planning the join with
    // pg_stat_activity costs more than the answer).
    match crate::pg::query_one(
        client,
        "SELECT EXISTS (SELECT FROM pg_locks
          WHERE locktype = 'relation' AND relation = to_regclass($1) AND granted
            AND mode = 'ShareUpdateExclusiveLock' AND pid <> pg_backend_pid())",
        &[&name],
    )
    .await
    {
        Ok(r) if !r.get::<_, bool>(0) => return Clearance::Clear,
        Ok(_) => {}
        Err(e) => {
            tracing::debug!("looking for autovacuum on {schema}.{table}: {e}");
            return Clearance::Clear;
        }
    }
    // A role without pg_read_all_stats sees no backend_type (nor query) of
    // other roles' sessions, autovacuum's included: such a holder of SHARE
    // UPDATE EXCLUSIVE may be one, so it gets the longer wait.
    let rows = match crate::pg::query(
        client,
        "SELECT DISTINCT l.pid, a.backend_type IS NULL,
                coalesce(a.query, '') LIKE '%to prevent wraparound%',
                (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout')
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'relation' AND l.relation = to_regclass($1) AND l.granted
            AND l.mode = 'ShareUpdateExclusiveLock' AND l.pid <> pg_backend_pid()
            AND (a.backend_type = 'autovacuum worker' OR a.backend_type IS NULL)",
        &[&name],
    )
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!("looking for autovacuum on {schema}.{table}: {e}");
            return Clearance::Clear;
        }
    };
    let mut cancel = Vec::new();
    let mut hidden = Vec::new();
    let mut deadlock_ms = 1000;
    for r in &rows {
        let pid: i32 = r.get(0);
        deadlock_ms = r.get::<_, i64>(3);
        if r.get::<_, bool>(1) {
            hidden.push(pid);
        } else if r.get::<_, bool>(2) {
            tracing::warn!(
                pid,
                "an autovacuum to prevent wraparound holds {schema}.{table}; it is not interrupted: the step waits for it"
            );
        } else {
            cancel.push(pid);
        }
    }
    let wait = Duration::from_millis(u64::try_from(deadlock_ms).unwrap_or(1000)) + CANCEL_MARGIN;
    if !cancel.is_empty() {
        match crate::pg::execute(
            client,
            "SELECT pg_cancel_backend(pid) FROM unnest($1::int[]) AS pid",
            &[&cancel],
        )
        .await
        {
            Ok(_) => {
                tracing::info!(
                    pids = ?cancel,
                    "cancelled the autovacuum holding {schema}.{table} so the step can take its lock \
                     (Postgres would cancel it after deadlock_timeout); it runs again later"
                );
            }
            Err(e) => {
                tracing::info!(
                    pids = ?cancel,
                    wait_ms = wait.as_millis() as u64,
                    "an autovacuum holds {schema}.{table} and this role may not cancel it ({}); \
                     waiting past deadlock_timeout so that Postgres does",
                    crate::error::describe_db_error(&e)
                );
                return Clearance::WaitForPostgres(wait);
            }
        }
    }
    if hidden.is_empty() {
        return Clearance::Clear;
    }
    tracing::info!(
        pids = ?hidden,
        wait_ms = wait.as_millis() as u64,
        "sessions this role cannot see (no pg_read_all_stats) hold SHARE UPDATE EXCLUSIVE on \
         {schema}.{table}; if one is an autovacuum, Postgres cancels it after deadlock_timeout: \
         waiting that long"
    );
    Clearance::WaitForPostgres(wait)
}
