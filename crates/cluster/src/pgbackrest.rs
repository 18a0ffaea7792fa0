//! pgBackRest (Debian `pgbackrest`) for the local clusters: continuous WAL archiving, full
//! backups, and what they hold.
//!
//! One repository per service, `<repo-root>/<service>` (mode 0700, owned by the service's OS
//! user: another service's user cannot read it), with one stanza, `pgbay`. Its configuration is
//! `pgbackrest.conf` in the service directory (0600, the service's user), with pgBackRest's own
//! `spool-path`, `lock-path` and `log-path` there too. PostgreSQL archives with
//! `archive-push` (from `archive_command`, as the cluster's user), asynchronously
//! (`archive-async`, two processes: PostgreSQL's archiver hands a segment over and pgBackRest
//! pushes it and the ones queued after it in parallel; a segment counts as archived in
//! `pg_stat_archiver` only once it is in the repository); backups log in over the Unix
//! socket as pgbay's internal role, whose password reaches pgBackRest through its environment
//! (`PGPASSWORD`), never its command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::provision::local::LocalProvisioner;
use crate::provision::{io, ProvisionError};

/// The stanza every service's repository holds.
pub const STANZA: &str = "pgbay";

/// The program, looked up on PATH.
pub fn program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("pgbackrest"))
        .find(|p| p.is_file())
}

/// The error when pgBackRest is missing: names the Debian package.
pub fn missing() -> ProvisionError {
    ProvisionError::Program {
        program: "pgbackrest".into(),
        output: "not found on PATH: install the Debian package `pgbackrest`".into(),
    }
}

/// An S3-compatible object store that holds every service's repository, each under a prefix of
/// its own (`/<service>`) in one bucket (pgBackRest's `repo1-type=s3`). The key and secret reach
/// only each service's 0600 `pgbackrest.conf`; `Debug` leaves them out.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Repo {
    /// `host` or `host:port` of the endpoint (HTTPS).
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region (`us-east-1` for most S3-compatible stores).
    pub region: String,
    /// Path-style URIs (`https://host/bucket/key`, most S3-compatible stores) rather than
    /// host-style (`https://bucket.host/key`, AWS).
    pub path_style: bool,
    /// Verify the endpoint's TLS certificate.
    pub verify_tls: bool,
    /// CA certificates to verify it with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Access key.
    pub key: String,
    /// Secret access key.
    pub secret: String,
}

impl std::fmt::Debug for S3Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Repo")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("verify_tls", &self.verify_tls)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl S3Repo {
    /// The `[global]` lines of a repository of service `name` in this store; `ca_copy` is the
    /// service's own copy of `ca_file` (readable by its OS user, wherever the original is).
    fn conf(&self, name: &str, ca_copy: &Path) -> String {
        let (host, port) = match self.endpoint.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
            _ => (self.endpoint.as_str(), None),
        };
        let mut c = format!(
            "repo1-type=s3\nrepo1-path=/{name}\nrepo1-s3-endpoint={host}\nrepo1-s3-bucket={}\n\
             repo1-s3-region={}\nrepo1-s3-uri-style={}\nrepo1-s3-key={}\n\
             repo1-s3-key-secret={}\nrepo1-storage-verify-tls={}\n",
            self.bucket,
            self.region,
            if self.path_style { "path" } else { "host" },
            self.key,
            self.secret,
            if self.verify_tls { "y" } else { "n" },
        );
        if let Some(p) = port {
            c.push_str(&format!("repo1-storage-port={p}\n"));
        }
        if self.ca_file.is_some() {
            c.push_str(&format!("repo1-storage-ca-file={}\n", ca_copy.display()));
        }
        c
    }
}

/// One backup in a repository, as `pgbackrest info` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// pgBackRest's label, e.g. `20261203-071500F`.
    pub name: String,
    /// When it finished (unix seconds).
    pub stopped_at: i64,
    /// Size of the database it holds, bytes.
    pub data_size: u64,
}

/// What a repository holds: backups, oldest first (the first one's end is the oldest time a
/// restore can reach).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoInfo {
    pub backups: Vec<Backup>,
}

#[derive(Deserialize)]
struct InfoStanza {
    #[serde(default)]
    backup: Vec<InfoBackup>,
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    timestamp: InfoTimestamp,
    info: InfoSizes,
}

#[derive(Deserialize)]
struct InfoTimestamp {
    stop: i64,
}

#[derive(Deserialize)]
struct InfoSizes {
    size: u64,
}

/// Parses `pgbackrest --output=json info` of one stanza.
pub fn parse_info(json: &str) -> Result<RepoInfo, String> {
    let stanzas: Vec<InfoStanza> =
        serde_json::from_str(json).map_err(|e| format!("pgbackrest info: {e}"))?;
    let mut backups: Vec<Backup> = stanzas
        .into_iter()
        .flat_map(|s| s.backup)
        .map(|b| Backup {
            name: b.label,
            stopped_at: b.timestamp.stop,
            data_size: b.info.size,
        })
        .collect();
    backups.sort_by_key(|b| b.stopped_at);
    Ok(RepoInfo { backups })
}

