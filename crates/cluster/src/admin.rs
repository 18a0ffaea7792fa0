//! Administrative SQL on a service's PostgreSQL server, over tokio-postgres: as pgbay's internal
//! superuser on a local cluster (see [`INTERNAL_ROLE`]), as the operator's admin on an external
//! server.
//!
//! Names and passwords never get spliced into SQL by pgbay: the server builds each utility
//! statement with `format('%I', $1)` / `format('%L', $2)` from bind parameters, so quoting is
//! PostgreSQL's own. Passwords never reach the server in clear either: pgbay sends the
//! SCRAM-SHA-256 verifier it computed itself (as psql's `\password` does), so that a failing
//! statement logged by the server shows no password. Every operation is idempotent (create-if-missing, drop-if-exists) so that an
//! API call interrupted between the server and the store can simply be retried.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// pgbay's own superuser on every local cluster it makes (initdb's bootstrap user). It logs in
/// over the cluster's Unix socket only (pg_hba rejects it over TCP), with a generated password
/// that pgbay keeps encrypted in its store and never shows; the API refuses it as a user name.
pub const INTERNAL_ROLE: &str = "pgbay_internal";

/// The role the standbys of an HA service replicate as (Patroni's `replication` user): LOGIN
/// REPLICATION, over TLS from loopback, for the replication pseudo-database only.
pub const REPLICATION_ROLE: &str = "pgbay_replication";

/// The role Patroni runs pg_rewind as: a superuser (so that no tenant's CREATEROLE admin can
/// grant itself its file-reading functions), over TLS from loopback only.
pub const REWIND_ROLE: &str = "pgbay_rewind";

/// Whether `name` is one of pgbay's own roles, which the API refuses as user names.
pub fn is_reserved_role(name: &str) -> bool {
    [INTERNAL_ROLE, REPLICATION_ROLE, REWIND_ROLE].contains(&name) || name.starts_with("pgbay_rr_")
}

/// What a service's admin (primary user) is made a member of: a managed admin's monitoring,
/// signalling and data-access roles (as Aiven's and Exoscale's `avnadmin`), as far as the
/// server has them. Never `pg_read_server_files`, `pg_write_server_files` or
/// `pg_execute_server_program`: those reach the OS.
pub const ADMIN_ROLES: [&str; 8] = [
    "pg_monitor",
    "pg_signal_backend",
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_stat_scan_tables",
    "pg_checkpoint",
];

/// Predefined roles that give access to the server's files and programs. Through PostgreSQL 15 a
/// CREATEROLE role may grant any role that is not a superuser, these included; pgbay marks them
/// `rolsuper` (they cannot log in, and no one is their member) so that granting them, as with any
/// superuser role, needs a superuser.
pub const OS_ACCESS_ROLES: [&str; 3] = [
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
];

/// PBKDF2 iterations of the verifiers pgbay computes: PostgreSQL's default (`scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of `password` with `salt`, in PostgreSQL's `rolpassword` format
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802/7677). The password is
/// SASLprep-normalized first, falling back to its raw bytes when SASLprep refuses it, exactly as
/// PostgreSQL and libpq do, so that any client computes the same keys.
pub fn scram_verifier_with_salt(password: &str, salt: &[u8]) -> String {
    let prepared = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, SCRAM_ITERATIONS, &mut salted);
    let keyed = |label: &[u8]| {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&salted).expect("any key length");
        m.update(label);
        m.finalize().into_bytes()
    };
    let stored_key = Sha256::digest(keyed(b"Client Key"));
    let server_key = keyed(b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// The SCRAM-SHA-256 verifier of `password` with a fresh random 16-byte salt.
pub fn scram_verifier(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    scram_verifier_with_salt(password, &salt)
}

/// Where and as whom to connect. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct AdminTarget {
    /// Host of the server.
    pub host: String,
    /// Port of the server.
    pub port: u16,
    /// Admin user.
    pub user: String,
    /// Admin password.
    pub password: String,
}

impl std::fmt::Debug for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTarget({}@{}:{})", self.user, self.host, self.port)
    }
}

