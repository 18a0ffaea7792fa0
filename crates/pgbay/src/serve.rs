//! `pgbay serve`: opens the control plane on the data dir, serves the API, and on SIGTERM/SIGINT
//! stops accepting requests, stops every service cluster and exits 0.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{anyhow, Context};
use pgbay_api::Credentials;
use pgbay_control::{Control, ControlConfig};
use rand::distributions::{Alphanumeric, DistString};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ServeArgs;

/// API credentials: `PGBAY_API_KEY`/`PGBAY_API_SECRET`, else `<data-dir>/api-credentials`,
/// generated (mode 0600, printed once) on first start.
fn credentials(data_dir: &Path) -> anyhow::Result<Credentials> {
    if let (Ok(key), Ok(secret)) = (
        std::env::var("PGBAY_API_KEY"),
        std::env::var("PGBAY_API_SECRET"),
    ) {
        if key.is_empty() || secret.is_empty() {
            return Err(anyhow!(
                "PGBAY_API_KEY and PGBAY_API_SECRET must not be empty"
            ));
        }
        return Ok(Credentials { key, secret });
    }
    let path = data_dir.join("api-credentials");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow!("{} lacks `{name}=`", path.display()))
        };
        return Ok(Credentials {
            key: field("key")?,
            secret: field("secret")?,
        });
    }
    let mut rng = rand::thread_rng();
    let creds = Credentials {
        key: format!("EXO{}", hex::encode(rand::Rng::gen::<[u8; 12]>(&mut rng))),
        secret: Alphanumeric.sample_string(&mut rng, 43),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "key={}\nsecret={}", creds.key, creds.secret)?;
    f.sync_all()?;
    println!(
        "pgbay: generated API credentials (stored in {}):",
        path.display()
    );
    println!("  PGBAY_API_KEY={}", creds.key);
    println!("  PGBAY_API_SECRET={}", creds.secret);
    Ok(creds)
}

/// Runs `pgbay serve` until SIGTERM/SIGINT.
pub async fn run(
    args: ServeArgs,
    service_logs: std::sync::Arc<crate::service_logs::ServiceLogs>,
) -> anyhow::Result<()> {
    match crate::http::raise_nofile_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let pg_bin_dir = match args.pg_bin_dir.clone() {
        Some(d) => d,
        None => pgbay_control::local::default_bin_dir()
            .ok_or_else(|| anyhow!("no PostgreSQL binaries found; pass --pg-bin-dir"))?,
    };
    let creds = credentials(&data_dir)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let control = Control::start(ControlConfig {
        data_dir: data_dir.clone(),
        public_host: args.public_host.clone(),
        port_range: args.port_range.clone(),
        pg_bin_dir,
        zone: args.zone.clone(),
        apply_timeout: pgbay_control::APPLY_TIMEOUT,
        external: args.external_admin_uri.clone(),
    })
    .await
    .map_err(|e| anyhow!("starting control plane: {e}"))?;

    let pooler = pgbay_pooler::Pooler::new();
    crate::dataplane::set_client_limits(pgbay_pooler::ClientLimits {
        query_wait_timeout: std::time::Duration::from_secs(args.query_wait_timeout),
        idle_transaction_timeout: (args.idle_transaction_timeout > 0)
            .then(|| std::time::Duration::from_secs(args.idle_transaction_timeout)),
        client_message_timeout: std::time::Duration::from_secs(args.client_message_timeout),
        ..pgbay_pooler::ClientLimits::default()
    });
    let data_plane = crate::dataplane::spawn(&control, pooler.clone());

    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding API on {}", args.api_listen))?;
    tracing::info!(
        api = %listener.local_addr()?,
        data_dir = %data_dir.display(),
        pg_version = control.pg_version(),
        "pgbay serving"
    );
    let local = listener.local_addr()?;
    let metrics_at = pgbay_api::MetricsAt {
        host: if local.ip().is_unspecified() {
            args.public_host.clone()
        } else {
            local.ip().to_string()
        },
        port: local.port(),
    };
    control.set_pool_stats(std::sync::Arc::new(crate::dataplane::PoolMetricsOf(
        pooler.clone(),
    )));
    control.set_pooler_logs(service_logs);
    let app = pgbay_api::router_with_pool_metrics(
        control.clone(),
        creds,
        metrics_at,
        std::sync::Arc::new(crate::dataplane::PoolMetricsOf(pooler.clone())),
    )
    .merge(crate::console::router());
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let limits = crate::http::Limits {
        max_connections: args.api_max_connections as usize,
        header_timeout: std::time::Duration::from_secs(args.api_header_timeout),
        body_timeout: std::time::Duration::from_secs(args.api_body_timeout),
    };
    crate::http::serve(listener, app, limits, shutdown).await;
    // Clients first, then the clusters behind them.
    pooler.shutdown().await;
    data_plane.abort();
    control.shutdown().await;
    tracing::info!("pgbay stopped");
    Ok(())
}
