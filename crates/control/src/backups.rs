//! Backups (pgBackRest, see `pgbay_cluster::pgbackrest`): control decides when a service is
//! backed up and what the API shows; the cluster crate runs pgBackRest.
//!
//! - Every local cluster archives its WAL into its own repository (`archive_command`, set when
//!   the cluster starts).
//! - A full backup runs as soon as a new service runs (and at start-up for a service whose
//!   repository holds none), then once a day at the service's `backup-schedule` (UTC), which
//!   pgbay picks per service from its id (spreading services over the day).
//! - What a repository holds is read from pgBackRest's own record (`pgbackrest info`), cached
//!   per service and refreshed after every backup, so reading a service never runs a program.
//! - A failed backup is logged with pgBackRest's last line and counted (`/metrics`), and tried
//!   again after pauses of 15 s to 4 min while the service runs; the next scheduled one runs
//!   regardless.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use chrono::{Timelike, Utc};
use pgbay_cluster::pgbackrest::{Backup, RepoInfo};

use crate::control::locked;
use crate::model::{ServiceRecord, ServiceState};
use crate::{Control, ControlError};

/// How often the scheduler looks at the clock.
const SCHEDULE_TICK: Duration = Duration::from_secs(20);

/// A scheduled backup is not taken when the repository's newest one finished less than this
/// before (and after the backup time was last set): a service created shortly before its
/// backup time has just had its first one.
const FRESH_BACKUP: Duration = Duration::from_secs(3600);

/// A service's daily backup time (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSchedule {
    pub hour: u8,
    pub minute: u8,
}

impl BackupSchedule {
    /// The time pgbay picks for a service: spread over the day by the service's id.
    pub fn picked_for(s: &ServiceRecord) -> BackupSchedule {
        let n = s.id.as_u128();
        BackupSchedule {
            hour: (n % 24) as u8,
            minute: ((n / 24) % 60) as u8,
        }
    }

    /// Whether a scheduled backup is to be taken at `now`: in the hour of the backup time, from
    /// its minute on, unless the newest backup (when it finished, unix seconds) is fresher than
    /// `FRESH_BACKUP` and finished after the backup time was last set (`set_at`, unix seconds;
    /// None: not since pgbay started). A backup time set after the newest backup, or in the
    /// second it finished, is a request for one then. Once a day: the caller remembers the day
    /// it took (or skipped) one.
    pub fn due(self, now: chrono::DateTime<Utc>, newest: Option<i64>, set_at: Option<i64>) -> Due {
        if now.hour() as u8 != self.hour || (now.minute() as u8) < self.minute {
            return Due::No;
        }
        match newest {
            Some(t)
                if now.timestamp().saturating_sub(t) < FRESH_BACKUP.as_secs() as i64
                    && set_at.is_none_or(|set| t > set) =>
            {
                Due::Fresh
            }
            _ => Due::Yes,
        }
    }
}

/// What the daily schedule does for a service at one look at the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not its backup time.
    No,
    /// Its backup time: a full backup.
    Yes,
    /// Its backup time, but the newest backup finished less than `FRESH_BACKUP` before, after
    /// the backup time was set: none today.
    Fresh,
}

/// How many daily full backups a plan keeps (with the WAL between them, so any point since the
/// oldest can be restored): hobbyist and startup 2 days, business 14, premium 30 (Aiven's and
/// Exoscale's retention per plan family).
pub fn retention_of(plan: &str) -> u32 {
    match plan.split('-').next() {
        Some("business") => 14,
        Some("premium") => 30,
        _ => 2,
    }
}

/// Per-service backup state kept in memory.
#[derive(Default)]
pub(crate) struct BackupState {
    info: StdMutex<HashMap<String, RepoInfo>>,
    failures: StdMutex<HashMap<String, u64>>,
    /// `pg_stat_archiver.failed_count` as last sampled, by service.
    archive_failures: StdMutex<HashMap<String, i64>>,
    running: StdMutex<HashSet<String>>,
    /// The backup times asked for (`backup-schedule`), by service, each with when it was set
    /// through this node since it started (unix seconds; None: loaded from the store).
    schedules: StdMutex<HashMap<String, (BackupSchedule, Option<i64>)>>,
}