impl LocalProvisioner {
    /// The local repository of `name` when archiving is on into the file system (None with an
    /// S3 repository, or when archiving is off).
    pub fn repo_of(&self, name: &str) -> Option<PathBuf> {
        if self.s3().is_some() {
            return None;
        }
        self.backup_root().map(|r| r.join(name))
    }

    fn pgbackrest_conf(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("pgbackrest.conf")
    }

    /// The settings that make the cluster archive into its repository (for `pgbay.conf`), and
    /// the repository and pgBackRest's files they need, made now. Empty when archiving is off.
    pub(crate) fn archive_settings(
        &self,
        name: &str,
        port: u16,
        socket_dir: &Path,
        owner: Option<(u32, u32)>,
        cipher: Option<&str>,
    ) -> Result<String, ProvisionError> {
        let pgs = [(self.pgdata_of(name), socket_dir.to_path_buf(), port)];
        Ok(self
            .archive_parameters(name, &pgs, owner, cipher)?
            .into_iter()
            .map(|(k, v)| format!("{k} = '{}'\n", v.replace('\'', "''")))
            .collect())
    }

    /// The PostgreSQL parameters that make every member of an HA service (`pgs`: each one's
    /// data directory, socket directory and port, `pg1`..`pgN` of the stanza) archive into the
    /// service's repository, and pgBackRest's configuration naming them all (so that a backup
    /// finds the primary, and can copy from a standby). Empty when archiving is off.
    pub fn ha_archive_parameters(
        &self,
        name: &str,
        pgs: &[(PathBuf, PathBuf, u16)],
        owner: Option<(u32, u32)>,
        cipher: Option<&str>,
    ) -> Result<Vec<(String, String)>, ProvisionError> {
        self.archive_parameters(name, pgs, owner, cipher)
    }

    /// `cipher`: the repository's encryption key (`repo1-cipher-type=aes-256-cbc`), None for an
    /// unencrypted repository of a service made before repositories were encrypted.
    fn archive_parameters(
        &self,
        name: &str,
        pgs: &[(PathBuf, PathBuf, u16)],
        owner: Option<(u32, u32)>,
        cipher: Option<&str>,
    ) -> Result<Vec<(String, String)>, ProvisionError> {
        if self.backup_root().is_none() {
            return Ok(Vec::new());
        }
        let program = program().ok_or_else(missing)?;
        let dir = self.service_dir(name).join("pgbackrest");
        let repo = match (self.s3(), self.repo_of(name)) {
            (Some(s3), _) => {
                let copy = dir.join("s3-ca.pem");
                if let Some(ca) = &s3.ca_file {
                    make_private_dir(&dir, owner)?;
                    let pem = std::fs::read(ca)
                        .map_err(io(format!("reading --backup-s3-ca-file {}", ca.display())))?;
                    crate::files::write_atomic(&copy, &pem, 0o600, owner)
                        .map_err(io("writing the S3 CA certificates"))?;
                }
                s3.conf(name, &copy)
            }
            (None, Some(repo)) => {
                make_private_dir(&repo, owner)?;
                format!("repo1-path={}\n", repo.display())
            }
            (None, None) => return Ok(Vec::new()),
        };
        for d in [
            dir.clone(),
            dir.join("spool"),
            dir.join("lock"),
            dir.join("log"),
        ] {
            make_private_dir(&d, owner)?;
        }
        let mut conf = format!(
            "# written by pgbay\n[global]\n{repo}repo1-retention-full=7\n\
             spool-path={spool}\nlock-path={lock}\nlog-path={log}\nlog-level-console=warn\n\
             log-level-file=off\nstart-fast=y\ncompress-type=gz\ncompress-level=1\n\
             archive-async=y\nprocess-max=2\n\
             {cipher}[{STANZA}]\n",
            cipher = match cipher {
                Some(pass) => format!("repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={pass}\n"),
                None => String::new(),
            },
            spool = dir.join("spool").display(),
            lock = dir.join("lock").display(),
            log = dir.join("log").display(),
        );
        for (i, (pgdata, socket, port)) in pgs.iter().enumerate() {
            let n = i + 1;
            conf.push_str(&format!(
                "pg{n}-path={}\npg{n}-socket-path={}\npg{n}-port={port}\npg{n}-user={}\n",
                pgdata.display(),
                socket.display(),
                crate::admin::INTERNAL_ROLE,
            ));
        }
        crate::files::write_atomic(&self.pgbackrest_conf(name), conf.as_bytes(), 0o600, owner)
            .map_err(io("writing pgbackrest.conf"))?;
        let command = format!(
            "{} --config={} --stanza={STANZA} archive-push %p",
            program.display(),
            self.pgbackrest_conf(name).display()
        );
        Ok(vec![
            ("archive_mode".into(), "on".into()),
            ("archive_command".into(), command),
            ("archive_timeout".into(), "60".into()),
        ])
    }

