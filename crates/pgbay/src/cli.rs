//! Command line of the `pgbay` binary: `serve`, and the client subcommands that drive a running
//! pgbay over its HTTP API. Every flag of `serve` and the client's global flags have a `PGBAY_*`
//! environment twin.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pgbay_control::PortRange;

/// pgbay: a self-hosted DBaaS for PostgreSQL connection pools.
#[derive(Debug, Parser)]
#[command(name = "pgbay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API, the control plane and the service clusters.
    Serve(Box<ServeArgs>),
    /// Create, list, show and delete services (over the HTTP API of a running pgbay).
    Service(ServiceArgs),
    /// Create and delete databases of a service.
    Database(DatabaseArgs),
    /// Create and delete users, reset and show their passwords.
    User(UserArgs),
    /// Create, update, delete, show and list connection pools; print their URIs.
    Pool(PoolArgs),
}

/// Flags of `pgbay serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory holding all state (store, keys, CA, clusters).
    #[arg(long, env = "PGBAY_DATA_DIR", default_value = "./pgbay-data")]
    pub data_dir: PathBuf,
    /// The control store: default the SQLite file in the data dir; `postgres://USER@HOST/DB`
    /// puts it in an existing PostgreSQL (13 or newer). Give the password through PGPASSWORD or
    /// PGPASSFILE, or the whole URL through PGBAY_STORE, not on the command line.
    #[arg(long, env = "PGBAY_STORE")]
    pub store: Option<String>,
    /// Where the services' pgBackRest repositories live (one per service, below it): default
    /// `<data-dir>/backups`; a shared file system path for several machines.
    #[arg(long, env = "PGBAY_BACKUP_REPO")]
    pub backup_repo: Option<PathBuf>,
    /// Keep the repositories in an S3-compatible object store instead (`host` or `host:port`,
    /// HTTPS), one prefix per service in --backup-s3-bucket. The access key and secret come only
    /// from PGBAY_BACKUP_S3_KEY and PGBAY_BACKUP_S3_KEY_SECRET.
    #[arg(long, env = "PGBAY_BACKUP_S3_ENDPOINT", requires = "backup_s3_bucket")]
    pub backup_s3_endpoint: Option<String>,
    /// The bucket of --backup-s3-endpoint.
    #[arg(long, env = "PGBAY_BACKUP_S3_BUCKET", requires = "backup_s3_endpoint")]
    pub backup_s3_bucket: Option<String>,
    /// The region of --backup-s3-endpoint.
    #[arg(long, env = "PGBAY_BACKUP_S3_REGION", default_value = "us-east-1")]
    pub backup_s3_region: String,
    /// `path` (`https://host/bucket/...`, most S3-compatible stores) or `host`
    /// (`https://bucket.host/...`, AWS).
    #[arg(long, env = "PGBAY_BACKUP_S3_URI_STYLE", default_value = "path",
          value_parser = ["path", "host"])]
    pub backup_s3_uri_style: String,
    /// Verify the endpoint's certificate (`false` only for a test store).
    #[arg(long, env = "PGBAY_BACKUP_S3_VERIFY_TLS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub backup_s3_verify_tls: bool,
    /// CA certificates (PEM) to verify the endpoint with, instead of the system's.
    #[arg(long, env = "PGBAY_BACKUP_S3_CA_FILE")]
    pub backup_s3_ca_file: Option<PathBuf>,
    /// etcd client URLs (`http://host:port,...`) of an existing etcd cluster, where the Patroni
    /// members of business and premium services keep their leader key; default: pgbay runs one
    /// etcd member of its own in `<data-dir>/etcd` when the first such service is created.
    #[arg(long, env = "PGBAY_ETCD", value_parser = etcd_endpoints)]
    pub etcd: Option<EtcdEndpoints>,
    /// Address of the HTTP API.
    #[arg(long, env = "PGBAY_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    /// Host (IP or DNS name) written into service URIs; clusters and poolers listen on it.
    #[arg(long, env = "PGBAY_PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
    /// This node's name among the nodes of one store (default: the host name).
    #[arg(long, env = "PGBAY_NODE_NAME")]
    pub node_name: Option<String>,
    /// A node silent for longer than this many seconds is dead (its services are not served
    /// and its pending operations fail).
    #[arg(long, env = "PGBAY_NODE_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub node_timeout: u64,
    /// A node dead for longer than this many seconds has died for good: the live nodes rebuild
    /// its single-cluster services from their backups (which must be on a --backup-repo shared
    /// by the nodes). 0: never; the services wait for their node.
    #[arg(long, env = "PGBAY_REBUILD_LOST_AFTER", default_value_t = 0)]
    pub rebuild_lost_after: u64,
    /// A name or address that reaches every node (your DNS name or load balancer), written into
    /// every URI instead of the answering node's public host.
    #[arg(long, env = "PGBAY_SERVICE_HOST")]
    pub service_host: Option<String>,
    /// Ports for service clusters and pooler listeners, e.g. 21000-21999.
    #[arg(long, env = "PGBAY_PORT_RANGE", default_value = "21000-21999")]
    pub port_range: PortRange,
    /// PostgreSQL binaries (default: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin).
    #[arg(long, env = "PGBAY_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// Zone reported for services.
    #[arg(long, env = "PGBAY_ZONE", default_value = "local")]
    pub zone: String,
    /// Adopt this PostgreSQL server (admin URI, postgres://USER:PASSWORD@HOST:PORT/db) for new
    /// services instead of running local clusters; it backs one service at a time.
    #[arg(long, env = "PGBAY_EXTERNAL_ADMIN_URI", hide_env_values = true)]
    pub external_admin_uri: Option<pgbay_control::ExternalServer>,
    /// uids (and gids) of the OS users pgbay makes for services when it runs as root, one per
    /// service, e.g. 60000-61099. Unprivileged, services run as pgbay's own user.
    #[arg(long, env = "PGBAY_SERVICE_UID_RANGE", default_value = pgbay_control::os_users::DEFAULT_UID_RANGE)]
    pub service_uid_range: pgbay_control::os_users::UidRange,
    /// Most API (HTTP) connections served at once; further ones get 503 and are closed at once.
    #[arg(long, env = "PGBAY_API_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub api_max_connections: u32,
    /// Seconds an API connection may take to send a request head (also closes idle keep-alive
    /// connections).
    #[arg(long, env = "PGBAY_API_HEADER_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=30))]
    pub api_header_timeout: u64,
    /// Seconds an API request may take to send its body.
    #[arg(long, env = "PGBAY_API_BODY_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub api_body_timeout: u64,

    // Pooler admission before login (see the pooler's `admission`).
    /// Most sockets of one pooler port that have not finished logging in; more are accepted and
    /// closed at once.
    #[arg(long, env = "PGBAY_MAX_PENDING_LOGINS",
          default_value_t = pgbay_pooler::config::DEFAULT_MAX_PENDING_LOGINS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_pending_logins: u32,
    /// Seconds a pooler client may take to log in, TLS and password included (PgBouncer's
    /// client_login_timeout).
    #[arg(long, env = "PGBAY_CLIENT_LOGIN_TIMEOUT",
          default_value_t = pgbay_pooler::config::DEFAULT_LOGIN_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub client_login_timeout: u64,
    /// Open files kept for pgbay's own work (store, clusters, supervisor, server connections):
    /// pooler clients may use the open-files limit minus this reserve minus
    /// --api-max-connections; further client sockets are accepted and closed at once.
    #[arg(long, env = "PGBAY_FD_RESERVE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(64..=1_000_000))]
    pub fd_reserve: u32,

    /// HTTPS for the API, the web console and /metrics: `off`, `auto` (a certificate for the
    /// listen address and --public-host issued by pgbay's CA, see GET /v2/dbaas-ca-certificate)
    /// or `CERT,KEY` (PEM files). Default: `auto` unless --api-listen is a loopback address.
    #[arg(long, env = "PGBAY_API_TLS", value_name = "off|auto|CERT,KEY")]
    pub api_tls: Option<crate::api_tls::ApiTls>,

    // Notification budgets of the pooler (transaction/statement mode LISTEN).
    /// Bytes of notifications the pooler holds for one LISTENing client that does not read
    /// them; past it the client is disconnected (FATAL 53200). Suffixes KiB, MiB, GiB.
    #[arg(long, env = "PGBAY_NOTIFY_CLIENT_BUDGET", default_value = "4MiB",
          value_parser = parse_budget)]
    pub notify_client_budget: usize,
    /// Bytes of unread notifications the pooler holds for all clients together; past it, the
    /// clients with the most unread are disconnected first. Suffixes KiB, MiB, GiB.
    #[arg(long, env = "PGBAY_NOTIFY_TOTAL_BUDGET", default_value = "128MiB",
          value_parser = parse_budget)]
    pub notify_total_budget: usize,

    // Pool clients that hold (or wait for) a server connection.
    /// Seconds a pool client may wait for a server connection (PgBouncer's query_wait_timeout).
    #[arg(long, env = "PGBAY_QUERY_WAIT_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub query_wait_timeout: u64,
    /// Seconds a pool client may stay idle in a transaction, holding a server connection,
    /// before it is disconnected (PgBouncer's idle_transaction_timeout); 0: never.
    #[arg(long, env = "PGBAY_IDLE_TRANSACTION_TIMEOUT", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub idle_transaction_timeout: u64,
    /// Seconds a pool client may stall in the middle of a message (over 16 KiB; shorter ones
    /// are received whole before a server connection is lent) while holding a server
    /// connection, before it is disconnected.
    #[arg(long, env = "PGBAY_CLIENT_MESSAGE_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub client_message_timeout: u64,
    /// Seconds pgbay waits, when it stops (SIGTERM) or a successor takes over its sockets, for
    /// clients to finish the transaction they are in; idle clients are closed at once (57P01).
    #[arg(long, env = "PGBAY_DRAIN_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub drain_timeout: u64,
}

