//! Safety: one migration at a time, bounded lock waits with a named blocker,
//! row-level security through the version schema, hostile identifiers.

use crate::scenario::{Do::*, Scenario};
use crate::support::{self, rows};

#[tokio::test]
async fn a_second_migration_is_refused_while_one_is_active() {
    let db = support::fresh_db("one_active").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
        .await
        .unwrap();
    let dir = support::temp_dir("one_active");
    let a = support::write_migration(
        &dir,
        "01_a",
        "operations:\n  - rename_column: {table: t, from: a, to: b}\n",
    );
    let b = support::write_migration(
        &dir,
        "02_b",
        "operations:\n  - drop_column: {table: t, column: a}\n",
    );
    db.pgshift(&["start", a.to_str().unwrap()]).ok();
    let out = db.pgshift(&["start", b.to_str().unwrap()]);
    out.failed();
    assert!(
        out.stderr.contains("migration \"01_a\" is in progress"),
        "{}",
        out.stderr
    );
    // Starting the same file again is a no-op, not an error.
    db.pgshift(&["start", a.to_str().unwrap()]).ok();
}

#[tokio::test]
async fn concurrent_pgshift_processes_are_refused_by_the_advisory_lock() {
    let db = support::fresh_db("advisory").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    db.pgshift(&["init"]).ok();
    // Hold pgshift's lock for schema public from another session.
    let holder = db.client().await;
    holder
        .batch_execute("SET application_name = 'other-pgshift'; SELECT pg_advisory_lock(1885827944, hashtext('public'))")
        .await
        .unwrap();
    let dir = support::temp_dir("advisory");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - add_column: {table: t, column: {name: a, type: int, nullable: true}}\n",
    );
    let out = db.pgshift(&["start", f.to_str().unwrap()]);
    out.failed();
    assert!(
        out.stderr
            .contains("another pgshift process is working on schema \"public\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("other-pgshift"), "{}", out.stderr);
    assert_eq!(
        rows(
            &db.client().await,
            "SELECT count(*) FROM pgshift.migrations"
        )
        .await,
        "0"
    );
}

#[tokio::test]
async fn lock_retries_are_bounded_and_name_the_blocking_session() {
    let db = support::fresh_db("lock_exhausted").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
        .await
        .unwrap();
    let blocker = db.client().await;
    blocker
        .batch_execute("SET application_name = 'long-report'; BEGIN; SELECT * FROM t")
        .await
        .unwrap();
    let dir = support::temp_dir("lock_exhausted");
    let f = support::write_migration(&dir, "m1", "operations:\n  - alter_column:\n      table: t\n      column: a\n      nullable: false\n      up: coalesce(a, 'x')\n");
    let out = db.pgshift(&[
        "start",
        f.to_str().unwrap(),
        "--lock-timeout",
        "50",
        "--lock-retries",
        "3",
    ]);
    out.failed();
    assert!(
        out.stderr
            .contains("after 3 attempts of lock_timeout 50 ms"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("ALTER TABLE \"public\".\"t\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("application \"long-report\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("AccessShareLock"), "{}", out.stderr);
    blocker.batch_execute("COMMIT").await.unwrap();
    // Nothing was applied; the same start now succeeds.
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
}

#[tokio::test]
async fn row_level_security_applies_through_the_version_schema() {
    let db = support::fresh_db("rls").await;
    let role = db.role_name("tenant");
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL, body text);
             INSERT INTO docs VALUES (1, 'alice', 'a'), (2, 'bob', 'b');
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own ON docs USING (owner = current_user);
             CREATE ROLE {role} LOGIN;
             GRANT SELECT, INSERT ON docs TO {role};
             UPDATE docs SET owner = '{role}' WHERE id = 1;"
        ))
        .await
        .unwrap();
    let dir = support::temp_dir("rls");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - rename_column: {table: docs, from: body, to: content}\n",
    );
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let c = support::connect(&url).await;
    c.batch_execute("SET pgshift.version = 'm1'; SET search_path = public_m1, public")
        .await
        .unwrap();
    assert_eq!(
        rows(&c, "SELECT id, content FROM docs ORDER BY id").await,
        "1|a"
    );
    let owner = support::connect(&db.url).await;
    assert_eq!(
        rows(&owner, "SELECT count(*) FROM public_m1.docs").await,
        "2"
    );
    db.pgshift(&["rollback"]).ok();
    drop(c);
    owner
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_identifiers_are_always_quoted() {
    Scenario {
        name: "hostile",
        setup: r#"CREATE TABLE "we""ird; DROP TABLE x;--" ("select" int PRIMARY KEY, "prénom nom" text, "Order" text);
                  INSERT INTO "we""ird; DROP TABLE x;--" SELECT g, 'p' || g, (g % 7)::text FROM generate_series(1, 50) g;"#,
        migration: r#"operations:
  - alter_column:
      table: "we\"ird; DROP TABLE x;--"
      column: Order
      type: integer
      up: CAST("Order" AS integer)
      down: CAST("Order" AS text)
  - rename_column: {table: "we\"ird; DROP TABLE x;--", from: prénom nom, to: "nom'; --"}
  - add_column:
      table: "we\"ird; DROP TABLE x;--"
      up: length("prénom nom")
      column: {name: "ünïcode ✓", type: int, nullable: false}
  - create_index: {table: "we\"ird; DROP TABLE x;--", name: "idx \"q\"", columns: [{column: "ünïcode ✓"}]}
"#,
        during: vec![
            Old(r#"INSERT INTO "we""ird; DROP TABLE x;--" VALUES (100, 'old', '5')"#),
            New(r#"INSERT INTO "we""ird; DROP TABLE x;--" ("select", "nom'; --", "Order", "ünïcode ✓") VALUES (101, 'new', 6, 9)"#),
            NewSees(r#"SELECT "select", "nom'; --", "Order", "ünïcode ✓" FROM "we""ird; DROP TABLE x;--" WHERE "select" IN (1, 100, 101) ORDER BY 1"#, "1|p1|1|2;100|old|5|3;101|new|6|9"),
        ],
        after_complete: vec![(r#"SELECT sum("ünïcode ✓"), sum("Order") FROM "we""ird; DROP TABLE x;--""#, "153|159")],
        after_rollback: vec![(r#"SELECT count(*) FROM "we""ird; DROP TABLE x;--""#, "52")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn validation_waits_out_a_vacuum_like_lock_without_blocking_writes() {
    let db = support::fresh_db("weak_lock").await;
    let c = db.client().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g")
        .await
        .unwrap();
    let dir = support::temp_dir("weak_lock");
    let f = support::write_migration(&dir, "m1", "operations:\n  - alter_column:\n      table: t\n      column: a\n      nullable: false\n      up: coalesce(a, 'x')\n");
    db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
        .ok();
    // Hold SHARE UPDATE EXCLUSIVE, the lock (auto)vacuum holds.
    let vacuum_like = db.client().await;
    vacuum_like
        .batch_execute("BEGIN; LOCK TABLE t IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .unwrap();
    let complete = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["complete", "--lock-timeout", "50", "--lock-retries", "2"])
        .env("PGSHIFT_POSTGRES_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // VALIDATE is waiting (well past the 50 ms lock_timeout of other steps) ...
    loop {
        let waiting = support::rows(&c, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted AND a.query LIKE '%VALIDATE CONSTRAINT%'").await;
        if waiting == "1" {
            break;
        }
        tokio::task::yield_now().await;
    }
    // ... and writes go on meanwhile.
    c.batch_execute("INSERT INTO t (id, a) VALUES (101, 'w')")
        .await
        .unwrap();
    vacuum_like.batch_execute("COMMIT").await.unwrap();
    let out = complete.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        support::rows(
            &c,
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'a'"
        )
        .await,
        "t"
    );
}

#[tokio::test]
async fn old_writes_between_expand_steps_are_not_rejected() {
    // Stop right after the first start step (the new column exists, the
    // trigger does not yet): an old-version insert must still succeed, and
    // the resumed start fills it.
    let db = support::fresh_db("between_steps").await;
    let c = db.client().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text); INSERT INTO t VALUES (1, 'x')")
        .await
        .unwrap();
    let dir = support::temp_dir("between_steps");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - add_column: {table: t, up: upper(a), column: {name: b, type: text, nullable: false, check: {name: b_nonempty, constraint: length(b) > 0}}}\n",
    );
    let out = db.pgshift_env(
        &["start", f.to_str().unwrap()],
        &[("PGSHIFT_CRASH_AT", "starting:1")],
    );
    assert!(
        out.code.is_none() || out.code == Some(137),
        "{}",
        out.stderr
    );
    c.batch_execute("INSERT INTO t (id, a) VALUES (2, 'y')")
        .await
        .unwrap();
    db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
        .ok();
    db.pgshift(&["complete"]).ok();
    assert_eq!(
        support::rows(&c, "SELECT string_agg(b, ',' ORDER BY id) FROM t").await,
        "X,Y"
    );
}

#[tokio::test]
async fn old_writes_between_rollback_steps_are_not_rejected() {
    // Stop after each rollback step in turn: old-version writes in between
    // must still succeed (a NOT NULL check on a new column must not outlive
    // the trigger that fills it), and the resumed rollback finishes.
    let mig = "operations:
  - add_column: {table: t, up: upper(a), column: {name: b, type: text, nullable: false, check: {name: b_nonempty, constraint: length(b) > 0}}}
  - alter_column: {table: t, column: c, nullable: false, up: 'coalesce(c, 0)', down: c, check: {name: c_positive, constraint: c >= 0}}
";
    for k in 1.. {
        let db = support::fresh_db("between_rollback_steps").await;
        let c = db.client().await;
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text, c int); INSERT INTO t VALUES (1, 'x', NULL)")
            .await
            .unwrap();
        let dir = support::temp_dir(&format!("between_rollback_steps_{k}"));
        let f = support::write_migration(&dir, "m1", mig);
        db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
            .ok();
        let out = db.pgshift_env(
            &["rollback"],
            &[("PGSHIFT_CRASH_AT", &format!("rolling_back:{k}"))],
        );
        let crashed = out.code.is_none() || out.code == Some(137);
        c.batch_execute(&format!(
            "INSERT INTO t (id, a, c) VALUES ({}, 'y', NULL); UPDATE t SET a = 'z' WHERE id = 1",
            k + 1
        ))
        .await
        .unwrap_or_else(|e| panic!("old-version write after rollback step {k}: {e:?}"));
        if !crashed {
            out.ok();
            break;
        }
        db.pgshift(&["rollback"]).ok();
        assert!(support::leftovers(&c, None).await.is_empty());
        assert_eq!(support::rows(&c, "SELECT count(*) FROM t").await, "2");
    }
}

#[tokio::test]
async fn pull_writes_back_the_applied_files_and_migrate_finds_nothing_to_do() {
    let db = support::fresh_db("pull").await;
    let src = support::temp_dir("pull-src");
    let one = "# first\noperations:\n  - create_table: {name: t, columns: [{name: id, type: int, pk: true}]}\n";
    let two = "{\"operations\": [{\"add_column\": {\"table\": \"t\", \"column\": {\"name\": \"v\", \"type\": \"text\", \"nullable\": true}}}]}\n";
    std::fs::write(src.join("01_one.yaml"), one).unwrap();
    std::fs::write(src.join("02_two.json"), two).unwrap();
    db.pgshift(&["migrate", src.to_str().unwrap(), "--complete"])
        .ok();
    let out = support::temp_dir("pull-out");
    db.pgshift(&["pull", out.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("01_one.yaml")).unwrap(),
        one
    );
    assert_eq!(
        std::fs::read_to_string(out.join("02_two.json")).unwrap(),
        two
    );
    let again = db.pgshift(&["migrate", out.to_str().unwrap()]);
    again.ok();
    assert!(
        again.stdout.contains("nothing to apply"),
        "{}",
        again.stdout
    );
    // A file that differs is not overwritten without --force, and nothing is written.
    std::fs::write(out.join("01_one.yaml"), "operations: []\n").unwrap();
    std::fs::remove_file(out.join("02_two.json")).unwrap();
    let refused = db.pgshift(&["pull", out.to_str().unwrap()]);
    refused.failed();
    assert!(
        refused
            .stderr
            .contains("01_one.yaml exists with other contents"),
        "{}",
        refused.stderr
    );
    assert!(!out.join("02_two.json").exists());
    db.pgshift(&["pull", out.to_str().unwrap(), "--force"]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("01_one.yaml")).unwrap(),
        one
    );
}

#[tokio::test]
async fn migrate_applies_only_pending_files_and_refuses_edited_or_reordered_history() {
    let db = support::fresh_db("migrate_history").await;
    let c = db.client().await;
    let dir = support::temp_dir("migrate-history");
    let one =
        "operations:\n  - create_table: {name: t, columns: [{name: id, type: int, pk: true}]}\n";
    let two =
        "operations:\n  - add_column: {table: t, column: {name: v, type: text, nullable: true}}\n";
    let three =
        "operations:\n  - add_column: {table: t, column: {name: w, type: int, nullable: true}}\n";
    std::fs::write(dir.join("01_one.yaml"), one).unwrap();
    std::fs::write(dir.join("02_two.yaml"), two).unwrap();
    db.pgshift(&["migrate", dir.to_str().unwrap(), "--complete"])
        .ok();
    let applied = "SELECT string_agg(name, ',' ORDER BY name) FROM pgshift.migrations";
    assert_eq!(rows(&c, applied).await, "01_one,02_two");
    // Only the new file runs.
    std::fs::write(dir.join("03_three.yaml"), three).unwrap();
    let out = db.pgshift(&["migrate", dir.to_str().unwrap(), "--complete"]);
    out.ok();
    assert_eq!(rows(&c, applied).await, "01_one,02_two,03_three");
    let columns = "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped";
    assert_eq!(rows(&c, columns).await, "id,v,w");
    // An applied file edited: refused by name, nothing pending runs.
    let four =
        "operations:\n  - add_column: {table: t, column: {name: x, type: int, nullable: true}}\n";
    std::fs::write(dir.join("04_four.yaml"), four).unwrap();
    std::fs::write(dir.join("02_two.yaml"), two.replace("text", "varchar")).unwrap();
    let edited = db.pgshift(&["migrate", dir.to_str().unwrap(), "--complete"]);
    edited.failed();
    assert!(
        edited
            .stderr
            .contains("02_two.yaml was edited after it was applied"),
        "{}",
        edited.stderr
    );
    // Applied files renamed out of their order: refused too.
    std::fs::write(dir.join("02_two.yaml"), two).unwrap();
    std::fs::rename(dir.join("01_one.yaml"), dir.join("05_one.yaml")).unwrap();
    let reordered = db.pgshift(&["migrate", dir.to_str().unwrap(), "--complete"]);
    reordered.failed();
    assert!(
        reordered.stderr.contains("files were renamed or reordered"),
        "{}",
        reordered.stderr
    );
    assert_eq!(rows(&c, applied).await, "01_one,02_two,03_three");
    assert_eq!(rows(&c, columns).await, "id,v,w");
}

#[tokio::test]
async fn an_invalid_index_left_by_a_failed_build_is_dropped_and_built_again() {
    let db = support::fresh_db("invalid_index").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g % 10 FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let dir = support::temp_dir("invalid-index");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - create_index: {table: t, name: t_v_idx, columns: [{column: v}]}\n",
    );
    let f = f.to_str().unwrap();
    // The process dies right after the concurrent build, before recording
    // it; the index is then marked INVALID, as a build that died midway
    // leaves it.
    let out = db.pgshift_env(
        &["start", f, "--progress", "none"],
        &[("PGSHIFT_CRASH_AT", "starting:1:before-commit")],
    );
    assert!(out.code != Some(0), "{}", out.stderr);
    c.batch_execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 't_v_idx'::regclass",
    )
    .await
    .unwrap();
    let index = "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_v_idx'::regclass";
    assert_eq!(rows(&c, index).await, "f");
    let again = db.pgshift(&["start", f, "--complete", "--progress", "none"]);
    again.ok();
    assert!(
        again.stderr.contains("dropping INVALID index"),
        "{}",
        again.stderr
    );
    assert_eq!(rows(&c, index).await, "t");
}

/// Wait (up to a minute) until an autovacuum worker holds a lock on `t`.
async fn autovacuum_on_t(c: &tokio_postgres::Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while support::rows(c, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'autovacuum worker' AND l.relation = 't'::regclass").await != "1" {
        assert!(std::time::Instant::now() < deadline, "no autovacuum on t within a minute");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_long_autovacuum_on_the_table_does_not_starve_start_and_rollback() {
    // Postgres cancels an autovacuum in a waiter's way only after
    // deadlock_timeout (1 s), longer than a 500 ms attempt: without pgshift
    // stepping in, every attempt would time out behind it.
    let dir = support::temp_dir("autovacuum");
    let pg = support::OwnCluster::start(
        &dir.join("pg"),
        &[("PGSHIFT_PG_EXTRA", "-c autovacuum_naptime=1")],
    )
    .await;
    let db = pg.db();
    let c = db.client().await;
    // An autovacuum that crawls (a cost limit of 1 per 100 ms) over dead rows.
    c.batch_execute(
        "CREATE ROLE app LOGIN; GRANT CREATE ON DATABASE postgres TO app; GRANT CREATE ON SCHEMA public TO app;
         SET ROLE app;
         CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 50000) g;
         ALTER TABLE t SET (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
                            autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);
         DELETE FROM t WHERE id % 10 = 0; RESET ROLE",
    )
    .await
    .unwrap();
    db.pgshift(&["init"]).ok();
    c.batch_execute("GRANT ALL ON SCHEMA pgshift TO app; GRANT ALL ON ALL TABLES IN SCHEMA pgshift TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA pgshift TO app")
        .await
        .unwrap();
    let f = support::write_migration(
        &dir,
        "01_w",
        "operations:\n  - add_column:\n      table: t\n      column: {name: w, type: int, nullable: true}\n",
    );
    let quick = ["--lock-retries", "3"];

    // A superuser cancels the worker, as Postgres would a second later.
    for command in [&["start", f.to_str().unwrap()][..], &["rollback"]] {
        autovacuum_on_t(&c).await;
        let out = db.pgshift(&[command, &quick].concat());
        out.ok();
        assert!(
            out.stderr
                .contains("cancelled the autovacuum holding public.t"),
            "{}",
            out.stderr
        );
    }

    // The table's owner, who may neither cancel the worker nor see what it
    // is, waits long enough for Postgres to cancel it.
    let app = support::TestDb {
        url: db.url.replace("postgres@", "app@"),
        name: db.name.clone(),
    };
    autovacuum_on_t(&c).await;
    let out = app.pgshift(&[&["start", f.to_str().unwrap()][..], &quick].concat());
    out.ok();
    assert!(out.stderr.contains("waiting that long"), "{}", out.stderr);
    assert_eq!(
        support::rows(&c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = '_pgshift_new_w'").await,
        "1"
    );
}
