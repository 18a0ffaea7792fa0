//! The connection task: one per accepted socket. It runs the login and then, for a client that
//! got in, the session; both log inside the client's span (service, address).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::login::{self, LoggedIn, Login};
use super::session;
use crate::admission::RefusalReason;
use crate::backend::Pool;
use crate::cancel::CancelGuard;
use crate::errors::{self, ClientError};
use crate::net::messages::error::Severity;
use crate::net::ClientStream;
use crate::params::ClientParams;
use crate::prepared::ClientStatements;
use crate::service::{ClientCount, Service};
use crate::sockets::SocketInfo;
use crate::stats::{ClientState, Tally};

/// A client that passed authentication must be greeted within this time (the pool may have to
/// open a server connection to learn the server's parameters first).
const GREET_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pooler tries to tell a client that its login timed out.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one accepted connection to its end. `pending` is the connection's place among the
/// service's pending logins: held until the password is checked, or the login timeout.
///
/// The login (and an admin console session) runs boxed: its state is freed once the client is
/// in, so that the task of an idle client holds its session's state only. The arguments go
/// straight into the boxed login (not an `async fn`'s arguments, which its state would keep
/// room for through the whole session).
pub fn handle(
    socket: TcpStream,
    addr: SocketAddr,
    count: ClientCount,
    pending: crate::admission::PendingLogin,
) -> impl std::future::Future<Output = ()> + Send {
    let login = Box::pin(log_in(socket, addr, count, pending));
    async move {
        if let Some(client) = login.await {
            session::run(client).await;
        }
    }
}

/// The span a client's log lines are in: its service and address.
fn client_span(service: &Service, addr: SocketAddr) -> tracing::Span {
    tracing::info_span!("client", service = %service.name, %addr)
}

/// Everything of a connection before its session: the login, or the whole of a refused or
/// admin connection. A pool client that got in is returned.
async fn log_in(
    socket: TcpStream,
    addr: SocketAddr,
    count: ClientCount,
    pending: crate::admission::PendingLogin,
) -> Option<Box<Client>> {
    let service = count.service.clone();
    let span = client_span(&service, addr);
    let local = socket.local_addr().ok();
    let mut stream = ClientStream::Plain(socket);
    let login_timeout = service.state().limits.login_timeout;
    // Only the login runs inside the span; the session enters it when it logs (see `Client`).
    let authenticated = async {
        tokio::select! {
            // Boxed: the login state is freed once the client is in, keeping idle clients small.
            r = tokio::time::timeout(login_timeout, Box::pin(login::authenticate_client(&mut stream, addr, &service))) => Some(r),
            _ = service.shutdown.cancelled() => None,
        }
    }
    .instrument(span.clone())
    .await;
    drop(pending);
    let authenticated = match authenticated {
        None => return None,
        Some(Ok(Ok(None))) => {
            // Ended without a login (a CancelRequest, a failed handshake, the client left):
            // closed in order, so that a TLS client gets its close_notify. libpq 17 sends its
            // cancel over TLS and reports an EOF without one as a failed cancel.
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, stream.shutdown()).await;
            return None;
        }
        Some(Ok(Ok(Some(a)))) => a,
        Some(Ok(Err(refusal))) => {
            refuse(&mut stream, &refusal).instrument(span).await;
            return None;
        }
        Some(Err(_)) => {
            service.refuse(
                RefusalReason::LoginTimeout,
                u32::try_from(login_timeout.as_secs()).unwrap_or(u32::MAX),
            );
            // Not logged one by one: a flood of idle sockets would flood the log too (the
            // refusal above is counted, and logged at most once per interval).
            let mut buf = BytesMut::new();
            errors::login_timeout().write(&mut buf, Severity::Fatal);
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                let _ = stream.write_all(&buf).await;
                let _ = stream.shutdown().await;
            })
            .await;
            return None;
        }
    };
    let login = async {
        tokio::select! {
            r = tokio::time::timeout(GREET_TIMEOUT, Box::pin(login::finish(&mut stream, &service, authenticated))) => Some(r),
            _ = service.shutdown.cancelled() => None,
        }
    }
    .instrument(span.clone())
    .await;
    match login {
        None => {}
        Some(Ok(Ok(Login::Pool(client)))) => {
            return Some(Box::new(Client::new(
                stream, service, *client, count, addr, local,
            )));
        }
        Some(Ok(Ok(Login::Admin(admin)))) => {
            crate::admin::run(stream, service, admin, addr)
                .instrument(span)
                .await;
            drop(count);
        }
        Some(Ok(Err(refusal))) => refuse(&mut stream, &refusal).instrument(span).await,
        Some(Err(_)) => span.in_scope(|| tracing::info!("login timed out waiting for the pool")),
    }
    None
}

