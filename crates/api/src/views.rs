//! JSON shapes of the Exoscale document (dbaas-service-pg, dbaas-service-common, operation),
//! built from the control plane's records.

use chrono::SecondsFormat;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pgbay_control::plans;
use pgbay_control::{Control, OpState, OperationRecord, ServiceRecord, ServiceState, ServiceView};
use serde_json::{json, Value};

/// Everything but the unreserved characters of RFC 3986 is encoded in URI user info and paths.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, URI_COMPONENT).to_string()
}

fn host_for_uri(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The document's `operation`.
pub fn operation(op: &OperationRecord) -> Value {
    let mut v = json!({
        "id": op.id.to_string(),
        "state": op.state.as_str(),
        "message": op.message,
        "reference": {
            "id": op.ref_id.to_string(),
            "link": op.ref_link,
            "command": op.ref_command,
        },
    });
    if matches!(op.state, OpState::Failure | OpState::Timeout) {
        v["reason"] = json!(op.reason.clone().unwrap_or_else(|| "unknown".into()));
    }
    v
}

/// The document's `dbaas-service-common` (service listing).
pub fn service_common(control: &Control, s: &ServiceRecord) -> Value {
    json!({
        "name": s.name,
        "type": "pg",
        "plan": s.plan,
        "state": control.shown_state(s).as_str(),
        "zone": control.zone(),
        "node-count": control.ha_view(&s.name).map(|h| h.nodes.len()).unwrap_or(1),
        "termination-protection": s.termination_protection,
        "created-at": time(&s.created_at),
        "updated-at": time(&s.updated_at),
        "notifications": [],
        "integrations": control
            .integrations_of(&s.name)
            .iter()
            .map(integration)
            .collect::<Vec<_>>(),
    })
}

/// The document's `dbaas-integration` of a read replica.
pub fn integration(r: &pgbay_control::store::ReplicaRecord) -> Value {
    json!({
        "id": r.id.to_string(),
        "type": "read_replica",
        "source": r.source,
        "dest": r.service,
        "status": "active",
        "is-active": true,
        "is-enabled": true,
        "description": format!("{} is a physical streaming replica of {}", r.service, r.source),
        "settings": {},
    })
}

/// Where and as whom a client connects: the source of every URI and parameter set the views show.
struct PgConn<'a> {
    host: &'a str,
    port: u16,
    user: &'a str,
    password: &'a str,
    dbname: &'a str,
}

/// The PostgreSQL URI of `c` (user info and database percent-encoded, TLS required).
fn pg_uri(c: &PgConn) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}?sslmode=require",
        enc(c.user),
        enc(c.password),
        host_for_uri(c.host),
        c.port,
        enc(c.dbname)
    )
}

/// The document's `uri-params`: what [`pg_uri`] says, as separate values.
fn uri_params(c: &PgConn) -> Value {
    json!({
        "host": c.host,
        "port": c.port.to_string(),
        "user": c.user,
        "password": c.password,
        "dbname": c.dbname,
        "sslmode": "require",
    })
}

