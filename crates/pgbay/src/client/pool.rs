//! `pgbay pool …`. The API has no pool resource to GET: `show`, `list` and `uri` read the
//! service's `connection-pools`.

use anyhow::anyhow;
use serde_json::{json, Map, Value};

use super::api::seg;
use super::output::{self, cell};
use super::service::items;
use super::Ctx;
use crate::cli::{Output, PoolAction};

pub fn run(ctx: &Ctx, action: &PoolAction) -> anyhow::Result<()> {
    match action {
        PoolAction::Create {
            service,
            pool,
            database,
            mode,
            size,
            user,
        } => {
            let mut body = json!({ "name": pool, "database-name": database });
            put_opt(&mut body, "mode", mode.as_ref().map(|m| json!(m)));
            put_opt(&mut body, "size", size.map(|s| json!(s)));
            put_opt(&mut body, "username", user.as_ref().map(|u| json!(u)));
            let op = ctx.api.post(
                &format!("/dbaas-postgres/{}/connection-pool", seg(service)),
                &body,
            )?;
            let op = ctx.finish(op, &format!("creating pool {pool}"))?;
            ctx.done(
                &op,
                &format!(
                    "pool {pool} created in service {service}; \
                     `pgbay pool uri {service} {pool}` prints its connection URI"
                ),
            );
        }
        PoolAction::Update {
            service,
            pool,
            database,
            mode,
            size,
            user,
        } => {
            let mut body = Value::Object(Map::new());
            put_opt(
                &mut body,
                "database-name",
                database.as_ref().map(|d| json!(d)),
            );
            put_opt(&mut body, "mode", mode.as_ref().map(|m| json!(m)));
            put_opt(&mut body, "size", size.map(|s| json!(s)));
            put_opt(&mut body, "username", user.as_ref().map(|u| json!(u)));
            let op = ctx.api.put(&path(service, pool), &body)?;
            let op = ctx.finish(op, &format!("updating pool {pool}"))?;
            ctx.done(&op, &format!("pool {pool} of service {service} updated"));
        }
        PoolAction::Delete { service, pool } => {
            let op = ctx.api.delete(&path(service, pool))?;
            let op = ctx.finish(op, &format!("deleting pool {pool}"))?;
            ctx.done(&op, &format!("pool {pool} deleted from service {service}"));
        }
        PoolAction::Show { service, pool } => {
            let p = find(ctx, service, pool)?;
            match ctx.output {
                Output::Json => output::json(&p),
                Output::Table => output::fields(&[
                    ("NAME", cell(&p, "name")),
                    ("DATABASE", cell(&p, "database")),
                    ("USER", cell(&p, "username")),
                    ("MODE", cell(&p, "mode")),
                    ("SIZE", cell(&p, "size")),
                    ("URI", cell(&p, "connection-uri")),
                ]),
            }
        }
        PoolAction::List { service } => {
            let svc = ctx.api.get(&format!("/dbaas-postgres/{}", seg(service)))?;
            let pools = items(&svc, "connection-pools");
            match ctx.output {
                Output::Json => output::json(&Value::Array(pools)),
                Output::Table => print_table(&pools),
            }
        }
        PoolAction::Uri { service, pool } => {
            // The URI alone whatever -o says: it is meant for `psql "$(pgbay pool uri …)"`.
            println!("{}", cell(&find(ctx, service, pool)?, "connection-uri"));
        }
    }
    Ok(())
}

fn path(service: &str, pool: &str) -> String {
    format!(
        "/dbaas-postgres/{}/connection-pool/{}",
        seg(service),
        seg(pool)
    )
}

fn put_opt(body: &mut Value, field: &str, v: Option<Value>) {
    if let (Some(v), Value::Object(o)) = (v, body) {
        o.insert(field.to_string(), v);
    }
}

/// The pool `pool` of `service`, as the service's `connection-pools` shows it.
fn find(ctx: &Ctx, service: &str, pool: &str) -> anyhow::Result<Value> {
    let svc = ctx.api.get(&format!("/dbaas-postgres/{}", seg(service)))?;
    items(&svc, "connection-pools")
        .into_iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(pool))
        .ok_or_else(|| anyhow!("connection pool {pool} not found in service {service}"))
}

/// Pools as a table (no URIs: they carry passwords; `pool show` and `pool uri` print them).
pub fn print_table(pools: &[Value]) {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            ["name", "database", "username", "mode", "size"]
                .iter()
                .map(|f| cell(p, f))
                .collect()
        })
        .collect();
    output::table(&["POOL", "DATABASE", "USER", "MODE", "SIZE"], &rows);
}
