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

/// 8502 rows of `t` keyed by integers of every shape.
const INT_KEYS: &str = "CREATE TABLE t (id bigint PRIMARY KEY, v int);
     INSERT INTO t SELECT g, 1 FROM generate_series(-3000, 3000) g;            -- dense, negative
     INSERT INTO t SELECT g::bigint * 1000000007, 1 FROM generate_series(1, 500) g;    -- sparse
     INSERT INTO t SELECT 9000000000000 + g, 1 FROM generate_series(1, 2000) g; -- dense again
     INSERT INTO t VALUES (9223372036854775807, 1);                             -- the maximum";

#[tokio::test]
async fn backfill_reaches_every_row_of_dense_sparse_and_negative_integer_keys() {
    let db = support::fresh_db("bf_int").await;
    let c = db.client().await;
    c.batch_execute(INT_KEYS).await.unwrap();
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

/// Beside [`INT_KEYS`], a table without a key (walked by pages).
const PAGES: &str = "CREATE TABLE p (v int, pad text);
     INSERT INTO p SELECT g, repeat('x', 100) FROM generate_series(1, 6000) g;";
const TWO_TABLES_MIGRATION: &str = "operations:
  - add_column: {table: t, up: v + 1, column: {name: w, type: int, nullable: false}}
  - add_column: {table: p, up: v + 1, column: {name: w, type: int, nullable: false}}
";

#[tokio::test]
async fn several_workers_share_each_batch_and_a_crash_among_them_loses_nothing() {
    let dir = support::temp_dir("bf-workers");
    let f = support::write_migration(&dir, "m1", TWO_TABLES_MIGRATION);
    let start = |workers: &'static str| {
        [
            "start",
            f.to_str().unwrap(),
            "--progress",
            "none",
            "--backfill-batch-size",
            "300",
            "--backfill-workers",
            workers,
        ]
        .map(String::from)
    };
    let mut batches = Vec::new();
    for (workers, crash) in [("1", "backfill:3"), ("3", "backfill:3:before-commit")] {
        let db = support::fresh_db(&format!("bf_workers_{workers}")).await;
        let c = db.client().await;
        c.batch_execute(INT_KEYS).await.unwrap();
        c.batch_execute(PAGES).await.unwrap();
        let args = start(workers);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Killed after the third batch; with three workers, after its
        // shares committed but before the mark moved past them...
        db.pgshift_env(&args, &[("PGSHIFT_CRASH_AT", crash)])
            .failed();
        // ...then resumed and completed: every row once, none twice.
        db.pgshift(&args).ok();
        db.pgshift(&["complete"]).ok();
        assert_eq!(
            rows(&c, "SELECT count(*), count(*) FILTER (WHERE w = 2) FROM t").await,
            "8502|8502"
        );
        assert_eq!(
            rows(
                &c,
                "SELECT count(*), count(*) FILTER (WHERE w = v + 1) FROM p"
            )
            .await,
            "6000|6000"
        );
        assert_eq!(
            rows(&c, "SELECT string_agg(rows_done || '/' || rows_total, ' ' ORDER BY table_name) FROM pgshift.backfills").await,
            "6000/6000 8502/8502"
        );
        batches.push(
            rows(&c, "SELECT sum(batches) FROM pgshift.backfills")
                .await
                .parse::<i64>()
                .unwrap(),
        );
    }
    // Each batch of three workers is three calls, one per connection.
    assert!(
        batches[1] > 2 * batches[0],
        "batch calls, 1 and 3 workers: {batches:?}"
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

const FK_NOT_NULL: &str = "operations:
  - alter_column:
      table: orders
      column: customer_id
      nullable: false
      references: {name: orders_customer_fk, table: customers, column: id}
      up: coalesce(customer_id, 1)
      down: customer_id
";

/// Orders whose user trigger counts every UPDATE in `touched` (like an
/// `updated_at` trigger); `extra` runs after the setup.
async fn orders_with_a_touch_trigger(c: &tokio_postgres::Client, extra: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE customers (id int PRIMARY KEY);
         INSERT INTO customers SELECT generate_series(1, 50);
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int, touched int NOT NULL DEFAULT 0);
         INSERT INTO orders SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + g % 50 END FROM generate_series(1, 3000) g;
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$;
         CREATE TRIGGER touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
         {extra}"
    ))
    .await
    .unwrap();
}

/// After complete: how many times the user trigger fired, how many rows
/// `up` filled with customer 1 (the 300 NULLs), and whether the foreign key
/// is validated.
async fn touched_filled_validated(c: &tokio_postgres::Client) -> String {
    rows(
        c,
        "SELECT sum(touched), count(*) FILTER (WHERE customer_id = 1),
                (SELECT convalidated FROM pg_constraint WHERE conname = 'orders_customer_fk')
         FROM orders",
    )
    .await
}

#[tokio::test]
async fn the_copier_fires_no_user_trigger_and_constraints_are_still_validated() {
    let db = support::fresh_db("bf_notrig").await;
    let c = db.client().await;
    orders_with_a_touch_trigger(&c, "").await;
    start_and_complete(&db, FK_NOT_NULL, "500").await;
    // The copier ran as a replica session: the user's trigger saw none of
    // its writes, and the foreign key it skipped was validated at complete.
    assert_eq!(touched_filled_validated(&c).await, "0|300|t");
}

#[tokio::test]
async fn a_table_with_replica_triggers_is_backfilled_in_the_normal_mode() {
    let db = support::fresh_db("bf_reptrig").await;
    let c = db.client().await;
    // A trigger that fires only in replica sessions must not start firing
    // for the copier: the copier keeps the normal mode, so the ordinary
    // trigger fires once per backfilled row and the replica one never.
    orders_with_a_touch_trigger(
        &c,
        "CREATE TABLE replica_log (n int);
         CREATE FUNCTION replica_log() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO replica_log VALUES (1); RETURN NEW; END $$;
         CREATE TRIGGER replica_log AFTER UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION replica_log();
         ALTER TABLE orders ENABLE REPLICA TRIGGER replica_log;",
    )
    .await;
    start_and_complete(&db, FK_NOT_NULL, "500").await;
    assert_eq!(touched_filled_validated(&c).await, "3000|300|t");
    assert_eq!(rows(&c, "SELECT count(*) FROM replica_log").await, "0");
}

#[tokio::test]
async fn a_role_that_may_not_skip_triggers_still_backfills_every_row() {
    let db = support::fresh_db("bf_nosuper").await;
    let role = db.role_name("owner");
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE \"{}\" TO {role};
             ALTER SCHEMA public OWNER TO {role}",
            db.name
        ))
        .await
        .unwrap();
    let owner_url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let owner = support::connect(&owner_url).await;
    orders_with_a_touch_trigger(&owner, "").await;
    let as_owner = support::TestDb {
        url: owner_url,
        name: db.name.clone(),
    };
    start_and_complete(&as_owner, FK_NOT_NULL, "500").await;
    // Not allowed to run as a replica: every trigger fired, foreign key
    // checks included, and every row is filled all the same.
    assert_eq!(touched_filled_validated(&owner).await, "3000|300|t");
    drop(owner);
    admin
        .batch_execute(&format!(
            "ALTER SCHEMA public OWNER TO postgres; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
}
