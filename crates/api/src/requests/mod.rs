//! Request bodies → control's typed commands. This is the only place that knows the document's
//! field names of request bodies: each function reads one body, refuses unknown fields (so a
//! misspelt setting is never silently dropped) and builds the command from control's input
//! newtypes, whose errors name the field and the limit it broke.

mod migration;
mod pg_settings;
mod pgbouncer;
mod values;

pub use migration::migration_check;
pub use pg_settings::{pg_settings_json, pg_settings_schema};
pub use pgbouncer::{pgbouncer_json, pgbouncer_schema};

use pgbay_control::input::{
    AdminPassword, AdminUsername, DatabaseName, InputError, Locale, Password, Plan, PoolName,
    Subject, Username,
};
use pgbay_control::logs::{LogQuery, SortOrder};
use pgbay_control::metrics::Period;
use pgbay_control::pg_settings::PgSettings;
use pgbay_control::{
    NewDatabase, NewPool, NewService, NewUser, PasswordReset, PoolUpdate, ServiceUpdate,
};
use serde_json::{Map, Value};
use values::{boolean, int_in, ip_filter, pool_mode, pool_size};

type Body = Map<String, Value>;

/// The request field that carries `subject`, as the document spells it.
pub fn spelling(subject: &Subject) -> String {
    match subject {
        Subject::Given(f) => f.clone(),
        Subject::Plan => "plan".into(),
        Subject::Version => "version".into(),
        Subject::AdminUsername => "admin-username".into(),
        Subject::AdminPassword => "admin-password".into(),
        Subject::PgSettings => "pg-settings".into(),
        Subject::PgSetting(name) => {
            match pgbay_control::pg_settings::def(name).and_then(|d| d.group) {
                Some(g) => format!("pg-settings.{g}.{name}"),
                None => format!("pg-settings.{name}"),
            }
        }
        Subject::WorkMem => "work-mem".into(),
        Subject::SharedBuffersPercentage => "shared-buffers-percentage".into(),
        Subject::SynchronousReplication => "synchronous-replication".into(),
        Subject::MaxFailoverLag => "pglookout-settings".into(),
        Subject::Migration => "migration".into(),
        Subject::RecoveryTime => "recovery-backup-time".into(),
        Subject::ForkSource => "fork-from-service".into(),
        Subject::ReplicaSource => "integrations.source-service".into(),
        Subject::BackupSchedule => "backup-schedule".into(),
        Subject::IntegrationSource => "source-service".into(),
        Subject::IntegrationDest => "dest-service".into(),
        Subject::Several(all) => all
            .iter()
            .map(|s| format!("`{}`", spelling(s)))
            .collect::<Vec<_>>()
            .join(", "),
        Subject::Whole => String::new(),
    }
}

/// The message of a 400: control's refusals name the request field as the document spells it.
pub fn message(e: &InputError) -> String {
    let detail = match &e.other {
        Some(o) => e.detail.replace("{other}", &spelling(o)),
        None => e.detail.clone(),
    };
    match &e.subject {
        Subject::Given(_) | Subject::Whole => e.message.clone(),
        Subject::Several(_) => format!("invalid fields {}: {detail}", spelling(&e.subject)),
        s => format!("invalid field `{}`: {detail}", spelling(s)),
    }
}

/// Refuses any key of `body` not in `known`.
pub(crate) fn refuse_unknown(body: &Body, known: &[&str]) -> Result<(), InputError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(InputError::whole(format!(
            "unknown or unsupported field `{k}`"
        ))),
        None => Ok(()),
    }
}

/// A required field (`null` counts as absent).
fn required<'a>(body: &'a Body, field: &str) -> Result<&'a Value, InputError> {
    optional(body, field)
        .ok_or_else(|| InputError::whole(format!("missing required field `{field}`")))
}

/// An optional field (`null` counts as absent).
fn optional<'a>(body: &'a Body, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

pub(crate) fn string<'a>(field: &str, v: &'a Value) -> Result<&'a str, InputError> {
    v.as_str()
        .ok_or_else(|| InputError::new(field, "must be a string"))
}

/// Parses the optional `field` with `parse`.
fn opt<T>(
    body: &Body,
    field: &str,
    parse: impl FnOnce(&str, &Value) -> Result<T, InputError>,
) -> Result<Option<T>, InputError> {
    optional(body, field).map(|v| parse(field, v)).transpose()
}

