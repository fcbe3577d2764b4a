//! The engine: runs a migration's phases against Postgres.
//!
//! - `start`: record the migration and its plan, run the start steps
//!   (expand DDL, triggers, version schema), then the backfill.
//! - `complete`: finish the backfill if needed, then run the complete steps.
//! - `rollback`: run the rollback steps (all idempotent) and forget the
//!   migration.
//!
//! Each phase is resumable: the step cursor and the backfill marks live in
//! the control schema, and running the same command again continues where a
//! crashed run stopped. A session advisory lock keeps two pgshift processes
//! off one schema.

pub mod autovacuum;
pub mod exec;
pub mod failpoint;
pub mod state;

use crate::backfill::{self, BackfillOptions};
use crate::error::{Error, Result};
use crate::migration::Migration;
use crate::plan::{self, Plan};
use crate::progress::{self, ProgressMode};
use crate::sql::{ident, literal};
use exec::{Cursor, LockPolicy};
use serde::Serialize;
use state::{MigrationRow, Phase};
use tokio_postgres::{Client, NoTls};

/// How long `rollback` waits for a daemon's copier to stop backfilling.
const STEP_ASIDE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a daemon's copier keeps off the backfill when asked to step
/// aside: long enough for the command that asked to take the lock.
pub const STEP_ASIDE_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Settings of one engine session.
#[derive(Debug, Clone)]
pub struct Options {
    /// The schema being migrated.
    pub schema: String,
    pub lock: LockPolicy,
    pub backfill: BackfillOptions,
    pub progress: ProgressMode,
    /// When a daemon leads the copier of the schema, `start` stops after the
    /// expand steps and leaves the backfill to it.
    pub handoff: bool,
}

/// How `complete` treats a daemon's backfill and old-version sessions.
#[derive(Debug, Clone, Default)]
pub struct CompleteOptions {
    /// Wait for a daemon's backfill to finish instead of refusing.
    pub wait: bool,
    /// Wait this long for sessions on other versions to leave, then close
    /// them; `None`: refuse while there are any.
    pub drain_timeout: Option<std::time::Duration>,
}

/// How `start` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Expanded and backfilled: the new version is usable.
    Active,
    /// Expanded; the daemon's copier (backend pid) runs the backfill.
    HandedOff(i32),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            schema: "public".into(),
            lock: LockPolicy::default(),
            backfill: BackfillOptions::default(),
            progress: ProgressMode::None,
            handoff: false,
        }
    }
}

/// Open a connection; the connection task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| Error::db(format!("cannot connect to {}", redact(url)), e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema: String,
    /// The newest migration, active or complete.
    pub version: Option<String>,
    /// "No migrations", "In progress" or "Complete" (pgroll's words).
    pub status: String,
    pub phase: Option<String>,
    pub version_schema: Option<String>,
    pub backfill: Vec<state::BackfillRow>,
    /// Live copier settings.
    pub settings: std::collections::BTreeMap<String, String>,
    /// Daemons that reported in the last seconds.
    pub daemons: Vec<DaemonStatus>,
}

/// A running daemon as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub id: String,
    pub listen: String,
    pub sessions: usize,
    pub throttle: Option<String>,
}

/// A connected engine for one schema.
pub struct Engine {
    client: Client,
    opts: Options,
    /// Where more connections come from (`--backfill-workers`); `None` on a
    /// connection the caller opened.
    url: Option<String>,
    /// Those connections, opened while the steps before the backfill run.
    workers: std::sync::Mutex<Vec<tokio::task::JoinHandle<Result<Client>>>>,
}

impl Engine {
    pub async fn connect(url: &str, opts: Options) -> Result<Engine> {
        let mut e = Engine::with_client(connect(url).await?, opts).await?;
        e.url = Some(url.to_string());
        Ok(e)
    }