/// A notification budget: bytes, with an optional binary suffix (`512KiB`, `4MiB`, `1GiB`; `K`,
/// `M`, `G` alike), at least 16 KiB (a notification may take 8 KB) and at most 64 GiB.
fn parse_budget(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size in bytes (e.g. 524288, 512KiB, 4MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("`{s}`: unknown unit (use KiB, MiB or GiB)")),
    };
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if !(16 << 10..=64 << 30).contains(&bytes) {
        return Err(format!("`{s}` must be between 16KiB and 64GiB"));
    }
    usize::try_from(bytes).map_err(|_| format!("`{s}` is too large"))
}

/// Where the client subcommands find pgbay and how they print. `global`, so that the flags may
/// follow the resource or its action (`pgbay pool list svc -o json`).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of pgbay's API.
    #[arg(
        long,
        env = "PGBAY_URL",
        default_value = "http://127.0.0.1:8080/v2",
        global = true
    )]
    pub url: String,
    /// Output: aligned tables for people, the API's JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Data directory of a local `pgbay serve`, whose `api-credentials` file is read when
    /// PGBAY_API_KEY/PGBAY_API_SECRET are not set.
    #[arg(
        long,
        env = "PGBAY_DATA_DIR",
        default_value = "./pgbay-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// CA certificate (PEM) to verify an https:// --url with; default: the data dir's `ca.crt`
    /// (pgbay's CA) when it exists, else the public roots.
    #[arg(long, env = "PGBAY_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
}

