//! The pooler's desired state. `Pooler::apply` takes one `PoolerConfig` and makes the running
//! listeners and pools match it; these types are the whole contract between the pooler and
//! whoever drives it (the pgbay binary, the standalone example, the tests).

use std::net::SocketAddr;
use std::time::Duration;

/// Everything the pooler should serve: one entry per service (one listener each).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolerConfig {
    pub services: Vec<ServiceConfig>,
}

/// One service: a listener (its "pgbouncer" port) in front of one PostgreSQL backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Service name, used in logs and error messages.
    pub name: String,
    /// The service's pooler port.
    pub listen: SocketAddr,
    /// `None` answers SSLRequest with 'N' and lets every client in over plaintext.
    pub tls: Option<TlsConfig>,
    pub backend: BackendConfig,
    /// Logins the pooler accepts; also used to log in to the backend.
    pub users: Vec<UserConfig>,
    pub pools: Vec<PoolConfig>,
    pub settings: PoolSettings,
    pub limits: ClientLimits,
    /// Empty means every address is allowed.
    pub allowed_cidrs: Vec<ipnet::IpNet>,
}

/// PEM certificate chain and private key served to TLS clients, and whether clients must use
/// TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_chain_pem: String,
    pub key_pem: String,
    /// PgBouncer's `client_tls_sslmode=require`: a StartupMessage that did not come over TLS is
    /// refused (28000, "SSL required"). A CancelRequest is still served over plaintext: it
    /// carries no secret but its key, and libpq may send it unencrypted. `false` (TLS offered,
    /// plaintext accepted too) is for standalone and benchmark runs.
    pub required: bool,
}

impl std::fmt::Debug for TlsConfig {
    // The key is a secret: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "cert_chain_pem",
                &format_args!("<{} bytes>", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .field("required", &self.required)
            .finish()
    }
}

/// Where the service's PostgreSQL listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendConfig {
    /// A host name or address (TCP, with TLS when the server offers it), or, when it starts
    /// with '/', the directory of the server's Unix socket `{host}/.s.PGSQL.{port}` (libpq's
    /// convention; plain, as the socket is local).
    pub host: String,
    pub port: u16,
    /// How long a client that needs a server connection waits for an unreachable server (refused,
    /// closed, shutting down) to come back, or for a new configuration to name another server
    /// (a failover), retrying, before it gets the connection error; never longer than the
    /// pool's `query_wait_timeout`. Zero: the error at once.
    pub unavailable_hold: std::time::Duration,
    /// The server must be a primary: a server that reports `in_hot_standby = on` at login (a
    /// standby, or a crashed primary that Patroni starts again read-only before promoting it)
    /// is unavailable like a refused one, so that writes never meet a read-only server.
    pub require_primary: bool,
}

/// A login: plaintext password; the pooler derives SCRAM/md5 secrets itself.
#[derive(Clone, PartialEq, Eq)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    /// May open the admin console (database `pgbouncer`), like PgBouncer's `admin_users`.
    pub admin: bool,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("admin", &self.admin)
            .finish()
    }
}

/// A pool: clients connect with database = `name`, the pooler serves them from server
/// connections to `database` logged in as `username`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub database: String,
    pub username: String,
    pub mode: PoolMode,
    pub size: u32,
}

/// When a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// At client disconnect (then reset with `DISCARD ALL`).
    Session,
    /// When ReadyForQuery says idle.
    Transaction,
    /// After each statement; explicit transaction blocks are refused.
    Statement,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        })
    }
}

/// The Exoscale `pgbouncer-settings` knobs of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub min_pool_size: u32,
    /// `None` disables the idle timeout.
    pub server_idle_timeout: Option<Duration>,
    pub server_lifetime: Duration,
    /// 0 disables prepared statement tracking.
    pub max_prepared_statements: u32,
    pub server_reset_query_always: bool,
    /// Startup parameters accepted from clients and then ignored.
    pub ignore_startup_parameters: Vec<String>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min_pool_size: 0,
            server_idle_timeout: Some(Duration::from_secs(600)),
            server_lifetime: Duration::from_secs(3600),
            max_prepared_statements: 100,
            server_reset_query_always: false,
            ignore_startup_parameters: Vec::new(),
        }
    }
}

/// Per-service limits on clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Clients of the service at once, over all its pools (logging in or logged in).
    pub max_client_conn: u32,
    pub query_wait_timeout: Duration,
    /// Sockets of the service's port that have not finished logging in (password checked);
    /// more are accepted and closed at once (see `admission`).
    pub max_pending_logins: u32,
    /// PgBouncer's `client_login_timeout`: a client must have passed authentication within it.
    pub login_timeout: Duration,
    /// PgBouncer's `idle_transaction_timeout`: a client idle in a transaction (holding a server
    /// connection) longer than this is disconnected (FATAL 08P01). None: never (PgBouncer's 0).
    pub idle_transaction_timeout: Option<Duration>,
    /// A client that stops in the middle of a message while holding a server connection (only
    /// messages over 16 KiB get one before they are whole) is disconnected after this long
    /// without sending 8 KiB more (FATAL 08P01).
    pub client_message_timeout: Duration,
}

/// Default of `ClientLimits::max_pending_logins`: a login needs a few round trips and one SCRAM
/// verification (a few ms of CPU), so even a storm of real clients on 2 cores keeps far fewer
/// than this pending at once.
pub const DEFAULT_MAX_PENDING_LOGINS: u32 = 512;
/// Default of `ClientLimits::login_timeout` (PgBouncer's is 60 s; an idle socket should not live
/// that long).
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_client_conn: 10_000,
            query_wait_timeout: Duration::from_secs(120),
            max_pending_logins: DEFAULT_MAX_PENDING_LOGINS,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            idle_transaction_timeout: None,
            client_message_timeout: Duration::from_secs(10),
        }
    }
}

/// Memory the pooler may hold for notifications that LISTENing clients (transaction and
/// statement mode) have not read yet (see `notify`). Node-wide: set with
/// `Pooler::set_notify_budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyBudget {
    /// Bytes queued for one client before it is disconnected (FATAL 53200).
    pub client_bytes: usize,
    /// Bytes queued for all clients together; past it, the clients holding the most are
    /// disconnected first.
    pub total_bytes: usize,
}

impl NotifyBudget {
    pub const DEFAULT_CLIENT_BYTES: usize = 4 << 20;
    pub const DEFAULT_TOTAL_BYTES: usize = 128 << 20;
}

impl Default for NotifyBudget {
    fn default() -> Self {
        NotifyBudget {
            client_bytes: Self::DEFAULT_CLIENT_BYTES,
            total_bytes: Self::DEFAULT_TOTAL_BYTES,
        }
    }
}
