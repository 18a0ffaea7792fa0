//! The pooler's socket to PostgreSQL: TCP or a Unix socket, so the relay and the login are
//! written once. A backend host that starts with '/' is a Unix-socket directory, as in libpq:
//! the socket is `{host}/.s.PGSQL.{port}`.
//!
//! Besides reading and writing, the idle liveness probe (`Server::is_alive`) needs the
//! reactor's readiness, a non-consuming peek and a non-blocking read of the raw socket; those
//! are here too, for each kind.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The Unix socket a backend `host`/`port` names, if `host` is a directory (starts with '/').
pub fn unix_socket_path(host: &str, port: u16) -> Option<PathBuf> {
    host.starts_with('/')
        .then(|| PathBuf::from(format!("{host}/.s.PGSQL.{port}")))
}

/// A backend address for messages: the socket path or `host:port`.
pub fn display_address(host: &str, port: u16) -> String {
    match unix_socket_path(host, port) {
        Some(path) => path.display().to_string(),
        None => format!("{host}:{port}"),
    }
}

/// A connection to a server.
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl ServerStream {
    /// Connects to a backend (no TLS yet); TCP sockets get TCP_NODELAY: the relay writes
    /// whole batches and must not wait for acknowledgements.
    pub async fn connect(host: &str, port: u16) -> io::Result<ServerStream> {
        match unix_socket_path(host, port) {
            Some(path) => Ok(ServerStream::Unix(UnixStream::connect(path).await?)),
            None => {
                let tcp = TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                Ok(ServerStream::Tcp(tcp))
            }
        }
    }

    /// Whether the reactor knows the socket to be readable (registers no waker that matters:
    /// callers pass a no-op one).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ServerStream::Tcp(s) => s.poll_read_ready(cx),
            ServerStream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Reads from the raw socket without waiting (WouldBlock when nothing is there).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_read(buf),
            ServerStream::Unix(s) => s.try_read(buf),
        }
    }

    /// True when the kernel has nothing to read on the socket, neither data nor end of file:
    /// one recv(MSG_PEEK) on a non-blocking socket, which consumes nothing.
    pub fn nothing_to_read(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peeked = match self {
            ServerStream::Tcp(s) => socket2::SockRef::from(s).peek(&mut probe),
            ServerStream::Unix(s) => socket2::SockRef::from(s).peek(&mut probe),
        };
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Best effort, never waits: writes `bytes` if the socket takes them now (Terminate on
    /// close).
    pub fn try_write(&mut self, bytes: &[u8]) {
        let _ = match self {
            ServerStream::Tcp(s) => s.try_write(bytes),
            ServerStream::Unix(s) => s.try_write(bytes),
        };
    }
}

impl AsyncRead for ServerStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_starting_with_a_slash_is_a_socket_directory() {
        assert_eq!(
            unix_socket_path("/run/pg", 5433),
            Some(PathBuf::from("/run/pg/.s.PGSQL.5433"))
        );
        assert_eq!(unix_socket_path("db.example", 5432), None);
        assert_eq!(display_address("10.0.0.1", 5432), "10.0.0.1:5432");
        assert_eq!(display_address("/tmp", 1), "/tmp/.s.PGSQL.1");
    }
}
