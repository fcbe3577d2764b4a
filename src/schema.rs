//! Introspection of the physical schema from `pg_catalog`: the tables,
//! columns, keys, indexes and constraints that planning validates against.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use tokio_postgres::Client;

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type` text, e.g. `character varying(255)`.
    pub type_sql: String,
    pub nullable: bool,
    /// The default expression as Postgres prints it.
    pub default: Option<String>,
    pub comment: Option<String>,
    /// Identity or generated columns cannot be duplicated by alter_column.
    pub identity_or_generated: bool,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub name: String,
    /// Key columns in order; `None` for an expression key.
    pub columns: Vec<Option<String>>,
    /// Each key as `pg_get_indexdef` prints it (column with opclass, collation, order).
    pub key_defs: Vec<String>,
    pub unique: bool,
    pub primary: bool,
    pub method: String,
    pub predicate: Option<String>,
    pub valid: bool,
    /// The constraint that owns the index (unique/primary key), if any.
    pub constraint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Constraint {
    pub name: String,
    /// `c` check, `f` foreign key, `u` unique, `p` primary key, `x` exclusion.
    pub kind: char,
    pub columns: Vec<String>,
    /// `pg_get_constraintdef` text.
    pub definition: String,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub indexes: Vec<Index>,
    pub constraints: Vec<Constraint>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns the copier walks: the primary key, else the first unique
    /// index over NOT NULL plain columns with no predicate.
    pub fn backfill_key(&self) -> Option<Vec<String>> {
        if !self.primary_key.is_empty() {
            return Some(self.primary_key.clone());
        }
        self.indexes
            .iter()
            .filter(|i| i.unique && i.valid && i.predicate.is_none())
            .find_map(|i| {
                let cols: Option<Vec<String>> = i.columns.iter().cloned().collect();
                let cols = cols?;
                cols.iter()
                    .all(|c| self.column(c).is_some_and(|col| !col.nullable))
                    .then_some(cols)
            })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub name: String,
    pub tables: BTreeMap<String, Table>,
}

impl Schema {
    /// The table owning index `name`, if any.
    pub fn index_table(&self, name: &str) -> Option<(&Table, &Index)> {
        self.tables
            .values()
            .find_map(|t| t.indexes.iter().find(|i| i.name == name).map(|i| (t, i)))
    }
}

const COLUMNS_SQL: &str =
    "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                    NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                    col_description(c.oid, a.attnum),
                    a.attidentity <> '' OR a.attgenerated <> ''
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum";

const INDEXES_SQL: &str =
    "SELECT t.relname::text, i.relname::text, x.indisunique, x.indisprimary, am.amname::text,
                    pg_get_expr(x.indpred, x.indrelid), x.indisvalid,
                    (SELECT conname::text FROM pg_constraint k WHERE k.conindid = x.indexrelid
                       AND k.contype IN ('u','p','x') LIMIT 1),
                    ARRAY(SELECT CASE WHEN k.attnum = 0 THEN NULL
                                      ELSE (SELECT attname::text FROM pg_attribute
                                            WHERE attrelid = x.indrelid AND attnum = k.attnum) END
                          FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                          WHERE k.ord <= x.indnkeyatts ORDER BY k.ord),
                    ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true)
                          FROM generate_series(1, x.indnkeyatts::int) k)
             FROM pg_index x
             JOIN pg_class i ON i.oid = x.indexrelid
             JOIN pg_class t ON t.oid = x.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             JOIN pg_am am ON am.oid = i.relam
             WHERE n.nspname = $1
             ORDER BY t.relname, i.relname";

const CONSTRAINTS_SQL: &str = "SELECT t.relname::text, k.conname::text, k.contype::text, pg_get_constraintdef(k.oid, true),
                    ARRAY(SELECT attname::text FROM pg_attribute a
                          WHERE a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) ORDER BY a.attnum)
             FROM pg_constraint k
             JOIN pg_class t ON t.oid = k.conrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             WHERE n.nspname = $1
             ORDER BY t.relname, k.conname";

/// Read every ordinary or partitioned table of `schema`.
pub async fn introspect(client: &Client, schema: &str) -> Result<Schema> {
    let ctx = |what: &str| format!("reading {what} of schema {schema:?}");
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    // Three independent reads, sent together (one wait instead of three).
    let (columns, indexes, constraints) = tokio::try_join!(
        async {
            crate::pg::query(client, COLUMNS_SQL, &[&schema])
                .await
                .map_err(|e| Error::db(ctx("columns"), e))
        },
        async {
            crate::pg::query(client, INDEXES_SQL, &[&schema])
                .await
                .map_err(|e| Error::db(ctx("indexes"), e))
        },
        async {
            crate::pg::query(client, CONSTRAINTS_SQL, &[&schema])
                .await
                .map_err(|e| Error::db(ctx("constraints"), e))
        },
    )?;
    for r in columns {
        let tname: String = r.get(0);
        let t = tables.entry(tname.clone()).or_insert_with(|| Table {
            name: tname,
            columns: vec![],
            primary_key: vec![],
            indexes: vec![],
            constraints: vec![],
        });
        let col: Option<String> = r.get(1);
        if let Some(name) = col {
            t.columns.push(Column {
                name,
                type_sql: r.get(2),
                nullable: r.get(3),
                default: r.get(4),
                comment: r.get(5),
                identity_or_generated: r.get(6),
            });
        }
    }
    for r in indexes {
        let tname: String = r.get(0);
        if let Some(t) = tables.get_mut(&tname) {
            let columns: Vec<Option<String>> = r.get(8);
            let primary: bool = r.get(3);
            if primary {
                t.primary_key = columns.iter().flatten().cloned().collect();
            }
            t.indexes.push(Index {
                name: r.get(1),
                unique: r.get(2),
                primary,
                method: r.get(4),
                predicate: r.get(5),
                valid: r.get(6),
                constraint: r.get(7),
                columns,
                key_defs: r.get(9),
            });
        }
    }
    for r in constraints {
        let tname: String = r.get(0);
        if let Some(t) = tables.get_mut(&tname) {
            let kind: String = r.get(2);
            t.constraints.push(Constraint {
                name: r.get(1),
                kind: kind.chars().next().unwrap_or('?'),
                definition: r.get(3),
                columns: r.get(4),
            });
        }
    }
    Ok(Schema {
        name: schema.to_string(),
        tables,
    })
}

/// Does `schema` exist?
pub async fn schema_exists(client: &Client, schema: &str) -> Result<bool> {
    let row = crate::pg::query_one(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        &[&schema],
    )
    .await
    .map_err(|e| Error::db("checking schema", e))?;
    Ok(row.get(0))
}

/// Would `ADD COLUMN ... DEFAULT expr` of `type_sql` rewrite the table? True
/// when the default is volatile: probed on a throwaway temp table inside a
/// transaction that is rolled back (Postgres records a "missing value"
/// instead of rewriting only for non-volatile defaults).
pub async fn default_is_volatile(client: &Client, type_sql: &str, expr: &str) -> Result<bool> {
    let sql = format!(
        "BEGIN;
         CREATE TEMP TABLE _pgshift_default_probe (x int) ON COMMIT DROP;
         ALTER TABLE _pgshift_default_probe ADD COLUMN c {type_sql} DEFAULT {expr};"
    );
    let res = async {
        client.batch_execute(&sql).await?;
        crate::pg::query_one(
            client,
            "SELECT NOT atthasmissing FROM pg_attribute
                 WHERE attrelid = '_pgshift_default_probe'::regclass AND attname = 'c'",
            &[],
        )
        .await
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    match res {
        Ok(row) => Ok(row.get(0)),
        Err(e) => Err(Error::db(
            format!("default `{expr}` is not a valid default for type `{type_sql}`"),
            e,
        )
        .into_invalid()),
    }
}
