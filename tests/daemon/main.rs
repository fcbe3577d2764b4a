//! The daemon as a process against a real PostgreSQL 15: hand-off of the
//! backfill from `pgshift start`, routes learnt through LISTEN/NOTIFY,
//! leader takeover, health endpoints, configuration errors.

// Test helpers may panic on impossible values; a panic is a test failure.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::rows;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Daemon {
    child: tokio::process::Child,
    port: u16,
    metrics: String,
}

impl Daemon {
    async fn start(db: &support::TestDb, config: &str) -> Daemon {
        let dir = support::temp_dir(&format!("daemon-{}-{}", db.name, fastrand::u32(..)));
        let metrics = format!("127.0.0.1:{}", support::free_port());
        let file = dir.join("pgshift.toml");
        std::fs::write(
            &file,
            format!("postgres_url = '{}'\nlisten = '127.0.0.1:0'\nmetrics_listen = '{metrics}'\n{config}", db.url),
        )
        .unwrap();
        let (child, port) = support::spawn_server(
            &["daemon", "--config", file.to_str().unwrap()],
            &[("PGSHIFT_LOG", "pgshift=info")],
            "pgshift daemon listening on ",
        )
        .await;
        Daemon {
            child,
            port,
            metrics,
        }
    }

    fn url(&self, db: &str, query: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}{query}", self.port)
    }

    /// Wait until `/readyz` answers 200.
    async fn ready(&self) {
        until("the daemon to be ready", || async {
            self.http("/readyz").await.starts_with("HTTP/1.1 200")
        })
        .await;
    }

    async fn http(&self, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(&self.metrics).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::task::yield_now().await;
    }
}

const SETUP: &str = "CREATE TABLE users (id int PRIMARY KEY, name text, score text);
                     INSERT INTO users SELECT g, 'u' || g, (g % 10)::text FROM generate_series(1, 20000) g;";
const MIGRATION: &str = "operations:
  - alter_column: {table: users, column: score, type: integer, up: CAST(score AS integer), down: CAST(score AS text)}
  - rename_column: {table: users, from: name, to: full_name}
  - add_column: {table: users, up: '0', column: {name: visits, type: integer, nullable: false}}
";

/// A fresh database holding SETUP's `users`, a client on it, and a ready
/// daemon in front of it with `config` added to its config file.
async fn setup(test: &str, config: &str) -> (support::TestDb, tokio_postgres::Client, Daemon) {
    let db = support::fresh_db(test).await;
    let c = db.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let d = Daemon::start(&db, config).await;
    d.ready().await;
    (db, c, d)
}

/// MIGRATION as the file `m1.yaml` in a fresh directory for `test`.
fn migration_file(test: &str) -> std::path::PathBuf {
    support::write_migration(&support::temp_dir(test), "m1", MIGRATION)
}

