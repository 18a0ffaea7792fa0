//! The SHOW commands: PgBouncer 1.25.1's columns, in its order and with its types, one row per
//! pool (the `database` column is the pool's name) or per user of the service's pools.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::result::{v, Answer, Column, Type::*};
use super::Console;
use crate::backend::Pool;
use crate::config::PoolMode;
use crate::sockets::SocketInfo;
use crate::stats::{now_us, ClientState, ServerState};

pub const POOLS: &[Column] = &[
    ("database", Text),
    ("user", Text),
    ("cl_active", Int4),
    ("cl_waiting", Int4),
    ("cl_active_cancel_req", Int4),
    ("cl_waiting_cancel_req", Int4),
    ("sv_active", Int4),
    ("sv_active_cancel", Int4),
    ("sv_being_canceled", Int4),
    ("sv_idle", Int4),
    ("sv_used", Int4),
    ("sv_tested", Int4),
    ("sv_login", Int4),
    ("maxwait", Int4),
    ("maxwait_us", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
];

pub const STATS: &[Column] = &[
    ("database", Text),
    ("total_server_assignment_count", Numeric),
    ("total_xact_count", Numeric),
    ("total_query_count", Numeric),
    ("total_received", Numeric),
    ("total_sent", Numeric),
    ("total_xact_time", Numeric),
    ("total_query_time", Numeric),
    ("total_wait_time", Numeric),
    ("total_client_parse_count", Numeric),
    ("total_server_parse_count", Numeric),
    ("total_bind_count", Numeric),
    ("avg_server_assignment_count", Numeric),
    ("avg_xact_count", Numeric),
    ("avg_query_count", Numeric),
    ("avg_recv", Numeric),
    ("avg_sent", Numeric),
    ("avg_xact_time", Numeric),
    ("avg_query_time", Numeric),
    ("avg_wait_time", Numeric),
    ("avg_client_parse_count", Numeric),
    ("avg_server_parse_count", Numeric),
    ("avg_bind_count", Numeric),
];

pub const STATS_TOTALS: &[Column] = &[
    ("database", Text),
    ("server_assignment_count", Numeric),
    ("xact_count", Numeric),
    ("query_count", Numeric),
    ("bytes_received", Numeric),
    ("bytes_sent", Numeric),
    ("xact_time", Numeric),
    ("query_time", Numeric),
    ("wait_time", Numeric),
    ("client_parse_count", Numeric),
    ("server_parse_count", Numeric),
    ("bind_count", Numeric),
];

pub const STATS_AVERAGES: &[Column] = &[
    ("database", Text),
    ("server_assignment_count", Numeric),
    ("xact_count", Numeric),
    ("query_count", Numeric),
    ("bytes_received", Numeric),
    ("bytes_sent", Numeric),
    ("xact_time", Numeric),
    ("query_time", Numeric),
    ("wait_time", Numeric),
    ("avg_client_parse_count", Numeric),
    ("avg_server_parse_count", Numeric),
    ("avg_bind_count", Numeric),
];

/// SHOW CLIENTS and SHOW SERVERS share PgBouncer's socket columns.
pub const SOCKETS: &[Column] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int4),
    ("id", Int4),
];

pub const DATABASES: &[Column] = &[
    ("name", Text),
    ("host", Text),
    ("port", Int4),
    ("database", Text),
    ("force_user", Text),
    ("pool_size", Int4),
    ("min_pool_size", Int4),
    ("reserve_pool_size", Int4),
    ("server_lifetime", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
    ("max_connections", Int4),
    ("current_connections", Int4),
    ("max_client_connections", Int4),
    ("current_client_connections", Int4),
    ("paused", Int4),
    ("disabled", Int4),
];

pub const USERS: &[Column] = &[
    ("name", Text),
    ("pool_size", Text),
    ("reserve_pool_size", Text),
    ("pool_mode", Text),
    ("max_user_connections", Int4),
    ("current_connections", Int4),
    ("max_user_client_connections", Int4),
    ("current_client_connections", Int4),
];

pub const CONFIG: &[Column] = &[
    ("key", Text),
    ("value", Text),
    ("default", Text),
    ("changeable", Text),
];

pub const LISTS: &[Column] = &[("list", Text), ("items", Int4)];
pub const VERSION: &[Column] = &[("version", Text)];
pub const STATE: &[Column] = &[("key", Text), ("value", Text)];

/// The column list of a SHOW command, if it is one (for Describe and for the answer).
pub fn columns(what: &str) -> Option<&'static [Column]> {
    Some(match what {
        "POOLS" => POOLS,
        "STATS" => STATS,
        "STATS_TOTALS" => STATS_TOTALS,
        "STATS_AVERAGES" => STATS_AVERAGES,
        "CLIENTS" | "SERVERS" => SOCKETS,
        "DATABASES" => DATABASES,
        "USERS" => USERS,
        "CONFIG" => CONFIG,
        "LISTS" => LISTS,
        "VERSION" => VERSION,
        "STATE" => STATE,
        _ => return None,
    })
}

