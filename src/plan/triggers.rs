//! The dual-write triggers: one function per table, which runs the `up`
//! expressions when the old side wrote and the `down` expressions when the
//! new side wrote, called by a `BEFORE INSERT` and a `BEFORE UPDATE` row
//! trigger.
//!
//! An UPDATE that changes none of the columns the expressions read or write,
//! of a row the function or the copier has already filled, leaves that row
//! as consistent as it found it; when every expression gives the same value
//! for the same row each time (no sub-query, no clock, only built-in
//! immutable functions) the UPDATE trigger's `WHEN` clause lets such writes
//! through without calling the function.
//!
//! Which side wrote: the session's `pgshift.version` setting (set by the
//! proxy) names the new version; sessions without it count as new when the
//! first schema of their search_path is the new version schema. The copier's
//! session sets `pgshift.copier = on`, and the trigger's `WHEN` clause skips
//! it, so backfill does not pay for the trigger.

use super::model::VTable;
use super::{CONTROL_SCHEMA, COPIER_SETTING, NEEDS_BACKFILL, VERSION_SETTING};
use crate::schema::Table;
use crate::sql::{bounded_name, ident, literal, qualified, referenced_names, words};
use serde::{Deserialize, Serialize};

/// Trigger names on every table pgshift dual-writes: the INSERT trigger
/// (which also took UPDATEs before they had a trigger of their own) and the
/// UPDATE trigger.
pub const TRIGGER_NAME: &str = "_pgshift_dual_write";
pub const UPDATE_TRIGGER_NAME: &str = "_pgshift_dual_write_update";

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

/// A column one side of the migration sees.
struct Col<'a> {
    /// The name that side's expressions use.
    name: &'a str,
    physical: &'a str,
    type_sql: &'a str,
}

/// Variable declarations for the names an expression list refers to.
fn declare(spec: &TriggerSpec, assigns: &[Assign], columns: &[Col]) -> String {
    let mut wanted: Vec<String> = Vec::new();
    for a in assigns {
        wanted.extend(referenced_names(&a.expr));
    }
    let table = qualified(&spec.schema, &spec.table);
    let mut out = String::new();
    for c in columns {
        if wanted.iter().any(|w| w == c.name) {
            out.push_str(&format!(
                "      {} {table}.{}%TYPE := _pgshift_new.{};\n",
                ident(c.name),
                ident(c.physical),
                ident(c.physical)
            ));
        }
    }
    out
}

/// Functions, and keywords written like calls, whose result depends on
/// their arguments alone.
const IMMUTABLE_CALLS: &[&str] = &[
    "abs",
    "all",
    "and",
    "any",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_prepend",
    "array_remove",
    "between",
    "bit_length",
    "bool",
    "btrim",
    "cardinality",
    "case",
    "cast",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "distinct",
    "div",
    "else",
    "float4",
    "float8",
    "floor",
    "from",
    "greatest",
    "ilike",
    "in",
    "initcap",
    "int2",
    "int4",
    "int8",
    "is",
    "least",
    "left",
    "length",
    "like",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "mod",
    "not",
    "nullif",
    "numeric",
    "octet_length",
    "or",
    "position",
    "power",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row",
    "rpad",
    "rtrim",
    "sign",
    "some",
    "split_part",
    "sqrt",
    "strpos",
    "substr",
    "substring",
    "text",
    "then",
    "translate",
    "trim",
    "trunc",
    "upper",
    "varying",
    "when",
];

/// Words that read the clock or the session.
const SESSION_VALUES: &[&str] = &[
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "localtime",
    "localtimestamp",
    "session_user",
    "system_user",
    "user",
];

/// Whether an `up`/`down` expression gives the same value for the same row
/// each time it runs. Conservative: anything it cannot read for certain
/// (escapes, comments, dollar quotes, sub-queries, functions outside
/// [`IMMUTABLE_CALLS`]) counts as no.
fn same_row_same_value(expr: &str) -> bool {
    if expr.contains(['\\', '$']) || expr.contains("--") || expr.contains("/*") {
        return false;
    }
    let words = words(expr);
    let leading_select = words
        .first()
        .is_some_and(|w| !w.quoted && w.name == "select");
    for (n, w) in words.iter().enumerate() {
        if w.quoted {
            if w.before_paren {
                return false;
            }
            continue;
        }
        match w.name.as_str() {
            "select" if n == 0 => continue,
            "select" | "values" | "table" | "with" | "lateral" => return false,
            "from" if leading_select => return false,
            name if SESSION_VALUES.contains(&name) => return false,
            _ => {}
        }
        let a_type = w.after_cast || (n > 0 && !words[n - 1].quoted && words[n - 1].name == "as");
        if w.before_paren && !a_type && (w.after_dot || !IMMUTABLE_CALLS.contains(&w.name.as_str()))
        {
            return false;
        }
    }
    true
}

/// Built-in types with an equality operator (`IS DISTINCT FROM` works), as
/// `format_type` or a migration file writes them, without modifiers.
const EQUALITY_TYPES: &[&str] = &[
    "bigint",
    "bool",
    "boolean",
    "bpchar",
    "bytea",
    "char",
    "character",
    "character varying",
    "cidr",
    "citext",
    "date",
    "decimal",
    "double precision",
    "float",
    "float4",
    "float8",
    "inet",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "interval",
    "jsonb",
    "macaddr",
    "money",
    "name",
    "numeric",
    "oid",
    "real",
    "smallint",
    "text",
    "time",
    "time with time zone",
    "time without time zone",
    "timestamp",
    "timestamp with time zone",
    "timestamp without time zone",
    "timestamptz",
    "timetz",
    "uuid",
    "varchar",
];