    /// An engine on a connection the caller opened (the daemon's copier
    /// keeps its leader lock and LISTEN on it).
    pub async fn with_client(client: Client, opts: Options) -> Result<Engine> {
        // One round trip: every command pays it.
        client
            .batch_execute(&format!(
                "SELECT set_config('application_name', 'pgshift', false), set_config('search_path', {}, false)",
                literal(&ident(&opts.schema))
            ))
            .await
            .map_err(|e| Error::db("session setup", e))?;
        Ok(Engine {
            client,
            opts,
            url: None,
            workers: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The lock policy, with the proxies' gates when daemons serve the schema.
    async fn lock_policy(&self) -> Result<LockPolicy> {
        let mut p = self.opts.lock.clone();
        if !state::live_daemons(&self.client, self.schema())
            .await?
            .is_empty()
        {
            p.gate = Some(self.schema().to_string());
        }
        Ok(p)
    }

    /// Change how the next backfill paces itself (the daemon's SIGHUP).
    pub fn set_backfill_options(&mut self, b: BackfillOptions) {
        self.opts.backfill = b;
    }

    fn schema(&self) -> &str {
        &self.opts.schema
    }

    /// Release pgshift's advisory locks now instead of when the connection
    /// ends (a closing backend can hold them a moment after the process exits).
    pub async fn release(&self) {
        exec::flush_lock_stats(&self.client).await;
        let _ = self
            .client
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await;
    }

    /// Create the control schema (idempotent).
    pub async fn init(&self) -> Result<()> {
        state::init(&self.client).await
    }

    /// The newest completed migration's name and version schema.
    fn previous_version_schema(hist: &[MigrationRow]) -> (Option<String>, Option<String>) {
        match hist.iter().rev().find(|m| m.phase == Phase::Complete) {
            Some(m) => (Some(m.name.clone()), Some(m.version_schema.clone())),
            None => (None, None),
        }
    }

    /// The plan `start` would run now. Changes nothing.
    pub async fn plan(&self, m: &Migration) -> Result<Plan> {
        let hist = if state::initialized(&self.client).await? {
            state::history(&self.client, self.schema()).await?
        } else {
            vec![]
        };
        let (_, prev) = Engine::previous_version_schema(&hist);
        plan::plan(&self.client, m, self.schema(), prev).await
    }

    /// Start (expand + backfill), or resume a crashed start of the same file.
    pub async fn start(&self, m: &Migration) -> Result<Started> {
        self.init().await?;
        state::lock(&self.client, self.schema()).await?;
        let hist = state::history(&self.client, self.schema()).await?;
        let active = hist.iter().find(|h| h.phase != Phase::Complete).cloned();
        let row = match active {
            Some(a) if a.name == m.name => {
                if a.checksum != m.checksum {
                    return Err(Error::state(format!(
                        "migration {:?} is in progress with different file contents (the file changed since it started); roll it back before starting the edited file",
                        a.name
                    )));
                }
                match a.phase {
                    Phase::Starting | Phase::Backfilling => {
                        tracing::info!("resuming start of {:?} (phase {}, step {})", a.name, a.phase, a.step);
                        a
                    }
                    Phase::Active => {
                        tracing::info!("migration {:?} is already started; nothing to do", a.name);
                        return Ok(Started::Active);
                    }
                    Phase::Completing => {
                        return Err(Error::state(format!("migration {:?} is completing; run `pgshift complete` to finish it", a.name)))
                    }
                    Phase::RollingBack => {
                        return Err(Error::state(format!("migration {:?} is rolling back; run `pgshift rollback` to finish it", a.name)))
                    }
                    Phase::Complete => unreachable_complete(&a.name)?,
                }
            }
            Some(a) => {
                return Err(Error::state(format!(
                    "migration {:?} is in progress on schema {:?} (phase {}); complete or roll it back before starting {:?}",
                    a.name,
                    self.schema(),
                    a.phase,
                    m.name
                )))
            }
            None => {
                if hist.iter().any(|h| h.name == m.name) {
                    return Err(Error::state(format!("migration {:?} is already applied to schema {:?}", m.name, self.schema())));
                }
                let (parent, prev) = Engine::previous_version_schema(&hist);
                let plan = plan::plan(&self.client, m, self.schema(), prev).await?;
                let plan_json = serde_json::to_value(&plan).map_err(|e| Error::state(format!("cannot store plan: {e}")))?;
                let file_json = serde_json::to_value(&m.file).map_err(|e| Error::state(format!("cannot store migration: {e}")))?;
                state::insert(
                    &self.client,
                    state::NewMigration {
                        schema: self.schema(),
                        name: &m.name,
                        parent: parent.as_deref(),
                        version_schema: &plan.version_schema,
                        contents: &m.contents,
                        checksum: &m.checksum,
                        migration: file_json,
                        plan: plan_json,
                    },
                )
                .await?;
                MigrationRow {
                    schema: self.schema().to_string(),
                    name: m.name.clone(),
                    parent,
                    version_schema: plan.version_schema.clone(),
                    checksum: m.checksum.clone(),
                    contents: m.contents.clone(),
                    plan,
                    phase: Phase::Starting,
                    step: 0,
                }
            }
        };
        match self.finish_start(&row).await {
            Ok(s) => Ok(s),
            Err(e) => {
                // An error (not a crash): undo everything so nothing stays
                // half-applied. A crash instead leaves the cursor for a rerun.
                tracing::error!("start of {:?} failed: {e}; rolling back", row.name);
                match self.rollback_row(&row.name).await {
                    Ok(()) => Err(e.context(format!("start of {:?} failed and was rolled back, nothing is applied", row.name))),
                    Err(r) => Err(e.context(format!(
                        "start of {:?} failed, and the automatic rollback failed too ({r}); run `pgshift rollback`",
                        row.name
                    ))),
                }
            }
        }
    }

    async fn finish_start(&self, row: &MigrationRow) -> Result<Started> {
        if !self.opts.handoff {
            self.open_workers(row);
        }
        if row.phase == Phase::Starting {
            let cursor = Cursor {
                schema: self.schema(),
                migration: &row.name,
                phase: Phase::Starting,
            };
            exec::run_steps(
                &self.client,
                &row.plan.start,
                row.step,
                &cursor,
                &self.lock_policy().await?,
            )
            .await?;
            state::set_phase(
                &self.client,
                self.schema(),
                &row.name,
                Phase::Backfilling,
                0,
            )
            .await?;
        }
        if self.opts.handoff && !row.plan.backfills.is_empty() {
            if let Some(pid) = state::copier_leader(&self.client, self.schema()).await? {
                tracing::info!(
                    "migration {:?} expanded; the daemon's copier (backend pid {pid}) runs the backfill",
                    row.name
                );
                return Ok(Started::HandedOff(pid));
            }
        }
        self.backfill(row).await?;
        state::set_phase(&self.client, self.schema(), &row.name, Phase::Active, 0).await?;
        tracing::info!(
            "migration {:?} started: new version in schema {:?}; run `pgshift complete` when no client uses the old version",
            row.name,
            row.version_schema
        );
        Ok(Started::Active)
    }

    /// The daemon's copier: if the active migration waits for its backfill,
    /// run it (resuming from the persisted marks) and make the migration
    /// active. Returns the migration's name when it did.
    pub async fn run_pending_backfill(&self) -> Result<Option<String>> {
        if !state::initialized(&self.client).await? {
            return Ok(None);
        }
        match state::active(&self.client, self.schema()).await? {
            Some(r) if r.phase == Phase::Backfilling => {
                // Asked to keep off it (a rollback is taking the lock).
                if self
                    .opts
                    .backfill
                    .control
                    .as_ref()
                    .is_some_and(|c| c.stepping_aside(&r.name))
                {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
        state::lock(&self.client, self.schema()).await?;
        let res = async {
            // Re-read under the lock: a CLI may have finished it meanwhile.
            let Some(row) = state::active(&self.client, self.schema())
                .await?
                .filter(|r| r.phase == Phase::Backfilling)
            else {
                return Ok(None);
            };
            tracing::info!("copier: backfilling {:?}", row.name);
            self.init().await?;
            self.backfill(&row).await?;
            state::set_phase(&self.client, self.schema(), &row.name, Phase::Active, 0).await?;
            tracing::info!("copier: {:?} is backfilled and active", row.name);
            Ok(Some(row.name))
        }
        .await;
        self.release().await;
        res
    }

    /// Sessions that daemons' proxies hold on versions other than `keep`,
    /// for this database.
    async fn old_sessions(&self, keep: &str) -> Result<Vec<state::SessionRow>> {
        let daemons = state::live_daemons(&self.client, self.schema()).await?;
        if daemons.is_empty() {
            return Ok(vec![]);
        }
        let db: String = crate::pg::query_one(&self.client, "SELECT current_database()::text", &[])
            .await
            .map_err(|e| Error::db("reading the database name", e))?
            .get(0);
        Ok(daemons
            .into_iter()
            .flat_map(|d| d.sessions)
            .filter(|s| s.version.as_deref() != Some(keep) && s.database == db)
            .collect())
    }

    async fn drain_old_sessions(
        &self,
        keep: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<()> {
        let old = self.old_sessions(keep).await?;
        if old.is_empty() {
            return Ok(());
        }
        let list = |v: &[state::SessionRow]| {
            v.iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let Some(timeout) = timeout else {
            return Err(Error::state(format!(
                "{} session(s) still use another version than {keep:?} through the proxy; complete would break them:\n{}\nwait for them to leave, or pass --drain-timeout SECONDS to close them after that long",
                old.len(),
                list(&old)
            )));
        };
        tracing::info!(
            "waiting up to {:?} for {} old-version session(s) to leave:\n{}",
            timeout,
            old.len(),
            list(&old)
        );
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if self.old_sessions(keep).await?.is_empty() {
                return Ok(());
            }
        }
        let left = self.old_sessions(keep).await?;
        if left.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            "drain timeout passed; closing {} session(s):\n{}",
            left.len(),
            list(&left)
        );
        state::request(&self.client, self.schema(), "drain", keep).await?;
        // The daemons report the closed sessions within a heartbeat.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.old_sessions(keep).await?.is_empty() {
            if std::time::Instant::now() > deadline {
                return Err(Error::state(
                    "old-version sessions were asked to close but the daemons still report them",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Follow a handed-off backfill until the migration is active (or gone).
    pub async fn wait_backfilled(&self, name: &str) -> Result<()> {
        let mut reporter = progress::reporter(self.opts.progress);
        let mut current: Option<String> = None;
        let mut last_done: i64 = 0;
        loop {
            let row = state::active(&self.client, self.schema()).await?;
            let Some(row) = row.filter(|r| r.name == name) else {
                return Err(Error::state(format!(
                    "migration {name:?} is no longer in progress (rolled back?)"
                )));
            };
            let list = state::backfills(&self.client, self.schema(), name).await?;
            // The table being copied: the first unfinished one, else the last.
            if let Some(b) = list.iter().find(|b| !b.done).or(list.last()) {
                if current.as_deref() == Some(b.table.as_str()) {
                    reporter.advance(u64::try_from(b.rows_done - last_done).unwrap_or(0), 0);
                } else {
                    if current.is_some() {
                        reporter.finish();
                    }
                    let n = |v: i64| u64::try_from(v).unwrap_or(0);
                    reporter.start(&b.table, n(b.rows_total), n(b.rows_done));
                    current = Some(b.table.clone());
                }
                last_done = b.rows_done;
            }
            if row.phase != Phase::Backfilling {
                reporter.finish();
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    async fn backfill(&self, row: &MigrationRow) -> Result<()> {
        let mut reporter = progress::reporter(self.opts.progress);
        let extra = self.extra_connections(row).await;
        for spec in &row.plan.backfills {
            backfill::run(
                &self.client,
                &extra,
                &row.name,
                spec,
                &self.opts.backfill,
                reporter.as_mut(),
            )
            .await?;
        }
        Ok(())
    }

    /// Begin opening the copier's other connections (`--backfill-workers`
    /// beyond the first) for `row`'s backfill, so that they are ready when
    /// it starts. The daemon's copier has none: it paces one connection by
    /// the application's latency.
    fn open_workers(&self, row: &MigrationRow) {
        let (Some(url), None) = (&self.url, &self.opts.backfill.control) else {
            return;
        };
        if row.plan.backfills.is_empty() {
            return;
        }
        let mut pending = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        while pending.len() + 1 < self.opts.backfill.workers {
            let url = url.clone();
            pending.push(tokio::spawn(async move { connect(&url).await }));
        }
    }

    /// The connections [`Engine::open_workers`] opened. One that failed
    /// leaves the backfill with fewer workers, not failed.
    async fn extra_connections(&self, row: &MigrationRow) -> Vec<Client> {
        self.open_workers(row);
        let pending = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out = Vec::new();
        for h in pending {
            match h
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(c) => out.push(c),
                Err(e) => tracing::warn!(
                    "backfill: a worker's connection failed ({e}); going on without it"
                ),
            }
        }
        out
    }

    /// Complete the active migration (contract). Returns its name.
    pub async fn complete(&self) -> Result<String> {
        self.complete_with(&CompleteOptions::default()).await
    }

    /// Complete, first waiting for a daemon's backfill (`wait`) and for the
    /// proxies' sessions on other versions to leave (`drain_timeout`; then
    /// they are closed). Without a drain timeout such sessions make it refuse.
    pub async fn complete_with(&self, o: &CompleteOptions) -> Result<String> {
        if !state::initialized(&self.client).await? {
            return Err(Error::state(
                "nothing to complete: pgshift is not initialised in this database",
            ));
        }
        if let Some(a) = state::active(&self.client, self.schema()).await? {
            if a.phase == Phase::Backfilling
                && state::copier_leader(&self.client, self.schema())
                    .await?
                    .is_some()
            {
                if !o.wait {
                    return Err(Error::state(format!(
                        "the pgshift daemon is still backfilling {:?}; run `pgshift complete --wait` to wait for it",
                        a.name
                    )));
                }
                self.wait_backfilled(&a.name).await?;
            }
            self.drain_old_sessions(&a.name, o.drain_timeout).await?;
        }
        let row = self.locked_active_initialized("complete").await?;
        match row.phase {
            Phase::Starting => {
                return Err(Error::state(format!(
                    "start of {:?} did not finish; run `pgshift start` with the same file to finish it, or `pgshift rollback`",
                    row.name
                )))
            }
            Phase::RollingBack => {
                return Err(Error::state(format!("migration {:?} is rolling back; run `pgshift rollback` to finish it", row.name)))
            }
            Phase::Backfilling => {
                // Started by an older pgshift: its control schema may lack
                // what this backfill calls.
                self.init().await?;
                self.backfill(&row).await?;
                state::set_phase(&self.client, self.schema(), &row.name, Phase::Active, 0).await?;
            }
            _ => {}
        }
        let from = if row.phase == Phase::Completing {
            row.step
        } else {
            0
        };
        state::set_phase(
            &self.client,
            self.schema(),
            &row.name,
            Phase::Completing,
            from,
        )
        .await?;
        let cursor = Cursor {
            schema: self.schema(),
            migration: &row.name,
            phase: Phase::Completing,
        };
        exec::run_steps(
            &self.client,
            &row.plan.complete,
            from,
            &cursor,
            &self.lock_policy().await?,
        )
        .await?;
        state::set_phase(&self.client, self.schema(), &row.name, Phase::Complete, 0).await?;
        tracing::info!("migration {:?} complete", row.name);
        Ok(row.name)
    }

    /// Roll back the active migration. Returns its name. A daemon's copier
    /// backfilling it is asked to step aside first.
    pub async fn rollback(&self) -> Result<String> {
        let aside = if state::initialized(&self.client).await? {
            self.take_over_from_copier().await?
        } else {
            None
        };
        let res = async {
            let row = self.locked_active("roll back").await?;
            if row.phase == Phase::Completing {
                return Err(Error::state(format!(
                    "complete of {:?} has begun and cannot be undone; run `pgshift complete` to finish it",
                    row.name
                )));
            }
            self.rollback_row(&row.name).await?;
            Ok(row.name)
        }
        .await;
        if let Some(name) = aside {
            // Done with the lock's work: the copier may take on a backfill of
            // that name again (a new start of the same file).
            if let Err(e) = state::request(&self.client, self.schema(), "step_back", &name).await {
                tracing::warn!("letting the daemon's copier go on: {e}");
            }
        }
        res
    }

    /// If a daemon's copier is backfilling the active migration (holding the
    /// schema's lock), ask it to stop and take the lock once it has. Returns
    /// the migration it was asked to step aside from.
    async fn take_over_from_copier(&self) -> Result<Option<String>> {
        let Some(a) = state::active(&self.client, self.schema()).await? else {
            return Ok(None);
        };
        if a.phase != Phase::Backfilling
            || state::copier_leader(&self.client, self.schema())
                .await?
                .is_none()
        {
            return Ok(None);
        }
        tracing::info!(
            "asking the daemon's copier to stop backfilling {:?}",
            a.name
        );
        state::request(&self.client, self.schema(), "step_aside", &a.name).await?;
        // It stops at its next batch boundary; a batch is short.
        state::lock_within(&self.client, self.schema(), STEP_ASIDE_GRACE).await?;
        Ok(Some(a.name))
    }

    /// Roll back the active migration `name`; the advisory lock is held.
    async fn rollback_row(&self, name: &str) -> Result<()> {
        let row = state::active(&self.client, self.schema())
            .await?
            .filter(|r| r.name == name)
            .ok_or_else(|| Error::state(format!("migration {name:?} is not in progress")))?;
        let nothing_applied = row.phase == Phase::Starting
            && row.step == 0
            && matches!(
                row.plan.start.first().map(|s| &s.action),
                Some(crate::plan::Action::Sql {
                    transactional: true,
                    ..
                })
            );
        if nothing_applied {
            // The first step commits with the cursor, and the cursor is 0.
            state::delete(&self.client, self.schema(), &row.name).await?;
            tracing::info!(
                "migration {:?} forgotten (no step had been applied)",
                row.name
            );
            return Ok(());
        }
        let from = if row.phase == Phase::RollingBack {
            row.step
        } else {
            0
        };
        state::set_phase(
            &self.client,
            self.schema(),
            &row.name,
            Phase::RollingBack,
            from,
        )
        .await?;
        let cursor = Cursor {
            schema: self.schema(),
            migration: &row.name,
            phase: Phase::RollingBack,
        };
        exec::run_steps(
            &self.client,
            &row.plan.rollback,
            from,
            &cursor,
            &self.lock_policy().await?,
        )
        .await?;
        state::delete(&self.client, self.schema(), &row.name).await?;
        tracing::info!("migration {:?} rolled back", row.name);
        Ok(())
    }

    async fn locked_active(&self, verb: &str) -> Result<MigrationRow> {
        if !state::initialized(&self.client).await? {
            return Err(Error::state(format!(
                "nothing to {verb}: pgshift is not initialised in this database"
            )));
        }
        self.locked_active_initialized(verb).await
    }

    /// [`Engine::locked_active`] once the control schema is known to exist.
    async fn locked_active_initialized(&self, verb: &str) -> Result<MigrationRow> {
        state::lock(&self.client, self.schema()).await?;
        state::active(&self.client, self.schema())
            .await?
            .ok_or_else(|| {
                Error::state(format!(
                    "nothing to {verb}: no migration is in progress on schema {:?}",
                    self.schema()
                ))
            })
    }

    pub async fn status(&self) -> Result<Status> {
        let empty = Status {
            schema: self.schema().to_string(),
            version: None,
            status: "No migrations".into(),
            phase: None,
            version_schema: None,
            backfill: vec![],
            settings: Default::default(),
            daemons: vec![],
        };
        if !state::initialized(&self.client).await? {
            return Ok(empty);
        }
        let Some(latest) = state::latest(&self.client, self.schema()).await? else {
            return Ok(empty);
        };
        Ok(Status {
            status: if latest.phase == Phase::Complete {
                "Complete"
            } else {
                "In progress"
            }
            .into(),
            backfill: state::backfills(&self.client, self.schema(), &latest.name).await?,
            version: Some(latest.name),
            phase: Some(latest.phase.to_string()),
            version_schema: Some(latest.version_schema),
            schema: self.schema().to_string(),
            settings: state::settings(&self.client, self.schema()).await?,
            daemons: state::live_daemons(&self.client, self.schema())
                .await?
                .into_iter()
                .map(|d| DaemonStatus {
                    id: d.id,
                    listen: d.listen,
                    sessions: d.sessions.len(),
                    throttle: d.throttle,
                })
                .collect(),
        })
    }

    /// Every migration of the schema in order, as (name, file contents).
    pub async fn history(&self) -> Result<Vec<(String, String)>> {
        if !state::initialized(&self.client).await? {
            return Ok(vec![]);
        }
        Ok(state::history(&self.client, self.schema())
            .await?
            .into_iter()
            .map(|m| (m.name, m.contents))
            .collect())
    }

    /// The newest migration (active or complete), if any.
    pub async fn latest(&self) -> Result<Option<MigrationRow>> {
        if !state::initialized(&self.client).await? {
            return Ok(None);
        }
        state::latest(&self.client, self.schema()).await
    }

    /// Apply the pending files of a directory in order: each is started and
    /// completed, except the last, which stays active unless `complete_last`.
    /// Refuses a directory whose applied files were edited or reordered.
    /// Returns the names started.
    pub async fn migrate(&self, files: &[Migration], complete_last: bool) -> Result<Vec<String>> {
        self.init().await?;
        let hist = state::history(&self.client, self.schema()).await?;
        for (i, h) in hist.iter().enumerate() {
            let Some(f) = files.get(i) else {
                return Err(Error::state(format!(
                    "migration {:?} is applied to the database but the directory has only {} files; the directory is not this database's history",
                    h.name,
                    files.len()
                )));
            };
            if f.name != h.name {
                return Err(Error::state(format!(
                    "file {} is at position {} but the database applied {:?} there; files were renamed or reordered",
                    f.origin(),
                    i + 1,
                    h.name
                )));
            }
            if f.checksum != h.checksum {
                return Err(Error::state(format!(
                    "file {} was edited after it was applied (checksum differs); restore it, or write a new migration",
                    f.origin()
                )));
            }
        }
        let mut started = Vec::new();
        let pending = &files[hist.len().min(files.len())..];
        if let Some(active) = hist.iter().find(|h| h.phase != Phase::Complete) {
            if pending.is_empty() && !complete_last {
                tracing::info!(
                    "migration {:?} is in progress; nothing pending",
                    active.name
                );
                return Ok(started);
            }
            if matches!(active.phase, Phase::Starting | Phase::Backfilling) {
                let f = &files[hist.len() - 1];
                self.start(f).await?;
            }
            self.complete().await?;
        }
        for (i, m) in pending.iter().enumerate() {
            self.start(m).await?;
            started.push(m.name.clone());
            if i + 1 < pending.len() || complete_last {
                self.complete().await?;
            }
        }
        Ok(started)
    }
}

fn unreachable_complete(name: &str) -> Result<MigrationRow> {
    Err(Error::state(format!(
        "migration {name:?} is already complete"
    )))
}