/// A failed administrative statement.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server said no, or could not be reached.
    #[error("postgres: {}", describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// pgbay refuses to change its own internal role on a tenant's behalf.
    #[error("role {INTERNAL_ROLE} is pgbay's own")]
    InternalRole,
    /// Waited too long for the server (what for is in the message).
    #[error("{0}")]
    Timeout(String),
}

/// tokio-postgres displays a server error as just "db error"; the log needs the server's words.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl AdminError {
    /// The SQLSTATE, if the server sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            AdminError::Pg(e) => e.code(),
            AdminError::InternalRole => Some(&SqlState::RESERVED_NAME),
            AdminError::Timeout(_) => None,
        }
    }
    /// The server's message, if any.
    pub fn server_message(&self) -> Option<String> {
        match self {
            AdminError::Pg(e) => e.as_db_error().map(|d| d.message().to_string()),
            AdminError::InternalRole | AdminError::Timeout(_) => Some(self.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, AdminError>;

/// Opens an admin session on `dbname`. A host starting with `/` is the Unix-socket directory of
/// a local cluster (whose TCP port accepts TLS only); any other host is reached over TLS when
/// the server offers it (libpq's `sslmode=prefer`).
pub async fn connect(t: &AdminTarget, dbname: &str) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .password(&t.password)
        .dbname(dbname)
        .application_name("pgbay-control")
        .connect_timeout(std::time::Duration::from_secs(10));
    let client = if t.host.starts_with('/') {
        // pgbay's superuser sessions also open databases the tenant's admin owns, where it may
        // `ALTER DATABASE … SET search_path` to a schema of its own that shadows a function
        // pgbay calls: the startup packet's setting wins over the database's.
        cfg.options("-c search_path=pg_catalog,pg_temp");
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(drive(conn));
        client
    } else {
        cfg.ssl_mode(tokio_postgres::config::SslMode::Prefer);
        let (client, conn) = cfg.connect(prefer_tls::connector()).await?;
        tokio::spawn(drive(conn));
        client
    };
    Ok(client)
}

async fn drive<F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>>(
    conn: F,
) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended");
    }
}

/// TLS for admin sessions on a TCP server (an external one): encrypted, but the certificate is
/// not verified, as libpq's `sslmode=prefer` — pgbay has no CA of the external server to verify
/// it with. The handshake's signatures are still checked.
mod prefer_tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio_postgres_rustls::MakeRustlsConnect;

    #[derive(Debug)]
    struct Unverified(Arc<CryptoProvider>);

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub(super) fn connector() -> MakeRustlsConnect {
        let provider = Arc::new(ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        MakeRustlsConnect::new(config)
    }
}

async fn exec_formatted(c: &Client, template: &str, args: &[&str]) -> Result<()> {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
        .iter()
        .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}::text")).collect();
    let q = format!(
        "SELECT pg_catalog.format('{template}', {})",
        placeholders.join(", ")
    );
    let row = c.query_one(&q, &params).await?;
    let stmt: String = row.get(0);
    c.batch_execute(&stmt).await?;
    Ok(())
}

/// Refuses `name` when it is pgbay's internal role: no tenant request may change it.
fn not_internal(name: &str) -> Result<()> {
    if is_reserved_role(name) {
        return Err(AdminError::InternalRole);
    }
    Ok(())
}

/// Makes (or resets) the roles Patroni needs on a cluster it takes over (a single cluster
/// becoming an HA service), as pgbay's internal superuser `t`, and makes the rewind role a
/// superuser (on a cluster Patroni bootstrapped it exists already, with function grants only).
pub async fn ensure_patroni_roles(
    t: &AdminTarget,
    replication_password: &str,
    rewind_password: &str,
) -> Result<()> {
    let c = connect(t, "postgres").await?;
    for (role, attrs, pw) in [
        (
            REPLICATION_ROLE,
            "LOGIN REPLICATION NOSUPERUSER",
            replication_password,
        ),
        (REWIND_ROLE, "LOGIN SUPERUSER", rewind_password),
    ] {
        let verb = if role_exists(&c, role).await? {
            "ALTER"
        } else {
            "CREATE"
        };
        let template = format!("{verb} ROLE %I WITH {attrs} PASSWORD %L");
        exec_formatted(&c, &template, &[role, &scram_verifier(pw)]).await?;
    }
    Ok(())
}

