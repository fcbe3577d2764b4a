//! One file per migration operation. Each `plan` function validates the
//! operation against the model of the new version, updates the model, and
//! adds its steps to the planner.

mod add_column;
mod alter_column;
mod create_constraint;
mod create_index;
mod create_table;
mod drop_column;
mod drop_constraint;
mod drop_index;
mod drop_multicolumn_constraint;
mod drop_table;
mod raw_sql;
mod rename_column;
mod rename_constraint;
mod rename_table;
mod set_replica_identity;

use crate::error::Result;
use crate::migration::format::{
    AlterColumn, CheckConstraint, Column, FkAction, ForeignKeyReference, MatchType,
};
use crate::migration::Operation;
use crate::plan::preflight::Rule;
use crate::plan::{Planner, PREFIX};
use crate::sql::{bounded_name, ident, literal};

/// Plan one operation.
pub async fn plan(op: &Operation, p: &mut Planner<'_>) -> Result<()> {
    match op {
        Operation::CreateTable(o) => create_table::plan(o, p),
        Operation::AddColumn(o) => add_column::plan(o, p).await,
        Operation::DropColumn(o) => drop_column::plan(o, p),
        Operation::RenameColumn(o) => rename_column::plan(o, p),
        Operation::AlterColumn(o) => alter_column::plan(o, p).await,
        Operation::CreateIndex(o) => create_index::plan(o, p),
        Operation::DropIndex(o) => drop_index::plan(o, p),
        Operation::RenameTable(o) => rename_table::plan(o, p),
        Operation::DropTable(o) => drop_table::plan(o, p),
        Operation::Sql(o) => raw_sql::plan(o, p),
        Operation::RenameConstraint(o) => rename_constraint::plan(o, p),
        Operation::DropConstraint(o) => drop_constraint::plan(o, p).await,
        Operation::DropMultiColumnConstraint(o) => drop_multicolumn_constraint::plan(o, p).await,
        Operation::CreateConstraint(o) => create_constraint::plan(o, p).await,
        Operation::SetReplicaIdentity(o) => set_replica_identity::plan(o, p).await,
    }
}

/// The temporary physical name of a column being added or changed.
pub fn temp_column(name: &str) -> String {
    bounded_name("_pgshift_new_", name)
}

/// Check a name from the file: a valid identifier, not in pgshift's namespace.
pub fn check_ident(p: &Planner<'_>, field: &str, name: &str) -> Result<()> {
    crate::migration::check_name(name).map_err(|e| p.err(field, e))?;
    if name.starts_with(PREFIX) {
        return Err(p.err(
            field,
            format!("names starting with {PREFIX:?} are reserved for pgshift"),
        ));
    }
    Ok(())
}

/// Map `serial` pseudo-types to their storage type for a duplicated column.
pub fn storage_type(type_sql: &str) -> String {
    match type_sql.trim().to_lowercase().as_str() {
        "serial" | "serial4" => "integer".into(),
        "bigserial" | "serial8" => "bigint".into(),
        "smallserial" | "serial2" => "smallint".into(),
        _ => type_sql.to_string(),
    }
}

/// The referenced table (qualified) and column (physical) of a
/// column-level foreign key, resolved through the model.
fn fk_target(p: &Planner<'_>, field: &str, r: &ForeignKeyReference) -> Result<(String, String)> {
    let target = p.table(&format!("{field}.table"), &r.table)?;
    let col = target.column(&r.column).ok_or_else(|| {
        p.err(
            &format!("{field}.column"),
            format!(
                "column {:?} does not exist on table {:?}",
                r.column, r.table
            ),
        )
    })?;
    Ok((p.q(&target.physical), col.physical.clone()))
}

/// The preflight rule of a column-level foreign key on new column `column`.
pub fn fk_rule(
    p: &Planner<'_>,
    field: &str,
    r: &ForeignKeyReference,
    column: &str,
) -> Result<crate::plan::preflight::Rule> {
    let (target, target_column) = fk_target(p, field, r)?;
    Ok(crate::plan::preflight::Rule::ForeignKey {
        columns: vec![column.to_string()],
        target,
        target_columns: vec![target_column],
    })
}

/// An `alter_column` that only copies `column` (with `up`/`down`), for the
/// constraint operations.
pub fn copy_only(
    table: &str,
    column: &str,
    up: Option<String>,
    down: Option<String>,
) -> AlterColumn {
    AlterColumn {
        table: table.to_string(),
        column: column.to_string(),
        up,
        down,
        type_: None,
        nullable: None,
        default: None,
        comment: None,
        check: None,
        references: None,
        unique: None,
        name: None,
    }
}

/// The constraint `name` of `table` (a model table), for the operations
/// that drop one: it must exist and be a check, foreign key or unique.
pub fn droppable_constraint(
    p: &Planner<'_>,
    table: &str,
    name: &str,
) -> Result<crate::schema::Constraint> {
    let physical = p.table("table", table)?.physical.clone();
    let con = p
        .base
        .tables
        .get(&physical)
        .and_then(|t| t.constraints.iter().find(|c| c.name == name))
        .cloned()
        .ok_or_else(|| {
            p.err(
                "name",
                format!("constraint {name:?} does not exist on table {table:?}"),
            )
        })?;
    if !matches!(con.kind, 'c' | 'f' | 'u') {
        return Err(p.err(
            "name",
            format!(
                "constraint {name:?} is a {}; only check, foreign key and unique constraints can be dropped this way",
                match con.kind {
                    'p' => "primary key",
                    'x' => "exclusion constraint",
                    _ => "constraint of another kind",
                }
            ),
        ));
    }
    Ok(con)
}