/// Logs why a login is refused, sends it as FATAL and closes the connection.
async fn refuse(stream: &mut ClientStream, refusal: &ClientError) {
    tracing::info!(
        code = refusal.code(),
        message = refusal.message(),
        "login refused"
    );
    let mut buf = BytesMut::new();
    refusal.write(&mut buf, Severity::Fatal);
    let _ = stream.write_all(&buf).await;
    let _ = stream.shutdown().await;
}

/// A logged-in client. Kept small: an idle client is this plus its socket.
pub struct Client {
    pub(super) stream: ClientStream,
    pub(super) service: Arc<Service>,
    pub(super) pool: Arc<Pool>,
    pub(super) params: ClientParams,
    pub(super) statements: ClientStatements,
    pub(super) cancel: CancelGuard,
    /// Client bytes read while not attached (TLS reads, leftovers of a release).
    pub(super) pending: BytesMut,
    /// Notifications for the channels it LISTENs to (transaction/statement mode); boxed, as
    /// most clients have none and an idle client's size is what many of them cost.
    pub(super) notify: Option<Box<crate::backend::listen::Subscriber>>,
    /// Its place in the pool's wait queue, kept from one wait to the next.
    pub(super) wait: crate::backend::pool::WaitPlace,
    /// Changed only through `set_state`, which keeps the pool's counts.
    state: ClientState,
    /// Counts not yet folded into the pool's counters.
    pub(super) tally: Tally,
    /// The pool's KILL epoch at login (see `Pool::kill`).
    pub(super) kill_epoch: u64,
    /// Its SHOW CLIENTS entry.
    pub(super) info: Arc<SocketInfo>,
    _count: ClientCount,
}

impl Client {
    pub fn new(
        stream: ClientStream,
        service: Arc<Service>,
        login: LoggedIn,
        count: ClientCount,
        addr: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Client {
        let kill_epoch = login.pool.kill_epoch();
        let mut info = SocketInfo::new(
            login.pool.state().cfg.username.clone(),
            login.pool.name.clone(),
        );
        info.addr = Some(addr);
        info.local = local;
        info.tls = stream.is_tls();
        if let Some(i) = crate::params::index("application_name") {
            if let Some(v) = login.params[i].as_deref() {
                info.application_name = v.to_string();
            }
        }
        let info = login.pool.client_list.register(info);
        Client {
            info,
            tally: Tally::default(),
            kill_epoch,
            stream,
            service,
            pool: login.pool,
            params: ClientParams::new(login.params),
            statements: ClientStatements::default(),
            cancel: login.cancel,
            pending: BytesMut::new(),
            notify: None,
            wait: Default::default(),
            state: ClientState::Idle,
            _count: count,
        }
    }

    /// Moves the client to `state`, in its SHOW CLIENTS entry (which the pool's counts read).
    pub(super) fn set_state(&mut self, state: ClientState) {
        self.state = state;
        self.info
            .state
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
        if state != ClientState::Active {
            self.info
                .link
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The client's log span, the one its login logged in (`log_in`), made when the session
    /// logs: a live span per client would cost every idle client ~0.5 KiB (the subscriber's
    /// slot and formatted fields), and entering it on every poll more than the rest of a
    /// transaction's bookkeeping.
    pub(super) fn span(&self) -> tracing::Span {
        // Where it connected from: its SHOW CLIENTS entry has it (set in `new`).
        let addr = self
            .info
            .addr
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        client_span(&self.service, addr)
    }

    /// Sends a FATAL error and closes the connection.
    pub(super) async fn fatal(&mut self, error: &ClientError) {
        self.span().in_scope(|| {
            tracing::info!(
                code = error.code(),
                message = error.message(),
                state = ?self.state,
                "disconnecting client"
            )
        });
        let mut buf = BytesMut::new();
        error.write(&mut buf, Severity::Fatal);
        let _ = self.stream.write_all(&buf).await;
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.tally.fold(self.pool.counters());
    }
}
