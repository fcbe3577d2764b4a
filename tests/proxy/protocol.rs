//! tokio-postgres through the proxy: simple and extended protocol,
//! pipelining, COPY both ways, cancel, notifications, large rows, and a
//! LATIN1 database.

use crate::harness::{client, Raw, TestProxy};
use crate::support;
use futures_util::SinkExt;
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test]
async fn simple_extended_and_pipelined_queries_pass_through() {
    let db = support::fresh_db("px_basic").await;
    let p = TestProxy::start(&db).await;
    let c = client(&p.url(&db.name)).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let ins = c.prepare("INSERT INTO t VALUES ($1, $2)").await.unwrap();
    // Pipelined: many requests in flight before the first answer returns.
    let futs: Vec<_> = (0..200)
        .map(|i| {
            let (c, ins) = (&c, &ins);
            async move { c.execute(ins, &[&i, &format!("v{i}")]).await }
        })
        .collect();
    for r in futures_util::future::join_all(futs).await {
        assert_eq!(r.unwrap(), 1);
    }
    let row = c
        .query_one("SELECT count(*), max(v) FROM t WHERE id >= $1", &[&0i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 200);
    assert_eq!(row.get::<_, String>(1), "v99");
    // A 20 MB value streams through without a size problem.
    let big: String = c
        .query_one("SELECT repeat('y', 20000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 20_000_000);
    // Errors come back and the session stays usable.
    let err = c.batch_execute("SELECT * FROM missing").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    assert_eq!(support::rows(&c, "SELECT 1").await, "1");
}

#[tokio::test]
async fn copy_in_and_out_pass_through() {
    let db = support::fresh_db("px_copy").await;
    let p = TestProxy::start(&db).await;
    let c = client(&p.url(&db.name)).await;
    c.batch_execute("CREATE TABLE t (id int, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..50 {
        let mut data = String::new();
        for i in 0..1000 {
            data.push_str(&format!("{}\trow {}\n", chunk * 1000 + i, i));
        }
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 50_000);
    let stream = c
        .copy_out("COPY (SELECT * FROM t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut lines = 0;
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        lines += chunk.unwrap().iter().filter(|&&b| b == b'\n').count();
    }
    assert_eq!(lines, 50_000);
    // A failed COPY leaves the session in a clean state.
    let sink = c
        .copy_in::<_, bytes::Bytes>("COPY t FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    assert_eq!(support::rows(&c, "SELECT count(*) FROM t").await, "50000");
}

#[tokio::test]
async fn cancel_requests_reach_the_right_backend() {
    let db = support::fresh_db("px_cancel").await;
    let p = TestProxy::start(&db).await;
    let c = client(&p.url(&db.name)).await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = c.batch_execute("SELECT pg_sleep(60)").await;
        (r, c)
    });
    // Cancel once the query is visibly running.
    let admin = db.client().await;
    loop {
        let n = support::rows(&admin, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").await;
        if n == "1" {
            break;
        }
        tokio::task::yield_now().await;
    }
    token.cancel_query(NoTls).await.unwrap();
    let (r, c) = sleeper.await.unwrap();
    assert_eq!(r.unwrap_err().code().unwrap().code(), "57014");
    assert_eq!(support::rows(&c, "SELECT 2").await, "2");
}

#[tokio::test]
async fn notifications_arrive_while_the_session_is_idle() {
    let db = support::fresh_db("px_notify").await;
    let p = TestProxy::start(&db).await;
    let (c, mut conn) = tokio_postgres::connect(&p.url(&db.name), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(n)) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    c.batch_execute("LISTEN chan").await.unwrap();
    let other = db.client().await;
    other
        .batch_execute("NOTIFY chan, 'first'; NOTIFY chan, 'second'")
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), "first");
    assert_eq!(rx.recv().await.unwrap(), "second");
}

#[tokio::test]
async fn a_latin1_database_round_trips_text() {
    let admin = support::connect(&format!("{}/postgres", support::cluster_base())).await;
    let name = format!("px_latin1_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let db = support::TestDb {
        url: format!("{}/{name}", support::cluster_base()),
        name: name.clone(),
    };
    let p = TestProxy::start(&db).await;
    let c = client(&p.url(&name)).await;
    c.batch_execute("CREATE TABLE t (v text)").await.unwrap();
    c.execute("INSERT INTO t VALUES ($1)", &[&"café àéîõü ÿ"])
        .await
        .unwrap();
    let row = c
        .query_one(
            "SELECT v, octet_length(v), current_setting('server_encoding') FROM t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "café àéîõü ÿ");
    assert_eq!(row.get::<_, i32>(1), 12, "stored as one byte per character");
    assert_eq!(row.get::<_, String>(2), "LATIN1");
    // A LATIN1 client: raw non-UTF-8 bytes cross the proxy untouched.
    let script =
        b"SELECT v = 'caf\xe9 \xe0\xe9\xee\xf5\xfc \xff', convert_to(v, 'LATIN1') FROM t;\n";
    let ran = crate::harness::run(
        &crate::harness::pg_bin("psql"),
        &[
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            &p.url(&name),
        ],
        &[("PGCLIENTENCODING", "LATIN1")],
        Some(script),
    )
    .await;
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "t|\\x636166e920e0e9eef5fc20ff");
    drop(c);
    drop(p);
}

#[tokio::test]
async fn a_client_that_reads_slowly_gets_every_byte_of_a_large_result() {
    let db = support::fresh_db("px_slow").await;
    let p = TestProxy::start(&db).await;
    let direct = db.client().await;
    let params = [
        ("user", "postgres"),
        ("database", db.name.as_str()),
        ("application_name", "px_slow_reader"),
    ];
    let (mut raw, _) = Raw::startup(p.addr, &params).await;
    // About 40 MB of rows, far more than the socket buffers hold.
    let sql = "SELECT g, repeat('x', 1000) FROM generate_series(1, 40000) g";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    raw.send(&q).await;
    // Reading nothing yet: the proxy's writes to this client block, it stops
    // reading from Postgres, and the backend waits to write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while support::rows(
        &direct,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'px_slow_reader' AND wait_event = 'ClientWrite'",
    )
    .await
        != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the backend never waited to write");
        tokio::task::yield_now().await;
    }
    let msgs = raw.read_until(|t| t == b'Z' || t == b'E').await;
    let rows: Vec<_> = msgs.iter().filter(|(t, _)| *t == b'D').collect();
    assert_eq!(rows.len(), 40000);
    assert!(rows.iter().all(|(_, body)| body.ends_with(&[b'x'; 1000])));
    let done = msgs.iter().find(|(t, _)| *t == b'C').unwrap();
    assert_eq!(done.1, b"SELECT 40000\0");
    // The session goes on.
    assert_eq!(raw.query_value("SELECT 1").await.as_deref(), Some("1"));
}
