//! High availability (issue 17): a business (2 nodes) or premium (3 nodes) service runs one
//! PostgreSQL member per node under Patroni, with etcd as Patroni's store, instead of one cluster.
//!
//! Control decides; the `cluster` crate runs the programs. Here:
//! - the etcd Patroni uses: `--etcd URL,..` (an existing cluster), else one etcd member pgbay
//!   starts in `<data-dir>/etcd` when the first HA service needs it, supervised like a cluster;
//! - the members: their directories, YAML (0600, the service's OS user) and Patroni processes,
//!   started, adopted after a restart of pgbay, restarted when they die, stopped and removed with
//!   the service (and its keys in etcd);
//! - the primary: pgbay follows the member whose Patroni answers `GET /primary` with 200 (that is,
//!   once a promotion has finished, never on the leader key alone), and publishes it: the pooler's
//!   backend and the forwarder of the service's own port then point at it;
//! - the document's `node-states`, from Patroni's `GET /cluster`.
//!
//! On one node every member runs on this node (issue 16's nodes are not built yet).

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use pgbay_cluster::admin;
use pgbay_cluster::etcd::{self, EmbeddedEtcd};
use pgbay_cluster::provision::patroni::{self, Member, MemberConfig, MemberStatus};
use pgbay_cluster::provision::ClusterSpec;

use crate::control::Control;
use crate::error::ControlError;
use crate::input::{InputError, Subject};
use crate::model::ServiceRecord;
use crate::store::HaRecord;

/// How long at most the pooler holds the clients of an HA service while its primary is
/// unreachable (and never longer than the service's `query_wait_timeout`): past Patroni's ttl
/// (10 s) and the promotion.
pub const FAILOVER_HOLD: Duration = Duration::from_secs(60);

/// A standby whose replication lag is below this (one WAL segment) shows `running`; above, or
/// unknown, `syncing_data`.
const SYNCED_LAG_BYTES: u64 = 16 * 1024 * 1024;

/// How often pgbay asks each member's Patroni whether it is the primary.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How long a new HA service may take to elect its first primary.
const FIRST_PRIMARY_WITHIN: Duration = Duration::from_secs(240);

/// What the control plane holds of its HA services at run time.
#[derive(Default)]
pub(crate) struct HaState {
    /// The etcd pgbay runs itself (when no `--etcd` is given), once an HA service needs it.
    etcd: StdMutex<Option<EmbeddedEtcd>>,
    /// The HA services' records (members' ports, sealed passwords), by service name.
    records: StdMutex<HashMap<String, HaRecord>>,
    /// The running members of each HA service.
    members: StdMutex<HashMap<String, Vec<Member>>>,
    /// The member each HA service's clients are sent to: the last one whose Patroni answered
    /// `GET /primary` as the primary (200, role primary; see `primary_answer`).
    primaries: StdMutex<HashMap<String, usize>>,
    /// HA services whose followed member says it is not the primary (`GET /primary` answered,
    /// not 200) while no member says it is: a member in recovery (Patroni starting a crashed
    /// primary again read-only, or as a standby) would serve read-only, so the service's port
    /// forwards nothing until a primary answers, as a load balancer checking `/primary` would.
    not_primary: StdMutex<std::collections::HashSet<String>>,
    /// The last `GET /cluster` of each HA service.
    status: StdMutex<HashMap<String, Vec<MemberStatus>>>,
}

/// What the members' answers to Patroni's `GET /primary` (status codes; none when a member did
/// not answer) say, given the member followed so far (the first one before any answered).
#[derive(Debug, PartialEq, Eq)]
enum Followed {
    /// Exactly this member answers 200.
    Primary(usize),
    /// No member answers 200 and the followed one answers something else: it is in recovery.
    NotPrimary(usize),
    /// Nothing to act on: the followed member did not answer (its Patroni may be down while its
    /// PostgreSQL still serves), or more than one claims to be the primary.
    Unknown,
}

/// A member's answer to `GET /primary` as a status code. Patroni answers 200 to the holder of
/// the leader key even while its PostgreSQL is still in recovery (a crashed primary that it
/// starts again read-only before promoting it), with `"role": "replica"` in the body: that
/// counts as 503. A body that does not parse leaves the code as it is.
fn primary_answer(r: Option<(u16, String)>) -> Option<u16> {
    let (code, body) = r?;
    let role = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("role")?.as_str().map(str::to_string));
    match role.as_deref() {
        Some("master" | "primary") | None => Some(code),
        Some(_) if code == 200 => Some(503),
        Some(_) => Some(code),
    }
}

fn judge_primary(answers: &[Option<u16>], followed: Option<usize>) -> Followed {
    let mut primaries = answers
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == Some(200))
        .map(|(i, _)| i);
    match (primaries.next(), primaries.next()) {
        (Some(p), None) => Followed::Primary(p),
        (Some(_), Some(_)) => Followed::Unknown,
        (None, _) => {
            let f = followed.unwrap_or(0);
            match answers.get(f) {
                Some(Some(_)) => Followed::NotPrimary(f),
                _ => Followed::Unknown,
            }
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One member as the document's `node-states` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// `<service>-<n>` (n from 1).
    pub name: String,
    /// `running`, `syncing_data` (a standby being built or catching up), `setting_up_vm`
    /// (not reported by Patroni yet).
    pub state: &'static str,
    /// `master` or `standby`.
    pub role: &'static str,
    /// The member's PostgreSQL port (standbys serve read-only connections on it).
    pub port: u16,
}

/// What the document shows of an HA service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaView {
    pub nodes: Vec<NodeState>,
    /// synchronous-replication `quorum` (else `off`).
    pub synchronous: bool,
    /// pglookout-settings' max-failover-replication-time-lag, seconds.
    pub max_lag_seconds: Option<i64>,
}

/// The Patroni member name of member `index` of `service`.
fn member_name(service: &str, index: usize) -> String {
    format!("{service}-{}", index + 1)
}

impl Control {
    /// Whether `name` is an HA service (members run by Patroni). Cheap.
    pub fn is_ha(&self, name: &str) -> bool {
        lock(&self.inner.ha.records).contains_key(name)
    }

    /// Loads the HA records of the stored services (at start).
    pub(crate) async fn load_ha(&self, services: &[ServiceRecord]) -> Result<(), ControlError> {
        for s in services {
            if let Some(h) = self.inner.store.ha(&s.name).await? {
                lock(&self.inner.ha.records).insert(s.name.clone(), h);
            }
        }
        Ok(())
    }

    /// Remembers the HA record of a service just created.
    pub(crate) fn remember_ha(&self, h: HaRecord) {
        lock(&self.inner.ha.records).insert(h.service.clone(), h);
    }

