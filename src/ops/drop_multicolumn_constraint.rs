//! `drop_multicolumn_constraint`: every column of the constraint is
//! duplicated (with its `up`/`down`, identity when absent); the copies do not
//! carry the constraint, and it goes with the original columns at complete.

use crate::error::Result;
use crate::migration::format::{AlterColumn, DropMultiColumnConstraint};
use crate::plan::Planner;

pub async fn plan(op: &DropMultiColumnConstraint, p: &mut Planner<'_>) -> Result<()> {
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
                "constraint {:?} is not a check, foreign key or unique constraint",
                op.name
            ),
        ));
    }
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
        let alter = AlterColumn {
            table: op.table.clone(),
            column: name.clone(),
            up: op.up.get(&name).cloned(),
            down: op.down.get(&name).cloned(),
            type_: None,
            nullable: None,
            default: None,
            comment: None,
            check: None,
            references: None,
            unique: None,
            name: None,
        };
        super::alter_column::duplicate(&alter, p, Some(&op.name), false).await?;
    }
    Ok(())
}
