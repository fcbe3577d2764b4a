//! `create_index`: built with `CREATE INDEX CONCURRENTLY` at start (an
//! INVALID leftover of a failed build is dropped and the build retried);
//! dropped concurrently on rollback.

use super::check_ident;
use crate::error::Result;
use crate::migration::format::{CreateIndex, NullsOrder, SortOrder};
use crate::plan::{Planner, Step};
use crate::sql::{ident, rewrite_column_refs};

/// Quote a possibly schema-qualified name such as an operator class.
fn qualified_name(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

pub fn plan(op: &CreateIndex, p: &mut Planner<'_>) -> Result<()> {
    check_ident(p, "name", &op.name)?;
    let table = p.table("table", &op.table)?.clone();
    if p.base.index_table(&op.name).is_some() || p.model.name_taken(&op.name, p.base) {
        return Err(p.err(
            "name",
            format!(
                "a relation named {:?} already exists in schema {:?}",
                op.name, p.schema
            ),
        ));
    }
    let fields = op.columns.fields();
    if fields.is_empty() {
        return Err(p.err("columns", "an index needs at least one column"));
    }
    let mut keys = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let col = table.column(&f.column).ok_or_else(|| {
            p.err(
                &format!("columns[{i}].column"),
                format!(
                    "column {:?} does not exist on table {:?}",
                    f.column, op.table
                ),
            )
        })?;
        let mut k = ident(&col.physical);
        if let Some(c) = &f.collate {
            k.push_str(&format!(" COLLATE {}", qualified_name(c)));
        }
        if let Some(oc) = f.opclass.as_ref().filter(|o| !o.name.is_empty()) {
            k.push_str(&format!(" {}", qualified_name(&oc.name)));
            if !oc.params.is_empty() {
                k.push_str(&format!(" ({})", oc.params.join(", ")));
            }
        }
        match f.sort {
            Some(SortOrder::Asc) => k.push_str(" ASC"),
            Some(SortOrder::Desc) => k.push_str(" DESC"),
            None => {}
        }
        match f.nulls {
            Some(NullsOrder::First) => k.push_str(" NULLS FIRST"),
            Some(NullsOrder::Last) => k.push_str(" NULLS LAST"),
            None => {}
        }
        keys.push(k);
    }
    let t = p.q(&table.physical);
    let method = op.method.unwrap_or_default();
    let mut sql = format!(
        "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {t} USING {} ({})",
        if op.unique { "UNIQUE " } else { "" },
        ident(&op.name),
        method.sql(),
        keys.join(", ")
    );
    if let Some(sp) = op
        .storage_parameters
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        sql.push_str(&format!(" WITH ({sp})"));
    }
    if let Some(pred) = op.predicate.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut pred = pred.to_string();
        for c in table.columns.iter().filter(|c| c.name != c.physical) {
            pred = rewrite_column_refs(&pred, &c.name, &c.physical);
        }
        sql.push_str(&format!(" WHERE {pred}"));
    }
    let physical = table.physical.clone();
    p.create_index(
        format!("create index {}", op.name),
        sql,
        &op.name,
        &physical,
    );
    p.rollback.push(Step::non_transactional(
        format!("drop index {}", op.name),
        format!("DROP INDEX CONCURRENTLY IF EXISTS {}", p.q(&op.name)),
    ));
    Ok(())
}
