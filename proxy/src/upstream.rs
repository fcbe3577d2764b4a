//! Opening a connection to Postgres: TCP or Unix socket, then SSLRequest and
//! a TLS handshake as `sslmode` asks.

use crate::config::{SslMode, Target, Upstream};
use crate::stream::Stream;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::pki_types::ServerName;

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Connect to Postgres (before any startup message), within the upstream's
/// connect timeout.
pub async fn connect(up: &Upstream) -> io::Result<Stream> {
    match tokio::time::timeout(up.connect_timeout, connect_inner(up)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {:?}", up.connect_timeout),
        )),
    }
}

async fn connect_inner(up: &Upstream) -> io::Result<Stream> {
    let mut stream = match &up.target {
        Target::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Stream::tcp(s)?
        }
        Target::Unix(path) => Stream::unix(UnixStream::connect(path).await?)?,
    };
    let Some(tls) = up.tls.clone().filter(|_| up.sslmode != SslMode::Disable) else {
        return Ok(stream);
    };
    let mut req = bytes::BytesMut::with_capacity(8);
    postgres_protocol::message::frontend::ssl_request(&mut req);
    stream.write_all(&req).await?;
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {
            let name = ServerName::try_from(up.server_name.clone())
                .map_err(|e| other(format!("server name {:?}: {e}", up.server_name)))?;
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| other(format!("TLS handshake with Postgres: {e}")))?;
            Ok(Stream::TlsClient(Box::new(tls)))
        }
        b'N' if up.sslmode == SslMode::Prefer => Ok(stream),
        b'N' => Err(other(format!(
            "Postgres does not accept TLS, but sslmode is {:?}",
            up.sslmode
        ))),
        other_byte => Err(other(format!(
            "unexpected answer {other_byte:#04x} from Postgres to SSLRequest"
        ))),
    }
}

/// Forward a CancelRequest packet verbatim on a fresh connection; Postgres
/// checks the key.
pub async fn cancel(up: &Upstream, packet: &[u8]) -> io::Result<()> {
    let mut s = connect(up).await?;
    s.write_all(packet).await?;
    s.flush().await?;
    // Postgres closes the connection once it has read the request.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(up.connect_timeout, s.read(&mut sink)).await;
    Ok(())
}
