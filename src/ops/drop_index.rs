//! `drop_index`: dropped concurrently at complete (the old version may still
//! rely on it until then).

use crate::error::Result;
use crate::migration::format::DropIndex;
use crate::plan::{Planner, Stage, Step};

pub fn plan(op: &DropIndex, p: &mut Planner<'_>) -> Result<()> {
    let (_, idx) = p.base.index_table(&op.name).ok_or_else(|| {
        p.err(
            "name",
            format!(
                "index {:?} does not exist in schema {:?}",
                op.name, p.schema
            ),
        )
    })?;
    if let Some(con) = &idx.constraint {
        return Err(p.err(
            "name",
            format!(
                "index {:?} backs constraint {con:?}; drop the constraint instead",
                op.name
            ),
        ));
    }
    p.complete_at(
        Stage::Last,
        Step::non_transactional(
            format!("drop index {}", op.name),
            format!("DROP INDEX CONCURRENTLY IF EXISTS {}", p.q(&op.name)),
        ),
    );
    Ok(())
}
