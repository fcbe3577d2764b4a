//! `drop_table`: hidden from the new version at start (old clients keep
//! using it), dropped at complete.

use crate::error::Result;
use crate::migration::format::DropTable;
use crate::plan::{Planner, Stage, Step};

pub fn plan(op: &DropTable, p: &mut Planner<'_>) -> Result<()> {
    let physical = p.table("name", &op.name)?.physical.clone();
    p.complete_at(
        Stage::Tables,
        Step::sql(
            format!("drop table {}", op.name),
            format!("DROP TABLE IF EXISTS {}", p.q(&physical)),
        )
        .on_table(&p.schema, &physical),
    );
    p.model.tables.retain(|t| t.name != op.name);
    p.model.dropped.push(physical);
    Ok(())
}
