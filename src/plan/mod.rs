//! Planning: turn a migration into the exact steps of each phase.
//!
//! The planner reads the physical schema once, replays the operations on a
//! model of the new version (virtual table and column names mapped to
//! physical ones), and emits:
//! - `start` steps (expand DDL, dual-write triggers, the version schema),
//! - backfill specs (what the copier computes, table by table),
//! - `complete` steps (validate, then one short cut-over transaction per
//!   table, then table renames and drops),
//! - `rollback` steps, each idempotent so rollback works from any point.
//!
//! The plan is stored with the migration in the control schema, so resuming
//! after a crash runs exactly what was planned.

pub mod model;
pub mod preflight;
pub mod triggers;
pub mod views;

use crate::error::{Error, Result};
use crate::migration::{Migration, Operation};
use crate::ops;
use crate::schema::Schema;
use crate::sql::{ident, literal, qualified};
use model::{Model, VTable};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

pub use triggers::{Assign, TriggerSpec};
pub use views::ViewSpec;

/// Prefix of every object pgshift creates inside user schemas.
pub const PREFIX: &str = "_pgshift_";
/// The column that marks rows the copier has not yet visited.
pub const NEEDS_BACKFILL: &str = "_pgshift_needs_backfill";
/// The session setting that identifies the copier (its writes skip triggers).
pub const COPIER_SETTING: &str = "pgshift.copier";
/// The session setting that names a session's schema version.
pub const VERSION_SETTING: &str = "pgshift.version";
/// The control schema.
pub const CONTROL_SCHEMA: &str = "pgshift";

/// What one step does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// SQL run in one transaction with the step's progress mark, or alone
    /// when it cannot run in a transaction (CONCURRENTLY). When `guard` is
    /// set, the step runs only if that query returns true.
    Sql {
        sql: String,
        transactional: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guard: Option<String>,
    },
    /// `CREATE INDEX CONCURRENTLY IF NOT EXISTS`: an INVALID leftover of a
    /// failed build is dropped first, and the result is checked for validity.
    CreateIndex {
        sql: String,
        schema: String,
        index: String,
    },
    /// (Re)create the version schema and its views.
    Views(ViewSpec),
}

/// One step of a phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Human description for logs and errors.
    pub describe: String,
    #[serde(flatten)]
    pub action: Action,
    /// The table whose lock the step takes (schema, name), to report blockers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_table: Option<(String, String)>,
    /// The step only takes locks that never block reads or writes (SHARE
    /// UPDATE EXCLUSIVE: VALIDATE CONSTRAINT, CREATE INDEX CONCURRENTLY), so
    /// it may wait longer for them: long enough for Postgres to cancel an
    /// autovacuum in its way (after `deadlock_timeout`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weak_lock: bool,
}

impl Step {
    pub fn sql(describe: impl Into<String>, sql: impl Into<String>) -> Step {
        Step {
            describe: describe.into(),
            action: Action::Sql {
                sql: sql.into(),
                transactional: true,
                guard: None,
            },
            lock_table: None,
            weak_lock: false,
        }
    }

    pub fn non_transactional(describe: impl Into<String>, sql: impl Into<String>) -> Step {
        let mut s = Step::sql(describe, sql);
        if let Action::Sql { transactional, .. } = &mut s.action {
            *transactional = false;
        }
        s
    }

    pub fn guarded(mut self, guard: impl Into<String>) -> Step {
        if let Action::Sql { guard: g, .. } = &mut self.action {
            *g = Some(guard.into());
        }
        self
    }

    pub fn on_table(mut self, schema: &str, table: &str) -> Step {
        self.lock_table = Some((schema.to_string(), table.to_string()));
        self
    }

    /// The SQL this step runs, for `plan` and logs.
    pub fn render(&self) -> String {
        match &self.action {
            Action::Sql { sql, guard, .. } => match guard {
                Some(g) => format!("-- only if: {g}\n{sql}"),
                None => sql.clone(),
            },
            Action::CreateIndex { sql, .. } => sql.clone(),
            Action::Views(v) => v.render_planned(),
        }
    }
}