/// The document's `dbaas-service-pg`: `dbaas-service-common` and what a PostgreSQL service adds.
pub fn service_pg(control: &Control, v: &ServiceView, metrics: &crate::MetricsAt) -> Value {
    let s = &v.service;
    let host = control.uri_host();
    let admin = v.admin();
    let (admin_user, admin_pw) = admin
        .map(|a| (a.name.as_str(), a.password.as_str()))
        .unwrap_or((s.admin_username.as_str(), ""));
    // The PostgreSQL server itself: a local cluster listens on the public host, an adopted
    // external server is where it is.
    let server = PgConn {
        host: s.external_host.as_deref().unwrap_or(host),
        port: s.pg_port,
        user: admin_user,
        password: admin_pw,
        dbname: pgbay_control::input::DEFAULT_DATABASE,
    };
    let uri = pg_uri(&server);
    let params = uri_params(&server);
    let users: Vec<Value> = v.users.iter().map(user).collect();
    let pools: Vec<Value> = v
        .pools
        .iter()
        .map(|p| {
            let pw = v
                .users
                .iter()
                .find(|u| u.name == p.username)
                .map(|u| u.password.as_str())
                .unwrap_or("");
            let pooler = PgConn {
                host,
                port: s.pooler_port,
                user: &p.username,
                password: pw,
                dbname: &p.name,
            };
            json!({
                "name": p.name,
                "database": p.database,
                "username": p.username,
                "mode": p.mode.as_str(),
                "size": p.size.get(),
                "connection-uri": pg_uri(&pooler),
            })
        })
        .collect();
    let node_state = match control.shown_state(s) {
        ServiceState::Running => "running",
        ServiceState::Rebuilding => "setting_up_vm",
    };
    let ha = control.ha_view(&s.name);
    let node_states = match &ha {
        Some(h) => h
            .nodes
            .iter()
            .map(|n| {
                let state = if s.state == ServiceState::Running {
                    n.state
                } else {
                    "setting_up_vm"
                };
                json!({"name": n.name, "state": state, "role": n.role})
            })
            .collect(),
        None => {
            // The node the service is placed on.
            let name = s.node.clone().unwrap_or_else(|| format!("{}-1", s.name));
            vec![json!({"name": name, "state": node_state, "role": "master"})]
        }
    };
    // Each standby serves read-only connections on its own port of the public host.
    let standby: Vec<String> = ha
        .iter()
        .flat_map(|h| h.nodes.iter().filter(|n| n.role == "standby"))
        .map(|n| {
            pg_uri(&PgConn {
                port: n.port,
                ..server
            })
        })
        .collect();
    // The service's port answers on every live node (or behind --service-host).
    let uris: Vec<String> = match &s.external_host {
        Some(_) => vec![uri.clone()],
        None => control
            .uri_hosts()
            .iter()
            .map(|h| pg_uri(&PgConn { host: h, ..server }))
            .collect(),
    };
    let mut out = service_common(control, s);
    let pg = json!({
        "version": s.version,
        "node-states": node_states,
        "databases": v.databases,
        "users": users,
        "connection-pools": pools,
        "uri": uri,
        "uri-params": params,
        "connection-info": {"uri": uris, "params": [params], "standby": standby},
        "components": [
            {"component": "pg", "host": server.host, "port": s.pg_port, "route": "public", "usage": "primary"},
            {"component": "pgbouncer", "host": host, "port": s.pooler_port, "route": "public", "usage": "primary"},
        ],
        "pgbouncer-settings": crate::requests::pgbouncer_json(&s.pgbouncer),
        "ip-filter": s.ip_filter.to_strings(),
        "prometheus-uri": {"host": metrics.host, "port": metrics.port},
        "backups": backups(control, &s.name),
        "pg-settings": crate::requests::pg_settings_json(&s.pg_settings),
    });
    let mut pg = pg;
    if let Some(h) = &ha {
        pg["synchronous-replication"] = json!(if h.synchronous { "quorum" } else { "off" });
        if let Some(lag) = h.max_lag_seconds {
            pg["pglookout-settings"] = json!({"max-failover-replication-time-lag": lag});
        }
    }
    if control.backups_enabled()
        && s.external_host.is_none()
        && control.replica_of(&s.name).is_none()
    {
        let at = control.backup_schedule_of(s);
        pg["backup-schedule"] = json!({"backup-hour": at.hour, "backup-minute": at.minute});
    }
    if let Some(plan) = plans::lookup(&s.plan) {
        let m = plan.memory_settings(s.shared_buffers_percentage, s.work_mem);
        pg["node-memory"] = json!(plan.memory_bytes());
        pg["node-cpu-count"] = json!(plan.cpus);
        pg["disk-size"] = json!(plan.disk_bytes());
        pg["max-connections"] = json!(m.max_connections);
    }
    if let Some(w) = s.work_mem {
        pg["work-mem"] = json!(w);
    }
    if let Some(p) = s.shared_buffers_percentage {
        pg["shared-buffers-percentage"] = json!(p);
    }
    if let (Value::Object(common), Value::Object(pg)) = (&mut out, pg) {
        common.extend(pg);
    }
    out
}

/// One user as the document shows it (in the service and in `dbaas-postgres-users`).
fn user(u: &pgbay_control::UserView) -> Value {
    let mut o = json!({
        "username": u.name,
        "type": u.kind.as_str(),
        "allow-replication": u.allow_replication,
    });
    // The document: "A missing field indicates a user overridden password."
    if !u.password_overridden {
        o["password"] = json!(u.password);
    }
    o
}

/// The users of a service as `dbaas-postgres-users` lists them.
/// The document's `backups`: pgBackRest's record of the service's repository.
fn backups(control: &Control, service: &str) -> Value {
    control
        .backups_of(service)
        .into_iter()
        .map(|b| {
            let at = chrono::DateTime::from_timestamp(b.stopped_at, 0).unwrap_or_default();
            json!({
                "backup-name": b.name,
                "backup-time": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "data-size": b.data_size,
            })
        })
        .collect()
}

pub fn users(v: &ServiceView) -> Value {
    let users: Vec<Value> = v.users.iter().map(user).collect();
    json!({ "users": users })
}