    /// Where pgbay reaches the server of HA service `s` now: the Unix-socket directory and port
    /// of its current primary (the first member until one has answered).
    pub(crate) fn ha_backend(&self, s: &ServiceRecord) -> Option<(String, u16)> {
        let records = lock(&self.inner.ha.records);
        let h = records.get(&s.name)?;
        let i = lock(&self.inner.ha.primaries)
            .get(&s.name)
            .copied()
            .unwrap_or(0);
        let (pg_port, _) = *h.members.get(i).or(h.members.first())?;
        Some((self.inner.prov.socket_host(pg_port), pg_port))
    }

    /// The forwarder's target for HA service `name`: its primary's TCP port, none while the
    /// member followed says it is not the primary (see `HaState::not_primary`).
    pub(crate) fn ha_forward_port(&self, name: &str) -> Option<u16> {
        if lock(&self.inner.ha.not_primary).contains(name) {
            return None;
        }
        self.ha_primary_port(name)
    }

    /// The TCP port of the current primary of HA service `name` (whether or not it answers as one).
    pub(crate) fn ha_primary_port(&self, name: &str) -> Option<u16> {
        let records = lock(&self.inner.ha.records);
        let h = records.get(name)?;
        let i = lock(&self.inner.ha.primaries)
            .get(name)
            .copied()
            .unwrap_or(0);
        h.members.get(i).map(|m| m.0)
    }

    /// The document's view of HA service `name`.
    pub fn ha_view(&self, name: &str) -> Option<HaView> {
        let h = lock(&self.inner.ha.records).get(name)?.clone();
        let status = lock(&self.inner.ha.status)
            .get(name)
            .cloned()
            .unwrap_or_default();
        let primary = lock(&self.inner.ha.primaries).get(name).copied();
        let nodes = h
            .members
            .iter()
            .enumerate()
            .map(|(i, (pg_port, _))| {
                let mname = member_name(name, i);
                let st = status.iter().find(|m| m.name == mname);
                let leader = match st {
                    Some(m) => m.role == "leader" || m.role == "master",
                    None => primary == Some(i),
                };
                // A standby runs once it replicates with a known, small lag.
                let state = match st {
                    Some(m) if m.state == "running" || m.state == "streaming" => {
                        if leader || m.lag.is_some_and(|l| l < SYNCED_LAG_BYTES) {
                            "running"
                        } else {
                            "syncing_data"
                        }
                    }
                    Some(_) => "syncing_data",
                    None => "setting_up_vm",
                };
                NodeState {
                    name: mname,
                    state,
                    role: if leader { "master" } else { "standby" },
                    port: *pg_port,
                }
            })
            .collect();
        Some(HaView {
            nodes,
            synchronous: h.synchronous,
            max_lag_seconds: h.max_lag_seconds,
        })
    }