/// What the copier does for one table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillSpec {
    pub schema: String,
    /// Physical table name during the migration.
    pub table: String,
    /// Key columns walked in order (primary key or unique NOT NULL).
    pub key: Vec<String>,
    /// Types of the key columns (`format_type`), to cast stored key text.
    pub key_types: Vec<String>,
    /// `SET target = (expr)` pairs, computed from the old-side columns.
    pub sets: Vec<Assign>,
}

/// The complete plan of a migration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub schema: String,
    pub version_schema: String,
    /// The version schema of the previous migration, dropped at complete.
    pub previous_version_schema: Option<String>,
    pub start: Vec<Step>,
    pub backfills: Vec<BackfillSpec>,
    pub complete: Vec<Step>,
    pub rollback: Vec<Step>,
}

/// The order in which complete steps run; steps keep their order within a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Drop the previous version schema.
    DropPrevious = 0,
    /// Validate constraints added NOT VALID (long, but blocks no writes).
    Validate = 1,
    /// Per table, one short transaction: drop triggers and old columns,
    /// rename new columns into place, set NOT NULL, attach unique indexes.
    Cutover = 2,
    /// Table renames and drops.
    Tables = 3,
    /// Everything else (DROP INDEX CONCURRENTLY, `onComplete` SQL).
    Last = 4,
}

/// A column duplicated by this migration (alter_column and the constraint
/// operations).
#[derive(Debug, Clone)]
pub struct Duplicated {
    /// Physical table.
    pub table: String,
    /// Physical original column.
    pub column: String,
    pub copy: String,
    /// A constraint the copy must not carry (drop_constraint).
    pub dropping: Option<String>,
    /// Constraints written for the old type are not carried.
    pub type_changed: bool,
}

/// Planning state shared by the operations.
pub struct Planner<'a> {
    pub client: &'a Client,
    pub migration: &'a Migration,
    pub schema: String,
    pub version_schema: String,
    pub base: &'a Schema,
    pub model: Model,
    pub start: Vec<Step>,
    pub complete: Vec<(Stage, Step)>,
    /// Statements run inside each table's cut-over transaction, after the
    /// column renames, keyed by physical table name.
    pub cutover_post: Vec<(String, String)>,
    pub rollback: Vec<Step>,
    pub triggers: Vec<TriggerSpec>,
    /// Constraints on new columns, keyed by physical table: added (NOT
    /// VALID) in the transaction that installs the table's dual-write
    /// trigger, never before it; otherwise old-version writes in between
    /// would leave the new column NULL and break them. Rollback drops them
    /// in the transaction that removes the trigger, for the same reason.
    /// (table, constraint name, statement).
    pub after_trigger: Vec<(String, String, String)>,
    /// Columns duplicated by this migration.
    pub duplicated: Vec<Duplicated>,
    /// Constraints the existing rows must satisfy (checked before start).
    pub preflight: Vec<preflight::Preflight>,
    /// Index of the operation being planned, for error messages.
    pub op_index: usize,
    pub op_kind: &'static str,
    /// A `sql` operation ran: the version schema must include tables it made.
    pub has_raw_sql: bool,
}

