//! `create_table`: a new, empty table. Created at start (the old version does
//! not see it), dropped on rollback.

use super::{check_ident, column_definition};
use crate::error::Result;
use crate::migration::format::{ConstraintType, CreateTable};
use crate::plan::model::{VColumn, VTable};
use crate::plan::{Planner, Step};
use crate::sql::{ident, ident_list, literal};

pub fn plan(op: &CreateTable, p: &mut Planner<'_>) -> Result<()> {
    check_ident(p, "name", &op.name)?;
    if p.model.name_taken(&op.name, p.base) {
        return Err(p.err(
            "name",
            format!(
                "table {:?} already exists in schema {:?}",
                op.name, p.schema
            ),
        ));
    }
    if op.columns.is_empty() {
        return Err(p.err("columns", "a table needs at least one column"));
    }
    let pk_cols: Vec<&str> = op
        .columns
        .iter()
        .filter(|c| c.pk)
        .map(|c| c.name.as_str())
        .collect();
    let table_pk = op
        .constraints
        .iter()
        .any(|c| c.type_ == ConstraintType::PrimaryKey);
    if table_pk && !pk_cols.is_empty() {
        return Err(p.err(
            "constraints",
            "the primary key is declared both on columns (`pk: true`) and in `constraints`; keep one",
        ));
    }
    let mut defs = Vec::new();
    for (i, c) in op.columns.iter().enumerate() {
        if op.columns[..i].iter().any(|o| o.name == c.name) {
            return Err(p.err(
                &format!("columns[{i}].name"),
                format!("column {:?} is listed twice", c.name),
            ));
        }
        defs.push(column_definition(
            p,
            &format!("columns[{i}]"),
            c,
            pk_cols.len() == 1,
        )?);
    }
    if pk_cols.len() > 1 {
        defs.push(format!("PRIMARY KEY ({})", ident_list(&pk_cols)));
    }
    for (i, c) in op.constraints.iter().enumerate() {
        let f = format!("constraints[{i}]");
        check_ident(p, &format!("{f}.name"), &c.name)?;
        for col in c.columns.iter() {
            if !op.columns.iter().any(|oc| oc.name == *col) {
                return Err(p.err(
                    &format!("{f}.columns"),
                    format!("column {col:?} is not a column of this table"),
                ));
            }
        }
        let need_cols = |p: &Planner<'_>| -> Result<()> {
            if c.columns.is_empty() {
                return Err(p.err(
                    &format!("{f}.columns"),
                    "this constraint type needs `columns`",
                ));
            }
            Ok(())
        };
        let mut d = format!("CONSTRAINT {} ", ident(&c.name));
        match c.type_ {
            ConstraintType::Unique => {
                need_cols(p)?;
                d.push_str("UNIQUE ");
                if c.nulls_not_distinct {
                    d.push_str("NULLS NOT DISTINCT ");
                }
                d.push_str(&format!("({})", ident_list(&c.columns)));
                d.push_str(&index_parameters(c.index_parameters.as_ref()));
            }
            ConstraintType::PrimaryKey => {
                need_cols(p)?;
                d.push_str(&format!("PRIMARY KEY ({})", ident_list(&c.columns)));
                d.push_str(&index_parameters(c.index_parameters.as_ref()));
            }
            ConstraintType::Check => {
                let chk = c.check.as_deref().ok_or_else(|| {
                    p.err(&format!("{f}.check"), "a check constraint needs `check`")
                })?;
                d.push_str(&format!("CHECK ({chk})"));
                if c.no_inherit {
                    d.push_str(" NO INHERIT");
                }
            }
            ConstraintType::ForeignKey => {
                need_cols(p)?;
                let r = c.references.as_ref().ok_or_else(|| {
                    p.err(
                        &format!("{f}.references"),
                        "a foreign key needs `references`",
                    )
                })?;
                let target_phys = if r.table == op.name {
                    op.name.clone()
                } else {
                    p.table(&format!("{f}.references.table"), &r.table)?
                        .physical
                        .clone()
                };
                d.push_str(&format!(
                    "FOREIGN KEY ({}) REFERENCES {} ({})",
                    ident_list(&c.columns),
                    p.q(&target_phys),
                    ident_list(&r.columns)
                ));
                if let Some(m) = r.match_type {
                    d.push_str(&format!(" MATCH {}", m.sql()));
                }
                if let Some(a) = r.on_delete {
                    d.push_str(&format!(" ON DELETE {}", a.sql()));
                    if !r.on_delete_set_columns.is_empty() {
                        d.push_str(&format!(" ({})", ident_list(&r.on_delete_set_columns)));
                    }
                }
                if let Some(a) = r.on_update {
                    d.push_str(&format!(" ON UPDATE {}", a.sql()));
                }
            }
            ConstraintType::Exclude => {
                let e = c.exclude.as_ref().ok_or_else(|| {
                    p.err(
                        &format!("{f}.exclude"),
                        "an exclusion constraint needs `exclude`",
                    )
                })?;
                d.push_str("EXCLUDE ");
                if !e.index_method.is_empty() {
                    d.push_str(&format!("USING {} ", e.index_method));
                }
                d.push_str(&format!("({})", e.elements));
                d.push_str(&index_parameters(c.index_parameters.as_ref()));
                if !e.predicate.is_empty() {
                    d.push_str(&format!(" WHERE ({})", e.predicate));
                }
            }
        }
        if c.deferrable {
            d.push_str(" DEFERRABLE");
            if c.initially_deferred {
                d.push_str(" INITIALLY DEFERRED");
            }
        }
        defs.push(d);
    }
    let mut sql = format!(
        "CREATE TABLE {} (\n  {}\n)",
        p.q(&op.name),
        defs.join(",\n  ")
    );
    if let Some(cm) = &op.comment {
        sql.push_str(&format!(
            ";\nCOMMENT ON TABLE {} IS {}",
            p.q(&op.name),
            literal(cm)
        ));
    }
    for c in &op.columns {
        if let Some(cm) = &c.comment {
            sql.push_str(&format!(
                ";\n{}",
                super::comment_sql(p, &op.name, &c.name, Some(cm))
            ));
        }
    }
    p.start
        .push(Step::sql(format!("create table {}", op.name), sql));
    p.rollback.push(Step::sql(
        format!("drop table {}", op.name),
        format!("DROP TABLE IF EXISTS {}", p.q(&op.name)),
    ));
    p.model.tables.push(VTable {
        name: op.name.clone(),
        physical: op.name.clone(),
        columns: op
            .columns
            .iter()
            .map(|c| VColumn {
                name: c.name.clone(),
                physical: c.name.clone(),
                type_sql: c.type_.clone(),
                nullable: c.nullable,
            })
            .collect(),
        created: true,
    });
    Ok(())
}

fn index_parameters(ip: Option<&crate::migration::format::IndexParameters>) -> String {
    let Some(ip) = ip else { return String::new() };
    let mut s = String::new();
    if !ip.include_columns.is_empty() {
        s.push_str(&format!(" INCLUDE ({})", ident_list(&ip.include_columns)));
    }
    if !ip.storage_parameters.is_empty() {
        s.push_str(&format!(" WITH ({})", ip.storage_parameters));
    }
    if !ip.tablespace.is_empty() {
        s.push_str(&format!(
            " USING INDEX TABLESPACE {}",
            ident(&ip.tablespace)
        ));
    }
    s
}
