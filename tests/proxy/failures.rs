//! Failures: Postgres down (a clear FATAL at once, recovery when it is back)
//! and malformed client bytes (that connection gets an error and is closed,
//! other sessions carry on).

use crate::harness::{client, error_of, Raw, TestProxy};
use crate::support::{self, rows, OwnCluster};
use pgshift_proxy::RoutingTable;
use std::time::{Duration, Instant};

/// Poll `check` until it holds (bounded: a test failure after 30 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn postgres_down_gives_a_fatal_error_at_once_and_the_proxy_recovers() {
    let dir = support::temp_dir("px-down");
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&dir)
        .status()
        .unwrap();
    let pg = OwnCluster::start(&dir.join("pg"), &[]).await;
    let url = pg.url.clone();
    let p = TestProxy::start_with(&url, RoutingTable::default(), |_| {}).await;
    let c = client(&p.url("postgres")).await;
    assert_eq!(rows(&c, "SELECT 1").await, "1");

    pg.halt().await;
    let began = Instant::now();
    let err = tokio_postgres::connect(&p.url("postgres"), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db_err = err
        .as_db_error()
        .expect("a FATAL from the proxy, not a dropped socket");
    assert_eq!(db_err.severity(), "FATAL");
    assert_eq!(db_err.code().code(), "08001");
    assert!(
        db_err
            .message()
            .starts_with("pgshift cannot connect to PostgreSQL at 127.0.0.1:"),
        "{}",
        db_err.message()
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the error must come at once"
    );

    pg.restart().await;
    let c = client(&p.url("postgres")).await;
    assert_eq!(rows(&c, "SELECT 2").await, "2");
    drop(c);
}

async fn fatal_then_closed(raw: &mut Raw) -> (String, String) {
    let msgs = raw.read_until(|_| false).await;
    let (code, msg) = error_of(&msgs).unwrap_or_else(|| panic!("no ErrorResponse in {msgs:?}"));
    (code, msg)
}

#[tokio::test]
async fn malformed_startup_packets_get_an_error_and_a_close() {
    let db = support::fresh_db("px_badstart").await;
    let p = TestProxy::start(&db).await;
    let bystander = client(&p.url(&db.name)).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            vec![0, 0, 0, 2, 0, 3, 0, 0],
            "invalid startup packet length 2",
        ),
        (
            vec![0x7f, 0, 0, 0, 0, 3, 0, 0],
            "invalid startup packet length",
        ),
        (
            vec![0, 0, 0, 8, 0, 2, 0, 0],
            "unsupported frontend protocol 2.0",
        ),
        (
            vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', 0, b'x', 0],
            "missing terminator",
        ),
        // SSLRequest followed at once by plaintext bytes.
        (
            vec![
                0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 9, 0, 3, 0, 0, 0,
            ],
            "unencrypted data after SSL",
        ),
    ];
    for (bytes, want) in cases {
        let mut raw = Raw::connect(p.addr).await;
        raw.send(&bytes).await;
        let (code, msg) = fatal_then_closed(&mut raw).await;
        assert_eq!(code, "08P01", "{msg}");
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
    }
    assert_eq!(rows(&bystander, "SELECT 'still here'").await, "still here");
}

#[tokio::test]
async fn bad_and_oversize_frames_close_only_their_session() {
    let db = support::fresh_db("px_badframe").await;
    let table = crate::harness::routes(&db).await;
    let p = TestProxy::start_with(&db.url, table, |c| c.max_message = 1 << 20).await;
    let bystander = client(&p.url(&db.name)).await;
    let admin = db.client().await;
    let params = [
        ("user", "postgres"),
        ("database", db.name.as_str()),
        ("application_name", "victim"),
    ];
    for (frame, want) in [
        (vec![b'Q', 0, 0, 0, 2], "invalid length 2 of message 'Q'"),
        (
            vec![b'Q', 0, 0x20, 0, 0],
            "exceeds the maximum of 1048576 bytes",
        ),
        (vec![b'Q', 0xff, 0xff, 0xff, 0xf0], "exceeds the maximum"),
    ] {
        let (mut raw, msgs) = Raw::startup(p.addr, &params).await;
        assert_eq!(msgs.last().unwrap().0, b'Z');
        raw.send(&frame).await;
        let (code, msg) = fatal_then_closed(&mut raw).await;
        assert_eq!(code, "08P01");
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
    }
    // A truncated frame, then the client vanishes.
    let (mut raw, _) = Raw::startup(p.addr, &params).await;
    raw.send(&[b'Q', 0, 0, 0, 100, b'S', b'E']).await;
    drop(raw);
    // Every victim's Postgres backend goes away; the bystander is untouched.
    eventually("the victims' backends to exit", || async {
        rows(
            &admin,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'victim'",
        )
        .await
            == "0"
    })
    .await;
    assert_eq!(rows(&bystander, "SELECT 'still here'").await, "still here");
    assert_eq!(p.proxy.registry.len(), 1);
}
