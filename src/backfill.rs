//! The copier: fills the new columns of rows that existed before the
//! dual-write triggers, walking the table in key ranges.
//!
//! Each batch is one statement (one transaction, one round trip) that (1)
//! updates the rows of one key range that still carry the
//! `_pgshift_needs_backfill` mark, computing the `up` expressions directly
//! (the copier's session skips the trigger), and (2) records the range's
//! upper key as the high-water mark. Both commit together, so a crash loses
//! no work and repeats none. Rows written by the
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
    /// Graded throttle: after each batch the copier sleeps this many times
    /// the batch's duration (f64 bits; 0: none), with the reason shown.
    slowdown: std::sync::atomic::AtomicU64,
    slowdown_reason: std::sync::Mutex<Option<String>>,
    /// Live batch sizing (target duration, fixed size) over the options the
    /// backfill started with.
    sizing: std::sync::Mutex<Option<(Duration, Option<u64>)>>,
    changed: tokio::sync::Notify,
    /// The kind of the last wait logged at info: a latency throttle that
    /// stops the copier many times a minute logs once, then at debug.
    logged: std::sync::Mutex<Option<&'static str>>,
    /// The migration whose backfill the copier keeps off, and until when: a
    /// CLI command (rollback) needs the schema's lock the copier holds while
    /// it backfills.
    aside: std::sync::Mutex<Option<(String, Instant)>>,
    /// A backfill is running (between its first and last batch).
    backfilling: std::sync::atomic::AtomicBool,
    /// Rows the copier has updated under this control, all backfills.
    rows: std::sync::atomic::AtomicU64,
    /// The latency throttle's cap on the copier's pace, rows per second
    /// (0: none); applied like `rate_limit`, the lower of the two wins.
    pace_cap: std::sync::atomic::AtomicU64,
}

