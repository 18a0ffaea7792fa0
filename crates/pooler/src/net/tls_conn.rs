//! A TLS client connection after its handshake: rustls' connection state over the tokio
//! socket, read and written by the relay without tokio-rustls' stream in between.
//!
//! Why: the relay polls its client's socket a few times per transaction only to learn that
//! nothing came (`relay::pump`, `session::wait_idle`). Through tokio-rustls each such poll
//! went through its buffered-read loop (an extra read attempt after every read that returned
//! data) and made and dropped a `WouldBlock` error on the way out; here a poll with no
//! plaintext buffered asks the socket's readiness first, which the reactor already knows, and
//! returns Pending from there. A read hands out what one socket read decrypted, without
//! trying the socket again. The handshake itself is still tokio-rustls' (`login::negotiate`).

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct TlsConn {
    tcp: TcpStream,
    conn: ServerConnection,
    /// The socket reached end of file: rustls' reader says whether cleanly.
    eof: bool,
    /// `close_notify` queued (`poll_shutdown`).
    closing: bool,
}

impl TlsConn {
    /// Takes over a connection whose handshake is done (`tokio_rustls::server::TlsStream::
    /// into_inner`): whatever rustls already received or has to send stays in `conn`.
    pub fn new(tcp: TcpStream, conn: ServerConnection) -> TlsConn {
        TlsConn {
            tcp,
            conn,
            eof: false,
            closing: false,
        }
    }

    /// Sends what rustls has encrypted; Pending when the socket is full.
    fn write_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut io = SocketIo {
            tcp: &mut self.tcp,
            cx,
        };
        match self.conn.write_tls(&mut io) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            r => Poll::Ready(r),
        }
    }

    /// Sends everything rustls holds.
    fn flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            if ready!(self.write_io(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The socket as the blocking `Read`/`Write` rustls takes, for one poll: Pending becomes
/// `WouldBlock` (with this task's waker registered by tokio).
struct SocketIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SocketIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SocketIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Plaintext to hand out, or the end of the stream to report.
            if !this.conn.wants_read() || this.eof {
                let mut reader = this.conn.reader();
                match reader.fill_buf() {
                    Ok(data) => {
                        let n = data.len().min(buf.remaining());
                        buf.put_slice(&data[..n]);
                        reader.consume(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // More TLS bytes are needed. The common case of the relay's polls: nothing came,
            // which the reactor's readiness says without a syscall.
            ready!(this.tcp.poll_read_ready(cx))?;
            let mut io = SocketIo {
                tcp: &mut this.tcp,
                cx,
            };
            match this.conn.read_tls(&mut io) {
                Ok(0) => this.eof = true,
                Ok(_) => {
                    if let Err(e) = this.conn.process_new_packets() {
                        // The alert rustls queued goes out if the socket takes it now.
                        let _ = this.write_io(cx);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut pos = 0;
        while pos < buf.len() {
            // Encrypted into rustls' send buffer (up to its limit), then sent.
            pos += this.conn.writer().write(&buf[pos..])?;
            while this.conn.wants_write() {
                match this.write_io(cx) {
                    Poll::Ready(Ok(0)) if pos == 0 => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(0)) | Poll::Pending => {
                        return match pos {
                            0 => Poll::Pending,
                            n => Poll::Ready(Ok(n)),
                        };
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
        }
        Poll::Ready(Ok(pos))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        ready!(this.flush_tls(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.flush_tls(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
