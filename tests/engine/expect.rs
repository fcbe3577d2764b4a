//! What a pgroll-format migration file asks for, as facts about the catalog:
//! tables, columns (type, NOT NULL), constraints by name and kind, primary
//! keys, unique columns, indexes, replica identity and the version schema.
//! Built by replaying the file's operations in order (a later operation of
//! the same file may rename or drop what an earlier one made), then checked
//! against the database after `complete`. `sql` operations are opaque and
//! add no facts.

use pgshift::migration::format::{Column, ConstraintType};
use pgshift::migration::{MigrationFile, Operation};
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

#[derive(Default, Clone)]
struct Col {
    type_: Option<String>,
    not_null: Option<bool>,
}

#[derive(Default)]
pub struct Expect {
    tables: BTreeSet<String>,
    gone_tables: BTreeSet<String>,
    columns: BTreeMap<(String, String), Col>,
    gone_columns: BTreeSet<(String, String)>,
    /// (table, name) -> pg_constraint.contype
    constraints: BTreeMap<(String, String), char>,
    gone_constraints: BTreeSet<(String, String)>,
    primary_keys: BTreeMap<String, BTreeSet<String>>,
    unique_columns: BTreeSet<(String, String)>,
    indexes: BTreeSet<String>,
    gone_indexes: BTreeSet<String>,
    replica_identity: Option<(String, char)>,
    version_schema: Option<String>,
}

fn contype(t: ConstraintType) -> char {
    match t {
        ConstraintType::Unique => 'u',
        ConstraintType::Check => 'c',
        ConstraintType::PrimaryKey => 'p',
        ConstraintType::ForeignKey => 'f',
        ConstraintType::Exclude => 'x',
    }
}

impl Expect {
    pub fn from_file(file: &MigrationFile) -> Expect {
        let mut e = Expect {
            version_schema: file.version_schema.clone(),
            ..Expect::default()
        };
        for op in &file.operations {
            e.apply(op);
        }
        e
    }

    fn key(t: &str, c: &str) -> (String, String) {
        (t.to_string(), c.to_string())
    }

    fn column(&mut self, table: &str, c: &Column) {
        let k = Self::key(table, &c.name);
        self.gone_columns.remove(&k);
        self.columns.insert(
            k,
            Col {
                type_: Some(c.type_.clone()),
                not_null: Some(!c.nullable || c.pk),
            },
        );
        if c.pk {
            self.primary_keys
                .entry(table.to_string())
                .or_default()
                .insert(c.name.clone());
        }
        if c.unique {
            self.unique_columns.insert(Self::key(table, &c.name));
        }
        if let Some(ch) = &c.check {
            self.constraint(table, &ch.name, 'c');
        }
        if let Some(r) = &c.references {
            self.constraint(table, &r.name, 'f');
        }
    }

    fn constraint(&mut self, table: &str, name: &str, kind: char) {
        let k = Self::key(table, name);
        self.gone_constraints.remove(&k);
        self.constraints.insert(k, kind);
    }

    fn drop_constraint(&mut self, table: &str, name: &str) {
        let k = Self::key(table, name);
        self.constraints.remove(&k);
        self.gone_constraints.insert(k);
    }

    fn rename_column(&mut self, table: &str, from: &str, to: &str) {
        let old = Self::key(table, from);
        let col = self.columns.remove(&old).unwrap_or_default();
        self.gone_columns.insert(old.clone());
        let new = Self::key(table, to);
        self.gone_columns.remove(&new);
        self.columns.insert(new.clone(), col);
        if let Some(pk) = self.primary_keys.get_mut(table) {
            if pk.remove(from) {
                pk.insert(to.to_string());
            }
        }
        if self.unique_columns.remove(&old) {
            self.unique_columns.insert(new);
        }
    }

