//! One client connection, from accept to close: the startup negotiation
//! (TLS, cancel, routing and the rewritten StartupMessage), then two pumps
//! in one task that stream bytes both ways while tracking the transaction
//! state from ReadyForQuery.

use crate::codec::{self, FirstPacket, Scanner, Startup};
use crate::registry::{version_label, SessionInfo, STATUS_STARTUP};
use crate::routing::{quote_schema, Who};
use crate::server::{Phase, Proxy};
use crate::stream::Stream;
use crate::upstream;
use bytes::BytesMut;
use metrics::{Counter, Histogram};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Why a session failed before or while forwarding.
#[derive(Debug)]
enum Failure {
    /// Tell the client (FATAL with this SQLSTATE and message), then close.
    Fatal(&'static str, String),
    /// Close without a word (the peer is gone or not speaking the protocol).
    Silent(String),
}

fn fatal(code: &'static str, msg: impl Into<String>) -> Failure {
    Failure::Fatal(code, msg.into())
}

fn connection_result(result: &'static str) {
    metrics::counter!("pgshift_client_connections_total", "result" => result).increment(1);
}

fn proxy_error(kind: &'static str) {
    metrics::counter!("pgshift_proxy_errors_total", "kind" => kind).increment(1);
}

/// Serve one accepted connection until it closes.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: Option<SocketAddr>,
    shutdown: watch::Receiver<Phase>,
) {
    let _ = tcp.set_nodelay(true);
    let client = match Stream::tcp(tcp) {
        Ok(c) => c,
        Err(e) => {
            proxy_error("io");
            tracing::debug!("cannot register a client socket: {e}");
            return;
        }
    };
    let mut leftover = Vec::new();
    let (mut client, result) = match negotiate(&proxy, client, &mut leftover).await {
        Negotiated::Startup(mut client, startup) => {
            let r = serve(&proxy, &mut client, startup, leftover, peer, shutdown).await;
            (client, r)
        }
        Negotiated::Done(client) => (client, Ok(())),
        Negotiated::Failed(Some(client), f) => (client, Err(f)),
        Negotiated::Failed(None, f) => {
            let (Failure::Fatal(_, m) | Failure::Silent(m)) = f;
            tracing::debug!(?peer, "client connection closed: {m}");
            return;
        }
    };
    match result {
        Ok(()) => {}
        Err(Failure::Fatal(code, msg)) => {
            tracing::debug!(?peer, code, "closing client connection: {msg}");
            let mut out = Vec::new();
            codec::error_response(&mut out, "FATAL", code, &msg, None);
            let _ = client.write_all(&out).await;
            let _ = client.flush().await;
        }
        Err(Failure::Silent(msg)) => tracing::debug!(?peer, "client connection closed: {msg}"),
    }
    let _ = client.shutdown().await;
}

enum Negotiated {
    Startup(Stream, Startup),
    /// Nothing more to do (a forwarded cancel request, or the client left).
    Done(Stream),
    /// The stream is gone when a TLS handshake failed.
    Failed(Option<Stream>, Failure),
}

