//! Patroni members of an HA service (issue 17): the YAML of pgbay's own each member runs with
//! (mode 0600, owned by the service's OS user, the only place besides the encrypted store where
//! the replication and rewind passwords live), the member process pgbay supervises, and the
//! member's REST API (`GET /primary` answers 200 only once a promotion has finished).
//!
//! Timeouts: ttl 10 s, loop_wait 1 s, retry_timeout 4 s (loop_wait + 2 * retry_timeout <= ttl, as
//! Patroni requires) so a lost leader key expires and a standby is promoted well within the
//! issue's 25 s. Not yet a [`super::Provisioner`]: the control plane does not create HA services
//! with it yet.

use std::net::{Ipv4Addr, SocketAddr};
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
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Patroni's scope: the service's name (its etcd keys are `/pgbay/<scope>/`).
    pub scope: String,
    /// The member's name, unique within the scope.
    pub name: String,
    /// etcd client endpoints as `host:port`.
    pub etcd_hosts: Vec<String>,
    pub rest_port: u16,
    pub pg_port: u16,
    /// The member's directory: its YAML, PGDATA (`data`), socket and pgpass live here.
    pub dir: PathBuf,
    /// PostgreSQL's bin dir.
    pub bin_dir: PathBuf,
    pub superuser_password: String,
    pub replication_password: String,
    pub rewind_password: String,
    /// synchronous-replication `quorum` -> true, `off` -> false.
    pub synchronous_mode: bool,
    /// pglookout's max-failover-replication-time-lag converted to bytes.
    pub maximum_lag_on_failover: u64,
    /// pg_hba lines (besides the replication/rewind lines this module adds for loopback).
    pub extra_hba: Vec<String>,
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

    /// The member's YAML.
    pub fn render(&self) -> String {
        let d = |p: &Path| q(&p.display().to_string());
        let hosts: Vec<String> = self.etcd_hosts.iter().map(|h| q(h)).collect();
        let mut hba = vec![
            "local all all trust".to_string(),
            "host replication replicator 127.0.0.1/32 scram-sha-256".to_string(),
            "host all rewind_user 127.0.0.1/32 scram-sha-256".to_string(),
            "host all postgres 127.0.0.1/32 scram-sha-256".to_string(),
        ];
        hba.extend(self.extra_hba.iter().cloned());
        let hba: String = hba.iter().map(|l| format!("    - {}\n", q(l))).collect();
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
            "etcd3:".into(),
            format!("  hosts: [{}]", hosts.join(", ")),
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
            "  initdb:".into(),
            "    - encoding: UTF8".into(),
            "    - locale: C".into(),
            "    - data-checksums".into(),
            "postgresql:".into(),
            format!("  listen: {}", q(&format!("127.0.0.1:{}", self.pg_port))),
            format!(
                "  connect_address: {}",
                q(&format!("127.0.0.1:{}", self.pg_port))
            ),
            format!("  data_dir: {}", d(&self.data_dir())),
            format!("  bin_dir: {}", d(&self.bin_dir)),
            format!("  pgpass: {}", d(&self.dir.join("pgpass"))),
            "  authentication:".into(),
            "    superuser:".into(),
            "      username: postgres".into(),
            format!("      password: {}", q(&self.superuser_password)),
            "    replication:".into(),
            "      username: replicator".into(),
            format!("      password: {}", q(&self.replication_password)),
            "    rewind:".into(),
            "      username: rewind_user".into(),
            format!("      password: {}", q(&self.rewind_password)),
            "  parameters:".into(),
            format!("    unix_socket_directories: {}", d(&self.dir)),
            "    password_encryption: scram-sha-256".into(),
            "  pg_hba:".into(),
        ];
        let mut out = lines.join("\n");
        out.push('\n');
        out.push_str(&hba);
        out
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
}

impl Member {
    /// Writes the member's YAML (0600, owned by `owner`) and starts Patroni as `owner`.
    pub fn start(config: MemberConfig, owner: Option<(u32, u32)>) -> Result<Self, std::io::Error> {
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
        let mut m = Member {
            config,
            program,
            owner,
            child: None,
            restarts: 0,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> Result<(), std::io::Error> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.config.log_path())?;
        let mut c = Command::new(&self.program);
        c.arg(self.config.yaml_path())
            .current_dir(&self.config.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("LC_ALL", "C")
            .env_remove("PGPASSWORD");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        self.child = Some(c.spawn()?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Supervision step: restarts Patroni if it exited (a member that lost its leadership comes
    /// back as a standby, rewound by Patroni). Returns whether it had to.
    pub fn ensure_running(&mut self) -> Result<bool, std::io::Error> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_none() {
                return Ok(false);
            }
        }
        self.child = None;
        // A postmaster orphaned by a killed Patroni is adopted by the new Patroni through
        // postmaster.pid; a stale pid file of a dead one is handled by Patroni too.
        self.spawn()?;
        self.restarts += 1;
        Ok(true)
    }

    /// Stops Patroni (SIGTERM: it stops its PostgreSQL first; SIGKILL after 60 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
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
        };
        let y = c.render();
        assert!(y.contains("password: \"a\\\"b\\\\c\\nd\""), "{y}");
        assert!(y.contains("ttl: 10\n") && y.contains("loop_wait: 1\n"));
        assert!(y.contains("synchronous_mode: true\n"));
        assert!(y.contains("use_pg_rewind: true"));
        const { assert!(LOOP_WAIT + 2 * RETRY_TIMEOUT <= TTL) };
        assert_eq!(lag_seconds_to_bytes(2), Some(32 * 1024 * 1024));
        assert_eq!(lag_seconds_to_bytes(-1), None);
    }
}