/// Makes (or resets) the replication role `role` a read replica streams as: LOGIN REPLICATION,
/// nothing else.
pub async fn ensure_replication_role(t: &AdminTarget, role: &str, password: &str) -> Result<()> {
    let c = connect(t, "postgres").await?;
    let verb = if role_exists(&c, role).await? {
        "ALTER"
    } else {
        "CREATE"
    };
    let template = format!("{verb} ROLE %I WITH LOGIN REPLICATION NOSUPERUSER PASSWORD %L");
    exec_formatted(&c, &template, &[role, &scram_verifier(password)]).await
}

/// Drops role `role` if it exists (a read replica's, once it no longer replicates).
pub async fn drop_role_if_exists(t: &AdminTarget, role: &str) -> Result<()> {
    let c = connect(t, "postgres").await?;
    exec_formatted(&c, "DROP ROLE IF EXISTS %I", &[role]).await
}

/// How many tables, views and sequences of its users database `db` holds (outside the
/// catalogs).
pub async fn user_table_count(t: &AdminTarget, db: &str) -> Result<i64> {
    let c = connect(t, db).await?;
    let row = c
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
             ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Makes Patroni's rewind role a superuser (see [`REWIND_ROLE`]).
pub async fn harden_rewind_role(t: &AdminTarget) -> Result<()> {
    let c = connect(t, "postgres").await?;
    exec_formatted(&c, "ALTER ROLE %I WITH SUPERUSER", &[REWIND_ROLE]).await
}

/// Creates database `name` unless it exists, owned by `owner` (the service's admin, so that it
/// may create trusted extensions and manage the database's schemas), with the given collation
/// and character class (from template0, as PostgreSQL requires for a locale other than the
/// template's).
pub async fn create_database(
    t: &AdminTarget,
    name: &str,
    owner: &str,
    lc_collate: Option<&str>,
    lc_ctype: Option<&str>,
) -> Result<()> {
    let c = connect(t, "postgres").await?;
    let exists = c
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1::text::name",
            &[&name],
        )
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let mut template = "CREATE DATABASE %I OWNER %I".to_string();
    let mut args = vec![name, owner];
    if lc_collate.is_some() || lc_ctype.is_some() {
        template.push_str(" TEMPLATE template0");
    }
    if let Some(v) = lc_collate {
        template.push_str(" LC_COLLATE %L");
        args.push(v);
    }
    if let Some(v) = lc_ctype {
        template.push_str(" LC_CTYPE %L");
        args.push(v);
    }
    exec_formatted(&c, &template, &args).await
}

/// Drops database `name` (terminating its sessions) if it exists.
pub async fn drop_database(t: &AdminTarget, name: &str) -> Result<()> {
    let c = connect(t, "postgres").await?;
    exec_formatted(&c, "DROP DATABASE IF EXISTS %I WITH (FORCE)", &[name]).await
}

/// Creates login role `name` with `password`, or resets an existing one's password and flags.
pub async fn upsert_role(
    t: &AdminTarget,
    name: &str,
    password: &str,
    replication: bool,
) -> Result<()> {
    not_internal(name)?;
    let c = connect(t, "postgres").await?;
    let exists = role_exists(&c, name).await?;
    let repl = if replication {
        "REPLICATION"
    } else {
        "NOREPLICATION"
    };
    let verb = if exists { "ALTER" } else { "CREATE" };
    let template = format!("{verb} ROLE %I WITH LOGIN {repl} PASSWORD %L");
    exec_formatted(&c, &template, &[name, &scram_verifier(password)]).await
}

