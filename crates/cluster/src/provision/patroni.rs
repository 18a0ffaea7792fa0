//! Patroni members of an HA service (issue 17): the YAML of pgbay's own each member runs with
//! (mode 0600, owned by the service's OS user, the only place besides the encrypted store where
//! the replication and rewind passwords live), the member process pgbay supervises, and the
//! member's REST API (`GET /primary` answers 200 only once a promotion has finished).
//!
//! Timeouts: ttl 10 s, loop_wait 1 s, retry_timeout 4 s (loop_wait + 2 * retry_timeout <= ttl, as
//! Patroni requires) so a lost leader key expires and a standby is promoted well within the
//! issue's 25 s. The control plane (`control::ha`) runs one member per node of a business or
//! premium service and follows the member whose `GET /primary` answers 200.

use std::net::{Ipv4Addr, SocketAddr};

use crate::admin::{REPLICATION_ROLE, REWIND_ROLE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian package that ships the `patroni` program.
pub const PATRONI_PACKAGE: &str = "patroni";

/// Patroni's DCS timing (seconds).
pub const TTL: u32 = 10;
pub const LOOP_WAIT: u32 = 1;
pub const RETRY_TIMEOUT: u32 = 4;

/// One member's configuration.
#[derive(Clone, Default)]
pub struct MemberConfig {
    /// Patroni's scope: the service's name (its etcd keys are `/pgbay/<scope>/`).
    pub scope: String,
    /// The member's name, unique within the scope.
    pub name: String,
    /// etcd client endpoints as `host:port`.
    pub etcd_hosts: Vec<String>,
    /// etcd serves TLS (verified against `ca.crt` of `dir`).
    pub etcd_https: bool,
    pub rest_port: u16,
    pub pg_port: u16,
    /// The member's directory: its YAML, PGDATA (`data`), certificate and pgpass live here.
    pub dir: PathBuf,
    /// PostgreSQL's bin dir.
    pub bin_dir: PathBuf,
    /// The bootstrap superuser (empty: `postgres`); pgbay's services use its internal role.
    pub superuser: String,
    pub superuser_password: String,
    pub replication_password: String,
    pub rewind_password: String,
    /// synchronous-replication `quorum` -> true, `off` -> false.
    pub synchronous_mode: bool,
    /// pglookout's max-failover-replication-time-lag converted to bytes.
    pub maximum_lag_on_failover: u64,
    /// pg_hba lines (besides the replication/rewind lines this module adds for loopback), used
    /// when `hba` is empty.
    pub extra_hba: Vec<String>,
    /// The whole pg_hba (a service's: TLS and SCRAM only); empty: a loopback default.
    pub hba: Vec<String>,
    /// Addresses PostgreSQL listens on besides 127.0.0.1.
    pub listen_hosts: Vec<String>,
    /// The Unix-socket directory (empty: `dir`).
    pub socket_dir: PathBuf,
    /// Serve TLS with `server.crt`/`server.key` of `dir` (PostgreSQL and Patroni's REST API,
    /// whose peers are verified against `ca.crt` of `dir`), and replicate and rewind over TLS.
    pub tls: bool,
    /// PostgreSQL parameters (the plan's and the service's pg-settings), also the cluster-wide
    /// values Patroni keeps in etcd at bootstrap.
    pub parameters: Vec<(String, String)>,
    /// PostgreSQL parameters of this member's own (WAL archiving into the service's pgBackRest
    /// repository).
    pub local_parameters: Vec<(String, String)>,
    /// A command that restores this member's data directory as a standby from the service's
    /// pgBackRest repository: Patroni's first way to make a replica (a new or lost member),
    /// before a base backup from the primary.
    pub replica_from_repository: Option<String>,
    /// A standby's `restore_command` (pgBackRest's `archive-get`): WAL the primary no longer
    /// holds (a member restored from an older backup, or one that fell behind) comes from the
    /// service's archive, then the standby streams.
    pub restore_command: Option<String>,
    /// Where the Patroni process's pid is written (a file of pgbay's own, outside `dir`), so a
    /// restarted pgbay adopts the member instead of starting a second Patroni.
    pub pid_file: Option<PathBuf>,
}

/// The namespace of every pgbay scope in etcd.
pub const NAMESPACE: &str = "/pgbay/";

/// The etcd key prefix of a scope (to remove when the service is deleted).
pub fn etcd_prefix(scope: &str) -> String {
    format!("{NAMESPACE}{scope}/")
}

/// A YAML double-quoted scalar (JSON string escaping is valid YAML).
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl MemberConfig {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn yaml_path(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }
    pub fn rest_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.rest_port))
    }

    /// The Unix-socket directory PostgreSQL and Patroni use.
    pub fn socket_dir(&self) -> PathBuf {
        if self.socket_dir.as_os_str().is_empty() {
            self.dir.clone()
        } else {
            self.socket_dir.clone()
        }
    }

    /// The member's YAML.
    pub fn render(&self) -> String {
        let d = |p: &Path| q(&p.display().to_string());
        let hosts: Vec<String> = self.etcd_hosts.iter().map(|h| q(h)).collect();
        let superuser = if self.superuser.is_empty() {
            "postgres"
        } else {
            &self.superuser
        };
        let hba = if self.hba.is_empty() {
            let mut hba = vec![
                "local all all trust".to_string(),
                format!("host replication {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256"),
                format!("host all {REWIND_ROLE} 127.0.0.1/32 scram-sha-256"),
                "host all postgres 127.0.0.1/32 scram-sha-256".to_string(),
            ];
            hba.extend(self.extra_hba.iter().cloned());
            hba
        } else {
            self.hba.clone()
        };
        let hba: String = hba.iter().map(|l| format!("    - {}\n", q(l))).collect();
        let mut listen = vec!["127.0.0.1".to_string()];
        listen.extend(
            self.listen_hosts
                .iter()
                .filter(|h| h.as_str() != "127.0.0.1")
                .cloned(),
        );
        let sslmode = if self.tls { "require" } else { "prefer" };
        let mut params: Vec<(String, String)> = vec![
            (
                "unix_socket_directories".into(),
                self.socket_dir().display().to_string(),
            ),
            ("unix_socket_permissions".into(), "0700".into()),
            ("password_encryption".into(), "scram-sha-256".into()),
            ("log_timezone".into(), "UTC".into()),
        ];
        if self.tls {
            for (k, f) in [
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
            ] {
                params.push((k.into(), self.dir.join(f).display().to_string()));
            }
            params.push(("ssl".into(), "on".into()));
        }
        params.extend(self.local_parameters.iter().cloned());
        let param_lines = |indent: &str| -> String {
            params
                .iter()
                .map(|(k, v)| format!("{indent}{}: {}\n", q(k), q(v)))
                .collect()
        };
        // The cluster-wide values (max_connections and the like) are Patroni's from etcd: seed
        // them with the plan's at bootstrap.
        let global: String = self
            .parameters
            .iter()
            .map(|(k, v)| format!("        {}: {}\n", q(k), q(v)))
            .collect();
        let ca = d(&self.dir.join("ca.crt"));
        let rest_tls = if self.tls {
            format!(
                "  certfile: {}\n  keyfile: {}\nctl:\n  insecure: false\n  cacert: {ca}",
                d(&self.dir.join("server.crt")),
                d(&self.dir.join("server.key")),
            )
        } else {
            String::new()
        };
        let etcd_tls = if self.etcd_https {
            format!("  protocol: https\n  cacert: {ca}")
        } else {
            String::new()
        };
        let lines: Vec<String> = vec![
            format!("scope: {}", q(&self.scope)),
            format!("namespace: {}", q(NAMESPACE)),
            format!("name: {}", q(&self.name)),
            "log:".into(),
            "  level: INFO".into(),
            "restapi:".into(),
            format!("  listen: {}", q(&format!("127.0.0.1:{}", self.rest_port))),
            format!(
                "  connect_address: {}",
                q(&format!("127.0.0.1:{}", self.rest_port))
            ),
            rest_tls,
            "etcd3:".into(),
            format!("  hosts: [{}]", hosts.join(", ")),
            etcd_tls,
            "bootstrap:".into(),
            "  dcs:".into(),
            format!("    ttl: {TTL}"),
            format!("    loop_wait: {LOOP_WAIT}"),
            format!("    retry_timeout: {RETRY_TIMEOUT}"),
            format!(
                "    maximum_lag_on_failover: {}",
                self.maximum_lag_on_failover
            ),
            format!("    synchronous_mode: {}", self.synchronous_mode),
            "    postgresql:".into(),
            "      use_pg_rewind: true".into(),
            "      use_slots: true".into(),
            "      parameters:".into(),
            "        wal_level: replica".into(),
            "        hot_standby: \"on\"".into(),
            "        wal_log_hints: \"on\"".into(),
            "        max_wal_senders: 10".into(),
            "        max_replication_slots: 10".into(),
            "        wal_keep_size: 128MB".into(),
            global.trim_end_matches('\n').to_string(),
            "  initdb:".into(),
            "    - encoding: UTF8".into(),
            "    - locale: C".into(),
            "    - data-checksums".into(),
            "postgresql:".into(),
            format!(
                "  listen: {}",
                q(&format!("{}:{}", listen.join(","), self.pg_port))
            ),
            format!(
                "  connect_address: {}",
                q(&format!("127.0.0.1:{}", self.pg_port))
            ),
            "  use_unix_socket: true".into(),
            format!("  data_dir: {}", d(&self.data_dir())),
            format!("  bin_dir: {}", d(&self.bin_dir)),
            format!("  pgpass: {}", d(&self.dir.join("pgpass"))),
            "  authentication:".into(),
            "    superuser:".into(),
            format!("      username: {}", q(superuser)),
            format!("      password: {}", q(&self.superuser_password)),
            "    replication:".into(),
            format!("      username: {REPLICATION_ROLE}"),
            format!("      password: {}", q(&self.replication_password)),
            format!("      sslmode: {sslmode}"),
            "    rewind:".into(),
            format!("      username: {REWIND_ROLE}"),
            format!("      password: {}", q(&self.rewind_password)),
            format!("      sslmode: {sslmode}"),
            replica_methods(self.replica_from_repository.as_deref()),
            self.restore_command
                .as_deref()
                .map(|c| format!("  recovery_conf:\n    restore_command: {}", q(c)))
                .unwrap_or_default(),
            "  parameters:".into(),
            param_lines("    ").trim_end_matches('\n').to_string(),
            "  pg_hba:".into(),
        ];
        let mut out: String = lines
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
        out.push_str(&hba);
        out
    }
}

