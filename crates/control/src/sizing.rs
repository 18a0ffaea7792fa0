//! Sizing: whether a service's configuration fits its plan's memory, checked before anything
//! changes (at creation, and on every change of plan, `work-mem`, `shared-buffers-percentage` or a
//! `pg-settings` entry that PostgreSQL takes only at start).
//!
//! Settings are bounded one by one by the document's schema, but their costs multiply: two
//! allowed values (`max_prepared_transactions=10000`, `max_pred_locks_per_transaction=5000`) make a
//! 2 GiB cluster allocate 12.5 GB of shared memory. Rather than model PostgreSQL's arithmetic,
//! pgbay asks PostgreSQL 15: `postgres -C shared_memory_size` on the candidate configuration. That
//! refuses a running data directory, so it runs against a template data directory made once per
//! data dir (`<data-dir>/sizing/pgdata`, initdb'ed, never started), as the clusters' OS user, with
//! the candidate settings on its command line (settings are not secrets). One run takes ~20 ms;
//! answers are cached per candidate.
//!
//! The budget (see [`Demand`]): shared memory + every process slot's own memory + autovacuum's
//! working memory + `work_mem` for a quarter of the connections must not exceed the plan's memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cluster_config::{plan_of, ClusterConfig};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::InputError;
use crate::local::{LocalProvisioner, ProvisionError};
use crate::model::ServiceRecord;
use crate::pg_settings;

/// Memory of one process slot (a connection or a background worker) besides shared memory, MB:
/// an idle PostgreSQL 15 backend measured 2.0 MB PSS (1.7 MB private) after catalog queries.
pub const PROCESS_MB: u64 = 2;

/// What each autovacuum worker may take for its dead tuples: `maintenance_work_mem`, which pgbay
/// leaves at PostgreSQL's default of 64 MB (`autovacuum_work_mem` -1).
pub const AUTOVACUUM_WORKER_MB: u64 = 64;

/// `work_mem` is charged for one connection in this many: it is a per-operation allowance that
/// idle connections do not use (and a big query may use several times), so no static sum bounds
/// it; a quarter of the connections sorting or hashing at once is the estimate.
pub const WORK_MEM_SHARE: u64 = 4;

/// PostgreSQL 15's defaults of the process-slot settings pgbay does not set unless asked.
const DEFAULT_AUTOVACUUM_MAX_WORKERS: u64 = 3;
const DEFAULT_MAX_WORKER_PROCESSES: u64 = 8;
const DEFAULT_MAX_WAL_SENDERS: u64 = 10;

/// Answers kept before the cache starts over.
const CACHE_LIMIT: usize = 512;

/// What a configuration asks of the machine, the inputs of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// `shared_memory_size` as PostgreSQL computes it, MB (includes `shared_buffers`).
    pub shared_memory_mb: u64,
    /// `max_connections`.
    pub max_connections: u64,
    /// `work_mem`, kB.
    pub work_mem_kb: u64,
    /// `autovacuum_max_workers`.
    pub autovacuum_workers: u64,
    /// `max_worker_processes`.
    pub worker_processes: u64,
    /// `max_wal_senders`.
    pub wal_senders: u64,
}

impl Demand {
    /// Process slots: PostgreSQL's `MaxBackends` (connections, autovacuum workers and their
    /// launcher, background workers, WAL senders).
    pub fn slots(&self) -> u64 {
        self.max_connections
            + self.autovacuum_workers
            + 1
            + self.worker_processes
            + self.wal_senders
    }

    /// Connections whose `work_mem` is charged.
    pub fn working_connections(&self) -> u64 {
        self.max_connections.div_ceil(WORK_MEM_SHARE)
    }

    /// `work_mem` of the working connections, MB (rounded up).
    pub fn work_mem_mb(&self) -> u64 {
        (self.working_connections() * self.work_mem_kb).div_ceil(1024)
    }