impl<'a> Planner<'a> {
    /// An error about the current operation, naming file, index and field.
    pub fn err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        let at = if field.is_empty() {
            String::new()
        } else {
            format!(", field `{field}`")
        };
        Error::invalid(format!(
            "{}: operations[{}] ({}){at}: {msg}",
            self.migration.origin(),
            self.op_index,
            self.op_kind
        ))
    }

    /// Quoted `"schema"."name"`.
    pub fn q(&self, name: &str) -> String {
        qualified(&self.schema, name)
    }

    /// The table named `name` in the new version, or an error naming `field`.
    pub fn table(&self, field: &str, name: &str) -> Result<&VTable> {
        self.model.table(name).ok_or_else(|| {
            self.err(
                field,
                format!("table {name:?} does not exist in schema {:?}", self.schema),
            )
        })
    }

    pub fn table_mut(&mut self, field: &str, name: &str) -> Result<&mut VTable> {
        let err = self.err(
            field,
            format!("table {name:?} does not exist in schema {:?}", self.schema),
        );
        self.model.table_mut(name).ok_or(err)
    }

    /// The trigger spec of physical table `table`, created on first use.
    pub fn trigger(&mut self, table: &str) -> &mut TriggerSpec {
        if let Some(i) = self.triggers.iter().position(|t| t.table == table) {
            return &mut self.triggers[i];
        }
        self.triggers.push(TriggerSpec::new(&self.schema, table));
        let last = self.triggers.len() - 1;
        &mut self.triggers[last]
    }

    /// Check before start that the existing rows, with their `up` values,
    /// satisfy `rule` (constraint `name` on physical `table`).
    pub fn require(&mut self, table: &str, name: &str, rule: preflight::Rule) {
        self.preflight.push(preflight::Preflight {
            table: table.to_string(),
            name: name.to_string(),
            rule,
        });
    }

    /// Add `sql` (an `ADD CONSTRAINT name ... NOT VALID` on a new column of
    /// `table`) once the dual-write trigger fills that column.
    pub fn constrain(&mut self, table: &str, name: &str, sql: String) {
        self.after_trigger
            .push((table.to_string(), name.to_string(), sql));
    }

    /// Add constraint `name` (`def`, e.g. `CHECK (...)`) on `table` NOT
    /// VALID once the trigger fills its columns, and validate it at complete
    /// in a step described by `describe`.
    pub fn not_valid_constraint(&mut self, table: &str, name: &str, def: &str, describe: String) {
        let t = self.q(table);
        self.constrain(
            table,
            name,
            format!(
                "ALTER TABLE {t} ADD CONSTRAINT {} {def} NOT VALID",
                ident(name)
            ),
        );
        let step = Step::sql(
            describe,
            format!("ALTER TABLE {t} VALIDATE CONSTRAINT {}", ident(name)),
        )
        .on_table(&self.schema, table);
        self.complete_at(Stage::Validate, step);
    }

    /// NOT NULL on new column `temp` (named `column` in the new version)
    /// without a table scan under lock: a CHECK NOT VALID, validated, then
    /// `SET NOT NULL` (which trusts the valid check) at cut-over. Existing
    /// rows are checked before start.
    pub fn not_null_via_check(&mut self, table: &str, column: &str, temp: &str, describe: String) {
        let t = self.q(table);
        let nn = crate::sql::bounded_name("_pgshift_nn_", column);
        self.require(table, column, preflight::Rule::NotNull(temp.to_string()));
        self.not_valid_constraint(
            table,
            &nn,
            &format!("CHECK ({} IS NOT NULL)", ident(temp)),
            describe,
        );
        self.cutover_post.push((
            table.to_string(),
            format!(
                "ALTER TABLE {t} ALTER COLUMN {} SET NOT NULL",
                ident(column)
            ),
        ));
        self.cutover_post.push((
            table.to_string(),
            format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {}", ident(&nn)),
        ));
    }

    /// Unique constraint `constraint` over `columns` of `table`: a unique
    /// index built concurrently at start (`index`), attached as the
    /// constraint at cut-over.
    pub fn unique_via_index(
        &mut self,
        table: &str,
        constraint: &str,
        index: &str,
        columns: &[String],
        describe: String,
    ) {
        self.key_via_index(table, constraint, "UNIQUE", index, columns, describe);
    }

    /// A UNIQUE or PRIMARY KEY constraint through a concurrent unique index
    /// (see [`Planner::unique_via_index`]). A primary key's columns must be
    /// NOT NULL by then ([`Planner::not_null_via_check`], planned first), or
    /// A start step that builds `index` on `table` with `sql` (a
    /// `CREATE INDEX CONCURRENTLY`: outside a transaction, an INVALID
    /// leftover of a failed build is dropped and the build retried).
    pub fn create_index(&mut self, describe: String, sql: String, index: &str, table: &str) {
        self.start.push(Step {
            describe,
            action: Action::CreateIndex {
                sql,
                schema: self.schema.clone(),
                index: index.to_string(),
            },
            lock_table: Some((self.schema.clone(), table.to_string())),
            weak_lock: false,
        });
    }

    /// attaching it would scan the table under its lock.
    pub fn key_via_index(
        &mut self,
        table: &str,
        constraint: &str,
        kind: &'static str,
        index: &str,
        columns: &[String],
        describe: String,
    ) {
        let t = self.q(table);
        let cols = columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        self.create_index(
            describe,
            format!(
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {t} ({cols})",
                ident(index)
            ),
            index,
            table,
        );
        self.cutover_post.push((
            table.to_string(),
            format!(
                "ALTER TABLE {t} ADD CONSTRAINT {} {kind} USING INDEX {}",
                ident(constraint),
                ident(index)
            ),
        ));
    }

    pub fn complete_at(&mut self, stage: Stage, mut step: Step) {
        if stage == Stage::Validate {
            step.weak_lock = true;
        }
        self.complete.push((stage, step));
    }

    /// A guard: true when `column` exists on physical table `table`.
    pub fn column_exists_guard(&self, table: &str, column: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass({}) AND attname = {} AND NOT attisdropped)",
            literal(&self.q(table)),
            literal(column)
        )
    }

    /// A guard: true when relation `name` exists in the schema.
    pub fn relation_exists_guard(&self, name: &str) -> String {
        format!("to_regclass({}) IS NOT NULL", literal(&self.q(name)))
    }
}