    /// The etcd client endpoints (`host:port`) Patroni members use, and whether they serve TLS:
    /// `--etcd`'s, else pgbay's own etcd (TLS with pgbay's certificate), started (or restarted)
    /// now if needed.
    async fn etcd_hosts(&self) -> Result<(Vec<String>, bool), ControlError> {
        if let Some(urls) = &self.inner.cfg.etcd {
            let https = urls.iter().all(|u| u.starts_with("https://"));
            return Ok((
                urls.iter()
                    .map(|u| {
                        u.trim_start_matches("http://")
                            .trim_start_matches("https://")
                            .to_string()
                    })
                    .collect(),
                https,
            ));
        }
        let c = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut etcd = lock(&c.inner.ha.etcd);
            if let Some(e) = etcd.as_mut() {
                e.ensure_running()?;
                return Ok(vec![e.client_addr().to_string()]);
            }
            let e = EmbeddedEtcd::start(&c.inner.cfg.data_dir.join("etcd"))?;
            let host = e.client_addr().to_string();
            *etcd = Some(e);
            Ok::<_, etcd::EtcdError>(vec![host])
        })
        .await?
        .map(|hosts| (hosts, etcd::loopback_tls().is_some()))
        .map_err(|e| ControlError::internal(format!("etcd: {e}")))
    }

    /// Checks that the programs an HA service needs are installed, naming the Debian package
    /// of the one that is not.
    pub(crate) fn ha_programs() -> Result<(), String> {
        etcd::find_program("patroni", patroni::PATRONI_PACKAGE).map_err(|e| e.to_string())?;
        etcd::find_program("etcd", etcd::ETCD_PACKAGE).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Starts (or adopts) every member of HA service `s` and waits until one of them is the
    /// primary. `t` is pgbay's internal superuser (the members' bootstrap superuser).
    pub(crate) async fn start_ha(
        &self,
        s: &ServiceRecord,
        superuser: &str,
        superuser_password: &str,
    ) -> Result<(), ControlError> {
        Self::ha_programs().map_err(ControlError::internal)?;
        if lock(&self.inner.ha.members).contains_key(&s.name) {
            return self.wait_for_primary(&s.name).await;
        }
        let n = lock(&self.inner.ha.records)
            .get(&s.name)
            .map(|h| h.members.len())
            .unwrap_or(0);
        let members = self
            .start_members(s, 0..n, superuser, superuser_password)
            .await?;
        lock(&self.inner.ha.members).insert(s.name.clone(), members);
        self.wait_for_primary(&s.name).await
    }

    /// Prepares and starts (or adopts) members `range` of HA service `s`.
    async fn start_members(
        &self,
        s: &ServiceRecord,
        range: std::ops::Range<usize>,
        superuser: &str,
        superuser_password: &str,
    ) -> Result<Vec<Member>, ControlError> {
        let h = lock(&self.inner.ha.records)
            .get(&s.name)
            .cloned()
            .ok_or_else(|| ControlError::internal(format!("{} is not an HA service", s.name)))?;
        let (etcd_hosts, etcd_https) = self.etcd_hosts().await?;
        let replication = self.inner.secrets.open(&h.replication_password_enc)?;
        let rewind = self.inner.secrets.open(&h.rewind_password_enc)?;
        let parameters: Vec<(String, String)> = crate::cluster_config::ClusterConfig::of(s)
            .entries()
            .map(|(k, v)| (k.to_string(), unquote(v)))
            .collect();
        let max_lag = h
            .max_lag_seconds
            .and_then(patroni::lag_seconds_to_bytes)
            .unwrap_or(DEFAULT_MAX_LAG_BYTES);
        let pid_dir = self.inner.cfg.data_dir.join("run").join("patroni");
        let prov = self.inner.prov.clone();
        let tls = self.inner.tls.clone();
        let public_host = self.inner.cfg.public_host.clone();
        let (name, ip_filter) = (s.name.clone(), s.ip_filter.0.clone());
        let os_user = pgbay_cluster::os_users::name_for(&s.id);
        let (su, su_pw) = (superuser.to_string(), superuser_password.to_string());
        let settings = crate::cluster_config::ClusterConfig::of(s).text();
        let cipher = self.backup_cipher(&s.name).await?;
        let synchronous = h.synchronous;
        let members = tokio::task::spawn_blocking(move || {
            let spec = ClusterSpec {
                name: &name,
                port: s_port(&h),
                superuser: &su,
                superuser_password: &su_pw,
                os_user: &os_user,
                ip_filter: &ip_filter,
                settings: &settings,
                backup_cipher: None,
            };
            std::fs::create_dir_all(&pid_dir).map_err(|e| {
                ControlError::internal(format!("creating {}: {e}", pid_dir.display()))
            })?;
            let mut hba = pgbay_cluster::provision::local::hba_lines(&ip_filter);
            // Patroni's roles: replication over TLS from loopback; neither logs in elsewhere.
            let (repl, rw) = (admin::REPLICATION_ROLE, admin::REWIND_ROLE);
            hba.insert(
                0,
                format!("hostssl replication {repl} 127.0.0.1/32 scram-sha-256"),
            );
            hba.insert(1, format!("host all {repl} 0.0.0.0/0 reject"));
            hba.insert(2, format!("hostssl all {rw} 127.0.0.1/32 scram-sha-256"));
            hba.insert(3, format!("host all {rw} 0.0.0.0/0 reject"));
            hba.insert(4, format!("host all {rw} ::0/0 reject"));
            hba.insert(5, format!("host all {repl} ::0/0 reject"));
            let mut out = Vec::new();
            // Every member archives into the service's repository (pgBackRest's stanza names
            // them all: a backup finds the primary and copies from a standby).
            let pgs: Vec<_> = h
                .members
                .iter()
                .enumerate()
                .map(|(i, (pg_port, _))| {
                    (
                        prov.member_dir(&name, i).join("data"),
                        prov.socket_dir(*pg_port),
                        *pg_port,
                    )
                })
                .collect();
            let mut archiving = None;
            for (i, (pg_port, rest_port)) in h.members.iter().enumerate() {
                if !range.contains(&i) {
                    continue;
                }
                let (dir, socket_dir, owner) = prov.prepare_member(&spec, i, *pg_port, &tls)?;
                if archiving.is_none() {
                    archiving =
                        Some(prov.ha_archive_parameters(&name, &pgs, owner, cipher.as_deref())?);
                }
                // pgBackRest's command line of the archive_command, as this member (its data
                // directory as pg1-path) running `action`.
                let data = prov.member_dir(&name, i).join("data");
                let own = |action: &str| format!("--pg1-path={} {action}", data.display());
                let repository = |action: &str| {
                    archiving.as_ref().and_then(|params| {
                        params
                            .iter()
                            .find(|(k, _)| k == "archive_command")
                            .map(|(_, v)| v.replace("archive-push %p", action))
                    })
                };
                let cfg = MemberConfig {
                    scope: name.clone(),
                    name: member_name(&name, i),
                    etcd_hosts: etcd_hosts.clone(),
                    etcd_https,
                    rest_port: *rest_port,
                    pg_port: *pg_port,
                    dir,
                    bin_dir: prov.bin_dir().to_path_buf(),
                    superuser: su.clone(),
                    superuser_password: su_pw.clone(),
                    replication_password: replication.clone(),
                    rewind_password: rewind.clone(),
                    synchronous_mode: synchronous,
                    maximum_lag_on_failover: max_lag,
                    extra_hba: Vec::new(),
                    hba: hba.clone(),
                    listen_hosts: vec![public_host.clone()],
                    socket_dir,
                    tls: true,
                    parameters: parameters.clone(),
                    // pgBackRest's archive-push runs in the member's own data directory, which
                    // must be its pg1-path.
                    local_parameters: archiving
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.replace("archive-push %p", &own("archive-push %p"))))
                        .collect(),
                    // A new or lost member is restored from the repository (then catches up from
                    // the archive and the primary) rather than copied whole from the primary.
                    replica_from_repository: repository(&own("--delta --type=standby restore")),
                    // WAL the primary no longer holds comes from the archive, one segment per
                    // call (the asynchronous prefetch's spool is shared by the members).
                    restore_command: repository(&own("--no-archive-async archive-get %f \"%p\"")),
                    pid_file: Some(pid_dir.join(format!("{name}-{i}.pid"))),
                };
                let m = Member::start_or_adopt(cfg, owner).map_err(|e| {
                    ControlError::internal(format!("starting Patroni member {i}: {e}"))
                })?;
                out.push(m);
            }
            Ok::<_, ControlError>(out)
        })
        .await??;
        Ok(members)
    }

    /// Waits until a member of `name` is the primary.
    async fn wait_for_primary(&self, name: &str) -> Result<(), ControlError> {
        let deadline = Instant::now() + FIRST_PRIMARY_WITHIN;
        loop {
            if self.follow_primary(name).await.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ControlError::internal(format!(
                    "no Patroni member of {name} became primary within {} s",
                    FIRST_PRIMARY_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Patroni's replication and rewind roles with their stored passwords, the rewind role a
    /// superuser (see `admin::REWIND_ROLE`), through pgbay's internal superuser `t`.
    pub(crate) async fn ensure_ha_roles(
        &self,
        s: &ServiceRecord,
        t: &admin::AdminTarget,
    ) -> Result<(), ControlError> {
        let h = lock(&self.inner.ha.records)
            .get(&s.name)
            .cloned()
            .ok_or_else(|| ControlError::internal("not an HA service"))?;
        let repl = self.inner.secrets.open(&h.replication_password_enc)?;
        let rewind = self.inner.secrets.open(&h.rewind_password_enc)?;
        admin::ensure_patroni_roles(t, &repl, &rewind)
            .await
            .map_err(|e| ControlError::from_admin(e, "making Patroni's roles"))
    }

    /// Whether HA service `name` has a standby that streams (Patroni's `GET /replica` 200).
    pub(crate) async fn has_streaming_standby(&self, name: &str) -> bool {
        let Some(h) = lock(&self.inner.ha.records).get(name).cloned() else {
            return false;
        };
        let primary = lock(&self.inner.ha.primaries).get(name).copied();
        let addrs: Vec<std::net::SocketAddr> = h
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != primary)
            .map(|(_, (_, rest))| std::net::SocketAddr::from(([127, 0, 0, 1], *rest)))
            .collect();
        tokio::task::spawn_blocking(move || {
            addrs
                .iter()
                .any(|a| patroni::rest_get(*a, "/replica").map(|r| r.0) == Some(200))
        })
        .await
        .unwrap_or(false)
    }

    /// Asks each member of `name` whether it is the primary; records the one that is (exactly
    /// one answering 200) and returns its index. A followed member that answers, but not as the
    /// primary, while none does, stops the service's port forwarding (`HaState::not_primary`).
    /// Also refreshes the cluster status.
    async fn follow_primary(&self, name: &str) -> Option<usize> {
        let h = lock(&self.inner.ha.records).get(name).cloned()?;
        let addrs: Vec<std::net::SocketAddr> = h
            .members
            .iter()
            .map(|(_, rest)| std::net::SocketAddr::from(([127, 0, 0, 1], *rest)))
            .collect();
        let (answers, status) = tokio::task::spawn_blocking(move || {
            let answers: Vec<Option<u16>> = addrs
                .iter()
                .map(|a| primary_answer(patroni::rest_get(*a, "/primary")))
                .collect();
            let status = addrs.iter().find_map(|a| patroni::cluster_status(*a));
            (answers, status)
        })
        .await
        .ok()?;
        if let Some(st) = status {
            lock(&self.inner.ha.status).insert(name.to_string(), st);
        }
        let followed = lock(&self.inner.ha.primaries).get(name).copied();
        let (changed, p) = match judge_primary(&answers, followed) {
            Followed::Primary(p) => {
                let moved = lock(&self.inner.ha.primaries).insert(name.to_string(), p) != Some(p);
                let answers_again = lock(&self.inner.ha.not_primary).remove(name);
                if moved {
                    tracing::info!(service = %name, member = %member_name(name, p), "primary is now this member");
                }
                (moved || answers_again, Some(p))
            }
            Followed::NotPrimary(f) => {
                let newly = lock(&self.inner.ha.not_primary).insert(name.to_string());
                // Not logged while a new service waits for its first primary.
                if newly && followed.is_some() {
                    tracing::warn!(service = %name, member = %member_name(name, f),
                        "the followed member is not the primary and no other is: its port forwards nothing until one is");
                }
                (newly, None)
            }
            Followed::Unknown => (false, None),
        };
        if changed {
            if let Err(e) = self.publish_of(name).await {
                tracing::error!(service = %name, error = %e, "publishing the new primary");
            }
        }
        p
    }

    /// Follows the primary of every HA service until shutdown.
    pub(crate) async fn follow_primaries(&self) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let names: Vec<String> = lock(&self.inner.ha.members).keys().cloned().collect();
            for name in names {
                self.follow_primary(&name).await;
            }
        }
    }

    /// Supervision step for HA services: restarts a dead Patroni (the member comes back as a
    /// standby, rewound by Patroni) and pgbay's own etcd. The followed primary's Patroni, when
    /// another member could take over, waits for one to (see `patroni::LOST_PRIMARY_RESTART_AFTER`).
    pub(crate) async fn supervise_ha(&self) {
        let c = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(e) = lock(&c.inner.ha.etcd).as_mut() {
                if let Err(err) = e.ensure_running() {
                    tracing::error!(error = %err, "restarting pgbay's etcd");
                }
            }
            let primaries = lock(&c.inner.ha.primaries).clone();
            let mut all = lock(&c.inner.ha.members);
            for (name, members) in all.iter_mut() {
                let others = members.len() > 1;
                for (i, m) in members.iter_mut().enumerate() {
                    let awaiting_failover = others && primaries.get(name) == Some(&i);
                    match m.ensure_running(awaiting_failover) {
                        Ok(true) => {
                            tracing::warn!(service = %name, member = %m.config.name, "Patroni had exited; restarted it")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(service = %name, member = %m.config.name, error = %e, "restarting Patroni")
                        }
                    }
                }
            }
        })
        .await;
    }

    /// Stops every member of HA service `name` (their PostgreSQL with them). With `forget`, its
    /// keys in etcd and its record go too (the service is being deleted).
    pub(crate) async fn stop_ha(&self, name: &str, forget: bool) {
        let members = lock(&self.inner.ha.members).remove(name);
        let c = self.clone();
        let n = name.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            for mut m in members.unwrap_or_default() {
                m.stop();
            }
            if !forget {
                return;
            }
            let prefix = patroni::etcd_prefix(&n);
            let addr = match &c.inner.cfg.etcd {
                Some(urls) => urls.first().and_then(|u| {
                    u.trim_start_matches("http://")
                        .trim_start_matches("https://")
                        .parse()
                        .ok()
                }),
                None => lock(&c.inner.ha.etcd).as_ref().map(|e| e.client_addr()),
            };
            if let Some(addr) = addr {
                if let Err(e) = etcd::delete_prefix(addr, &prefix) {
                    tracing::error!(service = %n, error = %e, "removing the service's keys from etcd");
                }
            }
        })
        .await;
        lock(&self.inner.ha.primaries).remove(name);
        lock(&self.inner.ha.not_primary).remove(name);
        lock(&self.inner.ha.status).remove(name);
        if forget {
            lock(&self.inner.ha.records).remove(name);
        }
    }

    /// Stops every HA service's members and pgbay's etcd (graceful shutdown of pgbay).
    pub(crate) async fn stop_all_ha(&self) {
        let names: Vec<String> = lock(&self.inner.ha.members).keys().cloned().collect();
        for name in names {
            self.stop_ha(&name, false).await;
        }
        let c = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(mut e) = lock(&c.inner.ha.etcd).take() {
                e.stop();
            }
        })
        .await;
    }
}

