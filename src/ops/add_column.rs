//! `add_column`: the column is added under a temporary name (the old
//! version never sees it), NOT NULL and checks as `NOT VALID` constraints,
//! unique as an index built concurrently; `up` fills it for old-side writes
//! and for existing rows. Complete validates, renames it into place and
//! attaches the constraints.

use super::{check_ident, column_definition, comment_sql, temp_column};
use crate::error::Result;
use crate::migration::format::AddColumn;
use crate::plan::model::VColumn;
use crate::plan::preflight::Rule;
use crate::plan::triggers::clean_expr;
use crate::plan::{Assign, Planner, Step};
use crate::schema::default_is_volatile;
use crate::sql::{bounded_name, ident};

pub async fn plan(op: &AddColumn, p: &mut Planner<'_>) -> Result<()> {
    let c = &op.column;
    check_ident(p, "column.name", &c.name)?;
    let table = p.table("table", &op.table)?.clone();
    if table.column(&c.name).is_some() {
        return Err(p.err(
            "column.name",
            format!("column {:?} already exists on table {:?}", c.name, op.table),
        ));
    }
    if c.pk {
        return Err(p.err(
            "column.pk",
            "adding a primary key column to an existing table is not supported",
        ));
    }
    let t = p.q(&table.physical);
    if table.created {
        // An empty table of this migration: no old side, add it as is.
        let def = column_definition(p, "column", c, true)?;
        let mut sql = format!("ALTER TABLE {t} ADD COLUMN {def}");
        if let Some(cm) = &c.comment {
            sql.push_str(&format!(
                ";\n{}",
                comment_sql(p, &table.physical, &c.name, Some(cm))
            ));
        }
        p.start.push(Step::sql(
            format!("add column {}.{}", op.table, c.name),
            sql,
        ));
        push_model(p, &op.table, c.name.clone(), c.name.clone(), c);
        return Ok(());
    }
    if c.generated.is_some() {
        return Err(p.err(
            "column.generated",
            "a generated column on an existing table rewrites it under an exclusive lock; add a plain column with `up` instead",
        ));
    }
    if matches!(
        c.type_.trim().to_lowercase().as_str(),
        "serial" | "serial4" | "bigserial" | "serial8" | "smallserial" | "serial2"
    ) {
        return Err(p.err(
            "column.type",
            "a serial column on an existing table rewrites it; use integer/bigint with `default: nextval(...)` of a sequence created first",
        ));
    }
    let temp = temp_column(&c.name);
    let mut stmts = vec![format!(
        "ALTER TABLE {t} ADD COLUMN {} {}",
        ident(&temp),
        c.type_
    )];
    let mut up = op.up.as_deref().map(clean_expr).filter(|u| !u.is_empty());
    if let Some(d) = &c.default {
        if default_is_volatile(p.client, &c.type_, d)
            .await
            .map_err(|e| p.err("column.default", e))?
        {
            // A volatile default would rewrite the table: add the column
            // without it, set it for new rows, and backfill existing rows.
            stmts.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {} SET DEFAULT {d}",
                ident(&temp)
            ));
            if up.is_none() {
                up = Some(d.clone());
            }
        } else {
            stmts[0].push_str(&format!(" DEFAULT {d}"));
        }
    }
    if !c.nullable {
        if c.default.is_none() && up.is_none() {
            return Err(p.err(
                "up",
                format!("column {:?} is NOT NULL without a default: give `up` to fill existing rows and old-version writes (or `nullable: true`)", c.name),
            ));
        }
        p.not_null_via_check(
            &table.physical,
            &c.name,
            &temp,
            format!("validate NOT NULL of {}.{}", op.table, c.name),
        );
    }
    super::new_column_constraints(
        p,
        &table.physical,
        &c.name,
        &temp,
        (c.check.as_ref(), c.references.as_ref()),
        "column.",
        &|kind, name| format!("validate {kind} {name}"),
    )?;
    if let Some(cm) = &c.comment {
        stmts.push(comment_sql(p, &table.physical, &temp, Some(cm)));
    }
    p.start.push(
        Step::sql(
            format!("add column {}.{} as {temp}", op.table, c.name),
            stmts.join(";\n"),
        )
        .on_table(&p.schema, &table.physical),
    );
    if c.unique {
        p.require(
            &table.physical,
            &format!("unique {}", c.name),
            Rule::Unique(vec![temp.clone()]),
        );
        let idx = bounded_name("_pgshift_uq_", &format!("{}_{}", table.physical, c.name));
        let con = bounded_name("", &format!("{}_{}_key", op.table, c.name));
        p.unique_via_index(
            &table.physical,
            &con,
            &idx,
            std::slice::from_ref(&temp),
            format!("build unique index for {}.{}", op.table, c.name),
        );
    }
    if let Some(up) = up {
        p.trigger(&table.physical).up.push(Assign {
            target: temp.clone(),
            expr: up,
        });
    }
    p.rollback.push(
        Step::sql(
            format!("drop column {temp} from {}", op.table),
            format!("ALTER TABLE {t} DROP COLUMN IF EXISTS {}", ident(&temp)),
        )
        .guarded(p.relation_exists_guard(&table.physical))
        .on_table(&p.schema, &table.physical),
    );
    push_model(p, &op.table, c.name.clone(), temp, c);
    Ok(())
}

fn push_model(
    p: &mut Planner<'_>,
    table: &str,
    name: String,
    physical: String,
    c: &crate::migration::format::Column,
) {
    if let Some(t) = p.model.table_mut(table) {
        t.columns.push(VColumn {
            name,
            physical,
            type_sql: c.type_.clone(),
            nullable: c.nullable,
        });
    }
}
