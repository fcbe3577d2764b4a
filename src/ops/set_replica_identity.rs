//! `set_replica_identity`: a catalog change applied at start (logical
//! replication sees it at once, as with pgroll); rollback restores the
//! identity the table had before.

use crate::error::{Error, Result};
use crate::migration::format::SetReplicaIdentity;
use crate::plan::{Planner, Step};
use crate::sql::ident;

pub async fn plan(op: &SetReplicaIdentity, p: &mut Planner<'_>) -> Result<()> {
    let table = p.table("table", &op.table)?.clone();
    if table.created {
        return Err(p.err(
            "table",
            "the table is created by this migration; give it its identity after",
        ));
    }
    let t = p.q(&table.physical);
    let clause = match op.identity.type_.to_ascii_lowercase().as_str() {
        "full" => "FULL".to_string(),
        "default" => "DEFAULT".to_string(),
        "nothing" => "NOTHING".to_string(),
        "index" => {
            if op.identity.index.is_empty() {
                return Err(p.err(
                    "identity.index",
                    "type `index` needs the name of a unique index of the table",
                ));
            }
            match p.base.index_table(&op.identity.index) {
                Some((tbl, idx)) if tbl.name == table.physical && idx.unique => {}
                Some(_) => {
                    return Err(p.err(
                        "identity.index",
                        format!(
                            "index {:?} is not a unique index of table {:?}",
                            op.identity.index, op.table
                        ),
                    ))
                }
                None => {
                    return Err(p.err(
                        "identity.index",
                        format!(
                            "index {:?} does not exist in schema {:?}",
                            op.identity.index, p.schema
                        ),
                    ))
                }
            }
            format!("USING INDEX {}", ident(&op.identity.index))
        }
        other => {
            return Err(p.err(
                "identity.type",
                format!(
                    "{other:?} is not a replica identity (use full, default, nothing or index)"
                ),
            ))
        }
    };
    // What rollback restores.
    let row = crate::pg::query_one(p.client, "SELECT c.relreplident::text, (SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                          WHERE x.indrelid = c.oid AND x.indisreplident)
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&t],
        )
        .await
        .map_err(|e| Error::db("reading the replica identity", e))?;
    let (kind, index): (String, Option<String>) = (row.get(0), row.get(1));
    let previous = match (kind.as_str(), index) {
        ("f", _) => "FULL".to_string(),
        ("n", _) => "NOTHING".to_string(),
        ("i", Some(i)) => format!("USING INDEX {}", ident(&i)),
        _ => "DEFAULT".to_string(),
    };
    p.start.push(
        Step::sql(
            format!("set replica identity of {} to {clause}", op.table),
            format!("ALTER TABLE {t} REPLICA IDENTITY {clause}"),
        )
        .on_table(&p.schema, &table.physical),
    );
    p.rollback.push(
        Step::sql(
            format!("restore replica identity of {} to {previous}", op.table),
            format!("ALTER TABLE {t} REPLICA IDENTITY {previous}"),
        )
        .guarded(p.relation_exists_guard(&table.physical))
        .on_table(&p.schema, &table.physical),
    );
    Ok(())
}
