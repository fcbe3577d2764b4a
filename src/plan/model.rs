//! The model of the new schema version during planning: each table and
//! column by its virtual (new-version) name, mapped to the physical name it
//! has while the migration is in progress.

use crate::schema::Schema;
use crate::sql::{ident, qualified};

#[derive(Debug, Clone)]
pub struct VColumn {
    /// The name the new version sees.
    pub name: String,
    /// The physical column during the migration (`_pgshift_new_*` when duplicated).
    pub physical: String,
    pub type_sql: String,
    pub nullable: bool,
}

#[derive(Debug, Clone)]
pub struct VTable {
    pub name: String,
    pub physical: String,
    pub columns: Vec<VColumn>,
    /// Created by this migration: no old side, no triggers, no cut-over.
    pub created: bool,
}

impl VTable {
    pub fn column(&self, name: &str) -> Option<&VColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_mut(&mut self, name: &str) -> Option<&mut VColumn> {
        self.columns.iter_mut().find(|c| c.name == name)
    }

    /// Physical columns of the base table that the new version no longer uses.
    fn obsolete_columns<'s>(&self, base: &'s Schema) -> Vec<&'s str> {
        match base.tables.get(&self.physical) {
            Some(b) => b
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .filter(|c| !self.columns.iter().any(|v| v.physical == *c))
                .collect(),
            None => vec![],
        }
    }

    pub fn needs_cutover(&self, base: &Schema) -> bool {
        self.columns.iter().any(|c| c.physical != c.name) || !self.obsolete_columns(base).is_empty()
    }

    /// Statements that make the physical columns match the new version:
    /// drop the obsolete ones first, then rename the rest into place.
    pub fn cutover_columns(&self, schema: &str, base: &Schema) -> Vec<String> {
        let t = qualified(schema, &self.physical);
        let mut out: Vec<String> = self
            .obsolete_columns(base)
            .into_iter()
            .map(|c| format!("ALTER TABLE {t} DROP COLUMN IF EXISTS {}", ident(c)))
            .collect();
        out.extend(
            self.columns
                .iter()
                .filter(|c| c.physical != c.name)
                .map(|c| {
                    format!(
                        "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                        ident(&c.physical),
                        ident(&c.name)
                    )
                }),
        );
        out
    }
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub tables: Vec<VTable>,
    /// Physical names of tables the new version drops.
    pub dropped: Vec<String>,
}

impl Model {
    pub fn from_schema(s: &Schema) -> Model {
        Model {
            tables: s
                .tables
                .values()
                .map(|t| VTable {
                    name: t.name.clone(),
                    physical: t.name.clone(),
                    columns: t
                        .columns
                        .iter()
                        .map(|c| VColumn {
                            name: c.name.clone(),
                            physical: c.name.clone(),
                            type_sql: c.type_sql.clone(),
                            nullable: c.nullable,
                        })
                        .collect(),
                    created: false,
                })
                .collect(),
            dropped: vec![],
        }
    }

    pub fn table(&self, name: &str) -> Option<&VTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    pub fn table_mut(&mut self, name: &str) -> Option<&mut VTable> {
        self.tables.iter_mut().find(|t| t.name == name)
    }

    pub fn by_physical(&self, physical: &str) -> Option<&VTable> {
        self.tables.iter().find(|t| t.physical == physical)
    }

    /// Is `name` taken by a table of the new version or a physical table?
    pub fn name_taken(&self, name: &str, base: &Schema) -> bool {
        self.table(name).is_some()
            || base.tables.contains_key(name)
            || self.tables.iter().any(|t| t.physical == name)
    }
}
