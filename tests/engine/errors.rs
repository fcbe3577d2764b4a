//! Bad input: clear errors that name the file, line, operation and field,
//! and nothing applied.

use crate::support::{self, leftovers, rows};

async fn assert_nothing_applied(db: &support::TestDb) {
    let c = db.client().await;
    assert_eq!(leftovers(&c, None).await, Vec::<String>::new());
    if rows(&c, "SELECT to_regclass('pgshift.migrations') IS NOT NULL").await == "t" {
        assert_eq!(
            rows(&c, "SELECT count(*) FROM pgshift.migrations").await,
            "0"
        );
    }
}

/// Each (file name, contents, expected text) is refused by `start` with an
/// error that contains the text and names the file (and the exit code, if given).
fn assert_start_refused(
    db: &support::TestDb,
    dir: &std::path::Path,
    cases: &[(&str, &str, &str)],
    code: Option<i32>,
) {
    for (name, yaml, want) in cases {
        let f = support::write_migration(dir, name, yaml);
        let out = db.pgshift(&["start", f.to_str().unwrap()]);
        out.failed();
        if let Some(code) = code {
            assert_eq!(out.code, Some(code), "{name}: {}", out.stderr);
        }
        assert!(
            out.stderr.contains(want),
            "{name}: expected {want:?} in {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("{name}.yaml")),
            "{name}: file not named: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn malformed_files_name_file_line_and_field() {
    let db = support::fresh_db("malformed").await;
    let dir = support::temp_dir("malformed");
    let cases = [
        ("bad_yaml", "operations:\n  - add_column: [unclosed\n", "bad_yaml.yaml:"),
        ("unknown_op", "operations:\n  - explode_table: {name: t}\n", "unknown variant `explode_table`"),
        ("unknown_field", "operations:\n  - drop_table: {name: t, cascade: true}\n", "operations[0] (drop_table)"),
        ("wrong_type", "operations:\n  - create_index: {table: t, name: i, columns: [{column: a}], unique: maybe}\n", "unique"),
        ("missing_field", "operations:\n  - rename_column: {table: t, from: a}\n", "missing field `to`"),
        ("two_keys", "operations:\n  - drop_table: {name: a}\n    drop_index: {name: b}\n", "exactly one key"),
    ];
    assert_start_refused(&db, &dir, &cases, Some(2));
    assert_nothing_applied(&db).await;
}

#[tokio::test]
async fn missing_tables_and_columns_are_refused_before_anything_runs() {
    let db = support::fresh_db("missing").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let dir = support::temp_dir("missing");
    let cases = [
        ("no_table", "operations:\n  - add_column: {table: nope, column: {name: a, type: int, nullable: true}}\n", "table \"nope\" does not exist"),
        ("no_column", "operations:\n  - rename_column: {table: users, from: nope, to: x}\n", "field `from`: column \"nope\" does not exist"),
        ("exists", "operations:\n  - add_column: {table: users, column: {name: name, type: int, nullable: true}}\n", "already exists"),
        ("nn_no_up", "operations:\n  - add_column: {table: users, column: {name: b, type: int}}\n", "give `up`"),
        ("type_no_up", "operations:\n  - alter_column: {table: users, column: name, type: int}\n", "`up` is required"),
        ("second_pk", "operations:\n  - create_constraint: {table: users, name: users_pk2, type: primary_key, columns: [name], up: {name: name}, down: {name: name}}\n", "already has a primary key (id)"),
        ("second_ok_first_bad", "operations:\n  - add_column: {table: users, column: {name: c, type: int, nullable: true}}\n  - drop_column: {table: users, column: ghost}\n", "operations[1] (drop_column)"),
    ];
    assert_start_refused(&db, &dir, &cases, None);
    assert_nothing_applied(&db).await;
    let c = db.client().await;
    assert_eq!(
        rows(
            &c,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users'"
        )
        .await,
        "2"
    );
}

#[tokio::test]
async fn a_failing_up_expression_rolls_the_start_back() {
    let db = support::fresh_db("failing_up").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, '1'), (2, 'two');")
        .await
        .unwrap();
    let dir = support::temp_dir("failing_up");
    let f = support::write_migration(&dir, "m1", "operations:\n  - alter_column: {table: t, column: v, type: int, up: CAST(v AS int), down: CAST(v AS text)}\n");
    let out = db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"]);
    out.failed();
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid input syntax for type integer"),
        "{}",
        out.stderr
    );
    assert_nothing_applied(&db).await;
}

