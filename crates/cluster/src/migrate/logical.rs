//! Migration by logical replication: for each database, the schema is copied by dump (as the
//! service's admin, who owns it), a publication of all tables is made on the source, and a
//! subscription on the service, owned by pgbay's internal superuser (PostgreSQL 15 lets only a
//! superuser subscribe; the tenant's admin never gains it), copies the rows and then follows the
//! source's changes until the migration is stopped. The source's password reaches the
//! subscription only through a passfile (0600, the service's OS user's) named in its
//! connection string, so it is never in a catalog, a statement or a log.
//!
//! Stopping synchronises the sequences once (logical replication does not carry them), drops
//! the subscription (which drops its slot on the source) and the publication.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{run, MigrateError, Source};
use crate::admin::{self, AdminTarget};
use crate::LocalProvisioner;

/// Name of the publication, subscription and slot of database `db` migrated into the service
/// `service_id`: unique per service and database, within PostgreSQL's identifier rules.
pub fn slot_name(service_id: &uuid::Uuid, db: &str) -> String {
    let h = Sha256::digest(db.as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("pgbay_{}_{hex}", &service_id.simple().to_string()[..12])
}

/// Why `src` cannot be replicated from (`None`: it can): `wal_level` must be `logical` and the
/// user a superuser (a publication of all tables and a replication slot need one).
pub fn cannot_replicate(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
    db: &str,
) -> Result<Option<String>, MigrateError> {
    let out = source_sql(
        prov,
        service,
        src,
        db,
        "SELECT current_setting('wal_level'), rolsuper FROM pg_roles WHERE rolname = current_user",
        "checking the source can replicate",
    )?;
    let mut cols = out.trim().split('\u{1f}');
    let wal_level = cols.next().unwrap_or_default();
    let superuser = cols.next() == Some("t");
    if wal_level != "logical" {
        return Ok(Some(format!(
            "wal_level of the source is {wal_level}, replication needs logical"
        )));
    }
    if !superuser {
        return Ok(Some(format!(
            "user {:?} of the source is not a superuser, replication needs one",
            src.user
        )));
    }
    Ok(None)
}

fn source_sql(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
    db: &str,
    sql: &str,
    step: &str,
) -> Result<String, MigrateError> {
    let mut c = prov.command(service, "psql")?;
    src.env(&mut c, db);
    c.args([
        "-X",
        "-At",
        "-F",
        "\u{1f}",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    run(
        c,
        "psql",
        &format!("{step} ({} database {db:?})", src.address()),
    )
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn passfile_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// The passfile the subscriptions of `service` read the source's password from: in its service
/// directory, owned by its OS user, mode 0600.
pub fn write_passfile(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
) -> Result<PathBuf, MigrateError> {
    let path = std::path::absolute(prov.service_dir(service).join("migration.pgpass")).map_err(
        |source| MigrateError::Io {
            what: "locating the migration passfile".into(),
            source,
        },
    )?;
    let line = format!(
        "{}:{}:*:{}:{}\n",
        passfile_field(&src.host),
        src.port,
        passfile_field(&src.user),
        passfile_field(&src.password)
    );
    crate::files::write_atomic(&path, line.as_bytes(), 0o600, prov.owner(service)?).map_err(
        |source| MigrateError::Io {
            what: format!("writing {}", path.display()),
            source,
        },
    )?;
    Ok(path)
}

/// Removes the passfile of `service` (after the last subscription is dropped).
pub fn remove_passfile(prov: &LocalProvisioner, service: &str) {
    let _ = std::fs::remove_file(prov.service_dir(service).join("migration.pgpass"));
}

/// Publishes every table of database `db` of the source as `name`.
pub fn publish(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
    db: &str,
    name: &str,
) -> Result<(), MigrateError> {
    let n = ident(name);
    source_sql(
        prov,
        service,
        src,
        db,
        &format!("DROP PUBLICATION IF EXISTS {n}; CREATE PUBLICATION {n} FOR ALL TABLES"),
        "creating the publication on the source",
    )
    .map(drop)
}

fn sql_error(step: &str, e: admin::AdminError) -> MigrateError {
    MigrateError::Program {
        step: step.to_string(),
        program: "postgres",
        output: e.server_message().unwrap_or_else(|| e.to_string()),
    }
}

/// Subscribes database `db` of the service (through its internal superuser `su`) to the
/// publication `name` of the source, copying the rows first.
pub async fn subscribe(
    su: &AdminTarget,
    src: &Source,
    db: &str,
    name: &str,
    passfile: &std::path::Path,
) -> Result<(), MigrateError> {
    let step = format!("subscribing database {db:?} to the source");
    let c = admin::connect(su, db)
        .await
        .map_err(|e| sql_error(&step, e))?;
    let conninfo = format!(
        "host={} port={} user={} dbname={} sslmode={} passfile={} connect_timeout=10 application_name={}",
        conninfo_value(&src.host),
        src.port,
        conninfo_value(&src.user),
        conninfo_value(db),
        if src.ssl { "require" } else { "prefer" },
        conninfo_value(&passfile.to_string_lossy()),
        conninfo_value(name),
    );
    let n = ident(name);
    c.batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {n}"))
        .await
        .map_err(|e| sql_error(&step, e.into()))?;
    c.batch_execute(&format!(
        "CREATE SUBSCRIPTION {n} CONNECTION {} PUBLICATION {n}",
        literal(&conninfo)
    ))
    .await
    .map_err(|e| sql_error(&step, e.into()))?;
    Ok(())
}

/// Has the subscription `name` of database `db` copied every table (all in state `r`)?
pub async fn initial_copy_done(
    su: &AdminTarget,
    db: &str,
    name: &str,
) -> Result<bool, MigrateError> {
    let step = format!("reading the subscription of database {db:?}");
    let c = admin::connect(su, db)
        .await
        .map_err(|e| sql_error(&step, e))?;
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r') = 0 FROM pg_catalog.pg_subscription s
             LEFT JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid WHERE s.subname = $1",
            &[&name],
        )
        .await
        .map_err(|e| sql_error(&step, e.into()))?;
    Ok(row.get(0))
}

/// Ends the replication of database `db`: sequences set once from the source's, the
/// subscription dropped (with its slot on the source) and the publication dropped.
pub async fn stop(
    prov: &LocalProvisioner,
    service: &str,
    su: &AdminTarget,
    src: &Source,
    db: &str,
    name: &str,
) -> Result<(), MigrateError> {
    let (p, s, sr, d) = (
        prov.clone(),
        service.to_string(),
        src.clone(),
        db.to_string(),
    );
    let seqs = tokio::task::spawn_blocking(move || {
        source_sql(
            &p,
            &s,
            &sr,
            &d,
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_catalog.pg_sequences \
             WHERE last_value IS NOT NULL",
            "reading the source's sequences",
        )
    })
    .await
    .map_err(|e| MigrateError::Io {
        what: "reading sequences".into(),
        source: std::io::Error::other(e),
    })??;
    let step = format!("stopping the replication of database {db:?}");
    let c = admin::connect(su, db)
        .await
        .map_err(|e| sql_error(&step, e))?;
    for line in seqs.lines().filter(|l| !l.is_empty()) {
        let mut cols = line.split('\u{1f}');
        let (Some(seq), Some(v)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<i64>() else { continue };
        c.execute(
            "SELECT pg_catalog.setval(pg_catalog.to_regclass($1), $2, true) WHERE pg_catalog.to_regclass($1) IS NOT NULL",
            &[&seq, &v],
        )
        .await
        .map_err(|e| sql_error(&step, e.into()))?;
    }
    c.batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {}", ident(name)))
        .await
        .map_err(|e| sql_error(&step, e.into()))?;
    let (p, s, sr, d, n) = (
        prov.clone(),
        service.to_string(),
        src.clone(),
        db.to_string(),
        ident(name),
    );
    tokio::task::spawn_blocking(move || {
        source_sql(
            &p,
            &s,
            &sr,
            &d,
            &format!("DROP PUBLICATION IF EXISTS {n}"),
            "dropping the publication on the source",
        )
    })
    .await
    .map_err(|e| MigrateError::Io {
        what: "dropping the publication".into(),
        source: std::io::Error::other(e),
    })??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_identifiers_unique_per_database() {
        let id = uuid::Uuid::new_v4();
        let a = slot_name(&id, "shop");
        assert_ne!(a, slot_name(&id, "extra"));
        assert!(
            a.len() <= 63
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_eq!(passfile_field("a:b\\c"), "a\\:b\\\\c");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
