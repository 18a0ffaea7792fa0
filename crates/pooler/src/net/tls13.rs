//! A TLS 1.3 client connection after its handshake, with its records protected by pgbay itself
//! (with the keys rustls negotiated: rustls' decrypter, and ring's AEAD — rustls' own — sealing
//! records in place), as kTLS would: the connection owns no buffer while its client is idle
//! (it borrows its thread's while it reads or writes), and a transaction costs one decryption
//! and one encryption without rustls' buffered-connection machinery (a plaintext copy into a
//! queue and out of it, a state machine and a buffer for each record).
//!
//! How it is set up (`take_over`): the handshake is rustls' (`tokio_rustls`), over `Aligned`,
//! which hands rustls whole TLS records only, so that when the handshake ends rustls holds no
//! part of a later record; the service's rustls config sends no session tickets, so nothing is
//! left to send either. Then the traffic secrets are extracted, and the bytes the client sent
//! after its Finished (still in `Aligned`) are the first this connection decrypts. A TLS 1.2
//! connection stays with rustls (`tls_conn::TlsConn`).
//!
//! What it does not do: key updates. A client's KeyUpdate (which libpq, psycopg, pgjdbc, Go
//! and .NET clients do not send on their own) ends the connection with an error, and so does
//! reaching the cipher suite's confidentiality limit (2^24 records for AES-GCM, sent by the
//! pooler to one client connection): the client reconnects. Any alert other than close_notify,
//! or any record that is not application data, ends the connection too.

use std::cell::Cell;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ring::aead;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, Nonce,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls_conn::TlsConn;
use super::ClientStream;

/// A TLS record header: type, legacy version, length.
const HEADER: usize = 5;
/// The largest record TLS 1.3 allows: 2^14 bytes of plaintext, its content type, padding and
/// the AEAD tag (RFC 8446, 5.2).
const MAX_RECORD: usize = HEADER + (1 << 14) + 256;
/// The largest plaintext a record carries.
const MAX_FRAGMENT: usize = 1 << 14;
/// Plaintext encrypted per `poll_write` call at most (the rest waits for the next call).
const WRITE_BATCH: usize = 4 * MAX_FRAGMENT;

/// The largest buffer a thread keeps for lending (`lend`).
const SPARE_MAX: usize = 4 * MAX_RECORD;
/// The AEAD tag of every TLS 1.3 cipher suite (AES-GCM, ChaCha20-Poly1305).
const TAG: usize = 16;

thread_local! {
    /// A receive and a send buffer each thread lends to the connection it reads or writes: a
    /// connection gives one back once everything in it was handed out or sent, so a
    /// transaction's records cost no allocation and an idle client still holds no buffer.
    static SPARE_IN: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static SPARE_OUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

type Spare = std::thread::LocalKey<Cell<Vec<u8>>>;

/// This thread's spare buffer of a kind (empty, with no capacity if a connection has it).
fn lend(spare: &'static Spare) -> Vec<u8> {
    spare.with(Cell::take)
}

/// Gives an emptied buffer back to this thread: the larger of it and the spare kept.
fn give_back(spare: &'static Spare, mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > SPARE_MAX {
        return;
    }
    buf.clear();
    spare.with(|spare| {
        let kept = spare.take();
        spare.set(if kept.capacity() >= buf.capacity() {
            kept
        } else {
            buf
        });
    });
}

/// The length of the whole record at the start of `buf`, once its header is there.
fn record_len(buf: &[u8]) -> Option<usize> {
    let h = buf.get(..HEADER)?;
    Some(HEADER + u16::from_be_bytes([h[3], h[4]]) as usize)
}

/// The client's socket during the TLS handshake: hands rustls whole records (a record longer
/// than rustls' read in pieces, never the start of the next one with the end of the last), so
/// that the bytes after the handshake stay here (`take_over`).
pub struct Aligned {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Bytes of the record being handed out still to hand out.
    rest: usize,
}

impl Aligned {
    pub fn new(tcp: TcpStream) -> Aligned {
        Aligned {
            tcp,
            buf: Vec::new(),
            rest: 0,
        }
    }
}

