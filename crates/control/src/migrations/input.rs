//! What a migration is given: the `migration` of a service create or update (`MigrationSpec`)
//! and a migration check (`MigrationCheck`). The API reads them from its request bodies
//! (`api/src/requests/migration.rs`).

use pgbay_cluster::migrate::{self, Source};

use crate::input::InputError;

/// The body of `POST /dbaas-task-migration-check/{service}`, parsed. Its `Debug` leaves the URI
/// (and its password) out.
#[derive(Clone)]
pub struct MigrationCheck {
    /// The source, from `source-service-uri`.
    pub source: Source,
    /// `method` is `replication`.
    pub replication: bool,
}

impl std::fmt::Debug for MigrationCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationCheck")
            .field("source", &self.source)
            .field("replication", &self.replication)
            .finish()
    }
}

impl MigrationCheck {
    /// A check of the source at `uri` (given as `field`).
    pub fn new(field: &str, uri: &str, replication: bool) -> Result<MigrationCheck, InputError> {
        if uri.is_empty() || uri.chars().count() > 512 {
            return Err(InputError::new(field, "must be 1 to 512 characters"));
        }
        let source = migrate::check::source_from_uri(uri).ok_or_else(|| {
            InputError::new(
                field,
                "must be a URI postgres://user:password@host:port/dbname[?sslmode=require]",
            )
        })?;
        Ok(MigrationCheck {
            source,
            replication,
        })
    }
}

/// The `migration` object of `POST /dbaas-postgres/{name}`, parsed. Its `Debug` leaves the
/// password out.
#[derive(Clone, PartialEq)]
pub struct MigrationSpec {
    /// `dump` (default) or `replication`.
    pub method: String,
    /// Source host.
    pub host: String,
    /// Source port.
    pub port: u16,
    /// Source login role (default: `postgres`).
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// Copy only this database.
    pub dbname: Option<String>,
    /// Require TLS (default true, as the document's).
    pub ssl: bool,
    /// Databases not copied.
    pub ignore_dbs: Vec<String>,
}

impl std::fmt::Debug for MigrationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationSpec")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("dbname", &self.dbname)
            .field("ssl", &self.ssl)
            .field("ignore_dbs", &self.ignore_dbs)
            .finish_non_exhaustive()
    }
}