/// Output format of the client subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON, as the API returns it.
    Json,
}

/// `pgbay service …`
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: ServiceAction,
}

/// Actions on services.
#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Create a service; waits until it is running unless --no-wait.
    Create {
        /// Service name.
        name: String,
        /// Plan, e.g. startup-4.
        #[arg(long)]
        plan: String,
        /// Copy the databases of this server into the new service:
        /// postgres://USER[:PASSWORD]@HOST[:PORT][/DBNAME][?sslmode=require]. Keep the password
        /// out of the command line: set it in the environment twin, or leave it out of the URI
        /// and set PGPASSWORD.
        #[arg(
            long,
            env = "PGBAY_MIGRATE_FROM",
            hide_env_values = true,
            value_name = "URI"
        )]
        migrate_from: Option<String>,
        /// How to migrate: dump, or replication (falls back to dump when the source cannot).
        #[arg(long, default_value = "dump", requires = "migrate_from")]
        migration_method: String,
        /// Return once the API accepted the request (prints the pending operation).
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a new service from another's backups: its latest state, or the state at --time.
    Fork {
        /// The service to fork.
        source: String,
        /// The new service's name.
        name: String,
        /// Recover to this time (ISO 8601, e.g. 2026-12-03T07:30:00Z) instead of the latest.
        #[arg(long)]
        time: Option<String>,
        /// Plan of the new service (default: the source's).
        #[arg(long)]
        plan: Option<String>,
    },
    /// List the backups a service holds.
    Backups {
        /// Service name.
        name: String,
    },
    /// List services with their state.
    List,
    /// Show a service: state, URI, databases, users, pools.
    Show {
        /// Service name.
        name: String,
    },
    /// Delete a service and everything in it.
    Delete {
        /// Service name.
        name: String,
    },
}

