//! Read replicas (issue 19): a service whose cluster is a physical streaming copy of another
//! service's, made with pg_basebackup over TLS (verified against pgbay's CA) as a replication
//! role of its own, then kept as a hot standby (`standby.signal`, `primary_conninfo` in its
//! settings) until it is promoted.

use std::path::PathBuf;

use super::local::LocalProvisioner;
use super::{io, ClusterSpec, ProvisionError, TlsMaterial};

/// The pauses before a failed base backup of a replica's source is taken again.
const BASEBACKUP_RETRIES: [std::time::Duration; 2] = [
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(5),
];

/// Where and as whom a replica replicates from.
#[derive(Clone)]
pub struct ReplicaSource<'a> {
    /// The source service's address (its own port: on an HA source, pgbay's forwarder to its
    /// primary, so the replica follows a failover).
    pub host: &'a str,
    pub port: u16,
    /// The replication role made for this replica on the source.
    pub role: &'a str,
    pub password: &'a str,
}

impl LocalProvisioner {
    /// The libpq password file the replica's cluster replicates with (0600, its OS user's).
    pub fn replica_passfile(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("replica.pgpass")
    }

    /// The CA the replica verifies its source with.
    pub fn replica_ca(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("replica-ca.crt")
    }

    /// Makes the cluster of `spec` a copy of `src` (pg_basebackup, WAL streamed, as the
    /// service's OS user; the password only in a 0600 password file) and leaves it a standby
    /// of it. Its own configuration (`pgbay.conf`, `pgbay-settings.conf`, pg_hba.conf, the
    /// certificate) is written at its start, as for any cluster.
    pub fn make_replica(
        &self,
        spec: &ClusterSpec<'_>,
        src: &ReplicaSource<'_>,
        tls: &TlsMaterial,
    ) -> Result<(), ProvisionError> {
        let owner = self.ensure_owner(spec)?;
        let dir = self.service_dir(spec.name);
        let pgdata = dir.join("pgdata");
        if pgdata.exists() {
            std::fs::remove_dir_all(&pgdata).map_err(io("removing a half-made replica"))?;
        }
        let passfile = self.replica_passfile(spec.name);
        let line = format!(
            "{}:{}:*:{}:{}\n",
            pgpass_escape(src.host),
            src.port,
            pgpass_escape(src.role),
            pgpass_escape(src.password)
        );
        crate::files::write_atomic(&passfile, line.as_bytes(), 0o600, owner)
            .map_err(io("writing the replica's password file"))?;
        let ca = self.replica_ca(spec.name);
        crate::files::write_atomic(&ca, tls.ca_pem.as_bytes(), 0o600, owner)
            .map_err(io("writing the replica's CA"))?;
        // A base backup whose connection drops (a walsender ended by its source, a busy
        // machine) is taken again from the start, a bounded number of times.
        let mut pauses = BASEBACKUP_RETRIES.iter();
        loop {
            match self.base_backup(spec.name, src, &pgdata, &passfile, &ca) {
                Ok(()) => break,
                Err(e) => {
                    let Some(pause) = pauses.next() else {
                        return Err(e);
                    };
                    tracing::warn!(service = spec.name, error = %e, retry_in_s = pause.as_secs(),
                        "pg_basebackup of the replica's source failed; taking it again");
                    std::thread::sleep(*pause);
                    if pgdata.exists() {
                        std::fs::remove_dir_all(&pgdata)
                            .map_err(io("removing a half-made replica"))?;
                    }
                }
            }
        }
        // The source's postgresql.conf may be Patroni's (paths of another service's member):
        // the replica's is pgbay's includes, like every local cluster's.
        let conf = format!("{}\n", super::local::INCLUDES.join("\n"));
        for (file, data) in [
            ("postgresql.conf", conf.as_bytes()),
            ("standby.signal", b"".as_slice()),
        ] {
            crate::files::write_atomic(&pgdata.join(file), data, 0o600, owner)
                .map_err(io(format!("writing {file}")))?;
        }
        for stale in [
            "postgresql.base.conf",
            "patroni.dynamic.json",
            "standby.signal.tmp",
        ] {
            let _ = std::fs::remove_file(pgdata.join(stale));
        }
        crate::files::write_atomic(&dir.join("initialized"), b"", 0o600, owner)
            .map_err(io("marking the replica made"))?;
        Ok(())
    }

    /// One `pg_basebackup` of `src` into `pgdata` (streamed WAL, as the service's OS user).
    fn base_backup(
        &self,
        name: &str,
        src: &ReplicaSource<'_>,
        pgdata: &std::path::Path,
        passfile: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<(), ProvisionError> {
        let mut cmd = self.command(name, "pg_basebackup")?;
        cmd.arg("-h")
            .arg(src.host)
            .arg("-p")
            .arg(src.port.to_string())
            .arg("-U")
            .arg(src.role)
            .arg("-D")
            .arg(pgdata)
            .args(["-X", "stream", "-c", "fast", "-w", "--no-password"])
            .env("PGPASSFILE", passfile)
            .env("PGSSLMODE", "verify-ca")
            .env("PGSSLROOTCERT", ca)
            .env("PGAPPNAME", name)
            .env_remove("PGPASSWORD");
        self.run(cmd, "pg_basebackup")
    }

    /// Stops the (empty) cluster of `name` and removes its data directory and backups, so that
    /// it is made again as a replica.
    pub fn discard_for_replica(&self, name: &str) -> Result<(), ProvisionError> {
        self.stop(name)?;
        self.forget_initialized(name)?;
        let pgdata = self.service_dir(name).join("pgdata");
        if pgdata.exists() {
            std::fs::remove_dir_all(&pgdata).map_err(io("removing the replaced cluster"))?;
        }
        self.remove_repo(name)
    }

    /// Promotes the standby cluster of `name` (`pg_ctl promote`, waiting for it) and forgets its
    /// source's password file.
    pub fn promote(&self, name: &str) -> Result<(), ProvisionError> {
        let mut cmd = self.command(name, "pg_ctl")?;
        cmd.arg("promote")
            .arg("-D")
            .arg(self.service_dir(name).join("pgdata"))
            .args(["-w", "-t", "120", "-s"]);
        self.run(cmd, "pg_ctl promote")?;
        let _ = std::fs::remove_file(self.replica_passfile(name));
        Ok(())
    }
}

/// The `primary_conninfo` of a replica of `src` (no password: the password file).
pub fn primary_conninfo(prov: &LocalProvisioner, name: &str, src: &ReplicaSource<'_>) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} user={} passfile={} sslmode=verify-ca sslrootcert={} application_name={}",
        q(src.host),
        src.port,
        q(src.role),
        q(&prov.replica_passfile(name).display().to_string()),
        q(&prov.replica_ca(name).display().to_string()),
        q(name),
    )
}

fn pgpass_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}