/// Answers `SHOW what` (upper-cased), or None for an unknown SHOW.
pub fn show(console: &Console, what: &str) -> Option<Answer> {
    let pools = console.pools();
    let rows = match what {
        "POOLS" => pools.iter().map(pool_row).collect(),
        "STATS" => pools
            .iter()
            .map(|p| {
                let t = p.totals();
                let a = p.averages();
                let mut row = vec![v(&p.name)];
                row.extend(stats_fields(&t).into_iter().map(v));
                row.extend(stats_fields(&a).into_iter().map(v));
                row
            })
            .collect(),
        "STATS_TOTALS" | "STATS_AVERAGES" => pools
            .iter()
            .map(|p| {
                let t = if what == "STATS_TOTALS" {
                    p.totals()
                } else {
                    p.averages()
                };
                let mut row = vec![v(&p.name)];
                row.extend(stats_fields(&t).into_iter().map(v));
                row
            })
            .collect(),
        "CLIENTS" => {
            // Each pool lists its own clients; shown oldest first across pools, as logged in.
            let mut clients: Vec<_> = pools.iter().flat_map(|p| p.client_list.live()).collect();
            clients.sort_by_key(|c| c.id);
            clients
                .iter()
                .map(|c| socket_row("C", c, client_state(c)))
                .collect()
        }
        "SERVERS" => pools
            .iter()
            .flat_map(|p| p.server_list.live())
            .map(|s| socket_row("S", &s, server_state(&s)))
            .collect(),
        "DATABASES" => pools.iter().map(database_row).collect(),
        "USERS" => users(&pools),
        "CONFIG" => console.config_rows(),
        "LISTS" => lists(console, &pools),
        "VERSION" => vec![vec![v(super::VERSION_TEXT)]],
        "STATE" => {
            let paused = !pools.is_empty() && pools.iter().all(|p| p.is_paused());
            vec![
                vec![v("active"), v(if paused { "no" } else { "yes" })],
                vec![v("paused"), v(if paused { "yes" } else { "no" })],
                vec![v("suspended"), v("no")],
            ]
        }
        _ => return None,
    };
    Some(Answer::rows(columns(what)?, rows))
}

/// PgBouncer's 11 stats in column order (bind_count is the clients' Binds).
fn stats_fields(t: &crate::stats::PoolTotals) -> [u64; 11] {
    [
        t.server_assignments,
        t.xacts,
        t.queries,
        t.received,
        t.sent,
        t.xact_time_us,
        t.query_time_us,
        t.wait_time_us,
        t.client_parses,
        t.server_parses,
        t.client_binds,
    ]
}

fn pool_row(p: &Arc<Pool>) -> Vec<Option<String>> {
    let s = p.stats();
    let st = p.state();
    vec![
        v(&p.name),
        v(&st.cfg.username),
        v(s.cl_active),
        v(s.cl_waiting),
        v(0),
        v(0),
        v(s.sv_active),
        v(0),
        v(0),
        v(s.sv_idle),
        v(s.sv_used),
        v(0),
        v(s.sv_login),
        v(s.maxwait.as_secs()),
        v(s.maxwait.subsec_micros()),
        v(mode(st.cfg.mode)),
        None,
    ]
}

fn mode(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
        PoolMode::Statement => "statement",
    }
}

fn servers(s: &crate::stats::PoolStats) -> u32 {
    s.sv_active + s.sv_idle + s.sv_used + s.sv_login
}

fn clients(s: &crate::stats::PoolStats) -> u32 {
    s.cl_active + s.cl_waiting + s.cl_idle
}