/// Parses the optional string `field` with `parse`.
fn opt_str<T>(
    body: &Body,
    field: &str,
    parse: impl FnOnce(&str, &str) -> Result<T, InputError>,
) -> Result<Option<T>, InputError> {
    opt(body, field, |f, v| parse(f, string(f, v)?))
}

fn version(field: &str, v: &Value) -> Result<String, InputError> {
    string(field, v).map(str::to_string)
}

/// A pool's database: a reference to an existing database (1..=63 like a path), but a name the
/// API could never have created (over 40 characters, control characters) gets the creation
/// rule's message.
fn pool_database(field: &str, s: &str) -> Result<DatabaseName, InputError> {
    let d = DatabaseName::parse_lookup(field, s)?;
    if d.as_str().chars().count() > 40 || d.as_str().chars().any(char::is_control) {
        DatabaseName::parse(field, d.as_str())?;
    }
    Ok(d)
}

/// `POST /dbaas-postgres/{name}`.
pub fn new_service(body: &Body) -> Result<NewService, InputError> {
    let plan = Plan::parse("plan", string("plan", required(body, "plan")?)?)?;
    refuse_unknown(
        body,
        &[
            "plan",
            "version",
            "admin-username",
            "admin-password",
            "pgbouncer-settings",
            "ip-filter",
            "termination-protection",
            "pg-settings",
            "work-mem",
            "shared-buffers-percentage",
            "fork-from-service",
            "recovery-backup-time",
            "migration",
            "synchronous-replication",
            "pglookout-settings",
            "integrations",
            "backup-schedule",
        ],
    )?;
    Ok(NewService {
        backup_schedule: opt(body, "backup-schedule", backup_schedule)?,
        read_replica_of: opt(body, "integrations", integrations)?.flatten(),
        synchronous_replication: opt_str(body, "synchronous-replication", synchronous_replication)?,
        max_failover_lag: opt(body, "pglookout-settings", pglookout_settings)?,
        fork_from: opt_str(
            body,
            "fork-from-service",
            pgbay_control::input::ServiceName::parse,
        )?,
        recovery_time: opt_str(body, "recovery-backup-time", recovery_time)?,
        migration: opt(body, "migration", migration::spec)?,
        pg_settings: opt(body, "pg-settings", |f, v| {
            pg_settings::patch(f, v).map(|p| PgSettings::from_patch(&p))
        })?,
        work_mem: opt(body, "work-mem", work_mem)?,
        shared_buffers_percentage: opt(
            body,
            "shared-buffers-percentage",
            shared_buffers_percentage,
        )?,
        plan,
        version: opt(body, "version", version)?,
        admin_username: opt_str(body, "admin-username", AdminUsername::parse)?,
        admin_password: opt_str(body, "admin-password", AdminPassword::parse)?,
        pgbouncer: opt(body, "pgbouncer-settings", pgbouncer::settings)?,
        ip_filter: opt(body, "ip-filter", ip_filter)?,
        termination_protection: opt(body, "termination-protection", boolean)?,
    })
}

/// `recovery-backup-time`: an ISO 8601 time with its offset (`2026-12-03T07:30:00Z`, or
/// PostgreSQL's `2026-12-03 07:30:00.5+00`), or a UTC time without one (`2026-12-03 07:30:00`).
fn recovery_time(field: &str, s: &str) -> Result<chrono::DateTime<chrono::Utc>, InputError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    // PostgreSQL's own output (`2026-12-03 07:30:00.5+00`): an offset without minutes.
    for f in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return Ok(t.with_timezone(&chrono::Utc));
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    Err(InputError::new(
        field,
        format!("{s:?} is not an ISO 8601 time (e.g. 2026-12-03T07:30:00Z)"),
    ))
}

