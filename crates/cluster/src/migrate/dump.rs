//! Migration by dump: each database of the source is copied with `pg_dump -Fd -j` and
//! `pg_restore -j` into the database of the same name on the service. Both run as the service's
//! OS user in its service directory (the dump lands there, beside the cluster, and is removed
//! after the restore). The restore logs in as the service's admin with `--no-owner
//! --no-privileges`, so every object restored belongs to the admin; roles are not copied.

use std::path::Path;

use super::{run, MigrateError, Source, Target};
use crate::LocalProvisioner;

/// Directory (in the service directory) the dump of the database being copied is written to.
const DUMP_DIR: &str = "migration-dump";

/// Databases of a source that are never copied unless named in `dbname`: the templates, and the
/// maintenance database `postgres` (the service has its own, which is not the tenant's).
pub const SKIPPED: [&str; 3] = ["template0", "template1", "postgres"];

/// The databases of `src` to copy: `src.dbname` alone if set (it must exist), else every
/// database that accepts connections, minus [`SKIPPED`] and `ignore`. Run as the OS user of
/// `service`; an unreachable source, a refused login or a missing database is the error.
pub fn databases(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
    ignore: &[String],
) -> Result<Vec<String>, MigrateError> {
    let mut c = prov.command(service, "psql")?;
    let db = src.dbname.as_deref().unwrap_or("postgres");
    src.env(&mut c, db);
    c.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
    ]);
    let step = format!("connecting to the source {} database {db:?}", src.address());
    let out = run(c, "psql", &step)?;
    if let Some(only) = &src.dbname {
        return Ok(vec![only.clone()]);
    }
    Ok(out
        .lines()
        .filter(|d| !d.is_empty())
        .filter(|d| !SKIPPED.contains(d) && !ignore.iter().any(|i| i == d))
        .map(str::to_string)
        .collect())
}

/// Copies database `db` of `src` into the existing, empty database `db` of the service, with
/// `jobs` parallel jobs on each side: everything, or its schema only (`schema_only`, before a
/// subscription copies the rows).
pub fn copy_database(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
    target: &Target,
    db: &str,
    jobs: u32,
    schema_only: bool,
) -> Result<(), MigrateError> {
    let dir = prov.service_dir(service).join(DUMP_DIR);
    remove_dump(&dir)?;
    let jobs = jobs.max(1).to_string();
    let mut dump = prov.command(service, "pg_dump")?;
    src.env(&mut dump, db);
    dump.args(["-Fd", "-j", &jobs, "--no-sync", "-f", DUMP_DIR]);
    if schema_only {
        dump.arg("--schema-only");
    }
    let result = run(
        dump,
        "pg_dump",
        &format!("dumping database {db:?} of {}", src.address()),
    )
    .and_then(|_| {
        let mut restore = prov.command(service, "pg_restore")?;
        target.env(&mut restore);
        restore.args([
            "-j",
            &jobs,
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "-d",
            &conninfo_dbname(db),
            DUMP_DIR,
        ]);
        run(
            restore,
            "pg_restore",
            &format!("restoring database {db:?} into the service"),
        )
        .map(drop)
    });
    let removed = remove_dump(&dir);
    result.and(removed)
}

fn remove_dump(dir: &Path) -> Result<(), MigrateError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(MigrateError::Io {
            what: format!("removing {}", dir.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `dbname='...'` as a libpq connection string (so that any database name is taken literally).
fn conninfo_dbname(db: &str) -> String {
    let quoted = db.replace('\\', "\\\\").replace('\'', "\\'");
    format!("dbname='{quoted}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_quoted_for_libpq() {
        assert_eq!(conninfo_dbname("a b"), "dbname='a b'");
        assert_eq!(conninfo_dbname("o'k\\"), "dbname='o\\'k\\\\'");
    }
}
