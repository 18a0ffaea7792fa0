//! Service metrics for `POST /dbaas-service-metrics/{name}`: a background sampler reads each
//! running service's `pg_stat_database` every [`SAMPLE_EVERY`] and keeps, per service and per
//! period (hour, day, week, month, year), a bounded ring of points: connections (`numbackends`),
//! transactions per second (delta of `xact_commit + xact_rollback` over the sampling interval),
//! cache hit ratio (delta of `blks_hit` over `blks_hit + blks_read`, percent) and database size
//! (`pg_database_size` of every database). Each point of a period is the latest sample taken in
//! its interval; memory per service is bounded by the rings' capacities (about 1,300 points).
//!
//! Pool client/server counts live in the pooler, which control cannot import: the binary installs
//! a [`PoolStats`] with [`Control::set_pool_stats`] and the sampler records what it answers.
//! Without one, the pool series stay empty.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::control::{locked, Control};
use crate::model::ServiceState;

/// How often services are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The pools' connection counts of one service, as the pooler reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    /// Client connections of all its pools.
    pub clients: u64,
    /// Server connections of all its pools.
    pub servers: u64,
}

/// Where the sampler gets pool counts: filled by the binary, which sees the pooler.
pub trait PoolStats: Send + Sync {
    /// Counts of service `service`, if the pooler serves it.
    fn pool_counts(&self, service: &str) -> Option<PoolCounts>;
}

/// A metrics period of the document (`period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Last hour, a point per 30 s.
    Hour,
    /// Last day, a point per 5 min.
    Day,
    /// Last week, a point per 30 min.
    Week,
    /// Last month, a point per 3 h.
    Month,
    /// Last year, a point per day.
    Year,
}

impl Period {
    /// Every period, in ring order.
    pub const ALL: [Period; 5] = [
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Year,
    ];