/// What `/metrics` shows of one service's backups.
#[derive(Debug, Clone)]
pub struct BackupMetrics {
    pub service: String,
    /// Seconds since the newest backup finished (None: no backup yet).
    pub newest_age: Option<i64>,
    /// Backups that failed since pgbay started.
    pub failures: u64,
    /// WAL segments PostgreSQL failed to archive (`pg_stat_archiver.failed_count`, since the
    /// cluster's statistics were last reset), as last sampled.
    pub archive_failures: Option<i64>,
}

/// How long the first backup of a service with standbys waits for one to stream.
const FIRST_BACKUP_STANDBY_WAIT: Duration = Duration::from_secs(60);
/// A failed backup (a failover or a restart during it) is tried again after these pauses;
/// after the last, the daily schedule takes over.
const BACKUP_RETRIES: [Duration; 5] = [
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(240),
];

impl Control {
    /// The daily backup time of `s`: the one asked for, else the one pgbay picked.
    pub fn backup_schedule_of(&self, s: &ServiceRecord) -> BackupSchedule {
        self.backup_schedule_set(s).0
    }

    /// The daily backup time of `s`, and when it was set through this node (None: picked by pgbay,
    /// or set before pgbay started).
    fn backup_schedule_set(&self, s: &ServiceRecord) -> (BackupSchedule, Option<i64>) {
        locked(&self.inner.backups.schedules)
            .get(&s.name)
            .copied()
            .unwrap_or_else(|| (BackupSchedule::picked_for(s), None))
    }

    /// Loads the backup times asked for (at start).
    pub(crate) async fn load_backup_schedules(&self) -> Result<(), ControlError> {
        let stored = self.inner.store.backup_schedules().await?;
        let mut map = locked(&self.inner.backups.schedules);
        for (service, hour, minute) in stored {
            map.insert(service, (BackupSchedule { hour, minute }, None));
        }
        Ok(())
    }

    /// Remembers a committed backup time.
    pub(crate) fn remember_backup_schedule(&self, service: &str, at: BackupSchedule) {
        locked(&self.inner.backups.schedules)
            .insert(service.to_string(), (at, Some(Utc::now().timestamp())));
    }

    /// Forgets a deleted service's backup time (the store's row goes with the service), so that
    /// a service made again under its name gets its own.
    pub(crate) fn forget_backup_schedule(&self, service: &str) {
        locked(&self.inner.backups.schedules).remove(service);
    }

    /// Checks that `s` can take a `backup-schedule`: pgbay backs it up.
    pub(crate) fn check_backup_schedule(&self, s: &ServiceRecord) -> Result<(), crate::InputError> {
        const FIELD: crate::input::Subject = crate::input::Subject::BackupSchedule;
        if !self.backups_enabled() {
            return Err(crate::InputError::of(
                FIELD,
                "backups are off on this pgbay (install the Debian package `pgbackrest`)",
            ));
        }
        if s.external_host.is_some() {
            return Err(crate::InputError::of(
                FIELD,
                "services on an external server are not backed up by pgbay",
            ));
        }
        if self.replica_of(&s.name).is_some() {
            return Err(crate::InputError::of(
                FIELD,
                "a read replica is backed up once promoted",
            ));
        }
        Ok(())
    }

    /// The key that encrypts the backup repository of `service` (None: an unencrypted one).
    pub(crate) async fn backup_cipher(
        &self,
        service: &str,
    ) -> Result<Option<String>, ControlError> {
        match self.inner.store.backup_key(service).await? {
            Some(sealed) => Ok(Some(self.inner.secrets.open(&sealed)?)),
            None => Ok(None),
        }
    }

    /// Whether services get continuous archiving and backups (pgBackRest is installed).
    pub fn backups_enabled(&self) -> bool {
        self.inner.prov.backup_root().is_some()
    }

    /// The backups held for `service`, oldest first (pgBackRest's record, as last read).
    pub fn backups_of(&self, service: &str) -> Vec<Backup> {
        locked(&self.inner.backups.info)
            .get(service)
            .map(|i| i.backups.clone())
            .unwrap_or_default()
    }

