//! `drop_constraint`: the constrained column is duplicated without the
//! constraint (a check, foreign key or unique constraint on one column).
//! `up` fills the copy from old-side writes, `down` makes new-side values
//! acceptable to the original, which keeps the constraint until complete.

use crate::error::Result;
use crate::migration::format::DropConstraint;
use crate::plan::Planner;

pub async fn plan(op: &DropConstraint, p: &mut Planner<'_>) -> Result<()> {
    let table = p.table("table", &op.table)?.clone();
    let con = super::droppable_constraint(p, &op.table, &op.name)?;
    let [physical] = con.columns.as_slice() else {
        return Err(p.err(
            "name",
            format!(
                "constraint {:?} spans columns {:?}; use drop_multicolumn_constraint",
                op.name, con.columns
            ),
        ));
    };
    let column = table
        .columns
        .iter()
        .find(|c| c.physical == *physical)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| physical.clone());
    let alter = super::copy_only(
        &op.table,
        &column,
        Some(op.up.clone()),
        Some(op.down.clone()),
    );
    super::alter_column::duplicate(&alter, p, Some(&op.name), false).await
}
