//! The version schema: one `security_invoker` view per table of the new
//! version, mapping new-version names to physical columns.

use super::{Planner, PREFIX};
use crate::error::{Error, Result};
use crate::sql::{ident, literal, qualified};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewTable {
    /// View name (the new version's table name).
    pub name: String,
    /// Physical table.
    pub physical: String,
    /// (new-version column name, physical column), in order.
    pub columns: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewSpec {
    pub schema: String,
    pub version_schema: String,
    pub tables: Vec<ViewTable>,
    /// Physical tables the new version does not have.
    pub hidden: Vec<String>,
    /// Also give identity views to physical tables not in `tables` (made by
    /// raw SQL that pgshift cannot see at planning time).
    pub include_unknown: bool,
}

impl ViewSpec {
    pub fn from_model(p: &Planner<'_>) -> ViewSpec {
        ViewSpec {
            schema: p.schema.clone(),
            version_schema: p.version_schema.clone(),
            tables: p
                .model
                .tables
                .iter()
                .map(|t| ViewTable {
                    name: t.name.clone(),
                    physical: t.physical.clone(),
                    columns: t
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), c.physical.clone()))
                        .collect(),
                })
                .collect(),
            hidden: p.model.dropped.clone(),
            include_unknown: p.has_raw_sql,
        }
    }

    fn view_sql(&self, t: &ViewTable) -> String {
        let cols = t
            .columns
            .iter()
            .map(|(v, p)| {
                if v == p {
                    ident(p)
                } else {
                    format!("{} AS {}", ident(p), ident(v))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "CREATE VIEW {} WITH (security_invoker = true) AS SELECT {cols} FROM {}",
            qualified(&self.version_schema, &t.name),
            qualified(&self.schema, &t.physical)
        )
    }

    fn head(&self) -> Vec<String> {
        vec![
            format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                ident(&self.version_schema)
            ),
            format!("CREATE SCHEMA {}", ident(&self.version_schema)),
        ]
    }

    /// The statements as planned (tables known at planning time).
    pub fn render_planned(&self) -> String {
        let mut v = self.head();
        v.extend(self.tables.iter().map(|t| self.view_sql(t)));
        v.push(format!(
            "-- then GRANT on {} and its views what roles hold on {} and its tables",
            ident(&self.version_schema),
            ident(&self.schema)
        ));
        v.join(";\n")
    }

    /// The statements to run now: the planned views, views for tables made
    /// by raw SQL, and grants copied from the base schema and tables.
    pub async fn statements(&self, client: &Client) -> Result<Vec<String>> {
        let mut tables = self.tables.clone();
        // Three independent look-ups, sent together: one round trip. Tables
        // may have been dropped or made by raw SQL since planning.
        let (rows, usage, grants) = tokio::try_join!(
            async {
                crate::pg::query(client, "SELECT c.relname::text,
                        ARRAY(SELECT attname::text FROM pg_attribute
                              WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
                    &[&self.schema],
                )
                .await
                .map_err(|e| Error::db("listing tables for the version schema", e))
            },
            async {
                crate::pg::query(client, "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
                 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                 WHERE n.nspname = $1 AND a.privilege_type = 'USAGE'",
                    &[&self.schema],
                )
                .await
                .map_err(|e| Error::db("reading schema privileges", e))
            },
            async {
                crate::pg::query(client, "SELECT c.relname::text,
                        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                        a.privilege_type
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                      aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                   AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER')
                 ORDER BY 1, 2, 3",
                    &[&self.schema],
                )
                .await
                .map_err(|e| Error::db("reading privileges of the schema's tables", e))
            },
        )?;
        let existing: Vec<(String, Vec<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        tables.retain(|t| existing.iter().any(|(n, _)| *n == t.physical));
        if self.include_unknown {
            for (name, cols) in &existing {
                if name.starts_with(PREFIX)
                    || self.hidden.contains(name)
                    || tables.iter().any(|t| t.physical == *name)
                {
                    continue;
                }
                tables.push(ViewTable {
                    name: name.clone(),
                    physical: name.clone(),
                    columns: cols
                        .iter()
                        .filter(|c| !c.starts_with(PREFIX))
                        .map(|c| (c.clone(), c.clone()))
                        .collect(),
                });
            }
        }
        let mut out = self.head();
        for r in usage {
            let grantee: String = r.get(0);
            out.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {grantee}",
                ident(&self.version_schema)
            ));
        }
        for t in &tables {
            out.push(self.view_sql(t));
            for g in grants.iter().filter(|g| g.get::<_, &str>(0) == t.physical) {
                let grantee: String = g.get(1);
                let privilege: String = g.get(2);
                // privilege_type is one of the fixed keywords filtered above.
                out.push(format!(
                    "GRANT {privilege} ON {} TO {grantee}",
                    qualified(&self.version_schema, &t.name)
                ));
            }
        }
        out.push(format!(
            "COMMENT ON SCHEMA {} IS {}",
            ident(&self.version_schema),
            literal("pgshift version schema")
        ));
        Ok(out)
    }
}
