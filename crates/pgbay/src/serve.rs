//! `pgbay serve`: opens the control plane on the data dir, serves the API, and on SIGTERM/SIGINT
//! stops accepting, lets clients finish their transactions (`--drain-timeout`), stops every
//! service cluster and exits 0. Started while another pgbay serves the same data dir, it takes
//! over that one's sockets and clusters instead (`takeover`).

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

/// How many client sockets the pooler may hold under an open-files soft limit of `soft`: what is
/// left after pgbay's own reserve and the API's connections, so that neither pooler clients nor
/// API clients can take the descriptors the store, the clusters and the supervisor need. A
/// reserve that leaves less than a quarter of the limit is cut down to leave that quarter (and
/// the log says how many client sockets that is).
fn client_socket_limit(soft: u64, reserve: u32, api_max_connections: u32) -> u32 {
    let soft = u32::try_from(soft).unwrap_or(u32::MAX);
    soft.saturating_sub(reserve)
        .saturating_sub(api_max_connections)
        .max(soft / 4)
}

/// The S3 repository of the flags, with its key and secret from the environment only.
fn backup_s3(args: &ServeArgs) -> anyhow::Result<Option<pgbay_control::S3Repo>> {
    let (Some(endpoint), Some(bucket)) = (&args.backup_s3_endpoint, &args.backup_s3_bucket) else {
        return Ok(None);
    };
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("--backup-s3-endpoint needs {name} in the environment"))
    };
    Ok(Some(pgbay_control::S3Repo {
        endpoint: endpoint.clone(),
        bucket: bucket.clone(),
        region: args.backup_s3_region.clone(),
        path_style: args.backup_s3_uri_style == "path",
        verify_tls: args.backup_s3_verify_tls,
        ca_file: args.backup_s3_ca_file.clone(),
        key: env("PGBAY_BACKUP_S3_KEY")?,
        secret: env("PGBAY_BACKUP_S3_KEY_SECRET")?,
    }))
}

