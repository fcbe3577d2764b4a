//! `pgshift proxy` as a process: routes from the control schema, Prometheus
//! metrics, and a clean exit on SIGTERM.

use crate::harness::psql;
use crate::support;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_proxy_command_routes_exports_metrics_and_stops_on_sigterm() {
    let db = support::fresh_db("px_cmd").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'ada')")
        .await
        .unwrap();
    let dir = support::temp_dir("px-cmd");
    let f = support::write_migration(
        &dir,
        "m1",
        "operations:\n  - rename_column: {table: users, from: name, to: full_name}\n",
    );
    db.pgshift(&["start", f.to_str().unwrap(), "--progress", "none", "-c"])
        .ok();
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let (mut child, port) = support::spawn_server(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &metrics,
        ],
        &[("PGSHIFT_POSTGRES_URL", &db.url)],
        "pgshift proxy listening on ",
    )
    .await;
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={}",
        db.name
    );
    // The completed migration is the default version.
    let ran = psql(
        &url,
        &[
            "-c",
            "SELECT current_setting('pgshift.version'), full_name FROM users",
        ],
        &[],
    )
    .await;
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "m1|ada");
    let body = http_get(&metrics, "/metrics").await;
    for want in [
        "pgshift_queries_total{version=\"m1\"}",
        "pgshift_client_connections_total{result=\"ok\"}",
        "pgshift_query_duration_seconds_bucket{version=\"m1\",le=",
        "pgshift_bytes_total{direction=\"client_to_server\"}",
        "pgshift_sessions{version=\"m1\"} 0",
    ] {
        assert!(body.contains(want), "metrics lack {want}:\n{body}");
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}
