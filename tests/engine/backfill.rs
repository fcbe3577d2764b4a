//! The copier visits every row exactly once whatever the key looks like:
//! dense runs (walked by arithmetic), huge gaps and negative values
//! (walked with the boundary query), and composite text keys.

use crate::support::{self, rows};

async fn start_and_complete(db: &support::TestDb, migration: &str, batch: &str) {
    let dir = support::temp_dir(&format!("backfill-{}", db.name));
    let f = support::write_migration(&dir, "m1", migration);
    db.pgshift(&[
        "start",
        f.to_str().unwrap(),
        "--progress",
        "none",
        "--backfill-batch-size",
        batch,
    ])
    .ok();
    db.pgshift(&["complete"]).ok();
}

#[tokio::test]
async fn backfill_reaches_every_row_of_dense_sparse_and_negative_integer_keys() {
    let db = support::fresh_db("bf_int").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, v int);
         INSERT INTO t SELECT g, 1 FROM generate_series(-3000, 3000) g;            -- dense, negative
         INSERT INTO t SELECT g::bigint * 1000000007, 1 FROM generate_series(1, 500) g;    -- sparse
         INSERT INTO t SELECT 9000000000000 + g, 1 FROM generate_series(1, 2000) g; -- dense again
         INSERT INTO t VALUES (9223372036854775807, 1);                             -- the maximum",
    )
    .await
    .unwrap();
    start_and_complete(
        &db,
        "operations:\n  - add_column:\n      table: t\n      up: v + 1\n      column: {name: w, type: int, nullable: false}\n",
        "250",
    )
    .await;
    assert_eq!(
        rows(&c, "SELECT count(*), count(*) FILTER (WHERE w = 2) FROM t").await,
        "8502|8502"
    );
    assert_eq!(
        rows(&c, "SELECT rows_done, rows_total FROM pgshift.backfills").await,
        "8502|8502"
    );
}

#[tokio::test]
async fn backfill_reaches_every_row_of_a_composite_text_key() {
    let db = support::fresh_db("bf_text").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (a text NOT NULL, b int NOT NULL, v int, PRIMARY KEY (a, b));
         INSERT INTO t SELECT 'k' || (g % 37), g, 1 FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    start_and_complete(
        &db,
        "operations:\n  - add_column:\n      table: t\n      up: v + 1\n      column: {name: w, type: int, nullable: false}\n",
        "300",
    )
    .await;
    assert_eq!(
        rows(&c, "SELECT count(*), count(*) FILTER (WHERE w = 2) FROM t").await,
        "5000|5000"
    );
}

#[tokio::test]
async fn a_select_up_expression_keeps_its_meaning_when_unwrapped_or_not() {
    let db = support::fresh_db("bf_select").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    // `SELECT v * 2` runs as `v * 2`; `SELECT count(*)` must stay a
    // sub-query (bare, it would be an aggregate over the table).
    let migration = "operations:
  - add_column: {table: t, up: SELECT v * 2, column: {name: doubled, type: int, nullable: false}}
  - add_column: {table: t, up: SELECT count(*), column: {name: one, type: bigint, nullable: false}}
";
    let dir = support::temp_dir("bf-select");
    let f = support::write_migration(&dir, "m1", migration);
    let plan = db.pgshift(&["plan", f.to_str().unwrap()]);
    plan.ok();
    assert!(plan.stdout.contains("= (v * 2)"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("= (SELECT count(*))"),
        "{}",
        plan.stdout
    );
    start_and_complete(&db, migration, "20").await;
    c.batch_execute("INSERT INTO t (id, v, doubled, one) VALUES (51, 51, 102, 1)")
        .await
        .unwrap();
    assert_eq!(
        rows(&c, "SELECT count(*) FILTER (WHERE doubled = v * 2), count(*) FILTER (WHERE one = 1) FROM t").await,
        "51|51"
    );
}

#[tokio::test]
async fn a_table_without_any_key_is_walked_by_page_even_across_a_rewrite() {
    let db = support::fresh_db("bf_ctid").await;
    let c = db.client().await;
    // No primary key, no unique column; holes from deleted rows.
    c.batch_execute(
        "CREATE TABLE t (v int, pad text);
         INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
         DELETE FROM t WHERE v % 3 = 0 OR v BETWEEN 5000 AND 9000;",
    )
    .await
    .unwrap();
    let left = rows(&c, "SELECT count(*) FROM t").await;
    let dir = support::temp_dir("bf_ctid");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - add_column:\n      table: t\n      up: v + 1\n      column: {name: w, type: int, nullable: false}\n",
    );
    let start = [
        "start",
        f.to_str().unwrap(),
        "--progress",
        "none",
        "--backfill-batch-size",
        "20",
    ];
    // Killed after two batches of 20 pages...
    let out = db.pgshift_env(&start, &[("PGSHIFT_CRASH_AT", "backfill:2")]);
    out.failed();
    let done: i64 = rows(&c, "SELECT rows_done FROM pgshift.backfills")
        .await
        .parse()
        .unwrap();
    assert!(done > 0, "two batches ran before the crash");
    // ...then the table is rewritten: rows still to fill move below the mark.
    c.batch_execute("VACUUM FULL t").await.unwrap();
    let out = db.pgshift(&start);
    out.ok();
    assert!(out.stderr.contains("walking again"), "{}", out.stderr);
    db.pgshift(&["complete"]).ok();
    assert_eq!(
        rows(
            &c,
            "SELECT count(*), count(*) FILTER (WHERE w = v + 1) FROM t"
        )
        .await,
        format!("{left}|{left}")
    );
}