    fn apply(&mut self, op: &Operation) {
        match op {
            Operation::CreateTable(t) => {
                self.gone_tables.remove(&t.name);
                self.tables.insert(t.name.clone());
                for c in &t.columns {
                    self.column(&t.name, c);
                }
                for k in &t.constraints {
                    self.constraint(&t.name, &k.name, contype(k.type_));
                }
            }
            Operation::AddColumn(a) => self.column(&a.table, &a.column),
            Operation::DropColumn(d) => {
                let k = Self::key(&d.table, &d.column);
                self.columns.remove(&k);
                self.unique_columns.remove(&k);
                self.gone_columns.insert(k);
            }
            Operation::RenameColumn(r) => self.rename_column(&r.table, &r.from, &r.to),
            Operation::AlterColumn(a) => {
                let name = a.name.clone().unwrap_or_else(|| a.column.clone());
                if name != a.column {
                    self.rename_column(&a.table, &a.column, &name);
                }
                let col = self.columns.entry(Self::key(&a.table, &name)).or_default();
                if let Some(t) = &a.type_ {
                    col.type_ = Some(t.clone());
                }
                if let Some(n) = a.nullable {
                    col.not_null = Some(!n);
                }
                if let Some(u) = &a.unique {
                    self.constraint(&a.table, &u.name, 'u');
                }
                if let Some(c) = &a.check {
                    self.constraint(&a.table, &c.name, 'c');
                }
                if let Some(r) = &a.references {
                    self.constraint(&a.table, &r.name, 'f');
                }
            }
            Operation::CreateIndex(i) => {
                self.gone_indexes.remove(&i.name);
                self.indexes.insert(i.name.clone());
            }
            Operation::DropIndex(i) => {
                self.indexes.remove(&i.name);
                self.gone_indexes.insert(i.name.clone());
            }
            Operation::RenameTable(r) => {
                let (from, to) = (r.from.clone(), r.to.clone());
                self.tables.remove(&from);
                self.gone_tables.insert(from.clone());
                self.gone_tables.remove(&to);
                self.tables.insert(to.clone());
                let moved = |m: &mut BTreeMap<(String, String), Col>| {
                    let keys: Vec<_> = m.keys().filter(|(t, _)| *t == from).cloned().collect();
                    for k in keys {
                        if let Some(v) = m.remove(&k) {
                            m.insert((to.clone(), k.1), v);
                        }
                    }
                };
                moved(&mut self.columns);
                let keys: Vec<_> = self
                    .constraints
                    .keys()
                    .filter(|(t, _)| *t == from)
                    .cloned()
                    .collect();
                for k in keys {
                    if let Some(v) = self.constraints.remove(&k) {
                        self.constraints.insert((to.clone(), k.1), v);
                    }
                }
                if let Some(pk) = self.primary_keys.remove(&from) {
                    self.primary_keys.insert(to.clone(), pk);
                }
            }
            Operation::DropTable(d) => {
                self.tables.remove(&d.name);
                self.gone_tables.insert(d.name.clone());
                self.columns.retain(|(t, _), _| *t != d.name);
                self.constraints.retain(|(t, _), _| *t != d.name);
                self.primary_keys.remove(&d.name);
            }
            Operation::Sql(_) => {}
            Operation::CreateConstraint(c) => {
                self.constraint(&c.table, &c.name, contype(c.type_));
                if c.type_ == ConstraintType::PrimaryKey {
                    self.primary_keys
                        .insert(c.table.clone(), c.columns.iter().cloned().collect());
                    for col in &c.columns {
                        self.columns
                            .entry(Self::key(&c.table, col))
                            .or_default()
                            .not_null = Some(true);
                    }
                }
            }
            Operation::DropConstraint(d) => self.drop_constraint(&d.table, &d.name),
            Operation::DropMultiColumnConstraint(d) => self.drop_constraint(&d.table, &d.name),
            Operation::RenameConstraint(r) => {
                let kind = self
                    .constraints
                    .remove(&Self::key(&r.table, &r.from))
                    .unwrap_or('?');
                self.gone_constraints.insert(Self::key(&r.table, &r.from));
                self.constraint(&r.table, &r.to, kind);
            }
            Operation::SetReplicaIdentity(s) => {
                let kind = s.identity.type_.to_ascii_lowercase();
                let c = match kind.as_str() {
                    "full" => 'f',
                    "nothing" => 'n',
                    "index" => 'i',
                    _ => 'd',
                };
                self.replica_identity = Some((s.table.clone(), c));
            }
        }
    }

    /// How many facts the file yields (to keep the check from going vacuous).
    pub fn facts(&self) -> usize {
        self.tables.len()
            + self.gone_tables.len()
            + self.columns.len()
            + self.gone_columns.len()
            + self.constraints.len()
            + self.gone_constraints.len()
            + self.primary_keys.len()
            + self.unique_columns.len()
            + self.indexes.len()
            + self.gone_indexes.len()
            + usize::from(self.replica_identity.is_some())
            + usize::from(self.version_schema.is_some())
    }

