//! The transaction-boundary gate and graceful shutdown.

use crate::harness::{client, TestProxy};
use crate::support::{self, rows};
use pgshift_proxy::registry::SessionState;
use std::time::{Duration, Instant};

async fn until_state(p: &TestProxy, want: SessionState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.proxy.registry.snapshot().iter().any(|s| s.state == want) {
        assert!(Instant::now() < deadline, "no session became {want:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_closed_gate_holds_idle_sessions_but_never_a_transaction() {
    let db = support::fresh_db("px_gate").await;
    let p = TestProxy::start(&db).await;
    let in_tx = client(&p.url(&db.name)).await;
    in_tx
        .batch_execute("CREATE TABLE t (n int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let idle = client(&p.url(&db.name)).await;
    p.proxy.gate.close().await;
    let held = tokio::spawn(async move {
        let v = rows(&idle, "SELECT count(*) FROM t").await;
        (v, idle)
    });
    until_state(&p, SessionState::Held).await;
    // The transaction goes on and finishes while the other session waits.
    in_tx
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    in_tx.batch_execute("COMMIT").await.unwrap();
    assert!(!held.is_finished());
    p.proxy.gate.open();
    let (v, _idle) = held.await.unwrap();
    assert_eq!(
        v, "2",
        "the held query ran after the gate opened, seeing the commit"
    );
}

#[tokio::test]
async fn a_hold_past_the_cap_fails_open() {
    let db = support::fresh_db("px_gatecap").await;
    let table = crate::harness::routes(&db).await;
    let p = TestProxy::start_with(&db.url, table, |c| {
        c.gate_max_hold = Duration::from_millis(200)
    })
    .await;
    let c = client(&p.url(&db.name)).await;
    p.proxy.gate.close().await;
    assert_eq!(rows(&c, "SELECT 'through'").await, "through");
    assert!(p.proxy.gate.is_closed());
    p.proxy.gate.open();
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_lets_transactions_finish() {
    let db = support::fresh_db("px_shutdown").await;
    let mut p = TestProxy::start(&db).await;
    let url = p.url(&db.name);
    let (idle, idle_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let (tx, tx_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let tx_conn = tokio::spawn(tx_conn);
    tx.batch_execute("CREATE TABLE t (n int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let stop = tokio::spawn(async move {
        p.shutdown().await;
        p
    });
    // The idle session is closed with 57P01 ...
    let err = idle_conn.await.unwrap().unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57P01"),
        "{err}"
    );
    assert!(idle.is_closed());
    // ... the transaction still runs and commits, then its session closes too.
    assert!(!stop.is_finished());
    tx.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    tx.batch_execute("COMMIT").await.unwrap();
    let err = tx_conn.await.unwrap().unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57P01"),
        "{err}"
    );
    let p = stop.await.unwrap();
    assert!(p.proxy.registry.is_empty());
    // New connections are refused; the data committed.
    assert!(tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err());
    assert_eq!(
        rows(&db.client().await, "SELECT count(*) FROM t").await,
        "2"
    );
}
