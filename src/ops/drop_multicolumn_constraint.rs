//! `drop_multicolumn_constraint`: every column of the constraint is
//! duplicated (with its `up`/`down`, identity when absent); the copies do not
//! carry the constraint, and it goes with the original columns at complete.

use crate::error::Result;
use crate::migration::format::DropMultiColumnConstraint;
use crate::plan::Planner;

pub async fn plan(op: &DropMultiColumnConstraint, p: &mut Planner<'_>) -> Result<()> {
    let table = p.table("table", &op.table)?.clone();
    let con = super::droppable_constraint(p, &op.table, &op.name)?;
    let names: Vec<String> = con
        .columns
        .iter()
        .map(|phys| {
            table
                .columns
                .iter()
                .find(|c| c.physical == *phys)
                .map(|c| c.name.clone())
                .unwrap_or_else(|| phys.clone())
        })
        .collect();
    for (field, map) in [("up", &op.up), ("down", &op.down)] {
        if let Some(k) = map.keys().find(|k| !names.contains(k)) {
            return Err(p.err(
                &format!("{field}.{k}"),
                format!(
                    "column {k:?} is not a column of constraint {:?} ({})",
                    op.name,
                    names.join(", ")
                ),
            ));
        }
    }
    for name in names {
        let alter = super::copy_only(
            &op.table,
            &name,
            op.up.get(&name).cloned(),
            op.down.get(&name).cloned(),
        );
        super::alter_column::duplicate(&alter, p, Some(&op.name), false).await?;
    }
    Ok(())
}