/// Name of the version schema of `migration` on `schema`.
pub fn version_schema_name(schema: &str, migration: &Migration) -> Result<String> {
    let name = format!("{schema}_{}", migration.version_suffix());
    crate::migration::check_name(&name).map_err(|e| {
        Error::invalid(format!(
            "{}: the version schema name {e}; set a shorter `version_schema`",
            migration.origin()
        ))
    })?;
    Ok(name)
}

/// Plan `migration` against the live schema. Reads the catalog (and probes
/// default volatility in rolled-back transactions); changes nothing.
pub async fn plan(
    client: &Client,
    migration: &Migration,
    schema: &str,
    previous_version_schema: Option<String>,
) -> Result<Plan> {
    if schema == CONTROL_SCHEMA {
        return Err(Error::config(format!(
            "schema {CONTROL_SCHEMA:?} is pgshift's control schema; migrate another schema"
        )));
    }
    if !crate::schema::schema_exists(client, schema).await? {
        return Err(Error::invalid(format!("schema {schema:?} does not exist")));
    }
    let base = crate::schema::introspect(client, schema).await?;
    let version_schema = version_schema_name(schema, migration)?;
    let mut p = Planner {
        client,
        migration,
        schema: schema.to_string(),
        version_schema: version_schema.clone(),
        base: &base,
        model: Model::from_schema(&base),
        start: vec![],
        complete: vec![],
        cutover_post: vec![],
        rollback: vec![],
        triggers: vec![],
        after_trigger: vec![],
        duplicated: vec![],
        preflight: vec![],
        op_index: 0,
        op_kind: "",
        has_raw_sql: false,
    };
    let ops_list = &migration.file.operations;
    for (i, op) in ops_list.iter().enumerate() {
        p.op_index = i;
        p.op_kind = op.kind();
        if let Operation::Sql(s) = op {
            if !s.on_complete && ops_list.len() > 1 {
                return Err(p.err(
                    "",
                    "a `sql` operation must be the only operation of its migration (unless `onComplete: true`), because pgshift cannot see what it changes",
                ));
            }
        }
        ops::plan(op, &mut p).await?;
    }
    for t in &mut p.triggers {
        let table = qualified(&t.schema, &t.table);
        for a in t.up.iter_mut().chain(t.down.iter_mut()) {
            a.expr = unwrap_scalar_select(client, &table, &a.expr).await;
        }
    }
    preflight::run(&p).await?;
    finish(p, previous_version_schema)
}

