//! What the proxy needs to run: where Postgres is and how to reach it, the
//! client-side TLS identity, and limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// Where Postgres listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    /// Path of the socket file (`<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// libpq's `sslmode`, the values the proxy supports towards Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not supported towards Postgres (use disable, prefer, require or verify-full)"
                ))
            }
        })
    }
}

/// How to reach Postgres.
#[derive(Clone)]
pub struct Upstream {
    pub target: Target,
    pub sslmode: SslMode,
    /// TLS settings when `sslmode` is not `disable`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Name checked against the certificate under `verify-full`.
    pub server_name: String,
    pub connect_timeout: Duration,
}

impl Upstream {
    /// An upstream with TLS set up for `sslmode` (`root_cert`: PEM file of
    /// trusted CAs for `verify-full`; the system roots when `None`).
    pub fn new(
        target: Target,
        sslmode: SslMode,
        root_cert: Option<&Path>,
    ) -> Result<Upstream, String> {
        let server_name = match &target {
            Target::Tcp { host, .. } => host.clone(),
            Target::Unix(_) => "localhost".to_string(),
        };
        let tls = match sslmode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(crate::tls::client_config_no_verify()?),
            SslMode::VerifyFull => Some(crate::tls::client_config_verify(root_cert)?),
        };
        Ok(Upstream {
            target,
            sslmode,
            tls,
            server_name,
            connect_timeout: Duration::from_secs(5),
        })
    }
}

/// Settings of one proxy instance.
#[derive(Clone)]
pub struct ProxyConfig {
    pub upstream: Upstream,
    /// Client-side TLS (answer SSLRequest with `S`); `None` answers `N`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest message accepted from either side (header included).
    pub max_message: u32,
    /// Time a client has to send its startup packet.
    pub startup_timeout: Duration,
    /// Longest a session waits at a closed gate before it is let through.
    pub gate_max_hold: Duration,
    /// Longest graceful shutdown waits for open transactions.
    pub shutdown_timeout: Duration,
    /// Size of each direction's read buffer.
    pub buffer_size: usize,
}

impl ProxyConfig {
    pub fn new(upstream: Upstream) -> ProxyConfig {
        ProxyConfig {
            upstream,
            tls: None,
            // Postgres' own limit for most messages is 1 GiB.
            max_message: 0x4000_0000 + 1024,
            startup_timeout: Duration::from_secs(60),
            gate_max_hold: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            buffer_size: 16 * 1024,
        }
    }
}
