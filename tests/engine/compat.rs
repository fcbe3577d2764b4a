//! pgroll's 56 example migrations, unchanged, in order on a fresh database:
//! once as start + complete, once as start, rollback, start, complete. Both
//! must succeed and end with the same schema (rollback leaves nothing that
//! changes the result); after each file, what it asks for (tables, columns
//! with their types and nullability, constraints, keys, indexes, replica
//! identity, version schema) is checked in the catalog.

use crate::support::{self, rows, TestDb};
use std::path::PathBuf;

fn examples() -> Option<Vec<PathBuf>> {
    let dir = match std::env::var("PGSHIFT_COMPAT_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => support::repo_root().join("../shared/compat/pgroll-examples"),
    };
    if !dir.exists() {
        eprintln!(
            "skipped: {} not found (set PGSHIFT_COMPAT_DIR)",
            dir.display()
        );
        return None;
    }
    let files = pgshift::migration::files_in_dir(&dir).unwrap();
    assert_eq!(files.len(), 56);
    Some(files)
}

/// Every column, constraint and index of schema public, one per line.
async fn fingerprint(db: &TestDb) -> String {
    rows(
        &db.client().await,
        "SELECT string_agg(x, ' / ' ORDER BY x) FROM (
           SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                  || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                  || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
           UNION ALL SELECT 'con ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace
           UNION ALL SELECT 'idx ' || indexdef FROM pg_indexes WHERE schemaname = 'public') s(x)",
    )
    .await
}

fn run(db: &TestDb, args: &[&str], file: &std::path::Path) {
    let out = db.pgshift(args);
    assert_eq!(
        out.code,
        Some(0),
        "{} {}: {}",
        args.join(" "),
        file.display(),
        out.stderr
    );
}

#[tokio::test]
async fn all_56_pgroll_examples_run_start_complete_and_start_rollback_start_complete() {
    let Some(files) = examples() else { return };
    let straight = support::fresh_db("compat_a").await;
    let roundabout = support::fresh_db("compat_b").await;
    let mut irreversible = Vec::new();
    let mut unmet = Vec::new();
    let mut facts = 0;
    let sc = straight.client().await;
    for f in &files {
        let path = f.to_str().unwrap();
        run(
            &straight,
            &["start", path, "--complete", "--progress", "none"],
            f,
        );
        let m = pgshift::migration::Migration::load(f).unwrap();
        // What the file asks for holds in the catalog once it is complete.
        let expect = crate::expect::Expect::from_file(&m.file);
        facts += expect.facts();
        for miss in expect.mismatches(&sc).await {
            unmet.push(format!("{}: {miss}", m.name));
        }
        // A `sql` operation without `down` cannot be undone (as in pgroll):
        // rolling it back would leave its effect, so it only goes forward.
        let reversible = !m.file.operations.iter().any(|o| {
            matches!(o, pgshift::migration::Operation::Sql(s) if s.down.is_none() && !s.on_complete)
        });
        run(&roundabout, &["start", path, "--progress", "none"], f);
        if reversible {
            run(&roundabout, &["rollback"], f);
            run(&roundabout, &["start", path, "--progress", "none"], f);
        } else {
            irreversible.push(m.name.clone());
        }
        run(&roundabout, &["complete"], f);
    }
    assert!(
        unmet.is_empty(),
        "not as the files ask:\n{}",
        unmet.join("\n")
    );
    eprintln!("{facts} catalog facts checked");
    assert!(facts > 150, "only {facts} facts checked");
    assert!(irreversible.len() < 10, "{irreversible:?}");
    let a = fingerprint(&straight).await;
    assert_eq!(
        a,
        fingerprint(&roundabout).await,
        "rollback changed the outcome"
    );
    // What some of the files ask for.
    for want in [
        "con tickets fk_sellers FOREIGN KEY (sellers_name, sellers_zip) REFERENCES sellers(name, zip)",
        "con tickets unique_zip_name UNIQUE (sellers_name, sellers_zip)",
        "con tasks tasks_pkey PRIMARY KEY (id)",
        "col tickets.sellers_zip integer not null",
    ] {
        assert!(a.contains(want), "missing {want:?} in:\n{}", a.replace(" / ", "\n"));
    }
    assert!(!a.contains("check_zip_name"), "48 drops check_zip_name");
    let c = straight.client().await;
    assert_eq!(
        rows(
            &c,
            "SELECT count(*) FROM pgshift.migrations WHERE phase = 'complete'"
        )
        .await,
        "56"
    );
    let latest = rows(
        &c,
        "SELECT version_schema FROM pgshift.migrations ORDER BY completed_at DESC LIMIT 1",
    )
    .await;
    assert_eq!(
        support::leftovers(&c, Some(&latest)).await,
        Vec::<String>::new()
    );
}
