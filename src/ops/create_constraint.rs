//! `create_constraint` (unique, check, foreign_key, primary_key over one or
//! more columns). On an existing table every column is duplicated (its `up`
//! repairs existing rows and old-side writes so they satisfy the constraint,
//! `down` maps new-side values back) and the constraint goes on the copies:
//! checks and foreign keys NOT VALID (validated at complete), unique through
//! a concurrent index attached at cut-over, and a primary key (on a table
//! without one) the same way once its columns are NOT NULL through validated
//! checks. A table created by the same migration gets the constraint directly.

use super::{check_ident, temp_column};
use crate::error::Result;
use crate::migration::format::{ConstraintType, CreateConstraint};
use crate::plan::preflight::Rule;
use crate::plan::{Planner, Step};
use crate::sql::{bounded_name, ident, rewrite_column_refs};

pub async fn plan(op: &CreateConstraint, p: &mut Planner<'_>) -> Result<()> {
    check_ident(p, "name", &op.name)?;
    let table = p.table("table", &op.table)?.clone();
    if op.columns.is_empty() && op.type_ != ConstraintType::Check {
        return Err(p.err("columns", "list the constrained columns"));
    }
    for (i, c) in op.columns.iter().enumerate() {
        if table.column(c).is_none() {
            return Err(p.err(
                &format!("columns[{i}]"),
                format!("column {c:?} does not exist on table {:?}", op.table),
            ));
        }
    }
    let t = p.q(&table.physical);
    let clause = |cols: &[String], p: &Planner<'_>| -> Result<String> {
        let list = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        Ok(match op.type_ {
            ConstraintType::Unique => format!("UNIQUE ({list})"),
            ConstraintType::PrimaryKey => format!("PRIMARY KEY ({list})"),
            ConstraintType::Check => {
                let mut expr = op
                    .check
                    .clone()
                    .ok_or_else(|| p.err("check", "a check constraint needs `check`"))?;
                for (orig, now) in op.columns.iter().zip(cols) {
                    expr = rewrite_column_refs(&expr, orig, now);
                }
                format!(
                    "CHECK ({expr}){}",
                    if op.no_inherit { " NO INHERIT" } else { "" }
                )
            }
            ConstraintType::ForeignKey => {
                let r = op
                    .references
                    .as_ref()
                    .ok_or_else(|| p.err("references", "a foreign key needs `references`"))?;
                let target = p.table("references.table", &r.table)?;
                let refs = r
                    .columns
                    .iter()
                    .map(|c| {
                        target
                            .column(c)
                            .map(|col| ident(&col.physical))
                            .ok_or_else(|| {
                                p.err(
                                    "references.columns",
                                    format!("column {c:?} does not exist on table {:?}", r.table),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                format!(
                    "FOREIGN KEY ({list}) REFERENCES {} ({}){}",
                    p.q(&target.physical),
                    refs.join(", "),
                    super::fk_actions(r.match_type, r.on_delete, r.on_update)
                )
            }
            ConstraintType::Exclude => {
                return Err(p.err(
                    "type",
                    "exclusion constraints go through create_table or sql",
                ));
            }
        })
    };
    if table.created {
        // No old side: the constraint goes on at start, in the open.
        let cols: Vec<String> = op
            .columns
            .iter()
            .map(|c| {
                table
                    .column(c)
                    .map(|x| x.physical.clone())
                    .unwrap_or_default()
            })
            .collect();
        let sql = format!(
            "ALTER TABLE {t} ADD CONSTRAINT {} {}",
            ident(&op.name),
            clause(&cols, p)?
        );
        p.start.push(
            Step::sql(format!("add constraint {} to {}", op.name, op.table), sql)
                .on_table(&p.schema, &table.physical),
        );
        return Ok(());
    }
    if op.type_ == ConstraintType::PrimaryKey {
        if let Some(base) = p.base.tables.get(&table.physical) {
            if !base.primary_key.is_empty() {
                return Err(p.err(
                    "type",
                    format!(
                        "table {:?} already has a primary key ({}); drop it with drop_constraint in an earlier migration, or create a unique constraint",
                        op.table,
                        base.primary_key.join(", ")
                    ),
                ));
            }
        }
    }
    for (field, map) in [("up", &op.up), ("down", &op.down)] {
        if let Some(k) = map.keys().find(|k| !op.columns.contains(k)) {
            return Err(p.err(
                &format!("{field}.{k}"),
                format!("{k:?} is not one of `columns`"),
            ));
        }
    }
    for c in &op.columns {
        let physical = table
            .column(c)
            .map(|x| x.physical.clone())
            .unwrap_or_default();
        if physical.starts_with(crate::plan::PREFIX) {
            // Already duplicated by an earlier operation of this migration:
            // the constraint goes on that copy.
            if op.up.contains_key(c) || op.down.contains_key(c) {
                return Err(p.err(
                    &format!("up.{c}"),
                    format!("column {c:?} is already changed by an earlier operation of this migration; give its up/down there"),
                ));
            }
            continue;
        }
        let alter = super::copy_only(&op.table, c, op.up.get(c).cloned(), op.down.get(c).cloned());
        super::alter_column::duplicate(&alter, p, None, true).await?;
    }
    // The copies, as the model now names them.
    let now = p.table("table", &op.table)?.clone();
    let temps: Vec<String> = op
        .columns
        .iter()
        .map(|c| {
            now.column(c)
                .map(|x| x.physical.clone())
                .unwrap_or_else(|| temp_column(c))
        })
        .collect();
    // What the existing rows must satisfy once `up` has run.
    let rule = match op.type_ {
        ConstraintType::Unique | ConstraintType::PrimaryKey => Some(Rule::Unique(temps.clone())),
        ConstraintType::Check => op.check.as_ref().map(|c| {
            Rule::Check(
                op.columns
                    .iter()
                    .zip(&temps)
                    .fold(c.clone(), |acc, (orig, now)| {
                        rewrite_column_refs(&acc, orig, now)
                    }),
            )
        }),
        ConstraintType::ForeignKey => match &op.references {
            Some(r) => {
                let target = p.table("references.table", &r.table)?;
                let cols = r
                    .columns
                    .iter()
                    .map(|c| {
                        target
                            .column(c)
                            .map(|x| x.physical.clone())
                            .unwrap_or_else(|| c.clone())
                    })
                    .collect();
                Some(Rule::ForeignKey {
                    columns: temps.clone(),
                    target: p.q(&target.physical),
                    target_columns: cols,
                })
            }
            None => None,
        },
        _ => None,
    };
    if let Some(rule) = rule {
        p.require(&table.physical, &op.name, rule);
    }
    match op.type_ {
        ConstraintType::Unique | ConstraintType::PrimaryKey => {
            let kind = if op.type_ == ConstraintType::PrimaryKey {
                // Key columns are NOT NULL (checked before start, enforced by
                // a validated check) before the key is attached.
                for (c, temp) in op.columns.iter().zip(&temps) {
                    p.not_null_via_check(
                        &table.physical,
                        c,
                        temp,
                        format!(
                            "validate NOT NULL on {}.{c} for primary key {}",
                            op.table, op.name
                        ),
                    );
                }
                "PRIMARY KEY"
            } else {
                "UNIQUE"
            };
            let idx = bounded_name("_pgshift_uq_", &op.name);
            p.key_via_index(
                &table.physical,
                &op.name,
                kind,
                &idx,
                &temps,
                format!("build unique index for constraint {}", op.name),
            );
        }
        _ => {
            let def = clause(&temps, p)?;
            p.not_valid_constraint(
                &table.physical,
                &op.name,
                &def,
                format!("validate constraint {}", op.name),
            );
        }
    }
    Ok(())
}
