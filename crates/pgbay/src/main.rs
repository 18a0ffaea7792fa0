//! The `pgbay` binary: command line, logging, `serve`, and the client subcommands.

mod cli;
mod client;
mod console;
mod dataplane;
mod http;
mod serve;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = match cli::Cli::parse().command {
        cli::Command::Serve(args) => args,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PGBAY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve::run(args))
}
