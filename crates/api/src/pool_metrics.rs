//! Per-pool Prometheus series. The api crate cannot see the pooler (see ARCHITECTURE.md), so
//! the binary hands the router a `PoolMetricsSource` (implemented over the pooler) and `/metrics`
//! renders whatever samples it returns.

use std::fmt::Write;
use std::sync::Arc;

/// One pool's numbers at scrape time. Times are in microseconds, as the pooler counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSample {
    pub service: String,
    pub pool: String,
    pub user: String,
    pub clients_active: u64,
    pub clients_waiting: u64,
    pub servers_active: u64,
    pub servers_idle: u64,
    pub servers_used: u64,
    pub servers_login: u64,
    pub max_wait_us: u64,
    pub transactions: u64,
    pub queries: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub transaction_time_us: u64,
    pub query_time_us: u64,
    pub wait_time_us: u64,
    pub server_assignments: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub client_binds: u64,
    pub server_binds: u64,
}

/// How many connections to a service's pooler port were refused before login, for one reason
/// (`pending_logins`, `fd_reserve`, `max_client_conn`, `login_timeout`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusedSample {
    pub service: String,
    pub reason: String,
    pub total: u64,
}

/// Where `/metrics` gets the per-pool samples from.
pub trait PoolMetricsSource: Send + Sync {
    fn pool_samples(&self) -> Vec<PoolSample>;

    /// Connections refused before login, per service and reason.
    fn refused_samples(&self) -> Vec<RefusedSample> {
        Vec::new()
    }
}

/// The router's handle on the source.
#[derive(Clone)]
pub struct PoolMetrics(pub Arc<dyn PoolMetricsSource>);

type Pick = fn(&PoolSample) -> f64;

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// (name, type, help, value)
const SERIES: &[(&str, &str, &str, Pick)] = &[
    (
        "pgbay_pool_clients_active",
        "gauge",
        "Clients attached to a server connection (CL_ACTIVE).",
        |s| s.clients_active as f64,
    ),
    (
        "pgbay_pool_clients_waiting",
        "gauge",
        "Clients waiting for a server connection (CL_WAITING).",
        |s| s.clients_waiting as f64,
    ),
    (
        "pgbay_pool_servers_active",
        "gauge",
        "Server connections lent to a client (SV_ACTIVE).",
        |s| s.servers_active as f64,
    ),
    (
        "pgbay_pool_servers_idle",
        "gauge",
        "Server connections ready in the pool (SV_IDLE).",
        |s| s.servers_idle as f64,
    ),
    (
        "pgbay_pool_servers_used",
        "gauge",
        "Server connections being reset after use (SV_USED).",
        |s| s.servers_used as f64,
    ),
    (
        "pgbay_pool_servers_login",
        "gauge",
        "Server connections logging in (SV_LOGIN).",
        |s| s.servers_login as f64,
    ),
    (
        "pgbay_pool_max_wait_seconds",
        "gauge",
        "How long the oldest waiting client has waited.",
        |s| secs(s.max_wait_us),
    ),
    (
        "pgbay_pool_transactions_total",
        "counter",
        "Transactions served.",
        |s| s.transactions as f64,
    ),
    (
        "pgbay_pool_queries_total",
        "counter",
        "Queries served.",
        |s| s.queries as f64,
    ),
    (
        "pgbay_pool_received_bytes_total",
        "counter",
        "Bytes received from clients.",
        |s| s.received_bytes as f64,
    ),
    (
        "pgbay_pool_sent_bytes_total",
        "counter",
        "Bytes sent to clients.",
        |s| s.sent_bytes as f64,
    ),
    (
        "pgbay_pool_transaction_time_seconds_total",
        "counter",
        "Time spent in transactions.",
        |s| secs(s.transaction_time_us),
    ),
    (
        "pgbay_pool_query_time_seconds_total",
        "counter",
        "Time spent in queries.",
        |s| secs(s.query_time_us),
    ),
    (
        "pgbay_pool_wait_time_seconds_total",
        "counter",
        "Time clients spent waiting for a server connection.",
        |s| secs(s.wait_time_us),
    ),
    (
        "pgbay_pool_server_assignments_total",
        "counter",
        "Server connections assigned to clients.",
        |s| s.server_assignments as f64,
    ),
    (
        "pgbay_pool_client_parses_total",
        "counter",
        "Parse messages from clients.",
        |s| s.client_parses as f64,
    ),
    (
        "pgbay_pool_server_parses_total",
        "counter",
        "Parse messages sent to servers.",
        |s| s.server_parses as f64,
    ),
    (
        "pgbay_pool_client_binds_total",
        "counter",
        "Bind messages from clients.",
        |s| s.client_binds as f64,
    ),
    (
        "pgbay_pool_server_binds_total",
        "counter",
        "Bind messages sent to servers.",
        |s| s.server_binds as f64,
    ),
];

/// A label value in the exposition format's escaping.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the per-pool families (HELP/TYPE once per family, then one line per pool).
pub fn render(out: &mut String, samples: &[PoolSample]) {
    for (name, kind, help, pick) in SERIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in samples {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\",pool=\"{}\",user=\"{}\"}} {}",
                escape(&s.service),
                escape(&s.pool),
                escape(&s.user),
                pick(s)
            );
        }
    }
}

/// Appends `pgbay_pooler_refused_connections_total`, one line per service and reason.
pub fn render_refused(out: &mut String, samples: &[RefusedSample]) {
    let name = "pgbay_pooler_refused_connections_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections to a service's pooler port refused before login, by reason.\n\
         # TYPE {name} counter"
    );
    for s in samples {
        let _ = writeln!(
            out,
            "{name}{{service=\"{}\",reason=\"{}\"}} {}",
            escape(&s.service),
            escape(&s.reason),
            s.total
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_render_one_line_per_service_and_reason() {
        let mut out = String::new();
        render_refused(
            &mut out,
            &[RefusedSample {
                service: "a\"b".into(),
                reason: "pending_logins".into(),
                total: 7,
            }],
        );
        assert_eq!(
            out,
            "# HELP pgbay_pooler_refused_connections_total Connections to a service's pooler port \
             refused before login, by reason.\n\
             # TYPE pgbay_pooler_refused_connections_total counter\n\
             pgbay_pooler_refused_connections_total{service=\"a\\\"b\",reason=\"pending_logins\"} 7\n"
        );
    }
}