/// Read first packets until a StartupMessage, answering SSLRequest and
/// GSSENCRequest and forwarding a CancelRequest; all within the startup
/// timeout.
async fn negotiate(proxy: &Proxy, mut client: Stream, buf: &mut Vec<u8>) -> Negotiated {
    let deadline = tokio::time::Instant::now() + proxy.config.startup_timeout;
    let mut tls_done = false;
    loop {
        let (packet, used) = loop {
            match codec::parse_first_packet(buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    proxy_error("protocol");
                    connection_result("protocol_error");
                    return Negotiated::Failed(Some(client), fatal("08P01", e.0));
                }
            }
            match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
                Ok(Ok(0)) => return Negotiated::Done(client),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Negotiated::Failed(Some(client), Failure::Silent(e.to_string()))
                }
                Err(_) => {
                    connection_result("timeout");
                    return Negotiated::Failed(
                        Some(client),
                        fatal("08P01", "timeout while waiting for the startup packet"),
                    );
                }
            }
        };
        buf.drain(..used);
        let is_ssl = packet == FirstPacket::SslRequest;
        let answer: &[u8] = match packet {
            FirstPacket::SslRequest | FirstPacket::GssEncRequest if !buf.is_empty() => {
                // Bytes sent before the answer would be read as if encrypted
                // (CVE-2021-23214); Postgres refuses them too.
                proxy_error("protocol");
                return Negotiated::Failed(
                    Some(client),
                    fatal(
                        "08P01",
                        "received unencrypted data after SSL or GSSAPI encryption request",
                    ),
                );
            }
            FirstPacket::SslRequest if tls_done => {
                return Negotiated::Failed(
                    Some(client),
                    fatal("08P01", "SSL negotiation requested twice"),
                );
            }
            FirstPacket::SslRequest if proxy.config.tls.is_some() => b"S",
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => b"N",
            FirstPacket::CancelRequest(packet) => {
                let ok = upstream::cancel(&proxy.config.upstream, &packet).await;
                let result = if ok.is_ok() { "forwarded" } else { "failed" };
                metrics::counter!("pgshift_cancel_requests_total", "result" => result).increment(1);
                if let Err(e) = ok {
                    tracing::warn!("forwarding a cancel request to Postgres failed: {e}");
                }
                return Negotiated::Done(client);
            }
            FirstPacket::Startup(s) => return Negotiated::Startup(client, s),
        };
        if let Err(e) = client.write_all(answer).await {
            return Negotiated::Failed(Some(client), Failure::Silent(e.to_string()));
        }
        if answer == b"S" {
            let (Stream::Tcp(tcp), Some(cfg)) = (client, proxy.config.tls.clone()) else {
                return Negotiated::Failed(None, Failure::Silent("TLS on a non-TCP stream".into()));
            };
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp);
            client = match tokio::time::timeout_at(deadline, accept).await {
                Ok(Ok(tls)) => Stream::TlsServer(Box::new(tls)),
                Ok(Err(e)) => {
                    proxy_error("tls");
                    return Negotiated::Failed(
                        None,
                        Failure::Silent(format!("TLS handshake with client: {e}")),
                    );
                }
                Err(_) => {
                    return Negotiated::Failed(
                        None,
                        Failure::Silent("TLS handshake timed out".into()),
                    )
                }
            };
        }
        if is_ssl {
            tls_done = true;
        }
    }
}

