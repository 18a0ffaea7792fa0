//! Sizing: whether a service's configuration fits its plan's memory, checked before anything
//! changes (at creation, and on every change of plan, `work-mem`, `shared-buffers-percentage` or a
//! `pg-settings` entry that PostgreSQL takes only at start).
//!
//! Settings are bounded one by one by the document's schema, but their costs multiply: two
//! allowed values (`max_prepared_transactions=10000`, `max_pred_locks_per_transaction=5000`) make a
//! 2 GiB cluster allocate 12.5 GB of shared memory. Rather than model PostgreSQL's arithmetic,
//! pgbay asks PostgreSQL 15: `postgres -C shared_memory_size` on the candidate configuration, run
//! against a template data directory by `pgbay_cluster::sizing::Sizer` (~20 ms a run, answers
//! cached per candidate).
//!
//! The budget (see [`Demand`]): shared memory + every process slot's own memory + autovacuum's
//! working memory + `work_mem` for a quarter of the connections must not exceed the plan's memory.

use pgbay_cluster::sizing::SizingError;

use crate::cluster_config::{plan_of, ClusterConfig};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{InputError, Subject};
use crate::model::ServiceRecord;

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
pub(crate) fn memory_fields(before: Option<&ServiceRecord>, after: &ServiceRecord) -> Vec<Subject> {
    let mut fields = Vec::new();
    let Some(before) = before else {
        if after.work_mem.is_some() {
            fields.push(Subject::WorkMem);
        }
        if after.shared_buffers_percentage.is_some() {
            fields.push(Subject::SharedBuffersPercentage);
        }
        fields.extend(startup_settings(after).into_keys().map(Subject::PgSetting));
        return fields;
    };
    if before.plan != after.plan {
        fields.push(Subject::Plan);
    }
    if before.work_mem != after.work_mem {
        fields.push(Subject::WorkMem);
    }
    if before.shared_buffers_percentage != after.shared_buffers_percentage {
        fields.push(Subject::SharedBuffersPercentage);
    }
    let (old, new) = (startup_settings(before), startup_settings(after));
    for k in new.keys().chain(old.keys()) {
        let f = Subject::PgSetting(k.clone());
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
                    .find(|f| **f == Subject::PgSetting(setting.clone()))
                    .cloned()
                    .unwrap_or(Subject::PgSettings);
                return Err(InputError::of(
                    field,
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
        let subject = match <[Subject; 1]>::try_from(fields) {
            Ok([one]) => one,
            Err(several) => Subject::Several(several),
        };
        Err(InputError::of(
            subject,
            format!(
                "the cluster would need {} MB of memory, more than the {} MB of plan {}: {}",
                d.need_mb(),
                have,
                plan.name,
                d.breakdown()
            ),
        )
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
}