/// Runs `pgbay serve` until SIGTERM/SIGINT.
pub async fn run(
    args: ServeArgs,
    service_logs: std::sync::Arc<crate::service_logs::ServiceLogs>,
) -> anyhow::Result<()> {
    if args.notify_total_budget < args.notify_client_budget {
        return Err(anyhow!(
            "--notify-total-budget ({}) must be at least --notify-client-budget ({})",
            args.notify_total_budget,
            args.notify_client_budget
        ));
    }
    let nofile = match crate::http::raise_nofile_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open files limit");
            Some(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open files limit");
            None
        }
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let pg_bin_dir = match args.pg_bin_dir.clone() {
        Some(d) => d,
        None => pgbay_control::local::default_bin_dir()
            .ok_or_else(|| anyhow!("no PostgreSQL binaries found; pass --pg-bin-dir"))?,
    };
    let creds = credentials(&data_dir)?;
    let backup_s3 = backup_s3(&args)?;
    // Before anything else touches the data dir's clusters: a running pgbay hands over its
    // sockets and stops its supervisor.
    let mut inherited = tokio::task::spawn_blocking({
        let d = data_dir.clone();
        move || crate::takeover::take_over(&d)
    })
    .await??;
    if let Some(i) = &inherited {
        tracing::info!(
            api_sockets = i.api.len(),
            port_sockets = i.ports.len(),
            "took over the sockets of the running pgbay"
        );
    }
    // Bound before the control plane starts: the other nodes are told the port it got (an
    // `--api-listen` port 0 lets the system pick one); requests wait in its backlog meanwhile.
    let inherited_api = inherited.as_mut().and_then(|i| {
        let at = i
            .api
            .iter()
            .position(|l| l.local_addr().ok() == Some(args.api_listen))?;
        Some(i.api.swap_remove(at))
    });
    let listener = match inherited_api {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::bind(args.api_listen)
            .await
            .with_context(|| format!("binding API on {}", args.api_listen))?,
    };
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
        service_uid_range: args.service_uid_range,
        store: args.store.clone(),
        backup_repo: args.backup_repo.clone(),
        backup_s3,
        etcd: args.etcd.clone().map(|e| e.0),
        node: {
            let api_url = api_url(&args, listener.local_addr()?.port());
            let mut node = pgbay_control::NodeConfig::single(&data_dir, &api_url);
            if let Some(name) = &args.node_name {
                node.name = name.clone();
            }
            node.timeout = std::time::Duration::from_secs(args.node_timeout);
            node.rebuild_lost_after = (args.rebuild_lost_after > 0)
                .then(|| std::time::Duration::from_secs(args.rebuild_lost_after));
            node
        },
        service_host: args.service_host.clone(),
        // Never a flag: a secret on a command line is in every process list.
        cluster_key: std::env::var("PGBAY_CLUSTER_KEY").ok(),
    })
    .await
    .map_err(|e| anyhow!("starting control plane: {e}"))?;

    // Nodes sharing a store reach each other's clusters over TCP: verified with the shared CA.
    if control.shared_store() {
        pgbay_pooler::verify_backends_with(&control.tls_material().ca_pem)
            .map_err(|e| anyhow!("configuring TLS towards other nodes' servers: {e}"))?;
    }
    // Every node accepts the same key pair: the store's.
    let creds = {
        let (key, secret) = control
            .shared_api_credentials(&creds.key, &creds.secret)
            .await
            .map_err(|e| anyhow!("sharing the API credentials: {e}"))?;
        Credentials { key, secret }
    };
    let pooler = pgbay_pooler::Pooler::new();
    if let Some(i) = &mut inherited {
        pooler.inherit(std::mem::take(&mut i.ports));
    }
    pooler.set_notify_budget(pgbay_pooler::NotifyBudget {
        client_bytes: args.notify_client_budget,
        total_bytes: args.notify_total_budget,
    });
    // Pooler admission before login: the node's limits, and its share of the open files.
    if let Some(soft) = nofile {
        let max = client_socket_limit(soft, args.fd_reserve, args.api_max_connections);
        tracing::info!(
            client_sockets = max,
            fd_reserve = args.fd_reserve,
            api_max_connections = args.api_max_connections,
            "pooler client sockets limit"
        );
        pooler.set_client_socket_limit(max);
    }
    let client_limits = pgbay_pooler::ClientLimits {
        max_pending_logins: args.max_pending_logins,
        login_timeout: std::time::Duration::from_secs(args.client_login_timeout),
        query_wait_timeout: std::time::Duration::from_secs(args.query_wait_timeout),
        idle_transaction_timeout: (args.idle_transaction_timeout > 0)
            .then(|| std::time::Duration::from_secs(args.idle_transaction_timeout)),
        client_message_timeout: std::time::Duration::from_secs(args.client_message_timeout),
        ..pgbay_pooler::ClientLimits::default()
    };
    let data_plane = crate::dataplane::spawn(&control, pooler.clone(), client_limits);

    // HTTPS by default beyond loopback (see api_tls.rs); the CA exists once control started.
    let api_tls = crate::api_tls::effective(args.api_tls.as_ref(), args.api_listen);
    let api_tls_config =
        crate::api_tls::server_config(&api_tls, &data_dir, args.api_listen, &args.public_host)?;

    let api_fd = {
        use std::os::fd::AsFd;
        listener.as_fd().try_clone_to_owned()?
    };
    let successor = {
        let l = crate::takeover::listen(&data_dir)?;
        tokio::spawn(crate::takeover::accept_successor(l))
    };
    tracing::info!(
        api = %listener.local_addr()?,
        api_tls = %api_tls,
        data_dir = %data_dir.display(),
        store = %store_shown(args.store.as_deref()),
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
    let drain_timeout = std::time::Duration::from_secs(args.drain_timeout);
    let drain: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> =
        Default::default();
    let handed_over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let (pooler, control, drain, handed_over) = (
            pooler.clone(),
            control.clone(),
            drain.clone(),
            handed_over.clone(),
        );
        let data_plane = data_plane.abort_handle();
        async move {
            let reason = tokio::select! {
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM: draining, then shutting down");
                    pgbay_pooler::DrainReason::ShuttingDown
                }
                _ = sigint.recv() => {
                    tracing::info!("SIGINT: draining, then shutting down");
                    pgbay_pooler::DrainReason::ShuttingDown
                }
                () = handed_over_to(successor, &pooler, api_fd) => {
                    // The successor adopts the clusters: nothing here may touch them any more.
                    control.stop_background();
                    data_plane.abort();
                    handed_over.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("a successor took over the sockets: draining, then exiting");
                    pgbay_pooler::DrainReason::Restarting
                }
            };
            data_plane.abort();
            let p = pooler.clone();
            *drain.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(tokio::spawn(
                    async move { p.drain(reason, drain_timeout).await },
                ));
        }
    };
    let limits = crate::http::Limits {
        max_connections: args.api_max_connections as usize,
        header_timeout: std::time::Duration::from_secs(args.api_header_timeout),
        body_timeout: std::time::Duration::from_secs(args.api_body_timeout),
    };
    crate::http::serve(listener, app, limits, api_tls_config, shutdown).await;
    // Clients first, then the clusters behind them.
    let draining = drain.lock().unwrap_or_else(|e| e.into_inner()).take();
    match draining {
        Some(d) => {
            let _ = d.await;
        }
        None => pooler.shutdown().await,
    }
    data_plane.abort();
    if handed_over.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("pgbay handed over to its successor and stopped");
    } else {
        control.shutdown().await;
        tracing::info!("pgbay stopped");
    }
    Ok(())
}

