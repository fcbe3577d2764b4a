//! The copier: fills the new columns of rows that existed before the
//! dual-write triggers, walking the table in key ranges.
//!
//! Each batch is one transaction that (1) updates the rows of one key range
//! that still carry the `_pgshift_needs_backfill` mark, computing the `up`
//! expressions directly (the copier's session skips the trigger), and (2)
//! records the range's upper key as the high-water mark. Both commit
//! together, so a crash loses no work and repeats none. Rows written by the
//! application after the triggers were installed carry no mark and are
//! skipped; rows inserted after the copier began lie above its upper bound.
//!
//! Batches are sized to a target duration and halved at once after an
//! outlier; `--backfill-batch-size` fixes the size instead.

use crate::engine::failpoint;
use crate::error::{describe_db_error, Error, Result};
use crate::plan::{BackfillSpec, COPIER_SETTING, NEEDS_BACKFILL};
use crate::progress::Progress;
use crate::sql::{ident, ident_list, literal, qualified};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Live control of a running copier (the daemon's console and CLI verbs):
/// pause, a throttle with its reason, and a rate limit. Checked before every
/// batch.
#[derive(Debug, Default)]
pub struct Control {
    paused: std::sync::atomic::AtomicBool,
    /// Rows per second; 0: unlimited.
    rate_limit: std::sync::atomic::AtomicU64,
    throttle: std::sync::Mutex<Option<String>>,
    changed: tokio::sync::Notify,
}

impl Control {
    pub fn set_paused(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_rate_limit(&self, rows_per_second: u64) {
        self.rate_limit
            .store(rows_per_second, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn rate_limit(&self) -> u64 {
        self.rate_limit.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Throttle (with the reason shown to operators) or release.
    pub fn set_throttle(&self, reason: Option<String>) {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if *t != reason {
            *t = reason;
            self.changed.notify_waiters();
        }
    }

    /// Why the copier waits now, if it does.
    pub fn holding(&self) -> Option<String> {
        if self.paused() {
            return Some("paused by an operator".into());
        }
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait while paused or throttled.
    async fn wait(&self) {
        let gauge = metrics::gauge!("pgshift_backfill_throttled");
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let holding = self.holding();
            let kind = holding.as_deref().map(|r| {
                if self.paused() {
                    "paused"
                } else if r.contains("replica") {
                    "replica_lag"
                } else {
                    "latency"
                }
            });
            for k in ["paused", "latency", "replica_lag"] {
                let on = if kind == Some(k) { 1.0 } else { 0.0 };
                metrics::gauge!("pgshift_backfill_throttle_reason", "reason" => k).set(on);
            }
            let Some(reason) = holding else {
                gauge.set(0.0);
                return;
            };
            gauge.set(1.0);
            tracing::info!("copier waiting: {reason}");
            // Re-check at least every second (a throttle can lapse silently).
            let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
        }
    }
}

/// How the copier paces itself.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Fixed rows per batch; `None` sizes batches to `target`.
    pub batch_size: Option<u64>,
    /// Target duration of one batch when sizing adaptively.
    pub target: Duration,
    /// Pause between batches.
    pub delay: Duration,
    /// Bounds of adaptive sizing.
    pub min_batch: u64,
    pub max_batch: u64,
    /// `lock_timeout` of a batch, and how often a batch is retried after a
    /// lock timeout or deadlock.
    pub lock_timeout: Duration,
    pub attempts: u32,
    /// Live control (daemon); `None` for the CLI.
    pub control: Option<std::sync::Arc<Control>>,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            batch_size: None,
            target: Duration::from_millis(100),
            delay: Duration::ZERO,
            min_batch: 100,
            max_batch: 200_000,
            lock_timeout: Duration::from_secs(2),
            attempts: 10,
            control: None,
        }
    }
}

fn key_cols(spec: &BackfillSpec) -> String {
    ident_list(&spec.key)
}

fn key_params(spec: &BackfillSpec, first: usize) -> String {
    spec.key
        .iter()
        .enumerate()
        .zip(&spec.key_types)
        .map(|((i, _), t)| format!("${}::text::{t}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sets(spec: &BackfillSpec) -> String {
    let mut v: Vec<String> = spec
        .sets
        .iter()
        .map(|a| format!("{} = ({})", ident(&a.target), a.expr))
        .collect();
    v.push(format!("{} = false", ident(NEEDS_BACKFILL)));
    v.join(", ")
}

/// The UPDATE of one batch (shown by `pgshift plan`).
pub fn render_batch(spec: &BackfillSpec) -> String {
    format!(
        "UPDATE {} SET {} WHERE ({k}) > (<last key>) AND ({k}) <= (<batch upper key>) AND {}",
        qualified(&spec.schema, &spec.table),
        sets(spec),
        ident(NEEDS_BACKFILL),
        k = key_cols(spec)
    )
}

struct Queries {
    upper: String,
    lowest: String,
    first_boundary: String,
    next_boundary: String,
    first_update: String,
    next_update: String,
    progress: String,
}

fn queries(spec: &BackfillSpec) -> Queries {
    let t = qualified(&spec.schema, &spec.table);
    let k = key_cols(spec);
    let n = spec.key.len();
    let as_text = spec
        .key
        .iter()
        .map(|c| format!("{}::text", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let desc = spec
        .key
        .iter()
        .map(|c| format!("{} DESC", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let upper_params = key_params(spec, 1);
    // Boundary: the key of the n-th row after `last` (index range scan).
    let boundary = |lower: Option<String>| {
        let lower = lower
            .map(|l| format!("({k}) > ({l}) AND "))
            .unwrap_or_default();
        format!(
            "SELECT ARRAY[{as_text}] FROM (SELECT {k} FROM {t} WHERE {lower}({k}) <= ({upper_params}) ORDER BY {k} LIMIT ${}) s ORDER BY {desc} LIMIT 1",
            n + 1
        )
    };
    let update = |lower: Option<String>, hi_from: usize| {
        let lower = lower
            .map(|l| format!("({k}) > ({l}) AND "))
            .unwrap_or_default();
        format!(
            "UPDATE {t} SET {} WHERE {lower}({k}) <= ({}) AND {}",
            sets(spec),
            key_params(spec, hi_from),
            ident(NEEDS_BACKFILL)
        )
    };
    Queries {
        upper: format!("SELECT ARRAY[{as_text}] FROM {t} ORDER BY {desc} LIMIT 1"),
        lowest: format!("SELECT min({k})::text FROM {t}"),
        first_boundary: boundary(None),
        next_boundary: boundary(Some(key_params(spec, n + 2))),
        first_update: update(None, 1),
        next_update: update(Some(key_params(spec, 1)), n + 1),
        progress: "UPDATE pgshift.backfills SET last_key = $4, rows_done = rows_done + $5, batches = batches + 1, updated_at = now()
                   WHERE schema = $1 AND migration = $2 AND table_name = $3"
            .to_string(),
    }
}

type Params<'a> = Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>;

/// Run (or resume) the backfill of one table. Returns rows updated now.
pub async fn run(
    client: &Client,
    migration: &str,
    spec: &BackfillSpec,
    opts: &BackfillOptions,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let ctx = |what: &str| format!("backfill of {}: {what}", spec.table);
    client
        .batch_execute(&format!(
            "SET {COPIER_SETTING} = 'on'; SET lock_timeout = {}; SET application_name = 'pgshift-copier'",
            literal(&format!("{}ms", opts.lock_timeout.as_millis()))
        ))
        .await
        .map_err(|e| Error::db(ctx("session setup"), e))?;
    let q = queries(spec);
    let t = qualified(&spec.schema, &spec.table);

    // First run: record the upper bound (rows above it were inserted with the
    // trigger in place) and the number of rows to visit.
    let existing = client
        .query_opt(
            "SELECT upper_key, last_key, rows_done, rows_total, done FROM pgshift.backfills
             WHERE schema = $1 AND migration = $2 AND table_name = $3",
            &[&spec.schema, &migration, &spec.table],
        )
        .await
        .map_err(|e| Error::db(ctx("reading progress"), e))?;
    let (upper, mut last, done_rows, total, done) = match existing {
        Some(r) => {
            let upper: Option<Vec<String>> = r.get(0);
            let last: Option<Vec<String>> = r.get(1);
            (
                upper,
                last,
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
                r.get::<_, bool>(4),
            )
        }
        None => {
            let upper: Option<Vec<String>> = client
                .query_opt(&q.upper, &[])
                .await
                .map_err(|e| Error::db(ctx("finding the upper key"), e))?
                .map(|r| r.get(0));
            let total: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {t} WHERE {}", ident(NEEDS_BACKFILL)),
                    &[],
                )
                .await
                .map_err(|e| Error::db(ctx("counting rows"), e))?
                .get(0);
            client
                .execute(
                    "INSERT INTO pgshift.backfills (schema, migration, table_name, key_columns, upper_key, rows_total, done)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&spec.schema, &migration, &spec.table, &spec.key, &upper, &total, &upper.is_none()],
                )
                .await
                .map_err(|e| Error::db(ctx("recording progress"), e))?;
            (upper.clone(), None, 0, total, upper.is_none())
        }
    };
    progress.start(
        &spec.table,
        u64::try_from(total).unwrap_or(0),
        u64::try_from(done_rows).unwrap_or(0),
    );
    let Some(upper) = upper.filter(|_| !done) else {
        progress.finish();
        return Ok(0);
    };
    let mut size = opts.batch_size.unwrap_or(10_000).max(1);
    let mut updated_now: u64 = 0;
    let mut batch_no: usize = 0;
    // A single integer key whose values are dense (the last batch updated at
    // least half the keys of its range, as with a serial id) is walked by
    // arithmetic, without the boundary query; sparse keys use the query.
    let int_upper: Option<i64> = match (&spec.key_types[..], &upper[..]) {
        ([t], [u]) if matches!(t.as_str(), "smallint" | "integer" | "bigint") => u.parse().ok(),
        _ => None,
    };
    let mut dense = false;
    if let (Some(up), None) = (int_upper, &last) {
        // Before the first batch: a dense key starts by arithmetic at once,
        // just below its smallest value.
        let min: Option<i64> = client
            .query_one(&q.lowest, &[])
            .await
            .map_err(|e| Error::db(ctx("finding the lowest key"), e))?
            .get::<_, Option<String>>(0)
            .and_then(|m| m.parse().ok());
        if let Some(min) = min.filter(|m| *m > i64::MIN && *m <= up) {
            let span = up.saturating_sub(min).saturating_add(1);
            if total.saturating_mul(2) >= span {
                dense = true;
                last = Some(vec![(min - 1).to_string()]);
            }
        }
    }
    let labels = [("table", spec.table.clone())];
    let m_done = metrics::gauge!("pgshift_backfill_rows_done", &labels);
    let m_total = metrics::gauge!("pgshift_backfill_rows_total", &labels);
    let m_left = metrics::gauge!("pgshift_backfill_rows_remaining", &labels);
    let m_rate = metrics::gauge!("pgshift_backfill_rows_per_second", &labels);
    let m_eta = metrics::gauge!("pgshift_backfill_eta_seconds", &labels);
    let m_batch = metrics::histogram!("pgshift_backfill_batch_duration_seconds", &labels);
    let m_rows = metrics::counter!("pgshift_backfill_rows_copied_total", &labels);
    m_total.set(total as f64);
    let mut done_total = u64::try_from(done_rows).unwrap_or(0);
    let copy_began = Instant::now();
    loop {
        if let Some(c) = &opts.control {
            c.wait().await;
        }
        let size_param = i64::try_from(size).unwrap_or(i64::MAX);
        let began = Instant::now();
        let int_last: Option<i64> = match last.as_deref() {
            Some([l]) if int_upper.is_some() => l.parse().ok(),
            _ => None,
        };
        // Find the upper key of this batch.
        let hi: Option<Vec<String>> =
            if let (true, Some(up), Some(lo)) = (dense, int_upper, int_last) {
                (lo < up).then(|| vec![lo.saturating_add(size_param).min(up).to_string()])
            } else {
                let mut params: Params = upper.iter().map(|v| v as _).collect();
                params.push(&size_param);
                let sql = match &last {
                    None => &q.first_boundary,
                    Some(l) => {
                        params.extend(
                            l.iter()
                                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
                        );
                        &q.next_boundary
                    }
                };
                client
                    .query_opt(sql, &params)
                    .await
                    .map_err(|e| Error::db(ctx("finding the next key range"), e))?
                    .map(|r| r.get(0))
            };
        let Some(hi) = hi else { break };
        // Update the range and record the mark in one transaction.
        let mut attempt = 0;
        let n = loop {
            attempt += 1;
            match batch(client, &q, spec, migration, last.as_ref(), &hi).await {
                Ok(n) => break n,
                Err(e) if crate::engine::exec::is_lock_conflict(&e) && attempt < opts.attempts => {
                    tracing::warn!(table = %spec.table, attempt, "backfill batch: {}; retrying", describe_db_error(&e));
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => return Err(Error::db(ctx("updating a batch"), e)),
            }
        };
        batch_no += 1;
        updated_now += n;
        if let (Some(lo), Some([h])) = (int_last, Some(&hi[..])) {
            let span = h.parse::<i64>().unwrap_or(lo).saturating_sub(lo);
            dense = span > 0 && i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(2) >= span;
        }
        let elapsed = began.elapsed();
        tracing::debug!(table = %spec.table, batch = batch_no, rows = n, size, ms = elapsed.as_millis() as u64, "backfill batch committed");
        done_total += n;
        let rate = updated_now as f64 / copy_began.elapsed().as_secs_f64().max(1e-3);
        let left = u64::try_from(total).unwrap_or(0).saturating_sub(done_total);
        m_done.set(done_total as f64);
        m_left.set(left as f64);
        m_rate.set(rate);
        m_eta.set(if rate > 0.0 { left as f64 / rate } else { 0.0 });
        m_batch.record(elapsed.as_secs_f64());
        m_rows.increment(n);
        progress.advance(n, size);
        failpoint::hit("backfill", batch_no, false);
        last = Some(hi);
        if opts.batch_size.is_none() {
            size = next_size(size, elapsed, opts);
        }
        if !opts.delay.is_zero() {
            tokio::time::sleep(opts.delay).await;
        }
        // A rate limit stretches each batch to rows / limit seconds.
        if let Some(limit) = opts
            .control
            .as_ref()
            .map(|c| c.rate_limit())
            .filter(|l| *l > 0)
        {
            let min = Duration::from_secs_f64(n as f64 / limit as f64);
            if let Some(rest) = min.checked_sub(began.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }
    client
        .execute(
            "UPDATE pgshift.backfills SET done = true, updated_at = now() WHERE schema = $1 AND migration = $2 AND table_name = $3",
            &[&spec.schema, &migration, &spec.table],
        )
        .await
        .map_err(|e| Error::db(ctx("recording completion"), e))?;
    client
        .batch_execute("RESET pgshift.copier; RESET lock_timeout; RESET application_name")
        .await
        .map_err(|e| Error::db(ctx("session reset"), e))?;
    progress.finish();
    Ok(updated_now)
}

/// Size the next batch so it takes about `target`: grow at most 4x, shrink
/// at once (halve at least) after a batch that ran past twice the target.
fn next_size(size: u64, elapsed: Duration, opts: &BackfillOptions) -> u64 {
    let took = elapsed.as_secs_f64().max(1e-4);
    let target = opts.target.as_secs_f64();
    let ideal = (size as f64 * target / took) as u64;
    let next = if took > 2.0 * target {
        ideal.min(size / 2)
    } else {
        ideal.min(size.saturating_mul(4))
    };
    next.clamp(opts.min_batch, opts.max_batch)
}

async fn batch(
    client: &Client,
    q: &Queries,
    spec: &BackfillSpec,
    migration: &str,
    last: Option<&Vec<String>>,
    hi: &Vec<String>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let res = async {
        let n = match last {
            None => {
                let params: Params = hi.iter().map(|v| v as _).collect();
                client.execute(&q.first_update, &params).await?
            }
            Some(l) => {
                let mut params: Params = l.iter().map(|v| v as _).collect();
                params.extend(
                    hi.iter()
                        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
                );
                client.execute(&q.next_update, &params).await?
            }
        };
        let n_i = i64::try_from(n).unwrap_or(i64::MAX);
        client
            .execute(
                &q.progress,
                &[&spec.schema, &migration, &spec.table, hi, &n_i],
            )
            .await?;
        client.batch_execute("COMMIT").await?;
        Ok(n)
    }
    .await;
    if res.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_grow_toward_target_and_halve_on_outliers() {
        let o = BackfillOptions::default();
        assert_eq!(next_size(1000, Duration::from_millis(10), &o), 4000);
        assert_eq!(next_size(1000, Duration::from_millis(100), &o), 1000);
        assert!(next_size(1000, Duration::from_millis(1000), &o) <= 500);
        assert_eq!(next_size(150, Duration::from_secs(10), &o), 100);
    }
}