impl AsyncRead for Aligned {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rest == 0 {
                if let Some(len) = record_len(&this.buf) {
                    this.rest = len;
                }
            }
            // The record being handed out (complete or not: rustls waits for its end).
            let give = this.rest.min(this.buf.len()).min(out.remaining());
            if give > 0 {
                out.put_slice(&this.buf[..give]);
                this.buf.drain(..give);
                this.rest -= give;
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 2048];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: whatever is here, then the end.
                let give = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..give]);
                this.buf.drain(..give);
                return Poll::Ready(Ok(()));
            }
            this.buf.extend_from_slice(rb.filled());
        }
    }
}

impl AsyncWrite for Aligned {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The stream a handshake over `Aligned` leads to: `Tls13` for TLS 1.3, else rustls'
/// connection (`TlsConn`) fed with the bytes `Aligned` still holds.
pub fn take_over(aligned: Aligned, mut conn: ServerConnection) -> io::Result<ClientStream> {
    let Aligned { tcp, buf, .. } = aligned;
    let suite = match conn.negotiated_cipher_suite() {
        Some(rustls::SupportedCipherSuite::Tls13(s))
            if conn.protocol_version() == Some(ProtocolVersion::TLSv1_3) && !conn.wants_write() =>
        {
            s
        }
        _ => {
            if !buf.is_empty() {
                conn.read_tls(&mut &buf[..])?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            return Ok(ClientStream::Tls(Box::new(TlsConn::new(tcp, conn))));
        }
    };
    // Plaintext rustls decrypted already (none when the client waited for the handshake's
    // end) comes before the records still to decrypt.
    let mut inbuf = Vec::new();
    let mut reader = conn.reader();
    let mut chunk = [0u8; 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let plain = inbuf.len();
    inbuf.extend_from_slice(&buf);
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| io::Error::other(format!("TLS secrets: {e}")))?;
    let (rx_seq, rx) = secrets.rx;
    let (tx_seq, tx) = secrets.tx;
    let tx = Sealer::new(tx)?;
    let (_, rx_key, rx_iv) = traffic_keys(rx)?;
    Ok(ClientStream::Tls13(Box::new(Tls13 {
        tcp,
        rx: suite.aead_alg.decrypter(rx_key, rx_iv),
        rx_seq,
        tx,
        tx_seq,
        tx_limit: suite.common.confidentiality_limit,
        inbuf,
        plain: (0, plain),
        next: plain,
        outbuf: Vec::new(),
        sent: 0,
        eof: None,
        closing: false,
    })))
}

/// See the module docs.
pub struct Tls13 {
    tcp: TcpStream,
    rx: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    tx: Sealer,
    tx_seq: u64,
    tx_limit: u64,
    /// Received bytes: decrypted plaintext not handed out yet at `plain`, records still to
    /// decrypt from `next`. Freed once everything in it was handed out.
    inbuf: Vec<u8>,
    plain: (usize, usize),
    next: usize,
    /// Encrypted records not sent yet, from `sent`. Freed once sent.
    outbuf: Vec<u8>,
    sent: usize,
    /// The client ended: cleanly (close_notify: true) or not.
    eof: Option<bool>,
    closing: bool,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

impl Tls13 {
    /// Decrypts the record at `next` (whole, checked by the caller).
    fn open(&mut self, len: usize) -> io::Result<()> {
        if self.rx_seq == u64::MAX {
            return Err(bad("too many records"));
        }
        let start = self.next;
        let base = self.inbuf.as_ptr() as usize;
        let rec = &mut self.inbuf[start..start + len];
        if rec[0] != u8::from(ContentType::ApplicationData) || rec[1..3] != [3, 3] {
            return Err(bad("unexpected record after the handshake"));
        }
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut rec[HEADER..],
        );
        let plain = self
            .rx
            .decrypt(msg, self.rx_seq)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.rx_seq += 1;
        let at = plain.payload.as_ptr() as usize - base;
        let n = plain.payload.len();
        match plain.typ {
            ContentType::ApplicationData => self.plain = (at, at + n),
            ContentType::Alert if plain.payload == [1, 0] || plain.payload == [2, 0] => {
                // close_notify
                self.eof = Some(true);
            }
            ContentType::Alert => return Err(bad("alert from the client")),
            // KeyUpdate and anything else after the handshake (module docs).
            _ => return Err(bad("post-handshake message not supported")),
        }
        self.next = start + len;
        Ok(())
    }

    /// Encrypts `chunk` (at most `MAX_FRAGMENT` bytes) of content `typ` into a record at the
    /// end of `outbuf` (RFC 8446, 5.2: the plaintext and its content type sealed in place, the
    /// record header as additional data, the nonce the IV with the record's sequence number).
    fn seal(&mut self, typ: ContentType, chunk: &[u8]) -> io::Result<()> {
        if self.tx_seq >= self.tx_limit {
            return Err(bad("confidentiality limit reached, reconnect"));
        }
        if self.outbuf.capacity() == 0 {
            self.outbuf = lend(&SPARE_OUT);
        }
        let header = make_tls13_aad(chunk.len() + 1 + TAG);
        let start = self.outbuf.len();
        self.outbuf.reserve(HEADER + chunk.len() + 1 + TAG);
        self.outbuf.extend_from_slice(&header);
        self.outbuf.extend_from_slice(chunk);
        self.outbuf.push(u8::from(typ));
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.tx.iv, self.tx_seq).0);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                nonce,
                aead::Aad::from(header),
                &mut self.outbuf[start + HEADER..],
            )
            .map_err(|_| io::Error::other("TLS: encryption failed"))?;
        self.outbuf.extend_from_slice(tag.as_ref());
        self.tx_seq += 1;
        Ok(())
    }

    /// Sends `outbuf`; Ready once all of it is sent (and then gives it back).
    fn send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outbuf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outbuf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        give_back(&SPARE_OUT, std::mem::take(&mut self.outbuf));
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// The sending direction's key: ring's AEAD (rustls' own, in its `ring` provider) with the key
/// and IV rustls negotiated.
struct Sealer {
    key: aead::LessSafeKey,
    iv: Iv,
}