#[tokio::test]
async fn all_pgroll_examples_parse() {
    let dir = match std::env::var("PGSHIFT_COMPAT_DIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => support::repo_root().join("../shared/compat/pgroll-examples"),
    };
    if !dir.exists() {
        eprintln!(
            "skipped: {} not found (set PGSHIFT_COMPAT_DIR)",
            dir.display()
        );
        return;
    }
    let files = pgshift::migration::files_in_dir(&dir).unwrap();
    assert_eq!(files.len(), 56);
    for f in files {
        pgshift::migration::Migration::load(&f).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test]
async fn rows_that_would_break_a_new_constraint_are_reported_and_nothing_is_applied() {
    let db = support::fresh_db("preflight").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY);
         INSERT INTO users VALUES (1), (2);
         CREATE TABLE posts (id int PRIMARY KEY, title text, author int, code text);
         INSERT INTO posts VALUES (1, 'a', 1, 'x'), (2, NULL, 7, 'x'), (3, NULL, 8, 'y'), (4, 'd', 2, 'z');",
    )
    .await
    .unwrap();
    let dir = support::temp_dir("preflight");
    let cases = [
        (
            "nn",
            "operations:\n  - alter_column: {table: posts, column: title, nullable: false, up: title}\n",
            "constraint \"title\" on table \"posts\": 2 existing rows would be NULL; first keys (id): 2; 3",
        ),
        (
            "fk",
            "operations:\n  - alter_column: {table: posts, column: author, references: {name: posts_author_fk, table: users, column: id}, up: author}\n",
            "constraint \"posts_author_fk\" on table \"posts\": 2 existing rows would have no match in \"public\".\"users\" (orphans); first keys (id): 2; 3",
        ),
        (
            "check",
            "operations:\n  - create_constraint: {type: check, table: posts, name: short_code, columns: [code], check: \"code <> 'x'\", up: {}, down: {}}\n",
            "constraint \"short_code\" on table \"posts\": 2 existing rows would fail the check; first keys (id): 1; 2",
        ),
        (
            "unique",
            "operations:\n  - create_constraint: {type: unique, table: posts, name: code_unique, columns: [code], up: {}, down: {}}\n",
            "constraint \"code_unique\" on table \"posts\": 2 existing rows would share a value (duplicates); first keys (id): 1 and 2",
        ),
    ];
    for (name, yaml, want) in cases {
        let f = support::write_migration(&dir, name, yaml);
        let plan = db.pgshift(&["plan", f.to_str().unwrap()]);
        plan.failed();
        assert!(plan.stderr.contains(want), "plan {name}: {}", plan.stderr);
        let out = db.pgshift(&["start", f.to_str().unwrap()]);
        out.failed();
        assert!(out.stderr.contains(want), "start {name}: {}", out.stderr);
        assert!(out.stderr.contains("Nothing was applied"), "{}", out.stderr);
        assert_nothing_applied(&db).await;
    }
    // An `up` that repairs the rows is accepted.
    let f = support::write_migration(
        &dir,
        "fixed",
        "operations:\n  - alter_column: {table: posts, column: title, nullable: false, up: \"coalesce(title, 'untitled')\"}\n",
    );
    db.pgshift(&["start", f.to_str().unwrap(), "--complete"])
        .ok();
    assert_eq!(
        rows(&c, "SELECT count(*) FROM posts WHERE title = 'untitled'").await,
        "2"
    );
}
