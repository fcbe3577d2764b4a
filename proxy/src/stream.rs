//! One stream type for every leg: plain TCP, a Unix socket (towards
//! Postgres), or TLS on either side.

use crate::lean::Lean;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub type LeanTcp = Lean<std::net::TcpStream>;
pub type LeanUnix = Lean<std::os::unix::net::UnixStream>;

pub enum Stream {
    Tcp(LeanTcp),
    Unix(LeanUnix),
    /// TLS terminated by the proxy (client side).
    TlsServer(Box<tokio_rustls::server::TlsStream<LeanTcp>>),
    /// TLS started by the proxy (Postgres side).
    TlsClient(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl Stream {
    /// A plain TCP socket from tokio's, registered for reading only.
    pub fn tcp(s: tokio::net::TcpStream) -> io::Result<Stream> {
        Ok(Stream::Tcp(Lean::new(s.into_std()?)?))
    }

    /// A Unix socket from tokio's, registered for reading only.
    pub fn unix(s: tokio::net::UnixStream) -> io::Result<Stream> {
        Ok(Stream::Unix(Lean::new(s.into_std()?)?))
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::TlsServer($s) => $e,
            Stream::TlsClient($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
