//! Who is on the other end of a connection. Every accepted connection, whatever
//! listener it came from, is a [`Conn`] carrying a [`Peer`]; tonic puts the peer
//! in each request's extensions, where [`super::auth`] decides.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// One accepted connection: its stream (Unix, TCP or TLS over TCP) and its peer.
pub struct Conn {
    io: Box<dyn Io>,
    peer: Peer,
}

impl Conn {
    pub fn new(io: impl Io, peer: Peer) -> Conn {
        Conn {
            io: Box::new(io),
            peer,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
