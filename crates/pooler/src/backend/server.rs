//! One connection from the pooler to PostgreSQL: login (whatever authentication the server
//! asks for), the parameters it reported, and the buffers a client session uses while attached.
//!
//! The forwarding buffers live here, not in the client, so an idle client owns none: pool size
//! bounds the buffer memory, not the client count.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use super::pool::SlotToken;
use crate::auth::md5::md5_response;
use crate::auth::scram::{ClientExchange, ScramError, MECHANISM};
use crate::net::messages::tag::{self, txn};
use crate::net::messages::{
    self, auth, error::parse_error, header, startup, status::parse_parameter_status,
};
use crate::net::server_stream::display_address;
use crate::net::stream::read_buf;
use crate::net::ServerStream;
use crate::params::ServerParams;
use crate::prepared::ServerStatements;
use crate::stats::ServerState;

/// Why a server connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to server {addr}")]
    ConnectTimeout { addr: String },
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("server asked for unsupported authentication method {0}")]
    UnsupportedAuth(i32),
    #[error("server asked for a password but the pool's user has none configured")]
    NoPassword,
    #[error("server authentication: {0}")]
    Scram(#[from] ScramError),
    #[error("protocol violation from server: {0}")]
    Protocol(&'static str),
    #[error("server {addr} is in recovery, not a primary")]
    Standby { addr: String },
}

impl ServerError {
    /// Whether the server could not be reached or is going away (refused, reset, closed,
    /// timed out, or a 57P0x/08xxx FATAL): a failover or restart may cure it, unlike a refused
    /// login.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ServerError::Connect { .. }
            | ServerError::ConnectTimeout { .. }
            | ServerError::Io(_)
            | ServerError::Closed
            | ServerError::Standby { .. } => true,
            ServerError::Server { code, .. } => code.starts_with("57P") || code.starts_with("08"),
            _ => false,
        }
    }
}

/// The four buffers of an attached session.
#[derive(Default)]
pub struct Buffers {
    /// Bytes read from the client, not yet processed.
    pub c2s_in: BytesMut,
    /// Bytes to write to the server.
    pub c2s_out: BytesMut,
    /// Bytes read from the server, not yet processed.
    pub s2c_in: BytesMut,
    /// Bytes to write to the client.
    pub s2c_out: BytesMut,
}

impl Buffers {
    pub fn is_empty(&self) -> bool {
        self.c2s_in.is_empty()
            && self.c2s_out.is_empty()
            && self.s2c_in.is_empty()
            && self.s2c_out.is_empty()
    }

    /// Gives memory back after a large transfer (a COPY, a huge row).
    pub fn shrink(&mut self) {
        const KEEP: usize = 64 * 1024;
        for b in [
            &mut self.c2s_in,
            &mut self.c2s_out,
            &mut self.s2c_in,
            &mut self.s2c_out,
        ] {
            if b.capacity() > KEEP && b.is_empty() {
                *b = BytesMut::new();
            }
        }
    }
}

/// Idle time after which `Server::is_alive` asks the kernel rather than the reactor. Under load,
/// connections idle for microseconds and never pay the syscall.
const PROBE_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// A logged-in server connection.
pub struct Server {
    pub stream: ServerStream,
    pub bufs: Buffers,
    /// Where it is in its life (see `ServerState`); changed through `set_state`.
    pub state: ServerState,
    /// Its entry in the pool's SHOW SERVERS list (registered once logged in).
    pub info: Option<Arc<crate::sockets::SocketInfo>>,
    /// Transaction status of the last ReadyForQuery ('I' = `txn::IDLE`, 'T' or 'E').
    pub status: u8,
    pub params: ServerParams,
    pub prepared: ServerStatements,
    pub pid: i32,
    pub secret: i32,
    /// When it was made and last checked in, in `stats::now_us` time (cheaper to read and
    /// compare than `Instant`, at every check-out and check-in).
    pub created_us: u64,
    pub last_used_us: u64,
    /// Pool configuration generation this connection was made for.
    pub gen: u64,
    /// Set by the session when the connection is at a clean boundary and may serve others.
    pub clean: bool,
    /// Parameters reported at login, in order, for clients' login ParameterStatus.
    pub startup_params: Vec<(String, String)>,
    /// The pool it belongs to, for logs.
    pub pool: Arc<str>,
    /// Why it is being closed, set by whoever decided to close it (logged when it is dropped).
    pub close_reason: Option<&'static str>,
    pub(crate) _slot: SlotToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        tracing::info!(
            pool = %self.pool,
            pid = self.pid,
            reason = self.close_reason.unwrap_or("unknown"),
            "closing server connection"
        );
        // Best effort: tell the server we are leaving rather than just vanishing.
        self.stream.try_write(&messages::TERMINATE);
    }
}