    /// Per-service backup figures for `/metrics`.
    pub fn backup_metrics(&self) -> Vec<BackupMetrics> {
        let now = Utc::now().timestamp();
        let info = locked(&self.inner.backups.info);
        let failures = locked(&self.inner.backups.failures);
        let archive = locked(&self.inner.backups.archive_failures);
        let mut names: Vec<&String> = info
            .keys()
            .chain(failures.keys())
            .chain(archive.keys())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| BackupMetrics {
                service: n.clone(),
                newest_age: info
                    .get(n)
                    .and_then(|i| i.backups.last())
                    .map(|b| now - b.stopped_at),
                failures: failures.get(n).copied().unwrap_or(0),
                archive_failures: archive.get(n).copied(),
            })
            .collect()
    }

    /// After a service's cluster runs: its stanza and first full backup, in the background.
    pub(crate) fn spawn_first_backup(&self, service: &str) {
        if !self.backups_enabled() {
            return;
        }
        // A read replica is its source's copy: backed up once promoted.
        if self.replica_of(service).is_some() {
            return;
        }
        let control = self.clone();
        let name = service.to_string();
        let asked = Utc::now().timestamp();
        tokio::spawn(async move {
            // A service with standbys is backed up from one: its first backup waits (bounded)
            // for a standby to stream, instead of loading the primary it has just made.
            if control.is_ha(&name) {
                let deadline = tokio::time::Instant::now() + FIRST_BACKUP_STANDBY_WAIT;
                while tokio::time::Instant::now() < deadline
                    && !control.has_streaming_standby(&name).await
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            // Not when the daily schedule took one meanwhile.
            let newest = control.backups_of(&name).last().map(|b| b.stopped_at);
            if newest.is_none_or(|t| t < asked) {
                control.back_up_retrying(&name, "first backup").await;
            }
        });
    }

    /// A backup of `service`, tried again after each of `BACKUP_RETRIES`' pauses while it
    /// fails (a failover or a restart during it, a repository briefly unreachable) and the
    /// service still runs; after the last, the next daily one is the next try.
    async fn back_up_retrying(&self, service: &str, what: &str) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        let mut pauses = BACKUP_RETRIES.iter();
        loop {
            let Err(e) = self.back_up(service).await else {
                return;
            };
            let Some(pause) = pauses.next() else {
                tracing::warn!(service = %service, error = %e, what,
                    "backup failed; the daily schedule tries again");
                return;
            };
            tracing::warn!(service = %service, error = %e, what, retry_in_s = pause.as_secs(),
                "backup failed");
            tokio::select! {
                _ = tokio::time::sleep(*pause) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            // A service deleted or stopped meanwhile is not backed up.
            match self.inner.store.service(service).await {
                Ok(Some(s)) if s.state == ServiceState::Running => {}
                _ => return,
            }
        }
    }

    /// At start-up: reads every running service's repository, backs up those without a backup,
    /// then runs the daily schedule until shutdown.
    pub(crate) async fn run_backup_schedule(&self) {
        if !self.backups_enabled() {
            tracing::warn!(
                "pgbackrest not found: services run without WAL archiving or backups \
                 (install the Debian package `pgbackrest`)"
            );
            return;
        }
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        if let Ok(services) = self.own_services().await {
            for s in services
                .iter()
                .filter(|s| s.state == ServiceState::Running && s.external_host.is_none())
            {
                self.refresh_backup_info(&s.name).await;
                if self.backups_of(&s.name).is_empty() {
                    self.spawn_first_backup(&s.name);
                }
            }
        }
        let mut done_today: HashMap<String, chrono::NaiveDate> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SCHEDULE_TICK) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let Ok(services) = self.own_services().await else {
                continue;
            };
            let now = Utc::now();
            for s in services.iter().filter(|s| {
                s.state == ServiceState::Running
                    && s.external_host.is_none()
                    && self.replica_of(&s.name).is_none()
            }) {
                if done_today.get(&s.name) == Some(&now.date_naive()) {
                    continue;
                }
                let newest = self.backups_of(&s.name).last().map(|b| b.stopped_at);
                let (at, set_at) = self.backup_schedule_set(s);
                let due = at.due(now, newest, set_at);
                if due != Due::No {
                    done_today.insert(s.name.clone(), now.date_naive());
                }
                if due == Due::Fresh {
                    tracing::info!(service = %s.name,
                        "scheduled backup skipped: the newest one finished less than an hour ago");
                }
                if due == Due::Yes {
                    let control = self.clone();
                    let name = s.name.clone();
                    tokio::spawn(async move {
                        control.back_up_retrying(&name, "scheduled backup").await;
                    });
                }
            }
        }
    }

    /// One full backup of `service` (its stanza made first if needed); one at a time per
    /// service. Failures are counted and logged with pgBackRest's words.
    pub(crate) async fn back_up(&self, service: &str) -> Result<(), ControlError> {
        if !locked(&self.inner.backups.running).insert(service.to_string()) {
            return Ok(()); // one is running
        }
        let result = self.back_up_now(service).await;
        locked(&self.inner.backups.running).remove(service);
        // A service deleted while its backup ran (its removal ends the backup): nothing of it
        // is counted or kept again.
        if matches!(self.inner.store.service(service).await, Ok(None)) {
            self.forget_backups(service);
            return Ok(());
        }
        if let Err(e) = &result {
            *locked(&self.inner.backups.failures)
                .entry(service.to_string())
                .or_default() += 1;
            tracing::error!(service = %service, error = %e, "pgbackrest backup failed");
            self.backrest_event(service, format!("ERROR: backup failed: {e}"));
        }
        self.refresh_backup_info(service).await;
        result
    }

    async fn back_up_now(&self, service: &str) -> Result<(), ControlError> {
        let Some(sealed) = self.inner.store.internal_password(service).await? else {
            return Ok(()); // not a cluster pgbay runs with its own role
        };
        let password = self.inner.secrets.open(&sealed)?;
        let retention = match self.inner.store.service(service).await? {
            Some(s) => retention_of(&s.plan),
            None => return Ok(()),
        };
        // A service with standbys is backed up from one that streams, when there is one.
        let from_standby = self.has_streaming_standby(service).await;
        let prov = self.inner.prov.clone();
        let name = service.to_string();
        // The stanza is made once, before the first backup: `stanza-create` takes the archive
        // lock too, so that running it again before every backup failed it whenever an
        // asynchronous archive-push was busy (a service writing WAL at its backup time).
        let stanza_made = !self.backups_of(service).is_empty();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            if !stanza_made {
                prov.stanza_create(&name, &password)?;
            }
            prov.backup(&name, &password, retention, from_standby)
        })
        .await??;
        tracing::info!(service = %service, seconds = started.elapsed().as_secs_f64(),
            "full backup taken");
        self.backrest_event(
            service,
            format!(
                "INFO: full backup taken in {:.1} s{}",
                started.elapsed().as_secs_f64(),
                if from_standby {
                    " (from a standby)"
                } else {
                    ""
                }
            ),
        );
        Ok(())
    }

    /// Re-reads what the repository of `service` holds.
    pub(crate) async fn refresh_backup_info(&self, service: &str) {
        let prov = self.inner.prov.clone();
        let name = service.to_string();
        match tokio::task::spawn_blocking(move || prov.repo_info(&name)).await {
            Ok(Ok(info)) => {
                locked(&self.inner.backups.info).insert(service.to_string(), info);
            }
            Ok(Err(e)) => tracing::debug!(service = %service, error = %e, "pgbackrest info"),
            Err(e) => tracing::debug!(service = %service, error = %e, "pgbackrest info task"),
        }
    }

    /// Whether the repository of `service` holds a backup (read afresh).
    pub(crate) async fn has_backups(&self, service: &str) -> bool {
        if !self.backups_enabled() {
            return false;
        }
        self.refresh_backup_info(service).await;
        !self.backups_of(service).is_empty()
    }

    /// A sample of `pg_stat_archiver` of `service`: a new failure is logged (unit `pgbackrest`).
    pub(crate) fn archiver_sampled(
        &self,
        service: &str,
        failed: i64,
        last_failed_wal: Option<String>,
    ) {
        let before =
            locked(&self.inner.backups.archive_failures).insert(service.to_string(), failed);
        let last = last_failed_wal.as_deref().unwrap_or("unknown");
        let message = match before {
            Some(before) if failed > before => format!(
                "ERROR: WAL archiving failed {} time(s) since the last sample (last segment \
                 {last}); PostgreSQL retries it",
                failed - before
            ),
            // The first sample (a new service, or pgbay started): failures already counted are
            // told once, as PostgreSQL counts them, so that one before the first sample is not
            // missed.
            None if failed > 0 => format!(
                "ERROR: WAL archiving failed {failed} time(s) since PostgreSQL's statistics were \
                 reset (last segment {last}); PostgreSQL retries it"
            ),
            _ => return,
        };
        self.backrest_event(service, message);
    }

    /// Forgets a deleted service.
    pub(crate) fn forget_backups(&self, service: &str) {
        locked(&self.inner.backups.archive_failures).remove(service);
        locked(&self.inner.backups.info).remove(service);
        locked(&self.inner.backups.failures).remove(service);
    }
}