impl Control {
    pub fn set_paused(&self, paused: bool) {
        let was = self
            .paused
            .swap(paused, std::sync::atomic::Ordering::AcqRel);
        if paused && !was {
            // An operator's pause is logged at info every time.
            *self.logged.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.changed.notify_waiters();
    }

    /// Stop the backfill of `migration` at its next batch boundary (at once
    /// if it waits or rests) and start it again only after `period`.
    pub fn step_aside(&self, migration: &str, period: Duration) {
        *self.aside.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((migration.to_string(), Instant::now() + period));
        self.changed.notify_waiters();
    }

    /// Is a backfill running under this control?
    pub fn backfilling(&self) -> bool {
        self.backfilling.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Lift a [`Control::step_aside`] from `migration`.
    pub fn step_back(&self, migration: &str) {
        let mut aside = self.aside.lock().unwrap_or_else(|p| p.into_inner());
        if aside.as_ref().is_some_and(|(m, _)| m == migration) {
            *aside = None;
        }
    }

    /// Is the copier asked to keep off `migration`'s backfill?
    pub fn stepping_aside(&self, migration: &str) -> bool {
        self.aside
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(m, t)| m == migration && Instant::now() < *t)
    }

    /// Sleep `period`, or less if something changes (a step-aside request).
    async fn rest(&self, period: Duration) {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let _ = tokio::time::timeout(period, changed).await;
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

    /// Cap the copier's pace at `rows_per_second` (0: none).
    pub fn set_pace_cap(&self, rows_per_second: u64) {
        self.pace_cap
            .store(rows_per_second, std::sync::atomic::Ordering::Release);
    }

    /// The lower of the operator's rate limit and the throttle's pace cap
    /// that are set; 0: none.
    fn effective_rate_limit(&self) -> u64 {
        let cap = self.pace_cap.load(std::sync::atomic::Ordering::Acquire);
        match (self.rate_limit(), cap) {
            (0, c) | (c, 0) => c,
            (l, c) => l.min(c),
        }
    }

    /// Rows the copier has updated so far (every backfill under this control).
    pub fn rows(&self) -> u64 {
        self.rows.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Throttle (with the reason shown to operators) or release.
    pub fn set_throttle(&self, reason: Option<String>) {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if *t != reason {
            *t = reason;
            self.changed.notify_waiters();
        }
    }

    /// Slow the copier down: after each batch it sleeps `ratio` times the
    /// batch's duration (so it works 1 / (1 + ratio) of the time); 0 lifts it.
    pub fn set_slowdown(&self, ratio: f64, reason: Option<String>) {
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        self.slowdown
            .store(ratio.to_bits(), std::sync::atomic::Ordering::Release);
        *self
            .slowdown_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = if ratio > 0.0 { reason } else { None };
        metrics::gauge!("pgshift_backfill_slowdown_ratio").set(ratio);
    }

    /// Size batches to `target`, or fix them at `size` rows, from the next
    /// batch on (a running backfill too).
    pub fn set_sizing(&self, target: Duration, size: Option<u64>) {
        *self.sizing.lock().unwrap_or_else(|p| p.into_inner()) = Some((target, size));
    }

    fn sizing(&self) -> Option<(Duration, Option<u64>)> {
        *self.sizing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn slowdown(&self) -> f64 {
        f64::from_bits(self.slowdown.load(std::sync::atomic::Ordering::Acquire))
    }

    /// What holds the copier back now, stopped or slowed, for operators.
    pub fn state(&self) -> Option<String> {
        self.holding().or_else(|| {
            self.slowdown_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
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

    /// Wait while paused or throttled (not once asked to step aside from
    /// `migration`).
    async fn wait(&self, migration: &str) {
        let gauge = metrics::gauge!("pgshift_backfill_throttled");
        let mut logged: Option<String> = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let holding = self.holding().filter(|_| !self.stepping_aside(migration));
            let kind = self.state().map(|r| {
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
            if logged.as_ref() != Some(&reason) {
                let mut last = self.logged.lock().unwrap_or_else(|p| p.into_inner());
                if *last == kind {
                    tracing::debug!("copier waiting: {reason}");
                } else {
                    tracing::info!("copier waiting: {reason}");
                    *last = kind;
                }
                logged = Some(reason);
            }
            // Re-check at least every second (a throttle can lapse silently).
            let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
        }
    }
}

/// The most a graded throttle slows the copier before stopping it outright.
pub const MAX_SLOWDOWN: f64 = 32.0;

/// The next graded-throttle ratio from the latest p99 against its bound:
/// above the bound it grows by half (at least to 0.5); below 90% of it it
/// shrinks by a quarter and lifts under 0.1; in between it holds. Called a
/// few times a second, so the copier settles where the application's p99
/// sits just under the bound instead of stopping and starting.
pub fn next_slowdown(current: f64, p99: Duration, bound: Duration) -> f64 {
    if p99 > bound {
        (current * 1.5).clamp(0.5, MAX_SLOWDOWN)
    } else if p99.as_secs_f64() < 0.9 * bound.as_secs_f64() {
        let next = current * 0.75;
        if next < 0.1 {
            0.0
        } else {
            next
        }
    } else {
        current
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
    /// Connections that backfill together (the CLI's `--backfill-workers`).
    pub workers: usize,
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
            workers: 1,
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
    if is_ctid(spec) {
        return format!(
            "UPDATE {} SET {} WHERE ctid in pages (<last page>, <batch last page>] AND {}",
            qualified(&spec.schema, &spec.table),
            sets(spec),
            ident(NEEDS_BACKFILL)
        );
    }
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
    /// The range's UPDATE of one batch, without and with a lower bound.
    first_batch: String,
    next_batch: String,
}

/// The key values `first..` of a batch's UPDATE: `pgshift.backfill_batch`
/// runs it with one text[] parameter holding every bound.
fn key_args(spec: &BackfillSpec, first: usize) -> String {
    spec.key_types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("($1[{}])::{t}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A batch: the UPDATE of the range and the progress row commit together,
/// in one round trip (see `pgshift.backfill_batch` in init.sql).
const BATCH_SQL: &str = "SELECT pgshift.backfill_batch($1, $2, $3, $4, $5, $6)";

/// Key type of the physical-position walk: tables without a primary key or
/// unique NOT NULL columns are walked by page ranges of `ctid`.
pub const CTID_KEY_TYPE: &str = "tid";

fn is_ctid(spec: &BackfillSpec) -> bool {
    spec.key_types.len() == 1 && spec.key_types[0] == CTID_KEY_TYPE
}

/// Walked by integers: a single integer key, or pages. Such ranges can be
/// cut by arithmetic.
fn integer_walk(spec: &BackfillSpec) -> bool {
    matches!(&spec.key_types[..], [t] if is_int_type(t) || t == CTID_KEY_TYPE)
}

/// Page-range walk: the "key" is a page number; a batch covers pages
/// `(last, hi]`. Rows move only when written (and the trigger clears their
/// mark) or when the table is rewritten (VACUUM FULL, CLUSTER); the copier
/// checks for marked rows after the walk and walks again if any are left.
fn ctid_queries(spec: &BackfillSpec) -> Queries {
    let t = qualified(&spec.schema, &spec.table);
    let range = |lower: Option<usize>, hi: usize| {
        let lower = lower
            .map(|l| format!("ctid >= format('(%s,0)', ($1[{l}])::bigint + 1)::tid AND "))
            .unwrap_or_default();
        format!(
            "UPDATE {t} SET {} WHERE {lower}ctid < format('(%s,0)', ($1[{hi}])::bigint + 1)::tid AND {}",
            sets(spec),
            ident(NEEDS_BACKFILL)
        )
    };
    Queries {
        upper: format!(
            "SELECT CASE WHEN n > 0 THEN ARRAY[(n - 1)::text] END FROM (SELECT pg_relation_size({}::regclass) / current_setting('block_size')::bigint AS n) s",
            literal(&t)
        ),
        lowest: "SELECT '0'::text".into(),
        first_boundary: String::new(),
        next_boundary: String::new(),
        first_batch: range(None, 1),
        next_batch: range(Some(1), 2),
    }
}

fn queries(spec: &BackfillSpec) -> Queries {
    if is_ctid(spec) {
        return ctid_queries(spec);
    }
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
            key_args(spec, hi_from),
            ident(NEEDS_BACKFILL)
        )
    };
    Queries {
        upper: format!("SELECT ARRAY[{as_text}] FROM {t} ORDER BY {desc} LIMIT 1"),
        lowest: format!("SELECT min({k})::text FROM {t}"),
        first_boundary: boundary(None),
        next_boundary: boundary(Some(key_params(spec, n + 2))),
        first_batch: update(None, 1),
        next_batch: update(Some(key_args(spec, 1)), n + 1),
    }
}

type Params<'a> = Vec<&'a dyn crate::pg::Param>;

/// Run (or resume) the backfill of one table. Returns rows updated now.
///
/// `extra` are more connections of the same role: each batch of a single
/// integer key (or of pages) is split among them and `client`, and the
/// shares run at once.
pub async fn run(
    client: &Client,
    extra: &[Client],
    migration: &str,
    spec: &BackfillSpec,
    opts: &BackfillOptions,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let ctx = |what: &str| format!("backfill of {}: {what}", spec.table);
    let setup = format!(
        "SET {COPIER_SETTING} = 'on'; SET lock_timeout = {}; SET application_name = 'pgshift-copier'; {}",
        literal(&format!("{}ms", opts.lock_timeout.as_millis())),
        skip_triggers_sql(spec)
    );
    // The other workers' sessions close when the backfill ends: only the
    // first is reset below.
    futures_util::future::try_join_all(
        std::iter::once(client)
            .chain(extra)
            .map(|c| c.batch_execute(&setup)),
    )
    .await
    .map_err(|e| Error::db(ctx("session setup"), e))?;
    let flag = |on: bool| {
        if let Some(c) = &opts.control {
            c.backfilling
                .store(on, std::sync::atomic::Ordering::Release);
        }
    };
    flag(true);
    let result = walk(client, extra, migration, spec, opts, progress).await;
    flag(false);
    // Always reset: the CLI goes on to run DDL on this session.
    let reset = client
        .batch_execute(&format!(
            "DO $pgshift$ BEGIN
               IF current_setting({REPLICA_FLAG}, true) = 'on' THEN RESET session_replication_role; END IF;
             END $pgshift$;
             RESET {COPIER_SETTING}; RESET {COPIER_REPLICA_SETTING}; RESET lock_timeout; RESET application_name",
            REPLICA_FLAG = literal(COPIER_REPLICA_SETTING)
        ))
        .await
        .map_err(|e| Error::db(ctx("session reset"), e));
    let n = result?;
    reset?;
    Ok(n)
}

/// Set in the copier's session when it switched itself to a replica.
const COPIER_REPLICA_SETTING: &str = "pgshift.copier_replica";

/// The copier's writes touch only pgshift's own columns, so no trigger needs
/// to see them: where the role may (a superuser, or `GRANT SET ON PARAMETER
/// session_replication_role`), the session runs as a replica and no
/// ordinary trigger fires, foreign key checks included. Those checks are
/// not lost: every constraint on a backfilled column is added NOT VALID and
/// validated over all rows at complete. Tables with `ENABLE REPLICA`
/// triggers keep the normal mode, as those would fire only then.
fn skip_triggers_sql(spec: &BackfillSpec) -> String {
    format!(
        "DO $pgshift$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = {}::regclass AND tgenabled = 'R') THEN
             BEGIN
               IF current_setting('session_replication_role') = 'origin' THEN
                 PERFORM set_config('session_replication_role', 'replica', false);
                 PERFORM set_config({flag}, 'on', false);
               END IF;
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END;
           END IF;
         END $pgshift$",
        literal(&qualified(&spec.schema, &spec.table)),
        flag = literal(COPIER_REPLICA_SETTING)
    )
}

async fn walk(
    client: &Client,
    extra: &[Client],
    migration: &str,
    spec: &BackfillSpec,
    opts: &BackfillOptions,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let ctx = |what: &str| format!("backfill of {}: {what}", spec.table);
    let q = queries(spec);
    let t = qualified(&spec.schema, &spec.table);

    // First run: record the upper bound (rows above it were inserted with the
    // trigger in place) and the number of rows to visit.
    // The lowest key of a single integer key, when read with the first run's
    // other reads (None: not read yet).
    let mut lowest: Option<Option<i64>> = None;
    let existing = crate::pg::query_opt(
        client,
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
            // Three independent reads, sent together.
            let int_key = integer_walk(spec);
            let (upper, total, low) = tokio::try_join!(
                async {
                    crate::pg::query_opt(client, &q.upper, &[])
                        .await
                        .map_err(|e| Error::db(ctx("finding the upper key"), e))
                        .map(|r| r.and_then(|r| r.get::<_, Option<Vec<String>>>(0)))
                },
                async {
                    crate::pg::query_one(
                        client,
                        &format!("SELECT count(*) FROM {t} WHERE {}", ident(NEEDS_BACKFILL)),
                        &[],
                    )
                    .await
                    .map_err(|e| Error::db(ctx("counting rows"), e))
                    .map(|r| r.get::<_, i64>(0))
                },
                async {
                    if !int_key {
                        return Ok(None);
                    }
                    lowest_int(client, &q)
                        .await
                        .map_err(|e| Error::db(ctx("finding the lowest key"), e))
                        .map(Some)
                },
            )?;
            lowest = low;
            crate::pg::execute(client, "INSERT INTO pgshift.backfills (schema, migration, table_name, key_columns, upper_key, rows_total, done)
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
    let ctid = is_ctid(spec);
    let mut size = opts.batch_size.unwrap_or(10_000).max(1);
    let mut updated_now: u64 = 0;
    let mut batch_no: usize = 0;
    // Walks of a ctid table (a rewrite during the walk calls for another).
    let mut walks = 1;
    // A single integer key whose values are dense (the last batch updated at
    // least half the keys of its range, as with a serial id) is walked by
    // arithmetic, without the boundary query; sparse keys use the query.
    let mut int_upper: Option<i64> = match &upper[..] {
        [u] if integer_walk(spec) => u.parse().ok(),
        _ => None,
    };
    let mut dense = false;
    if let (true, Some(up)) = (ctid, int_upper) {
        // Sizes count pages: start near 10k rows' worth.
        if opts.batch_size.is_none() {
            size = u64::try_from((10_000 * (up + 1)) / total.max(1))
                .unwrap_or(1)
                .max(1);
        }
        dense = true;
        last = last.or_else(|| Some(vec!["-1".into()]));
    } else if let (Some(up), None) = (int_upper, &last) {
        // Before the first batch: a dense key starts by arithmetic at once,
        // just below its smallest value.
        let min = match lowest {
            Some(m) => m,
            None => lowest_int(client, &q)
                .await
                .map_err(|e| Error::db(ctx("finding the lowest key"), e))?,
        };
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
            c.wait(migration).await;
            if c.stepping_aside(migration) {
                return Err(Error::new(
                    crate::error::Kind::SteppedAside,
                    format!(
                        "backfill of {} stopped: the copier stepped aside for a pgshift command",
                        spec.table
                    ),
                ));
            }
            // A fixed size set while the copier ran or waited applies now.
            if let Some((_, Some(n))) = c.sizing() {
                size = n.max(1);
            }
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
                        params.extend(l.iter().map(|v| v as &dyn crate::pg::Param));
                        &q.next_boundary
                    }
                };
                crate::pg::query_opt(client, sql, &params)
                    .await
                    .map_err(|e| Error::db(ctx("finding the next key range"), e))?
                    .map(|r| r.get(0))
            };
        let Some(hi) = hi else {
            if ctid {
                if let Some(up) = ctid_leftovers(client, &q, &t, walks)
                    .await
                    .map_err(|e| e.context(format!("backfill of {}", spec.table)))?
                {
                    walks += 1;
                    int_upper = Some(up);
                    last = Some(vec!["-1".into()]);
                    continue;
                }
            }
            break;
        };
        // Update the range and record the mark in one transaction.
        let mut attempt = 0;
        let n = loop {
            attempt += 1;
            match batch(
                client,
                extra,
                &q,
                spec,
                migration,
                (last.as_ref(), &hi),
                batch_no + 1,
            )
            .await
            {
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
        if let Some(c) = &opts.control {
            c.rows.fetch_add(n, std::sync::atomic::Ordering::AcqRel);
        }
        if let (Some(lo), Some([h])) = (int_last, Some(&hi[..])) {
            let span = h.parse::<i64>().unwrap_or(lo).saturating_sub(lo);
            dense = ctid
                || (span > 0 && i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(2) >= span);
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
        let (target, fixed) = opts
            .control
            .as_ref()
            .and_then(|c| c.sizing())
            .unwrap_or((opts.target, opts.batch_size));
        size = match fixed {
            Some(n) => n.max(1),
            None => next_size(size, elapsed, target, opts),
        };
        if !opts.delay.is_zero() {
            tokio::time::sleep(opts.delay).await;
        }
        if let Some(c) = &opts.control {
            // A graded throttle (the application's latency) rests the copier
            // for a multiple of the batch's duration.
            let ratio = c.slowdown();
            if ratio > 0.0 {
                c.rest(began.elapsed().mul_f64(ratio.min(1000.0))).await;
            }
            // A rate limit stretches each batch to rows / limit seconds.
            let limit = c.effective_rate_limit();
            if limit > 0 {
                let min = Duration::from_secs_f64(n as f64 / limit as f64);
                if let Some(rest) = min.checked_sub(began.elapsed()) {
                    c.rest(rest).await;
                }
            }
        }
    }
    crate::pg::execute(client, "UPDATE pgshift.backfills SET done = true, updated_at = now() WHERE schema = $1 AND migration = $2 AND table_name = $3",
            &[&spec.schema, &migration, &spec.table],
        )
        .await
        .map_err(|e| Error::db(ctx("recording completion"), e))?;
    progress.finish();
    Ok(updated_now)
}

/// After a walk by pages: rows still marked (the table was rewritten during
/// the walk) call for another walk up to the table's current last page.
/// Gives up after a few walks rather than loop.
async fn ctid_leftovers(client: &Client, q: &Queries, t: &str, walks: u32) -> Result<Option<i64>> {
    let left: i64 = crate::pg::query_one(
        client,
        &format!("SELECT count(*) FROM {t} WHERE {}", ident(NEEDS_BACKFILL)),
        &[],
    )
    .await
    .map_err(|e| Error::db("counting rows left", e))?
    .get(0);
    if left == 0 {
        return Ok(None);
    }
    if walks >= 5 {
        return Err(Error::state(format!(
            "{left} rows are still unfilled after {walks} walks by page; is the table being rewritten (VACUUM FULL, CLUSTER) over and over?"
        )));
    }
    tracing::warn!("{left} rows moved during the walk by page (a table rewrite?); walking again");
    let up: Option<Vec<String>> = crate::pg::query_opt(client, &q.upper, &[])
        .await
        .map_err(|e| Error::db("finding the last page", e))?
        .and_then(|r| r.get(0));
    Ok(up
        .and_then(|u| u.first().and_then(|p| p.parse().ok()))
        .or(Some(0)))
}

fn is_int_type(t: &str) -> bool {
    matches!(t, "smallint" | "integer" | "bigint")
}

/// The smallest value of a single integer key (None on an empty table).
async fn lowest_int(
    client: &Client,
    q: &Queries,
) -> std::result::Result<Option<i64>, tokio_postgres::Error> {
    Ok(crate::pg::query_one(client, &q.lowest, &[])
        .await?
        .get::<_, Option<String>>(0)
        .and_then(|m| m.parse().ok()))
}

/// Size the next batch so it takes about `target`: grow at most 4x, shrink
/// at once (halve at least) after a batch that ran past twice the target.
fn next_size(size: u64, elapsed: Duration, target: Duration, opts: &BackfillOptions) -> u64 {
    let took = elapsed.as_secs_f64().max(1e-4);
    let target = target.as_secs_f64();
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
    extra: &[Client],
    q: &Queries,
    spec: &BackfillSpec,
    migration: &str,
    (last, hi): (Option<&Vec<String>>, &Vec<String>),
    batch_no: usize,
) -> std::result::Result<u64, tokio_postgres::Error> {
    if let (true, false, Some([lo]), [up]) = (
        integer_walk(spec),
        extra.is_empty(),
        last.map(|l| &l[..]),
        &hi[..],
    ) {
        if let (Ok(lo), Ok(up)) = (lo.parse::<i64>(), up.parse::<i64>()) {
            let shares = split_range(lo, up, extra.len() + 1);
            if shares.len() > 1 {
                // Each share commits on its own; the mark moves once all
                // have. A crash or a failed share leaves the mark behind
                // them: the batch runs again, and rows a share already did
                // no longer carry the backfill mark, so they are skipped.
                let runs =
                    shares
                        .iter()
                        .zip(std::iter::once(client).chain(extra))
                        .map(|((a, b), c)| {
                            run_batch(
                                c,
                                &q.next_batch,
                                vec![a.to_string(), b.to_string()],
                                None,
                                spec,
                                migration,
                            )
                        });
                let mut n = 0;
                for r in futures_util::future::join_all(runs).await {
                    n += r?;
                }
                // Shares committed, mark not moved.
                failpoint::hit("backfill", batch_no, true);
                crate::pg::execute(
                    client,
                    "UPDATE pgshift.backfills SET last_key = $1, updated_at = now()
                      WHERE schema = $2 AND migration = $3 AND table_name = $4",
                    &[hi, &spec.schema, &migration, &spec.table],
                )
                .await?;
                return Ok(n);
            }
        }
    }
    let (stmt, args) = match last {
        None => (&q.first_batch, hi.clone()),
        Some(l) => (&q.next_batch, l.iter().chain(hi).cloned().collect()),
    };
    run_batch(client, stmt, args, Some(hi), spec, migration).await
}

/// One call of `pgshift.backfill_batch`: `stmt` over the key bounds
/// `args`; `mark` is where the table's mark moves (`None`: it stays).
async fn run_batch(
    client: &Client,
    stmt: &String,
    args: Vec<String>,
    mark: Option<&Vec<String>>,
    spec: &BackfillSpec,
    migration: &str,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let mark = mark.cloned();
    let n: i64 = crate::pg::query_one(
        client,
        BATCH_SQL,
        &[stmt, &args, &mark, &spec.schema, &migration, &spec.table],
    )
    .await?
    .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// `(lo, up]` cut into at most `parts` consecutive, non-empty ranges of
/// about the same width.
fn split_range(lo: i64, up: i64, parts: usize) -> Vec<(i64, i64)> {
    let span = i128::from(up) - i128::from(lo);
    if span <= 0 {
        return vec![];
    }
    let parts = i128::try_from(parts.max(1)).unwrap_or(1).min(span);
    let at = |i: i128| i64::try_from(i128::from(lo) + span * i / parts).unwrap_or(up);
    (0..parts).map(|i| (at(i), at(i + 1))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_range_splits_into_consecutive_shares_that_cover_it() {
        assert_eq!(split_range(0, 10, 2), vec![(0, 5), (5, 10)]);
        assert_eq!(
            split_range(-1, 10_000, 3),
            vec![(-1, 3332), (3332, 6666), (6666, 10_000)]
        );
        // Fewer keys than workers: one key each.
        assert_eq!(split_range(5, 7, 4), vec![(5, 6), (6, 7)]);
        assert!(split_range(7, 7, 2).is_empty());
        // The ends of the key type do not overflow.
        let s = split_range(i64::MIN, i64::MAX, 2);
        assert_eq!((s[0].0, s[1].1), (i64::MIN, i64::MAX));
        assert_eq!(s[0].1, s[1].0);
    }

    #[test]
    fn graded_throttle_grows_above_the_bound_and_lifts_well_below_it() {
        let bound = Duration::from_millis(10);
        let over = Duration::from_millis(12);
        let near = Duration::from_micros(9500);
        let under = Duration::from_millis(5);
        assert_eq!(next_slowdown(0.0, over, bound), 0.5);
        assert_eq!(next_slowdown(0.5, over, bound), 0.75);
        assert_eq!(next_slowdown(MAX_SLOWDOWN, over, bound), MAX_SLOWDOWN);
        assert_eq!(next_slowdown(2.0, near, bound), 2.0);
        assert_eq!(next_slowdown(2.0, under, bound), 1.5);
        assert_eq!(next_slowdown(0.12, under, bound), 0.0);
        assert_eq!(next_slowdown(0.0, under, bound), 0.0);
    }

    #[test]
    fn batches_grow_toward_target_and_halve_on_outliers() {
        let o = BackfillOptions::default();
        assert_eq!(
            next_size(1000, Duration::from_millis(10), o.target, &o),
            4000
        );
        assert_eq!(
            next_size(1000, Duration::from_millis(100), o.target, &o),
            1000
        );
        assert!(next_size(1000, Duration::from_millis(1000), o.target, &o) <= 500);
        assert_eq!(next_size(150, Duration::from_secs(10), o.target, &o), 100);
    }
}
