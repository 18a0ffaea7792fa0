//! `pgbay database …` and `pgbay user …`: the objects inside a service's PostgreSQL server.

use serde_json::{json, Value};

use super::api::seg;
use super::output;
use super::Ctx;
use crate::cli::{DatabaseAction, Output, UserAction};

pub fn database(ctx: &Ctx, action: &DatabaseAction) -> anyhow::Result<()> {
    let (op, done) = match action {
        DatabaseAction::Create { service, database } => {
            let op = ctx.api.post(
                &format!("/dbaas-postgres/{}/database", seg(service)),
                &json!({ "database-name": database }),
            )?;
            let op = ctx.finish(op, &format!("creating database {database}"))?;
            (
                op,
                format!("database {database} created in service {service}"),
            )
        }
        DatabaseAction::Delete { service, database } => {
            let op = ctx.api.delete(&format!(
                "/dbaas-postgres/{}/database/{}",
                seg(service),
                seg(database)
            ))?;
            let op = ctx.finish(op, &format!("deleting database {database}"))?;
            (
                op,
                format!("database {database} deleted from service {service}"),
            )
        }
    };
    ctx.done(&op, &done);
    Ok(())
}

pub fn user(ctx: &Ctx, action: &UserAction) -> anyhow::Result<()> {
    let path =
        |service: &str, user: &str| format!("/dbaas-postgres/{}/user/{}", seg(service), seg(user));
    let (op, done) = match action {
        UserAction::Create { service, user } => {
            let op = ctx.api.post(
                &format!("/dbaas-postgres/{}/user", seg(service)),
                &json!({ "username": user }),
            )?;
            let op = ctx.finish(op, &format!("creating user {user}"))?;
            (
                op,
                format!(
                    "user {user} created in service {service}; \
                     `pgbay user show-password {service} {user}` prints its password"
                ),
            )
        }
        UserAction::Delete { service, user } => {
            let op = ctx.api.delete(&path(service, user))?;
            let op = ctx.finish(op, &format!("deleting user {user}"))?;
            (op, format!("user {user} deleted from service {service}"))
        }
        UserAction::ResetPassword {
            service,
            user,
            password,
        } => {
            let body = match password {
                Some(p) => json!({ "password": p }),
                None => json!({}),
            };
            let op = ctx
                .api
                .put(&format!("{}/password/reset", path(service, user)), &body)?;
            let op = ctx.finish(op, &format!("resetting the password of {user}"))?;
            (op, format!("password of user {user} reset"))
        }
        UserAction::ShowPassword { service, user } => {
            let v = ctx
                .api
                .get(&format!("{}/password/reveal", path(service, user)))?;
            match ctx.output {
                Output::Json => output::json(&v),
                Output::Table => println!(
                    "{}",
                    v.get("password").and_then(Value::as_str).unwrap_or("")
                ),
            }
            return Ok(());
        }
    };
    ctx.done(&op, &done);
    Ok(())
}