    /// Makes the service's directory, OS user and pgBackRest configuration as a cluster start
    /// does, without a cluster: for a service to be rebuilt on this node from its repository on
    /// a shared path (its own node was lost). A repository another machine's user of the service
    /// made is handed to this machine's.
    pub fn prepare_rebuild(
        &self,
        spec: &crate::provision::ClusterSpec<'_>,
    ) -> Result<(), ProvisionError> {
        let owner = self.ensure_owner(spec)?;
        if let (Some(repo), Some((uid, gid))) = (self.repo_of(spec.name), owner) {
            if repo.exists() {
                crate::provision::local::chown_tree(&repo, uid, gid)?;
            }
        }
        let socket_dir = self.ensure_socket_dir(spec.port, owner)?;
        self.archive_settings(spec.name, spec.port, &socket_dir, owner, spec.backup_cipher)?;
        Ok(())
    }

    /// pgBackRest for service `name`, as its OS user, logging in with `password`.
    fn pgbackrest(&self, name: &str, password: &str) -> Result<Command, ProvisionError> {
        let program = program().ok_or_else(missing)?;
        let mut c = self.command_at(name, &program)?;
        c.arg(format!("--config={}", self.pgbackrest_conf(name).display()))
            .arg(format!("--stanza={STANZA}"))
            .env("PGPASSWORD", password);
        Ok(c)
    }

    /// Creates the stanza (idempotent: an existing one of the same cluster is left as it is).
    pub fn stanza_create(&self, name: &str, password: &str) -> Result<(), ProvisionError> {
        let mut c = self.pgbackrest(name, password)?;
        c.arg("stanza-create");
        self.run(c, "pgbackrest stanza-create")
    }

    /// A full backup, then pgBackRest's expiry of what the retention no longer keeps: the
    /// newest `retention_full` full backups and the WAL they need.
    pub fn backup(
        &self,
        name: &str,
        password: &str,
        retention_full: u32,
        from_standby: bool,
    ) -> Result<(), ProvisionError> {
        let mut c = self.pgbackrest(name, password)?;
        c.arg(format!("--repo1-retention-full={}", retention_full.max(1)))
            .arg(format!(
                "--backup-standby={}",
                if from_standby { "y" } else { "n" }
            ))
            .args(["--type=full", "backup"]);
        self.run(c, "pgbackrest backup")
    }