fn has_equality(type_sql: &str) -> bool {
    let t = type_sql.trim().to_lowercase();
    let t = t.trim_end_matches("[]");
    let base = match t.split_once('(') {
        // `timestamp(3) with time zone`, `numeric(10,2)`
        Some((head, tail)) => format!(
            "{}{}",
            head.trim_end(),
            tail.split_once(')').map_or("", |(_, rest)| rest)
        ),
        None => t.to_string(),
    };
    EQUALITY_TYPES.contains(&base.trim())
}

/// The UPDATE trigger's extra `WHEN` condition: the row still waits for the
/// copier, or a column some expression reads or writes changed. `None` when
/// every UPDATE must call the function (an expression that may give another
/// value for the same row, a column without equality, an unknown column).
fn update_filter(
    spec: &TriggerSpec,
    old_cols: &[Col],
    new_cols: &[Col],
    needs_backfill: bool,
) -> Option<String> {
    let mut watch: Vec<&Col> = Vec::new();
    for (assigns, reads, writes) in [
        (&spec.up, old_cols, new_cols),
        (&spec.down, new_cols, old_cols),
    ] {
        for a in assigns {
            if !same_row_same_value(&a.expr) {
                return None;
            }
            watch.push(
                writes
                    .iter()
                    .chain(reads)
                    .find(|c| c.physical == a.target)?,
            );
            let names = referenced_names(&a.expr);
            watch.extend(reads.iter().filter(|c| names.iter().any(|n| n == c.name)));
        }
    }
    if watch.is_empty() || watch.iter().any(|c| !has_equality(c.type_sql)) {
        return None;
    }
    let mut physical: Vec<&str> = watch.iter().map(|c| c.physical).collect();
    physical.sort_unstable();
    physical.dedup();
    let mut terms: Vec<String> = Vec::new();
    if needs_backfill {
        terms.push(format!("NEW.{}", ident(NEEDS_BACKFILL)));
    }
    terms.extend(
        physical
            .iter()
            .map(|p| format!("OLD.{c} IS DISTINCT FROM NEW.{c}", c = ident(p))),
    );
    Some(terms.join(" OR "))
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
/// its two triggers (INSERT, and UPDATE with [`update_filter`] when it
/// applies). Run in one transaction; safe to run again.
pub fn install_sql(
    spec: &TriggerSpec,
    table: &VTable,
    base: Option<&Table>,
    version_schema: &str,
    needs_backfill: bool,
) -> String {
    let old_cols: Vec<Col> = base
        .map(|b| {
            b.columns
                .iter()
                .map(|c| Col {
                    name: &c.name,
                    physical: &c.name,
                    type_sql: &c.type_sql,
                })
                .collect()
        })
        .unwrap_or_default();
    let new_cols: Vec<Col> = table
        .columns
        .iter()
        .map(|c| Col {
            name: &c.name,
            physical: &c.physical,
            type_sql: &c.type_sql,
        })
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
    let not_copier = format!(
        "current_setting({}, true) IS DISTINCT FROM 'on'",
        literal(COPIER_SETTING)
    );
    let update_when =
        match base.and_then(|_| update_filter(spec, &old_cols, &new_cols, needs_backfill)) {
            Some(filter) => format!("{not_copier}\n    AND ({filter})"),
            None => not_copier.clone(),
        };
    for (name, event, when) in [
        (TRIGGER_NAME, "INSERT", &not_copier),
        (UPDATE_TRIGGER_NAME, "UPDATE", &update_when),
    ] {
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER {} BEFORE {event} ON {t} FOR EACH ROW\n  WHEN ({when})\n  EXECUTE FUNCTION {}();\n",
            ident(name),
            spec.function()
        ));
    }
    sql.trim_end().trim_end_matches(';').to_string()
}

/// SQL that removes the trigger, its function and (optionally) the marker.
pub fn remove_sql(spec: &TriggerSpec, with_marker: bool) -> String {
    let t = qualified(&spec.schema, &spec.table);
    let mut sql = format!(
        "DROP TRIGGER IF EXISTS {} ON {t};\nDROP TRIGGER IF EXISTS {} ON {t};\nDROP FUNCTION IF EXISTS {}()",
        ident(TRIGGER_NAME),
        ident(UPDATE_TRIGGER_NAME),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_expressions_of_the_row_alone_may_skip_the_update_trigger() {
        for same in [
            "coalesce(customer_id, 1)",
            "SELECT CASE WHEN name IS NULL THEN 'placeholder' ELSE name END",
            "upper(trim(\"Name\")) || 'now()'",
            "CAST(price AS numeric(10, 2)) * 2",
            "amount::character varying(12)",
            "a IS DISTINCT FROM b AND c IN (1, 2)",
        ] {
            assert!(same_row_same_value(same), "{same}");
        }
        for other in [
            "now()",
            "current_timestamp",
            "random() * id",
            "(SELECT name FROM customers WHERE id = customer_id)",
            "SELECT name FROM customers",
            "public.lower(name)",
            "\"lower\"(name)",
            "E'it\\'s' || nextval('s')",
            "name -- it's\n || random()::text",
            "$$x$$ || name",
            "concat(a, b)",
        ] {
            assert!(!same_row_same_value(other), "{other}");
        }
    }

    #[test]
    fn columns_compare_only_where_the_type_has_equality() {
        for t in [
            "integer",
            "character varying(255)",
            "timestamp(3) with time zone",
            "numeric(10,2)",
            "TEXT",
            "bigint[]",
        ] {
            assert!(has_equality(t), "{t}");
        }
        for t in ["json", "point", "xml", "mood", "public.money2"] {
            assert!(!has_equality(t), "{t}");
        }
    }
}
