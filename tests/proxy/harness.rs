//! An in-process proxy bound to port 0 in front of the test cluster (the
//! mini-redis `run(listener, shutdown)` shape), plus helpers to run real
//! clients against it.

use crate::support::{self, TestDb};
use pgshift_proxy::{Proxy, ProxyConfig, RoutingTable};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The routing table of `db` as `pgshift proxy` would build it.
pub async fn routes(db: &TestDb) -> RoutingTable {
    let c = db.client().await;
    let (versions, default) = pgshift::serve::versions(&c, "public").await.unwrap();
    RoutingTable {
        versions,
        rules: vec![],
        default,
        database: Some(db.name.clone()),
    }
}

impl TestProxy {
    /// A proxy in front of `upstream_url` with `table`, after `tune` edits the config.
    pub async fn start_with(
        upstream_url: &str,
        table: RoutingTable,
        tune: impl FnOnce(&mut ProxyConfig),
    ) -> TestProxy {
        let mut config = ProxyConfig::new(pgshift::serve::upstream_from_url(upstream_url).unwrap());
        tune(&mut config);
        let proxy = Proxy::new(config, table);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pgshift_proxy::run(listener, proxy.clone(), async move {
            let _ = stopped.await;
        }));
        TestProxy {
            addr,
            proxy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A proxy in front of the test cluster, routing `db`'s versions.
    pub async fn start(db: &TestDb) -> TestProxy {
        let table = routes(db).await;
        TestProxy::start_with(&db.url, table, |_| {}).await
    }

    /// Re-read `db`'s versions (as the refresh loop does).
    pub async fn refresh(&self, db: &TestDb) {
        self.proxy.router.set(routes(db).await);
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.addr.port()
        )
    }

    pub fn url_with(&self, user: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}{}{query}",
            self.addr.port(),
            if query.is_empty() { "" } else { "?" }
        )
    }

    /// Graceful shutdown; returns when the proxy has stopped.
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Connect with tokio-postgres; the connection runs on its own task.
pub async fn client(url: &str) -> tokio_postgres::Client {
    support::connect(url).await
}

/// What an external client printed and how it exited.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run an external program without blocking the runtime the proxy runs on.
pub async fn run(program: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Ran {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub fn pg_bin(name: &str) -> String {
    let dir =
        std::env::var("PGSHIFT_PG_BINDIR").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let p = std::path::Path::new(&dir).join(name);
    if p.exists() {
        p.display().to_string()
    } else {
        name.to_string()
    }
}

/// psql through the proxy; `-X`, stop on the first error, tuples only.
pub async fn psql(url: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut all = vec!["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url];
    all.extend_from_slice(args);
    run(&pg_bin("psql"), &all, env, None).await
}

/// A hand-driven protocol session (trust auth), for what libraries cannot
/// send: arbitrary startup parameters and malformed bytes.
pub struct Raw {
    pub stream: tokio::net::TcpStream,
}

/// One backend message: tag and body.
pub type Msg = (u8, Vec<u8>);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Send a StartupMessage with `params` and read up to ReadyForQuery or
    /// an ErrorResponse; returns the messages read.
    pub async fn startup(addr: SocketAddr, params: &[(&str, &str)]) -> (Raw, Vec<Msg>) {
        let mut raw = Raw::connect(addr).await;
        let s = pgshift_proxy::codec::Startup {
            protocol: pgshift_proxy::codec::PROTOCOL_3_0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut b = Vec::new();
        s.encode(&mut b);
        raw.send(&b).await;
        let msgs = raw.read_until(|t| t == b'Z' || t == b'E').await;
        (raw, msgs)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read one message; `None` at end of stream.
    pub async fn read(&mut self) -> Option<Msg> {
        use tokio::io::AsyncReadExt;
        let mut hdr = [0u8; 5];
        self.stream.read_exact(&mut hdr).await.ok()?;
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).await.ok()?;
        Some((hdr[0], body))
    }

    pub async fn read_until(&mut self, stop: impl Fn(u8) -> bool) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.read().await {
            let done = stop(m.0);
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Simple query; the first column of the first row, as text.
    pub async fn query_value(&mut self, sql: &str) -> Option<String> {
        let mut q = vec![b'Q'];
        q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        q.extend_from_slice(sql.as_bytes());
        q.push(0);
        self.send(&q).await;
        let msgs = self.read_until(|t| t == b'Z').await;
        msgs.iter().find(|(t, _)| *t == b'D').and_then(|(_, body)| {
            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
            (len >= 0).then(|| String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned())
        })
    }
}

/// The `M` (message) field of an ErrorResponse body, with its SQLSTATE.
pub fn error_of(msgs: &[Msg]) -> Option<(String, String)> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        if let Some((&k, v)) = field.split_first() {
            match k {
                b'C' => code = String::from_utf8_lossy(v).into(),
                b'M' => message = String::from_utf8_lossy(v).into(),
                _ => {}
            }
        }
    }
    Some((code, message))
}