    /// What the repository of `name` holds.
    pub fn repo_info(&self, name: &str) -> Result<RepoInfo, ProvisionError> {
        let mut c = self.pgbackrest(name, "")?;
        c.env_remove("PGPASSWORD").args(["--output=json", "info"]);
        let out = c.output().map_err(io("running pgbackrest info"))?;
        if !out.status.success() {
            return Err(ProvisionError::Program {
                program: "pgbackrest info".into(),
                output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        parse_info(&String::from_utf8_lossy(&out.stdout)).map_err(|e| ProvisionError::Program {
            program: "pgbackrest info".into(),
            output: e,
        })
    }

    /// Makes the cluster of `spec` (a new service) from the repository of `source`: the latest
    /// recoverable state, or the state at a target time (`YYYY-MM-DD HH:MM:SS+00`) restored from
    /// a named backup set (pgBackRest's own pick otherwise). Idempotent:
    /// a completed fork is left alone, a half-made one is made again.
    ///
    /// Only the source's OS user may read the source's repository, so the restore and the
    /// recovery run as that user in a staging directory inside the source's service directory,
    /// on a configuration of their own (Unix socket only, no archiving: the copy must never
    /// write into the source's repository); the recovered directory is then handed to the new
    /// service's user. Where no commit follows `target_time` in the archive, PostgreSQL ends
    /// recovery with "recovery ended before configured recovery target was reached": the fork is
    /// then recovered again, from the same backup set, up to and including the last record that
    /// first recovery replayed (its "redo done at" LSN), which is the same state. Not "to the end
    /// of the archive": the archive may have grown in between (a source that was just started
    /// archives its last segment), and the fork would then hold commits after the target.
    pub fn restore_fork(
        &self,
        source: &str,
        spec: &crate::provision::ClusterSpec<'_>,
        target: Option<(&str, Option<&str>)>,
    ) -> Result<(), ProvisionError> {
        let marker = self.service_dir(spec.name).join("initialized");
        if marker.exists() {
            return Ok(());
        }
        let target_owner = self.ensure_owner(spec)?;
        let source_owner = self.owner(source)?;
        if source == spec.name {
            // A rebuild: the service's pgBackRest configuration may be gone with its directory.
            let socket_dir = self.ensure_socket_dir(spec.port, target_owner)?;
            self.archive_settings(
                spec.name,
                spec.port,
                &socket_dir,
                target_owner,
                spec.backup_cipher,
            )?;
        }
        let staging_root = self.service_dir(source).join(format!("fork-{}", spec.name));
        let first = match target {
            Some((at, set)) => Recovery::Time { at, set },
            None => Recovery::End,
        };
        let result = match self.recover_copy(source, spec, &staging_root, source_owner, &first) {
            Err(e) if e.to_string().contains("before configured recovery target") => {
                let log =
                    std::fs::read_to_string(staging_root.join("recovery.log")).unwrap_or_default();
                match (redo_done_at(&log), target) {
                    (Some(lsn), Some((_, set))) => {
                        tracing::info!(
                            service = spec.name,
                            source,
                            lsn = %lsn,
                            "no commit after the recovery target in the archive: recovering \
                             to the last record that recovery replayed"
                        );
                        let again = Recovery::Lsn { at: lsn, set };
                        self.recover_copy(source, spec, &staging_root, source_owner, &again)
                    }
                    _ => Err(e),
                }
            }
            r => r,
        };
        // Never a fork holding a commit made after its target time: checked against what the
        // recovery itself logged, whatever made it go on.
        let result = result.and_then(|()| match target {
            Some((at, _)) => {
                let log =
                    std::fs::read_to_string(staging_root.join("recovery.log")).unwrap_or_default();
                stopped_by(&log, at).map_err(|output| ProvisionError::Program {
                    program: "fork recovery".into(),
                    output,
                })
            }
            None => Ok(()),
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging_root);
            return Err(e);
        }
        let pgdata = self.pgdata_of(spec.name);
        if std::fs::symlink_metadata(&pgdata).is_ok() {
            std::fs::remove_dir_all(&pgdata).map_err(io("removing half-made fork"))?;
        }
        std::fs::rename(staging_root.join("pgdata"), &pgdata)
            .map_err(io("moving the recovered cluster into place"))?;
        // The recovery's server log stays with the fork (what it replayed, where it stopped).
        if let Ok(log) = std::fs::read(staging_root.join("recovery.log")) {
            let _ = crate::files::write_atomic(
                &self.service_dir(spec.name).join("fork-recovery.log"),
                &log,
                0o600,
                target_owner,
            );
        }
        let _ = std::fs::remove_dir_all(&staging_root);
        if let Some((uid, gid)) = target_owner {
            crate::provision::local::chown_tree(&pgdata, uid, gid)?;
        }
        crate::files::write_atomic(&marker, b"", 0o600, target_owner)
            .map_err(io("marking the fork made"))
    }

    /// Restores the source's backup into `staging_root/pgdata` and runs the recovery to its end.
    fn recover_copy(
        &self,
        source: &str,
        spec: &crate::provision::ClusterSpec<'_>,
        staging_root: &Path,
        source_owner: Option<(u32, u32)>,
        recovery: &Recovery<'_>,
    ) -> Result<(), ProvisionError> {
        let program = program().ok_or_else(missing)?;
        if std::fs::symlink_metadata(staging_root).is_ok() {
            std::fs::remove_dir_all(staging_root).map_err(io("removing old staging dir"))?;
        }
        make_private_dir(staging_root, source_owner)?;
        let staging = staging_root.join("pgdata");
        let mut c = self.command_at(source, &program)?;
        c.arg(format!(
            "--config={}",
            self.pgbackrest_conf(source).display()
        ))
        .arg(format!("--stanza={STANZA}"))
        .arg(format!("--pg1-path={}", staging.display()));
        let set = match recovery {
            Recovery::Time { at, set } => {
                c.arg("--type=time").arg(format!("--target={at}"));
                set
            }
            Recovery::Lsn { at, set } => {
                c.arg("--type=lsn").arg(format!("--target={at}"));
                set
            }
            Recovery::End => {
                c.arg("--type=default");
                &None
            }
        };
        if !matches!(recovery, Recovery::End) {
            c.arg("--target-action=promote");
        }
        if let Some(set) = set {
            c.arg(format!("--set={set}"));
        }
        c.arg("restore");
        self.run(c, "pgbackrest restore")?;
        plain_configuration(&staging, source_owner)?;
        let log = staging_root.join("recovery.log");
        let mut start = self.command(source, "pg_ctl")?;
        // The copy's own settings (its port, only a Unix socket in the staging directory, no
        // TLS, no archiving: it must never write into the source's repository), on the server's
        // command line, where no configuration file overrides them: the copy has the source's
        // files (its pgbay.conf names the source's port and archive command; a Patroni member's
        // postgresql.conf its port and addresses). pg_ctl hands these to a shell.
        let shell_quoted = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
        let overrides = format!(
            "-c port={} -c listen_addresses= -c unix_socket_directories={} -c ssl=off \
             -c archive_mode=off -c timezone=UTC -c log_timezone=UTC",
            spec.port,
            shell_quoted(&staging_root.display().to_string())
        );
        start
            .arg("start")
            .arg("-D")
            .arg(&staging)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(overrides)
            .args(["-w", "-t", "300", "-s"]);
        let started = self.run(start, "pg_ctl start (fork recovery)");
        let outcome = started.and_then(|()| self.wait_promoted(source, &staging, &log));
        let mut stop = self.command(source, "pg_ctl")?;
        stop.arg("stop")
            .arg("-D")
            .arg(&staging)
            .args(["-m", "fast", "-w", "-t", "60", "-s"]);
        let _ = self.run(stop, "pg_ctl stop (fork recovery)");
        outcome.map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            ProvisionError::Program {
                program: "fork recovery".into(),
                output: format!(
                    "{e}; server log: {}",
                    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            }
        })?;
        // Recovery settings pgBackRest wrote: the fork is a primary of its own now.
        let auto = staging.join("postgresql.auto.conf");
        if let Ok(text) = std::fs::read_to_string(&auto) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    !(l.starts_with("restore_command") || l.starts_with("recovery_target"))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::files::write_atomic(&auto, kept.as_bytes(), 0o600, source_owner)
                .map_err(io("writing postgresql.auto.conf"))?;
        }
        Ok(())
    }

    /// Waits until the recovering copy has left recovery for good: its control file says "in
    /// production", which PostgreSQL writes only after the end-of-recovery checkpoint on the
    /// new timeline. Neither the postmaster's `ready` status (written as soon as a hot standby
    /// accepts read-only connections) nor `recovery.signal`'s removal (at the end of redo,
    /// before the timeline switch and that checkpoint) says as much: a copy stopped between
    /// them starts again from the backup's checkpoint and replays every WAL segment it holds,
    /// past the target (a fork at T that held a commit made after T, seen in the test suite).
    /// Or until its postmaster has exited (recovery failed).
    fn wait_promoted(&self, source: &str, pgdata: &Path, log: &Path) -> Result<(), ProvisionError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let ready = std::fs::read_to_string(pgdata.join("postmaster.pid"))
                .ok()
                .and_then(|pid| pid.lines().nth(7).map(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready
                && !pgdata.join("recovery.signal").exists()
                && self.cluster_state(source, pgdata)?.as_deref() == Some("in production")
            {
                return Ok(());
            }
            if !pgdata.join("postmaster.pid").exists() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                return Err(ProvisionError::Program {
                    program: "fork recovery".into(),
                    output: text
                        .lines()
                        .rev()
                        .find(|l| l.contains("FATAL"))
                        .unwrap_or("the server stopped during recovery")
                        .to_string(),
                });
            }
            if std::time::Instant::now() > deadline {
                return Err(ProvisionError::Program {
                    program: "fork recovery".into(),
                    output: "recovery did not end within 600 s".into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// The "Database cluster state" `pg_controldata` reads from the control file of `pgdata`
    /// (run as the OS user of `source`, who owns it).
    fn cluster_state(&self, source: &str, pgdata: &Path) -> Result<Option<String>, ProvisionError> {
        let mut c = self.command(source, "pg_controldata")?;
        c.arg("-D").arg(pgdata);
        let out = c.output().map_err(io("running pg_controldata"))?;
        controldata_state(&out)
    }

    /// Removes the repository of `name` (the service is deleted; its cluster is stopped): the
    /// directory of a local one; the stanza of an S3 one (`stanza-delete`, which removes every
    /// object under the service's prefix). What pgBackRest still runs for the service (a
    /// backup, an expiry, an asynchronous archive-push) is ended first: left running, it writes
    /// on into the repository after it is gone.
    pub fn remove_repo(&self, name: &str) -> Result<(), ProvisionError> {
        if self.pgbackrest_conf(name).exists() {
            self.end_pgbackrest(name, END_WAIT)?;
        }
        if let Some(repo) = self.repo_of(name) {
            if std::fs::symlink_metadata(&repo).is_ok() {
                std::fs::remove_dir_all(&repo).map_err(io("removing backup repository"))?;
            }
            return Ok(());
        }
        if self.s3().is_some() && self.pgbackrest_conf(name).exists() {
            let mut delete = self.pgbackrest(name, "")?;
            delete.args(["--force", "stanza-delete"]);
            self.run(delete, "pgbackrest stanza-delete")?;
        }
        Ok(())
    }

    /// Ends every pgBackRest process of `name`: `pgbackrest stop` (none starts again), then
    /// TERM to each process whose command line names the service's configuration and that
    /// runs as the service's user (each command and its worker processes, where `stop --force`
    /// signals only the commands that hold a lock), waited for; KILL to what outlives `wait`
    /// (`END_WAIT`), waited for as long; an error if any is left then.
    fn end_pgbackrest(&self, name: &str, wait: std::time::Duration) -> Result<(), ProvisionError> {
        // `stop` only keeps new commands from starting (the service is gone from the store and
        // its cluster stopped, so none is asked for): a failed one (pgBackRest uninstalled
        // since) does not keep the service's files.
        let stopped = self.pgbackrest(name, "").and_then(|mut stop| {
            stop.arg("stop");
            self.run(stop, "pgbackrest stop")
        });
        if let Err(e) = stopped {
            tracing::warn!(service = %name, error = %e, "pgbackrest stop");
        }
        let config = format!("--config={}", self.pgbackrest_conf(name).display());
        // SAFETY: geteuid has no preconditions.
        let uid = match self.owner(name)? {
            Some((uid, _)) => uid,
            None => unsafe { libc::geteuid() },
        };
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            let pids = processes_naming(&config, uid);
            if pids.is_empty() {
                return Ok(());
            }
            for &pid in &pids {
                // SAFETY: kill has no memory preconditions; a pid gone meanwhile gets ESRCH.
                unsafe { libc::kill(pid, signal) };
            }
            let deadline = std::time::Instant::now() + wait;
            while std::time::Instant::now() < deadline
                && pids.iter().any(|&p| process_names(p, &config, uid))
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let left = processes_naming(&config, uid);
        if left.is_empty() {
            return Ok(());
        }
        Err(ProvisionError::Program {
            program: "pgbackrest".into(),
            output: format!("processes {left:?} of the service did not end after TERM and KILL"),
        })
    }
}

/// How long the pgBackRest processes of a removed service get to end after TERM (and then
/// after KILL).
const END_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The live processes of user `uid` one of whose arguments is `arg`.
fn processes_naming(arg: &str, uid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_names(pid, arg, uid))
        .collect()
}

/// Whether process `pid` runs as `uid` and one of its arguments is `arg` (a zombie has none).
fn process_names(pid: i32, arg: &str, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(format!("/proc/{pid}")) {
        Ok(meta) if meta.uid() == uid => crate::files::cmdline_has(pid, arg),
        _ => false,
    }
}

/// A directory only `owner` may use (0700), made if missing and handed to `owner`.
fn make_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", dir.display())))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))
}

/// The first lines of a postgresql.conf that Patroni wrote.
const PATRONI_CONF: &str =
    "# Do not edit this file manually!\n# It will be overwritten by Patroni!";

/// The settings of a Patroni member a recovery of its WAL needs again (PostgreSQL refuses to
/// recover with less than the primary had: "insufficient parameter settings").
const RECOVERY_NEEDS: [&str; 8] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "track_commit_timestamp",
    "wal_level",
    "wal_log_hints",
];

/// A backup of a Patroni member carries Patroni's postgresql.conf, which names the member's
/// own files (hba_file, ident_file, certificates), ports and archive command, and includes
/// the cluster's own configuration as `postgresql.base.conf`. A fork is a cluster of its own:
/// that configuration becomes its postgresql.conf again, with only the member's `RECOVERY_NEEDS`
/// after it (pgbay adds its includes after those when the fork starts), and Patroni's files go.
fn plain_configuration(pgdata: &Path, owner: Option<(u32, u32)>) -> Result<(), ProvisionError> {
    let conf = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap_or_default();
    if !text.starts_with(PATRONI_CONF) {
        return Ok(());
    }
    // pgbay's includes (a source made by pgbay and then handed to Patroni has them) are taken
    // out: the fork's start adds them again at the end, after the lines below, so that the
    // fork's own plan and settings win over the source member's.
    let base = std::fs::read_to_string(pgdata.join("postgresql.base.conf")).unwrap_or_default();
    let mut plain: String = base
        .lines()
        .filter(|l| !crate::provision::local::INCLUDES.contains(&l.trim()))
        .map(|l| format!("{l}\n"))
        .collect();
    plain.push_str("\n# the source member's settings its WAL needs to be recovered (pgbay)\n");
    for line in text.lines() {
        let name = line.split('=').next().unwrap_or("").trim();
        if RECOVERY_NEEDS.contains(&name) {
            plain.push_str(line);
            plain.push('\n');
        }
    }
    crate::files::write_atomic(&conf, plain.as_bytes(), 0o600, owner)
        .map_err(io("writing the fork's postgresql.conf"))?;
    for file in [
        "postgresql.base.conf",
        "postgresql.base.conf.backup",
        "postgresql.conf.backup",
        "pg_hba.conf.backup",
        "pg_ident.conf.backup",
        "patroni.dynamic.json",
    ] {
        match std::fs::remove_file(pgdata.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing Patroni's files from the fork")(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a fork's recovery stops.
enum Recovery<'a> {
    /// The end of the archive.
    End,
    /// Before the first commit after a time (`YYYY-MM-DD HH:MM:SS+00`), from a named backup set
    /// (pgBackRest's own pick otherwise).
    Time { at: &'a str, set: Option<&'a str> },
    /// After the record at an LSN (`X/Y`), from the same backup set as `Time`.
    Lsn { at: String, set: Option<&'a str> },
}

/// The LSN of the last record a recovery replayed, from its server log ("redo done at X/Y").
fn redo_done_at(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let lsn = line
            .split("redo done at ")
            .nth(1)?
            .split_whitespace()
            .next()?;
        let (hi, lo) = lsn.split_once('/')?;
        let hex = |p: &str| !p.is_empty() && u32::from_str_radix(p, 16).is_ok();
        (hex(hi) && hex(lo)).then(|| lsn.to_string())
    })
}

/// The "Database cluster state" line of `pg_controldata`'s output (run with `LC_ALL=C`).
fn control_state(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|v| v.trim().to_string())
}

/// A time as a fork's target is written (`2026-12-04 16:21:49.550000+00`) and as the recovery
/// logs one in UTC (`2026-12-04 16:21:49.55+00`, or without a fraction): its fields, in an order
/// that compares as the times do (microseconds last).
fn utc_time(s: &str) -> Option<[u32; 7]> {
    let (date, time) = s.trim().strip_suffix("+00")?.split_once(' ')?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut fields = date.split('-').chain(hms.split(':'));
    let mut out = [0u32; 7];
    for slot in out.iter_mut().take(6) {
        *slot = fields.next()?.parse().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    out[6] = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some(out)
}

/// Checks, from a fork's recovery log, that the recovery replayed no transaction that
/// committed after `target`: PostgreSQL logs the commit time of the last one it replayed ("last
/// completed transaction was at log time …"). No such line: no transaction was replayed, the
/// backup alone (which ended by the target) is the fork. The error names both times.
fn stopped_by(log: &str, target: &str) -> Result<(), String> {
    let Some(last) = log.lines().rev().find_map(|line| {
        line.split("last completed transaction was at log time ")
            .nth(1)
    }) else {
        return Ok(());
    };
    match (utc_time(last), utc_time(target)) {
        (Some(l), Some(t)) if l > t => Err(format!(
            "the recovery replayed a transaction committed at {}, after the target time {target}: \
             the fork is not made; recovery log: {}",
            last.trim(),
            log.lines()
                .filter(|l| l.contains("recovery") || l.contains("redo"))
                .collect::<Vec<_>>()
                .join(" | ")
        )),
        (Some(_), Some(_)) => Ok(()),
        _ => {
            tracing::warn!(
                last,
                target,
                "fork: the recovery's last commit time not understood"
            );
            Ok(())
        }
    }
}

/// The cluster state in `pg_controldata`'s output; its failure (a control file it cannot read)
/// is an error, not a state to wait on until the deadline.
fn controldata_state(out: &std::process::Output) -> Result<Option<String>, ProvisionError> {
    if !out.status.success() {
        return Err(ProvisionError::Program {
            program: "pg_controldata".into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(control_state(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c SCRIPT ARG` as `uid` (pgbay's own, or another when root), once its command line
    /// names ARG (empty until its exec is done) and `ready` holds of it: waited for, bounded.
    /// ARG is an argument of the shell's own command line as long as SCRIPT executes no program
    /// (dash execs a script's last program in its own place): a builtin that waits on stdin.
    fn shell_naming(
        script: &str,
        arg: &str,
        uid: u32,
        ready: impl Fn(u32) -> bool,
    ) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("sh");
        command
            .args(["-c", script, arg])
            .stdin(std::process::Stdio::piped());
        // SAFETY: geteuid has no preconditions.
        if uid != unsafe { libc::geteuid() } {
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (processes_naming(arg, uid).is_empty() || !ready(child.id()))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child
    }

    #[test]
    fn the_processes_naming_a_configuration_are_found_by_argument_and_user() {
        let arg = format!(
            "--config=/nonexistent/pgbay-test-{}/pgbackrest.conf",
            std::process::id()
        );
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let mut child = shell_naming("read _", &arg, me, |_| true);
        let pid = child.id() as i32;
        assert_eq!(processes_naming(&arg, me), vec![pid]);
        assert!(processes_naming(&arg, me.wrapping_add(1)).is_empty());
        assert!(processes_naming(&arg[..arg.len() - 1], me).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        // A process that has ended names nothing.
        assert!(!process_names(pid, &arg, me));
    }

    /// A process of the service that ignores TERM is killed once the wait is over, and a
    /// failed `pgbackrest stop` (here: the service has no configuration file) does not keep
    /// the removal from ending what runs.
    #[test]
    fn a_process_that_ignores_term_is_killed_and_a_failed_stop_is_no_obstacle() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let prov =
            LocalProvisioner::new("/nonexistent".into(), dir.path().to_path_buf(), "h".into());
        let service = "svc-end";
        std::fs::create_dir(prov.service_dir(service)).unwrap();
        // As root, the service's files and processes are a user's of its own (`nobody` here).
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            prov.ensure_traversable(dir.path()).unwrap();
            std::os::unix::fs::chown(prov.service_dir(service), Some(65534), Some(65534)).unwrap();
        }
        let arg = format!("--config={}", prov.pgbackrest_conf(service).display());
        // SAFETY: geteuid has no preconditions.
        let uid = if root {
            65534
        } else {
            unsafe { libc::geteuid() }
        };
        // TERM is ignored once its trap is set (`SigIgn` in /proc).
        let ignores_term = |pid: u32| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
        };
        let mut child = shell_naming("trap '' TERM; read _", &arg, uid, ignores_term);
        assert_eq!(processes_naming(&arg, uid), vec![child.id() as i32]);
        assert!(ignores_term(child.id()));
        prov.end_pgbackrest(service, std::time::Duration::from_millis(500))
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(processes_naming(&arg, uid).is_empty());
    }

    #[test]
    fn a_failed_pg_controldata_is_an_error_not_a_state() {
        use std::os::unix::process::ExitStatusExt;
        let out = |code: i32, stdout: &str, stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let ok = out(
            0,
            "Database cluster state:               in production\n",
            "",
        );
        assert_eq!(
            controldata_state(&ok).unwrap().as_deref(),
            Some("in production")
        );
        let failed = out(
            1,
            "",
            "pg_controldata: error: could not open file \"x\": Permission denied\n",
        );
        match controldata_state(&failed) {
            Err(ProvisionError::Program { program, output }) => {
                assert_eq!(program, "pg_controldata");
                assert!(output.ends_with("Permission denied"), "{output}");
            }
            other => panic!("expected the failure, got {other:?}"),
        }
    }

    #[test]
    fn the_control_files_state_is_read_from_pg_controldata() {
        let out = "pg_control version number:            1300\n\
                   Database cluster state:               in archive recovery\n\
                   pg_control last modified:             Fri Dec  4 17:31:25 2026\n";
        assert_eq!(control_state(out).as_deref(), Some("in archive recovery"));
        let out = out.replace("in archive recovery", "in production");
        assert_eq!(control_state(&out).as_deref(), Some("in production"));
        assert_eq!(control_state(""), None);
    }

    #[test]
    fn a_fork_whose_recovery_replayed_a_commit_after_its_target_is_refused() {
        assert_eq!(
            utc_time("2026-12-04 16:21:49.55+00"),
            Some([2026, 12, 4, 16, 21, 49, 550_000])
        );
        assert_eq!(
            utc_time("2026-12-04 16:21:49+00"),
            Some([2026, 12, 4, 16, 21, 49, 0])
        );
        assert_eq!(utc_time("2026-12-04 16:21:49.5+01"), None);
        assert_eq!(utc_time("2026-12-04 16:21:49.1234567+00"), None);
        let target = "2026-12-04 16:21:49.550000+00";
        let log = |last: &str| {
            format!(
                "LOG:  starting point-in-time recovery to {target}\n\
                 LOG:  recovery stopping before commit of transaction 750, time 2026-12-04 16:21:50.61+00\n\
                 LOG:  redo done at 0/3017A08 system usage: CPU: user: 0.00 s\n\
                 LOG:  last completed transaction was at log time {last}\n"
            )
        };
        assert!(stopped_by(&log("2026-12-04 16:21:49.49+00"), target).is_ok());
        assert!(stopped_by(&log("2026-12-04 16:21:49.55+00"), target).is_ok());
        let e = stopped_by(&log("2026-12-04 16:21:50.61+00"), target).unwrap_err();
        assert!(e.contains("committed at 2026-12-04 16:21:50.61+00"), "{e}");
        assert!(e.contains("recovery stopping before commit"), "{e}");
        // No transaction replayed: the backup alone.
        assert!(stopped_by("LOG:  redo done at 0/3000100\n", target).is_ok());
    }

    #[test]
    fn info_lists_backups_oldest_first() {
        let json = r#"[{"name":"pgbay","backup":[
            {"label":"20261203-080000F","timestamp":{"start":1764748790,"stop":1764748800},
             "info":{"size":30000000,"delta":30000000}},
            {"label":"20261203-070000F","timestamp":{"start":1764745190,"stop":1764745200},
             "info":{"size":29000000,"delta":29000000}}]}]"#;
        let info = parse_info(json).unwrap();
        assert_eq!(info.backups.len(), 2);
        assert_eq!(info.backups[0].name, "20261203-070000F");
        assert_eq!(info.backups[0].stopped_at, 1764745200);
        assert_eq!(info.backups[1].data_size, 30000000);
        assert_eq!(
            parse_info(r#"[{"name":"pgbay"}]"#).unwrap(),
            RepoInfo::default()
        );
    }

    #[test]
    fn the_last_replayed_record_is_read_from_a_failed_recovery_log() {
        let log = "2026-12-04 10:00:00.001 UTC [81] LOG:  starting point-in-time recovery to 2026-12-04 09:59:00+00
2026-12-04 10:00:00.300 UTC [81] LOG:  redo starts at 0/2000028
2026-12-04 10:00:00.412 UTC [81] LOG:  redo done at 0/5000148 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.11 s
2026-12-04 10:00:00.412 UTC [81] FATAL:  recovery ended before configured recovery target was reached
2026-12-04 10:00:00.415 UTC [80] LOG:  startup process (PID 81) exited with exit code 1
";
        assert_eq!(redo_done_at(log).as_deref(), Some("0/5000148"));
        assert_eq!(
            redo_done_at("LOG:  redo starts at 0/2000028\nFATAL:  could not locate"),
            None
        );
        assert_eq!(redo_done_at("LOG:  redo done at zz/1 system usage"), None);
    }

    #[test]
    fn a_patroni_members_configuration_becomes_the_forks_own() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let member = format!(
            "{PATRONI_CONF}\ninclude 'postgresql.base.conf'\nport = '24404'\n\
             listen_addresses = '127.0.0.1'\nmax_connections = '200'\n\
             hba_file = '/srv/members/1/data/pg_hba.conf'\nmax_wal_senders = '10'\n"
        );
        std::fs::write(d.join("postgresql.conf"), member).unwrap();
        std::fs::write(
            d.join("postgresql.base.conf"),
            "shared_buffers = 128MB\ninclude_if_exists = 'pgbay.conf'\n\
             include_if_exists = 'pgbay-settings.conf'\n",
        )
        .unwrap();
        for f in ["postgresql.conf.backup", "patroni.dynamic.json"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        plain_configuration(d, None).unwrap();
        let conf = std::fs::read_to_string(d.join("postgresql.conf")).unwrap();
        assert!(conf.starts_with("shared_buffers = 128MB\n"), "{conf}");
        assert!(conf.contains("max_connections = '200'") && conf.contains("max_wal_senders"));
        for gone in [
            "port =",
            "listen_addresses",
            "hba_file",
            "include",
            "Patroni",
        ] {
            assert!(!conf.contains(gone), "{gone} left in {conf}");
        }
        for f in [
            "postgresql.base.conf",
            "postgresql.conf.backup",
            "patroni.dynamic.json",
        ] {
            assert!(!d.join(f).exists(), "{f} left");
        }
        // A cluster's own configuration is left alone.
        std::fs::write(d.join("postgresql.conf"), "port = 5432\n").unwrap();
        plain_configuration(d, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("postgresql.conf")).unwrap(),
            "port = 5432\n"
        );
    }
}
