//! `rename_constraint`: renamed at complete (the old version may match on the
//! old name in its error handling until then), before table renames.

use crate::error::Result;
use crate::migration::format::RenameConstraint;
use crate::ops::check_ident;
use crate::plan::{Planner, Stage, Step};
use crate::sql::ident;

pub fn plan(op: &RenameConstraint, p: &mut Planner<'_>) -> Result<()> {
    let table = p.table("table", &op.table)?.clone();
    check_ident(p, "to", &op.to)?;
    let names: Vec<String> = p
        .base
        .tables
        .get(&table.physical)
        .map(|t| t.constraints.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    if !names.contains(&op.from) {
        return Err(p.err(
            "from",
            format!(
                "constraint {:?} does not exist on table {:?}",
                op.from, op.table
            ),
        ));
    }
    if names.contains(&op.to) {
        return Err(p.err(
            "to",
            format!("table {:?} already has a constraint {:?}", op.table, op.to),
        ));
    }
    p.complete_at(
        Stage::Cutover,
        Step::sql(
            format!("rename constraint {} of {} to {}", op.from, op.table, op.to),
            format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                p.q(&table.physical),
                ident(&op.from),
                ident(&op.to)
            ),
        )
        .on_table(&p.schema, &table.physical),
    );
    Ok(())
}
