//! What the Rust programs of the driver matrix (`driver_tokio_postgres`, `driver_sqlx`) share:
//! the settings from the environment, the checks, and how a run ends.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

pub type Err = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, Err>;

pub fn env(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

pub fn want(cond: bool, what: impl Into<String>) -> Res<()> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// The rows the COPY step sends (`COPY {table} (id, note) FROM STDIN`), as text.
pub fn copy_rows() -> String {
    (100..200).map(|i| format!("{i}\trow {i}\n")).collect()
}

/// The COPY that reads `copy_rows` back, in the same order and form.
pub fn copy_out_sql(table: &str) -> String {
    format!("COPY (SELECT id, note FROM {table} WHERE id >= 100 ORDER BY id) TO STDOUT")
}

static STEP: Mutex<&str> = Mutex::new("start");

/// Names the step that runs now (a failure names it).
pub fn step(name: &'static str) {
    *STEP.lock().unwrap_or_else(|e| e.into_inner()) = name;
}

/// Runs the program's steps for at most 150 s: prints `OK`, or exits 1 with the step it failed
/// in, the error and its SQLSTATE (`sqlstate`) on stderr.
pub async fn run_steps(
    run: impl Future<Output = Res<()>>,
    sqlstate: impl Fn(&Err) -> Option<String>,
) {
    let err = match tokio::time::timeout(Duration::from_secs(150), run).await {
        Ok(Ok(())) => {
            println!("OK");
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => "no end after 150 s".into(),
    };
    let step = *STEP.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "FAIL in step '{step}': {err} (SQLSTATE {:?})",
        sqlstate(&err)
    );
    std::process::exit(1);
}