/// A fork the create request asked for, checked against the source's backups.
pub(crate) struct ForkPlan {
    pub source: ServiceRecord,
    /// What provisioning restores.
    pub fork: crate::store::Fork,
}

fn window_text(earliest: i64, now: chrono::DateTime<Utc>) -> String {
    let e = chrono::DateTime::from_timestamp(earliest, 0).unwrap_or_default();
    format!(
        "the recoverable window is {} to now ({})",
        e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

impl Control {
    /// Checks `fork-from-service` and `recovery-backup-time` of a create request: a local
    /// source with a backup, a time within what its backups and WAL can reach.
    pub(crate) async fn check_fork(
        &self,
        source: &crate::input::ServiceName,
        at: Option<chrono::DateTime<Utc>>,
    ) -> Result<ForkPlan, ControlError> {
        use crate::input::InputError;
        const FIELD: crate::input::Subject = crate::input::Subject::ForkSource;
        if self.inner.cfg.external.is_some() {
            return Err(InputError::of(FIELD, "not served with an external server").into());
        }
        let Some(src) = self.inner.store.service(source.as_str()).await? else {
            return Err(InputError::of(FIELD, format!("no service named {source}")).into());
        };
        if src.external_host.is_some() {
            return Err(
                InputError::of(FIELD, format!("{source} has no backups pgbay made")).into(),
            );
        }
        if !self.backups_enabled() {
            return Err(InputError::of(
                FIELD,
                "backups are off on this pgbay (install the Debian package `pgbackrest`)",
            )
            .into());
        }
        if self.backups_of(&src.name).is_empty() {
            self.refresh_backup_info(&src.name).await;
        }
        let backups = self.backups_of(&src.name);
        let Some(first) = backups.first() else {
            return Err(InputError::of(FIELD, format!("{source} has no backup yet")).into());
        };
        let now = Utc::now();
        let (target_time, backup_set) = match at {
            None => (None, None),
            Some(t) if t > now => {
                return Err(InputError::of(
                    crate::input::Subject::RecoveryTime,
                    format!("is in the future; {}", window_text(first.stopped_at, now)),
                )
                .into())
            }
            Some(t) if t.timestamp() < first.stopped_at => {
                return Err(InputError::of(
                    crate::input::Subject::RecoveryTime,
                    format!(
                        "is before the first backup; {}",
                        window_text(first.stopped_at, now)
                    ),
                )
                .into())
            }
            // pgBackRest records a backup's end in whole seconds and picks only a backup that
            // ended strictly before the target: name the backup, the newest that ended by then.
            Some(t) => (
                Some(t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()),
                backups
                    .iter()
                    .rev()
                    .find(|b| b.stopped_at <= t.timestamp())
                    .map(|b| b.name.clone()),
            ),
        };
        Ok(ForkPlan {
            fork: crate::store::Fork {
                source: src.name.clone(),
                target_time,
                backup_set,
            },
            source: src,
        })
    }

    /// Makes the cluster of the fork `s` from its source's repository (see
    /// `LocalProvisioner::restore_fork`). A source pgbay keeps running first makes everything
    /// committed so far recoverable (a commit after the target time, a WAL switch, archived),
    /// through its primary, HA or not. Right after pgbay (re)starts, that server may not be up
    /// yet: it is waited for (`SOURCE_WAIT`), never skipped, since a fork made from an archive
    /// that lacks the source's last WAL segment can miss commits before the target time — and,
    /// as that segment reaches the archive while the fork is being made, hold commits after it.
    pub(crate) async fn restore_fork(
        &self,
        s: &ServiceRecord,
        fork: crate::store::Fork,
    ) -> Result<(), ControlError> {
        // A service rebuilt from its own backups has no server to ask.
        if fork.source != s.name {
            if let Some(src) = self.inner.store.service(&fork.source).await? {
                if src.state == ServiceState::Running {
                    if let Some(t) = self.internal_target(&src).await? {
                        archive_up_to_now(&src.name, &t).await?;
                    }
                }
            }
        }
        let prov = self.inner.prov.clone();
        let name = s.name.clone();
        let port = s.pg_port;
        let ip_filter = s.ip_filter.0.clone();
        let settings = crate::cluster_config::ClusterConfig::of(s).text();
        let os_user = pgbay_cluster::os_users::name_for(&s.id);
        let cipher = self.backup_cipher(&s.name).await?;
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            let spec = pgbay_cluster::ClusterSpec {
                name: &name,
                port,
                superuser: pgbay_cluster::admin::INTERNAL_ROLE,
                superuser_password: "",
                os_user: &os_user,
                ip_filter: &ip_filter,
                settings: &settings,
                backup_cipher: cipher.as_deref(),
            };
            let target = fork
                .target_time
                .as_deref()
                .map(|t| (t, fork.backup_set.as_deref()));
            prov.restore_fork(&fork.source, &spec, target)
        })
        .await??;
        tracing::info!(service = %s.name, seconds = started.elapsed().as_secs_f64(),
            "fork restored");
        Ok(())
    }
}

