//! The `pgbay` binary: command line, logging, `serve`, and the client subcommands.

mod api_tls;
mod cli;
mod client;
mod console;
mod dataplane;
mod forward;
mod http;
mod log_escape;
mod serve;
mod service_logs;
mod takeover;

use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() -> anyhow::Result<()> {
    let args = match cli::Cli::parse().command {
        cli::Command::Serve(args) => *args,
        // The client subcommands are blocking HTTP calls: no runtime, no log; an error is the
        // API's message on stderr and exit code 1.
        other => {
            if let Err(e) = client::run(&other) {
                eprintln!("pgbay: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
    };
    // PGBAY_LOG filters what pgbay writes to stderr; the pooler's lines about each service are
    // kept for the API's service logs whatever it says (see service_logs.rs). Both escape control
    // characters in every value (log_escape.rs): a client-chosen name cannot forge a line.
    let service_logs = Arc::new(service_logs::ServiceLogs::default());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(log_escape::EscapedFields::default())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(
                    EnvFilter::try_from_env("PGBAY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
                ),
        )
        .with(
            service_logs::Capture::new(service_logs.clone())
                .with_filter(service_logs::Capture::filter()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve::run(args, service_logs))
}
