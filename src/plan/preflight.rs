//! Before anything runs, check that the existing rows will satisfy every
//! constraint the migration adds, computed on the values `up` gives them.
//! A violation is reported with the number of rows and a few of their keys,
//! and nothing is applied: fix the data or the `up` expression first.

use super::Planner;
use crate::error::{Error, Result};
use crate::sql::{ident, qualified};

/// What must hold on the new values.
#[derive(Debug, Clone)]
pub enum Rule {
    /// The column (a new physical name) is never NULL.
    NotNull(String),
    /// A check expression over new physical names.
    Check(String),
    /// Non-NULL tuples of the columns exist in the target table's columns.
    ForeignKey {
        columns: Vec<String>,
        target: String,
        target_columns: Vec<String>,
    },
    /// No two rows share non-NULL values of the columns.
    Unique(Vec<String>),
}

/// A constraint to check, on a physical table.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub table: String,
    pub name: String,
    pub rule: Rule,
}

/// Run every check; the first violation is the error.
pub async fn run(p: &Planner<'_>) -> Result<()> {
    for pf in &p.preflight {
        let Some(base) = p.base.tables.get(&pf.table) else {
            continue; // created by this migration: no rows yet
        };
        // The value each new column gets for existing rows.
        let mut exprs: Vec<(String, String)> = Vec::new();
        if let Some(t) = p.triggers.iter().find(|t| t.table == pf.table) {
            for a in &t.up {
                exprs.push((a.target.clone(), format!("({})", a.expr)));
            }
        }
        for d in p.duplicated.iter().filter(|d| d.table == pf.table) {
            if !exprs.iter().any(|(c, _)| *c == d.copy) {
                exprs.push((d.copy.clone(), ident(&d.column)));
            }
        }
        let needed: Vec<String> = match &pf.rule {
            Rule::NotNull(c) => vec![c.clone()],
            Rule::Unique(cs) | Rule::ForeignKey { columns: cs, .. } => cs.clone(),
            // New columns the check names; the table's own columns are there.
            Rule::Check(e) => crate::sql::referenced_names(e)
                .into_iter()
                .filter(|n| n.starts_with(super::PREFIX))
                .collect(),
        };
        if exprs.is_empty() || needed.iter().any(|c| !exprs.iter().any(|(e, _)| e == c)) {
            continue; // a column without `up` (filled by a default): nothing to compute
        }
        let key = base.backfill_key().unwrap_or_else(|| vec!["ctid".into()]);
        let key_text = key
            .iter()
            .map(|k| {
                if k == "ctid" {
                    "t.ctid::text".to_string()
                } else {
                    format!("t.{}::text", ident(k))
                }
            })
            .collect::<Vec<_>>()
            .join(" || ', ' || ");
        let select = exprs
            .iter()
            .map(|(c, e)| format!("{e} AS {}", ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let v = format!(
            "(SELECT t.*, ({key_text}) AS _pgshift_key, {select} FROM {} t) v",
            qualified(&p.schema, &pf.table)
        );
        let list = |cs: &[String]| {
            cs.iter()
                .map(|c| format!("v.{}", ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let not_null = |cs: &[String]| {
            cs.iter()
                .map(|c| format!("v.{} IS NOT NULL", ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let (sql, what) = match &pf.rule {
            Rule::NotNull(c) => (
                format!("SELECT count(*), (array_agg(_pgshift_key))[1:5] FROM {v} WHERE v.{} IS NULL", ident(c)),
                "rows would be NULL".to_string(),
            ),
            Rule::Check(expr) => (
                format!("SELECT count(*), (array_agg(_pgshift_key))[1:5] FROM {v} WHERE NOT ({expr})"),
                "rows would fail the check".to_string(),
            ),
            Rule::ForeignKey { columns, target, target_columns } => (
                format!(
                    "SELECT count(*), (array_agg(_pgshift_key))[1:5] FROM {v} WHERE {} AND NOT EXISTS (SELECT 1 FROM {target} r WHERE ({}) = ({}))",
                    not_null(columns),
                    target_columns.iter().map(|c| format!("r.{}", ident(c))).collect::<Vec<_>>().join(", "),
                    list(columns)
                ),
                format!("rows would have no match in {target} (orphans)"),
            ),
            Rule::Unique(columns) => (
                format!(
                    "SELECT coalesce(sum(n), 0)::bigint, (array_agg(keys))[1:5] FROM (SELECT count(*) AS n, string_agg(_pgshift_key, ' and ') AS keys FROM {v} WHERE {} GROUP BY {} HAVING count(*) > 1) d",
                    not_null(columns),
                    list(columns)
                ),
                "rows would share a value (duplicates)".to_string(),
            ),
        };
        let row = crate::pg::query_one(p.client, &sql, &[])
            .await
            .map_err(|e| {
                Error::db(
                    format!("checking existing rows against constraint {:?}", pf.name),
                    e,
                )
            })?;
        let n: i64 = row.get(0);
        if n > 0 {
            let samples: Option<Vec<String>> = row.get(1);
            return Err(Error::invalid(format!(
                "{}: constraint {:?} on table {:?}: {n} existing {what}; first keys ({}): {}. Nothing was applied: repair these rows with `up`, or fix the data first",
                p.migration.origin(),
                pf.name,
                pf.table,
                base.backfill_key().map(|k| k.join(", ")).unwrap_or_else(|| "ctid".into()),
                samples.unwrap_or_default().join("; ")
            )));
        }
    }
    Ok(())
}