    /// Memory the configuration needs, MB.
    pub fn need_mb(&self) -> u64 {
        self.shared_memory_mb
            + self.slots() * PROCESS_MB
            + self.autovacuum_workers * AUTOVACUUM_WORKER_MB
            + self.work_mem_mb()
    }

    /// How [`Self::need_mb`] adds up, for the refusal's message.
    pub fn breakdown(&self) -> String {
        format!(
            "shared memory {} MB (PostgreSQL's shared_memory_size) + {} process slots × {} MB + \
             {} autovacuum workers × {} MB + work_mem {} kB × {} connections (a quarter of \
             max_connections {}) = {} MB",
            self.shared_memory_mb,
            self.slots(),
            PROCESS_MB,
            self.autovacuum_workers,
            AUTOVACUUM_WORKER_MB,
            self.work_mem_kb,
            self.working_connections(),
            self.max_connections,
            self.need_mb()
        )
    }
}

/// The demand of service `s` once PostgreSQL has said its shared memory.
fn demand(s: &ServiceRecord, shared_memory_mb: u64) -> Demand {
    let m = plan_of(s).memory_settings(s.shared_buffers_percentage, s.work_mem);
    let int = |name: &str, default: u64| {
        s.pg_settings
            .int(name)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(default)
    };
    Demand {
        shared_memory_mb,
        max_connections: m.max_connections,
        work_mem_kb: m.work_mem_kb,
        autovacuum_workers: int("autovacuum_max_workers", DEFAULT_AUTOVACUUM_MAX_WORKERS),
        worker_processes: int("max_worker_processes", DEFAULT_MAX_WORKER_PROCESSES),
        wal_senders: int("max_wal_senders", DEFAULT_MAX_WAL_SENDERS),
    }
}

/// The API fields of `after` that bear on memory and differ from `before` (all of them given, for
/// a new service): `plan`, `work-mem`, `shared-buffers-percentage`, and `pg-settings.<name>` of
/// every setting PostgreSQL takes only at start (those size shared memory and process slots).
pub(crate) fn memory_fields(before: Option<&ServiceRecord>, after: &ServiceRecord) -> Vec<String> {
    let mut fields = Vec::new();
    let Some(before) = before else {
        if after.work_mem.is_some() {
            fields.push("work-mem".to_string());
        }
        if after.shared_buffers_percentage.is_some() {
            fields.push("shared-buffers-percentage".to_string());
        }
        fields.extend(startup_settings(after).into_keys().map(pg_field));
        return fields;
    };
    if before.plan != after.plan {
        fields.push("plan".to_string());
    }
    if before.work_mem != after.work_mem {
        fields.push("work-mem".to_string());
    }
    if before.shared_buffers_percentage != after.shared_buffers_percentage {
        fields.push("shared-buffers-percentage".to_string());
    }
    let (old, new) = (startup_settings(before), startup_settings(after));
    for k in new.keys().chain(old.keys()) {
        let f = pg_field(k.clone());
        if new.get(k) != old.get(k) && !fields.contains(&f) {
            fields.push(f);
        }
    }
    fields
}

/// The `pg-settings` of `s` that PostgreSQL takes only at start.
fn startup_settings(s: &ServiceRecord) -> std::collections::BTreeMap<String, String> {
    s.pg_settings
        .conf_entries()
        .into_iter()
        .filter(|(_, _, restart)| *restart)
        .map(|(k, v, _)| (k, v))
        .collect()
}

/// `pg-settings.<group>.<name>` as the request spells the setting.
fn pg_field(name: String) -> String {
    match pg_settings::def(&name).and_then(|d| d.group) {
        Some(g) => format!("{}.{g}.{name}", pg_settings::FIELD),
        None => format!("{}.{name}", pg_settings::FIELD),
    }
}

/// A sizing that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    /// PostgreSQL refused a value of the candidate configuration.
    #[error("PostgreSQL refused setting `{setting}`: {why}")]
    Refused {
        /// The setting, as pgbay names it.
        setting: String,
        /// PostgreSQL's words.
        why: String,
    },
    /// Making the template or running postgres failed.
    #[error("sizing a configuration: {0}")]
    Failed(#[from] ProvisionError),
}