    /// Parses the document's spelling.
    pub fn parse(s: &str) -> Option<Period> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        }
    }

    /// (seconds per point, points kept).
    fn ring(self) -> (i64, usize) {
        match self {
            Period::Hour => (30, 120),
            Period::Day => (300, 288),
            Period::Week => (1800, 336),
            Period::Month => (10_800, 240),
            Period::Year => (86_400, 366),
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// One sample of a service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Server connections (`numbackends`, pgbay's own sampling session included).
    pub connections: f64,
    /// Transactions per second since the previous sample.
    pub tps: f64,
    /// Buffer cache hit ratio since the previous sample, percent (100 when nothing was read).
    pub cache_hit_ratio: f64,
    /// Size of all databases, bytes.
    pub database_size: f64,
    /// Pool counts, when the pooler reports them.
    pub pools: Option<PoolCounts>,
}

/// Cumulative counters of the previous sample.
#[derive(Debug, Clone, Copy)]
struct Counters {
    time: DateTime<Utc>,
    xacts: f64,
    hit: f64,
    read: f64,
}

#[derive(Debug, Default)]
struct ServiceSeries {
    last: Option<Counters>,
    rings: [VecDeque<Point>; 5],
}

impl ServiceSeries {
    fn push(&mut self, p: Point) {
        for period in Period::ALL {
            let (step, cap) = period.ring();
            let ring = &mut self.rings[period.index()];
            let bucket = p.time.timestamp().div_euclid(step);
            if ring
                .back()
                .is_some_and(|b| b.time.timestamp().div_euclid(step) == bucket)
            {
                ring.pop_back();
            }
            ring.push_back(p);
            while ring.len() > cap {
                ring.pop_front();
            }
        }
    }
}

/// The rings of every service and the pool-count hook.
#[derive(Default)]
pub(crate) struct Metrics {
    series: StdMutex<HashMap<String, ServiceSeries>>,
    pool_stats: StdMutex<Option<Arc<dyn PoolStats>>>,
}

impl Control {
    /// Installs the source of pool counts (the binary's wiring to the pooler).
    pub fn set_pool_stats(&self, stats: Arc<dyn PoolStats>) {
        *locked(&self.inner.metrics.pool_stats) = Some(stats);
    }

    /// The points of `service` for `period`, oldest first (404 for an unknown service).
    pub async fn service_metrics(
        &self,
        service: &crate::input::ServiceName,
        period: Period,
    ) -> Result<Vec<Point>, crate::ControlError> {
        let s = self.existing(service).await?;
        let series = locked(&self.inner.metrics.series);
        Ok(series
            .get(&s.name)
            .map(|m| m.rings[period.index()].iter().copied().collect())
            .unwrap_or_default())
    }

    /// The sampler loop (spawned at start).
    pub(crate) async fn sample_metrics(&self) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let services = match self.own_services().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: listing services");
                    continue;
                }
            };
            locked(&self.inner.metrics.series)
                .retain(|name, _| services.iter().any(|s| &s.name == name));
            for s in services.iter().filter(|s| s.state == ServiceState::Running) {
                if let Err(e) = self.sample_one(s).await {
                    tracing::debug!(service = %s.name, error = %e, "metrics: sampling");
                }
            }
        }
    }

    async fn sample_one(&self, s: &crate::model::ServiceRecord) -> Result<(), String> {
        let t = self.admin_target(s).await.map_err(|e| e.to_string())?;
        let c = pgbay_cluster::admin::connect(&t, "postgres")
            .await
            .map_err(|e| e.to_string())?;
        let row = tokio::time::timeout(
            Duration::from_secs(5),
            c.query_one(
                "SELECT coalesce(sum(numbackends), 0)::float8,
                        coalesce(sum(xact_commit + xact_rollback), 0)::float8,
                        coalesce(sum(blks_hit), 0)::float8,
                        coalesce(sum(blks_read), 0)::float8,
                        (SELECT coalesce(sum(pg_database_size(oid)), 0)::float8
                           FROM pg_database WHERE datallowconn)
                   FROM pg_stat_database WHERE datname IS NOT NULL",
                &[],
            ),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
        if self.backups_enabled() {
            let archiver = tokio::time::timeout(
                Duration::from_secs(5),
                c.query_one(
                    "SELECT failed_count, last_failed_wal FROM pg_stat_archiver",
                    &[],
                ),
            )
            .await;
            if let Ok(Ok(a)) = archiver {
                self.archiver_sampled(&s.name, a.get(0), a.get(1));
            }
        }
        let now = Utc::now();
        let cur = Counters {
            time: now,
            xacts: row.get(1),
            hit: row.get(2),
            read: row.get(3),
        };
        let pools = locked(&self.inner.metrics.pool_stats)
            .as_ref()
            .and_then(|p| p.pool_counts(&s.name));
        let mut series = locked(&self.inner.metrics.series);
        let entry = series.entry(s.name.clone()).or_default();
        let prev = entry.last.replace(cur);
        // The first sample of a service only sets the counters the next one is measured from.
        let Some(prev) = prev else { return Ok(()) };
        let secs = (cur.time - prev.time).num_milliseconds() as f64 / 1000.0;
        let (dh, dr) = (
            (cur.hit - prev.hit).max(0.0),
            (cur.read - prev.read).max(0.0),
        );
        entry.push(Point {
            time: now,
            connections: row.get(0),
            tps: if secs > 0.0 {
                (cur.xacts - prev.xacts).max(0.0) / secs
            } else {
                0.0
            },
            cache_hit_ratio: if dh + dr > 0.0 {
                100.0 * dh / (dh + dr)
            } else {
                100.0
            },
            database_size: row.get(4),
            pools,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_keep_one_point_per_interval_and_are_bounded() {
        let mut s = ServiceSeries::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for i in 0..10_000i64 {
            s.push(Point {
                time: t0 + chrono::Duration::seconds(i * 5),
                connections: i as f64,
                tps: 0.0,
                cache_hit_ratio: 100.0,
                database_size: 0.0,
                pools: None,
            });
        }
        for p in Period::ALL {
            assert!(s.rings[p.index()].len() <= p.ring().1);
        }
        assert_eq!(s.rings[Period::Hour.index()].len(), 120);
        assert_eq!(
            s.rings[Period::Hour.index()].back().unwrap().connections,
            9999.0
        );
        assert_eq!(Period::parse("week"), Some(Period::Week));
        assert_eq!(Period::parse("minute"), None);
    }
}
