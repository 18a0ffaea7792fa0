//! The configuration pgbay writes into a local cluster's `pgbay-settings.conf` (included after
//! `pgbay.conf` by its postgresql.conf): the plan's memory-derived settings, then the service's
//! `pg-settings`. Written at every start and whenever a change of plan, `work-mem`,
//! `shared-buffers-percentage` or `pg-settings` is applied; the diff between two configurations
//! says whether a reload is enough or PostgreSQL must restart.

use std::collections::BTreeMap;

use crate::model::ServiceRecord;
use crate::plans;

/// Plan used for the memory of a service whose stored plan predates the catalogue.
pub const FALLBACK_PLAN: &str = "hobbyist-2";

/// One cluster's settings: name → (value as postgresql.conf spells it, needs a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig(BTreeMap<String, (String, bool)>);

impl ClusterConfig {
    /// The configuration of service `s`.
    pub fn of(s: &ServiceRecord) -> ClusterConfig {
        let plan = plan_of(s);
        let m = plan.memory_settings(s.shared_buffers_percentage, s.work_mem);
        let mut map = BTreeMap::new();
        let mut set = |k: &str, v: String, restart: bool| {
            map.insert(k.to_string(), (v, restart));
        };
        set("shared_buffers", format!("{}MB", m.shared_buffers_mb), true);
        set(
            "effective_cache_size",
            format!("{}MB", m.effective_cache_size_mb),
            false,
        );
        set("max_connections", m.max_connections.to_string(), true);
        set("work_mem", format!("{}kB", m.work_mem_kb), false);
        for (k, v, restart) in s.pg_settings.conf_entries() {
            set(&k, v, restart);
        }
        ClusterConfig(map)
    }

    /// `(name, value as postgresql.conf spells it)` of every setting.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, (v, _))| (k.as_str(), v.as_str()))
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let mut out = String::from(
            "# written by pgbay from the service's plan and pg-settings; do not edit\n",
        );
        for (k, (v, _)) in &self.0 {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out
    }

    /// The settings that differ from `old` (set, changed or unset), and whether any of them
    /// needs a restart.
    pub fn changes_from(&self, old: &ClusterConfig) -> (Vec<String>, bool) {
        let mut changed = Vec::new();
        let mut restart = false;
        for k in self.0.keys().chain(old.0.keys()) {
            let (a, b) = (self.0.get(k), old.0.get(k));
            if a != b && !changed.contains(k) {
                changed.push(k.clone());
                restart |= a.is_some_and(|(_, r)| *r) || b.is_some_and(|(_, r)| *r);
            }
        }
        (changed, restart)
    }
}

/// The plan of `s`: a stored plan the catalogue no longer has falls back to [`FALLBACK_PLAN`].
pub(crate) fn plan_of(s: &ServiceRecord) -> plans::PlanSpec {
    plans::lookup(&s.plan)
        .or_else(|| plans::lookup(FALLBACK_PLAN))
        .copied()
        .unwrap_or(plans::PlanSpec {
            name: FALLBACK_PLAN,
            memory_gib: 2,
            cpus: 1,
            disk_gib: 8,
            nodes: 1,
        })
}