/// `PUT /dbaas-postgres/{name}`.
pub fn service_update(body: &Body) -> Result<ServiceUpdate, InputError> {
    refuse_unknown(
        body,
        &[
            "plan",
            "version",
            "pgbouncer-settings",
            "ip-filter",
            "termination-protection",
            "pg-settings",
            "work-mem",
            "shared-buffers-percentage",
            "migration",
            "synchronous-replication",
            "pglookout-settings",
            "backup-schedule",
        ],
    )?;
    let plan = opt_str(body, "plan", Plan::parse)?;
    let ip_filter = opt(body, "ip-filter", ip_filter)?;
    let termination_protection = opt(body, "termination-protection", boolean)?;
    let pgbouncer = opt(body, "pgbouncer-settings", pgbouncer::patch)?;
    Ok(ServiceUpdate {
        backup_schedule: opt(body, "backup-schedule", backup_schedule)?,
        synchronous_replication: opt_str(body, "synchronous-replication", synchronous_replication)?,
        max_failover_lag: opt(body, "pglookout-settings", pglookout_settings)?,
        migration: opt(body, "migration", migration::spec)?,
        pg_settings: opt(body, "pg-settings", pg_settings::patch)?,
        work_mem: opt(body, "work-mem", work_mem)?,
        shared_buffers_percentage: opt(
            body,
            "shared-buffers-percentage",
            shared_buffers_percentage,
        )?,
        plan,
        version: opt(body, "version", version)?,
        pgbouncer,
        ip_filter,
        termination_protection,
    })
}

