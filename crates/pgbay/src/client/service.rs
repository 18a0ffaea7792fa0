//! `pgbay service create|list|show|delete`.

use std::time::Instant;

use anyhow::bail;
use serde_json::{json, Value};

use super::api::seg;
use super::output::{self, cell, Spinner};
use super::{Ctx, POLL_EVERY, WAIT_LIMIT};
use crate::cli::{Output, ServiceAction};

pub fn run(ctx: &Ctx, action: &ServiceAction) -> anyhow::Result<()> {
    match action {
        ServiceAction::Create {
            name,
            plan,
            migrate_from,
            migration_method,
            no_wait,
        } => {
            let mut body = json!({ "plan": plan });
            if let Some(uri) = migrate_from {
                body["migration"] = migration_body(uri, migration_method)?;
            }
            create(ctx, name, body, *no_wait)
        }
        ServiceAction::Fork {
            source,
            name,
            time,
            plan,
        } => {
            let plan = match plan {
                Some(p) => p.clone(),
                None => cell(
                    &ctx.api.get(&format!("/dbaas-postgres/{}", seg(source)))?,
                    "plan",
                ),
            };
            let mut body = json!({ "plan": plan, "fork-from-service": source });
            if let Some(t) = time {
                body["recovery-backup-time"] = json!(t);
            }
            create(ctx, name, body, false)
        }
        ServiceAction::Backups { name } => backups(ctx, name),
        ServiceAction::List => list(ctx),
        ServiceAction::Show { name } => show(ctx, name),
        ServiceAction::Delete { name } => {
            let op = ctx.api.delete(&format!("/dbaas-postgres/{}", seg(name)))?;
            let op = ctx.finish(op, &format!("deleting service {name}"))?;
            ctx.done(&op, &format!("service {name} deleted"));
            Ok(())
        }
    }
}

/// The document's `migration` object from `--migrate-from URI` (password from the URI, else
/// from `PGPASSWORD`).
fn migration_body(uri: &str, method: &str) -> anyhow::Result<Value> {
    let Some(src) = pgbay_control::migrate::check::source_from_uri(uri) else {
        bail!("--migrate-from: not a URI postgres://USER[:PASSWORD]@HOST[:PORT][/DBNAME]");
    };
    let password = match src.password.is_empty() {
        true => std::env::var("PGPASSWORD").unwrap_or_default(),
        false => src.password.clone(),
    };
    let mut m = json!({
        "host": src.host,
        "port": src.port,
        "username": src.user,
        "ssl": src.ssl,
        "method": method,
    });
    if !password.is_empty() {
        m["password"] = json!(password);
    }
    if let Some(db) = &src.dbname {
        m["dbname"] = json!(db);
    }
    Ok(m)
}

fn backups(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let v = ctx.api.get(&format!("/dbaas-postgres/{}", seg(name)))?;
    let list = items(&v, "backups");
    if ctx.output == Output::Json {
        output::json(&Value::from(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            ["backup-name", "backup-time", "data-size"]
                .iter()
                .map(|f| cell(b, f))
                .collect()
        })
        .collect();
    output::table(&["BACKUP", "TIME", "BYTES"], &rows);
    Ok(())
}

fn create(ctx: &Ctx, name: &str, body: Value, no_wait: bool) -> anyhow::Result<()> {
    let op = ctx
        .api
        .post(&format!("/dbaas-postgres/{}", seg(name)), &body)?;
    if no_wait {
        let id = cell(&op, "id");
        ctx.done(
            &op,
            &format!(
                "service {name}: creation accepted (operation {id}, {})",
                cell(&op, "state")
            ),
        );
        return Ok(());
    }
    let what = format!("creating service {name}");
    let op = ctx.finish(op, &what)?;
    // The operation ends once the service is recorded; provisioning may still be going on.
    let spinner = Spinner::start(&what);
    let started = Instant::now();
    loop {
        let svc = ctx.api.get(&format!("/dbaas-postgres/{}", seg(name)))?;
        let state = cell(&svc, "state");
        if state == "running" {
            break;
        }
        if started.elapsed() > WAIT_LIMIT {
            bail!("service {name} still {state} after {WAIT_LIMIT:?}");
        }
        spinner.set(&format!("{what} ({state})"));
        std::thread::sleep(POLL_EVERY);
    }
    drop(spinner);
    ctx.done(&op, &format!("service {name} is running"));
    Ok(())
}

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let v = ctx.api.get("/dbaas-service")?;
    if ctx.output == Output::Json {
        output::json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items(&v, "dbaas-services")
        .iter()
        .map(|s| {
            ["name", "type", "plan", "state", "created-at"]
                .iter()
                .map(|f| cell(s, f))
                .collect()
        })
        .collect();
    output::table(&["NAME", "TYPE", "PLAN", "STATE", "CREATED"], &rows);
    Ok(())
}

fn show(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let v = ctx.api.get(&format!("/dbaas-postgres/{}", seg(name)))?;
    if ctx.output == Output::Json {
        output::json(&v);
        return Ok(());
    }
    let component = |c: &str| {
        items(&v, "components")
            .iter()
            .find(|x| x.get("component").and_then(Value::as_str) == Some(c))
            .map(|x| format!("{}:{}", cell(x, "host"), cell(x, "port")))
            .unwrap_or_else(|| "-".into())
    };
    output::fields(&[
        ("NAME", cell(&v, "name")),
        ("PLAN", cell(&v, "plan")),
        ("STATE", cell(&v, "state")),
        ("VERSION", cell(&v, "version")),
        ("CREATED", cell(&v, "created-at")),
        ("POSTGRES", component("pg")),
        ("POOLER", component("pgbouncer")),
        ("URI", cell(&v, "uri")),
    ]);
    let dbs: Vec<Vec<String>> = items(&v, "databases")
        .iter()
        .map(|d| {
            vec![d
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| d.to_string())]
        })
        .collect();
    println!();
    output::table(&["DATABASE"], &dbs);
    let users: Vec<Vec<String>> = items(&v, "users")
        .iter()
        .map(|u| vec![cell(u, "username"), cell(u, "type")])
        .collect();
    println!();
    output::table(&["USER", "TYPE"], &users);
    println!();
    super::pool::print_table(&items(&v, "connection-pools"));
    Ok(())
}

/// The array `field` of `v` (empty when absent).
pub fn items(v: &Value, field: &str) -> Vec<Value> {
    v.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}
