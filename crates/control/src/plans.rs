//! The plan catalogue: what each plan name means (memory, CPUs, disk, nodes, as in Exoscale's
//! public DBaaS PostgreSQL catalogue) and the PostgreSQL settings pgbay derives from it when it
//! writes a cluster's configuration (at creation, at every start, and when the plan changes).
//!
//! pgbay runs one PostgreSQL node per service on one machine, whatever the plan's node count, and
//! does not enforce the plan's CPU or disk figures; it does size the cluster's memory settings
//! after the plan: `shared_buffers` a quarter of the plan's memory (or `shared-buffers-percentage`)
//! but at most [`SHARED_BUFFERS_CAP_MB`] per cluster so that one machine can run many clusters,
//! `effective_cache_size` three quarters, `work_mem` 1 MB + 0.075% of the memory (at most 32 MB,
//! or `work-mem`), and `max_connections` 50 per GiB between 200 and 1000.

/// One plan of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSpec {
    /// Plan name (`tier-memory`).
    pub name: &'static str,
    /// Memory per node, GiB.
    pub memory_gib: u64,
    /// CPUs per node.
    pub cpus: u32,
    /// Disk space, GiB.
    pub disk_gib: u64,
    /// Nodes of the plan (pgbay runs one).
    pub nodes: u32,
}

/// The largest `shared_buffers` pgbay gives one cluster, in MB.
pub const SHARED_BUFFERS_CAP_MB: u64 = 1024;

const fn plan(
    name: &'static str,
    memory_gib: u64,
    cpus: u32,
    disk_gib: u64,
    nodes: u32,
) -> PlanSpec {
    PlanSpec {
        name,
        memory_gib,
        cpus,
        disk_gib,
        nodes,
    }
}

/// The catalogue.
const PLANS: [PlanSpec; 22] = [
    plan("hobbyist-2", 2, 1, 8, 1),
    plan("startup-4", 4, 2, 80, 1),
    plan("startup-8", 8, 2, 175, 1),
    plan("startup-16", 16, 4, 350, 1),
    plan("startup-32", 32, 8, 700, 1),
    plan("startup-64", 64, 16, 1000, 1),
    plan("startup-128", 128, 32, 1500, 1),
    plan("startup-225", 225, 60, 2000, 1),
    plan("business-4", 4, 2, 80, 2),
    plan("business-8", 8, 2, 175, 2),
    plan("business-16", 16, 4, 350, 2),
    plan("business-32", 32, 8, 700, 2),
    plan("business-64", 64, 16, 1000, 2),
    plan("business-128", 128, 32, 1500, 2),
    plan("business-225", 225, 60, 2000, 2),
    plan("premium-4", 4, 2, 80, 3),
    plan("premium-8", 8, 2, 175, 3),
    plan("premium-16", 16, 4, 350, 3),
    plan("premium-32", 32, 8, 700, 3),
    plan("premium-64", 64, 16, 1000, 3),
    plan("premium-128", 128, 32, 1500, 3),
    plan("premium-225", 225, 60, 2000, 3),
];

/// Every plan, smallest first within a tier.
pub fn all() -> impl Iterator<Item = &'static PlanSpec> {
    PLANS.iter()
}

/// The plan named `name`, if the catalogue has it.
pub fn lookup(name: &str) -> Option<&'static PlanSpec> {
    all().find(|p| p.name == name)
}

/// The memory-derived settings of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySettings {
    /// `shared_buffers`, MB.
    pub shared_buffers_mb: u64,
    /// `effective_cache_size`, MB.
    pub effective_cache_size_mb: u64,
    /// `max_connections`.
    pub max_connections: u64,
    /// `work_mem`, kB.
    pub work_mem_kb: u64,
}

impl PlanSpec {
    /// Memory per node in bytes (the document's `node-memory`).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_gib << 30
    }

    /// Disk space in bytes (the document's `disk-space`/`disk-size`).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_gib << 30
    }

    /// The settings pgbay writes for this plan, with the service's overrides
    /// (`shared-buffers-percentage`, `work-mem` in MB).
    pub fn memory_settings(
        &self,
        shared_buffers_percentage: Option<u32>,
        work_mem_mb: Option<u32>,
    ) -> MemorySettings {
        let mem_mb = self.memory_gib * 1024;
        let pct = u64::from(shared_buffers_percentage.unwrap_or(25));
        let work_mem_kb = match work_mem_mb {
            Some(mb) => u64::from(mb) * 1024,
            None => (1024 + mem_mb * 1024 * 75 / 100_000).min(32 * 1024),
        };
        MemorySettings {
            shared_buffers_mb: (mem_mb * pct / 100).min(SHARED_BUFFERS_CAP_MB),
            effective_cache_size_mb: mem_mb * 3 / 4,
            max_connections: (self.memory_gib * 50).clamp(200, 1000),
            work_mem_kb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_and_derived_settings() {
        assert_eq!(all().count(), 22);
        let h = lookup("hobbyist-2").unwrap();
        let m = h.memory_settings(None, None);
        assert_eq!(m.shared_buffers_mb, 512);
        assert_eq!(m.effective_cache_size_mb, 1536);
        assert_eq!(m.max_connections, 200);
        assert_eq!(m.work_mem_kb, 1024 + 1572);
        let s = lookup("startup-4").unwrap().memory_settings(None, Some(8));
        assert_eq!((s.shared_buffers_mb, s.work_mem_kb), (1024, 8192));
        let big = lookup("premium-225")
            .unwrap()
            .memory_settings(Some(60), None);
        assert_eq!(big.shared_buffers_mb, SHARED_BUFFERS_CAP_MB);
        assert_eq!((big.max_connections, big.work_mem_kb), (1000, 32 * 1024));
        assert_eq!(lookup("business-8").unwrap().nodes, 2);
        assert!(lookup("premium-2").is_none() && lookup("startup-2").is_none());
    }
}