fn database_row(p: &Arc<Pool>) -> Vec<Option<String>> {
    let s = p.stats();
    let st = p.state();
    vec![
        v(&p.name),
        v(&st.backend.host),
        v(st.backend.port),
        v(&st.cfg.database),
        v(&st.cfg.username),
        v(st.cfg.size),
        v(st.settings.min_pool_size),
        v(0),
        v(st.settings.server_lifetime.as_secs()),
        v(mode(st.cfg.mode)),
        None,
        v(0),
        v(servers(&s)),
        v(0),
        v(clients(&s)),
        v(u8::from(p.is_paused())),
        v(0),
    ]
}

/// One row per user that some pool logs in as (pgbay's pools each have one user).
fn users(pools: &[Arc<Pool>]) -> Vec<Vec<Option<String>>> {
    let mut by_user: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for p in pools {
        let s = p.stats();
        let e = by_user.entry(p.state().cfg.username.clone()).or_default();
        e.0 += servers(&s);
        e.1 += clients(&s);
    }
    by_user
        .into_iter()
        .map(|(name, (servers, clients))| {
            vec![
                v(name),
                None,
                None,
                None,
                v(0),
                v(servers),
                v(0),
                v(clients),
            ]
        })
        .collect()
}

fn lists(console: &Console, pools: &[Arc<Pool>]) -> Vec<Vec<Option<String>>> {
    let stats: Vec<_> = pools.iter().map(|p| p.stats()).collect();
    let users: std::collections::BTreeSet<String> = pools
        .iter()
        .map(|p| p.state().cfg.username.clone())
        .collect();
    let used_servers: u32 = stats.iter().map(servers).sum();
    let used_clients = console
        .service
        .clients
        .load(std::sync::atomic::Ordering::Relaxed);
    [
        ("databases", pools.len() as u32),
        ("users", users.len() as u32),
        ("peers", 0),
        ("pools", pools.len() as u32),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ]
    .into_iter()
    .map(|(k, n)| vec![v(k), v(n)])
    .collect()
}

fn client_state(c: &SocketInfo) -> &'static str {
    match c.state.load(Ordering::Relaxed) {
        x if x == ClientState::Active as u8 => "active",
        x if x == ClientState::Waiting as u8 => "waiting",
        _ => "idle",
    }
}

fn server_state(s: &SocketInfo) -> &'static str {
    match s.state.load(Ordering::Relaxed) {
        x if x == ServerState::Active as u8 => "active",
        x if x == ServerState::Idle as u8 => "idle",
        x if x == ServerState::Used as u8 => "used",
        _ => "new",
    }
}

/// A SHOW CLIENTS / SHOW SERVERS row. `ptr` and `link` are the connections' ids in PgBouncer's
/// pointer format; `wait` is how long a waiting client has waited.
fn socket_row(kind: &str, c: &SocketInfo, state: &'static str) -> Vec<Option<String>> {
    let now_us = now_us();
    let wall = SystemTime::now();
    let request_us = c.request_us.load(Ordering::Relaxed);
    let request_time = if request_us == 0 {
        c.connect_time
    } else {
        wall - Duration::from_micros(now_us.saturating_sub(request_us))
    };
    let wait_us = if state == "waiting" && request_us != 0 {
        now_us.saturating_sub(request_us)
    } else {
        0
    };
    let link = c.link.load(Ordering::Relaxed);
    let (addr, port) = match (&c.addr, &c.host) {
        (Some(a), _) => (a.ip().to_string(), a.port()),
        (None, Some((h, p))) => (h.clone(), *p),
        _ => (String::new(), 0),
    };
    vec![
        v(kind),
        v(&c.user),
        v(&c.pool),
        v("none"),
        v(state),
        v(addr),
        v(port),
        c.local.map(|l| l.ip().to_string()),
        c.local.map(|l| l.port().to_string()),
        v(timestamp(c.connect_time)),
        v(timestamp(request_time)),
        v(wait_us / 1_000_000),
        v(wait_us % 1_000_000),
        v(0),
        v(format!("{:#x}", c.id)),
        if link == 0 {
            v("")
        } else {
            v(format!("{link:#x}"))
        },
        v(c.pid),
        v(if c.tls { "TLS" } else { "" }),
        v(&c.application_name),
        v(0),
        v(c.id),
    ]
}

/// "YYYY-MM-DD HH:MM:SS UTC", as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since the epoch to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_777_259);
        assert_eq!(timestamp(t), "2026-11-27 11:00:59 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00 UTC");
    }
}
