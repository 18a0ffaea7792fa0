//! Command line of the `pgbay` binary. Every flag has a `PGBAY_*` environment twin.

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
    Serve(ServeArgs),
}

/// Flags of `pgbay serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory holding all state (store, keys, CA, clusters).
    #[arg(long, env = "PGBAY_DATA_DIR", default_value = "./pgbay-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "PGBAY_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    /// Host (IP or DNS name) written into service URIs; clusters and poolers listen on it.
    #[arg(long, env = "PGBAY_PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
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
}
