//! One handler per endpoint of the Exoscale document that pgbay serves. Handlers only translate:
//! path parameters and bodies (through `requests`) become control's commands, records come back
//! as the document's JSON (through `views`).

use axum::extract::State;
use axum::{Extension, Json};
use pgbay_control::input::{DatabaseName, PoolName, ServiceName, Username};
use pgbay_control::Control;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{JsonObject, Params};
use crate::requests;
use crate::views;
use crate::MetricsAt;

type ApiResult = Result<Json<Value>, ApiError>;

fn service(p: &Params, field: &str) -> Result<ServiceName, ApiError> {
    Ok(ServiceName::parse(field, p.get("name")?)?)
}

/// `POST /dbaas-postgres/{name}`
pub async fn create_service(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .create_service(&service(&p, "name")?, requests::new_service(&b)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /dbaas-postgres/{name}`
pub async fn get_service(
    State(c): State<Control>,
    Extension(m): Extension<MetricsAt>,
    p: Params,
) -> ApiResult {
    let v = c.get_service(&service(&p, "name")?).await?;
    Ok(Json(views::service_pg(&c, &v, &m)))
}

/// `PUT /dbaas-postgres/{name}`
pub async fn update_service(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .update_service(&service(&p, "name")?, requests::service_update(&b)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `DELETE /dbaas-postgres/{name}` and `DELETE /dbaas-service/{name}`
pub async fn delete_service(State(c): State<Control>, p: Params) -> ApiResult {
    let name = ServiceName::parse("name", p.get("name")?).map_err(|_| {
        ApiError::NotFound(format!("service {} not found", p.get("name").unwrap_or("")))
    })?;
    let op = c.delete_service(&name).await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /dbaas-service`
pub async fn list_services(State(c): State<Control>) -> ApiResult {
    let list: Vec<Value> = c
        .list_services()
        .await?
        .iter()
        .map(|s| views::service_common(&c, s))
        .collect();
    Ok(Json(json!({ "dbaas-services": list })))
}

/// `POST /dbaas-postgres/{name}/database`
pub async fn create_database(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .databases()
        .create(&service(&p, "service-name")?, requests::new_database(&b)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `DELETE /dbaas-postgres/{name}/database/{database}`
pub async fn delete_database(State(c): State<Control>, p: Params) -> ApiResult {
    let db = DatabaseName::parse_lookup("database-name", p.get("database")?)?;
    let op = c
        .databases()
        .delete(&service(&p, "service-name")?, &db)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `POST /dbaas-postgres/{name}/user`
pub async fn create_user(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .users()
        .create(&service(&p, "service-name")?, requests::new_user(&b)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

fn user(p: &Params) -> Result<Username, ApiError> {
    Ok(Username::parse_lookup("username", p.get("username")?)?)
}

/// `DELETE /dbaas-postgres/{name}/user/{username}`
pub async fn delete_user(State(c): State<Control>, p: Params) -> ApiResult {
    let op = c
        .users()
        .delete(&service(&p, "service-name")?, &user(&p)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `PUT /dbaas-postgres/{name}/user/{username}/password/reset`
pub async fn reset_password(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .users()
        .reset_password(
            &service(&p, "service-name")?,
            &user(&p)?,
            requests::password_reset(&b)?,
        )
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /dbaas-postgres/{name}/user/{username}/password/reveal`
pub async fn reveal_password(State(c): State<Control>, p: Params) -> ApiResult {
    let (username, password) = c
        .users()
        .reveal_password(&service(&p, "service-name")?, &user(&p)?)
        .await?;
    Ok(Json(json!({ "username": username, "password": password })))
}

fn pool(p: &Params) -> Result<PoolName, ApiError> {
    Ok(PoolName::parse_lookup(
        "connection-pool-name",
        p.get("pool")?,
    )?)
}

/// `POST /dbaas-postgres/{name}/connection-pool`
pub async fn create_pool(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .pools()
        .create(&service(&p, "service-name")?, requests::new_pool(&b)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `PUT /dbaas-postgres/{name}/connection-pool/{pool}`
pub async fn update_pool(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let op = c
        .pools()
        .update(
            &service(&p, "service-name")?,
            &pool(&p)?,
            requests::pool_update(&b)?,
        )
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `DELETE /dbaas-postgres/{name}/connection-pool/{pool}`
pub async fn delete_pool(State(c): State<Control>, p: Params) -> ApiResult {
    let op = c
        .pools()
        .delete(&service(&p, "service-name")?, &pool(&p)?)
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /operation/{id}`
pub async fn get_operation(State(c): State<Control>, p: Params) -> ApiResult {
    let raw = p.get("id")?;
    let id = uuid::Uuid::parse_str(raw)
        .map_err(|_| ApiError::BadRequest(format!("invalid field `id`: {raw:?} is not a UUID")))?;
    let op = c.operation(id).await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /dbaas-settings-pg`: the settings pgbay accepts: PostgreSQL's and pgbouncer's.
pub async fn settings() -> ApiResult {
    Ok(Json(json!({ "settings": {
        "pg": crate::requests::pg_settings_schema(),
        "pgbouncer": crate::requests::pgbouncer_schema(),
    } })))
}

/// `GET /dbaas-service-type`
pub async fn list_service_types(State(c): State<Control>) -> ApiResult {
    Ok(Json(
        json!({ "dbaas-service-types": [views::service_type_pg(&c)] }),
    ))
}

/// The other engines of the document: known, and not served here.
const OTHER_ENGINES: [&str; 7] = [
    "clickhouse",
    "grafana",
    "kafka",
    "mysql",
    "opensearch",
    "thanos",
    "valkey",
];

/// `GET /dbaas-service-type/{service-type-name}`
pub async fn get_service_type(State(c): State<Control>, p: Params) -> ApiResult {
    match p.get("name")? {
        "pg" => Ok(Json(views::service_type_pg(&c))),
        other if OTHER_ENGINES.contains(&other) => Err(ApiError::NotImplemented(format!(
            "service type {other} is not served by pgbay"
        ))),
        other => Err(ApiError::NotFound(format!(
            "service type {other} not found"
        ))),
    }
}

/// `POST /dbaas-service-logs/{service-name}`
pub async fn service_logs(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let name = service(&p, "service-name")?;
    let page = c.service_logs(&name, requests::log_query(&b)?).await?;
    Ok(Json(views::logs(name.as_str(), &page)))
}

/// `POST /dbaas-service-metrics/{service-name}`
pub async fn service_metrics(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let name = service(&p, "service-name")?;
    let points = c
        .service_metrics(&name, requests::metrics_period(&b)?)
        .await?;
    Ok(Json(views::metrics(name.as_str(), &points)))
}

/// `PUT /dbaas-postgres/{service-name}/user/{username}/allow-replication`
pub async fn allow_replication(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let name = service(&p, "service-name")?;
    let allow = requests::allow_replication(&b)?;
    c.users()
        .set_allow_replication(&name, &user(&p)?, allow)
        .await?;
    Ok(Json(views::users(&c.get_service(&name).await?)))
}

/// `PUT /dbaas-postgres/{name}/maintenance/start`
pub async fn start_maintenance(State(c): State<Control>, p: Params) -> ApiResult {
    let op = c.start_maintenance(&service(&p, "name")?).await?;
    Ok(Json(views::operation(&op)))
}

/// `POST /dbaas-postgres/{service}/upgrade-check`
pub async fn upgrade_check(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let target = requests::upgrade_target(&b)?;
    let check = c.upgrade_check(&service(&p, "service")?, &target).await?;
    Ok(Json(views::upgrade_check(&check)))
}

/// `GET /dbaas-ca-certificate`
pub async fn ca_certificate(State(c): State<Control>) -> ApiResult {
    Ok(Json(json!({ "certificate": c.tls_material().ca_pem })))
}

/// Backups: age of each service's newest backup and backups that failed since start.
fn backup_metrics(c: &Control, out: &mut String) {
    let backups = c.backup_metrics();
    out.push_str(
        "# HELP pgbay_backup_newest_age_seconds Seconds since the service's newest backup ended.\n\
         # TYPE pgbay_backup_newest_age_seconds gauge\n",
    );
    for b in backups.iter().filter(|b| b.newest_age.is_some()) {
        out.push_str(&format!(
            "pgbay_backup_newest_age_seconds{{service=\"{}\"}} {}\n",
            b.service,
            b.newest_age.unwrap_or(0)
        ));
    }
    out.push_str(
        "# HELP pgbay_backup_failures_total Backups of the service that failed since pgbay started.\n\
         # TYPE pgbay_backup_failures_total counter\n",
    );
    for b in &backups {
        out.push_str(&format!(
            "pgbay_backup_failures_total{{service=\"{}\"}} {}\n",
            b.service, b.failures
        ));
    }
    out.push_str(
        "# HELP pgbay_archive_failures_total WAL segments the service's PostgreSQL failed to \
         archive (pg_stat_archiver.failed_count).\n\
         # TYPE pgbay_archive_failures_total counter\n",
    );
    for b in &backups {
        if let Some(n) = b.archive_failures {
            out.push_str(&format!(
                "pgbay_archive_failures_total{{service=\"{}\"}} {n}\n",
                b.service
            ));
        }
    }
}

/// `GET /metrics`: Prometheus text format, per service: cluster up, pools, databases, users;
/// per pool (when the binary installed a `PoolMetricsSource`): client and server states and the
/// pooler's counters.
pub async fn metrics(
    State(c): State<Control>,
    pools: Option<Extension<crate::PoolMetrics>>,
) -> Result<String, ApiError> {
    let mut out = String::new();
    let services = c.list_services().await?;
    out.push_str("# HELP pgbay_service_up Whether the service's PostgreSQL server is up.\n");
    out.push_str("# TYPE pgbay_service_up gauge\n");
    for s in &services {
        let up = u8::from(c.server_up(s).await);
        out.push_str(&format!(
            "pgbay_service_up{{service=\"{}\"}} {up}\n",
            s.name
        ));
    }
    let mut counts = Vec::new();
    for s in &services {
        let name = ServiceName::parse("name", &s.name)?;
        let v = c.get_service(&name).await?;
        counts.push((
            s.name.clone(),
            v.pools.len(),
            v.databases.len(),
            v.users.len(),
        ));
    }
    for (metric, help, pick) in [
        (
            "pgbay_service_connection_pools",
            "Connection pools of the service.",
            0usize,
        ),
        ("pgbay_service_databases", "Databases of the service.", 1),
        ("pgbay_service_users", "Users of the service.", 2),
    ] {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n"));
        for (name, pools, dbs, users) in &counts {
            let n = [*pools, *dbs, *users][pick];
            out.push_str(&format!("{metric}{{service=\"{name}\"}} {n}\n"));
        }
    }
    backup_metrics(&c, &mut out);
    if let Some(Extension(source)) = pools {
        let samples = source.0.pool_samples();
        crate::pool_metrics::render(&mut out, &samples);
        crate::pool_metrics::render_refused(&mut out, &source.0.refused_samples());
    }
    Ok(out)
}

/// `GET /dbaas-migration-status/{name}`
pub async fn migration_status(State(c): State<Control>, p: Params) -> ApiResult {
    let m = c.migration_status(&service(&p, "name")?).await?;
    Ok(Json(views::migration_status(&m)))
}

/// `POST /dbaas-postgres/{name}/migration/stop`
pub async fn stop_migration(State(c): State<Control>, p: Params) -> ApiResult {
    let op = c.stop_migration(&service(&p, "name")?).await?;
    Ok(Json(views::operation(&op)))
}

/// `POST /dbaas-task-migration-check/{service}`
pub async fn migration_check(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    let check = crate::requests::migration_check(&b)?;
    let op = c.migration_check(&service(&p, "service")?, check).await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /dbaas-task/{service}/{id}`
pub async fn get_task(State(c): State<Control>, p: Params) -> ApiResult {
    let t = c
        .migration_task(&service(&p, "service")?, p.get("id")?)
        .await?;
    Ok(Json(json!({
        "id": t.id.to_string(),
        "create-time": t.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "result": t.result,
        "result-codes": [],
        "success": t.success,
        "task-type": "migration_check",
    })))
}

/// `GET /dbaas-integration/{id}`
pub async fn get_integration(State(c): State<Control>, p: Params) -> ApiResult {
    Ok(Json(views::integration(&c.integration(p.get("name")?)?)))
}

/// `DELETE /dbaas-integration/{id}`: promotes the read replica.
pub async fn delete_integration(State(c): State<Control>, p: Params) -> ApiResult {
    let op = c.delete_integration(p.get("name")?).await?;
    Ok(Json(views::operation(&op)))
}

/// `PUT /dbaas-integration/{id}`: a read_replica has no settings to change.
pub async fn update_integration(
    State(c): State<Control>,
    p: Params,
    JsonObject(b): JsonObject,
) -> ApiResult {
    c.integration(p.get("name")?)?;
    let settings = b
        .get("settings")
        .ok_or_else(|| pgbay_control::InputError::new("settings", "is required"))?;
    if settings.as_object().is_none_or(|o| !o.is_empty()) {
        return Err(
            pgbay_control::InputError::new("settings", "read_replica has no settings").into(),
        );
    }
    Err(pgbay_control::InputError::new("settings", "read_replica has no settings to change").into())
}

/// `POST /dbaas-integration`: `read_replica` makes `dest-service` (a service that holds no data
/// yet) a read replica of `source-service`; the document's other types (datasource, logs,
/// metrics) integrate services pgbay does not run.
pub async fn create_integration(State(c): State<Control>, JsonObject(b): JsonObject) -> ApiResult {
    use pgbay_control::InputError;
    requests::refuse_unknown(
        &b,
        &[
            "integration-type",
            "source-service",
            "dest-service",
            "settings",
        ],
    )?;
    // A field given with another type than a string is refused as such, not as missing.
    let text = |f: &str| -> Result<Option<&str>, InputError> {
        b.get(f)
            .filter(|v| !v.is_null())
            .map(|v| requests::string(f, v))
            .transpose()
    };
    match text("integration-type")? {
        Some("read_replica") => {
            if b.get("settings")
                .is_some_and(|s| s.as_object().is_none_or(|o| !o.is_empty()))
            {
                return Err(InputError::new("settings", "read_replica has no settings").into());
            }
            let name = |f: &str| -> Result<ServiceName, ApiError> {
                let v = text(f)?.ok_or_else(|| InputError::new(f, "is required"))?;
                Ok(ServiceName::parse(f, v)?)
            };
            let op = c
                .create_read_replica_integration(&name("source-service")?, &name("dest-service")?)
                .await?;
            Ok(Json(views::operation(&op)))
        }
        Some(t @ ("datasource" | "logs" | "metrics")) => Err(ApiError::NotImplemented(format!(
            "create-dbaas-integration of type {t} (POST /dbaas-integration) is not served by \
             pgbay: it has no Grafana, logs or metrics services"
        ))),
        Some(t) => Err(InputError::new(
            "integration-type",
            format!("{t:?} is not one of read_replica, datasource, logs, metrics"),
        )
        .into()),
        None => Err(InputError::new("integration-type", "is required").into()),
    }
}

/// `GET /dbaas-integration-types`
pub async fn integration_types() -> ApiResult {
    Ok(Json(json!({"dbaas-integration-types": [{
        "type": "read_replica",
        "source-description": "PostgreSQL service",
        "source-service-types": ["pg"],
        "dest-description": "PostgreSQL service",
        "dest-service-types": ["pg"],
        "settings": {"type": "object", "title": "read_replica", "properties": {},
                     "additionalProperties": false},
    }]})))
}

/// `GET /dbaas-integration-settings/{integration-type}/{source-type}/{dest-type}`
pub async fn integration_settings(p: Params) -> ApiResult {
    let (t, src, dst) = (p.get("name")?, p.get("p2")?, p.get("p3")?);
    if t != "read_replica" {
        return Err(pgbay_control::InputError::new(
            "integration-type",
            format!("{t:?}: pgbay serves read_replica only"),
        )
        .into());
    }
    if src != "pg" || dst != "pg" {
        return Err(pgbay_control::InputError::new(
            "source-type",
            "read_replica integrates pg with pg",
        )
        .into());
    }
    Ok(Json(
        json!({"settings": {"type": "object", "title": "read_replica",
                                "properties": {}, "additionalProperties": false}}),
    ))
}
