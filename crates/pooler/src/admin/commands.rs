//! Parsing a console command and running it: SHOW (see `show`) and the pool controls PAUSE,
//! RESUME, RECONNECT, KILL and WAIT_CLOSE, with PgBouncer's semantics and error texts.
//!
//! - `PAUSE [pool]`: new transactions wait (CL_WAITING) until RESUME; the command returns once
//!   no server connection of those pools is lent (running transactions ended; in session mode,
//!   their clients left).
//! - `RESUME [pool]`: waiting clients go on.
//! - `RECONNECT [pool]`: every server connection is closed when next released (idle ones at
//!   once); new ones are made as needed.
//! - `KILL pool` (or all pools): pauses it, disconnects its clients ("database removed") at
//!   their next request or transaction end, closes its server connections as RECONNECT does.
//! - `WAIT_CLOSE [pool]`: returns once no server connection of those pools is lent; after a
//!   RECONNECT that means the old connections are all closed (new ones made meanwhile may have
//!   to be released too, so under constant load it can wait longer than PgBouncer's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::result::{Answer, Column};
use super::{show, trim, Console};
use crate::backend::Pool;
use crate::errors::{self, ClientError};

/// Pool generations taken by RECONNECT/KILL: counted down from the top so they never meet the
/// ones `apply` counts up from 1.
static RECONNECT_GEN: AtomicU64 = AtomicU64::new(u64::MAX);

/// How often PAUSE and WAIT_CLOSE look whether the lent connections are back.
const POLL: Duration = Duration::from_millis(10);

fn invalid(text: &str) -> ClientError {
    errors::admin_error(format!("invalid command '{text}', use SHOW HELP;"))
}

/// (verb, argument) upper-cased verb; the argument keeps its case (pool names do).
fn split(text: &str) -> (String, Option<&str>) {
    let t = trim(text);
    let mut it = t.splitn(2, char::is_whitespace);
    let verb = it.next().unwrap_or("").to_ascii_uppercase();
    let arg = it.next().map(str::trim).filter(|a| !a.is_empty());
    (verb, arg)
}

/// The row shape of a command without running it: Some(columns) for SHOW, None for the
/// commands that return no rows; an error for an unknown command.
pub fn columns(text: &str) -> Result<Option<&'static [Column]>, ClientError> {
    let (verb, arg) = split(text);
    match (verb.as_str(), arg) {
        ("SHOW", Some(what)) => match show::columns(&what.to_ascii_uppercase()) {
            Some(c) => Ok(Some(c)),
            None if what.eq_ignore_ascii_case("HELP") => Ok(None),
            None => Err(invalid(trim(text))),
        },
        ("PAUSE" | "RESUME" | "RECONNECT" | "KILL" | "WAIT_CLOSE", _) => Ok(None),
        _ => Err(invalid(trim(text))),
    }
}

/// Runs one command.
pub async fn execute(console: &Console, text: &str) -> Result<Answer, ClientError> {
    let (verb, arg) = split(text);
    match verb.as_str() {
        "SHOW" => {
            let what = arg.unwrap_or("").to_ascii_uppercase();
            if what == "HELP" {
                return Ok(help());
            }
            show::show(console, &what).ok_or_else(|| invalid(trim(text)))
        }
        "PAUSE" => {
            let pools = targets(console, arg)?;
            for p in &pools {
                p.pause();
            }
            wait_unlent(&pools).await;
            Ok(Answer::done("PAUSE"))
        }
        "RESUME" => {
            let pools = targets(console, arg)?;
            match arg {
                Some(name) if !pools.iter().any(|p| p.is_paused()) => {
                    return Err(errors::admin_error(format!(
                        "database {name} is not paused"
                    )))
                }
                None if !pools.iter().any(|p| p.is_paused()) => {
                    return Err(errors::admin_error("pooler is not paused/suspended"))
                }
                _ => {}
            }
            for p in &pools {
                p.resume();
            }
            Ok(Answer::done("RESUME"))
        }
        "RECONNECT" => {
            for p in targets(console, arg)? {
                p.reconnect(RECONNECT_GEN.fetch_sub(1, Ordering::Relaxed));
            }
            Ok(Answer::done("RECONNECT"))
        }
        "KILL" => {
            for p in targets(console, arg)? {
                p.kill(RECONNECT_GEN.fetch_sub(1, Ordering::Relaxed));
            }
            Ok(Answer::done("KILL"))
        }
        "WAIT_CLOSE" => {
            let pools = targets(console, arg)?;
            wait_unlent(&pools).await;
            Ok(Answer::done("WAIT_CLOSE"))
        }
        _ => Err(invalid(trim(text))),
    }
}

/// The named pool, or all of them.
fn targets(console: &Console, arg: Option<&str>) -> Result<Vec<Arc<Pool>>, ClientError> {
    match arg {
        Some(name) => {
            if name == crate::frontend::login::ADMIN_DATABASE {
                return Err(errors::admin_error(format!(
                    "cannot pause admin db: {name}"
                )));
            }
            Ok(vec![console.pool(name)?])
        }
        None => Ok(console.pools()),
    }
}

/// Until no server connection of `pools` is lent to a client (or being reset or made for one).
async fn wait_unlent(pools: &[Arc<Pool>]) {
    loop {
        let busy = pools.iter().any(|p| {
            let s = p.stats();
            s.sv_active + s.sv_used > 0
        });
        if !busy {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn help() -> Answer {
    let mut a = Answer::done("SHOW");
    a.notices = vec![
        "Console usage".into(),
        "\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION".into(),
        "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|LISTS|STATE".into(),
        "\tPAUSE [<db>]".into(),
        "\tRESUME [<db>]".into(),
        "\tRECONNECT [<db>]".into(),
        "\tKILL [<db>]".into(),
        "\tWAIT_CLOSE [<db>]".into(),
    ];
    a
}