/// What connecting needs to know.
pub struct ConnectParams<'a> {
    pub pool: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub database: &'a str,
    pub password: Option<&'a str>,
    pub gen: u64,
    pub timeout: Duration,
    /// See `BackendConfig::require_primary`.
    pub require_primary: bool,
}

impl Server {
    /// Connects and logs in; `slot` is the pool capacity this connection occupies.
    pub(crate) async fn connect(
        p: ConnectParams<'_>,
        slot: SlotToken,
    ) -> Result<Box<Server>, ServerError> {
        let addr = display_address(p.host, p.port);
        let stream =
            match tokio::time::timeout(p.timeout, ServerStream::connect(p.host, p.port)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(ServerError::Connect { addr, source }),
                Err(_) => return Err(ServerError::ConnectTimeout { addr }),
            };
        let mut server = Box::new(Server {
            stream,
            bufs: Buffers::default(),
            state: ServerState::Login,
            info: None,
            status: txn::IDLE,
            params: ServerParams::default(),
            prepared: ServerStatements::default(),
            pid: 0,
            secret: 0,
            created_us: crate::stats::now_us(),
            last_used_us: crate::stats::now_us(),
            gen: p.gen,
            clean: false,
            startup_params: Vec::new(),
            pool: p.pool.into(),
            close_reason: None,
            _slot: slot,
        });
        let login = match tokio::time::timeout(p.timeout, server.login(&p)).await {
            Ok(Ok(())) if p.require_primary && server.in_hot_standby() => {
                Err(ServerError::Standby { addr })
            }
            Ok(r) => r,
            Err(_) => Err(ServerError::ConnectTimeout { addr }),
        };
        match login {
            Ok(()) => Ok(server),
            Err(e) => {
                server.close_reason = Some(match e {
                    ServerError::Standby { .. } => "in recovery, not a primary",
                    _ => "login failed",
                });
                Err(e)
            }
        }
    }

    /// Whether the server reported `in_hot_standby = on` at login (PostgreSQL 14 and later
    /// report it): a standby, or a primary not yet out of recovery.
    fn in_hot_standby(&self) -> bool {
        self.startup_params
            .iter()
            .any(|(k, v)| k == "in_hot_standby" && v == "on")
    }

