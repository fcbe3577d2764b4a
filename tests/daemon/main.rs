//! The daemon as a process against a real PostgreSQL 15: hand-off of the
//! backfill from `pgshift start`, routes learnt through LISTEN/NOTIFY,
//! leader takeover, health endpoints, configuration errors.

// Test helpers may panic on impossible values; a panic is a test failure.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};
use support::rows;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct Daemon {
    child: tokio::process::Child,
    port: u16,
    metrics: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    async fn start(db: &support::TestDb, config: &str) -> Daemon {
        let dir = support::temp_dir(&format!("daemon-{}-{}", db.name, fastrand::u32(..)));
        let metrics = format!("127.0.0.1:{}", free_port());
        let file = dir.join("pgshift.toml");
        std::fs::write(
            &file,
            format!("postgres_url = '{}'\nlisten = '127.0.0.1:0'\nmetrics_listen = '{metrics}'\n{config}", db.url),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .args(["daemon", "--config", file.to_str().unwrap()])
            .env_remove("PGSHIFT_POSTGRES_URL")
            .env("PGSHIFT_LOG", "pgshift=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        let addr = first
            .strip_prefix("pgshift daemon listening on ")
            .unwrap_or_else(|| panic!("{first}"));
        let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Daemon {
            child,
            port,
            metrics,
        }
    }

    fn url(&self, db: &str, query: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}{query}", self.port)
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

#[tokio::test]
async fn start_hands_the_backfill_to_the_daemon_and_the_proxy_learns_the_version() {
    let db = support::fresh_db("d_handoff").await;
    let c = db.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let d = Daemon::start(&db, "").await;
    until("the daemon to lead the copier and be ready", || async {
        d.http("/readyz").await.starts_with("HTTP/1.1 200")
            && rows(
                &c,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshift-copier'",
            )
            .await
                == "1"
    })
    .await;
    // The copier leads once its advisory lock shows.
    until("copier leadership", || async {
        rows(&c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('copier:public')::oid").await == "1"
    })
    .await;
    let dir = support::temp_dir("d-handoff");
    let f = support::write_migration(&dir, "m1", MIGRATION);
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
    until("the first daemon to lead", || async {
        rows(&c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('copier:public')::oid AND granted").await == "1"
    })
    .await;
    let second = Daemon::start(&db, slow).await;
    let dir = support::temp_dir("d-takeover");
    let f = support::write_migration(&dir, "m1", MIGRATION);
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
