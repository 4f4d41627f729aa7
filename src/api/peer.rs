//! Who is on the other end of a connection. Every accepted connection, whatever
//! listener it came from, is a [`Conn`] carrying a [`Peer`] and its place in
//! [`super::peers`]; tonic puts both ([`ConnInfo`]) in each request's
//! extensions, where [`super::auth`] and [`super::peer_calls`] decide. When the
//! peer limits close a connection, its reads and writes fail, which is how a
//! connection served by tonic is ended from outside.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::peers::{ConnRef, ConnSlot};

/// What the daemon knows of a caller, by the kind of listener it came through.
#[derive(Clone, Debug)]
pub enum Peer {
    /// A Unix-socket peer, as the kernel reported it (SO_PEERCRED) at accept.
    Unix { uid: u32, pid: Option<i32> },
    /// Plain TCP: only the address, which proves nothing; a token must.
    Tcp { addr: SocketAddr },
    /// TLS: the address and the names of the client certificate, if one was
    /// presented (DNS SANs, then the subject CN).
    Tls {
        addr: SocketAddr,
        client_names: Option<Arc<[String]>>,
    },
}

/// Any byte stream a listener accepted.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What each request of a connection carries in its extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: Peer,
    pub conn: ConnRef,
}

/// The peer of a request, as its listener knew it.
pub fn peer_of<T>(request: &tonic::Request<T>) -> Option<&Peer> {
    request.extensions().get::<ConnInfo>().map(|c| &c.peer)
}

/// One accepted connection: its stream (Unix, TCP or TLS over TCP), its peer,
/// and its place among the open connections (given back when it is dropped).
pub struct Conn {
    io: Box<dyn Io>,
    info: ConnInfo,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    _slot: ConnSlot,
}

impl Conn {
    pub fn new(io: impl Io, peer: Peer, slot: ConnSlot) -> Conn {
        Conn {
            io: Box::new(io),
            info: ConnInfo {
                peer,
                conn: slot.conn(),
            },
            closed: Box::pin(slot.closed()),
            _slot: slot,
        }
    }

    /// Polled before every read and write, so a connection the limits close
    /// fails at its next turn, and a pending read is woken to fail at once.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.closed.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by obhostd's limits on unauthenticated connections",
            )
        })
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