impl Control {
    /// What an update asks of the HA settings of `s`: the new `(synchronous, max lag)` when it
    /// names either; refuses what is not built for HA services yet, and HA settings on a
    /// service without standbys.
    pub(crate) fn ha_update(
        &self,
        s: &ServiceRecord,
        u: &crate::commands::ServiceUpdate,
    ) -> Result<Option<(bool, Option<i64>)>, InputError> {
        let h = lock(&self.inner.ha.records).get(&s.name).cloned();
        let current = h.as_ref().map(|h| h.members.len()).unwrap_or(1);
        let wanted = match (&u.plan, &s.external_host) {
            (Some(p), None) => plan_nodes(p.as_str()),
            _ => current,
        };
        if wanted != current
            && (u.pg_settings.is_some()
                || u.work_mem.is_some()
                || u.shared_buffers_percentage.is_some())
        {
            return Err(InputError::of(
                Subject::Plan,
                "changes the number of nodes: change the PostgreSQL settings, work_mem and the \
                 shared_buffers share in an update of their own",
            ));
        }
        if h.is_none() && wanted == 1 {
            let why = format!(
                "needs a plan with standbys (business or premium), not {}",
                s.plan
            );
            if u.synchronous_replication == Some(true) {
                return Err(InputError::of(Subject::SynchronousReplication, why));
            }
            if u.max_failover_lag.is_some() {
                return Err(InputError::of(Subject::MaxFailoverLag, why));
            }
            return Ok(None);
        }
        if u.synchronous_replication.is_none() && u.max_failover_lag.is_none() {
            return Ok(None);
        }
        Ok(Some((
            u.synchronous_replication
                .unwrap_or(h.as_ref().is_some_and(|h| h.synchronous)),
            u.max_failover_lag.or(h.and_then(|h| h.max_lag_seconds)),
        )))
    }

