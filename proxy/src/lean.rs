//! A socket registered with the reactor for readability only.
//!
//! tokio registers its own sockets for reading and writing at once, and an
//! edge-triggered writable event then wakes the proxy each time a peer
//! drains what the proxy wrote: on a request/response protocol that is one
//! wake-up in three for nothing (strace: three `epoll_wait` per select-only
//! transaction at one client, where PgBouncer makes two). A [`Lean`] socket
//! writes straight away and registers a duplicate of its descriptor for
//! writability only the first time a write would block.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// What a [`Lean`] socket needs of the std socket under it.
pub trait Sock: AsRawFd + Sized + Unpin
where
    for<'a> &'a Self: Read + Write,
{
    fn duplicate(&self) -> io::Result<Self>;
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Sock for std::net::TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Sock for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// A non-blocking socket, readable through the reactor, written directly.
pub struct Lean<T: Sock>
where
    for<'a> &'a T: Read + Write,
{
    io: AsyncFd<T>,
    /// A duplicate registered for writability, made when a write first
    /// would block.
    out: Option<AsyncFd<T>>,
}

impl<T: Sock> Lean<T>
where
    for<'a> &'a T: Read + Write,
{
    /// `sock` must be in non-blocking mode (what tokio's `into_std` gives).
    pub fn new(sock: T) -> io::Result<Lean<T>> {
        Ok(Lean {
            io: register(sock, Interest::READABLE)?,
            out: None,
        })
    }

    /// Borrowed halves, for both directions in one task.
    pub fn split(&mut self) -> (LeanRead<'_, T>, LeanWrite<'_, T>) {
        (
            LeanRead(&self.io),
            LeanWrite {
                io: &self.io,
                out: &mut self.out,
            },
        )
    }
}

fn register<T: Sock>(sock: T, interest: Interest) -> io::Result<AsyncFd<T>>
where
    for<'a> &'a T: Read + Write,
{
    // Deprecated because a generic `T` could hand out another descriptor
    // later; an owned std socket keeps one open descriptor for as long as the
    // AsyncFd that takes it lives (the crate forbids `unsafe`, so not the
    // unsafe successor).
    #[allow(deprecated)]
    AsyncFd::with_interest(sock, interest)
}

impl<T: Sock> AsyncRead for Lean<T>
where
    for<'a> &'a T: Read + Write,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().0).poll_read(cx, buf)
    }
}

impl<T: Sock> AsyncWrite for Lean<T>
where
    for<'a> &'a T: Read + Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().split().1).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().1).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().1).poll_shutdown(cx)
    }
}

/// The reading half of a split [`Lean`] socket.
pub struct LeanRead<'a, T: Sock>(&'a AsyncFd<T>)
where
    for<'b> &'b T: Read + Write;

/// The writing half of a split [`Lean`] socket.
pub struct LeanWrite<'a, T: Sock>
where
    for<'b> &'b T: Read + Write,
{
    io: &'a AsyncFd<T>,
    out: &'a mut Option<AsyncFd<T>>,
}

impl<T: Sock> AsyncRead for LeanRead<'_, T>
where
    for<'a> &'a T: Read + Write,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let want = unfilled.len();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket: the next read waits for
                    // the reactor instead of trying (as tokio's own sockets do).
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl<T: Sock> AsyncWrite for LeanWrite<'_, T>
where
    for<'a> &'a T: Read + Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.out.is_none() {
            match me.io.get_ref().write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Registered after the failed write: if the socket became
                    // writable in between, the registration reports it at once.
                    *me.out = Some(register(me.io.get_ref().duplicate()?, Interest::WRITABLE)?);
                }
                r => return Poll::Ready(r),
            }
        }
        let Some(w) = me.out.as_ref() else {
            return Poll::Ready(Err(io::Error::other("no writable registration")));
        };
        loop {
            let mut guard = ready!(w.poll_write_ready(cx))?;
            match guard.try_io(|_| me.io.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown_write())
    }
}
