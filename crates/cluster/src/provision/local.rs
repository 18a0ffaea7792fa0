//! The `local` provisioner: one real PostgreSQL cluster per service, under
//! `<data-dir>/services/<name>/pgdata`, created with the machine's initdb and run with pg_ctl.
//!
//! When pgbay is root, every program run for a service runs as that service's own OS user (see
//! `os_users`), which owns the service directory (mode 0700) and nothing else; files pgbay writes
//! there are handed to that user before they are moved into place. Unprivileged, pgbay runs its
//! clusters as itself (the services then share its user). Clusters are started with
//! `pg_ctl start`, which detaches the postmaster: after `kill -9` of pgbay it keeps running, and the
//! next pgbay adopts it (postmaster.pid names a live postgres) instead of starting a second one.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{io, ClusterSpec, ProvisionError, Provisioner, TlsMaterial};
use crate::os_users::{self, UidRange};

/// The include lines pgbay puts at the end of every cluster's postgresql.conf: its runtime
/// settings, then the service's settings (which therefore win).
pub(crate) const INCLUDES: [&str; 2] = [
    "include_if_exists = 'pgbay.conf'",
    "include_if_exists = 'pgbay-settings.conf'",
];

/// Runs clusters with the PostgreSQL binaries of `bin_dir`.
#[derive(Debug, Clone)]
pub struct LocalProvisioner {
    bin_dir: PathBuf,
    services_dir: PathBuf,
    public_host: String,
    /// pgbay is root: each service runs as its own OS user.
    isolate: bool,
    uid_range: UidRange,
    /// Where each service's pgBackRest repository lives (`pgbackrest`); None: no archiving.
    backup_root: Option<PathBuf>,
    s3: Option<crate::pgbackrest::S3Repo>,
}

/// Owner (uid, gid) given to a service's files, `None` when pgbay is not root.
pub(crate) type Owner = Option<(u32, u32)>;

/// uid/gid of `nobody`, which runs pgbay's scratch PostgreSQL work when pgbay is root.
const SCRATCH_ID: u32 = 65534;

impl LocalProvisioner {
    /// A provisioner keeping clusters under `services_dir`, taking service users' uids from the
    /// default range (see [`Self::with_uid_range`]).
    pub fn new(bin_dir: PathBuf, services_dir: PathBuf, public_host: String) -> Self {
        LocalProvisioner {
            bin_dir,
            services_dir,
            public_host,
            isolate: os_users::privileged(),
            uid_range: UidRange::default(),
            backup_root: None,
            s3: None,
        }
    }

    /// Archives every cluster's WAL with pgBackRest into a repository per service under
    /// `root` (`crate::pgbackrest`).
    pub fn with_backup_root(mut self, root: PathBuf) -> Self {
        self.backup_root = Some(root);
        self
    }

    /// Keeps every service's repository in an S3-compatible store instead of under the backup
    /// root (which must be set too: it turns archiving on).
    pub fn with_s3(mut self, s3: crate::pgbackrest::S3Repo) -> Self {
        self.s3 = Some(s3);
        self
    }

    /// See [`Self::with_s3`].
    pub fn s3(&self) -> Option<&crate::pgbackrest::S3Repo> {
        self.s3.as_ref()
    }

    /// See [`Self::with_backup_root`].
    pub fn backup_root(&self) -> Option<&Path> {
        self.backup_root.as_deref()
    }

    pub(crate) fn pgdata_of(&self, name: &str) -> PathBuf {
        self.pgdata(name)
    }

    /// Takes the uids of new service users from `range` (`--service-uid-range`).
    pub fn with_uid_range(mut self, range: UidRange) -> Self {
        self.uid_range = range;
        self
    }