/// One direction's traffic key and IV, with ring's name for its AEAD (the TLS 1.3 suites).
fn traffic_keys(
    secret: ConnectionTrafficSecrets,
) -> io::Result<(&'static aead::Algorithm, AeadKey, Iv)> {
    match secret {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => Ok((&aead::AES_128_GCM, key, iv)),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => Ok((&aead::AES_256_GCM, key, iv)),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Ok((&aead::CHACHA20_POLY1305, key, iv))
        }
        _ => Err(io::Error::other("TLS: unsupported cipher")),
    }
}

impl Sealer {
    fn new(secret: ConnectionTrafficSecrets) -> io::Result<Sealer> {
        let (alg, key, iv) = traffic_keys(secret)?;
        let key = aead::UnboundKey::new(alg, key.as_ref())
            .map_err(|_| io::Error::other("TLS: bad traffic key"))?;
        Ok(Sealer {
            key: aead::LessSafeKey::new(key),
            iv,
        })
    }
}

impl AsyncRead for Tls13 {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let (from, to) = this.plain;
            if from < to {
                let n = (to - from).min(buf.remaining());
                buf.put_slice(&this.inbuf[from..from + n]);
                this.plain.0 += n;
                if this.plain.0 == to && this.next == this.inbuf.len() {
                    // All handed out: an idle client holds no buffer.
                    give_back(&SPARE_IN, std::mem::take(&mut this.inbuf));
                    this.plain = (0, 0);
                    this.next = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.eof {
                Some(true) => return Poll::Ready(Ok(())),
                Some(false) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                None => {}
            }
            let pending = &this.inbuf[this.next..];
            if let Some(len) = record_len(pending) {
                if len > MAX_RECORD {
                    return Poll::Ready(Err(bad("record too long")));
                }
                if pending.len() >= len {
                    this.open(len)?;
                    continue;
                }
            }
            // More bytes are needed. Nothing came, usually: the reactor knows it already.
            ready!(this.tcp.poll_read_ready(cx))?;
            if this.next > 0 {
                this.inbuf.drain(..this.next);
                this.next = 0;
                this.plain = (0, 0);
            }
            if this.inbuf.capacity() == 0 {
                this.inbuf = lend(&SPARE_IN);
            }
            let want = record_len(&this.inbuf).unwrap_or(HEADER).max(2048);
            this.inbuf.reserve(want.saturating_sub(this.inbuf.len()));
            let len = this.inbuf.len();
            let spare = this.inbuf.spare_capacity_mut();
            let mut rb = ReadBuf::uninit(spare);
            let polled = Pin::new(&mut this.tcp).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            if polled.is_pending() {
                // Readiness the socket did not have after all: a lent buffer goes back.
                if this.inbuf.is_empty() {
                    give_back(&SPARE_IN, std::mem::take(&mut this.inbuf));
                }
                return Poll::Pending;
            }
            ready!(polled)?;
            if n == 0 {
                this.eof = Some(false);
                continue;
            }
            // SAFETY: `poll_read` initialised `n` bytes of the spare capacity after `len`.
            unsafe { this.inbuf.set_len(len + n) };
        }
    }
}