    /// Every fact that does not hold in schema `public` (empty: all hold).
    pub async fn mismatches(&self, c: &Client) -> Vec<String> {
        let mut bad = Vec::new();
        // The first column of the first row, if any (an error counts as none:
        // the query names a missing table or column).
        let one = |sql: String| async move {
            c.query_opt(&sql, &[])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<_, Option<String>>(0))
        };
        let reg = |t: &str| {
            format!(
                "to_regclass(quote_ident('public') || '.' || quote_ident({}))",
                lit(t)
            )
        };
        for t in &self.tables {
            if one(format!("SELECT {}::text", reg(t))).await.is_none() {
                bad.push(format!("table {t} is missing"));
            }
        }
        for t in &self.gone_tables {
            if one(format!("SELECT {}::text", reg(t))).await.is_some() {
                bad.push(format!("table {t} should be gone"));
            }
        }
        let attr = |t: &str, col: &str| {
            format!(
                "SELECT format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END
                 FROM pg_attribute WHERE attrelid = {} AND attname = {} AND attnum > 0 AND NOT attisdropped",
                reg(t),
                lit(col)
            )
        };
        for ((t, col), want) in &self.columns {
            let Some(got) = one(attr(t, col)).await else {
                bad.push(format!("column {t}.{col} is missing"));
                continue;
            };
            if let Some(ty) = &want.type_ {
                let norm = normalize_type(c, ty).await;
                let got_type = got.trim_end_matches(" not null");
                if got_type != norm {
                    bad.push(format!(
                        "column {t}.{col} is {got_type}, the file asks for {ty} ({norm})"
                    ));
                }
            }
            if let Some(nn) = want.not_null {
                if got.ends_with(" not null") != nn {
                    bad.push(format!(
                        "column {t}.{col} should {}be NOT NULL",
                        if nn { "" } else { "not " }
                    ));
                }
            }
        }
        for (t, col) in &self.gone_columns {
            if !self.gone_tables.contains(t) && one(attr(t, col)).await.is_some() {
                bad.push(format!("column {t}.{col} should be gone"));
            }
        }
        let con = |t: &str, name: &str| {
            format!(
                "SELECT contype::text FROM pg_constraint WHERE conrelid = {} AND conname = {}",
                reg(t),
                lit(name)
            )
        };
        for ((t, name), kind) in &self.constraints {
            match one(con(t, name)).await {
                None => bad.push(format!("constraint {name} on {t} is missing")),
                Some(k) if *kind != '?' && !k.starts_with(*kind) => bad.push(format!(
                    "constraint {name} on {t} is of type {k}, not {kind}"
                )),
                Some(_) => {}
            }
        }
        for (t, name) in &self.gone_constraints {
            if !self.gone_tables.contains(t) && one(con(t, name)).await.is_some() {
                bad.push(format!("constraint {name} on {t} should be gone"));
            }
        }
        for (t, cols) in &self.primary_keys {
            let got = one(format!(
                "SELECT string_agg(a.attname, ',' ORDER BY a.attname) FROM pg_constraint k
                 JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)
                 WHERE k.conrelid = {} AND k.contype = 'p'",
                reg(t)
            ))
            .await;
            let want = cols.iter().cloned().collect::<Vec<_>>().join(",");
            if got.as_deref() != Some(want.as_str()) {
                bad.push(format!(
                    "primary key of {t} is {got:?}, the file asks for ({want})"
                ));
            }
        }
        for (t, col) in &self.unique_columns {
            let found = one(format!(
                "SELECT 'yes' FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                 WHERE x.indrelid = {} AND x.indisunique AND x.indnkeyatts = 1 AND a.attname = {} LIMIT 1",
                reg(t),
                lit(col)
            ))
            .await;
            if found.is_none() {
                bad.push(format!("column {t}.{col} should be unique"));
            }
        }
        let idx = |name: &str| {
            format!("SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' AND indexname = {}", lit(name))
        };
        for name in &self.indexes {
            if one(idx(name)).await.is_none() {
                bad.push(format!("index {name} is missing"));
            }
        }
        for name in &self.gone_indexes {
            if one(idx(name)).await.is_some() {
                bad.push(format!("index {name} should be gone"));
            }
        }
        if let Some((t, kind)) = &self.replica_identity {
            let got = one(format!(
                "SELECT relreplident::text FROM pg_class WHERE oid = {}",
                reg(t)
            ))
            .await;
            if got.as_deref() != Some(kind.to_string().as_str()) {
                bad.push(format!("replica identity of {t} is {got:?}, not {kind}"));
            }
        }
        // As in pgroll, `version_schema: v` names the schema `public_v`.
        if let Some(v) = self.version_schema.as_ref().map(|v| format!("public_{v}")) {
            if one(format!(
                "SELECT nspname::text FROM pg_namespace WHERE nspname = {}",
                lit(&v)
            ))
            .await
            .is_none()
            {
                bad.push(format!("version schema {v} is missing"));
            }
        }
        bad
    }
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How Postgres spells `ty` (`varchar(255)` -> `character varying(255)`,
/// `serial` -> `integer`), from a column of a throwaway temp table.
async fn normalize_type(c: &Client, ty: &str) -> String {
    let t = ty.trim();
    let t = match t.to_ascii_lowercase().as_str() {
        "serial" | "serial4" => "integer".to_string(),
        "bigserial" | "serial8" => "bigint".to_string(),
        "smallserial" | "serial2" => "smallint".to_string(),
        _ => t.to_string(),
    };
    let out = async {
        c.batch_execute(&format!("BEGIN; CREATE TEMP TABLE _pgshift_type_probe (c {t})")).await?;
        let r = c
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '_pgshift_type_probe'::regclass AND attname = 'c'",
                &[],
            )
            .await?;
        Ok::<String, tokio_postgres::Error>(r.get(0))
    }
    .await;
    let _ = c.batch_execute("ROLLBACK").await;
    out.unwrap_or_else(|e| format!("<{ty}: {e}>"))
}
