//! JSON shapes of the Exoscale document (dbaas-service-pg, dbaas-service-common, operation),
//! built from the control plane's records.

use chrono::SecondsFormat;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pgbay_control::{Control, OpState, OperationRecord, ServiceRecord, ServiceState, ServiceView};
use serde_json::{json, Map, Value};

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
        "state": s.state.as_str(),
        "zone": control.zone(),
        "node-count": 1,
        "termination-protection": s.termination_protection,
        "created-at": time(&s.created_at),
        "updated-at": time(&s.updated_at),
        "notifications": [],
        "integrations": [],
    })
}

/// The document's `dbaas-service-pg`.
pub fn service_pg(control: &Control, v: &ServiceView, metrics: &crate::MetricsAt) -> Value {
    let s = &v.service;
    let host = control.public_host();
    let uri_host = host_for_uri(host);
    // The PostgreSQL server itself: a local cluster listens on the public host, an adopted
    // external server is where it is.
    let pg_host = s.external_host.as_deref().unwrap_or(host);
    let pg_uri_host = host_for_uri(pg_host);
    let admin = v.admin();
    let (admin_user, admin_pw) = admin
        .map(|a| (a.name.as_str(), a.password.as_str()))
        .unwrap_or((s.admin_username.as_str(), ""));
    let uri = format!(
        "postgres://{}:{}@{}:{}/defaultdb?sslmode=require",
        enc(admin_user),
        enc(admin_pw),
        pg_uri_host,
        s.pg_port
    );
    let mut params = Map::new();
    for (k, val) in [
        ("host", pg_host.to_string()),
        ("port", s.pg_port.to_string()),
        ("user", admin_user.to_string()),
        ("password", admin_pw.to_string()),
        ("dbname", "defaultdb".to_string()),
        ("sslmode", "require".to_string()),
    ] {
        params.insert(k.to_string(), json!(val));
    }
    let users: Vec<Value> = v
        .users
        .iter()
        .map(|u| {
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
        })
        .collect();
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
            json!({
                "name": p.name,
                "database": p.database,
                "username": p.username,
                "mode": p.mode.as_str(),
                "size": p.size.get(),
                "connection-uri": format!(
                    "postgres://{}:{}@{}:{}/{}?sslmode=require",
                    enc(&p.username), enc(pw), uri_host, s.pooler_port, enc(&p.name)
                ),
            })
        })
        .collect();
    let node_state = match s.state {
        ServiceState::Running => "running",
        ServiceState::Rebuilding => "setting_up_vm",
    };
    json!({
        "name": s.name,
        "type": "pg",
        "plan": s.plan,
        "state": s.state.as_str(),
        "zone": control.zone(),
        "version": s.version,
        "node-count": 1,
        "node-states": [{"name": format!("{}-1", s.name), "state": node_state, "role": "master"}],
        "databases": v.databases,
        "users": users,
        "connection-pools": pools,
        "uri": uri,
        "uri-params": Value::Object(params.clone()),
        "connection-info": {"uri": [uri], "params": [Value::Object(params)]},
        "components": [
            {"component": "pg", "host": pg_host, "port": s.pg_port, "route": "public", "usage": "primary"},
            {"component": "pgbouncer", "host": host, "port": s.pooler_port, "route": "public", "usage": "primary"},
        ],
        "pgbouncer-settings": s.pgbouncer.to_json(),
        "ip-filter": s.ip_filter.to_strings(),
        "termination-protection": s.termination_protection,
        "created-at": time(&s.created_at),
        "updated-at": time(&s.updated_at),
        "prometheus-uri": {"host": metrics.host, "port": metrics.port},
        "backups": [],
        "integrations": [],
        "notifications": [],
    })
}