/// `integrations` at create: at most one `{"type": "read_replica", "source-service": X}` (its
/// `dest-service`, if given, is the new service; `settings`, if given, empty): the source.
fn integrations(
    field: &str,
    v: &Value,
) -> Result<Option<pgbay_control::input::ServiceName>, InputError> {
    let items = v
        .as_array()
        .ok_or_else(|| InputError::new(field, "must be an array"))?;
    if items.len() > 1 {
        return Err(InputError::new(
            field,
            "at most one read_replica integration",
        ));
    }
    let Some(item) = items.first() else {
        return Ok(None);
    };
    let obj = item
        .as_object()
        .ok_or_else(|| InputError::new(field, "items must be objects"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["type", "source-service", "dest-service", "settings"].contains(&k.as_str()))
    {
        return Err(InputError::new(
            &format!("{field}.{k}"),
            "is not a field of an integration",
        ));
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("read_replica") => {}
        Some(other) => {
            return Err(InputError::new(
                &format!("{field}.type"),
                format!("{other:?} is not one of \"read_replica\""),
            ))
        }
        None => return Err(InputError::new(&format!("{field}.type"), "is required")),
    }
    if obj
        .get("settings")
        .is_some_and(|s| s.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(InputError::new(
            &format!("{field}.settings"),
            "read_replica has no settings",
        ));
    }
    let src = obj
        .get("source-service")
        .ok_or_else(|| InputError::new(&format!("{field}.source-service"), "is required"))?;
    let src = pgbay_control::input::ServiceName::parse(
        &format!("{field}.source-service"),
        string(field, src)?,
    )?;
    Ok(Some(src))
}

/// `backup-schedule`: `{"backup-hour": 0..=23, "backup-minute": 0..=59}` (UTC), both given.
fn backup_schedule(field: &str, v: &Value) -> Result<pgbay_control::BackupSchedule, InputError> {
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::new(field, "must be an object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["backup-hour", "backup-minute"].contains(&k.as_str()))
    {
        return Err(InputError::new(
            &format!("{field}.{k}"),
            "is not a field of backup-schedule",
        ));
    }
    let part = |k: &str, max: i64| -> Result<u8, InputError> {
        let f = format!("{field}.{k}");
        let v = obj
            .get(k)
            .ok_or_else(|| InputError::new(&f, "is required"))?;
        Ok(int_in(&f, v, 0, max)? as u8)
    };
    Ok(pgbay_control::BackupSchedule {
        hour: part("backup-hour", 23)?,
        minute: part("backup-minute", 59)?,
    })
}

/// `synchronous-replication`: `quorum` (true) or `off`.
fn synchronous_replication(field: &str, s: &str) -> Result<bool, InputError> {
    match s {
        "quorum" => Ok(true),
        "off" => Ok(false),
        _ => Err(InputError::new(
            field,
            format!("{s:?} is not one of \"quorum\", \"off\""),
        )),
    }
}

/// `pglookout-settings`: `{"max-failover-replication-time-lag": seconds}`, 0..=86400 (Patroni's
/// `maximum_lag_on_failover` is bytes of WAL: pgbay counts 16 MiB, one segment, per second).
fn pglookout_settings(field: &str, v: &Value) -> Result<i64, InputError> {
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::new(field, "must be an object"))?;
    const LAG: &str = "max-failover-replication-time-lag";
    if let Some(k) = obj.keys().find(|k| k.as_str() != LAG) {
        return Err(InputError::new(
            &format!("{field}.{k}"),
            "is not a pglookout setting pgbay knows",
        ));
    }
    let lag = obj
        .get(LAG)
        .ok_or_else(|| InputError::new(&format!("{field}.{LAG}"), "is required"))?;
    int_in(&format!("{field}.{LAG}"), lag, 0, 86_400)
}

/// `work-mem`: MB, 1..=1024.
fn work_mem(field: &str, v: &Value) -> Result<u32, InputError> {
    int_in(field, v, 1, 1024).map(|n| n as u32)
}

/// `shared-buffers-percentage`: 20..=60.
fn shared_buffers_percentage(field: &str, v: &Value) -> Result<u32, InputError> {
    int_in(field, v, 20, 60).map(|n| n as u32)
}

/// `POST /dbaas-service-logs/{name}`.
pub fn log_query(body: &Body) -> Result<LogQuery, InputError> {
    refuse_unknown(body, &["limit", "offset", "sort-order"])?;
    Ok(LogQuery {
        limit: opt(body, "limit", |f, v| int_in(f, v, 1, 500).map(|n| n as u32))?,
        offset: opt_str(body, "offset", LogQuery::parse_offset)?,
        sort: opt_str(body, "sort-order", |f, s| match s {
            "asc" => Ok(SortOrder::Asc),
            "desc" => Ok(SortOrder::Desc),
            _ => Err(InputError::new(
                f,
                format!("must be asc or desc, got {s:?}"),
            )),
        })?
        .unwrap_or_default(),
    })
}

/// `POST /dbaas-service-metrics/{name}`.
pub fn metrics_period(body: &Body) -> Result<Period, InputError> {
    refuse_unknown(body, &["period"])?;
    Ok(opt_str(body, "period", |f, s| {
        Period::parse(s).ok_or_else(|| {
            InputError::new(
                f,
                format!("must be one of hour, day, week, month, year, got {s:?}"),
            )
        })
    })?
    .unwrap_or(Period::Hour))
}

/// `PUT .../user/{username}/allow-replication`.
pub fn allow_replication(body: &Body) -> Result<bool, InputError> {
    refuse_unknown(body, &["allow-replication"])?;
    opt(body, "allow-replication", boolean)?
        .ok_or_else(|| InputError::new("allow-replication", "missing required field"))
}

/// `POST .../upgrade-check`: the document's `dbaas-pg-target-versions`.
pub fn upgrade_target(body: &Body) -> Result<String, InputError> {
    refuse_unknown(body, &["target-version"])?;
    let v = string("target-version", required(body, "target-version")?)?;
    const TARGETS: [&str; 6] = ["13", "14", "15", "16", "17", "18"];
    if !TARGETS.contains(&v) {
        return Err(InputError::new(
            "target-version",
            format!("must be one of {}, got {v:?}", TARGETS.join(", ")),
        ));
    }
    Ok(v.to_string())
}

/// `POST .../database`.
pub fn new_database(body: &Body) -> Result<NewDatabase, InputError> {
    let name = DatabaseName::parse(
        "database-name",
        string("database-name", required(body, "database-name")?)?,
    )?;
    refuse_unknown(body, &["database-name", "lc-collate", "lc-ctype"])?;
    Ok(NewDatabase {
        name,
        lc_collate: opt_str(body, "lc-collate", Locale::parse)?,
        lc_ctype: opt_str(body, "lc-ctype", Locale::parse)?,
    })
}

/// `POST .../user`.
pub fn new_user(body: &Body) -> Result<NewUser, InputError> {
    refuse_unknown(body, &["username", "allow-replication"])?;
    let username = Username::parse("username", string("username", required(body, "username")?)?)?;
    Ok(NewUser {
        username,
        allow_replication: opt(body, "allow-replication", boolean)?.unwrap_or(false),
    })
}

/// `PUT .../user/{username}/password/reset` (an empty body generates a password).
pub fn password_reset(body: &Body) -> Result<PasswordReset, InputError> {
    refuse_unknown(body, &["password"])?;
    Ok(PasswordReset {
        password: opt_str(body, "password", Password::parse)?,
    })
}

/// `POST .../connection-pool`.
pub fn new_pool(body: &Body) -> Result<NewPool, InputError> {
    refuse_unknown(body, &["name", "database-name", "mode", "size", "username"])?;
    let name = PoolName::parse("name", string("name", required(body, "name")?)?)?;
    let database = pool_database(
        "database-name",
        string("database-name", required(body, "database-name")?)?,
    )?;
    Ok(NewPool {
        name,
        database,
        mode: opt(body, "mode", pool_mode)?.unwrap_or_default(),
        size: opt(body, "size", pool_size)?.unwrap_or_default(),
        username: opt_str(body, "username", Username::parse_pool)?,
    })
}

/// `PUT .../connection-pool/{name}`.
pub fn pool_update(body: &Body) -> Result<PoolUpdate, InputError> {
    refuse_unknown(body, &["database-name", "mode", "size", "username"])?;
    Ok(PoolUpdate {
        database: opt_str(body, "database-name", pool_database)?,
        mode: opt(body, "mode", pool_mode)?,
        size: opt(body, "size", pool_size)?,
        username: opt_str(body, "username", Username::parse_pool)?,
    })
}

#[cfg(test)]
mod recovery_time_tests {
    use super::recovery_time;

    #[test]
    fn iso_and_postgres_forms() {
        let want = chrono::DateTime::parse_from_rfc3339("2026-12-03T07:30:00.5Z").unwrap();
        for s in [
            "2026-12-03T07:30:00.5Z",
            "2026-12-03T08:30:00.5+01:00",
            "2026-12-03 07:30:00.5+00",
            "2026-12-03T07:30:00.5",
            "2026-12-03 07:30:00.5",
        ] {
            assert_eq!(recovery_time("f", s).unwrap(), want, "{s}");
        }
        assert!(recovery_time("f", "yesterday").is_err());
        assert!(recovery_time("f", "2026-13-03 07:30:00").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbay_control::input::PoolMode;
    use serde_json::json;

    fn body(v: Value) -> Body {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn control_subjects_are_spelt_as_the_request() {
        let one = InputError::of(Subject::PgSetting("autovacuum_max_workers".into()), "x");
        assert_eq!(
            message(&one),
            "invalid field `pg-settings.autovacuum.autovacuum_max_workers`: x"
        );
        let top = InputError::of(Subject::PgSetting("max_prepared_transactions".into()), "y");
        assert_eq!(
            message(&top),
            "invalid field `pg-settings.max_prepared_transactions`: y"
        );
        let both = InputError::of(Subject::Several(vec![Subject::Plan, Subject::WorkMem]), "z");
        assert_eq!(message(&both), "invalid fields `plan`, `work-mem`: z");
        let given = InputError::new("size", "must be an integer");
        assert_eq!(message(&given), "invalid field `size`: must be an integer");
        assert_eq!(
            message(&InputError::of(Subject::ForkSource, "w")),
            "invalid field `fork-from-service`: w"
        );
        let with = InputError::naming(Subject::RecoveryTime, Subject::ForkSource, "with {other}");
        assert_eq!(
            message(&with),
            "invalid field `recovery-backup-time`: with fork-from-service"
        );
        assert_eq!(with.message, "invalid recovery time: with fork source");
    }

    #[test]
    fn unknown_and_required_fields() {
        let b = body(json!({"plan": "x", "bogus": 1}));
        let e = refuse_unknown(&b, &["plan"]).unwrap_err();
        assert!(e.message.contains("bogus"));
        let e = required(&b, "name").unwrap_err();
        assert!(e.message.contains("`name`"));
    }

    #[test]
    fn pool_bodies_name_the_refused_field() {
        let e = new_pool(&body(json!({"name": "p", "database-name": "d", "sise": 3}))).unwrap_err();
        assert_eq!(e.message, "unknown or unsupported field `sise`");
        let e = new_pool(&body(json!({"database-name": "d"}))).unwrap_err();
        assert_eq!(e.message, "missing required field `name`");
        let e = pool_update(&body(json!({"size": 0}))).unwrap_err();
        assert!(e.message.starts_with("invalid field `size`"), "{e}");
        let p = new_pool(&body(
            json!({"name": "p", "database-name": "d", "mode": null}),
        ))
        .unwrap();
        assert_eq!((p.mode, p.size.get()), (PoolMode::Transaction, 10));
    }
}