/// `SELECT <expr>` (pgroll's usual form of `up` and `down`) evaluated per row
/// is a sub-query: PL/pgSQL runs it through the full executor, which makes
/// the trigger about twice as slow as a bare `<expr>`. Return the bare
/// expression when Postgres confirms it means the same thing: both forms
/// parse against `table` with the same result type, and the bare form is
/// allowed in a WHERE clause (so it is no aggregate, window or
/// set-returning call that the sub-query would have contained). Otherwise,
/// or when the probe cannot run, return `expr` unchanged.
async fn unwrap_scalar_select(client: &Client, table: &str, expr: &str) -> String {
    let unchanged = expr.to_string();
    let Some(head) = expr.get(..7) else {
        return unchanged;
    };
    if !head.eq_ignore_ascii_case("select ") && !head.eq_ignore_ascii_case("select\n") {
        return unchanged;
    }
    let bare = expr[7..].trim();
    let probes = [
        format!("SELECT ({expr}) FROM {table} LIMIT 0"),
        format!("SELECT ({bare}) FROM {table} LIMIT 0"),
        format!("SELECT 1 FROM {table} WHERE ({bare}) IS NULL LIMIT 0"),
    ];
    let mut types = Vec::new();
    for sql in &probes {
        match client.prepare(sql).await {
            Ok(stmt) => types.push(stmt.columns().first().map(|c| c.type_().oid())),
            Err(_) => return unchanged,
        }
    }
    if types[0] == types[1] {
        bare.to_string()
    } else {
        unchanged
    }
}

/// Copy every index that covers duplicated columns onto the copies, once per
/// index with all of its duplicated columns replaced (built concurrently;
/// attached or renamed into place at cut-over).
fn copy_indexes(p: &mut Planner<'_>) {
    let mut tables: Vec<String> = Vec::new();
    for d in &p.duplicated {
        if !tables.contains(&d.table) {
            tables.push(d.table.clone());
        }
    }
    for tbl in tables {
        let Some(base) = p.base.tables.get(&tbl) else {
            continue;
        };
        let mine: Vec<Duplicated> = p
            .duplicated
            .iter()
            .filter(|d| d.table == tbl)
            .cloned()
            .collect();
        let pairs: Vec<(String, String)> = mine
            .iter()
            .map(|d| (d.column.clone(), d.copy.clone()))
            .collect();
        let skip: Vec<String> = mine.iter().filter_map(|d| d.dropping.clone()).collect();
        let rewrite = |s: &str| {
            pairs.iter().fold(s.to_string(), |acc, (c, tmp)| {
                crate::sql::rewrite_column_refs(&acc, c, tmp)
            })
        };
        let t = p.q(&tbl);
        // Checks and foreign keys over duplicated columns: added NOT VALID
        // on the copies (with the trigger), validated at complete, renamed
        // into place at cut-over.
        for con in base.constraints.iter().filter(|c| {
            matches!(c.kind, 'c' | 'f')
                && !skip.contains(&c.name)
                && c.columns
                    .iter()
                    .any(|col| pairs.iter().any(|(o, _)| o == col))
        }) {
            if mine
                .iter()
                .any(|d| d.type_changed && con.columns.contains(&d.column))
            {
                tracing::warn!(
                    "constraint {:?} on {tbl} covers a column whose type changes; it is not carried over and goes with the old column at complete (add it again with `check`/`references`)",
                    con.name
                );
                continue;
            }
            let def = match con.kind {
                'c' => rewrite(&con.definition),
                _ => match con.definition.split_once(" REFERENCES ") {
                    Some((head, tail)) => format!("{} REFERENCES {tail}", rewrite(head)),
                    None => continue,
                },
            };
            let def = def.trim_end_matches(" NOT VALID").to_string();
            let copy = crate::sql::bounded_name("_pgshift_c_", &con.name);
            p.not_valid_constraint(
                &tbl,
                &copy,
                &def,
                format!("validate {} (copy of {})", copy, con.name),
            );
            p.cutover_post.push((
                tbl.clone(),
                format!(
                    "ALTER TABLE {t} RENAME CONSTRAINT {} TO {}",
                    ident(&copy),
                    ident(&con.name)
                ),
            ));
        }
        for idx in base
            .indexes
            .iter()
            .filter(|i| !i.primary && !i.constraint.as_ref().is_some_and(|c| skip.contains(c)))
        {
            let keys: Vec<String> = idx.key_defs.iter().map(|k| rewrite(k)).collect();
            let pred = idx.predicate.as_ref().map(|w| rewrite(w));
            if keys == idx.key_defs && pred == idx.predicate {
                continue;
            }
            let copy = crate::sql::bounded_name("_pgshift_i_", &idx.name);
            let mut sql = format!(
                "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {t} USING {} ({})",
                if idx.unique { "UNIQUE " } else { "" },
                ident(&copy),
                ident(&idx.method),
                keys.join(", ")
            );
            if let Some(w) = pred {
                sql.push_str(&format!(" WHERE {w}"));
            }
            p.create_index(
                format!("copy index {} onto the new columns", idx.name),
                sql,
                &copy,
                &tbl,
            );
            let attach = match &idx.constraint {
                Some(con) => format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} UNIQUE USING INDEX {}",
                    ident(con),
                    ident(&copy)
                ),
                None => format!("ALTER INDEX {} RENAME TO {}", p.q(&copy), ident(&idx.name)),
            };
            p.cutover_post.push((tbl.clone(), attach));
        }
    }
}

