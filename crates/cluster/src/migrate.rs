//! Migrating an existing PostgreSQL into a service's cluster with `pg_dump`/`pg_restore` (the
//! `dump` method of the document's `migration`).
//!
//! Every program runs as the service's OS user, in a scratch directory inside the service
//! directory; passwords reach each program through its own environment (`PGPASSWORD`), never its
//! command line. The dump is restored as pgbay's internal role with `--role` the service's
//! admin and `--no-owner --no-acl`: every object ends up owned by the admin, and roles of the
//! source are not copied.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::provision::local::LocalProvisioner;
use crate::provision::{io, ProvisionError};

/// The server data is migrated from.
#[derive(Clone)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The database of the first connection (listing the others).
    pub dbname: String,
    /// Require TLS (`sslmode=require`), else prefer it.
    pub ssl: bool,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

/// The service's own cluster, as the restore logs in to it.
pub struct Target<'a> {
    /// Unix socket directory of the cluster.
    pub socket_dir: &'a Path,
    pub port: u16,
    /// pgbay's internal role and its password.
    pub user: &'a str,
    pub password: &'a str,
    /// The role that owns what is restored (the service's admin).
    pub owner: &'a str,
}

/// A step that failed, in words fit for the migration status (no password ever appears).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrateError(pub String);

impl LocalProvisioner {
    fn migrate_dir(&self, service: &str) -> PathBuf {
        self.service_dir(service).join("migration")
    }

    fn client(
        &self,
        service: &str,
        program: &str,
        source: &Source,
    ) -> Result<Command, ProvisionError> {
        let mut c = self.command(service, program)?;
        c.current_dir(self.migrate_dir(service))
            .env("PGHOST", &source.host)
            .env("PGPORT", source.port.to_string())
            .env("PGUSER", &source.user)
            .env("PGPASSWORD", &source.password)
            .env("PGSSLMODE", if source.ssl { "require" } else { "prefer" })
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pgbay-migration");
        Ok(c)
    }

    /// The databases of the source that can be migrated (not templates, not `postgres`).
    pub fn source_databases(
        &self,
        service: &str,
        source: &Source,
    ) -> Result<Vec<String>, MigrateError> {
        self.prepare_migrate_dir(service)?;
        let mut c = self.client(service, "psql", source).map_err(internal)?;
        c.env("PGDATABASE", &source.dbname).args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn \
             AND NOT datistemplate AND datname <> 'postgres' ORDER BY 1",
        ]);
        let out = run_captured(c, "psql")?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Copies database `db` of the source into the (existing, empty) database of the same name
    /// of the service's cluster: `pg_dump -Fc`, then `pg_restore -j 2`.
    pub fn dump_restore(
        &self,
        service: &str,
        source: &Source,
        db: &str,
        target: &Target<'_>,
    ) -> Result<(), MigrateError> {
        self.prepare_migrate_dir(service)?;
        let file = self.migrate_dir(service).join("db.dump");
        let mut dump = self.client(service, "pg_dump", source).map_err(internal)?;
        dump.env("PGDATABASE", db)
            .args(["-Fc", "--no-owner", "--no-acl", "-f"])
            .arg(&file);
        run_captured(dump, "pg_dump")?;
        let mut restore = self.command(service, "pg_restore").map_err(internal)?;
        restore
            .current_dir(self.migrate_dir(service))
            .env("PGHOST", target.socket_dir)
            .env("PGPORT", target.port.to_string())
            .env("PGUSER", target.user)
            .env("PGPASSWORD", target.password)
            .env("PGDATABASE", db)
            .args(["--no-owner", "--no-acl", "--exit-on-error", "-j", "2"])
            .arg(format!("--role={}", target.owner))
            .arg("-d")
            .arg(db)
            .arg(&file);
        let restored = run_captured(restore, "pg_restore");
        let _ = std::fs::remove_file(&file);
        restored.map(|_| ())
    }

    fn prepare_migrate_dir(&self, service: &str) -> Result<(), MigrateError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.migrate_dir(service);
        std::fs::create_dir_all(&dir)
            .map_err(io("creating the migration directory"))
            .map_err(internal)?;
        if let Some((uid, gid)) = self.owner(service).map_err(internal)? {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
                .map_err(|e| MigrateError(format!("chown migration dir: {e}")))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| MigrateError(format!("chmod migration dir: {e}")))
    }
}

fn internal(e: ProvisionError) -> MigrateError {
    MigrateError(e.to_string())
}

/// Runs `c`; its stdout, or an error with the program's last error line.
fn run_captured(mut c: Command, program: &str) -> Result<String, MigrateError> {
    let out = c
        .output()
        .map_err(|e| MigrateError(format!("running {program}: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("error") || l.contains("FATAL") || l.contains("fatal"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("failed")
        .trim()
        .to_string();
    Err(MigrateError(format!("{program}: {line}")))
}