/// Wait until a daemon's copier holds the leader lock of schema `public`.
async fn copier_leads(c: &tokio_postgres::Client) {
    until("a copier to lead", || async {
        rows(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('copier:public')::oid AND granted").await == "1"
    })
    .await;
}

#[tokio::test]
async fn start_hands_the_backfill_to_the_daemon_and_the_proxy_learns_the_version() {
    let (db, c, d) = setup("d_handoff", "").await;
    copier_leads(&c).await;
    let f = migration_file("d-handoff");
    let out = db.pgshift(&["start", f.to_str().unwrap(), "--wait", "--progress", "log"]);
    out.ok();
    assert!(out.stderr.contains("runs the backfill"), "{}", out.stderr);
    assert_eq!(
        rows(&c, "SELECT phase FROM pgshift.migrations").await,
        "active"
    );
    // Through the daemon's proxy, the new version appears without a restart.
    let new_url = d.url(&db.name, "?options=-c%20pgshift.version%3Dm1");
    until("the proxy to learn version m1", || async {
        tokio_postgres::connect(&new_url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let new = support::connect(&new_url).await;
    assert_eq!(
        rows(
            &new,
            "SELECT sum(score), count(full_name), sum(visits) FROM users"
        )
        .await,
        "90000|20000|0"
    );
    db.pgshift(&["complete"]).ok();
    let metrics = d.http("/metrics").await;
    assert!(metrics.contains("pgshift_copier_leader 1"), "{metrics}");
    assert!(d.http("/healthz").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn another_daemon_takes_over_a_backfill_when_the_leader_dies() {
    let db = support::fresh_db("d_takeover").await;
    let c = db.client().await;
    c.batch_execute(SETUP).await.unwrap();
    // Slow batches so the leader dies mid-backfill.
    let slow = "[backfill]\nbatch_size = 200\nbatch_delay_ms = 20\n";
    let mut first = Daemon::start(&db, slow).await;
    copier_leads(&c).await;
    let second = Daemon::start(&db, slow).await;
    let f = migration_file("d-takeover");
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
    until("the first batches", || async {
        rows(
            &c,
            "SELECT rows_done > 1000 FROM pgshift.backfills WHERE table_name = 'users'",
        )
        .await
            == "t"
    })
    .await;
    first.child.kill().await.unwrap(); // SIGKILL, mid-backfill
    until("the second daemon to finish the backfill", || async {
        rows(&c, "SELECT phase FROM pgshift.migrations").await == "active"
    })
    .await;
    assert_eq!(
        rows(&c, "SELECT rows_done, rows_total FROM pgshift.backfills").await,
        "20000|20000"
    );
    db.pgshift(&["complete"]).ok();
    assert_eq!(
        rows(&c, "SELECT count(*), sum(score), count(full_name), count(*) FILTER (WHERE visits = 0) FROM users").await,
        "20000|90000|20000|20000"
    );
    drop(second);
}

#[tokio::test]
async fn a_bad_config_file_names_the_key_and_line() {
    let dir = support::temp_dir("d-badconfig");
    let file = dir.join("pgshift.toml");
    std::fs::write(
        &file,
        "postgres_url = 'postgres://x'\n[backfill]\nbatch_target = 100\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["daemon", "--config", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pgshift.toml")
            && err.contains("line 3")
            && err.contains("unknown field `batch_target`"),
        "{err}"
    );
}

/// A client loop through the proxy until `stop`; returns (statements, failures).
async fn client_loop(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    new_side: bool,
    first_id: i32,
) -> (u64, Vec<String>) {
    use std::sync::atomic::Ordering;
    let c = support::connect(&url).await;
    let (mut ok, mut failed) = (0u64, Vec::new());
    let mut id = first_id;
    while !stop.load(Ordering::Acquire) {
        id += 1;
        let target = 1 + (id % 20000);
        let stmts = if new_side {
            vec![
                format!("INSERT INTO users (id, full_name, score, visits) VALUES ({id}, 'new{id}', 7, 1)"),
                format!("UPDATE users SET score = score + 0, visits = visits + 1 WHERE id = {target}"),
                format!("SELECT full_name, score + 1, visits FROM users WHERE id = {target}"),
            ]
        } else {
            vec![
                format!("INSERT INTO users (id, name, score) VALUES ({id}, 'old{id}', '3')"),
                format!("UPDATE users SET name = name WHERE id = {target}"),
                format!("SELECT name, score || '' FROM users WHERE id = {target}"),
            ]
        };
        for s in stmts {
            match c.batch_execute(&s).await {
                Ok(()) => ok += 1,
                Err(e) => failed.push(format!("{s}: {e:?}")),
            }
        }
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_clients_see_no_failure_through_a_whole_migration() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (db, c, d) = setup("d_zero", "[backfill]\nbatch_size = 2000\n").await;
    let stop_old = Arc::new(AtomicBool::new(false));
    let stop_new = Arc::new(AtomicBool::new(false));
    let old: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(client_loop(
                d.url(&db.name, "?application_name=old-app"),
                stop_old.clone(),
                false,
                100_000 + i * 100_000,
            ))
        })
        .collect();
    let f = migration_file("d-zero");
    let fs = f.to_str().unwrap().to_string();
    db.pgshift_async(&["start", &fs, "--wait", "--progress", "none"])
        .await
        .ok();
    let new_url = d.url(
        &db.name,
        "?application_name=new-app&options=-c%20pgshift.version%3Dm1",
    );
    until("the proxy to learn version m1", || async {
        tokio_postgres::connect(&new_url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let new: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(client_loop(
                new_url.clone(),
                stop_new.clone(),
                true,
                500_000 + i * 100_000,
            ))
        })
        .collect();
    // Both versions run together for a while, then the old app is retired.
    until("both sides to have written", || async {
        rows(&c, "SELECT count(*) FILTER (WHERE id BETWEEN 100000 AND 499999) > 50 AND count(*) FILTER (WHERE id >= 500000) > 50 FROM users").await == "t"
    })
    .await;
    stop_old.store(true, Ordering::Release);
    let mut total = 0;
    for t in old {
        let (n, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "old-version failures: {failed:?}");
        total += n;
    }
    db.pgshift_async(&["complete", "--drain-timeout", "5"])
        .await
        .ok();
    // The new version keeps working after complete.
    let before = rows(&c, "SELECT count(*) FROM users").await;
    until("new clients to write after complete", || async {
        rows(&c, "SELECT count(*) FROM users").await != before
    })
    .await;
    stop_new.store(true, Ordering::Release);
    for t in new {
        let (n, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "new-version failures: {failed:?}");
        total += n;
    }
    assert!(total > 300, "only {total} statements ran");
    assert_eq!(
        rows(&c, "SELECT count(*) FILTER (WHERE full_name IS NULL OR score IS NULL OR visits IS NULL), count(*) FILTER (WHERE id <= 20000 AND score <> id % 10) FROM users").await,
        "0|0"
    );
    assert_eq!(rows(&c, "SELECT count(*) FROM users WHERE id BETWEEN 100000 AND 499999 AND (score <> 3 OR full_name NOT LIKE 'old%')").await, "0");
}

#[tokio::test]
async fn complete_refuses_while_old_sessions_remain_then_drains_them() {
    let (db, c, d) = setup("d_drain", "").await;
    let (old, old_conn) = tokio_postgres::connect(
        &d.url(&db.name, "?application_name=legacy-report"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let old_conn = tokio::spawn(old_conn);
    assert_eq!(rows(&old, "SELECT count(name) FROM users").await, "20000");
    let f = migration_file("d-drain");
    db.pgshift(&["start", f.to_str().unwrap(), "--wait", "--progress", "none"])
        .ok();
    let new_url = d.url(&db.name, "?options=-c%20pgshift.version%3Dm1");
    until("the proxy to learn m1", || async {
        tokio_postgres::connect(&new_url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let new = support::connect(&new_url).await;
    until("the daemon to report both sessions", || async {
        rows(
            &c,
            "SELECT jsonb_array_length(sessions) FROM pgshift.daemons",
        )
        .await
            == "2"
    })
    .await;
    let refused = db.pgshift(&["complete"]);
    refused.failed();
    assert!(
        refused
            .stderr
            .contains("1 session(s) still use another version than \"m1\""),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("application \"legacy-report\""),
        "{}",
        refused.stderr
    );
    assert_eq!(
        rows(&c, "SELECT phase FROM pgshift.migrations").await,
        "active"
    );
    db.pgshift(&["complete", "--drain-timeout", "1"]).ok();
    let err = old_conn.await.unwrap().unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "57P01");
    assert!(
        db_err.message().contains("version retired"),
        "{}",
        db_err.message()
    );
    assert_eq!(
        rows(&new, "SELECT count(full_name) FROM users").await,
        "20000"
    );
}

#[tokio::test]
async fn pause_holds_the_copier_and_resume_lets_it_finish() {
    let (db, c, d) = setup(
        "d_pause",
        "[backfill]\nbatch_size = 200\nbatch_delay_ms = 10\n",
    )
    .await;
    copier_leads(&c).await;
    let f = migration_file("d-pause");
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
    until("the first batches", || async {
        rows(
            &c,
            "SELECT coalesce(max(rows_done), 0) > 0 FROM pgshift.backfills",
        )
        .await
            == "t"
    })
    .await;
    db.pgshift(&["pause"]).ok();
    until("the daemon to report the pause", || async {
        rows(
            &c,
            "SELECT throttle FROM pgshift.daemons WHERE updated_at > now() - interval '5 seconds'",
        )
        .await
            == "paused by an operator"
    })
    .await;
    // The copier stops at its next batch boundary (an in-flight batch commits).
    until("the copier to wait", || async {
        d.http("/metrics")
            .await
            .contains("pgshift_backfill_throttled 1")
    })
    .await;
    // Let a batch that was already running commit (a heartbeat later), then
    // two more heartbeats must pass without a row more.
    let beat = rows(&c, "SELECT updated_at FROM pgshift.daemons").await;
    until("a heartbeat", || async {
        rows(&c, "SELECT updated_at FROM pgshift.daemons").await != beat
    })
    .await;
    let held = rows(&c, "SELECT rows_done FROM pgshift.backfills").await;
    let beat = rows(&c, "SELECT updated_at FROM pgshift.daemons").await;
    until("two heartbeats", || async {
        rows(&c, "SELECT updated_at FROM pgshift.daemons").await != beat
    })
    .await;
    let beat = rows(&c, "SELECT updated_at FROM pgshift.daemons").await;
    until("two heartbeats", || async {
        rows(&c, "SELECT updated_at FROM pgshift.daemons").await != beat
    })
    .await;
    assert_eq!(
        rows(&c, "SELECT rows_done FROM pgshift.backfills").await,
        held
    );
    assert_ne!(held, "20000");
    let status = db.pgshift(&["status"]);
    assert!(
        status
            .stdout
            .contains("copier held back: paused by an operator"),
        "{}",
        status.stdout
    );
    // A batch size set now applies to the running backfill from its next batch.
    let held_batches: i64 = rows(&c, "SELECT batches FROM pgshift.backfills")
        .await
        .parse()
        .unwrap();
    db.pgshift(&["set", "batch_size", "100"]).ok();
    db.pgshift(&["resume"]).ok();
    until("the backfill to finish", || async {
        rows(&c, "SELECT phase FROM pgshift.migrations").await == "active"
    })
    .await;
    assert_eq!(
        rows(&c, "SELECT rows_done FROM pgshift.backfills").await,
        "20000"
    );
    let batches: i64 = rows(&c, "SELECT batches FROM pgshift.backfills")
        .await
        .parse()
        .unwrap();
    let left: i64 = 20000 - held.parse::<i64>().unwrap();
    assert!(
        batches - held_batches >= left / 100,
        "{left} rows after the pause took {} batches: the new batch size of 100 was not applied",
        batches - held_batches
    );
    let bad = db.pgshift(&["set", "rate_limit", "fast"]);
    bad.failed();
    assert!(
        bad.stderr
            .contains("setting rate_limit: \"fast\" is not valid"),
        "{}",
        bad.stderr
    );
}

/// Does a daemon's copier hold the schema's lock (it does while it backfills)?
async fn copier_holds_schema_lock(c: &tokio_postgres::Client) -> bool {
    rows(
        c,
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE l.locktype = 'advisory' AND l.objid = hashtext('public')::oid AND l.granted
                 AND a.application_name = 'pgshift-copier'",
    )
    .await
        == "1"
}

#[tokio::test]
async fn rollback_stops_the_daemons_copier_mid_backfill_and_a_new_start_backfills_again() {
    let (db, c, _d) = setup(
        "d_rollback",
        "[backfill]\nbatch_size = 200\nbatch_delay_ms = 10\n",
    )
    .await;
    copier_leads(&c).await;
    let f = migration_file("d-rollback");
    // Paused: the copier has taken the backfill (and the schema's lock) and
    // waits, the way an operator or the latency throttle holds it.
    db.pgshift(&["pause"]).ok();
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
    until("the copier to take the backfill", || async {
        copier_holds_schema_lock(&c).await
    })
    .await;
    let out = db.pgshift(&["rollback"]);
    out.ok();
    assert!(
        out.stderr
            .contains("asking the daemon's copier to stop backfilling"),
        "{}",
        out.stderr
    );
    assert_eq!(
        rows(&c, "SELECT count(*) FROM pgshift.migrations").await,
        "0"
    );
    assert!(support::leftovers(&c, None).await.is_empty());
    assert_eq!(
        rows(&c, "SELECT count(*), sum(score::int) FROM users").await,
        "20000|90000"
    );
    // The same file again: the copier takes it on at once (it stepped aside
    // only for the rollback) and finishes.
    db.pgshift(&["resume"]).ok();
    db.pgshift(&["start", f.to_str().unwrap(), "--wait"]).ok();
    assert_eq!(
        rows(
            &c,
            "SELECT phase, (SELECT sum(rows_done) FROM pgshift.backfills) FROM pgshift.migrations"
        )
        .await,
        "active|20000"
    );
    db.pgshift(&["complete"]).ok();
    assert_eq!(
        rows(
            &c,
            "SELECT sum(score), count(full_name), sum(visits) FROM users"
        )
        .await,
        "90000|20000|0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_latency_bound_rests_the_copier_to_measure_the_applications_own_p99() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (db, c, d) = setup("d_ratio", "[backfill]\nbatch_size = 500\n").await;
    let bad = db.pgshift(&["set", "max_p99_ratio", "0.8"]);
    bad.failed();
    assert!(
        bad.stderr
            .contains("setting max_p99_ratio: \"0.8\" is not valid"),
        "{}",
        bad.stderr
    );
    db.pgshift(&["set", "max_p99_ratio", "1.5"]).ok();
    // Traffic through the proxy for the probes to measure.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(client_loop(
        d.url(&db.name, ""),
        stop.clone(),
        false,
        100_000,
    ));
    // The copier rests for probes before its first batch.
    let f = migration_file("d-ratio");
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
    until("a probe with the copier resting", || async {
        rows(
            &c,
            "SELECT coalesce(string_agg(throttle, ''), '') FROM pgshift.daemons WHERE updated_at > now() - interval '5 seconds'",
        )
        .await
        .starts_with("resting for a few seconds to measure the application's own p99")
    })
    .await;
    until("the application's own p99 in the metrics", || async {
        d.http("/metrics").await.lines().any(|l| {
            l.strip_prefix("pgshift_proxy_own_p99_seconds ")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
    })
    .await;
    // Between probes the copier works: a whole backfill finishes under load.
    until("the backfill to finish", || async {
        rows(&c, "SELECT phase FROM pgshift.migrations").await == "active"
    })
    .await;
    stop.store(true, Ordering::Release);
    let (ok, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 0);
    assert_eq!(
        rows(
            &c,
            "SELECT count(*) FROM users WHERE _pgshift_new_score IS NULL"
        )
        .await,
        "0"
    );
}

async fn admin(port: u16, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "admin",
            "-d",
            "pgshift",
            "-c",
            sql,
        ])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn the_admin_console_shows_state_and_controls_the_copier() {
    let admin_port = support::free_port();
    let (db, c, d) = setup(
        "d_admin",
        &format!("admin_listen = '127.0.0.1:{admin_port}'\n"),
    )
    .await;
    let f = migration_file("d-admin");
    db.pgshift(&["start", f.to_str().unwrap(), "--wait", "--progress", "none"])
        .ok();
    let new_url = d.url(
        &db.name,
        "?application_name=new-app&options=-c%20pgshift.version%3Dm1",
    );
    until("the proxy to learn m1", || async {
        tokio_postgres::connect(&new_url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let _session = support::connect(&new_url).await;

    let (ok, out, err) = admin(admin_port, "SHOW MIGRATIONS").await;
    assert!(ok, "{err}");
    assert!(out.starts_with("m1|active|public_m1|"), "{out}");
    let (_, out, _) = admin(admin_port, "SHOW VERSIONS").await;
    assert!(out.contains("m1|public_m1, public|false|1"), "{out}");
    let (_, out, _) = admin(admin_port, "show sessions;").await;
    assert!(
        out.contains("|m1|postgres|") && out.contains("new-app"),
        "{out}"
    );
    let (_, out, _) = admin(admin_port, "SHOW BACKFILL").await;
    assert!(out.starts_with("m1|users|20000|20000|"), "{out}");

    let (ok, out, err) = admin(admin_port, "PAUSE BACKFILL").await;
    assert!(ok, "{err}");
    assert_eq!(out, "PAUSE BACKFILL");
    assert_eq!(
        rows(
            &c,
            "SELECT value FROM pgshift.settings WHERE key = 'paused'"
        )
        .await,
        "true"
    );
    admin(admin_port, "RESUME BACKFILL").await;
    assert_eq!(
        rows(
            &c,
            "SELECT value FROM pgshift.settings WHERE key = 'paused'"
        )
        .await,
        "false"
    );
    let (ok, _, err) = admin(admin_port, "SET rate_limit = 5000").await;
    assert!(ok, "{err}");
    let (_, out, _) = admin(admin_port, "SHOW SETTINGS").await;
    assert!(out.contains("rate_limit|5000|"), "{out}");
    let (ok, _, err) = admin(admin_port, "SET rate_limit = lots").await;
    assert!(
        !ok && err.contains("setting rate_limit: \"lots\" is not valid"),
        "{err}"
    );
    let (ok, _, err) = admin(admin_port, "DROP TABLE users").await;
    assert!(
        !ok && err.contains("unknown command") && err.contains("SHOW MIGRATIONS"),
        "{err}"
    );
    assert_eq!(rows(&c, "SELECT count(*) FROM users").await, "20000");
}

/// Every `pgshift_*` name an expression refers to, as exported (histogram
/// series keep their `_bucket` suffix).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("pgshift_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_string());
        i = end;
    }
    out
}

#[tokio::test]
async fn deploy_rules_and_dashboard_use_only_metrics_the_daemon_exports() {
    let root = support::repo_root();
    let rules_path = root.join("deploy/prometheus/pgshift-alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let dashboard =
        std::fs::read_to_string(root.join("deploy/grafana/pgshift-dashboard.json")).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    let mut exprs = String::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    match tokio::process::Command::new("promtool")
        .args(["check", "rules", rules_path.to_str().unwrap()])
        .output()
        .await
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "promtool is not installed (Debian package prometheus); rule syntax not checked"
        ),
    }

    // A daemon that has done everything once: a handed-off backfill, a
    // pause, proxied queries and an error, a gate hold, a complete.
    // A hold long enough to be seen by a heartbeat on a loaded machine (a CI
    // run once missed one within the default 10 s).
    let (db, c, d) = setup(
        "d_deploy",
        "[backfill]\nbatch_size = 5000\n[proxy]\ngate_max_hold_ms = 120000\n",
    )
    .await;
    db.pgshift(&["pause"]).ok();
    let f = migration_file("d-deploy");
    db.pgshift(&["start", f.to_str().unwrap()]).ok();
    until("the copier to wait", || async {
        d.http("/metrics")
            .await
            .contains("pgshift_backfill_throttled 1")
    })
    .await;
    db.pgshift(&["resume"]).ok();
    until("the backfill", || async {
        rows(&c, "SELECT phase FROM pgshift.migrations").await == "active"
    })
    .await;
    let new_url = d.url(&db.name, "?options=-c%20pgshift.version%3Dm1");
    until("the proxy to learn m1", || async {
        tokio_postgres::connect(&new_url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let s = support::connect(&new_url).await;
    assert!(s
        .batch_execute("SELECT * FROM no_such_table")
        .await
        .is_err());
    let mut raw = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", d.port))
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 2, 0, 3, 0, 0]).await.unwrap(); // a bad startup packet
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink).await;
    // Hold a session at the gate, then let it go.
    c.batch_execute("SELECT pg_notify('pgshift', 'req|close_gate|t1|public')")
        .await
        .unwrap();
    until("the gate to close", || async {
        d.http("/metrics").await.contains("pgshift_gate_closed 1")
    })
    .await;
    let held = tokio::spawn(async move { rows(&s, "SELECT 1").await });
    until("a held session", || async {
        rows(&c, "SELECT count(*) FROM pgshift.daemons, jsonb_array_elements(sessions) e WHERE e->>'state' = 'held'").await == "1"
    })
    .await;
    c.batch_execute("SELECT pg_notify('pgshift', 'req|open_gate|t2|public')")
        .await
        .unwrap();
    assert_eq!(held.await.unwrap(), "1");
    db.pgshift(&["complete"]).ok();
    until("lock attempts to be exported", || async {
        d.http("/metrics")
            .await
            .contains("pgshift_lock_attempts_total{outcome=\"granted\"}")
    })
    .await;

    let exported = d.http("/metrics").await;
    let mut missing = Vec::new();
    for name in metric_names(&rules).into_iter().chain(metric_names(&exprs)) {
        let present = exported.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        });
        if !present {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/ refers to metrics the daemon does not export: {missing:?}\n{exported}"
    );
    assert!(
        exported.contains("# HELP pgshift_backfill_eta_seconds"),
        "HELP texts are exported"
    );
    assert!(
        exported.contains("pgshift_build_info{version="),
        "{exported}"
    );
}
