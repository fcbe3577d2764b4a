//! Test support: a throwaway PostgreSQL 15 cluster shared by the tests of one
//! binary (started by `tests/support/pg.sh`, or taken from
//! `PGSHIFT_TEST_DATABASE_URL`), a fresh database per test, clients on the
//! old and new schema versions, the `pgshift` binary, and leftover checks.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Cluster {
    /// URL without the database name, e.g. `postgres://postgres@127.0.0.1:5432`.
    base: String,
}

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        if let Ok(url) = std::env::var("PGSHIFT_TEST_DATABASE_URL") {
            let base = url
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(url);
            return Cluster { base };
        }
        let dir = std::env::temp_dir().join(format!("pgshift-test-{}", std::process::id()));
        let script = repo_root().join("tests/support/pg.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run pg.sh");
        assert!(
            out.status.success(),
            "starting Postgres failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        // Stop the cluster when this test process exits, however it exits.
        at_exit(&format!(
            "{script} stop {dir}",
            script = script.display(),
            dir = dir.display()
        ));
        let base = url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        Cluster { base }
    })
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e:?}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The cluster's base URL (no database), e.g. `postgres://postgres@127.0.0.1:5432`.
pub fn cluster_base() -> &'static str {
    &cluster().base
}

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

pub async fn fresh_db(test: &str) -> TestDb {
    static N: AtomicUsize = AtomicUsize::new(0);
    let c = cluster();
    let name = format!(
        "t_{}_{}_{}",
        test,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let admin = connect(&format!("{}/postgres", c.base)).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0"))
        .await
        .unwrap();
    TestDb {
        url: format!("{}/{name}", c.base),
        name,
    }
}

impl TestDb {
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A role name unique to this test's database (roles are cluster-wide).
    pub fn role_name(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{}",
            self.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    }

    /// A client of the new version `migration` (what the proxy will set up).
    pub async fn new_side(&self, migration: &str) -> Client {
        let c = connect(&self.url).await;
        c.batch_execute(&format!(
            "SET pgshift.version = '{migration}'; SET search_path = public_{migration}, public"
        ))
        .await
        .unwrap();
        c
    }

    /// Run the `pgshift` binary against this database.
    pub fn pgshift(&self, args: &[&str]) -> Output {
        self.pgshift_env(args, &[])
    }

    /// `pgshift` on a blocking thread, for async tests whose other tasks
    /// (client loops, a daemon) must keep running meanwhile.
    pub async fn pgshift_async(&self, args: &[&str]) -> Output {
        let db = TestDb {
            url: self.url.clone(),
            name: self.name.clone(),
        };
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            db.pgshift(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap()
    }

    pub fn pgshift_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgshift"));
        cmd.args(args)
            .env("PGSHIFT_POSTGRES_URL", &self.url)
            .env("PGSHIFT_LOG", "pgshift=info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().expect("run pgshift");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "pgshift failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
    pub fn failed(&self) -> &Self {
        assert_ne!(
            self.code,
            Some(0),
            "pgshift should have failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Rows of a query as `a|b` joined by `;` (NULL shows as `∅`).
pub async fn rows(c: &Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut out = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let cols: Vec<String> = (0..r.len())
                .map(|i| r.get(i).unwrap_or("∅").to_string())
                .collect();
            out.push(cols.join("|"));
        }
    }
    out.join(";")
}

/// Write a migration file into a fresh temp dir; returns its path.
pub fn write_migration(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Runs the shell command `cmd` once this test process has exited, however it
/// exits (a watchdog polls for the process; it is never waited on).
fn at_exit(cmd: &str) {
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cmd}",
        pid = std::process::id()
    );
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(watchdog)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog");
}

/// This test process's scratch directory for files; removed when it exits.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("pgshift-files-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        at_exit(&format!("rm -rf '{}'", root.display()));
        root
    })
}

/// A fresh, empty directory for one test's files (under the process's
/// scratch directory, so nothing is left in /tmp after the run).
pub fn temp_dir(test: &str) -> PathBuf {
    let d = scratch_root().join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Everything pgshift might leave behind in the database, one per line;
/// `keep_schema` is a version schema that is expected to exist. The control
/// schema's own tables and its `backfill_batch` function stay by design.
pub async fn leftovers(c: &Client, keep_schema: Option<&str>) -> Vec<String> {
    let sql = "SELECT 'column ' || attrelid::regclass || '.' || attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 WHERE attname LIKE '\\_pgshift%' AND attnum > 0 AND NOT attisdropped AND c.relkind IN ('r', 'p', 'v')
               UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE '\\_pgshift%'
               UNION ALL SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'pgshift' AND p.proname <> 'backfill_batch'
               UNION ALL SELECT 'relation ' || relname FROM pg_class WHERE relname LIKE '\\_pgshift%'
               UNION ALL SELECT 'constraint ' || conname FROM pg_constraint WHERE conname LIKE '\\_pgshift%'
               UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname LIKE 'public\\_%'";
    let found = rows(c, sql).await;
    found
        .split(';')
        .filter(|s| !s.is_empty())
        .filter(|s| {
            keep_schema
                .map(|k| *s != format!("schema {k}"))
                .unwrap_or(true)
        })
        .map(str::to_string)
        .collect()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the pgshift binary as a server (`args`, plus `env`), wait for its
/// first stdout line `<banner><addr>` and return the child (killed on drop)
/// and the port it listens on. Later stdout lines are drained.
pub async fn spawn_server(
    args: &[&str],
    env: &[(&str, &str)],
    banner: &str,
) -> (tokio::process::Child, u16) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"));
    cmd.args(args)
        .env_remove("PGSHIFT_POSTGRES_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr = first
        .strip_prefix(banner)
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// A Postgres cluster of one test's own (`tests/support/pg.sh`), for tests
/// that stop it or need other server settings; stopped and removed when
/// dropped, even when the test fails.
pub struct OwnCluster {
    pub dir: PathBuf,
    /// URL of its `postgres` database.
    pub url: String,
    pub port: String,
}

async fn pg_sh(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(repo_root().join("tests/support/pg.sh"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run pg.sh")
}

impl OwnCluster {
    /// Start a cluster in `dir` (created); `env` goes to pg.sh (PGSHIFT_PG_EXTRA, ...).
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> OwnCluster {
        std::fs::create_dir_all(dir).unwrap();
        let out = pg_sh(&["start", dir.to_str().unwrap()], env).await;
        assert!(
            out.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::fs::read_to_string(dir.join("port"))
            .unwrap()
            .trim()
            .to_string();
        OwnCluster {
            dir: dir.to_path_buf(),
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            port,
        }
    }

    /// Stop the server, keeping its data.
    pub async fn halt(&self) {
        let out = pg_sh(&["halt", self.dir.to_str().unwrap()], &[]).await;
        assert!(
            out.status.success(),
            "pg.sh halt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start it again on the same port.
    pub async fn restart(&self) {
        let out = pg_sh(
            &["start", self.dir.to_str().unwrap()],
            &[("PGSHIFT_PG_PORT", &self.port)],
        )
        .await;
        assert!(
            out.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its `postgres` database as a [`TestDb`], to run `pgshift` against.
    pub fn db(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            name: "postgres".into(),
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("tests/support/pg.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