/// `create_replica_methods`: the repository first (Patroni runs the command as it is, keeping
/// what is in the data directory for pgBackRest's delta restore), a base backup from the
/// primary when it fails (no backup yet).
fn replica_methods(command: Option<&str>) -> String {
    match command {
        Some(cmd) => format!(
            "  create_replica_methods:\n    - pgbackrest\n    - basebackup\n  pgbackrest:\n    \
             command: {}\n    keep_data: true\n    no_params: true",
            q(cmd)
        ),
        None => String::new(),
    }
}

impl std::fmt::Debug for MemberConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberConfig")
            .field("scope", &self.scope)
            .field("name", &self.name)
            .field("pg_port", &self.pg_port)
            .field("rest_port", &self.rest_port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// pglookout's `max-failover-replication-time-lag` (seconds) as Patroni's
/// `maximum_lag_on_failover` (bytes of WAL): seconds x 16 MiB (one default WAL segment per
/// second of lag, a conservative write rate for the plans pgbay serves). Refuses negative or
/// absurd values (more than a day).
pub fn lag_seconds_to_bytes(seconds: i64) -> Option<u64> {
    (0..=86_400)
        .contains(&seconds)
        .then(|| seconds as u64 * 16 * 1024 * 1024)
}

/// One running Patroni member, supervised by [`Member::ensure_running`].
pub struct Member {
    pub config: MemberConfig,
    program: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    restarts: u32,
    /// When supervision first saw this member's Patroni dead.
    died_at: Option<Instant>,
}

/// How long a dead Patroni stays dead before supervision restarts it: past its leader key's ttl,
/// so that a lost primary is failed over as a lost node would be (its standby promoted) instead
/// of coming back as the primary, and rejoins as a standby.
pub const RESTART_AFTER: Duration = Duration::from_secs(TTL as u64 + 2);

/// How long a dead primary's Patroni stays dead while no other member has become the primary:
/// a standby slow to take the expired leader key (a busy machine) must not find the old primary
/// back, started again read-only from its crashed data, and stream from it or lose the race for
/// the key to it. Past this, the old primary comes back all the same (no standby could take
/// over: stopped too, or too far behind for `maximum_lag_on_failover`).
pub const LOST_PRIMARY_RESTART_AFTER: Duration = Duration::from_secs(3 * TTL as u64);

impl Member {
    /// Writes the member's YAML (0600, owned by `owner`) and starts Patroni as `owner`.
    pub fn start(config: MemberConfig, owner: Option<(u32, u32)>) -> Result<Self, std::io::Error> {
        let mut m = Self::prepare(config, owner)?;
        m.spawn()?;
        Ok(m)
    }

    /// Like [`start`](Self::start), but a Patroni of this member that is still running (pgbay
    /// restarted and it survived, found by its pid file and its REST API) is adopted instead.
    pub fn start_or_adopt(
        config: MemberConfig,
        owner: Option<(u32, u32)>,
    ) -> Result<Self, std::io::Error> {
        let mut m = Self::prepare(config, owner)?;
        if m.adopted_pid().is_none() {
            m.spawn()?;
        }
        Ok(m)
    }

    fn prepare(config: MemberConfig, owner: Option<(u32, u32)>) -> Result<Self, std::io::Error> {
        let program = crate::etcd::find_program("patroni", PATRONI_PACKAGE)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))?;
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&config.dir)?;
            std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&config.dir, Some(uid), Some(gid))?;
            }
        }
        crate::files::write_atomic(
            &config.yaml_path(),
            config.render().as_bytes(),
            0o600,
            owner,
        )?;
        Ok(Member {
            config,
            program,
            owner,
            child: None,
            restarts: 0,
            died_at: None,
        })
    }

    /// The pid of a Patroni of this member that pgbay did not start in this process: the pid
    /// file names a live process running this member's YAML.
    fn adopted_pid(&self) -> Option<i32> {
        let file = self.config.pid_file.as_ref()?;
        let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        let yaml = self.config.yaml_path().display().to_string();
        crate::files::cmdline_has(pid, &yaml).then_some(pid)
    }

    fn spawn(&mut self) -> Result<(), std::io::Error> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.config.log_path())?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.config.log_path(), Some(uid), Some(gid))?;
        }
        let mut c = Command::new(&self.program);
        c.arg(self.config.yaml_path())
            .current_dir(&self.config.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("LC_ALL", "C")
            .env("HOME", &self.config.dir)
            .env_remove("PGPASSWORD")
            // Its own process group: a signal to pgbay's group (a terminal's ^C) is not its.
            .process_group(0);
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let child = c.spawn()?;
        if let Some(file) = &self.config.pid_file {
            crate::files::write_private(file, format!("{}\n", child.id()).as_bytes())?;
        }
        self.child = Some(child);
        Ok(())
    }

    /// The pid of this member's Patroni (started or adopted), if it runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.child {
            Some(c) => Some(c.id()),
            None => self.adopted_pid().map(|p| p as u32),
        }
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Supervision step: restarts Patroni once it has been dead for [`RESTART_AFTER`] (a
    /// member that lost its leadership comes back as a standby, rewound by Patroni), or, while
    /// `awaiting_failover` (it was the primary and no other member has become it since), for
    /// [`LOST_PRIMARY_RESTART_AFTER`]. Returns whether it did.
    pub fn ensure_running(&mut self, awaiting_failover: bool) -> Result<bool, std::io::Error> {
        match self.child.as_mut() {
            Some(child) => {
                if child.try_wait()?.is_none() {
                    return Ok(false);
                }
            }
            None => {
                if self.adopted_pid().is_some() {
                    return Ok(false);
                }
            }
        }
        self.child = None;
        let died_at = *self.died_at.get_or_insert_with(Instant::now);
        let wait = if awaiting_failover {
            LOST_PRIMARY_RESTART_AFTER
        } else {
            RESTART_AFTER
        };
        if died_at.elapsed() < wait {
            return Ok(false);
        }
        self.died_at = None;
        // A postmaster orphaned by a killed Patroni is adopted by the new Patroni through
        // postmaster.pid; a stale pid file of a dead one is handled by Patroni too.
        self.spawn()?;
        self.restarts += 1;
        Ok(true)
    }

    /// Stops Patroni (SIGTERM: it stops its PostgreSQL first; SIGKILL after 60 s).
    pub fn stop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let Some(pid) = self.adopted_pid() else {
            return;
        };
        // SAFETY: kill(2); the pid was just checked to be this member's Patroni.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while Instant::now() < deadline && self.adopted_pid().is_some() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(pid) = self.adopted_pid() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Leaves a running Patroni running (pgbay hands over to a successor that adopts it).
    pub fn detach(mut self) {
        self.child = None;
    }

    /// The PID of this member's postmaster, from its PGDATA.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.config.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The HTTP status of `GET path` on the member's REST API (`/primary`, `/replica`,
    /// `/health`), `None` when it does not answer.
    pub fn rest_status(&self, path: &str) -> Option<u16> {
        rest_get(self.config.rest_addr(), path).map(|(s, _)| s)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `PATCH path` with a JSON `body` on a Patroni REST API: the HTTP status.
pub fn rest_patch(addr: SocketAddr, path: &str, body: &str) -> Result<u16, String> {
    crate::etcd::http(addr, "PATCH", path, Some(body))
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

/// `POST path` with a JSON `body` on a Patroni REST API (`/restart`, `/switchover`): the HTTP
/// status.
pub fn rest_post(addr: SocketAddr, path: &str, body: &str) -> Result<u16, String> {
    crate::etcd::http_with_timeout(addr, "POST", path, Some(body), Duration::from_secs(90))
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

/// One member as Patroni's `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    /// `leader`, `replica`, `sync_standby`, ...
    pub role: String,
    /// `running`, `streaming`, `starting`, `creating replica`, ...
    pub state: String,
    /// A replica's replication lag in bytes, when Patroni knows it.
    pub lag: Option<u64>,
}

/// The members Patroni's `GET /cluster` at `addr` lists.
pub fn cluster_status(addr: SocketAddr) -> Option<Vec<MemberStatus>> {
    let (status, body) = rest_get(addr, "/cluster")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let members = v.get("members")?.as_array()?;
    Some(
        members
            .iter()
            .map(|m| {
                let s = |k: &str| m.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                MemberStatus {
                    name: s("name"),
                    role: s("role"),
                    state: s("state"),
                    lag: m.get("lag").and_then(|l| l.as_u64()),
                }
            })
            .collect(),
    )
}

/// `GET path` on a Patroni REST API: status and body.
pub fn rest_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    crate::etcd::http(addr, "GET", path, None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_quotes_secrets_and_sets_timing() {
        let c = MemberConfig {
            scope: "svc".into(),
            name: "svc-0".into(),
            etcd_hosts: vec!["127.0.0.1:2379".into()],
            rest_port: 8008,
            pg_port: 5432,
            dir: "/tmp/x".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            superuser_password: "a\"b\\c\nd".into(),
            replication_password: "r".into(),
            rewind_password: "w".into(),
            synchronous_mode: true,
            maximum_lag_on_failover: 1024,
            extra_hba: vec![],
            ..Default::default()
        };
        let y = c.render();
        assert!(y.contains("password: \"a\\\"b\\\\c\\nd\""), "{y}");
        assert!(!y.contains("create_replica_methods"));
        let with_repo = MemberConfig {
            replica_from_repository: Some("/usr/bin/pgbackrest --stanza=pgbay restore".into()),
            ..c.clone()
        }
        .render();
        assert!(
            with_repo.contains(
                "  create_replica_methods:\n    - pgbackrest\n    - basebackup\n  pgbackrest:\n    \
                 command: \"/usr/bin/pgbackrest --stanza=pgbay restore\"\n    keep_data: true\n    \
                 no_params: true\n"
            ),
            "{with_repo}"
        );
        assert!(!y.contains("recovery_conf"));
        let with_archive = MemberConfig {
            restore_command: Some(
                "/usr/bin/pgbackrest --stanza=pgbay archive-get %f \"%p\"".into(),
            ),
            ..c.clone()
        }
        .render();
        assert!(
            with_archive.contains(
                "  recovery_conf:\n    restore_command: \"/usr/bin/pgbackrest --stanza=pgbay \
                 archive-get %f \\\"%p\\\"\"\n"
            ),
            "{with_archive}"
        );
        assert!(y.contains("ttl: 10\n") && y.contains("loop_wait: 1\n"));
        assert!(y.contains("synchronous_mode: true\n"));
        assert!(y.contains("use_pg_rewind: true"));
        const { assert!(LOOP_WAIT + 2 * RETRY_TIMEOUT <= TTL) };
        assert_eq!(lag_seconds_to_bytes(2), Some(32 * 1024 * 1024));
        assert_eq!(lag_seconds_to_bytes(-1), None);
    }
}
