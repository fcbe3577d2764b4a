//! `drop_column`: hidden from the new version at start; `down` fills it for
//! new-side writes so the old version keeps working; dropped at complete.

use crate::error::Result;
use crate::migration::format::DropColumn;
use crate::plan::triggers::clean_expr;
use crate::plan::{Assign, Planner, PREFIX};

pub fn plan(op: &DropColumn, p: &mut Planner<'_>) -> Result<()> {
    let table = p.table("table", &op.table)?.clone();
    let col = table
        .column(&op.column)
        .ok_or_else(|| {
            p.err(
                "column",
                format!(
                    "column {:?} does not exist on table {:?}",
                    op.column, op.table
                ),
            )
        })?
        .clone();
    if col.physical.starts_with(PREFIX) {
        return Err(p.err(
            "column",
            "this column is added or changed by an earlier operation of this migration",
        ));
    }
    let base = p.base.tables.get(&table.physical);
    if let Some(b) = base {
        if b.primary_key.contains(&col.physical) {
            return Err(p.err(
                "column",
                format!(
                    "column {:?} is part of the primary key and cannot be dropped",
                    op.column
                ),
            ));
        }
    }
    let down = op.down.as_deref().map(clean_expr).filter(|d| !d.is_empty());
    match down {
        Some(d) => p.trigger(&table.physical).down.push(Assign {
            target: col.physical.clone(),
            expr: d,
        }),
        None => {
            let has_default = base
                .and_then(|b| b.column(&col.physical))
                .is_some_and(|c| c.default.is_some());
            if !col.nullable && !has_default && !table.created {
                return Err(p.err(
                    "down",
                    format!("column {:?} is NOT NULL without a default, so new-version inserts would fail until complete: give `down` to fill it", op.column),
                ));
            }
        }
    }
    if let Some(t) = p.model.table_mut(&op.table) {
        t.columns.retain(|c| c.name != op.column);
    }
    Ok(())
}