/// Route the session, open its Postgres connection and forward until one
/// side leaves.
async fn serve(
    proxy: &Proxy,
    client: &mut Stream,
    mut startup: Startup,
    leftover: Vec<u8>,
    peer: Option<SocketAddr>,
    shutdown: watch::Receiver<Phase>,
) -> Result<(), Failure> {
    if *shutdown.borrow() != Phase::Running {
        connection_result("rejected");
        return Err(fatal("57P03", "pgshift is shutting down"));
    }
    let user = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let database = startup
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    let application_name = startup.get("application_name").unwrap_or("").to_string();

    // The version asked for: a startup parameter, or `-c pgshift.version=`
    // in `options`; both are removed before Postgres sees them.
    let mut requested = startup.remove(crate::VERSION_SETTING);
    if let Some(options) = startup.get("options").map(str::to_string) {
        let mut args = codec::split_options(&options);
        if let Some(v) = codec::take_option_setting(&mut args, crate::VERSION_SETTING) {
            requested = requested.or(Some(v));
            if args.is_empty() {
                startup.remove("options");
            } else {
                startup.set("options", codec::join_options(&args));
            }
        }
    }
    let table = proxy.router.current();
    let who = Who {
        user: &user,
        database: &database,
        application_name: Some(application_name.as_str()).filter(|a| !a.is_empty()),
    };
    let version = match table.resolve(requested.as_deref(), &who) {
        Ok(v) => v.cloned(),
        Err(e) => {
            connection_result("unknown_version");
            return Err(fatal("3F000", e.to_string()));
        }
    };
    if let Some(v) = &version {
        let path = v
            .search_path
            .iter()
            .map(|s| quote_schema(s))
            .collect::<Vec<_>>()
            .join(", ");
        startup.set("search_path", path);
        startup.set(crate::VERSION_SETTING, v.name.clone());
    }

    let mut server = match upstream::connect(&proxy.config.upstream).await {
        Ok(s) => s,
        Err(e) => {
            proxy_error("upstream_unavailable");
            connection_result("upstream_unavailable");
            return Err(fatal(
                "08001",
                format!(
                    "pgshift cannot connect to PostgreSQL at {}: {e}",
                    proxy.config.upstream.target
                ),
            ));
        }
    };
    let mut out = Vec::with_capacity(256);
    startup.encode(&mut out);
    out.extend_from_slice(&leftover);
    server
        .write_all(&out)
        .await
        .map_err(|e| fatal("08006", format!("lost the connection to PostgreSQL: {e}")))?;
    server
        .flush()
        .await
        .map_err(|e| Failure::Silent(e.to_string()))?;
    connection_result("ok");

    let version_name = version.map(|v| v.name);
    let registered = proxy.registry.register(SessionInfo::new(
        version_name,
        user,
        database,
        application_name,
        peer,
    ));
    let info = registered.info.clone();
    let label = version_label(&info.version);
    let cx = Ctx {
        info: &info,
        proxy,
        queries: metrics::counter!("pgshift_queries_total", "version" => label.clone()),
        duration: metrics::histogram!("pgshift_query_duration_seconds", "version" => label),
        bytes_in: metrics::counter!("pgshift_bytes_total", "direction" => "client_to_server"),
        bytes_out: metrics::counter!("pgshift_bytes_total", "direction" => "server_to_client"),
    };
    // Plain sockets split into borrowed halves for free; TLS streams go
    // through tokio's locked split.
    let mut shutdown = shutdown;
    let end = match (&mut *client, &mut server) {
        (Stream::Tcp(c), Stream::Unix(s)) => {
            let ((cr, cw), (sr, sw)) = (c.split(), s.split());
            forward(cr, cw, sr, sw, &cx, &mut shutdown).await
        }
        (Stream::Tcp(c), Stream::Tcp(s)) => {
            let ((cr, cw), (sr, sw)) = (c.split(), s.split());
            forward(cr, cw, sr, sw, &cx, &mut shutdown).await
        }
        (c, s) => {
            let ((cr, cw), (sr, sw)) = (tokio::io::split(c), tokio::io::split(s));
            forward(cr, cw, sr, sw, &cx, &mut shutdown).await
        }
    };
    drop(registered);
    let terminate = [b'X', 0, 0, 0, 4];
    match end {
        Ok(End::Terminate) | Ok(End::ServerGone) => Ok(()),
        Ok(End::ClientGone) => {
            let _ = server.write_all(&terminate).await;
            Ok(())
        }
        Ok(End::Shutdown) => {
            let _ = server.write_all(&terminate).await;
            Err(fatal(
                "57P01",
                "terminating connection due to administrator command: pgshift is shutting down",
            ))
        }
        Ok(End::Killed) => {
            let _ = server.write_all(&terminate).await;
            let why = info
                .kill
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            Err(fatal(
                "57P01",
                format!("terminating connection due to administrator command: {why}"),
            ))
        }
        Err(PumpError::ClientProtocol(e)) => {
            proxy_error("protocol");
            let _ = server.write_all(&terminate).await;
            Err(fatal("08P01", format!("invalid frontend message: {e}")))
        }
        Err(PumpError::ServerProtocol(e)) => {
            proxy_error("protocol");
            Err(fatal(
                "08P01",
                format!("invalid message from PostgreSQL: {e}"),
            ))
        }
        Err(PumpError::Io(e)) => {
            proxy_error("io");
            let _ = server.write_all(&terminate).await;
            Err(Failure::Silent(e.to_string()))
        }
    }
}

/// Run both pumps until one side leaves or shutdown reaches the session.
async fn forward<CR, CW, SR, SW>(
    cr: CR,
    cw: CW,
    sr: SR,
    sw: SW,
    cx: &Ctx<'_>,
    shutdown: &mut watch::Receiver<Phase>,
) -> Result<End, PumpError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    tokio::select! {
        r = client_to_server(cr, sw, cx) => r,
        r = server_to_client(sr, cw, cx) => r,
        _ = drained(cx.info, shutdown) => Ok(End::Shutdown),
        _ = cx.info.killed.notified() => Ok(End::Killed),
    }
}

/// How forwarding ended.
enum End {
    /// The client sent Terminate.
    Terminate,
    /// The client closed its socket.
    ClientGone,
    /// Postgres closed its socket (after a FATAL, or a shutdown).
    ServerGone,
    /// Graceful shutdown reached this session at a transaction boundary (or
    /// its deadline passed).
    Shutdown,
    /// Closed on request (`Registry::terminate`).
    Killed,
}

enum PumpError {
    ClientProtocol(codec::ProtocolError),
    ServerProtocol(codec::ProtocolError),
    Io(std::io::Error),
}

struct Ctx<'a> {
    info: &'a SessionInfo,
    proxy: &'a Proxy,
    queries: Counter,
    duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Ctx<'_> {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.info.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A Query, Sync or FunctionCall went to Postgres: one more
    /// ReadyForQuery is due.
    fn begin_request(&self) {
        if self.info.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.info
                .request_started
                .store(self.now_nanos(), Ordering::Release);
        }
    }

    /// A ReadyForQuery came back with transaction status `status`.
    fn ready(&self, status: u8) {
        let prev = self.info.status.swap(status, Ordering::AcqRel);
        if prev != STATUS_STARTUP {
            let before = self
                .info
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                    Some(p.saturating_sub(1))
                })
                .unwrap_or(0);
            self.queries.increment(1);
            if before == 1 {
                let began = self.info.request_started.load(Ordering::Acquire);
                let took = Duration::from_nanos(self.now_nanos().saturating_sub(began));
                self.duration.record(took.as_secs_f64());
                self.proxy.latency.record(took);
            }
        }
        self.info.ready.notify_waiters();
    }
}