/// Runs `postgres -C shared_memory_size` against the template data directory, making it first.
#[derive(Debug)]
pub(crate) struct Sizer {
    dir: PathBuf,
    /// Held while the template is checked or made (so two calls never initdb at once).
    template: Mutex<()>,
    cache: Mutex<HashMap<Vec<String>, u64>>,
}

impl Sizer {
    /// A sizer keeping its template under `<data_dir>/sizing`.
    pub(crate) fn new(data_dir: &Path) -> Sizer {
        Sizer {
            dir: data_dir.join("sizing"),
            template: Mutex::new(()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn pgdata(&self) -> PathBuf {
        self.dir.join("pgdata")
    }

    /// Makes the template unless a complete one exists (a half-made one is made again).
    fn ensure_template(&self, prov: &LocalProvisioner) -> Result<(), ProvisionError> {
        let _g = self.template.lock().unwrap_or_else(|p| p.into_inner());
        let marker = self.dir.join("initialized");
        if marker.exists() {
            return Ok(());
        }
        let io = |what: &'static str| {
            move |source| ProvisionError::Io {
                what: what.to_string(),
                source,
            }
        };
        if self.pgdata().exists() {
            std::fs::remove_dir_all(self.pgdata()).map_err(io("removing sizing template"))?;
        }
        std::fs::create_dir_all(&self.dir).map_err(io("creating sizing dir"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting sizing dir"))?;
        prov.chown_scratch(&self.dir)?;
        // Never started: no login can reach it, so no password is needed.
        let mut cmd = prov.scratch_command("initdb", &self.dir);
        cmd.arg("-D")
            .arg(self.pgdata())
            .args(["--auth=reject", "-U", "pgbay_sizing", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"]);
        prov.run(cmd, "initdb (sizing template)")?;
        std::fs::write(&marker, b"").map_err(io("writing sizing marker"))?;
        Ok(())
    }

    /// `shared_memory_size` (MB) of a cluster with these settings (`(name, value as
    /// postgresql.conf spells it)`, see [`ClusterConfig::entries`]).
    pub(crate) fn shared_memory_mb(
        &self,
        prov: &LocalProvisioner,
        settings: &[(String, String)],
    ) -> Result<u64, SizingError> {
        let args: Vec<String> = settings
            .iter()
            .map(|(k, v)| format!("{k}={}", unquote(v)))
            .collect();
        if let Some(mb) = self.cached(&args) {
            return Ok(mb);
        }
        self.ensure_template(prov)?;
        let mut cmd = prov.scratch_command("postgres", &self.dir);
        cmd.arg("-D")
            .arg(self.pgdata())
            .args(["-C", "shared_memory_size"]);
        for a in &args {
            cmd.arg("-c").arg(a);
        }
        let out = cmd.output().map_err(|source| ProvisionError::Io {
            what: "running postgres -C shared_memory_size".into(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            if let Ok(mb) = stdout.trim().parse::<u64>() {
                self.remember(args, mb);
                return Ok(mb);
            }
        }
        if let Some(refused) = refused_setting(settings, &stderr) {
            return Err(refused);
        }
        // Anything else is the template's fault: make it again next time.
        let _ = std::fs::remove_file(self.dir.join("initialized"));
        Err(ProvisionError::Program {
            program: "postgres -C shared_memory_size".into(),
            output: format!("{}{}", stdout.trim(), stderr.trim()),
        }
        .into())
    }

    fn cached(&self, args: &[String]) -> Option<u64> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(args).copied()
    }

    fn remember(&self, args: Vec<String>, mb: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(args, mb);
    }
}

/// A postgresql.conf value as a `-c name=value` argument takes it (no quotes).
fn unquote(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => v.to_string(),
    }
}

/// The setting PostgreSQL's error names (`invalid value for parameter "TimeZone": ...`), mapped
/// to the configuration's spelling.
fn refused_setting(settings: &[(String, String)], stderr: &str) -> Option<SizingError> {
    let line = stderr.lines().find(|l| l.contains("FATAL:"))?;
    let named = line.split('"').nth(1)?;
    let setting = settings
        .iter()
        .map(|(k, _)| k)
        .find(|k| k.eq_ignore_ascii_case(named))?
        .clone();
    let why = line
        .split_once("FATAL:")
        .map(|(_, w)| w.trim())
        .unwrap_or(line);
    let detail = stderr
        .lines()
        .find_map(|l| l.split_once("DETAIL:").map(|(_, d)| d.trim()));
    let why = match detail {
        Some(d) => format!("{why} ({d})"),
        None => why.to_string(),
    };
    Some(SizingError::Refused { setting, why })
}

impl Control {
    /// Makes the sizing template in the background (an initdb, about a second, once per data
    /// dir), so that the first check of a configuration does not wait for it.
    pub(crate) fn warm_sizing(&self) {
        let control = self.clone();
        tokio::task::spawn_blocking(move || {
            let inner = &control.inner;
            if let Err(e) = inner.sizing.ensure_template(&inner.prov) {
                tracing::warn!(error = %e, "making the sizing template (retried at the first check)");
            }
        });
    }

    /// Refuses (400) a configuration of `after` that does not fit its plan's memory, naming the
    /// fields that changed from `before` (or were given, for a new service) and the amounts.
    /// Nothing is checked when no memory-bearing field changed, so a service made before this
    /// check can still change anything else.
    pub(crate) async fn check_fits_plan(
        &self,
        before: Option<&ServiceRecord>,
        after: &ServiceRecord,
    ) -> Result<(), ControlError> {
        let fields = memory_fields(before, after);
        if fields.is_empty() {
            return Ok(());
        }
        let settings: Vec<(String, String)> = ClusterConfig::of(after)
            .entries()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let control = self.clone();
        let shared = tokio::task::spawn_blocking(move || {
            let inner = &control.inner;
            inner.sizing.shared_memory_mb(&inner.prov, &settings)
        })
        .await?;
        let shared = match shared {
            Ok(mb) => mb,
            Err(SizingError::Refused { setting, why }) => {
                let field = fields
                    .iter()
                    .find(|f| f.ends_with(&format!(".{setting}")))
                    .cloned()
                    .unwrap_or_else(|| pg_settings::FIELD.to_string());
                return Err(InputError::new(
                    &field,
                    format!("PostgreSQL refused setting `{setting}`: {why}"),
                )
                .into());
            }
            Err(e) => return Err(ControlError::internal(e)),
        };
        let d = demand(after, shared);
        let plan = plan_of(after);
        let have = plan.memory_gib * 1024;
        if d.need_mb() <= have {
            return Ok(());
        }
        let named: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
        Err(InputError {
            field: fields[0].clone(),
            message: format!(
                "invalid field{} {}: the cluster would need {} MB of memory, more than the {} MB \
                 of plan {}: {}",
                if fields.len() > 1 { "s" } else { "" },
                named.join(", "),
                d.need_mb(),
                have,
                plan.name,
                d.breakdown()
            ),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans;

    fn defaults(plan: &str, shared_memory_mb: u64) -> Demand {
        let m = plans::lookup(plan).unwrap().memory_settings(None, None);
        Demand {
            shared_memory_mb,
            max_connections: m.max_connections,
            work_mem_kb: m.work_mem_kb,
            autovacuum_workers: 3,
            worker_processes: 8,
            wal_senders: 10,
        }
    }

    #[test]
    fn budget_adds_shared_memory_slots_autovacuum_and_a_quarter_of_work_mem() {
        // hobbyist-2 as created: 555 MB of shared memory (PostgreSQL 15's answer for
        // shared_buffers 512MB, max_connections 200), 222 slots, work_mem 2596 kB for 50.
        let d = defaults("hobbyist-2", 555);
        assert_eq!(d.slots(), 222);
        assert_eq!(d.working_connections(), 50);
        assert_eq!(d.work_mem_mb(), (50 * 2596u64).div_ceil(1024));
        assert_eq!(d.need_mb(), 555 + 444 + 192 + 127);
        assert!(d.breakdown().ends_with(&format!("= {} MB", d.need_mb())));
        // The attack: 12846 MB of shared memory on a 2048 MB plan.
        assert!(defaults("hobbyist-2", 12846).need_mb() > 2048);
        // shared-buffers-percentage 60 on hobbyist-2 is capped at 1 GB (1079 MB of shared memory
        // with it) and fits.
        assert!(defaults("hobbyist-2", 1079).need_mb() <= 2048);
        let d = Demand {
            work_mem_kb: 32 * 1024,
            ..defaults("hobbyist-2", 555)
        };
        assert!(
            d.need_mb() > 2048,
            "work-mem 32 on hobbyist-2: {}",
            d.need_mb()
        );
    }

    #[test]
    fn every_plan_fits_its_own_defaults() {
        for p in plans::all() {
            let m = p.memory_settings(None, None);
            // shared_buffers plus PostgreSQL's per-connection shared structures (~0.2 MB each,
            // measured: 555 MB for 512 MB and 200 connections) with a margin.
            let shared = m.shared_buffers_mb + m.max_connections / 4 + 64;
            let d = defaults(p.name, shared);
            assert!(
                d.need_mb() <= p.memory_gib * 1024,
                "{}: {}",
                p.name,
                d.breakdown()
            );
        }
    }

    #[test]
    fn values_lose_their_conf_quotes_and_fields_are_spelt_as_the_request() {
        assert_eq!(unquote("'UTC'"), "UTC");
        assert_eq!(unquote("'it''s'"), "it's");
        assert_eq!(unquote("512MB"), "512MB");
        assert_eq!(
            pg_field("autovacuum_max_workers".into()),
            "pg-settings.autovacuum.autovacuum_max_workers"
        );
        assert_eq!(
            pg_field("max_prepared_transactions".into()),
            "pg-settings.max_prepared_transactions"
        );
    }

    /// PostgreSQL 15 itself, on a template made in a temp dir (as `nobody` when root).
    #[test]
    fn postgres_sizes_the_attack_and_names_a_refused_value() {
        let Some(bin) = crate::local::default_bin_dir() else {
            panic!("PostgreSQL binaries are needed");
        };
        let dir = tempfile::tempdir().unwrap();
        let prov = LocalProvisioner::new(bin, dir.path().join("services"), "127.0.0.1".into());
        prov.ensure_traversable(dir.path()).unwrap();
        let sizer = Sizer::new(dir.path());
        let conf = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = [("shared_buffers", "512MB"), ("max_connections", "200")];
        let plain = sizer.shared_memory_mb(&prov, &conf(&base)).unwrap();
        assert!((512..700).contains(&plain), "{plain}");
        let mut attack = base.to_vec();
        attack.push(("max_prepared_transactions", "10000"));
        attack.push(("max_pred_locks_per_transaction", "5000"));
        let big = sizer.shared_memory_mb(&prov, &conf(&attack)).unwrap();
        assert!(big > 10_000, "{big}");
        let mut bad = base.to_vec();
        bad.push(("timezone", "'Mars/Olympus'"));
        match sizer.shared_memory_mb(&prov, &conf(&bad)) {
            Err(SizingError::Refused { setting, why }) => {
                assert_eq!(setting, "timezone");
                assert!(why.contains("Mars/Olympus"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The template survives; a second sizer on the same data dir reuses it.
        assert!(dir.path().join("sizing/initialized").exists());
        let again = Sizer::new(dir.path());
        assert_eq!(again.shared_memory_mb(&prov, &conf(&base)).unwrap(), plain);
    }
}
