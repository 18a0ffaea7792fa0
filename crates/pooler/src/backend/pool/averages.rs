//! SHOW STATS/STATS_TOTALS/STATS_AVERAGES: the cumulative counters and their per-period rates.

use super::*;

impl Pool {
    /// SHOW STATS_TOTALS.
    pub fn totals(&self) -> PoolTotals {
        self.counters.0.get()
    }

    /// SHOW STATS_AVERAGES: the last completed period's rates, per second for counts and bytes,
    /// per transaction / per query for times, as PgBouncer computes them.
    pub fn averages(&self) -> PoolTotals {
        self.averages.lock().last
    }

    /// Closes a stats period when one has passed (called by the upkeep).
    pub(super) fn roll_averages(&self, now: Instant) {
        let mut a = self.averages.lock();
        let Some((since, start)) = a.start else {
            a.start = Some((now, self.totals()));
            return;
        };
        let period = now.duration_since(since);
        if period < STATS_PERIOD {
            return;
        }
        let cur = self.totals();
        let d = cur.since(&start);
        let us = period.as_micros().max(1) as u64;
        let rate = |v: u64| ((v as u128) * 1_000_000 / us as u128) as u64;
        let per = |v: u64, n: u64| v.checked_div(n).unwrap_or(0);
        a.last = PoolTotals {
            server_assignments: rate(d.server_assignments),
            xacts: rate(d.xacts),
            queries: rate(d.queries),
            received: rate(d.received),
            sent: rate(d.sent),
            xact_time_us: per(d.xact_time_us, d.xacts),
            query_time_us: per(d.query_time_us, d.queries),
            wait_time_us: per(d.wait_time_us, d.server_assignments),
            client_parses: rate(d.client_parses),
            server_parses: rate(d.server_parses),
            client_binds: rate(d.client_binds),
            server_binds: rate(d.server_binds),
        };
        a.start = Some((now, cur));
    }
}