    /// Changes Patroni's cluster-wide configuration of `s` (`PATCH /config` on a member):
    /// synchronous mode and the lag bound of a failover.
    pub(crate) async fn apply_ha_settings(
        &self,
        s: &ServiceRecord,
        synchronous: bool,
        max_lag_seconds: Option<i64>,
    ) -> Result<(), ControlError> {
        let h = lock(&self.inner.ha.records)
            .get(&s.name)
            .cloned()
            .ok_or_else(|| ControlError::internal("not an HA service"))?;
        let lag = max_lag_seconds
            .and_then(patroni::lag_seconds_to_bytes)
            .unwrap_or(DEFAULT_MAX_LAG_BYTES);
        let body = serde_json::json!({
            "synchronous_mode": synchronous,
            "maximum_lag_on_failover": lag,
        })
        .to_string();
        let addrs: Vec<std::net::SocketAddr> = h
            .members
            .iter()
            .map(|(_, rest)| std::net::SocketAddr::from(([127, 0, 0, 1], *rest)))
            .collect();
        tokio::task::spawn_blocking(move || {
            // Any live member takes it (Patroni keeps it in etcd for all).
            let mut last = String::from("no member answered");
            for a in addrs {
                match patroni::rest_patch(a, "/config", &body) {
                    Ok(200) => return Ok(()),
                    Ok(status) => last = format!("Patroni answered HTTP {status}"),
                    Err(e) => last = e,
                }
            }
            Err(ControlError::internal(format!(
                "changing Patroni's configuration: {last}"
            )))
        })
        .await?
    }

    /// Remembers changed HA settings (committed).
    pub(crate) fn remember_ha_settings(&self, name: &str, synchronous: bool, lag: Option<i64>) {
        if let Some(h) = lock(&self.inner.ha.records).get_mut(name) {
            h.synchronous = synchronous;
            h.max_lag_seconds = lag;
        }
    }

    /// A create of an HA service on a machine without Patroni or etcd: a failed operation
    /// naming the program and its package, and nothing else recorded.
    pub(crate) async fn refuse_create_ha(
        &self,
        name: &crate::input::ServiceName,
        plan: &str,
        missing: &str,
    ) -> Result<crate::model::OperationRecord, ControlError> {
        let op = crate::model::OperationRecord {
            id: uuid::Uuid::new_v4(),
            state: crate::model::OpState::Failure,
            reason: Some("fault".into()),
            message: format!(
                "service {name} was not created: plan {plan} runs standbys under Patroni and {missing}"
            ),
            ref_id: uuid::Uuid::new_v4(),
            ref_link: format!("/v2/dbaas-postgres/{name}"),
            ref_command: "get-dbaas-service-pg".into(),
            kind: crate::operations::OperationKind::CreateService,
            service: name.to_string(),
        };
        let mut tx = self.inner.store.begin().await?;
        crate::store::insert_operation(&mut tx, &op).await?;
        tx.commit().await?;
        tracing::error!(service = %name, "{}", op.message);
        Ok(op)
    }
}

impl Control {
    /// Applies the configuration of `new` (its plan's and pg-settings' parameters) to HA service
    /// `new` through Patroni, in the background, keeping the service's lock: the parameters go to
    /// Patroni's dynamic configuration (every member reloads); when one needs a restart, the
    /// standbys restart first, one at a time, then a switchover makes a restarted standby the
    /// primary (the old primary restarts as a standby): never all members at once, and the pooler
    /// follows the new primary. If a member does not come back, the previous parameters go back
    /// to Patroni and the store, and `op` ends `failure`.
    pub(crate) fn spawn_ha_reconfigure(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        old: ServiceRecord,
        new: ServiceRecord,
        op: crate::model::OperationRecord,
        changed: Vec<String>,
        restart: bool,
    ) {
        let c = self.clone();
        let span = tracing::info_span!("ha-reconfigure", service = %new.name);
        let work = async move {
            let changed = changed.join(", ");
            let name = new.name.clone();
            match c.reconfigure_ha(&old, &new, restart).await {
                Ok(()) => {
                    let how = if restart {
                        "restarted (standbys first, then a switchover)"
                    } else {
                        "reloaded"
                    };
                    Ok(format!(
                        "service {name} updated; PostgreSQL {how} to apply {changed}"
                    ))
                }
                Err(e) => {
                    tracing::error!(error = %e, "HA reconfiguration failed");
                    if let Err(e) = c.reconfigure_back(&old, &new).await {
                        tracing::error!(error = %e, "putting the previous configuration back");
                    }
                    Err((
                        "incorrect",
                        format!(
                            "the members did not all come back with the new value of {changed}; \
                             the previous configuration is back"
                        ),
                    ))
                }
            }
        };
        self.spawn_operation_work(guard, op, span, work);
    }

    async fn reconfigure_back(
        &self,
        old: &ServiceRecord,
        new: &ServiceRecord,
    ) -> Result<(), ControlError> {
        let back = ServiceRecord {
            plan: old.plan.clone(),
            pg_settings: old.pg_settings.clone(),
            work_mem: old.work_mem,
            shared_buffers_percentage: old.shared_buffers_percentage,
            updated_at: chrono::Utc::now(),
            ..new.clone()
        };
        let mut tx = self.inner.store.begin().await?;
        crate::store::update_service(&mut tx, &back).await?;
        tx.commit().await?;
        self.reconfigure_ha(new, &back, true).await
    }

