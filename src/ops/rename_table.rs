//! `rename_table`: the new version's view has the new name; the physical
//! table is renamed at complete.

use super::check_ident;
use crate::error::Result;
use crate::migration::format::RenameTable;
use crate::plan::{Planner, Stage, Step};
use crate::sql::ident;

pub fn plan(op: &RenameTable, p: &mut Planner<'_>) -> Result<()> {
    check_ident(p, "to", &op.to)?;
    let physical = p.table("from", &op.from)?.physical.clone();
    if p.model.name_taken(&op.to, p.base) {
        return Err(p.err(
            "to",
            format!("table {:?} already exists in schema {:?}", op.to, p.schema),
        ));
    }
    let step = Step::sql(
        format!("rename table {} to {}", op.from, op.to),
        format!("ALTER TABLE {} RENAME TO {}", p.q(&physical), ident(&op.to)),
    )
    .guarded(p.relation_exists_guard(&physical))
    .on_table(&p.schema, &physical);
    p.complete_at(Stage::Tables, step);
    p.table_mut("from", &op.from)?.name = op.to.clone();
    Ok(())
}
