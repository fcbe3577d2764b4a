//! Real client programs through the proxy: psql (with `\copy` both ways),
//! pgbench in every query mode, and the psycopg 3 and node-postgres smoke
//! suites (installed by `make deps` under target/test-clients).

use crate::harness::{pg_bin, psql, run, TestProxy};
use crate::support;

#[tokio::test]
async fn psql_queries_and_copies_both_ways() {
    let db = support::fresh_db("px_psql").await;
    let p = TestProxy::start(&db).await;
    let url = p.url(&db.name);
    let dir = support::temp_dir("px-psql");
    let input = dir.join("in.csv");
    let data: String = (1..=5000).map(|i| format!("{i},name {i}\n")).collect();
    std::fs::write(&input, &data).unwrap();
    let output = dir.join("out.csv");
    let ran = psql(
        &url,
        &[
            "-c",
            "CREATE TABLE people (id int PRIMARY KEY, name text)",
            "-c",
            &format!("\\copy people FROM '{}' WITH (FORMAT csv)", input.display()),
            "-c",
            &format!(
                "\\copy (SELECT * FROM people ORDER BY id) TO '{}' WITH (FORMAT csv)",
                output.display()
            ),
            "-c",
            "SELECT count(*), sum(id) FROM people",
        ],
        &[],
    )
    .await;
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "5000|12502500");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), data);
    // Large objects: psql's \lo_import / \lo_export use the function-call
    // fast path (FunctionCall / FunctionCallResponse messages).
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("blob.bin"), &blob).unwrap();
    let ran = psql(
        &url,
        &[
            "-c",
            &format!("\\lo_import '{}'", dir.join("blob.bin").display()),
            "-c",
            "SELECT count(*) FROM pg_largeobject_metadata",
        ],
        &[],
    )
    .await;
    assert!(ran.ok, "{}", ran.stderr);
    assert!(ran.stdout.trim().ends_with('1'), "{}", ran.stdout);
    let oid = support::rows(
        &db.client().await,
        "SELECT oid FROM pg_largeobject_metadata",
    )
    .await;
    let ran = psql(
        &url,
        &[
            "-c",
            &format!("\\lo_export {oid} '{}'", dir.join("back.bin").display()),
        ],
        &[],
    )
    .await;
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(std::fs::read(dir.join("back.bin")).unwrap(), blob);
    // A failing statement in a transaction, then ROLLBACK, through psql.
    let ran = psql(
        &url,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "BEGIN; SELECT 1/0; ROLLBACK; SELECT 'after'",
        ],
        &[],
    )
    .await;
    assert!(ran.stderr.contains("division by zero"), "{}", ran.stderr);
}

#[tokio::test]
async fn pgbench_runs_in_simple_extended_and_prepared_modes() {
    let db = support::fresh_db("px_pgbench").await;
    let p = TestProxy::start(&db).await;
    let port = p.addr.port().to_string();
    let conn = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let mut init: Vec<&str> = vec!["-i", "-s", "1", "-q"];
    init.extend_from_slice(&conn);
    init.push(&db.name);
    let ran = run(&pg_bin("pgbench"), &init, &[], None).await;
    assert!(ran.ok, "pgbench -i: {}", ran.stderr);
    for mode in ["simple", "extended", "prepared"] {
        let mut args: Vec<&str> = vec!["-M", mode, "-c", "4", "-j", "2", "-t", "50", "-n"];
        args.extend_from_slice(&conn);
        args.push(&db.name);
        let ran = run(&pg_bin("pgbench"), &args, &[], None).await;
        assert!(ran.ok, "pgbench -M {mode}: {}{}", ran.stdout, ran.stderr);
        assert!(
            ran.stdout
                .contains("number of transactions actually processed: 200/200"),
            "pgbench -M {mode}: {}",
            ran.stdout
        );
        assert!(
            ran.stdout.contains("number of failed transactions: 0"),
            "{}",
            ran.stdout
        );
    }
}

fn client_tool(rel: &str) -> String {
    let p = support::repo_root().join("target/test-clients").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `make deps` (tests/support/deps.sh) to install the client libraries",
        p.display()
    );
    p.display().to_string()
}

#[tokio::test]
async fn psycopg3_smoke_suite_passes() {
    let db = support::fresh_db("px_psycopg").await;
    let p = TestProxy::start(&db).await;
    let python = client_tool("venv/bin/python");
    let script = support::repo_root().join("tests/clients/psycopg_smoke.py");
    let ran = run(
        &python,
        &[script.to_str().unwrap(), &p.url(&db.name), "-"],
        &[],
        None,
    )
    .await;
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("psycopg ok"), "{}", ran.stdout);
}

#[tokio::test]
async fn node_postgres_smoke_suite_passes() {
    let db = support::fresh_db("px_node").await;
    let p = TestProxy::start(&db).await;
    let modules = client_tool("node/node_modules");
    let script = support::repo_root().join("tests/clients/node_smoke.js");
    let ran = run(
        "node",
        &[script.to_str().unwrap(), &p.url(&db.name), "-"],
        &[("NODE_PATH", &modules)],
        None,
    )
    .await;
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("node-postgres ok"), "{}", ran.stdout);
}
