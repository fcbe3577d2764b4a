//! The scenario runner (Reshape's model): a setup, a migration, statements
//! from old-version and new-version clients interleaved while the migration
//! is started, then both endings, each on a fresh database: complete (with
//! checks on the final shape) and rollback (with checks on the original
//! shape). Both endings must leave nothing of pgshift behind.

use crate::support::{self, leftovers, rows, TestDb};

/// One action during the migration.
pub enum Do {
    /// Statement from an old-version client (base schema, no setting).
    Old(&'static str),
    /// Statement from a new-version client (pgshift.version + version schema).
    New(&'static str),
    /// Query on the old side and its expected rows (`a|b;c|d`).
    OldSees(&'static str, &'static str),
    /// Query on the new side and its expected rows.
    NewSees(&'static str, &'static str),
}

pub struct Scenario {
    pub name: &'static str,
    pub setup: &'static str,
    pub migration: &'static str,
    pub during: Vec<Do>,
    /// (query, expected rows) after complete, on a plain client.
    pub after_complete: Vec<(&'static str, &'static str)>,
    /// (query, expected rows) after rollback, on a plain client.
    pub after_rollback: Vec<(&'static str, &'static str)>,
}

impl Scenario {
    pub async fn run(self) {
        for complete in [true, false] {
            self.run_path(complete).await;
        }
    }

    async fn run_path(&self, complete: bool) {
        let path = if complete { "complete" } else { "rollback" };
        let db: TestDb = support::fresh_db(self.name).await;
        let plain = db.client().await;
        if !self.setup.is_empty() {
            plain
                .batch_execute(self.setup)
                .await
                .unwrap_or_else(|e| panic!("{}: setup: {e:?}", self.name));
        }
        let dir = support::temp_dir(&format!("{}-{path}", self.name));
        let file = support::write_migration(&dir, "m1", self.migration);
        db.pgshift(&["start", file.to_str().unwrap(), "--progress", "none"])
            .ok();
        let old = db.client().await;
        let new = db.new_side("m1").await;
        for (i, step) in self.during.iter().enumerate() {
            let ctx = format!("{} ({path} path), during[{i}]", self.name);
            match step {
                Do::Old(sql) => old
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: old side: {sql}: {e:?}")),
                Do::New(sql) => new
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: new side: {sql}: {e:?}")),
                Do::OldSees(q, want) => {
                    assert_eq!(rows(&old, q).await, *want, "{ctx}: old side: {q}")
                }
                Do::NewSees(q, want) => {
                    assert_eq!(rows(&new, q).await, *want, "{ctx}: new side: {q}")
                }
            }
        }
        drop(old);
        drop(new);
        let checks = if complete {
            db.pgshift(&["complete"]).ok();
            &self.after_complete
        } else {
            db.pgshift(&["rollback"]).ok();
            &self.after_rollback
        };
        for (q, want) in checks {
            assert_eq!(
                rows(&plain, q).await,
                *want,
                "{} after {path}: {q}",
                self.name
            );
        }
        let keep = complete.then_some("public_m1");
        assert_eq!(
            leftovers(&plain, keep).await,
            Vec::<String>::new(),
            "{}: leftovers after {path}",
            self.name
        );
        if complete {
            assert_eq!(
                rows(
                    &plain,
                    "SELECT count(*) FROM pg_namespace WHERE nspname = 'public_m1'"
                )
                .await,
                "1"
            );
        }
    }
}
