//! `sql`: raw SQL run at start (or at complete with `onComplete`), `down` run
//! on rollback. pgshift cannot see what it changes, so the version schema is
//! rebuilt from the catalog after it runs. SQL that mentions CONCURRENTLY is
//! run outside a transaction; anything else in one transaction.

use crate::error::Result;
use crate::migration::format::RawSql;
use crate::plan::{Planner, Stage, Step};

fn step(describe: &str, sql: &str) -> Step {
    if sql.to_uppercase().contains("CONCURRENTLY") {
        Step::non_transactional(describe, sql.trim())
    } else {
        Step::sql(describe, sql.trim())
    }
}

pub fn plan(op: &RawSql, p: &mut Planner<'_>) -> Result<()> {
    if op.up.trim().is_empty() {
        return Err(p.err("up", "must not be empty"));
    }
    p.has_raw_sql = true;
    if op.on_complete {
        if op.down.is_some() {
            return Err(p.err("down", "`down` cannot be combined with `onComplete: true`"));
        }
        p.complete_at(Stage::Last, step("raw SQL (onComplete)", &op.up));
    } else {
        p.start.push(step("raw SQL", &op.up));
        if let Some(d) = op.down.as_deref().filter(|d| !d.trim().is_empty()) {
            p.rollback.push(step("raw SQL down", d));
        }
    }
    Ok(())
}