/// The document's `dbaas-service-type` of PostgreSQL: the plan catalogue and the version here.
pub fn service_type_pg(control: &Control) -> Value {
    let plans: Vec<Value> = plans::all()
        .map(|p| {
            json!({
                "name": p.name,
                "node-count": p.nodes,
                "node-cpu-count": p.cpus,
                "node-memory": p.memory_bytes(),
                "disk-space": p.disk_bytes(),
                "authorized": true,
                "max-memory-percent": 80,
                "zones": [control.zone()],
                "backup-config": {"max-count": 0, "interval": 24, "recovery-mode": "regular"},
            })
        })
        .collect();
    json!({
        "name": "pg",
        "description": "PostgreSQL, served by pgbay: one local PostgreSQL cluster per service behind pgbay's pooler",
        "available-versions": [control.pg_version()],
        "default-version": control.pg_version(),
        "plans": plans,
    })
}

/// The document's `dbaas-service-logs`.
pub fn logs(service: &str, page: &pgbay_control::logs::LogPage) -> Value {
    let logs: Vec<Value> = page
        .entries
        .iter()
        .map(|e| {
            json!({
                "time": e.time,
                "message": e.message,
                "unit": e.unit.name(),
                "node": format!("{service}-1"),
            })
        })
        .collect();
    let mut v = json!({ "logs": logs });
    if let Some(last) = page.entries.last() {
        v["offset"] = json!(last.position.to_string());
    }
    if let Some(first) = page.first_offset {
        v["first-log-offset"] = json!(first.to_string());
    }
    v
}

/// `{"metrics": ...}`: one chart per metric, as `data.cols`/`data.rows` with the time first.
pub fn metrics(service: &str, points: &[pgbay_control::metrics::Point]) -> Value {
    use pgbay_control::metrics::Point;
    type Pick = fn(&Point) -> Option<f64>;
    let charts: [(&str, &str, &str, Pick); 6] = [
        ("connections", "Server connections", "connections", |p| {
            Some(p.connections)
        }),
        ("tps", "Transactions per second", "transactions/s", |p| {
            Some(p.tps)
        }),
        (
            "cache_hit_ratio",
            "Buffer cache hit ratio",
            "percent",
            |p| Some(p.cache_hit_ratio),
        ),
        ("database_size", "Size of all databases", "bytes", |p| {
            Some(p.database_size)
        }),
        (
            "pool_client_connections",
            "Pool client connections",
            "connections",
            |p| p.pools.map(|c| c.clients as f64),
        ),
        (
            "pool_server_connections",
            "Pool server connections",
            "connections",
            |p| p.pools.map(|c| c.servers as f64),
        ),
    ];
    let mut out = serde_json::Map::new();
    for (key, title, unit, pick) in charts {
        let rows: Vec<Value> = points
            .iter()
            .filter_map(|p| pick(p).map(|v| json!([time_ms(&p.time), v])))
            .collect();
        out.insert(
            key.to_string(),
            json!({
                "data": {
                    "cols": [
                        {"label": "time", "type": "date"},
                        {"label": format!("{service}-1"), "type": "number"},
                    ],
                    "rows": rows,
                },
                "hints": {"title": title, "unit": unit},
            }),
        );
    }
    json!({ "metrics": out })
}

fn time_ms(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The document's `dbaas-task` of an upgrade check.
pub fn upgrade_check(c: &pgbay_control::UpgradeCheck) -> Value {
    json!({
        "id": c.id.to_string(),
        "create-time": time(&c.created_at),
        "success": c.success,
        "result": c.result,
        "result-codes": [],
        "task-type": "upgrade_check",
    })
}

/// The document's `dbaas-migration-status`. The source (and its password) is never shown.
pub fn migration_status(m: &pgbay_control::MigrationRecord) -> Value {
    let details: Vec<Value> = m
        .details
        .iter()
        .map(|d| {
            let mut v =
                json!({"dbname": d.dbname, "method": d.method, "status": d.status.as_str()});
            if let Some(e) = &d.error {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    let mut v = json!({"status": m.status.as_str(), "method": m.method, "details": details});
    if let Some(e) = &m.error {
        v["error"] = json!(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_encode_user_info_and_bracket_ipv6_hosts() {
        let c = PgConn {
            host: "::1",
            port: 6432,
            user: "a@b",
            password: "p:w/x",
            dbname: "my pool",
        };
        assert_eq!(
            pg_uri(&c),
            "postgres://a%40b:p%3Aw%2Fx@[::1]:6432/my%20pool?sslmode=require"
        );
        assert_eq!(uri_params(&c)["host"], "::1");
        assert_eq!(uri_params(&c)["port"], "6432");
    }
}