/// `REFERENCES "s"."t" ("c") MATCH ... ON DELETE ... ON UPDATE ...` for a
/// column-level foreign key; the referenced table is resolved through the model.
/// A column-level `check` and `references` on `temp`, the new physical
/// column the file calls `column`: existing rows are checked before start,
/// the constraint is added NOT VALID with the trigger and validated at
/// complete. `field` prefixes the file's field names (`column.` or empty);
/// `describe(kind, name)` names the validation step.
pub fn new_column_constraints(
    p: &mut Planner<'_>,
    table: &str,
    column: &str,
    temp: &str,
    (check, references): (Option<&CheckConstraint>, Option<&ForeignKeyReference>),
    field: &str,
    describe: &dyn Fn(&str, &str) -> String,
) -> Result<()> {
    if let Some(chk) = check {
        check_ident(p, &format!("{field}check.name"), &chk.name)?;
        let expr = crate::sql::rewrite_column_refs(&chk.constraint, column, temp);
        p.require(table, &chk.name, Rule::Check(expr.clone()));
        p.not_valid_constraint(
            table,
            &chk.name,
            &format!(
                "CHECK ({expr}){}",
                if chk.no_inherit { " NO INHERIT" } else { "" }
            ),
            describe("check", &chk.name),
        );
    }
    if let Some(r) = references {
        let at = format!("{field}references");
        check_ident(p, &format!("{at}.name"), &r.name)?;
        let rule = fk_rule(p, &at, r, temp)?;
        p.require(table, &r.name, rule);
        let def = format!("FOREIGN KEY ({}) {}", ident(temp), fk_clause(p, &at, r)?);
        p.not_valid_constraint(table, &r.name, &def, describe("foreign key", &r.name));
    }
    Ok(())
}

/// The ` MATCH ... ON DELETE ... ON UPDATE ...` tail of a foreign key (empty
/// when none is given), shared by column references and `create_constraint`.
pub fn fk_actions(
    match_type: Option<MatchType>,
    on_delete: Option<FkAction>,
    on_update: Option<FkAction>,
) -> String {
    let mut s = String::new();
    if let Some(m) = match_type {
        s.push_str(&format!(" MATCH {}", m.sql()));
    }
    if let Some(a) = on_delete {
        s.push_str(&format!(" ON DELETE {}", a.sql()));
    }
    if let Some(a) = on_update {
        s.push_str(&format!(" ON UPDATE {}", a.sql()));
    }
    s
}

pub fn fk_clause(p: &Planner<'_>, field: &str, r: &ForeignKeyReference) -> Result<String> {
    let (target, column) = fk_target(p, field, r)?;
    let mut s = format!(
        "REFERENCES {target} ({}){}",
        ident(&column),
        fk_actions(r.match_type, r.on_delete, r.on_update)
    );
    if r.deferrable {
        s.push_str(" DEFERRABLE");
        if r.initially_deferred {
            s.push_str(" INITIALLY DEFERRED");
        }
    }
    Ok(s)
}

/// A full column definition for `CREATE TABLE` (or `ADD COLUMN` on a table
/// created in the same migration, which has no rows and no old side).
pub fn column_definition(
    p: &Planner<'_>,
    field: &str,
    c: &Column,
    inline_pk: bool,
) -> Result<String> {
    check_ident(p, &format!("{field}.name"), &c.name)?;
    let mut s = format!("{} {}", ident(&c.name), c.type_);
    if let Some(g) = &c.generated {
        match (&g.expression, &g.identity) {
            (Some(e), None) => s.push_str(&format!(" GENERATED ALWAYS AS ({e}) STORED")),
            (None, Some(id)) => {
                let how = match id.user_specified_values {
                    Some(crate::migration::format::UserSpecifiedValues::ByDefault) => "BY DEFAULT",
                    _ => "ALWAYS",
                };
                s.push_str(&format!(" GENERATED {how} AS IDENTITY"));
                if let Some(o) = id
                    .sequence_options
                    .as_deref()
                    .filter(|o| !o.trim().is_empty())
                {
                    s.push_str(&format!(" ({o})"));
                }
            }
            _ => {
                return Err(p.err(
                    &format!("{field}.generated"),
                    "give exactly one of `expression` or `identity`",
                ))
            }
        }
    }
    if !c.nullable && !c.pk {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    if c.pk && inline_pk {
        s.push_str(" PRIMARY KEY");
    }
    if c.unique {
        s.push_str(" UNIQUE");
    }
    if let Some(chk) = &c.check {
        check_ident(p, &format!("{field}.check.name"), &chk.name)?;
        s.push_str(&format!(
            " CONSTRAINT {} CHECK ({})",
            ident(&chk.name),
            chk.constraint
        ));
        if chk.no_inherit {
            s.push_str(" NO INHERIT");
        }
    }
    if let Some(r) = &c.references {
        check_ident(p, &format!("{field}.references.name"), &r.name)?;
        s.push_str(&format!(
            " CONSTRAINT {} {}",
            ident(&r.name),
            fk_clause(p, &format!("{field}.references"), r)?
        ));
    }
    Ok(s)
}

/// `COMMENT ON COLUMN` for a physical column.
pub fn comment_sql(p: &Planner<'_>, table: &str, column: &str, comment: Option<&str>) -> String {
    format!(
        "COMMENT ON COLUMN {}.{} IS {}",
        p.q(table),
        ident(column),
        comment.map(literal).unwrap_or_else(|| "NULL".into())
    )
}
