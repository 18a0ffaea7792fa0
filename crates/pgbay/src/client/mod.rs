//! The client subcommands (`pgbay service|database|user|pool …`): each is one or a few signed
//! calls of the HTTP API of a running pgbay, then a table or the API's JSON. Mutations return an
//! operation, which the CLI polls until it ends; a failed operation, an API error or a refused
//! signature is printed as the API's message and makes the process exit non-zero.

mod api;
mod credentials;
mod objects;
mod output;
mod pool;
mod service;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::Value;

use crate::cli::{ClientArgs, Command, Output};
use api::Api;
use output::Spinner;

/// How often a pending operation or a provisioning service is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long the CLI waits for an operation or a service before giving up (the work goes on).
const WAIT_LIMIT: Duration = Duration::from_secs(15 * 60);

/// What every command gets: the API and the output format.
pub struct Ctx {
    api: Api,
    output: Output,
}

impl Ctx {
    fn new(args: &ClientArgs) -> anyhow::Result<Ctx> {
        let (creds, source) = credentials::resolve(&args.data_dir)?;
        Ok(Ctx {
            api: Api::new(&args.url, creds, source, args.ca.as_deref(), &args.data_dir)?,
            output: args.output,
        })
    }

    /// Waits for `op` to leave `pending` (spinner: `what`); `Err` unless it ends in `success`.
    fn finish(&self, op: Value, what: &str) -> anyhow::Result<Value> {
        let spinner = Spinner::start(what);
        let id = op
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the API answered without an operation: {op}"))?
            .to_string();
        let started = Instant::now();
        let mut op = op;
        while op.get("state").and_then(Value::as_str) == Some("pending") {
            if started.elapsed() > WAIT_LIMIT {
                bail!("operation {id} still pending after {WAIT_LIMIT:?} ({what})");
            }
            std::thread::sleep(POLL_EVERY);
            op = self.api.get(&format!("/operation/{}", api::seg(&id)))?;
            spinner.set(&format!("{what} (operation {id} pending)"));
        }
        drop(spinner);
        match op.get("state").and_then(Value::as_str) {
            Some("success") => Ok(op),
            state => {
                let reason = output::cell(&op, "reason");
                let message = op
                    .get("message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .unwrap_or("no message");
                bail!(
                    "{what}: operation {id} ended in {}: {reason}: {message}",
                    state.unwrap_or("an unknown state")
                )
            }
        }
    }

    /// Prints the outcome of a mutation: `done` for people, the final operation for scripts.
    fn done(&self, op: &Value, done: &str) {
        match self.output {
            Output::Table => println!("{done}"),
            Output::Json => output::json(op),
        }
    }
}

/// Runs a client subcommand (`serve` is not one: nothing to do).
pub fn run(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => Ok(()),
        Command::Service(a) => service::run(&Ctx::new(&a.client)?, &a.action),
        Command::Database(a) => objects::database(&Ctx::new(&a.client)?, &a.action),
        Command::User(a) => objects::user(&Ctx::new(&a.client)?, &a.action),
        Command::Pool(a) => pool::run(&Ctx::new(&a.client)?, &a.action),
    }
}
