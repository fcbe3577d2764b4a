//! `alter_column`: the column is duplicated under a temporary name with the
//! new type, nullability, default, comment and constraints; `up` fills the
//! copy from old-side writes and existing rows, `down` fills the original
//! from new-side writes. The copy carries the original's checks, foreign keys
//! and indexes (built concurrently). Complete validates, drops the original
//! and renames the copy into place in one short transaction.
//!
//! A comment-only change needs no copy: comments are metadata and are set
//! at start.

use super::{check_ident, comment_sql, temp_column};
use crate::error::Result;
use crate::migration::format::AlterColumn;
use crate::plan::preflight::Rule;
use crate::plan::triggers::clean_expr;
use crate::plan::{Assign, Planner, Step, PREFIX};
use crate::sql::{bounded_name, ident};

pub async fn plan(op: &AlterColumn, p: &mut Planner<'_>) -> Result<()> {
    duplicate(op, p, None, false).await
}

/// Duplicate the column with `op`'s changes; `dropping` names a constraint
/// of the column the copy does not carry (`drop_constraint`); `force`
/// duplicates even without a change of shape (`create_constraint` puts its
/// constraint on the copy).
pub async fn duplicate(
    op: &AlterColumn,
    p: &mut Planner<'_>,
    dropping: Option<&str>,
    force: bool,
) -> Result<()> {
    if op.name.is_some() {
        return Err(p.err(
            "name",
            "renaming through alter_column was removed from the format; use rename_column",
        ));
    }
    let table = p.table("table", &op.table)?.clone();
    let col = table
        .column(&op.column)
        .ok_or_else(|| {
            p.err(
                "column",
                format!(
                    "column {:?} does not exist on table {:?}",
                    op.column, op.table
                ),
            )
        })?
        .clone();
    let changes_shape = force
        || dropping.is_some()
        || op.type_.is_some()
        || op.nullable.is_some()
        || op.default.is_some()
        || op.check.is_some()
        || op.references.is_some()
        || op.unique.is_some();
    if !changes_shape && op.comment.is_none() {
        return Err(p.err(
            "",
            "no change given: set at least one of type, nullable, default, comment, check, references, unique",
        ));
    }
    if col.physical.starts_with(PREFIX) {
        return Err(p.err(
            "column",
            "this column is already added or changed by an earlier operation of this migration; combine the changes into one operation",
        ));
    }
    let t = p.q(&table.physical);
    let base_table = p.base.tables.get(&table.physical);
    let base_col = base_table.and_then(|b| b.column(&col.physical)).cloned();

    if !changes_shape {
        // Comment only: metadata, set at start and restored on rollback.
        let comment = op.comment.clone().flatten();
        p.start.push(Step::sql(
            format!("comment on {}.{}", op.table, op.column),
            comment_sql(p, &table.physical, &col.physical, comment.as_deref()),
        ));
        let previous = base_col.as_ref().and_then(|c| c.comment.clone());
        p.rollback.push(
            Step::sql(
                format!("restore comment on {}.{}", op.table, op.column),
                comment_sql(p, &table.physical, &col.physical, previous.as_deref()),
            )
            .guarded(p.column_exists_guard(&table.physical, &col.physical)),
        );
        return Ok(());
    }
    if let Some(b) = base_table {
        if b.primary_key.contains(&col.physical) {
            return Err(p.err(
                "column",
                format!(
                    "column {:?} is part of the primary key; changing key columns is not supported",
                    op.column
                ),
            ));
        }
    }
    if base_col.as_ref().is_some_and(|c| c.identity_or_generated) {
        return Err(p.err(
            "column",
            format!(
                "column {:?} is an identity or generated column and cannot be duplicated",
                op.column
            ),
        ));
    }

    let type_changed = op.type_.is_some();
    let new_type = op.type_.clone().unwrap_or_else(|| col.type_sql.clone());
    let temp = temp_column(&col.name);
    let up = match op.up.as_deref().map(clean_expr).filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if type_changed => {
            return Err(p.err(
                "up",
                "`up` is required when changing the type: how old values become new ones",
            ))
        }
        None => ident(&col.physical),
    };
    let down = match op.down.as_deref().map(clean_expr).filter(|d| !d.is_empty()) {
        Some(d) => d,
        None if type_changed => {
            return Err(p.err(
                "down",
                "`down` is required when changing the type: how new values become old ones",
            ))
        }
        None => ident(&col.name),
    };
    let default = match &op.default {
        Some(d) => d.clone(),
        None => base_col.as_ref().and_then(|c| c.default.clone()),
    };
    let nullable = op.nullable.unwrap_or(col.nullable);
    let comment = match &op.comment {
        Some(c) => c.clone(),
        None => base_col.as_ref().and_then(|c| c.comment.clone()),
    };

    let mut stmts = vec![format!(
        "ALTER TABLE {t} ADD COLUMN {} {new_type}",
        ident(&temp)
    )];
    if let Some(d) = &default {
        // Set separately so adding the column never rewrites the table.
        stmts.push(format!(
            "ALTER TABLE {t} ALTER COLUMN {} SET DEFAULT {d}",
            ident(&temp)
        ));
    }
    if let Some(c) = &comment {
        stmts.push(comment_sql(p, &table.physical, &temp, Some(c)));
    }
    let describe = |name: &str| format!("validate {name} on {}.{}", op.table, op.column);
    if !nullable {
        let nn = bounded_name("_pgshift_nn_", &col.name);
        p.not_null_via_check(&table.physical, &col.name, &temp, describe(&nn));
    }
    super::new_column_constraints(
        p,
        &table.physical,
        &col.name,
        &temp,
        (op.check.as_ref(), op.references.as_ref()),
        "",
        &|_, name| describe(name),
    )?;
    p.start.push(
        Step::sql(
            format!("add column {temp} for {}.{}", op.table, op.column),
            stmts.join(";\n"),
        )
        .on_table(&p.schema, &table.physical),
    );
    // The original's indexes, checks and foreign keys are copied onto the
    // copies once every operation is planned (they may span several
    // duplicated columns).
    p.duplicated.push(crate::plan::Duplicated {
        table: table.physical.clone(),
        column: col.physical.clone(),
        copy: temp.clone(),
        dropping: dropping.map(str::to_string),
        type_changed,
    });
    if let Some(u) = &op.unique {
        check_ident(p, "unique.name", &u.name)?;
        p.require(&table.physical, &u.name, Rule::Unique(vec![temp.clone()]));
        let idx = bounded_name("_pgshift_uq_", &u.name);
        p.unique_via_index(
            &table.physical,
            &u.name,
            &idx,
            std::slice::from_ref(&temp),
            format!(
                "build unique index {} for {}.{}",
                u.name, op.table, op.column
            ),
        );
    }

    let tr = p.trigger(&table.physical);
    tr.up.push(Assign {
        target: temp.clone(),
        expr: up,
    });
    tr.down.push(Assign {
        target: col.physical.clone(),
        expr: down,
    });
    p.rollback.push(
        Step::sql(
            format!("drop column {temp} from {}", op.table),
            format!("ALTER TABLE {t} DROP COLUMN IF EXISTS {}", ident(&temp)),
        )
        .guarded(p.relation_exists_guard(&table.physical))
        .on_table(&p.schema, &table.physical),
    );
    let vt = p.table_mut("table", &op.table)?;
    if let Some(c) = vt.column_mut(&op.column) {
        c.physical = temp;
        c.type_sql = new_type;
        c.nullable = nullable;
    }
    Ok(())
}
