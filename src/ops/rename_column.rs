//! `rename_column`: only the new version's view uses the new name during the
//! migration; the physical column is renamed at complete.

use super::check_ident;
use crate::error::Result;
use crate::migration::format::RenameColumn;
use crate::plan::{Planner, PREFIX};

pub fn plan(op: &RenameColumn, p: &mut Planner<'_>) -> Result<()> {
    check_ident(p, "to", &op.to)?;
    let table = p.table("table", &op.table)?;
    let col = table.column(&op.from).ok_or_else(|| {
        p.err(
            "from",
            format!(
                "column {:?} does not exist on table {:?}",
                op.from, op.table
            ),
        )
    })?;
    if col.physical.starts_with(PREFIX) {
        return Err(p.err(
            "from",
            "this column is added or changed by an earlier operation of this migration; give it its final name there",
        ));
    }
    if table.column(&op.to).is_some() {
        return Err(p.err(
            "to",
            format!("column {:?} already exists on table {:?}", op.to, op.table),
        ));
    }
    let from = op.from.clone();
    let to = op.to.clone();
    let t = p.table_mut("table", &op.table)?;
    if let Some(c) = t.column_mut(&from) {
        c.name = to;
    }
    Ok(())
}
