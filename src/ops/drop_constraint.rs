//! `drop_constraint`: the constrained column is duplicated without the
//! constraint (a check, foreign key or unique constraint on one column).
//! `up` fills the copy from old-side writes, `down` makes new-side values
//! acceptable to the original, which keeps the constraint until complete.

use crate::error::Result;
use crate::migration::format::{AlterColumn, DropConstraint};
use crate::plan::Planner;

pub async fn plan(op: &DropConstraint, p: &mut Planner<'_>) -> Result<()> {
    let table = p.table("table", &op.table)?.clone();
    let con = p
        .base
        .tables
        .get(&table.physical)
        .and_then(|t| t.constraints.iter().find(|c| c.name == op.name))
        .cloned()
        .ok_or_else(|| {
            p.err(
                "name",
                format!(
                    "constraint {:?} does not exist on table {:?}",
                    op.name, op.table
                ),
            )
        })?;
    if !matches!(con.kind, 'c' | 'f' | 'u') {
        return Err(p.err(
            "name",
            format!(
                "constraint {:?} is a {}; drop_constraint removes check, foreign key and unique constraints",
                op.name,
                match con.kind {
                    'p' => "primary key",
                    'x' => "exclusion constraint",
                    _ => "constraint of another kind",
                }
            ),
        ));
    }
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
    let alter = AlterColumn {
        table: op.table.clone(),
        column,
        up: Some(op.up.clone()),
        down: Some(op.down.clone()),
        type_: None,
        nullable: None,
        default: None,
        comment: None,
        check: None,
        references: None,
        unique: None,
        name: None,
    };
    super::alter_column::duplicate(&alter, p, Some(&op.name), false).await
}
