//! pgbay's PostgreSQL clusters: everything that runs or talks to PostgreSQL servers and their
//! tools. The etcd HA services keep their leader in ([`etcd`]), the provisioners ([`provision`]: local clusters made with initdb and run with pg_ctl, an
//! external server pgbay adopts), administrative SQL on a server ([`admin`]), one OS user per
//! service ([`os_users`]), the `postgres -C shared_memory_size` runner that sizes a configuration
//! ([`sizing`]), and the atomic file writes they and the control plane share ([`files`]).
//!
//! It knows nothing of the control store or the API: it is given names, ports, paths, passwords
//! and settings text, and answers with plain values and its own errors. `pgbay-control` decides
//! what to run; this crate runs it.

pub mod admin;
pub mod etcd;
pub mod files;
pub mod migrate;
pub mod os_users;
pub mod pgbackrest;
pub mod provision;
pub mod sizing;

pub use provision::external::{ExternalProvisioner, ExternalServer};
pub use provision::local::LocalProvisioner;
pub use provision::{ClusterSpec, ProvisionError, Provisioner, TlsMaterial};
