//! Sessions routed to two versions at once see their own shapes; the
//! version comes from `options`, a startup parameter, a rule or the default;
//! an unknown version is refused naming the known ones.

use crate::harness::{client, error_of, Raw, TestProxy};
use crate::support::{self, rows};
use pgshift_proxy::Rule;

const SETUP: &str = "CREATE TABLE users (id int PRIMARY KEY, name text);
                     INSERT INTO users VALUES (1, 'ada'), (2, 'bob');";
const RENAME: &str = "operations:\n  - rename_column: {table: users, from: name, to: full_name}\n";

async fn started(test: &str) -> (support::TestDb, std::path::PathBuf) {
    let db = support::fresh_db(test).await;
    db.client().await.batch_execute(SETUP).await.unwrap();
    let dir = support::temp_dir(test);
    let f = support::write_migration(&dir, "m1", RENAME);
    db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
        .ok();
    (db, f)
}

#[tokio::test]
async fn old_and_new_sessions_see_their_own_shapes_and_each_others_rows() {
    let (db, _) = started("px_route").await;
    let p = TestProxy::start(&db).await;
    let old = client(&p.url(&db.name)).await;
    let new = client(&p.url_with("postgres", &db.name, "options=-c%20pgshift.version%3Dm1")).await;
    assert_eq!(
        rows(
            &old,
            "SELECT current_setting('pgshift.version', true) IS NULL"
        )
        .await,
        "t"
    );
    assert_eq!(
        rows(&new, "SHOW search_path").await,
        "\"public_m1\", \"public\""
    );
    old.batch_execute("INSERT INTO users (id, name) VALUES (3, 'cy')")
        .await
        .unwrap();
    new.batch_execute("INSERT INTO users (id, full_name) VALUES (4, 'dee')")
        .await
        .unwrap();
    assert_eq!(
        rows(&old, "SELECT string_agg(name, ',' ORDER BY id) FROM users").await,
        "ada,bob,cy,dee"
    );
    assert_eq!(
        rows(
            &new,
            "SELECT string_agg(full_name, ',' ORDER BY id) FROM users"
        )
        .await,
        "ada,bob,cy,dee"
    );
    let err = new
        .batch_execute("SELECT name FROM users")
        .await
        .unwrap_err();
    assert_eq!(
        err.code().unwrap().code(),
        "42703",
        "the new shape has no `name`"
    );
}

#[tokio::test]
async fn a_startup_parameter_or_a_rule_selects_the_version() {
    let (db, _) = started("px_rule").await;
    let p = TestProxy::start(&db).await;
    let (mut raw, msgs) = Raw::startup(
        p.addr,
        &[
            ("user", "postgres"),
            ("database", &db.name),
            ("pgshift.version", "m1"),
        ],
    )
    .await;
    assert_eq!(msgs.last().unwrap().0, b'Z', "{:?}", error_of(&msgs));
    assert_eq!(
        raw.query_value("SELECT current_setting('pgshift.version')")
            .await
            .as_deref(),
        Some("m1")
    );
    assert_eq!(
        raw.query_value("SELECT count(full_name) FROM users")
            .await
            .as_deref(),
        Some("2")
    );

    let mut table = p.proxy.router.current().as_ref().clone();
    table
        .rules
        .push(Rule::parse("application_name=new-app,version=m1").unwrap());
    p.proxy.router.set(table);
    let by_rule = client(&p.url_with("postgres", &db.name, "application_name=new-app")).await;
    assert_eq!(
        rows(&by_rule, "SELECT current_setting('pgshift.version')").await,
        "m1"
    );
    let other = client(&p.url_with("postgres", &db.name, "application_name=old-app")).await;
    assert_eq!(
        rows(
            &other,
            "SELECT current_setting('pgshift.version', true) IS NULL"
        )
        .await,
        "t"
    );
}

#[tokio::test]
async fn an_unknown_version_gets_a_fatal_error_naming_the_known_ones() {
    let (db, _) = started("px_unknown").await;
    let p = TestProxy::start(&db).await;
    let err = tokio_postgres::connect(
        &p.url_with("postgres", &db.name, "options=-c%20pgshift.version%3Dnope"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .unwrap();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.severity(), "FATAL");
    assert_eq!(db_err.code().code(), "3F000");
    assert_eq!(
        db_err.message(),
        "schema version \"nope\" does not exist; known versions: m1"
    );
    // The proxy is still serving.
    let c = client(&p.url(&db.name)).await;
    assert_eq!(rows(&c, "SELECT 1").await, "1");
}

#[tokio::test]
async fn after_complete_new_sessions_default_to_the_new_version_and_old_ones_keep_theirs() {
    let (db, _) = started("px_default").await;
    let p = TestProxy::start(&db).await;
    let before = client(&p.url(&db.name)).await;
    db.pgshift(&["complete"]).ok();
    p.refresh(&db).await;
    let after = client(&p.url(&db.name)).await;
    assert_eq!(
        rows(&after, "SELECT current_setting('pgshift.version')").await,
        "m1"
    );
    assert_eq!(
        rows(
            &after,
            "SELECT string_agg(full_name, ',' ORDER BY id) FROM users"
        )
        .await,
        "ada,bob"
    );
    // The session opened before the switch is untouched by the table change.
    assert_eq!(
        rows(
            &before,
            "SELECT current_setting('pgshift.version', true) IS NULL"
        )
        .await,
        "t"
    );
}