/// `pgbay database …`
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: DatabaseAction,
}

/// Actions on databases.
#[derive(Debug, Subcommand)]
pub enum DatabaseAction {
    /// Create a database in a service.
    Create {
        /// Service name.
        service: String,
        /// Database name.
        database: String,
    },
    /// Delete a database of a service.
    Delete {
        /// Service name.
        service: String,
        /// Database name.
        database: String,
    },
}

/// `pgbay user …`
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: UserAction,
}

/// Actions on users.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user (pgbay generates its password).
    Create {
        /// Service name.
        service: String,
        /// User name.
        user: String,
    },
    /// Delete a user.
    Delete {
        /// Service name.
        service: String,
        /// User name.
        user: String,
    },
    /// Set a new password: the one given, else a generated one.
    ResetPassword {
        /// Service name.
        service: String,
        /// User name.
        user: String,
        /// The new password. A command line is visible to every local user (ps): prefer the
        /// PGBAY_USER_PASSWORD environment variable.
        #[arg(long, env = "PGBAY_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Print a user's password alone (for scripts).
    ShowPassword {
        /// Service name.
        service: String,
        /// User name.
        user: String,
    },
}

/// `pgbay pool …`
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: PoolAction,
}

/// Pool modes, as the API spells them.
pub const POOL_MODES: [&str; 3] = ["session", "transaction", "statement"];

/// Actions on connection pools.
#[derive(Debug, Subcommand)]
pub enum PoolAction {
    /// Create a connection pool.
    Create {
        /// Service name.
        service: String,
        /// Pool name (the database name clients connect to).
        pool: String,
        /// Database the pool serves.
        #[arg(long)]
        database: String,
        /// Pool mode (API default: transaction).
        #[arg(long, value_parser = POOL_MODES)]
        mode: Option<String>,
        /// Server connections of the pool (API default: 10).
        #[arg(long)]
        size: Option<i64>,
        /// User the pool logs in as (API default: the service's admin user).
        #[arg(long)]
        user: Option<String>,
    },
    /// Change a pool's database, mode, size or user.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Update {
        /// Service name.
        service: String,
        /// Pool name.
        pool: String,
        /// Database the pool serves.
        #[arg(long, group = "change")]
        database: Option<String>,
        /// Pool mode.
        #[arg(long, value_parser = POOL_MODES, group = "change")]
        mode: Option<String>,
        /// Server connections of the pool.
        #[arg(long, group = "change")]
        size: Option<i64>,
        /// User the pool logs in as.
        #[arg(long, group = "change")]
        user: Option<String>,
    },
    /// Delete a pool.
    Delete {
        /// Service name.
        service: String,
        /// Pool name.
        pool: String,
    },
    /// Show a pool, with its connection URI.
    Show {
        /// Service name.
        service: String,
        /// Pool name.
        pool: String,
    },
    /// List the pools of a service.
    List {
        /// Service name.
        service: String,
    },
    /// Print a pool's connection URI alone: `psql "$(pgbay pool uri SERVICE POOL)"`.
    Uri {
        /// Service name.
        service: String,
        /// Pool name.
        pool: String,
    },
}

#[cfg(test)]
mod notify_budget_tests {
    use super::parse_budget;

    #[test]
    fn budgets_take_bytes_and_binary_suffixes() {
        assert_eq!(parse_budget("524288"), Ok(524288));
        assert_eq!(parse_budget("512KiB"), Ok(512 << 10));
        assert_eq!(parse_budget("4MiB"), Ok(4 << 20));
        assert_eq!(parse_budget("4m"), Ok(4 << 20));
        assert_eq!(parse_budget("1GiB"), Ok(1 << 30));
        for bad in [
            "",
            "x",
            "4TiB",
            "1KiB",
            "-1",
            "99999999999999999999",
            "65GiB",
        ] {
            assert!(parse_budget(bad).is_err(), "{bad} accepted");
        }
    }
}

/// `--etcd`'s client URLs.
#[derive(Debug, Clone)]
pub struct EtcdEndpoints(pub Vec<String>);

fn etcd_endpoints(s: &str) -> Result<EtcdEndpoints, String> {
    pgbay_control::etcd::parse_endpoints(s)
        .map(EtcdEndpoints)
        .map_err(|e| e.to_string())
}