/// A pump's buffer: allocated and zeroed once, so reads into it need no
/// initialising (a reader handed uninitialised spare capacity would zero it
/// before every read).
fn buffer(size: usize) -> BytesMut {
    BytesMut::zeroed(size)
}

async fn client_to_server<R, W>(mut r: R, mut w: W, cx: &Ctx<'_>) -> Result<End, PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &cx.proxy.config;
    let mut buf = buffer(cfg.buffer_size);
    let mut scanner = Scanner::new(cfg.max_message);
    loop {
        let n = r.read(&mut buf[..]).await.map_err(PumpError::Io)?;
        let got = &buf[..n];
        if n == 0 {
            return Ok(End::ClientGone);
        }
        // A new request from a session between transactions waits while the
        // gate is closed; nothing of it has reached Postgres yet.
        if cx.proxy.gate.is_closed() && scanner.at_boundary() && cx.info.at_boundary() {
            cx.info.held.store(true, Ordering::Release);
            cx.proxy.gate.hold(cfg.gate_max_hold).await;
            cx.info.held.store(false, Ordering::Release);
        }
        let mut terminate = false;
        scanner
            .feed(got, |f| match f.tag {
                b'Q' | b'F' => cx.begin_request(),
                b'S' if !cx.info.copy_in.load(Ordering::Acquire) => cx.begin_request(),
                b'c' | b'f' => cx.info.copy_in.store(false, Ordering::Release),
                b'X' => terminate = true,
                _ => {}
            })
            .map_err(PumpError::ClientProtocol)?;
        w.write_all(got).await.map_err(PumpError::Io)?;
        w.flush().await.map_err(PumpError::Io)?;
        cx.bytes_in.increment(n as u64);
        if terminate {
            return Ok(End::Terminate);
        }
    }
}

async fn server_to_client<R, W>(mut r: R, mut w: W, cx: &Ctx<'_>) -> Result<End, PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &cx.proxy.config;
    let mut buf = buffer(cfg.buffer_size);
    let mut scanner = Scanner::new(cfg.max_message);
    loop {
        let n = r.read(&mut buf[..]).await.map_err(PumpError::Io)?;
        let got = &buf[..n];
        if n == 0 {
            return Ok(End::ServerGone);
        }
        // ReadyForQuery is applied once the chunk is on its way to the
        // client: whoever waits for a transaction boundary (shutdown) must
        // not cut the answer off.
        let mut ready_count = 0u32;
        let mut ready_status = b'I';
        let mut copy_ended = false;
        scanner
            .feed(got, |f| match f.tag {
                b'Z' => {
                    ready_count += 1;
                    ready_status = f.head.first().copied().unwrap_or(b'I');
                    copy_ended = true;
                }
                b'G' => {
                    cx.info.copy_in.store(true, Ordering::Release);
                    copy_ended = false;
                }
                b'E' => {
                    if let Some(code) = codec::error_code(f.head) {
                        let class: String = code.chars().take(2).collect();
                        metrics::counter!("pgshift_server_errors_total", "class" => class)
                            .increment(1);
                    }
                }
                _ => {}
            })
            .map_err(PumpError::ServerProtocol)?;
        w.write_all(got).await.map_err(PumpError::Io)?;
        w.flush().await.map_err(PumpError::Io)?;
        cx.bytes_out.increment(n as u64);
        if copy_ended {
            cx.info.copy_in.store(false, Ordering::Release);
        }
        for _ in 0..ready_count {
            cx.ready(ready_status);
        }
    }
}

/// Resolves when graceful shutdown should close this session: once
/// shutdown has begun and the session is at a transaction boundary, or when
/// the deadline passed.
async fn drained(info: &SessionInfo, shutdown: &mut watch::Receiver<Phase>) {
    loop {
        let phase = *shutdown.borrow_and_update();
        match phase {
            Phase::Running => {}
            Phase::Forced => return,
            Phase::Draining => {
                let ready = info.ready.notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                if info.at_boundary() {
                    return;
                }
                tokio::select! {
                    _ = ready => continue,
                    r = shutdown.changed() => if r.is_err() { return },
                }
                continue;
            }
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
