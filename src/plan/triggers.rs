//! The dual-write trigger: one `BEFORE INSERT OR UPDATE` row trigger per
//! table, whose function runs the `up` expressions when the old side wrote
//! and the `down` expressions when the new side wrote.
//!
//! Which side wrote: the session's `pgshift.version` setting (set by the
//! proxy) names the new version; sessions without it count as new when the
//! first schema of their search_path is the new version schema. The copier's
//! session sets `pgshift.copier = on`, and the trigger's `WHEN` clause skips
//! it, so backfill does not pay for the trigger.

use super::model::VTable;
use super::{CONTROL_SCHEMA, COPIER_SETTING, NEEDS_BACKFILL, VERSION_SETTING};
use crate::schema::Table;
use crate::sql::{bounded_name, ident, literal, qualified, referenced_names};
use serde::{Deserialize, Serialize};

/// Trigger name on every table pgshift dual-writes.
pub const TRIGGER_NAME: &str = "_pgshift_dual_write";

/// `target := (expr)` on the physical column `target`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assign {
    pub target: String,
    pub expr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriggerSpec {
    pub schema: String,
    /// Physical table name.
    pub table: String,
    /// Run when the old side wrote; expressions see old-version column names.
    pub up: Vec<Assign>,
    /// Run when the new side wrote; expressions see new-version column names.
    pub down: Vec<Assign>,
}

impl TriggerSpec {
    pub fn new(schema: &str, table: &str) -> TriggerSpec {
        TriggerSpec {
            schema: schema.to_string(),
            table: table.to_string(),
            up: vec![],
            down: vec![],
        }
    }

    /// The trigger function, in the control schema.
    pub fn function(&self) -> String {
        qualified(
            CONTROL_SCHEMA,
            &bounded_name("dual_write_", &format!("{}.{}", self.schema, self.table)),
        )
    }
}

/// Trim an expression as written in a file (`up: SELECT ...;`).
pub fn clean_expr(expr: &str) -> String {
    expr.trim().trim_end_matches(';').trim().to_string()
}

/// Variable declarations for the names an expression list refers to.
/// `columns` maps visible name to physical column.
fn declare(spec: &TriggerSpec, assigns: &[Assign], columns: &[(String, String)]) -> String {
    let mut wanted: Vec<String> = Vec::new();
    for a in assigns {
        wanted.extend(referenced_names(&a.expr));
    }
    let table = qualified(&spec.schema, &spec.table);
    let mut out = String::new();
    for (name, physical) in columns {
        if wanted.contains(name) {
            out.push_str(&format!(
                "      {} {table}.{}%TYPE := _pgshift_new.{};\n",
                ident(name),
                ident(physical),
                ident(physical)
            ));
        }
    }
    out
}

fn assigns_sql(assigns: &[Assign], only_if_unchanged: bool) -> String {
    assigns
        .iter()
        .map(|a| {
            let t = ident(&a.target);
            if only_if_unchanged {
                format!(
                    "      IF _pgshift_new.{t} IS NOT DISTINCT FROM _pgshift_old.{t} THEN _pgshift_new.{t} := ({}); END IF;\n",
                    a.expr
                )
            } else {
                format!("      _pgshift_new.{t} := ({});\n", a.expr)
            }
        })
        .collect()
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = if n == 0 {
            "$pgshift$".to_string()
        } else {
            format!("$pgshift{n}$")
        };
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

/// SQL that installs the marker column (when backfilling), the function and
/// the trigger. Run in one transaction; safe to run again.
pub fn install_sql(
    spec: &TriggerSpec,
    table: &VTable,
    base: Option<&Table>,
    version_schema: &str,
    needs_backfill: bool,
) -> String {
    let old_cols: Vec<(String, String)> = base
        .map(|b| {
            b.columns
                .iter()
                .map(|c| (c.name.clone(), c.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let new_cols: Vec<(String, String)> = table
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.physical.clone()))
        .collect();
    let version = version_schema
        .strip_prefix(&format!("{}_", spec.schema))
        .unwrap_or(version_schema);
    let mut body = String::new();
    body.push_str("DECLARE\n  _pgshift_new ALIAS FOR new;\n  _pgshift_old ALIAS FOR old;\n");
    body.push_str(&format!(
        "  _pgshift_v text := current_setting({}, true);\nBEGIN\n",
        literal(VERSION_SETTING)
    ));
    body.push_str(&format!(
        "  IF _pgshift_v = {} OR (coalesce(_pgshift_v, '') = '' AND (current_schemas(false))[1] = {}) THEN\n",
        literal(version),
        literal(version_schema)
    ));
    // New side wrote.
    if needs_backfill && !spec.up.is_empty() {
        body.push_str(&format!(
            "    IF TG_OP = 'UPDATE' AND _pgshift_old.{} THEN\n    -- row not yet backfilled: fill what the writer left unchanged\n    DECLARE\n{}    BEGIN\n{}    END;\n    END IF;\n",
            ident(NEEDS_BACKFILL),
            declare(spec, &spec.up, &old_cols),
            assigns_sql(&spec.up, true)
        ));
    }
    if !spec.down.is_empty() {
        body.push_str(&format!(
            "    DECLARE\n{}    BEGIN\n{}    END;\n",
            declare(spec, &spec.down, &new_cols),
            assigns_sql(&spec.down, false)
        ));
    }
    body.push_str("  ELSE\n");
    if !spec.up.is_empty() {
        body.push_str(&format!(
            "    DECLARE\n{}    BEGIN\n{}    END;\n",
            declare(spec, &spec.up, &old_cols),
            assigns_sql(&spec.up, false)
        ));
    } else {
        body.push_str("    NULL;\n");
    }
    body.push_str("  END IF;\n");
    if needs_backfill {
        body.push_str(&format!(
            "  _pgshift_new.{} := false;\n",
            ident(NEEDS_BACKFILL)
        ));
    }
    body.push_str("  RETURN _pgshift_new;\nEND\n");
    let body = format!("#variable_conflict use_column\n{body}");
    let tag = dollar_tag(&body);
    let t = qualified(&spec.schema, &spec.table);
    let mut sql = String::new();
    if needs_backfill {
        sql.push_str(&format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} boolean DEFAULT true;\n",
            ident(NEEDS_BACKFILL)
        ));
    }
    sql.push_str(&format!(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {tag}\n{body}{tag};\n",
        spec.function()
    ));
    sql.push_str(&format!(
        "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW\n  WHEN (current_setting({}, true) IS DISTINCT FROM 'on')\n  EXECUTE FUNCTION {}()",
        ident(TRIGGER_NAME),
        literal(COPIER_SETTING),
        spec.function()
    ));
    sql
}

/// SQL that removes the trigger, its function and (optionally) the marker.
pub fn remove_sql(spec: &TriggerSpec, with_marker: bool) -> String {
    let t = qualified(&spec.schema, &spec.table);
    let mut sql = format!(
        "DROP TRIGGER IF EXISTS {} ON {t};\nDROP FUNCTION IF EXISTS {}()",
        ident(TRIGGER_NAME),
        spec.function()
    );
    if with_marker {
        sql.push_str(&format!(
            ";\nALTER TABLE {t} DROP COLUMN IF EXISTS {}",
            ident(NEEDS_BACKFILL)
        ));
    }
    sql
}
