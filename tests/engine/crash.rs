//! Crash safety: the process dies at every step of start, complete and
//! rollback (after the step commits, and with its transaction still open);
//! running the same command again finishes the job with every row correct.
//! And a real SIGKILL in the middle of a backfill, then resume.

use crate::support::{self, leftovers, rows};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, price text, label text);
                     INSERT INTO items SELECT g, (g % 100)::text, 'l' || g FROM generate_series(1, 3000) g;";
const MIGRATION: &str = "operations:
  - alter_column: {table: items, column: price, type: integer, up: CAST(price AS integer), down: CAST(price AS text)}
  - add_column:
      table: items
      up: upper(label)
      column: {name: code, type: text, nullable: false, unique: true}
  - create_index: {table: items, name: items_label, columns: [{column: label}]}
";

/// Did the crash hook kill the process (SIGKILL, or exit 137 as a fallback)?
fn killed(out: &support::Output) -> bool {
    out.code.is_none() || out.code == Some(137)
}

async fn check_final(db: &support::TestDb) {
    let c = db.client().await;
    assert_eq!(
        rows(
            &c,
            "SELECT count(*), sum(price), count(*) FILTER (WHERE code = upper(label)) FROM items"
        )
        .await,
        "3000|148500|3000"
    );
    assert_eq!(leftovers(&c, Some("public_m1")).await, Vec::<String>::new());
}

#[tokio::test]
async fn every_step_of_start_and_complete_survives_a_crash() {
    let n_start = 5; // two column steps, two index builds, trigger, version schema
    for (phase, n) in [
        ("starting", n_start + 1),
        ("completing", 4),
        ("backfill", 2),
    ] {
        for step in 1..=n {
            for before in [false, true] {
                if phase == "backfill" && before {
                    continue;
                }
                let db = support::fresh_db("crash").await;
                db.client().await.batch_execute(SETUP).await.unwrap();
                let dir = support::temp_dir(&format!("crash-{phase}-{step}-{before}"));
                let f = support::write_migration(&dir, "m1", MIGRATION);
                let f = f.to_str().unwrap();
                let at = format!(
                    "{phase}:{step}{}",
                    if before { ":before-commit" } else { "" }
                );
                let args: &[&str] = &[
                    "start",
                    f,
                    "--progress",
                    "none",
                    "--backfill-batch-size",
                    "1000",
                ];
                if phase == "completing" {
                    db.pgshift(args).ok();
                    let out = db.pgshift_env(&["complete"], &[("PGSHIFT_CRASH_AT", &at)]);
                    if !killed(&out) {
                        // fewer steps than `n`: nothing to crash at
                        continue;
                    }
                    db.pgshift(&["complete"]).ok();
                } else {
                    let out = db.pgshift_env(args, &[("PGSHIFT_CRASH_AT", &at)]);
                    if !killed(&out) {
                        out.ok();
                        continue;
                    }
                    db.pgshift(args).ok();
                    db.pgshift(&["complete"]).ok();
                }
                check_final(&db).await;
            }
        }
    }
}

#[tokio::test]
async fn every_step_of_rollback_survives_a_crash() {
    for step in 1..=5 {
        let db = support::fresh_db("crash_rb").await;
        db.client().await.batch_execute(SETUP).await.unwrap();
        let dir = support::temp_dir(&format!("crash-rb-{step}"));
        let f = support::write_migration(&dir, "m1", MIGRATION);
        db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
            .ok();
        let out = db.pgshift_env(
            &["rollback"],
            &[("PGSHIFT_CRASH_AT", &format!("rolling_back:{step}"))],
        );
        if killed(&out) {
            db.pgshift(&["rollback"]).ok();
        } else {
            out.ok();
        }
        let c = db.client().await;
        assert_eq!(leftovers(&c, None).await, Vec::<String>::new());
        assert_eq!(
            rows(&c, "SELECT count(*), sum(price::int) FROM items").await,
            "3000|148500"
        );
        assert_eq!(
            rows(&c, "SELECT count(*) FROM pgshift.migrations").await,
            "0"
        );
    }
}

#[tokio::test]
async fn sigkill_mid_backfill_then_resume_loses_no_row() {
    let db = support::fresh_db("sigkill").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, v int);
             INSERT INTO big SELECT g, g FROM generate_series(1, 200000) g;",
        )
        .await
        .unwrap();
    let dir = support::temp_dir("sigkill");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - add_column:\n      table: big\n      up: v * 2\n      column: {name: doubled, type: bigint, nullable: false}\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args([
            "start",
            f.to_str().unwrap(),
            "--progress",
            "none",
            "--backfill-batch-size",
            "500",
        ])
        .env("PGSHIFT_POSTGRES_URL", &db.url)
        .env("PGSHIFT_LOG", "pgshift=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut committed = 0;
    for line in stderr.lines() {
        if line.unwrap().contains("backfill batch committed") {
            committed += 1;
            if committed == 20 {
                break;
            }
        }
    }
    assert_eq!(committed, 20, "the copier never got going");
    child.kill().unwrap(); // SIGKILL, mid-batch
    child.wait().unwrap();
    let c = db.client().await;
    let done: i64 = c
        .query_one("SELECT rows_done FROM pgshift.backfills", &[])
        .await
        .unwrap()
        .get(0);
    assert!((20 * 500..200_000).contains(&done), "rows_done {done}");
    // The mark and the rows agree: every row below the mark is done.
    assert_eq!(
        rows(
            &c,
            "SELECT count(*) FROM big WHERE _pgshift_needs_backfill IS FALSE"
        )
        .await,
        done.to_string()
    );
    db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none"])
        .ok();
    db.pgshift(&["complete"]).ok();
    assert_eq!(
        rows(
            &c,
            "SELECT count(*), count(*) FILTER (WHERE doubled = v * 2) FROM big"
        )
        .await,
        "200000|200000"
    );
    assert_eq!(
        rows(&c, "SELECT rows_done FROM pgshift.backfills").await,
        "200000"
    );
}