/// Makes `name` the service's managed admin, as pgbay's internal superuser `t`: creates it or
/// resets it to LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION with `password`, grants it
/// [`ADMIN_ROLES`] (those the server has), and keeps [`OS_ACCESS_ROLES`] out of a CREATEROLE
/// role's reach. Idempotent.
pub async fn ensure_managed_admin(t: &AdminTarget, name: &str, password: &str) -> Result<()> {
    not_internal(name)?;
    let c = connect(t, "postgres").await?;
    let exists = role_exists(&c, name).await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    let template = format!(
        "{verb} ROLE %I WITH LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION NOBYPASSRLS \
         PASSWORD %L"
    );
    exec_formatted(&c, &template, &[name, &scram_verifier(password)]).await?;
    let wanted: Vec<String> = ADMIN_ROLES.iter().map(|r| r.to_string()).collect();
    let present: Vec<String> = c
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1::text[]) ORDER BY 1",
            &[&wanted],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for role in &present {
        exec_formatted(&c, "GRANT %I TO %I", &[role, name]).await?;
    }
    let guarded: Vec<String> = OS_ACCESS_ROLES.iter().map(|r| r.to_string()).collect();
    c.execute(
        "UPDATE pg_authid SET rolsuper = true WHERE rolname = ANY($1::text[]) AND NOT rolsuper",
        &[&guarded],
    )
    .await?;
    Ok(())
}

/// Whether role `name` exists on the server `c` is connected to.
async fn role_exists(c: &Client, name: &str) -> Result<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM pg_roles WHERE rolname = $1::text::name",
        &[&name],
    )
    .await?
    .is_some())
}

/// Sets a role's password.
pub async fn set_password(t: &AdminTarget, name: &str, password: &str) -> Result<()> {
    not_internal(name)?;
    let c = connect(t, "postgres").await?;
    let verifier = scram_verifier(password);
    exec_formatted(&c, "ALTER ROLE %I WITH PASSWORD %L", &[name, &verifier]).await
}

/// Drops role `name` if it exists, first handing what it owns in `databases` to `heir` (the
/// service's admin).
pub async fn drop_role(
    t: &AdminTarget,
    name: &str,
    heir: &str,
    databases: &[String],
) -> Result<()> {
    not_internal(name)?;
    let c = connect(t, "postgres").await?;
    let exists = role_exists(&c, name).await?;
    if !exists {
        return Ok(());
    }
    for db in databases.iter().map(String::as_str).chain(["postgres"]) {
        let dc = match connect(t, db).await {
            Ok(dc) => dc,
            // A database dropped outside pgbay owns nothing we could reassign.
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => continue,
            Err(e) => return Err(e),
        };
        exec_formatted(
            &dc,
            "REASSIGN OWNED BY %I TO %I; DROP OWNED BY %I",
            &[name, heir, name],
        )
        .await?;
    }
    exec_formatted(&c, "DROP ROLE IF EXISTS %I", &[name]).await
}

