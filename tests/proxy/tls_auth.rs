//! TLS towards clients and towards Postgres, and the authentication relay
//! (cleartext, md5, SCRAM-SHA-256 pass through; Postgres stays the authority).

use crate::harness::{client, psql, run, TestProxy};
use crate::support::{self, rows, OwnCluster};
use pgshift_proxy::RoutingTable;
use std::path::{Path, PathBuf};

/// A throwaway CA and a certificate it signed for localhost / 127.0.0.1:
/// (ca, cert, key).
async fn certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca: Vec<String> = ["req", "-x509", "-days", "2", "-subj", "/CN=pgshift test CA"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    ca.extend(ec.iter().map(|s| s.to_string()));
    ca.extend(["-keyout".into(), p("ca.key"), "-out".into(), p("ca.pem")]);
    let mut csr: Vec<String> = ["req", "-subj", "/CN=localhost"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    csr.extend(ec.iter().map(|s| s.to_string()));
    csr.extend(["-keyout".into(), p("key.pem"), "-out".into(), p("leaf.csr")]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let sign: Vec<String> = [
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for args in [ca, csr, sign] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = run("openssl", &args, &[], None).await;
        assert!(ran.ok, "openssl {args:?}: {}", ran.stderr);
    }
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[tokio::test]
async fn clients_can_use_tls_to_the_proxy() {
    let db = support::fresh_db("px_tls").await;
    let dir = support::temp_dir("px-tls");
    let (ca, cert, key) = certificate(&dir).await;
    let table = crate::harness::routes(&db).await;
    let tls = pgshift_proxy::tls::server_config(&cert, &key).unwrap();
    let p = TestProxy::start_with(&db.url, table, |c| c.tls = Some(tls)).await;
    let port = p.addr.port();
    let verify = format!(
        "host=localhost port={port} user=postgres dbname={} sslmode=verify-full sslrootcert={}",
        db.name,
        ca.display()
    );
    let ran = psql(
        &verify,
        &["-c", "\\conninfo", "-c", "SELECT 'over tls'"],
        &[],
    )
    .await;
    assert!(ran.ok, "{}", ran.stderr);
    assert!(
        ran.stdout.contains("SSL connection (protocol: TLSv1.3"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("over tls"), "{}", ran.stdout);
    // Plaintext clients are still served.
    let plain = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={} sslmode=disable",
        db.name
    );
    let ran = psql(&plain, &["-c", "SELECT 'plain'"], &[]).await;
    assert!(
        ran.ok && ran.stdout.trim() == "plain",
        "{}{}",
        ran.stdout,
        ran.stderr
    );
}

#[tokio::test]
async fn the_proxy_can_use_tls_to_postgres() {
    let dir = support::temp_dir("px-uptls");
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&dir)
        .status()
        .unwrap();
    let (ca, cert, key) = certificate(&dir).await;
    let cluster = dir.join("pg");
    std::fs::create_dir_all(&cluster).unwrap();
    // Postgres wants its key private and its own.
    for f in [&cert, &key] {
        std::fs::copy(f, cluster.join(f.file_name().unwrap())).unwrap();
    }
    let own = run(
        "chown",
        &["-R", "postgres:", cluster.to_str().unwrap()],
        &[],
        None,
    )
    .await;
    assert!(own.ok || !is_root(), "{}", own.stderr);
    std::fs::set_permissions(
        cluster.join("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let extra = format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        cluster.join("cert.pem").display(),
        cluster.join("key.pem").display()
    );
    let pg = OwnCluster::start(&cluster, &[("PGSHIFT_PG_EXTRA", &extra)]).await;
    let url = pg.url.clone();
    for mode in [
        "require",
        &format!("verify-full&sslrootcert={}", ca.display()),
    ] {
        let up = format!("{url}?sslmode={mode}");
        let p = TestProxy::start_with(&up, RoutingTable::default(), |_| {}).await;
        let c = client(&p.url("postgres")).await;
        assert_eq!(
            rows(
                &c,
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .await,
            "t",
            "sslmode={mode}"
        );
    }
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
}

#[tokio::test]
async fn cleartext_md5_and_scram_authentication_pass_through() {
    let db = support::fresh_db("px_auth").await;
    let admin = db.client().await;
    // Roles are cluster-wide; (re)create them with known passwords.
    admin
        .batch_execute(
            "DO $$ BEGIN
               PERFORM set_config('password_encryption', 'md5', true);
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgshift_md5') THEN CREATE ROLE pgshift_md5 LOGIN; END IF;
               ALTER ROLE pgshift_md5 PASSWORD 'md5-secret';
               PERFORM set_config('password_encryption', 'scram-sha-256', true);
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgshift_scram') THEN CREATE ROLE pgshift_scram LOGIN; END IF;
               ALTER ROLE pgshift_scram PASSWORD 'scram-secret';
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgshift_password') THEN CREATE ROLE pgshift_password LOGIN; END IF;
               ALTER ROLE pgshift_password PASSWORD 'plain-secret';
             END $$",
        )
        .await
        .unwrap();
    let p = TestProxy::start(&db).await;
    let port = p.addr.port();
    for (user, password, method) in [
        ("pgshift_md5", "md5-secret", "md5"),
        ("pgshift_scram", "scram-secret", "scram-sha-256"),
        ("pgshift_password", "plain-secret", "password"),
    ] {
        let url = format!("postgres://{user}:{password}@127.0.0.1:{port}/{}", db.name);
        let c = client(&url).await;
        assert_eq!(rows(&c, "SELECT current_user").await, user);
        let wrong = format!("postgres://{user}:wrong@127.0.0.1:{port}/{}", db.name);
        let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("28P01"),
            "{method}: {err}"
        );
        // libpq (psql) too.
        let ran = psql(
            &format!("host=127.0.0.1 port={port} user={user} dbname={}", db.name),
            &["-c", "SELECT 'psql ' || current_user"],
            &[("PGPASSWORD", password)],
        )
        .await;
        assert!(ran.ok, "{method}: {}", ran.stderr);
        assert_eq!(ran.stdout.trim(), format!("psql {user}"));
    }
}