impl AsyncWrite for Tls13 {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Records already made go first: the socket sets the pace.
        ready!(this.send(cx))?;
        let take = buf.len().min(WRITE_BATCH);
        for chunk in buf[..take].chunks(MAX_FRAGMENT) {
            this.seal(ContentType::ApplicationData, chunk)?;
        }
        // Sent now if the socket takes it, else by the next write or flush.
        if let Poll::Ready(Err(e)) = this.send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            // close_notify (warning level).
            this.seal(ContentType::Alert, &[1, 0])?;
        }
        ready!(this.send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_thread_lends_its_spare_buffer_once_and_keeps_the_larger() {
        std::thread::spawn(|| {
            assert_eq!(lend(&SPARE_IN).capacity(), 0, "a new thread has no spare");
            let mut used = Vec::with_capacity(4096);
            used.extend_from_slice(b"handed out");
            give_back(&SPARE_IN, used);
            assert_eq!(lend(&SPARE_OUT).capacity(), 0, "one spare of each kind");
            let lent = lend(&SPARE_IN);
            assert!(lent.is_empty() && lent.capacity() >= 4096);
            assert_eq!(
                lend(&SPARE_IN).capacity(),
                0,
                "lent to one connection at a time"
            );
            give_back(&SPARE_IN, Vec::with_capacity(2048));
            give_back(&SPARE_IN, lent);
            assert!(lend(&SPARE_IN).capacity() >= 4096, "the larger one is kept");
            give_back(&SPARE_IN, Vec::with_capacity(SPARE_MAX + 1));
            assert_eq!(
                lend(&SPARE_IN).capacity(),
                0,
                "an oversized buffer is freed"
            );
        })
        .join()
        .unwrap();
    }

    /// A self-signed certificate for `localhost`, and the pooler's acceptor presenting it.
    fn localhost_acceptor() -> (rcgen::CertifiedKey, tokio_rustls::TlsAcceptor) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cfg = crate::config::TlsConfig {
            cert_chain_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
            required: false,
        };
        (cert, crate::tls::acceptor(&cfg).unwrap())
    }

    /// The next connection on `listener`, through the pooler's TLS handshake and `take_over`.
    async fn accept_tls(
        listener: &tokio::net::TcpListener,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> ClientStream {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(Aligned::new(tcp)).await.unwrap();
        let (aligned, conn) = tls.into_inner();
        take_over(aligned, conn).unwrap()
    }

    /// Echoes what `s` reads until the end of its stream.
    async fn echo(s: &mut ClientStream) -> io::Result<()> {
        let mut buf = vec![0u8; 7000];
        loop {
            match s.read(&mut buf).await? {
                0 => return Ok(()),
                n => {
                    s.write_all(&buf[..n]).await.unwrap();
                    s.flush().await.unwrap();
                }
            }
        }
    }

    /// Each TLS 1.3 cipher suite: the records `take_over`'s stream seals open at a verifying
    /// rustls client and the client's open here, one byte and several records' worth.
    #[tokio::test]
    async fn every_tls13_cipher_suite_round_trips() {
        use rustls::CipherSuite::*;
        let (cert, acceptor) = localhost_acceptor();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        for suite in [
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = acceptor.clone();
            let server = tokio::spawn(async move {
                let mut s = accept_tls(&listener, &acceptor).await;
                echo(&mut s).await
            });
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites.retain(|s| s.suite() == suite);
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut c = connector.connect(name, tcp).await.unwrap();
            let negotiated = c.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            assert_eq!(negotiated, Some(suite));
            let mut one = [0u8; 1];
            c.write_all(b"1").await.unwrap();
            c.flush().await.unwrap();
            c.read_exact(&mut one).await.unwrap();
            assert_eq!(&one, b"1", "{suite:?}");
            c.write_all(&big).await.unwrap();
            c.flush().await.unwrap();
            let mut back = vec![0u8; big.len()];
            c.read_exact(&mut back).await.unwrap();
            assert!(back == big, "{suite:?}: the echo differs");
            c.shutdown().await.unwrap();
            server.await.unwrap().unwrap();
        }
    }

    /// A read that filled the receive buffer exactly leaves tokio's readiness set with nothing
    /// left on the socket: the next `poll_read` finds the readiness stale, gives the lent buffer
    /// back (an idle client holds none) and waits; the connection then reads on as before.
    #[tokio::test]
    async fn stale_readiness_gives_the_lent_buffer_back() {
        let (_, acceptor) = localhost_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { accept_tls(&listener, &acceptor).await });
        let connector = crate::tls::backend_connector();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = connector.connect(name, tcp).await.unwrap();
        let ClientStream::Tls13(mut s) = server.await.unwrap() else {
            panic!("not served by Tls13");
        };
        assert_eq!(
            s.inbuf.capacity(),
            0,
            "nothing was sent after the handshake"
        );
        assert_eq!(
            lend(&SPARE_IN).capacity(),
            0,
            "this thread lent nothing yet"
        );
        // One record of exactly the 2,048 bytes a first read reserves: header, plaintext,
        // content type and tag.
        let plain: Vec<u8> = (0..2048 - HEADER - 1 - TAG).map(|i| i as u8).collect();
        c.write_all(&plain).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; 4096];
        let n = s.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], &plain[..]);
        assert_eq!(
            s.inbuf.capacity(),
            0,
            "all handed out: the buffer went back"
        );
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            s.tcp.poll_read_ready(&mut cx).is_ready(),
            "the exact fill left the readiness set (the case under test)"
        );
        let mut rb = ReadBuf::new(&mut got);
        assert!(Pin::new(&mut *s).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(s.inbuf.capacity(), 0, "the stale read gave the buffer back");
        assert!(
            s.tcp.poll_read_ready(&mut cx).is_pending(),
            "readiness cleared"
        );
        let spare = lend(&SPARE_IN);
        assert_eq!(spare.capacity(), 2048, "the thread has its buffer again");
        give_back(&SPARE_IN, spare);
        c.write_all(b"after").await.unwrap();
        c.flush().await.unwrap();
        let n = s.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"after");
    }

    /// A TLS 1.3 client (rustls, as tokio-postgres-rustls uses it) against `take_over`'s
    /// stream: records both ways (one larger than a record), bytes sent right after the
    /// handshake, close_notify as the end of the stream; and a KeyUpdate refused.
    #[tokio::test]
    async fn serves_a_rustls_client_and_refuses_key_updates() {
        let (_, acceptor) = localhost_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let mut s = accept_tls(&listener, &acceptor).await;
                assert!(matches!(s, ClientStream::Tls13(_)));
                results.push(echo(&mut s).await);
            }
            results
        });
        let connector = crate::tls::backend_connector();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = connector.connect(name.clone(), tcp).await.unwrap();
        assert_eq!(
            c.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
        let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(b"hello").await.unwrap();
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        let mut back = vec![0u8; 5 + big.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back[..5], b"hello");
        assert_eq!(&back[5..], &big[..]);
        c.shutdown().await.unwrap();
        // A second client asks for a key update: the pooler's side ends with an error.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = connector.connect(name, tcp).await.unwrap();
        c.write_all(b"x").await.unwrap();
        c.flush().await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(b"y").await.unwrap();
        c.flush().await.unwrap();
        let results = server.await.unwrap();
        assert!(results[0].is_ok(), "{:?}", results[0]);
        let e = results[1].as_ref().unwrap_err();
        assert!(e.to_string().contains("post-handshake"), "{e}");
    }
}