/// How long a fork waits for its source's server to accept the WAL switch (a pgbay that has
/// just started may still be starting the source).
const SOURCE_WAIT: Duration = Duration::from_secs(60);

/// Commits, switches WAL and waits until the switched segment is archived, on the source `t`
/// (see `Control::restore_fork`); a server that cannot be reached yet is tried again until
/// `SOURCE_WAIT` has passed.
async fn archive_up_to_now(
    source: &str,
    t: &pgbay_cluster::admin::AdminTarget,
) -> Result<(), ControlError> {
    let deadline = std::time::Instant::now() + SOURCE_WAIT;
    loop {
        match pgbay_cluster::admin::switch_wal_and_wait(t, Duration::from_secs(120)).await {
            Ok(()) => return Ok(()),
            // Not reachable yet (refused, or still starting up: 57P03); any other server error
            // is final.
            Err(pgbay_cluster::admin::AdminError::Pg(e))
                if std::time::Instant::now() < deadline
                    && e.as_db_error().is_none_or(|db| {
                        db.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                    }) =>
            {
                tracing::info!(source, error = %e,
                    "fork: the source's server is not reachable yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(ControlError::from_admin(e, "archiving the source's WAL")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{retention_of, BackupSchedule, Due};
    use chrono::TimeZone;

    #[test]
    fn a_scheduled_backup_is_due_in_its_hour_unless_a_fresh_one_exists() {
        let at = BackupSchedule {
            hour: 11,
            minute: 20,
        };
        let t = |h, m| chrono::Utc.with_ymd_and_hms(2026, 12, 7, h, m, 0).unwrap();
        assert_eq!(at.due(t(11, 19), None, None), Due::No);
        assert_eq!(at.due(t(10, 59), None, None), Due::No);
        assert_eq!(at.due(t(12, 20), None, None), Due::No);
        assert_eq!(at.due(t(11, 20), None, None), Due::Yes);
        assert_eq!(at.due(t(11, 59), None, None), Due::Yes);
        // The first backup of a service created at 11:10 (its backup time set then, or picked
        // by pgbay) finished at 11:15: none at 11:20.
        let first = t(11, 15).timestamp();
        let created = t(11, 10).timestamp();
        assert_eq!(at.due(t(11, 20), Some(first), None), Due::Fresh);
        assert_eq!(at.due(t(11, 20), Some(first), Some(created)), Due::Fresh);
        // The backup time set after that backup asks for one, also in the second it finished
        // (both are whole seconds).
        let later = t(11, 17).timestamp();
        assert_eq!(at.due(t(11, 20), Some(first), Some(later)), Due::Yes);
        assert_eq!(at.due(t(11, 20), Some(first), Some(first)), Due::Yes);
        // Yesterday's scheduled backup, or one an hour old, does not hold today's back.
        assert_eq!(at.due(t(11, 20), Some(first - 86_400), None), Due::Yes);
        assert_eq!(
            at.due(t(11, 20), Some(t(10, 20).timestamp()), None),
            Due::Yes
        );
        assert_eq!(
            at.due(t(11, 20), Some(t(10, 21).timestamp()), None),
            Due::Fresh
        );
    }

    #[test]
    fn retention_per_plan_family() {
        assert_eq!(retention_of("hobbyist-2"), 2);
        assert_eq!(retention_of("startup-16"), 2);
        assert_eq!(retention_of("business-4"), 14);
        assert_eq!(retention_of("premium-225"), 30);
    }
}
