//! Migration of a PostgreSQL server that runs elsewhere into a service: the source as pgbay
//! reaches it, and the copy by dump (`dump`). The source's password reaches the programs only
//! through their environment (`PGPASSWORD` of the child), never their argv.

pub mod check;
pub mod dump;
pub mod logical;

use std::process::Command;

/// The server a migration copies from. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct Source {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login role.
    pub user: String,
    /// Its password (may be empty: trust or a peer method on the source).
    pub password: String,
    /// Copy only this database (`None`: every database but the templates and `postgres`).
    pub dbname: Option<String>,
    /// Require TLS (`sslmode=require`); otherwise TLS is used when the source offers it.
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

impl Source {
    /// `host:port`, as error messages name the source.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Points a libpq program at the source database `db` through its environment.
    pub(crate) fn env(&self, c: &mut Command, db: &str) {
        c.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", db)
            .env("PGSSLMODE", if self.ssl { "require" } else { "prefer" })
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pgbay-migration")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE");
    }
}

/// The service's server as the restore reaches it: its admin, so that every object restored is
/// the admin's (never pgbay's internal superuser). Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct Target {
    /// Unix-socket directory (or host) of the service's server.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The service's admin.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Target {
    pub(crate) fn env(&self, c: &mut Command) {
        c.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGAPPNAME", "pgbay-migration")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE");
    }
}

/// Why a step of a migration failed; its text is what the migration status shows.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A program (psql, pg_dump, pg_restore) failed; `output` is its first error line, which
    /// names the cause (the source's host and port, authentication, a missing database).
    #[error("{step}: {program} failed: {output}")]
    Program {
        /// What was being done.
        step: String,
        /// The program.
        program: &'static str,
        /// Its first error line.
        output: String,
    },
    /// A program could not be started, or a file could not be handled.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The service's cluster could not run the program.
    #[error(transparent)]
    Provision(#[from] crate::ProvisionError),
}

/// Runs `c` to its end; its stdout, or the error naming `program`, `step` and the first line of
/// its error output (libpq puts the cause there; later lines are hints).
pub(crate) fn run(
    mut c: Command,
    program: &'static str,
    step: &str,
) -> Result<String, MigrateError> {
    let out = c.output().map_err(|source| MigrateError::Io {
        what: format!("{step}: starting {program}"),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output");
    let line = line
        .strip_prefix(&format!("{program}: error: "))
        .or_else(|| line.strip_prefix(&format!("{program}: ")))
        .unwrap_or(line);
    Err(MigrateError::Program {
        step: step.to_string(),
        program,
        output: line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_passwords_out() {
        let s = Source {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            password: "hunter2".into(),
            dbname: None,
            ssl: true,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let t = Target {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn failure_names_the_first_error_line() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo 'psql: error: connection to server at \"h\", port 1 failed: Connection refused' >&2; echo hint >&2; exit 2"]);
        let e = run(c, "psql", "listing databases").unwrap_err();
        assert_eq!(
            e.to_string(),
            "listing databases: psql failed: connection to server at \"h\", port 1 failed: Connection refused"
        );
    }
}