    /// The PostgreSQL major version of the binaries (e.g. "15").
    pub fn major_version(&self) -> Result<String, ProvisionError> {
        let out = Command::new(self.bin_dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(io("running postgres --version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "postgres (PostgreSQL) 15.8 (Debian ...)"
        text.split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .map(str::to_string)
            .ok_or_else(|| ProvisionError::Program {
                program: "postgres --version".into(),
                output: text.to_string(),
            })
    }

    /// Directory of one service.
    /// PostgreSQL's bin dir.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn service_dir(&self, name: &str) -> PathBuf {
        self.services_dir.join(name)
    }

    /// Directory of the Unix socket of the cluster listening on `port`: where the pooler and
    /// pgbay's admin sessions reach it (no plaintext TCP path is needed). Beside `services/`
    /// rather than in the service directory because a socket path is limited to 107 bytes and a
    /// service name alone may take 63; when even this is too long, a directory under the
    /// system's temp dir named after the data dir is used.
    pub fn socket_dir(&self, port: u16) -> PathBuf {
        let base = std::path::absolute(&self.services_dir).unwrap_or(self.services_dir.clone());
        let dir = base.with_file_name("run").join(port.to_string());
        if dir.join(format!(".s.PGSQL.{port}")).as_os_str().len() <= 100 {
            return dir;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        base.hash(&mut h);
        std::env::temp_dir()
            .join(format!("pgbay-{:016x}", h.finish()))
            .join(port.to_string())
    }

    fn pgdata(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("pgdata")
    }

    /// Names of the service directories present on disk.
    pub fn present(&self) -> Vec<String> {
        std::fs::read_dir(&self.services_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The owner of the service directory of `name`: the service's OS user when pgbay is root
    /// (never root itself: a directory root owns is refused rather than run as root).
    pub(crate) fn owner(&self, name: &str) -> Result<Owner, ProvisionError> {
        use std::os::unix::fs::MetadataExt;
        if !self.isolate {
            return Ok(None);
        }
        let dir = self.service_dir(name);
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(io(format!("reading owner of {}", dir.display())))?;
        if meta.uid() == 0 || meta.gid() == 0 || !meta.is_dir() {
            return Err(ProvisionError::Io {
                what: format!("{} is not owned by a service user", dir.display()),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        Ok(Some((meta.uid(), meta.gid())))
    }

    /// A PostgreSQL program (`initdb`, `pg_ctl`, `postgres`, ...) of the machine's binaries, to be
    /// run for service `name`: as its OS user when pgbay is root, in its service directory, with
    /// no stdin and the C locale. Its directory must exist (made by
    /// [`Self::ensure_initialized`]).
    pub fn command(&self, name: &str, program: &str) -> Result<Command, ProvisionError> {
        self.command_at(name, &self.bin_dir.join(program))
    }

    /// Any program (by path, e.g. Patroni or pgBackRest) to be run for service `name`, as
    /// [`Self::command`] runs PostgreSQL's.
    pub fn command_at(&self, name: &str, program: &Path) -> Result<Command, ProvisionError> {
        let owner = self.owner(name)?;
        let mut c = Command::new(program);
        // HOME is the service's directory: libpq and the tools read ~/.postgresql, ~/.pgpass
        // and the like from it, never from pgbay's own home (which the service's user may not
        // read: "could not open certificate file /root/.postgresql/postgresql.crt").
        c.current_dir(self.service_dir(name))
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env("HOME", self.service_dir(name));
        if let Some((uid, gid)) = owner {
            // std drops root's supplementary groups when it changes the uid.
            c.uid(uid).gid(gid);
        }
        Ok(c)
    }

    /// A PostgreSQL program run for pgbay's own scratch work, which holds no tenant's data (the
    /// sizing template, see `sizing`): as `nobody` when pgbay is root (PostgreSQL refuses to run
    /// as root), never as a service's user, in `cwd`, with no stdin and the C locale.
    pub(crate) fn scratch_command(&self, program: &str, cwd: &Path) -> Command {
        let mut c = Command::new(self.bin_dir.join(program));
        c.current_dir(cwd).stdin(Stdio::null()).env("LC_ALL", "C");
        if self.isolate {
            c.uid(SCRATCH_ID).gid(SCRATCH_ID);
        }
        c
    }

    /// Hands `path` to the user [`Self::scratch_command`] runs as.
    pub(crate) fn chown_scratch(&self, path: &Path) -> Result<(), ProvisionError> {
        if self.isolate {
            std::os::unix::fs::chown(path, Some(SCRATCH_ID), Some(SCRATCH_ID))
                .map_err(io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    pub(crate) fn run(&self, mut cmd: Command, program: &str) -> Result<(), ProvisionError> {
        let out = cmd.output().map_err(io(format!("running {program}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(ProvisionError::Program {
            program: program.to_string(),
            output: output.trim().to_string(),
        })
    }

    /// Writes `data` to `path` (mode 0600, atomically), owned by `owner`. The file is handed
    /// over before it is moved into place, and nothing here follows a symbolic link the service's
    /// user could have planted in its directory.
    fn write_owned(&self, path: &Path, data: &[u8], owner: Owner) -> Result<(), ProvisionError> {
        crate::files::write_atomic(path, data, 0o600, owner)
            .map_err(io(format!("writing {}", path.display())))
    }

    /// Makes the service directory of `spec` (mode 0700) and, when pgbay is root, the service's
    /// OS user, and hands the directory to it. A directory owned by someone else — a cluster of
    /// an older pgbay, which ran every cluster as `nobody`, or a user made again with another
    /// uid — is handed over whole (never following symbolic links). The cluster must not run.
    pub(crate) fn ensure_owner(&self, spec: &ClusterSpec<'_>) -> Result<Owner, ProvisionError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = self.service_dir(spec.name);
        std::fs::create_dir_all(&dir).map_err(io("creating service dir"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting service dir"))?;
        if !self.isolate {
            return Ok(None);
        }
        let user = os_users::ensure(spec.os_user, &dir, self.uid_range)?;
        let meta = std::fs::symlink_metadata(&dir).map_err(io("reading service dir"))?;
        if meta.uid() != user.uid || meta.gid() != user.gid {
            if meta.uid() != 0 {
                tracing::info!(service = spec.name, user = %user.name, uid = user.uid,
                    from_uid = meta.uid(), "handing the service directory to the service's OS user");
            }
            chown_tree(&dir, user.uid, user.gid)?;
        }
        Ok(Some((user.uid, user.gid)))
    }

    /// Creates the cluster unless a complete one exists (idempotent: a half-made cluster from an
    /// interrupted attempt is removed and made again).
    pub fn ensure_initialized(&self, spec: &ClusterSpec<'_>) -> Result<(), ProvisionError> {
        let dir = self.service_dir(spec.name);
        let marker = dir.join("initialized");
        if marker.exists() {
            return Ok(());
        }
        let pgdata = self.pgdata(spec.name);
        if pgdata.exists() {
            tracing::warn!(service = spec.name, "removing half-initialized cluster");
            std::fs::remove_dir_all(&pgdata).map_err(io("removing half-initialized cluster"))?;
        }
        let owner = self.ensure_owner(spec)?;
        // initdb sets the superuser's password from this file: it gets the SCRAM verifier, never
        // the password itself (PostgreSQL stores a verifier given as a password as it is).
        let pwfile = dir.join("initdb.pw");
        let verifier = crate::admin::scram_verifier(spec.superuser_password);
        self.write_owned(&pwfile, verifier.as_bytes(), owner)?;
        let mut cmd = self.command(spec.name, "initdb")?;
        // If pgbay dies mid-initdb, initdb must die too: the next pgbay removes the half-made
        // directory and starts over, which an orphaned initdb would still be writing to.
        // SAFETY: prctl is async-signal-safe; the closure runs in the child before exec, after
        // the uid change (which would otherwise clear the setting).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.arg("-D")
            .arg(&pgdata)
            .arg("--auth=scram-sha-256")
            .arg("-U")
            .arg(spec.superuser)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-instructions"]);
        let res = self.run(cmd, "initdb");
        let _ = std::fs::remove_file(&pwfile);
        res?;
        self.ensure_includes(spec.name)?;
        self.write_owned(&marker, b"", owner)?;
        Ok(())
    }

    /// Whether the data directory of `name` holds a cluster. A service that ran and has none
    /// lost it (removed, or its disk lost): it must be rebuilt, never made anew empty.
    pub fn has_data(&self, name: &str) -> bool {
        self.pgdata(name).join("PG_VERSION").exists()
    }

    /// Forgets that the cluster of `name` was made (before rebuilding it).
    pub fn forget_initialized(&self, name: &str) -> Result<(), ProvisionError> {
        let marker = self.service_dir(name).join("initialized");
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("removing the initialized marker")(e))
            }
            _ => Ok(()),
        }
    }

    /// Whether the cluster of `name` was made completely.
    pub fn is_initialized(&self, name: &str) -> bool {
        self.service_dir(name).join("initialized").exists()
    }

    /// Appends pgbay's include lines that postgresql.conf lacks (clusters made by an older pgbay
    /// include only `pgbay.conf`).
    fn ensure_includes(&self, name: &str) -> Result<(), ProvisionError> {
        let conf = self.pgdata(name).join("postgresql.conf");
        let mut text = read_no_follow(&conf)?;
        let missing: Vec<&str> = INCLUDES
            .into_iter()
            .filter(|l| !text.lines().any(|have| have.trim() == *l))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for l in missing {
            text.push('\n');
            text.push_str(l);
            text.push('\n');
        }
        let owner = self.owner(name)?;
        self.write_owned(&conf, text.as_bytes(), owner)
    }

    /// Writes `pgbay-settings.conf`; the running server takes it on reload or restart.
    pub fn write_settings(&self, name: &str, text: &str) -> Result<(), ProvisionError> {
        let path = self.pgdata(name).join("pgbay-settings.conf");
        let owner = self.owner(name)?;
        self.write_owned(&path, text.as_bytes(), owner)
    }

    /// The server log of the cluster (mode 0600, owned by the cluster's user).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("postgresql.log")
    }

    /// Stops the cluster and starts it again with its current configuration.
    pub fn restart(&self, spec: &ClusterSpec<'_>, tls: &TlsMaterial) -> Result<(), ProvisionError> {
        self.stop(spec.name)?;
        self.start(spec, tls)
    }

    /// Writes pg_hba.conf from the service's ip-filter: over TCP only TLS (`hostssl`) with SCRAM,
    /// for the allowed networks and always for loopback; over the Unix socket (the pooler and
    /// pgbay's admin sessions) SCRAM. pgbay's internal superuser logs in over the Unix socket
    /// only (which only pgbay and the service's user can reach); every TCP login as it is
    /// rejected. The running server picks it up on reload (`pg_reload_conf()`).
    pub fn write_hba(&self, name: &str, ip_filter: &[ipnet::IpNet]) -> Result<(), ProvisionError> {
        let mut hba = String::from("# written by pgbay from the service's ip-filter\n");
        for line in hba_lines(ip_filter) {
            hba.push_str(&line);
            hba.push('\n');
        }
        let path = self.pgdata(name).join("pg_hba.conf");
        let owner = self.owner(name)?;
        self.write_owned(&path, hba.as_bytes(), owner)
    }

    /// Prepares member `index` of the HA service of `spec` (one Patroni member, see
    /// [`super::patroni`]): the service's OS user and directory, the member's directory
    /// `members/<index>` (0700) with the server certificate and key, and the Unix-socket
    /// directory of its port. Returns the member's directory, its socket directory and owner.
    pub fn prepare_member(
        &self,
        spec: &ClusterSpec<'_>,
        index: usize,
        pg_port: u16,
        tls: &TlsMaterial,
    ) -> Result<(PathBuf, PathBuf, Owner), ProvisionError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let owner = self.ensure_owner(spec)?;
        let dir = self.member_dir(spec.name, index);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating member dir"))?;
        for d in [dir.parent().expect("members dir"), dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(io("restricting member dir"))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(d, Some(uid), Some(gid))
                    .map_err(io("handing over member dir"))?;
            }
        }
        self.write_owned(
            &dir.join("server.crt"),
            tls.server_cert_pem.as_bytes(),
            owner,
        )?;
        self.write_owned(
            &dir.join("server.key"),
            tls.server_key_pem.as_bytes(),
            owner,
        )?;
        self.write_owned(&dir.join("ca.crt"), tls.ca_pem.as_bytes(), owner)?;
        let socket_dir = self.ensure_socket_dir(pg_port, owner)?;
        Ok((dir, socket_dir, owner))
    }

    /// Hands the (stopped) single cluster of `name` to member 0 of its HA setup (prepared with
    /// [`Self::prepare_member`]): its PGDATA moves into the member's directory, where Patroni
    /// takes it over as the leader, and `pgbay.conf` (port, sockets, certificate, archiving of a
    /// single cluster) is emptied: Patroni's parameters say those now. The plan's settings
    /// (`pgbay-settings.conf`) stay until Patroni's dynamic configuration replaces them.
    pub fn hand_to_member(&self, name: &str) -> Result<(), ProvisionError> {
        if self.running_pid(name).is_some() {
            return Err(ProvisionError::Io {
                what: format!("the cluster of {name} still runs"),
                source: std::io::Error::from(std::io::ErrorKind::ResourceBusy),
            });
        }
        let data = self.member_dir(name, 0).join("data");
        std::fs::rename(self.pgdata(name), &data).map_err(io("moving PGDATA to member 0"))?;
        let owner = self.owner(name)?;
        self.write_owned(
            &data.join("pgbay.conf"),
            b"# the service runs under Patroni: see its postgresql.conf\n",
            owner,
        )
    }

    /// The directory of member `index` of the HA service `name`.
    pub fn member_dir(&self, name: &str, index: usize) -> PathBuf {
        self.service_dir(name)
            .join("members")
            .join(index.to_string())
    }

    /// The Unix-socket directory of a service's server on `port`, as pgbay reaches it.
    pub fn socket_host(&self, port: u16) -> String {
        self.socket_dir(port).display().to_string()
    }

    /// Creates the socket directory of `port`, owned by the cluster's user and closed to others.
    pub(crate) fn ensure_socket_dir(
        &self,
        port: u16,
        owner: Owner,
    ) -> Result<PathBuf, ProvisionError> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::fs::PermissionsExt;
        let dir = self.socket_dir(port);
        // The parent (`<data-dir>/run`, or the temp-dir fallback, which anyone could have made
        // first) must be pgbay's own and writable by nobody else, or another local user could
        // swap the socket for one of theirs and be handed the pooler's logins.
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating socket dir"))?;
            let meta = std::fs::metadata(parent).map_err(io("reading socket dir"))?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(ProvisionError::Io {
                    what: format!(
                        "socket dir {} is not pgbay's own or is writable by others",
                        parent.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
            // Traversable (the clusters run as their services' users), not listable.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .map_err(io("restricting socket dir"))?;
        }
        // A port freed by a deleted service may be reused by another: the directory changes
        // hands, without what the previous server left in it (a lock file of a killed
        // postmaster, owned by the previous service's user, would stop the new one).
        if let (Some((uid, _)), Ok(meta)) = (owner, std::fs::symlink_metadata(&dir)) {
            if meta.uid() != uid {
                std::fs::remove_dir_all(&dir).map_err(io("clearing a reused socket dir"))?;
            }
        }
        std::fs::create_dir_all(&dir).map_err(io("creating socket dir"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
                .map_err(io("handing over socket dir"))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting socket dir"))?;
        Ok(dir)
    }

    /// Writes the settings that can change between starts (port, listen address, certificate).
    fn write_runtime_config(
        &self,
        spec: &ClusterSpec<'_>,
        tls: &TlsMaterial,
    ) -> Result<(), ProvisionError> {
        let pgdata = self.pgdata(spec.name);
        let loopback = loopback_for(&self.public_host);
        let mut listen = vec![loopback.clone()];
        if self.public_host != loopback && self.public_host != "localhost" {
            listen.push(self.public_host.clone());
        }
        let owner = self.owner(spec.name)?;
        let socket_dir = self.ensure_socket_dir(spec.port, owner)?;
        let conf = format!(
            "# written by pgbay at every start\nport = {}\nlisten_addresses = '{}'\n\
             unix_socket_directories = '{}'\nunix_socket_permissions = 0700\n\
             ssl = on\nssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'\n\
             logging_collector = off\nlog_timezone = 'UTC'\n{}",
            spec.port,
            listen.join(","),
            socket_dir.display().to_string().replace('\'', "''"),
            self.archive_settings(spec.name, spec.port, &socket_dir, owner, spec.backup_cipher)?,
        );
        let files: [(&str, &str, bool); 3] = [
            ("pgbay.conf", &conf, false),
            ("server.crt", &tls.server_cert_pem, false),
            ("server.key", &tls.server_key_pem, true),
        ];
        for (file, content, _) in files {
            self.write_owned(&pgdata.join(file), content.as_bytes(), owner)?;
        }
        self.ensure_includes(spec.name)?;
        self.write_settings(spec.name, spec.settings)?;
        self.write_hba(spec.name, spec.ip_filter)
    }

    /// Pid of the cluster's postmaster if it is alive.
    pub fn running_pid(&self, name: &str) -> Option<i32> {
        let pidfile = std::fs::read_to_string(self.pgdata(name).join("postmaster.pid")).ok()?;
        let pid: i32 = pidfile.lines().next()?.trim().parse().ok()?;
        // A stale pid file may name a recycled pid: require that it is a postgres process.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "postgres").then_some(pid)
    }

    /// Starts the cluster unless it is already running (adopting an orphan of a killed pgbay).
    pub fn start(&self, spec: &ClusterSpec<'_>, tls: &TlsMaterial) -> Result<(), ProvisionError> {
        if let Some(pid) = self.running_pid(spec.name) {
            tracing::info!(service = spec.name, pid, "adopting running cluster");
            return Ok(());
        }
        let owner = self.ensure_owner(spec)?;
        self.write_runtime_config(spec, tls)?;
        let dir = self.service_dir(spec.name);
        let mut cmd = self.command(spec.name, "pg_ctl")?;
        cmd.arg("start")
            .arg("-D")
            .arg(self.pgdata(spec.name))
            .arg("-l")
            .arg(dir.join("postgresql.log"))
            .args(["-w", "-t", "120", "-s"]);
        // The server log may quote failed statements: readable by the cluster's owner only.
        let log = dir.join("postgresql.log");
        if std::fs::symlink_metadata(&log).is_err() {
            self.write_owned(&log, b"", owner)?;
        }
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&log)
                .map_err(io("opening log"))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io("restricting log"))?;
        }
        self.run(cmd, "pg_ctl start")
    }

    /// Stops the cluster (fast shutdown) if it runs.
    pub fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        if self.running_pid(name).is_none() {
            return Ok(());
        }
        let mut cmd = self.command(name, "pg_ctl")?;
        cmd.arg("stop")
            .arg("-D")
            .arg(self.pgdata(name))
            .args(["-m", "fast", "-w", "-t", "60", "-s"]);
        self.run(cmd, "pg_ctl stop")
    }

    /// Stops the cluster, removes its directory and then the service's OS user (the owner of
    /// the directory, if it is one pgbay made).
    pub fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        use std::os::unix::fs::MetadataExt;
        self.stop(name)?;
        self.remove_repo(name)?;
        let dir = self.service_dir(name);
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            return Ok(());
        };
        std::fs::remove_dir_all(&dir).map_err(io("removing service dir"))?;
        if self.isolate {
            if let Some(user) = os_users::by_uid(meta.uid())? {
                os_users::remove(&user.name)?;
            }
        }
        Ok(())
    }

    /// Makes every ancestor of `dir` traversable by the services' users when running as root, so
    /// PostgreSQL can reach its data directory. Only the search bit for others is added (no
    /// listing); `dir` itself (the services directory) is made traversable and not listable,
    /// so that no service's user learns the others' names.
    pub fn ensure_traversable(&self, dir: &Path) -> Result<(), ProvisionError> {
        use std::os::unix::fs::PermissionsExt;
        if !self.isolate {
            return Ok(());
        }
        let abs = std::fs::canonicalize(dir).map_err(io("resolving data dir"))?;
        std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o711))
            .map_err(io(format!("chmod 711 {}", abs.display())))?;
        for anc in abs.ancestors() {
            let meta = std::fs::metadata(anc).map_err(io("reading permissions"))?;
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                tracing::info!(path = %anc.display(), "adding o+x so PostgreSQL (as the services' users) can reach its data");
                std::fs::set_permissions(anc, std::fs::Permissions::from_mode(mode | 0o001))
                    .map_err(io(format!("chmod o+x {}", anc.display())))?;
            }
        }
        Ok(())
    }
}

impl Provisioner for LocalProvisioner {
    fn runs_server(&self) -> bool {
        true
    }

    /// The cluster's Unix-socket directory (its TCP port takes TLS only).
    fn backend_host(&self, port: u16) -> String {
        self.socket_dir(port).to_string_lossy().into_owned()
    }

    fn running(&self, name: &str) -> Option<bool> {
        Some(self.running_pid(name).is_some())
    }

    fn log_path(&self, name: &str) -> Option<PathBuf> {
        Some(LocalProvisioner::log_path(self, name))
    }

    fn bring_up(&self, spec: &ClusterSpec<'_>, tls: &TlsMaterial) -> Result<(), ProvisionError> {
        self.ensure_initialized(spec)?;
        self.start(spec, tls)
    }

    fn restart(&self, spec: &ClusterSpec<'_>, tls: &TlsMaterial) -> Result<(), ProvisionError> {
        LocalProvisioner::restart(self, spec, tls)
    }
}

/// Reads a file of a service directory as text, refusing a symbolic link (which the service's
/// user could point at a file only root may read).
/// A service's pg_hba lines: over TCP only TLS (`hostssl`) with SCRAM, for `ip_filter` and
/// always for loopback; over the Unix socket SCRAM; pgbay's internal superuser over the Unix
/// socket only.
/// The loopback address this node's own tools (replication, pg_basebackup) reach its clusters
/// on over TCP: its public host when that is a loopback address itself (several nodes on one
/// machine, each on its own 127.0.0.N, must not bind each other's), else 127.0.0.1.
pub fn loopback_for(public_host: &str) -> String {
    match public_host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => ip.to_string(),
        _ => "127.0.0.1".to_string(),
    }
}

pub fn hba_lines(ip_filter: &[ipnet::IpNet]) -> Vec<String> {
    let internal = crate::admin::INTERNAL_ROLE;
    let mut hba = vec![
        format!("local all {internal} scram-sha-256"),
        format!("host all {internal} 0.0.0.0/0 reject"),
        format!("host all {internal} ::0/0 reject"),
        format!("host replication {internal} 0.0.0.0/0 reject"),
        format!("host replication {internal} ::0/0 reject"),
        // Streaming replication (read replicas, pg_basebackup) over TLS from this machine.
        "hostssl replication all 127.0.0.1/32 scram-sha-256".to_string(),
        "local all all scram-sha-256".to_string(),
        "hostssl all all 127.0.0.1/32 scram-sha-256".to_string(),
        "hostssl all all ::1/128 scram-sha-256".to_string(),
    ];
    for net in ip_filter {
        hba.push(format!("hostssl all all {net} scram-sha-256"));
    }
    hba
}

fn read_no_follow(path: &Path) -> Result<String, ProvisionError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("reading {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(what()))?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io(what()))?;
    Ok(text)
}

/// Hands `path` and everything below it to `uid:gid` without following symbolic links.
pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), ProvisionError> {
    let what = || format!("chown {}", path.display());
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io(what()))?;
    let meta = std::fs::symlink_metadata(path).map_err(io(what()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io(what()))? {
            chown_tree(&entry.map_err(io(what()))?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Finds the PostgreSQL binaries: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn default_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Ok(v) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, bin));
        }
    }
    best.map(|(_, p)| p)
}