/// Makes the server re-read its configuration files (pg_hba.conf after an ip-filter change).
/// Makes everything committed so far recoverable from the archive: a transaction with an xid
/// (so that a commit record later than any earlier time exists), a WAL switch, then waits until
/// PostgreSQL reports the switched segment archived (`pg_stat_archiver`), at most `timeout`.
/// Errs on a timeout, naming the segment.
pub async fn switch_wal_and_wait(t: &AdminTarget, timeout: std::time::Duration) -> Result<()> {
    let mut c = connect(t, "postgres").await?;
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_catalog.txid_current()", &[]).await?;
    tx.commit().await?;
    let row = c
        .query_one(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())",
            &[],
        )
        .await?;
    let segment: String = row.get(0);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let row = c
            .query_one(
                "SELECT coalesce(last_archived_wal, '') >= $1 FROM pg_catalog.pg_stat_archiver",
                &[&segment],
            )
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(AdminError::Timeout(format!(
                "WAL segment {segment} not archived within {timeout:?}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Where a server is in its WAL history: the timeline it writes (a primary) or has reached
/// (a standby), and whether it is a standby whose WAL receiver streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalTimeline {
    pub timeline: i64,
    pub in_recovery: bool,
    pub streaming: bool,
}

/// The server's `WalTimeline`. A primary's timeline is that of its current WAL file (it
/// changes at promotion, before any checkpoint); a standby's is the latest of its last
/// restartpoint, its minimum recovery point and what its receiver got.
pub async fn wal_timeline(t: &AdminTarget) -> Result<WalTimeline> {
    let c = connect(t, "postgres").await?;
    let row = c
        .query_one(
            "SELECT pg_catalog.pg_is_in_recovery(),
                    CASE WHEN pg_catalog.pg_is_in_recovery() THEN
                        greatest((SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
                                 (SELECT min_recovery_end_timeline
                                  FROM pg_catalog.pg_control_recovery()),
                                 (SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver))::int8
                    ELSE ('x' || substr(pg_catalog.pg_walfile_name(
                              pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int8
                    END,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_stat_wal_receiver
                            WHERE status = 'streaming')",
            &[],
        )
        .await?;
    Ok(WalTimeline {
        in_recovery: row.get(0),
        timeline: row.get(1),
        streaming: row.get(2),
    })
}

pub async fn reload(t: &AdminTarget) -> Result<()> {
    let c = connect(t, "postgres").await?;
    c.execute("SELECT pg_reload_conf()", &[]).await?;
    Ok(())
}

/// Settings of `pgbay-settings.conf` that the server refused on its last reload, as
/// `(name, error)`; settings that only wait for a restart are not errors.
pub async fn settings_file_errors(t: &AdminTarget) -> Result<Vec<(String, String)>> {
    let c = connect(t, "postgres").await?;
    let rows = c
        .query(
            "SELECT f.name, f.error FROM pg_file_settings f
             WHERE f.error IS NOT NULL AND f.sourcefile LIKE '%/pgbay-settings.conf'
               AND NOT EXISTS (SELECT 1 FROM pg_settings s
                               WHERE s.name = f.name AND s.context = 'postmaster')",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1)))
        .collect())
}

/// Sets or clears REPLICATION on role `name`.
pub async fn set_replication(t: &AdminTarget, name: &str, replication: bool) -> Result<()> {
    not_internal(name)?;
    let c = connect(t, "postgres").await?;
    let template = if replication {
        "ALTER ROLE %I WITH REPLICATION"
    } else {
        "ALTER ROLE %I WITH NOREPLICATION"
    };
    exec_formatted(&c, template, &[name]).await
}

/// Database names of the server (except templates and `postgres`).
pub async fn list_databases(t: &AdminTarget) -> Result<Vec<String>> {
    names(
        t,
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1",
    )
    .await
}

/// Login role names of the server (pgbay's internal role left out).
pub async fn list_roles(t: &AdminTarget) -> Result<Vec<String>> {
    names(
        t,
        "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname <> 'pgbay_internal' ORDER BY 1",
    )
    .await
}

/// The first column of a catalog query run on the `postgres` database.
async fn names(t: &AdminTarget, sql: &str) -> Result<Vec<String>> {
    let c = connect(t, "postgres").await?;
    let rows = c.query(sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed independently with Python's standard library:
    /// ```text
    /// import base64, hashlib, hmac, unicodedata
    /// salt = bytes(range(16)); p = unicodedata.normalize("NFKC", pw.replace("\u00a0", " ")).encode()
    /// sp = hashlib.pbkdf2_hmac("sha256", p, salt, 4096)
    /// stored = hashlib.sha256(hmac.new(sp, b"Client Key", "sha256").digest()).digest()
    /// server = hmac.new(sp, b"Server Key", "sha256").digest()
    /// ```
    #[test]
    fn verifier_matches_independent_computation() {
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            scram_verifier_with_salt("pencil-pgbay-42", &salt),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$BE1TB3fMhI+whPxjq9yBdFlY3kA4s0riLcuTUZGaEe0=:0TXfNNb3mfHcwIdo4GbGNwpUoLAQg0d3Xc7JpYwraWM="
        );
        // SASLprep maps the no-break space to a space and NFKC folds the full-width letters.
        assert_eq!(
            scram_verifier_with_salt("\u{ff50}\u{ff41}\u{ff53}\u{ff53}\u{a0}word", &salt),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$j/VoiRO65AYD0ylfz3CvwkSu8iMA9H/5/EC2AVeQ1ZU=:YtkGKEUB7bKpC1VrVUaT8cFztKwgoDnGKfqw4XknsY0="
        );
    }

    #[test]
    fn verifiers_are_salted_at_random() {
        let a = scram_verifier("same password");
        let b = scram_verifier("same password");
        assert_ne!(a, b);
        assert!(a.starts_with("SCRAM-SHA-256$4096:"));
        assert!(!a.contains("same password"));
    }
}