/// Where this node's API answers, for the other nodes: its listen address (with the `port` it
/// bound), or its public host when it listens on every address; https when the API speaks TLS.
fn api_url(args: &ServeArgs, port: u16) -> String {
    let api_tls = crate::api_tls::effective(args.api_tls.as_ref(), args.api_listen);
    let scheme = if matches!(api_tls, crate::api_tls::ApiTls::Off) {
        "http"
    } else {
        "https"
    };
    let host = if args.api_listen.ip().is_unspecified() {
        args.public_host.clone()
    } else {
        args.api_listen.ip().to_string()
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:{port}")
}

/// The store as logged: the SQLite default, or the URL without its password.
fn store_shown(url: Option<&str>) -> String {
    let Some(url) = url else {
        return "sqlite (data dir)".into();
    };
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Resolves once a successor has received this process's sockets; a failed attempt is logged
/// and this process goes on serving (pending forever).
async fn handed_over_to(
    successor: tokio::task::JoinHandle<anyhow::Result<std::os::unix::net::UnixStream>>,
    pooler: &pgbay_pooler::Pooler,
    api_fd: std::os::fd::OwnedFd,
) {
    let stream = match successor.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "takeover socket failed: no successor can take over");
            return std::future::pending().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "takeover socket task failed");
            return std::future::pending().await;
        }
    };
    let ports = pooler.listening_sockets();
    match crate::takeover::hand_over(&stream, &[api_fd], &ports) {
        Ok(()) => tracing::info!(ports = ports.len(), "sockets handed over"),
        Err(e) => {
            tracing::error!(error = %e, "handing the sockets over failed: serving on");
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_socket_limit;

    #[test]
    fn client_sockets_leave_the_reserve_and_the_api_their_descriptors() {
        assert_eq!(client_socket_limit(4096, 1024, 512), 2560);
        assert_eq!(client_socket_limit(1 << 20, 1024, 512), (1 << 20) - 1536);
        // A reserve larger than the limit still leaves clients a quarter.
        assert_eq!(client_socket_limit(1024, 1024, 512), 256);
        assert_eq!(client_socket_limit(u64::MAX, 1024, 512), u32::MAX - 1536);
    }
}