    async fn reconfigure_ha(
        &self,
        old: &ServiceRecord,
        new: &ServiceRecord,
        restart: bool,
    ) -> Result<(), ControlError> {
        use crate::cluster_config::ClusterConfig;
        let (new_cfg, old_cfg) = (ClusterConfig::of(new), ClusterConfig::of(old));
        let mut params = serde_json::Map::new();
        for (k, v) in new_cfg.entries() {
            params.insert(k.to_string(), serde_json::Value::String(unquote(v)));
        }
        for (k, _) in old_cfg.entries() {
            if !params.contains_key(k) {
                params.insert(k.to_string(), serde_json::Value::Null);
            }
        }
        let body = serde_json::json!({"postgresql": {"parameters": params}}).to_string();
        let h = lock(&self.inner.ha.records)
            .get(&new.name)
            .cloned()
            .ok_or_else(|| ControlError::internal("not an HA service"))?;
        let rest: Vec<std::net::SocketAddr> = h
            .members
            .iter()
            .map(|(_, r)| std::net::SocketAddr::from(([127, 0, 0, 1], *r)))
            .collect();
        let name = new.name.clone();
        let primary = lock(&self.inner.ha.primaries)
            .get(&name)
            .copied()
            .unwrap_or(0);
        tokio::task::spawn_blocking(move || -> Result<(), ControlError> {
            let fail = |what: String| ControlError::internal(what);
            if !rest
                .iter()
                .any(|a| patroni::rest_patch(*a, "/config", &body) == Ok(200))
            {
                return Err(fail("no member took Patroni's new configuration".into()));
            }
            // Every member reloads within a loop_wait or two.
            std::thread::sleep(Duration::from_secs(u64::from(patroni::LOOP_WAIT) * 3));
            if !restart {
                return Ok(());
            }
            let wait = |what: &str, ok: &dyn Fn() -> bool| -> Result<(), ControlError> {
                let deadline = Instant::now() + Duration::from_secs(180);
                while !ok() {
                    if Instant::now() >= deadline {
                        return Err(fail(format!("timed out waiting for {what}")));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Ok(())
            };
            let standbys: Vec<usize> = (0..rest.len()).filter(|i| *i != primary).collect();
            for &i in &standbys {
                let a = rest[i];
                let status = patroni::rest_post(a, "/restart", r#"{"restart_pending": true}"#)
                    .map_err(|e| fail(format!("restarting {}: {e}", member_name(&name, i))))?;
                if status != 200 && status != 503 {
                    tracing::warn!(member = %member_name(&name, i), status, "Patroni's restart answered");
                }
                wait(&format!("{} back as a standby", member_name(&name, i)), &|| {
                    patroni::rest_get(a, "/replica").map(|r| r.0) == Some(200)
                })?;
            }
            let Some(&candidate) = standbys.first() else {
                return Ok(());
            };
            let body = serde_json::json!({
                "leader": member_name(&name, primary),
                "candidate": member_name(&name, candidate),
            })
            .to_string();
            let status = patroni::rest_post(rest[candidate], "/switchover", &body)
                .map_err(|e| fail(format!("switchover: {e}")))?;
            if status != 200 {
                return Err(fail(format!("Patroni refused the switchover (HTTP {status})")));
            }
            wait("the switchover", &|| {
                patroni::rest_get(rest[candidate], "/primary").map(|r| r.0) == Some(200)
            })?;
            wait("the old primary back as a standby", &|| {
                patroni::rest_get(rest[primary], "/replica").map(|r| r.0) == Some(200)
            })?;
            // A switchover restarts the old primary; one still pending restarts now.
            let _ = patroni::rest_post(rest[primary], "/restart", r#"{"restart_pending": true}"#);
            wait("the old primary back as a standby", &|| {
                patroni::rest_get(rest[primary], "/replica").map(|r| r.0) == Some(200)
            })?;
            Ok(())
        })
        .await??;
        self.follow_primary(&new.name).await;
        Ok(())
    }
}

/// How many nodes plan `plan` runs (1 for a plan the catalogue does not know).
fn plan_nodes(plan: &str) -> usize {
    crate::plans::lookup(plan)
        .map(|p| p.nodes.max(1) as usize)
        .unwrap_or(1)
}

impl Control {
    /// The node count of a fork whose plan runs standbys and that still runs as one cluster.
    pub(crate) async fn fork_to_ha(
        &self,
        s: &ServiceRecord,
    ) -> Result<Option<usize>, ControlError> {
        let nodes = plan_nodes(&s.plan);
        if nodes < 2 || s.external_host.is_some() || self.is_ha(&s.name) {
            return Ok(None);
        }
        Ok(self.inner.store.fork_of(&s.name).await?.map(|_| nodes))
    }

    /// The node count an update of `before` into `after` moves a local service to, when it
    /// changes (a single cluster counts one node).
    pub(crate) fn node_change(
        &self,
        before: &ServiceRecord,
        after: &ServiceRecord,
    ) -> Option<usize> {
        if after.external_host.is_some() || before.plan == after.plan {
            return None;
        }
        let now = lock(&self.inner.ha.records)
            .get(&before.name)
            .map(|h| h.members.len())
            .unwrap_or(1);
        let wanted = plan_nodes(&after.plan);
        (wanted != now).then_some(wanted)
    }

    /// Moves service `new` (its plan already changed in the store, `op` pending) to `nodes`
    /// members in the background, keeping the service's lock: a single cluster is handed to
    /// Patroni (its data directory becomes the first member's, standbys are built from it with
    /// pg_basebackup), standbys are added (shown `syncing_data` until they stream) or removed
    /// (after a switchover if the primary is among them). `op` ends `success` once every member
    /// runs, or `failure` (the plan back in the store).
    pub(crate) fn spawn_ha_resize(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        old: ServiceRecord,
        new: ServiceRecord,
        op: crate::model::OperationRecord,
        nodes: usize,
        settings: Option<(bool, Option<i64>)>,
    ) {
        let c = self.clone();
        let span = tracing::info_span!("ha-resize", service = %new.name, nodes);
        let work = async move {
            let name = new.name.clone();
            match c.resize_ha(&old, &new, nodes, settings).await {
                Ok(()) => Ok(format!("service {name} updated; it runs {nodes} node(s)")),
                Err(e) => {
                    tracing::error!(error = %e, "changing the node count failed");
                    let back = ServiceRecord {
                        plan: old.plan.clone(),
                        ..new.clone()
                    };
                    if let Ok(mut tx) = c.inner.store.begin().await {
                        let _ = crate::store::update_service(&mut tx, &back).await;
                        let _ = tx.commit().await;
                    }
                    Err((
                        "fault",
                        format!("service {name} could not move to {nodes} node(s): {e}"),
                    ))
                }
            }
        };
        self.spawn_operation_work(guard, op, span, work);
    }

    pub(crate) async fn resize_ha(
        &self,
        old: &ServiceRecord,
        new: &ServiceRecord,
        nodes: usize,
        settings: Option<(bool, Option<i64>)>,
    ) -> Result<(), ControlError> {
        Self::ha_programs().map_err(ControlError::internal)?;
        let current = lock(&self.inner.ha.records)
            .get(&new.name)
            .map(|h| h.members.len());
        match current {
            None => {
                if let Err(e) = self.convert_to_ha(new, nodes, settings).await {
                    self.withdraw_new_members(new, 1).await;
                    return Err(e);
                }
            }
            Some(n) if nodes > n => {
                if let Err(e) = self.add_members(new, n, nodes).await {
                    self.withdraw_new_members(new, n).await;
                    return Err(e);
                }
                // From one member (synchronous replication switched off when it was left
                // alone) to standbys again: the service's setting applies again.
                let record = lock(&self.inner.ha.records).get(&new.name).cloned();
                if let (1, None, Some(h)) = (n, settings, record) {
                    if h.synchronous {
                        self.apply_ha_settings(new, true, h.max_lag_seconds).await?;
                    }
                }
            }
            Some(n) => self.remove_members(new, n, nodes).await?,
        }
        if let (Some(_), Some((sync, lag))) = (current, settings) {
            self.apply_ha_settings(new, sync, lag).await?;
            let mut tx = self.inner.store.begin().await?;
            crate::store::update_ha_settings(&mut tx, &new.name, sync, lag).await?;
            tx.commit().await?;
            self.remember_ha_settings(&new.name, sync, lag);
        }
        use crate::cluster_config::ClusterConfig;
        let (changed, restart) = ClusterConfig::of(new).changes_from(&ClusterConfig::of(old));
        // A converted cluster gets its plan's parameters into Patroni's configuration.
        if !changed.is_empty() || current.is_none() {
            self.reconfigure_ha(old, new, restart).await?;
        }
        Ok(())
    }

    /// `count` fresh `(pg_port, rest_port)` pairs from the port range.
    async fn member_ports(&self, count: usize) -> Result<Vec<(u16, u16)>, ControlError> {
        let used: std::collections::HashSet<u16> =
            self.inner.store.used_ports().await?.into_iter().collect();
        let ports = crate::ports::allocate(
            &self.inner.cfg.port_range,
            &used,
            &self.inner.cfg.public_host,
            2 * count,
        )
        .ok_or_else(|| ControlError::Conflict("no free port left in --port-range".into()))?;
        Ok(ports.chunks(2).map(|p| (p[0], p[1])).collect())
    }

    async fn convert_to_ha(
        &self,
        s: &ServiceRecord,
        nodes: usize,
        settings: Option<(bool, Option<i64>)>,
    ) -> Result<(), ControlError> {
        let t = self.admin_target(s).await?;
        let _ports = self.inner.create_lock.lock().await;
        let _shared_ports = self.inner.store.port_lock().await?;
        let members = self.member_ports(nodes).await?;
        let (synchronous, max_lag_seconds) = settings.unwrap_or((false, None));
        let h = HaRecord {
            service: s.name.clone(),
            replication_password_enc: self
                .inner
                .secrets
                .seal(crate::input::Password::generate().as_str()),
            rewind_password_enc: self
                .inner
                .secrets
                .seal(crate::input::Password::generate().as_str()),
            synchronous,
            max_lag_seconds,
            members,
        };
        // Patroni's roles first, while the single cluster runs.
        let repl = self.inner.secrets.open(&h.replication_password_enc)?;
        let rewind = self.inner.secrets.open(&h.rewind_password_enc)?;
        admin::ensure_patroni_roles(&t, &repl, &rewind)
            .await
            .map_err(|e| ControlError::from_admin(e, "making Patroni's roles"))?;
        let mut tx = self.inner.store.begin().await?;
        crate::store::insert_ha(&mut tx, &h).await?;
        tx.commit().await?;
        drop(_ports);
        self.remember_ha(h.clone());
        // Stop the single cluster and give its data directory to member 0.
        let prov = self.inner.prov.clone();
        let tls = self.inner.tls.clone();
        let name = s.name.clone();
        let os_user = pgbay_cluster::os_users::name_for(&s.id);
        let (user, password) = (t.user.clone(), t.password.clone());
        let ip_filter = s.ip_filter.0.clone();
        let settings_text = crate::cluster_config::ClusterConfig::of(s).text();
        let pg0 = h.members[0].0;
        tokio::task::spawn_blocking(move || -> Result<(), ControlError> {
            prov.stop(&name)?;
            let spec = ClusterSpec {
                name: &name,
                port: pg0,
                superuser: &user,
                superuser_password: &password,
                os_user: &os_user,
                ip_filter: &ip_filter,
                settings: &settings_text,
                backup_cipher: None,
            };
            prov.prepare_member(&spec, 0, pg0, &tls)?;
            prov.hand_to_member(&name)?;
            Ok(())
        })
        .await??;
        tracing::info!(service = %s.name, nodes, "single cluster handed to Patroni");
        // Member 0 takes the data over as the leader before any standby starts: a standby
        // started alongside could win the empty cluster's initialize key and run initdb.
        Self::ha_programs().map_err(ControlError::internal)?;
        let first = self.start_members(s, 0..1, &t.user, &t.password).await?;
        lock(&self.inner.ha.members).insert(s.name.clone(), first);
        self.wait_for_primary(&s.name).await?;
        if self.follow_primary(&s.name).await != Some(0) {
            return Err(ControlError::internal(
                "the handed-over cluster did not become the primary",
            ));
        }
        let rest = self
            .start_members(s, 1..nodes, &t.user, &t.password)
            .await?;
        lock(&self.inner.ha.members)
            .entry(s.name.clone())
            .or_default()
            .extend(rest);
        self.wait_for_standbys(&s.name, 1..nodes).await
    }

    async fn add_members(
        &self,
        s: &ServiceRecord,
        from: usize,
        to: usize,
    ) -> Result<(), ControlError> {
        let t = self.admin_target(s).await?;
        {
            let _ports = self.inner.create_lock.lock().await;
            let _shared_ports = self.inner.store.port_lock().await?;
            let added = self.member_ports(to - from).await?;
            let mut tx = self.inner.store.begin().await?;
            crate::store::insert_ha_members(&mut tx, &s.name, from, &added).await?;
            tx.commit().await?;
            if let Some(h) = lock(&self.inner.ha.records).get_mut(&s.name) {
                h.members.extend(added);
            }
        }
        let started = self
            .start_members(s, from..to, &t.user, &t.password)
            .await?;
        lock(&self.inner.ha.members)
            .entry(s.name.clone())
            .or_default()
            .extend(started);
        self.wait_for_standbys(&s.name, from..to).await
    }

    /// After a failed growth to more members: the members past the first `keep` (standbys that
    /// did not come up) are stopped and forgotten, so the service runs as many members as its
    /// plan, which the failed operation restores, says. Failures here are logged: the growth's
    /// own error is what the operation reports.
    async fn withdraw_new_members(&self, s: &ServiceRecord, keep: usize) {
        let now = lock(&self.inner.ha.records)
            .get(&s.name)
            .map(|h| h.members.len());
        if let Some(now) = now.filter(|&n| n > keep) {
            if let Err(e) = self.remove_members(s, now, keep).await {
                tracing::error!(service = %s.name, error = %e, "withdrawing the new standbys failed");
            }
        }
    }

    async fn remove_members(
        &self,
        s: &ServiceRecord,
        from: usize,
        to: usize,
    ) -> Result<(), ControlError> {
        let h = lock(&self.inner.ha.records)
            .get(&s.name)
            .cloned()
            .ok_or_else(|| ControlError::internal("not an HA service"))?;
        let primary = lock(&self.inner.ha.primaries)
            .get(&s.name)
            .copied()
            .unwrap_or(0);
        let rest = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], h.members[i].1));
        if primary >= to {
            // The primary is among the members that go: make member 0 the primary first.
            let body = serde_json::json!({
                "leader": member_name(&s.name, primary),
                "candidate": member_name(&s.name, 0),
            })
            .to_string();
            let a = rest(0);
            let status =
                tokio::task::spawn_blocking(move || patroni::rest_post(a, "/switchover", &body))
                    .await?
                    .map_err(|e| ControlError::internal(format!("switchover: {e}")))?;
            if status != 200 {
                return Err(ControlError::internal(format!(
                    "Patroni refused the switchover (HTTP {status})"
                )));
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while self.follow_primary(&s.name).await != Some(0) {
                if Instant::now() >= deadline {
                    return Err(ControlError::internal("the switchover did not finish"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        // Down to one member: no standby is left to confirm commits, so synchronous replication
        // is switched off first (a primary still naming a removed standby in
        // synchronous_standby_names would wait on every commit for good). It comes back from
        // the service's record when standbys are added again.
        if to == 1 && h.synchronous {
            self.apply_ha_settings(s, false, h.max_lag_seconds).await?;
        }
        let going: Vec<Member> = {
            let mut all = lock(&self.inner.ha.members);
            match all.get_mut(&s.name) {
                Some(m) if m.len() > to => m.split_off(to),
                _ => Vec::new(),
            }
        };
        let prov = self.inner.prov.clone();
        let name = s.name.clone();
        tokio::task::spawn_blocking(move || {
            for mut m in going {
                m.stop();
                if let Some(f) = &m.config.pid_file {
                    let _ = std::fs::remove_file(f);
                }
            }
            for i in to..from {
                let _ = std::fs::remove_dir_all(prov.member_dir(&name, i));
            }
        })
        .await?;
        let mut tx = self.inner.store.begin().await?;
        crate::store::delete_ha_members_from(&mut tx, &s.name, to).await?;
        tx.commit().await?;
        if let Some(h) = lock(&self.inner.ha.records).get_mut(&s.name) {
            h.members.truncate(to);
        }
        self.publish_of(&s.name).await?;
        Ok(())
    }

    /// Waits until members `range` of `name` run as streaming standbys.
    async fn wait_for_standbys(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<(), ControlError> {
        let h = lock(&self.inner.ha.records)
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::internal("not an HA service"))?;
        let addrs: Vec<std::net::SocketAddr> = range
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], h.members[i].1)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let a = addrs.clone();
            let all = tokio::task::spawn_blocking(move || {
                a.iter()
                    .all(|a| patroni::rest_get(*a, "/replica").map(|r| r.0) == Some(200))
            })
            .await?;
            if all {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ControlError::internal(format!(
                    "the standbys of {name} did not start streaming"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A postgresql.conf value as Patroni's parameters take it (without pgbay's quoting).
fn unquote(v: &str) -> String {
    v.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .map(|v| v.replace("''", "'"))
        .unwrap_or_else(|| v.to_string())
}

/// The lag bound of a failover when none is set: 60 s of WAL at a segment a second.
const DEFAULT_MAX_LAG_BYTES: u64 = 60 * 16 * 1024 * 1024;

/// The port the spec of an HA service names: its first member's (only the socket directory and
/// the OS user of the spec are used for members).
fn s_port(h: &HaRecord) -> u16 {
    h.members.first().map(|m| m.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{judge_primary, primary_answer, Followed};

    /// The members' answers, the member followed, and what they must be judged.
    type Case = (&'static [Option<u16>], Option<usize>, Followed);

    fn judged_as(cases: Vec<Case>) {
        for (answers, followed, want) in cases {
            assert_eq!(
                judge_primary(answers, followed),
                want,
                "{answers:?} {followed:?}"
            );
        }
    }

    #[test]
    fn a_leader_still_in_recovery_is_not_a_primary() {
        for (code, body, want) in [
            (200, r#"{"state": "running", "role": "master"}"#, 200),
            (200, r#"{"state": "running", "role": "primary"}"#, 200),
            (200, r#"{"state": "starting", "role": "replica"}"#, 503),
            (503, r#"{"state": "running", "role": "replica"}"#, 503),
            (200, "not json", 200),
        ] {
            let got = primary_answer(Some((code, body.to_string())));
            assert_eq!(got, Some(want), "{code} {body}");
        }
        assert_eq!(primary_answer(None), None);
    }

    #[test]
    fn the_member_answering_primary_alone_is_followed() {
        judged_as(vec![
            (&[Some(503), Some(200)], Some(0), Followed::Primary(1)),
            (&[None, Some(200)], None, Followed::Primary(1)),
            // Two claims: nothing to act on.
            (&[Some(200), Some(200)], Some(0), Followed::Unknown),
        ]);
    }

    #[test]
    fn a_followed_member_in_recovery_is_not_primary_a_silent_one_is_unknown() {
        judged_as(vec![
            // The old primary restarted read-only (503) while the other is not promoted yet.
            (&[Some(503), Some(503)], Some(0), Followed::NotPrimary(0)),
            (&[None, Some(503)], Some(1), Followed::NotPrimary(1)),
            // Its Patroni is down (its PostgreSQL may still serve as the primary): keep following.
            (&[None, Some(503)], Some(0), Followed::Unknown),
            (&[None, None], None, Followed::Unknown),
        ]);
    }
}
