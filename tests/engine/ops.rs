//! One scenario per operation: old and new clients write and read each
//! other's rows during the migration; complete and rollback both end clean.

use crate::scenario::{Do::*, Scenario};
use crate::support::{self, leftovers, rows};

const USERS: &str = "CREATE TABLE users (id serial PRIMARY KEY, name text, email text NOT NULL DEFAULT '', age text);
                     INSERT INTO users (name, email, age) SELECT 'u' || g, 'u' || g || '@x', (g % 90)::text FROM generate_series(1, 500) g;";

#[tokio::test]
async fn create_table_is_visible_to_the_new_version_only() {
    Scenario {
        name: "create_table",
        setup: USERS,
        migration: "operations:
  - create_table:
      name: orders
      columns:
        - {name: id, type: serial, pk: true}
        - {name: user_id, type: integer, references: {name: orders_user_fk, table: users, column: id}}
        - {name: total, type: 'numeric(10,2)', default: '0', check: {name: total_positive, constraint: total >= 0}}
        - {name: note, type: text, nullable: true, comment: free text}
",
        during: vec![
            New("INSERT INTO orders (user_id, total) VALUES (1, 9.5)"),
            NewSees("SELECT user_id, total FROM orders", "1|9.50"),
            OldSees("SELECT count(*) FROM pg_tables WHERE tablename = 'orders'", "1"),
            Old("INSERT INTO users (name) VALUES ('old')"),
            NewSees("SELECT name FROM users WHERE name = 'old'", "old"),
        ],
        after_complete: vec![
            ("SELECT total FROM orders", "9.50"),
            ("SELECT conname FROM pg_constraint WHERE conrelid = 'orders'::regclass ORDER BY 1", "orders_pkey;orders_user_fk;total_positive"),
            ("SELECT col_description('orders'::regclass, 4)", "free text"),
        ],
        after_rollback: vec![("SELECT to_regclass('orders') IS NULL", "t")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn add_column_not_null_is_filled_by_up_for_old_writes_and_existing_rows() {
    Scenario {
        name: "add_column_nn",
        setup: USERS,
        migration: "operations:
  - add_column:
      table: users
      up: upper(name)
      column: {name: shout, type: text, nullable: false, check: {name: shout_len, constraint: length(shout) < 100}, comment: loud}
",
        during: vec![
            Old("INSERT INTO users (id, name) VALUES (1001, 'old')"),
            New("INSERT INTO users (id, name, shout) VALUES (1002, 'new', 'NEW!')"),
            Old("UPDATE users SET name = 'renamed' WHERE id = 3"),
            NewSees("SELECT id, shout FROM users WHERE id IN (1, 3, 1001, 1002) ORDER BY id", "1|U1;3|RENAMED;1001|OLD;1002|NEW!"),
            OldSees("SELECT name FROM users WHERE id = 1002", "new"),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM users WHERE shout IS NULL", "0"),
            ("SELECT shout FROM users WHERE id IN (2, 1002) ORDER BY id", "U2;NEW!"),
            ("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'shout'", "t"),
            ("SELECT convalidated FROM pg_constraint WHERE conname = 'shout_len'", "t"),
            ("SELECT col_description('users'::regclass, 5)", "loud"),
        ],
        after_rollback: vec![
            ("SELECT count(*) FROM users", "502"),
            ("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'shout'", "0"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn add_column_with_default_references_and_unique() {
    Scenario {
        name: "add_column_opts",
        setup: "CREATE TABLE teams (id int PRIMARY KEY); INSERT INTO teams VALUES (1), (2);
                CREATE TABLE users (id serial PRIMARY KEY, name text); INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 50) g;",
        migration: "operations:
  - add_column:
      table: users
      column: {name: score, type: integer, default: '10'}
  - add_column:
      table: users
      column: {name: team_id, type: integer, nullable: true, references: {name: users_team_fk, table: teams, column: id}}
  - add_column:
      table: users
      column: {name: handle, type: text, nullable: true, unique: true}
",
        during: vec![
            New("INSERT INTO users (name, team_id, handle) VALUES ('n', 2, 'h1')"),
            Old("INSERT INTO users (name) VALUES ('o')"),
            NewSees("SELECT score, team_id, handle FROM users WHERE name IN ('n', 'o', 'u1') ORDER BY name", "10|2|h1;10|∅|∅;10|∅|∅"),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM users WHERE score = 10", "52"),
            ("SELECT conname FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype IN ('f','u') ORDER BY 1", "users_handle_key;users_team_fk"),
        ],
        after_rollback: vec![("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users'", "2")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn drop_column_is_filled_by_down_for_new_writes() {
    Scenario {
        name: "drop_column",
        setup: USERS,
        migration: "operations:
  - drop_column:
      table: users
      column: age
      down: \"'unknown'\"
",
        during: vec![
            New("INSERT INTO users (id, name, email) VALUES (2001, 'new', 'n@x')"),
            NewSees("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public_m1' AND column_name = 'age'", "0"),
            OldSees("SELECT age FROM users WHERE id = 2001", "unknown"),
            Old("INSERT INTO users (id, name, age) VALUES (2002, 'old', '40')"),
            NewSees("SELECT name FROM users WHERE id = 2002", "old"),
        ],
        after_complete: vec![("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'age'", "0")],
        after_rollback: vec![("SELECT age FROM users WHERE id IN (1, 2001, 2002) ORDER BY id", "1;unknown;40")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn rename_column_shows_each_side_its_own_name() {
    Scenario {
        name: "rename_column",
        setup: USERS,
        migration: "operations:
  - rename_column: {table: users, from: name, to: full_name}
",
        during: vec![
            Old("INSERT INTO users (id, name) VALUES (3001, 'old')"),
            New("INSERT INTO users (id, full_name) VALUES (3002, 'new')"),
            NewSees(
                "SELECT full_name FROM users WHERE id IN (3001, 3002) ORDER BY id",
                "old;new",
            ),
            OldSees(
                "SELECT name FROM users WHERE id IN (3001, 3002) ORDER BY id",
                "old;new",
            ),
        ],
        after_complete: vec![("SELECT full_name FROM users WHERE id = 3002", "new")],
        after_rollback: vec![("SELECT name FROM users WHERE id = 3002", "new")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn alter_column_type_converts_both_ways() {
    Scenario {
        name: "alter_type",
        setup: "CREATE TABLE users (id serial PRIMARY KEY, name text, age text);
                CREATE INDEX users_age_idx ON users (age);
                ALTER TABLE users ADD CONSTRAINT age_short CHECK (length(age) < 4);
                INSERT INTO users (name, age) SELECT 'u' || g, (g % 90)::text FROM generate_series(1, 300) g;",
        migration: "operations:
  - alter_column:
      table: users
      column: age
      type: integer
      up: CAST(age AS integer)
      down: CAST(age AS text)
",
        during: vec![
            Old("INSERT INTO users (id, name, age) VALUES (4001, 'old', '33')"),
            New("INSERT INTO users (id, name, age) VALUES (4002, 'new', 44)"),
            New("UPDATE users SET name = 'touched' WHERE id = 5"),
            NewSees("SELECT age + 1 FROM users WHERE id IN (5, 4001, 4002) ORDER BY id", "6;34;45"),
            OldSees("SELECT age FROM users WHERE id IN (5, 4001, 4002) ORDER BY id", "5;33;44"),
        ],
        after_complete: vec![
            ("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'age'", "integer"),
            ("SELECT sum(age) FROM users", "12557"),
            ("SELECT indexrelid::regclass FROM pg_index WHERE indrelid = 'users'::regclass AND NOT indisprimary", "users_age_idx"),
            // A check written for the old type is not carried onto the new type.
            ("SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c'", "0"),
        ],
        after_rollback: vec![("SELECT age FROM users WHERE id IN (5, 4002) ORDER BY id", "5;44")],
    }
    .run()
    .await;
}

/// Calls of the dual-write function in the current transaction.
async fn dual_write_calls(c: &tokio_postgres::Client) -> String {
    rows(
        c,
        "SELECT coalesce(pg_stat_get_xact_function_calls('pgshift.\"dual_write_public.o\"'::regproc), 0)",
    )
    .await
}

#[tokio::test]
async fn updates_that_touch_no_migrated_column_skip_the_dual_write_function() {
    let db = support::fresh_db("skip_unrelated").await;
    let old = db.client().await;
    old.batch_execute(
        "CREATE TABLE o (id int PRIMARY KEY, c int, note text);
         INSERT INTO o SELECT g, CASE WHEN g % 2 = 0 THEN NULL ELSE g END, 'n' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let dir = support::temp_dir(&db.name);
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - alter_column:\n      table: o\n      column: c\n      nullable: false\n      up: coalesce(c, 0)\n      down: c\n",
    );
    db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
        .ok();
    let new = db.new_side("m1").await;
    // Counting function calls needs track_functions (superuser here).
    for c in [&old, &new] {
        c.batch_execute("SET track_functions = 'pl'; BEGIN")
            .await
            .unwrap();
    }
    old.batch_execute("UPDATE o SET note = 'old' WHERE id = 1")
        .await
        .unwrap();
    new.batch_execute("UPDATE o SET note = 'new' WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(dual_write_calls(&old).await, "0");
    assert_eq!(dual_write_calls(&new).await, "0");
    old.batch_execute("UPDATE o SET c = 5 WHERE id = 2")
        .await
        .unwrap();
    new.batch_execute("UPDATE o SET c = 7 WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(dual_write_calls(&old).await, "1");
    assert_eq!(dual_write_calls(&new).await, "1");
    // A row the copier has not reached yet still goes through the function.
    old.batch_execute(
        "SET LOCAL pgshift.copier = on;
         UPDATE o SET _pgshift_new_c = 99, _pgshift_needs_backfill = true WHERE id = 4;
         SET LOCAL pgshift.copier = off;
         UPDATE o SET note = 'waiting' WHERE id = 4",
    )
    .await
    .unwrap();
    assert_eq!(dual_write_calls(&old).await, "2");
    for c in [&old, &new] {
        c.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(
        rows(&new, "SELECT id, c, note FROM o WHERE id <= 5 ORDER BY id").await,
        "1|1|old;2|5|n;3|3|new;4|0|waiting;5|7|n"
    );
    assert_eq!(
        rows(&old, "SELECT id, c FROM o WHERE id <= 5 ORDER BY id").await,
        "1|1;2|5;3|3;4|∅;5|7"
    );
    db.pgshift(&["complete"]).ok();
    assert_eq!(
        rows(
            &old,
            "SELECT count(*), sum(c) FILTER (WHERE id <= 5) FROM o WHERE c IS NOT NULL"
        )
        .await,
        "100|16"
    );
    assert_eq!(
        leftovers(&old, Some("public_m1")).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn alter_column_nullable_default_and_comment() {
    Scenario {
        name: "alter_nullable",
        setup: "CREATE TABLE users (id serial PRIMARY KEY, name text);
                INSERT INTO users (name) SELECT CASE WHEN g % 2 = 0 THEN NULL ELSE 'u' || g END FROM generate_series(1, 100) g;",
        migration: "operations:
  - alter_column:
      table: users
      column: name
      nullable: false
      default: \"'anon'\"
      comment: display name
      up: SELECT CASE WHEN name IS NULL THEN 'placeholder' ELSE name END
      down: name
",
        during: vec![
            Old("INSERT INTO users (id, name) VALUES (5001, NULL)"),
            New("INSERT INTO users (id) VALUES (5002)"),
            NewSees("SELECT name FROM users WHERE id IN (2, 5001, 5002) ORDER BY id", "placeholder;placeholder;anon"),
            OldSees("SELECT coalesce(name, 'NULL') FROM users WHERE id IN (2, 5002) ORDER BY id", "NULL;anon"),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM users WHERE name IS NULL", "0"),
            ("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'name'", "t"),
            ("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'users'::regclass AND adnum = 3", "'anon'::text"),
            ("SELECT col_description('users'::regclass, 3)", "display name"),
        ],
        after_rollback: vec![("SELECT count(*) FROM users WHERE name IS NULL", "51")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn alter_column_comment_only_needs_no_copy() {
    Scenario {
        name: "alter_comment",
        setup: "CREATE TABLE users (id serial PRIMARY KEY, name text); COMMENT ON COLUMN users.name IS 'before';",
        migration: "operations:
  - alter_column: {table: users, column: name, comment: after}
",
        during: vec![OldSees("SELECT col_description('users'::regclass, 2)", "after")],
        after_complete: vec![("SELECT col_description('users'::regclass, 2)", "after")],
        after_rollback: vec![("SELECT col_description('users'::regclass, 2)", "before")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn create_index_concurrently_unique_partial_and_method() {
    Scenario {
        name: "create_index",
        setup: USERS,
        migration: "operations:
  - create_index: {table: users, name: users_email_uq, unique: true, columns: [{column: email}]}
  - create_index: {table: users, name: users_young, columns: [{column: age, sort: DESC}], predicate: \"age < '20'\"}
  - create_index: {table: users, name: users_name_hash, method: hash, columns: [{column: name}], storage_parameters: fillfactor = 70}
",
        during: vec![
            OldSees("SELECT count(*) FROM pg_index WHERE indrelid = 'users'::regclass AND indisvalid", "4"),
            New("INSERT INTO users (name, email) VALUES ('n', 'n@x')"),
        ],
        after_complete: vec![(
            "SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = 'users'::regclass",
            "users_email_uq,users_name_hash,users_pkey,users_young",
        )],
        after_rollback: vec![("SELECT count(*) FROM pg_index WHERE indrelid = 'users'::regclass", "1")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn drop_index_happens_at_complete() {
    Scenario {
        name: "drop_index",
        setup: "CREATE TABLE users (id serial PRIMARY KEY, name text); CREATE INDEX users_name ON users (name);",
        migration: "operations:\n  - drop_index: {name: users_name}\n",
        during: vec![OldSees("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_name'", "1")],
        after_complete: vec![("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_name'", "0")],
        after_rollback: vec![("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_name'", "1")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn rename_table_shows_each_side_its_own_name() {
    Scenario {
        name: "rename_table",
        setup: USERS,
        migration: "operations:\n  - rename_table: {from: users, to: customers}\n",
        during: vec![
            New("INSERT INTO customers (id, name) VALUES (6001, 'new')"),
            Old("INSERT INTO users (id, name) VALUES (6002, 'old')"),
            NewSees(
                "SELECT name FROM customers WHERE id > 6000 ORDER BY id",
                "new;old",
            ),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM customers", "502"),
            ("SELECT to_regclass('users') IS NULL", "t"),
        ],
        after_rollback: vec![("SELECT count(*) FROM users", "502")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn drop_table_hides_it_from_the_new_version_and_drops_at_complete() {
    Scenario {
        name: "drop_table",
        setup: "CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE legacy (id int PRIMARY KEY); INSERT INTO legacy VALUES (1);",
        migration: "operations:\n  - drop_table: {name: legacy}\n",
        during: vec![
            NewSees("SELECT count(*) FROM information_schema.views WHERE table_schema = 'public_m1' AND table_name = 'legacy'", "0"),
            Old("INSERT INTO legacy VALUES (2)"),
            OldSees("SELECT count(*) FROM legacy", "2"),
        ],
        after_complete: vec![("SELECT to_regclass('legacy') IS NULL", "t")],
        after_rollback: vec![("SELECT count(*) FROM legacy", "2")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn sql_runs_up_at_start_and_down_on_rollback() {
    Scenario {
        name: "sql",
        setup: "",
        migration: "operations:
  - sql:
      up: CREATE TABLE widgets (id int PRIMARY KEY, label text); INSERT INTO widgets VALUES (1, 'a') -- a line comment ends it
      down: DROP TABLE widgets -- a line comment ends it
",
        during: vec![
            NewSees("SELECT label FROM widgets", "a"),
            New("INSERT INTO widgets VALUES (2, 'b')"),
        ],
        after_complete: vec![("SELECT count(*) FROM widgets", "2")],
        after_rollback: vec![("SELECT to_regclass('widgets') IS NULL", "t")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn sql_on_complete_runs_only_at_complete() {
    Scenario {
        name: "sql_on_complete",
        setup: "CREATE TABLE users (id int PRIMARY KEY);",
        migration: "operations:
  - sql:
      up: CREATE TABLE audit (id int)
      onComplete: true
",
        during: vec![OldSees("SELECT to_regclass('audit') IS NULL", "t")],
        after_complete: vec![
            ("SELECT to_regclass('audit') IS NOT NULL", "t"),
            ("SELECT count(*) FROM information_schema.views WHERE table_schema = 'public_m1' AND table_name = 'audit'", "1"),
        ],
        after_rollback: vec![("SELECT to_regclass('audit') IS NULL", "t")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn one_migration_changes_type_renames_and_adds_not_null_column() {
    Scenario {
        name: "combined",
        setup: USERS,
        migration: "operations:
  - alter_column: {table: users, column: age, type: integer, up: CAST(age AS integer), down: CAST(age AS text)}
  - rename_column: {table: users, from: name, to: full_name}
  - add_column:
      table: users
      up: \"'unverified'\"
      column: {name: status, type: text, nullable: false}
",
        during: vec![
            Old("INSERT INTO users (id, name, age) VALUES (7001, 'old', '21')"),
            New("INSERT INTO users (id, full_name, age, status) VALUES (7002, 'new', 22, 'ok')"),
            New("UPDATE users SET full_name = 'x' WHERE id = 10"),
            NewSees("SELECT full_name, age, status FROM users WHERE id IN (10, 7001, 7002) ORDER BY id", "x|10|unverified;old|21|unverified;new|22|ok"),
            OldSees("SELECT name, age FROM users WHERE id IN (10, 7002) ORDER BY id", "x|10;new|22"),
        ],
        after_complete: vec![
            ("SELECT full_name, age, status FROM users WHERE id IN (10, 7001, 7002) ORDER BY id", "x|10|unverified;old|21|unverified;new|22|ok"),
            ("SELECT count(*) FROM users WHERE status IS NULL OR age IS NULL", "0"),
        ],
        after_rollback: vec![("SELECT name, age FROM users WHERE id IN (10, 7002) ORDER BY id", "x|10;new|22")],
    }
    .run()
    .await;
}

#[tokio::test]
async fn set_replica_identity_applies_at_start_and_rollback_restores_it() {
    Scenario {
        name: "replica_identity",
        setup: "CREATE TABLE events (id int PRIMARY KEY, code text NOT NULL); CREATE UNIQUE INDEX events_code ON events (code);
                INSERT INTO events VALUES (1, 'a'), (2, 'b');",
        migration: "operations:
  - set_replica_identity: {table: events, identity: {type: index, index: events_code}}
",
        during: vec![
            Old("INSERT INTO events VALUES (3, 'c')"),
            New("INSERT INTO events VALUES (4, 'd')"),
            OldSees("SELECT relreplident FROM pg_class WHERE oid = 'public.events'::regclass", "i"),
            NewSees("SELECT count(*) FROM events", "4"),
        ],
        after_complete: vec![
            ("SELECT relreplident FROM pg_class WHERE oid = 'public.events'::regclass", "i"),
            ("SELECT indisreplident FROM pg_index WHERE indexrelid = 'events_code'::regclass", "t"),
        ],
        after_rollback: vec![
            ("SELECT relreplident FROM pg_class WHERE oid = 'public.events'::regclass", "d"),
            ("SELECT count(*) FROM events", "4"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn rename_constraint_happens_at_complete() {
    Scenario {
        name: "rename_constraint",
        setup: "CREATE TABLE items (id int PRIMARY KEY, price int CONSTRAINT price_positive CHECK (price > 0));
                INSERT INTO items VALUES (1, 10);",
        migration: "operations:
  - rename_constraint: {table: items, from: price_positive, to: items_price_check}
",
        during: vec![
            Old("INSERT INTO items VALUES (2, 20)"),
            New("INSERT INTO items VALUES (3, 30)"),
            OldSees("SELECT conname FROM pg_constraint WHERE contype = 'c' AND conrelid = 'items'::regclass", "price_positive"),
        ],
        after_complete: vec![(
            "SELECT conname FROM pg_constraint WHERE contype = 'c' AND conrelid = 'items'::regclass",
            "items_price_check",
        )],
        after_rollback: vec![(
            "SELECT conname FROM pg_constraint WHERE contype = 'c' AND conrelid = 'items'::regclass",
            "price_positive",
        )],
    }
    .run()
    .await;
}

#[tokio::test]
async fn drop_constraint_frees_the_new_version_and_down_keeps_the_old_one_valid() {
    Scenario {
        name: "drop_constraint",
        setup: "CREATE TABLE posts (id int PRIMARY KEY, title text CONSTRAINT title_length CHECK (length(title) > 3));
                INSERT INTO posts VALUES (1, 'long title');",
        migration: "operations:
  - drop_constraint:
      table: posts
      name: title_length
      up: title
      down: SELECT CASE WHEN length(title) <= 3 THEN LPAD(title, 4, '-') ELSE title END
",
        during: vec![
            New("INSERT INTO posts VALUES (2, 'ab')"),
            Old("INSERT INTO posts VALUES (3, 'old title')"),
            NewSees("SELECT title FROM posts WHERE id = 2", "ab"),
            OldSees("SELECT title FROM posts WHERE id = 2", "--ab"),
            NewSees("SELECT title FROM posts WHERE id = 3", "old title"),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname = 'title_length'", "0"),
            ("SELECT string_agg(title, ',' ORDER BY id) FROM posts", "long title,ab,old title"),
        ],
        after_rollback: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname = 'title_length'", "1"),
            ("SELECT string_agg(title, ',' ORDER BY id) FROM posts", "long title,--ab,old title"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn drop_constraint_removes_a_unique_constraint_and_a_foreign_key() {
    Scenario {
        name: "drop_unique_fk",
        setup: "CREATE TABLE authors (id int PRIMARY KEY); INSERT INTO authors VALUES (1);
                CREATE TABLE reviews (id int PRIMARY KEY, review text CONSTRAINT reviews_review_unique UNIQUE,
                                      author int CONSTRAINT reviews_author_fk REFERENCES authors (id));
                INSERT INTO reviews VALUES (1, 'good', 1);",
        migration: "operations:
  - drop_constraint: {table: reviews, name: reviews_review_unique, up: review, down: \"review || '-' || id\"}
  - drop_constraint: {table: reviews, name: reviews_author_fk, up: author, down: 'CASE WHEN author IN (SELECT id FROM authors) THEN author END'}
",
        during: vec![
            New("INSERT INTO reviews VALUES (2, 'good', 99)"),
            NewSees("SELECT count(*) FROM reviews WHERE review = 'good'", "2"),
            OldSees("SELECT review, author IS NULL FROM reviews WHERE id = 2", "good-2|t"),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname IN ('reviews_review_unique', 'reviews_author_fk')", "0"),
            ("SELECT string_agg(review || ':' || author, ',' ORDER BY id) FROM reviews", "good:1,good:99"),
        ],
        after_rollback: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname IN ('reviews_review_unique', 'reviews_author_fk')", "2"),
            ("SELECT string_agg(review, ',' ORDER BY id) FROM reviews", "good,good-2"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn create_constraint_check_over_two_columns_repairs_old_rows_with_up() {
    Scenario {
        name: "create_check",
        setup: "CREATE TABLE tickets (id int PRIMARY KEY, sellers_name text, sellers_zip int);
                INSERT INTO tickets VALUES (1, 'alice', 0), (2, 'bob', 0), (3, 'bob', 5);",
        migration: "operations:
  - create_constraint:
      type: check
      table: tickets
      name: check_zip_name
      columns: [sellers_name, sellers_zip]
      check: sellers_name = 'alice' OR sellers_zip > 0
      up:
        sellers_zip: CASE WHEN sellers_name != 'alice' AND sellers_zip <= 0 THEN 123 ELSE sellers_zip END
      down:
        sellers_zip: sellers_zip
",
        during: vec![
            Old("INSERT INTO tickets VALUES (4, 'carol', -1)"),
            New("INSERT INTO tickets VALUES (5, 'dave', 9)"),
            NewSees("SELECT string_agg(sellers_zip::text, ',' ORDER BY id) FROM tickets", "0,123,5,123,9"),
            OldSees("SELECT string_agg(sellers_zip::text, ',' ORDER BY id) FROM tickets", "0,0,5,-1,9"),
        ],
        after_complete: vec![
            ("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'check_zip_name'", "CHECK (((sellers_name = 'alice'::text) OR (sellers_zip > 0)))"),
            ("SELECT convalidated FROM pg_constraint WHERE conname = 'check_zip_name'", "t"),
            ("SELECT string_agg(sellers_zip::text, ',' ORDER BY id) FROM tickets", "0,123,5,123,9"),
        ],
        after_rollback: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname = 'check_zip_name'", "0"),
            ("SELECT string_agg(sellers_zip::text, ',' ORDER BY id) FROM tickets", "0,0,5,-1,9"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn create_constraint_unique_and_foreign_key_on_the_same_columns() {
    Scenario {
        name: "create_unique_fk",
        setup: "CREATE TABLE sellers (name text, zip int, PRIMARY KEY (name, zip)); INSERT INTO sellers VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4);
                CREATE TABLE tickets (id int PRIMARY KEY, sellers_name text, sellers_zip int,
                                      CONSTRAINT old_pair CHECK (sellers_zip IS NOT NULL OR sellers_name IS NULL));
                INSERT INTO tickets VALUES (1, 'a', 1), (2, 'b', 2);",
        migration: "operations:
  - create_constraint:
      type: unique
      table: tickets
      name: unique_zip_name
      columns: [sellers_name, sellers_zip]
      up: {}
      down: {}
  - create_constraint:
      type: foreign_key
      table: tickets
      name: fk_sellers
      columns: [sellers_name, sellers_zip]
      references: {table: sellers, columns: [name, zip]}
      up: {}
      down: {}
",
        during: vec![
            Old("INSERT INTO tickets VALUES (3, 'c', 3)"),
            New("INSERT INTO tickets VALUES (4, 'd', 4)"),
            OldSees("SELECT count(*) FROM tickets", "4"),
            NewSees("SELECT count(*) FROM tickets WHERE (sellers_name, sellers_zip) IN (SELECT name, zip FROM sellers)", "4"),
        ],
        after_complete: vec![
            ("SELECT string_agg(conname || ' ' || contype::text, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'tickets'::regclass", "fk_sellers f,old_pair c,tickets_pkey p,unique_zip_name u"),
        ],
        after_rollback: vec![
            ("SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'tickets'::regclass", "old_pair,tickets_pkey"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn create_constraint_primary_key_on_a_table_without_one() {
    Scenario {
        name: "create_pk",
        setup: "CREATE TABLE accounts (email text NOT NULL UNIQUE, legacy_id int);
                INSERT INTO accounts VALUES ('a@x', 1), ('bb@x', NULL), ('ccc@x', 3);",
        migration: "operations:
  - create_constraint:
      type: primary_key
      table: accounts
      name: accounts_pk
      columns: [legacy_id]
      up: {legacy_id: 'coalesce(legacy_id, 100 + length(email))'}
      down: {legacy_id: legacy_id}
",
        during: vec![
            Old("INSERT INTO accounts VALUES ('dddd@x', NULL)"),
            New("INSERT INTO accounts VALUES ('e@x', 7)"),
            NewSees("SELECT string_agg(legacy_id::text, ',' ORDER BY legacy_id) FROM accounts", "1,3,7,104,106"),
            OldSees("SELECT count(*) FROM accounts WHERE legacy_id IS NULL", "2"),
        ],
        after_complete: vec![
            ("SELECT string_agg(conname || ' ' || contype::text, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'accounts'::regclass", "accounts_email_key u,accounts_pk p"),
            ("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'legacy_id'", "t"),
            ("SELECT string_agg(legacy_id::text, ',' ORDER BY legacy_id) FROM accounts", "1,3,7,104,106"),
        ],
        after_rollback: vec![
            ("SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'accounts'::regclass", "accounts_email_key"),
            ("SELECT string_agg(coalesce(legacy_id::text, '-'), ',' ORDER BY email) FROM accounts", "1,-,3,-,7"),
        ],
    }
    .run()
    .await;
}

#[tokio::test]
async fn drop_multicolumn_constraint_frees_both_columns() {
    Scenario {
        name: "drop_multicolumn",
        setup: "CREATE TABLE tickets (id int PRIMARY KEY, sellers_name text, sellers_zip int,
                                      CONSTRAINT check_zip_name CHECK (sellers_name = 'alice' OR sellers_zip > 0));
                INSERT INTO tickets VALUES (1, 'alice', 0), (2, 'bob', 5);",
        migration: "operations:
  - drop_multicolumn_constraint:
      table: tickets
      name: check_zip_name
      up: {sellers_name: sellers_name, sellers_zip: sellers_zip}
      down: {sellers_zip: 'CASE WHEN sellers_name <> ''alice'' AND sellers_zip <= 0 THEN 1 ELSE sellers_zip END'}
",
        during: vec![
            New("INSERT INTO tickets VALUES (3, 'carol', -5)"),
            Old("INSERT INTO tickets VALUES (4, 'dave', 7)"),
            NewSees("SELECT sellers_zip FROM tickets WHERE id = 3", "-5"),
            OldSees("SELECT sellers_zip FROM tickets WHERE id = 3", "1"),
        ],
        after_complete: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname = 'check_zip_name'", "0"),
            ("SELECT string_agg(sellers_zip::text, ',' ORDER BY id) FROM tickets", "0,5,-5,7"),
        ],
        after_rollback: vec![
            ("SELECT count(*) FROM pg_constraint WHERE conname = 'check_zip_name'", "1"),
            ("SELECT string_agg(sellers_zip::text, ',' ORDER BY id) FROM tickets", "0,5,1,7"),
        ],
    }
    .run()
    .await;
}