    /// Reads one whole message into s2c_in and returns (type, total length).
    async fn read_message(&mut self) -> Result<(u8, usize), ServerError> {
        loop {
            if let Some((tag, len)) = header(&self.bufs.s2c_in) {
                if len < messages::HEADER {
                    return Err(ServerError::Protocol("message length below 4"));
                }
                if self.bufs.s2c_in.len() >= len {
                    return Ok((tag, len));
                }
            }
            if read_buf(&mut self.stream, &mut self.bufs.s2c_in, 8192).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    async fn send(&mut self) -> Result<(), ServerError> {
        self.stream.write_all(&self.bufs.c2s_out).await?;
        // TLS records may wait in rustls until flushed; a no-op for plain sockets.
        self.stream.flush().await?;
        self.bufs.c2s_out.clear();
        Ok(())
    }

    async fn login(&mut self, p: &ConnectParams<'_>) -> Result<(), ServerError> {
        startup::startup_message(
            &mut self.bufs.c2s_out,
            &[("user", p.user), ("database", p.database)],
        );
        self.send().await?;
        let mut scram: Option<ClientExchange> = None;
        loop {
            let (tag, len) = self.read_message().await?;
            let msg = self.bufs.s2c_in.split_to(len);
            let body = &msg[messages::HEADER..];
            match tag {
                tag::AUTHENTICATION => {
                    if body.len() < 4 {
                        return Err(ServerError::Protocol("short authentication message"));
                    }
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    match code {
                        auth::AUTH_OK => {}
                        auth::AUTH_CLEARTEXT => {
                            let pw = p.password.ok_or(ServerError::NoPassword)?;
                            auth::password(&mut self.bufs.c2s_out, pw.as_bytes());
                            self.send().await?;
                        }
                        auth::AUTH_MD5 => {
                            let pw = p.password.ok_or(ServerError::NoPassword)?;
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or(ServerError::Protocol("md5 salt"))?;
                            auth::password(
                                &mut self.bufs.c2s_out,
                                md5_response(p.user, pw, salt).as_bytes(),
                            );
                            self.send().await?;
                        }
                        auth::AUTH_SASL => {
                            p.password.ok_or(ServerError::NoPassword)?;
                            let offered =
                                data.split(|&b| b == 0).any(|m| m == MECHANISM.as_bytes());
                            if !offered {
                                return Err(ServerError::UnsupportedAuth(code));
                            }
                            let (exchange, first) = ClientExchange::start();
                            scram = Some(exchange);
                            auth::sasl_initial(&mut self.bufs.c2s_out, MECHANISM, first.as_bytes());
                            self.send().await?;
                        }
                        auth::AUTH_SASL_CONTINUE => {
                            let pw = p.password.ok_or(ServerError::NoPassword)?;
                            let ex = scram
                                .as_mut()
                                .ok_or(ServerError::Protocol("SASL continue without start"))?;
                            let fin = ex.respond(pw, data)?;
                            auth::sasl_response(&mut self.bufs.c2s_out, fin.as_bytes());
                            self.send().await?;
                        }
                        auth::AUTH_SASL_FINAL => {
                            let ex = scram
                                .as_ref()
                                .ok_or(ServerError::Protocol("SASL final without start"))?;
                            ex.verify(data)?;
                        }
                        other => return Err(ServerError::UnsupportedAuth(other)),
                    }
                }
                tag::PARAMETER_STATUS => {
                    if let Some((name, value)) = parse_parameter_status(body) {
                        self.params.reported(name, value, true);
                        self.startup_params
                            .push((name.to_string(), value.to_string()));
                    }
                }
                tag::BACKEND_KEY_DATA if body.len() >= 8 => {
                    self.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    self.secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                tag::ERROR_RESPONSE => {
                    let (code, message) = parse_error(body);
                    return Err(ServerError::Server { code, message });
                }
                tag::READY_FOR_QUERY => {
                    self.status = body.first().copied().unwrap_or(txn::IDLE);
                    return Ok(());
                }
                _ => {} // NoticeResponse and friends
            }
        }
    }

    /// Runs a simple query for the pooler's own purposes (parameter sync, reset), swallowing
    /// its results. Reported parameter changes are recorded.
    pub async fn run_internal(&mut self, sql: &str) -> Result<(), ServerError> {
        self.run_internal_row(sql, &mut Vec::new()).await
    }

    /// `run_internal` that also hands back the text fields of the first row (NULL as None).
    pub async fn run_internal_row(
        &mut self,
        sql: &str,
        row: &mut Vec<Option<Box<str>>>,
    ) -> Result<(), ServerError> {
        messages::query(&mut self.bufs.c2s_out, sql);
        self.send().await?;
        let mut failure = None;
        loop {
            let (tag, len) = self.read_message().await?;
            {
                let body = &self.bufs.s2c_in[messages::HEADER..len];
                match tag {
                    tag::PARAMETER_STATUS => {
                        if let Some((name, value)) = parse_parameter_status(body) {
                            self.params.reported(name, value, false);
                        }
                    }
                    tag::ERROR_RESPONSE => failure = Some(parse_error(body)),
                    tag::DATA_ROW if row.is_empty() => {
                        *row = messages::status::parse_data_row(body)
                            .ok_or(ServerError::Protocol("malformed DataRow"))?;
                    }
                    tag::READY_FOR_QUERY => {
                        self.status = body.first().copied().unwrap_or(txn::IDLE)
                    }
                    _ => {}
                }
            }
            self.bufs.s2c_in.advance(len);
            if tag == tag::READY_FOR_QUERY {
                return match failure {
                    Some((code, message)) => Err(ServerError::Server { code, message }),
                    None => Ok(()),
                };
            }
        }
    }

    /// Whether an idle connection still looks usable: nothing is buffered and the socket has
    /// neither data (a FATAL from a shutting-down server) nor end-of-file pending. The reactor
    /// usually already knows whether the socket became readable, so this is mostly free of
    /// syscalls; but its knowledge is only as fresh as its last turn, so a connection that sat
    /// idle for a while (a backend restarts while nobody uses its connections) is probed with a
    /// real non-blocking peek before a client's transaction is sent to it. The reactor is asked
    /// with a `try_read`, which makes no syscall while it has seen nothing and, unlike polling
    /// for readiness, registers no waker (which takes the readiness lock on every checkout).
    /// `now_us`: a `stats::now_us` reading of the caller's, to tell the idle time.
    pub fn is_alive(&mut self, now_us: u64) -> bool {
        if !self.bufs.is_empty() || self.status != txn::IDLE {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            // Data (a FATAL from a server going away; the connection is dropped with the byte)
            // or end of file.
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let idle_us = now_us.saturating_sub(self.last_used_us);
                idle_us < PROBE_AFTER_IDLE.as_micros() as u64 || self.stream.nothing_to_read()
            }
            Err(_) => false,
        }
    }

    /// Closes the connection, logging `reason` unless an earlier, more precise one was set.
    pub fn close(mut self: Box<Self>, reason: &'static str) {
        self.close_reason.get_or_insert(reason);
    }

    /// Moves to `state`, in its SHOW SERVERS entry too (which loses its client link unless
    /// active).
    #[inline]
    pub fn set_state(&mut self, state: ServerState) {
        self.state = state;
        if let Some(info) = &self.info {
            info.state
                .store(state as u8, std::sync::atomic::Ordering::Relaxed);
            if state != ServerState::Active {
                info.link.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
