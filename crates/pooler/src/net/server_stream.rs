//! The pooler's socket to PostgreSQL: TCP, TLS over TCP or a Unix socket, so the relay and the
//! login are written once. A backend host that starts with '/' is a Unix-socket directory, as
//! in libpq: the socket is `{host}/.s.PGSQL.{port}`. Over TCP the pooler asks for TLS first
//! (SSLRequest) and encrypts when the server accepts, as libpq's `sslmode=prefer` does (see
//! `tls::backend_connector`); a Unix socket is local and stays plain.
//!
//! Besides reading and writing, the idle liveness probe (`Server::is_alive`) needs the
//! reactor's readiness, a non-consuming peek and a non-blocking read of the raw socket; those
//! are here too, for each kind.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::messages::startup;

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

/// A connection to a server. TLS is boxed: rustls state is large, and local backends (Unix
/// sockets) do without.
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl ServerStream {
    /// Connects to a backend for a session: over TCP with TLS when the server offers it.
    pub async fn connect(host: &str, port: u16) -> io::Result<ServerStream> {
        match ServerStream::connect_plain(host, port).await? {
            ServerStream::Tcp(tcp) => ServerStream::negotiate_tls(tcp, host).await,
            other => Ok(other),
        }
    }

    /// SSLRequest, then a TLS handshake on 'S' or plaintext on 'N'.
    async fn negotiate_tls(mut tcp: TcpStream, host: &str) -> io::Result<ServerStream> {
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8u32.to_be_bytes());
        request[4..].copy_from_slice(&startup::SSL_REQUEST.to_be_bytes());
        tcp.write_all(&request).await?;
        // Exactly one byte: anything the server sent after it before the handshake must not
        // be taken for TLS-protected data.
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match &answer[..] {
            startup::ENCRYPTION_REFUSED if crate::tls::backends_verified() => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("server {host} refused TLS, which pgbay requires of servers over TCP"),
            )),
            startup::ENCRYPTION_REFUSED => Ok(ServerStream::Tcp(tcp)),
            startup::ENCRYPTION_ACCEPTED => {
                // SNI only for a DNS name; an address (or anything else) is sent as none.
                let name =
                    rustls_pki_types::ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
                        rustls_pki_types::ServerName::IpAddress(
                            std::net::Ipv4Addr::UNSPECIFIED.into(),
                        )
                    });
                let tls = crate::tls::backend_connector()
                    .connect(name, tcp)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
                Ok(ServerStream::Tls(Box::new(tls)))
            }
            // An ErrorResponse ('E') from a server too old or refusing the request.
            _ => Err(protocol(
                "server answered SSLRequest with neither 'S' nor 'N'",
            )),
        }
    }

    /// Connects without TLS (a CancelRequest, or the first step of `connect`); TCP sockets get
    /// TCP_NODELAY: the relay writes whole batches and must not wait for acknowledgements.
    pub async fn connect_plain(host: &str, port: u16) -> io::Result<ServerStream> {
        match unix_socket_path(host, port) {
            Some(path) => Ok(ServerStream::Unix(UnixStream::connect(path).await?)),
            None => {
                let tcp = TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                Ok(ServerStream::Tcp(tcp))
            }
        }
    }

    /// Reads from the raw socket without waiting (WouldBlock when nothing is there). Under
    /// TLS the bytes are ciphertext, lost to the session: only for a connection that is
    /// dropped if anything is read.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_read(buf),
            ServerStream::Unix(s) => s.try_read(buf),
            ServerStream::Tls(s) => s.get_ref().0.try_read(buf),
        }
    }

    /// True when the kernel has nothing to read on the socket, neither data nor end of file:
    /// one recv(MSG_PEEK) on a non-blocking socket, which consumes nothing.
    pub fn nothing_to_read(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peeked = match self {
            ServerStream::Tcp(s) => socket2::SockRef::from(s).peek(&mut probe),
            ServerStream::Unix(s) => socket2::SockRef::from(s).peek(&mut probe),
            ServerStream::Tls(s) => socket2::SockRef::from(s.get_ref().0).peek(&mut probe),
        };
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Best effort, never waits: writes `bytes` if the socket takes them now (Terminate on
    /// close; under TLS followed by close_notify).
    pub fn try_write(&mut self, bytes: &[u8]) {
        match self {
            ServerStream::Tcp(s) => {
                let _ = s.try_write(bytes);
            }
            ServerStream::Unix(s) => {
                let _ = s.try_write(bytes);
            }
            ServerStream::Tls(s) => {
                use std::io::Write;
                let (tcp, tls) = s.get_mut();
                if tls.writer().write_all(bytes).is_err() {
                    return;
                }
                tls.send_close_notify();
                let mut raw = TryWriter(tcp);
                while tls.wants_write() {
                    if tls.write_tls(&mut raw).is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Whether writes may sit in a buffer until flushed (TLS records).
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }
}

/// `std::io::Write` over a tokio socket that never waits.
struct TryWriter<'a>(&'a TcpStream);

impl std::io::Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