/// Add the per-table machinery (triggers, cut-over, version schema) and
/// order the phases.
fn finish(mut p: Planner<'_>, previous_version_schema: Option<String>) -> Result<Plan> {
    let schema = p.schema.clone();
    let mut backfills = Vec::new();

    copy_indexes(&mut p);

    // Dual-write triggers, one per table, installed with the marker column in
    // one transaction so no row is written between them without the trigger.
    let triggers = std::mem::take(&mut p.triggers);
    for t in &triggers {
        let table = p
            .model
            .by_physical(&t.table)
            .ok_or_else(|| {
                Error::invalid(format!("internal: no table {:?} in the model", t.table))
            })?
            .clone();
        let base_table = p.base.tables.get(&t.table);
        let needs_backfill = !t.up.is_empty();
        if needs_backfill {
            // No primary key and no unique NOT NULL columns: walk by page.
            let (key, key_types) = match base_table.and_then(|b| b.backfill_key()) {
                Some(key) => {
                    let types = key
                        .iter()
                        .map(|k| {
                            base_table
                                .and_then(|b| b.column(k))
                                .map(|c| c.type_sql.clone())
                                .unwrap_or_else(|| "text".into())
                        })
                        .collect();
                    (key, types)
                }
                None => (
                    vec!["ctid".to_string()],
                    vec![crate::backfill::CTID_KEY_TYPE.to_string()],
                ),
            };
            backfills.push(BackfillSpec {
                schema: schema.clone(),
                table: t.table.clone(),
                key,
                key_types,
                sets: t.up.clone(),
            });
        }
        let mut body =
            triggers::install_sql(t, &table, base_table, &p.version_schema, needs_backfill);
        // Its constraints go before the trigger stops filling their columns.
        let mut removal = String::new();
        for (_, name, sql) in p.after_trigger.iter().filter(|(tbl, _, _)| *tbl == t.table) {
            body.push_str(";\n");
            body.push_str(sql);
            removal.push_str(&format!(
                "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {};\n",
                p.q(&t.table),
                ident(name)
            ));
        }
        removal.push_str(&triggers::remove_sql(t, true));
        p.start.push(
            Step::sql(format!("install dual-write trigger on {}", t.table), body)
                .on_table(&schema, &t.table),
        );
        p.rollback.insert(
            0,
            Step::sql(
                format!("remove dual-write trigger from {}", t.table),
                removal,
            )
            .guarded(p.relation_exists_guard(&t.table))
            .on_table(&schema, &t.table),
        );
    }

    // Constraints on new columns of tables without a trigger (nothing fills
    // those columns, so nothing can break in between).
    let mut untriggered: Vec<String> = Vec::new();
    for (tbl, _, _) in &p.after_trigger {
        if !triggers.iter().any(|t| t.table == *tbl) && !untriggered.contains(tbl) {
            untriggered.push(tbl.clone());
        }
    }
    for tbl in untriggered {
        let sql = p
            .after_trigger
            .iter()
            .filter(|(t, _, _)| *t == tbl)
            .map(|(_, _, s)| s.clone())
            .collect::<Vec<_>>()
            .join(";\n");
        p.start
            .push(Step::sql(format!("add constraints on {tbl}"), sql).on_table(&schema, &tbl));
    }

    // Cut-over: per physical table, one transaction.
    let mut cut_tables: Vec<String> = triggers.iter().map(|t| t.table.clone()).collect();
    for t in p.model.tables.iter() {
        if !t.created && !cut_tables.contains(&t.physical) && t.needs_cutover(p.base) {
            cut_tables.push(t.physical.clone());
        }
    }
    for (tbl, _) in &p.cutover_post {
        if !cut_tables.contains(tbl) {
            cut_tables.push(tbl.clone());
        }
    }
    for tbl in cut_tables {
        let mut stmts = Vec::new();
        if let Some(t) = triggers.iter().find(|t| t.table == tbl) {
            stmts.push(triggers::remove_sql(t, !t.up.is_empty()));
        }
        if let Some(vt) = p.model.by_physical(&tbl) {
            if !vt.created {
                stmts.extend(vt.cutover_columns(&schema, p.base));
            }
        }
        stmts.extend(
            p.cutover_post
                .iter()
                .filter(|(t, _)| *t == tbl)
                .map(|(_, s)| s.clone()),
        );
        if !stmts.is_empty() {
            p.complete_at(
                Stage::Cutover,
                Step::sql(format!("cut over table {tbl}"), stmts.join(";\n"))
                    .on_table(&schema, &tbl),
            );
        }
    }

    // The version schema: created last at start, dropped first at rollback.
    let spec = views::ViewSpec::from_model(&p);
    p.start.push(Step {
        describe: format!("create version schema {}", p.version_schema),
        action: Action::Views(spec.clone()),
        lock_table: None,
        weak_lock: false,
    });
    p.rollback.insert(
        0,
        Step::sql(
            format!("drop version schema {}", p.version_schema),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&p.version_schema)),
        ),
    );
    if let Some(prev) = &previous_version_schema {
        p.complete_at(
            Stage::DropPrevious,
            Step::sql(
                format!("drop previous version schema {prev}"),
                format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(prev)),
            ),
        );
    }
    if p.has_raw_sql {
        // Tables created by raw SQL at complete need their views.
        p.complete_at(
            Stage::Last,
            Step {
                describe: format!("refresh version schema {}", p.version_schema),
                action: Action::Views(spec),
                lock_table: None,
                weak_lock: false,
            },
        );
    }

    let mut complete = std::mem::take(&mut p.complete);
    complete.sort_by_key(|(stage, _)| *stage);
    Ok(Plan {
        schema,
        version_schema: p.version_schema,
        previous_version_schema,
        start: p.start,
        backfills,
        complete: complete.into_iter().map(|(_, s)| s).collect(),
        rollback: p.rollback,
    })
}

impl Plan {
    /// The plan as SQL text, phase by phase (what `pgshift plan` prints).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut phase = |title: &str, steps: &[Step]| {
            out.push_str(&format!("-- ===== {title} =====\n"));
            if steps.is_empty() {
                out.push_str("-- (nothing)\n");
            }
            for (i, s) in steps.iter().enumerate() {
                out.push_str(&format!(
                    "-- step {}: {}\n{};\n",
                    i + 1,
                    s.describe,
                    s.render()
                ));
            }
            out.push('\n');
        };
        phase("start", &self.start);
        let backfill: Vec<Step> = self
            .backfills
            .iter()
            .map(|b| {
                Step::sql(
                    format!(
                        "backfill {} in key ranges of ({})",
                        b.table,
                        b.key.join(", ")
                    ),
                    crate::backfill::render_batch(b),
                )
            })
            .collect();
        phase("backfill (repeated per key range)", &backfill);
        phase("complete", &self.complete);
        phase("rollback", &self.rollback);
        out
    }
}
