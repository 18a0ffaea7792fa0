//! Runs one pooler service with one pool from command-line arguments, until Ctrl-C/SIGTERM.
//! Used by the benchmarks to compare pgbay's pooler with PgBouncer on equal terms.
//!
//! ```text
//! standalone --listen 127.0.0.1:6432 --backend-host 127.0.0.1 --backend-port 5432 \
//!     --user U --pool NAME --database DB --mode transaction --size 20 \
//!     [--max-client-conn N] [--max-prepared-statements N] [--query-wait-timeout SECS] [--md5] [--threads N] \
//!     [--io-events N] [--io-events-busy N] [--slice-us N] [--nice N] [--pin 1] [--tls-cert FILE --tls-key FILE]
//! ```
//!
//! The user's password comes from the environment (`PGBAY_POOLER_PASSWORD`), not the command line,
//! where every process listing would show it. With `--tls-cert`/`--tls-key` (PEM files) clients must
//! use TLS, as pgbay serve's pools do.
//!
//! `--threads` sets the tokio worker threads (default: one per core); `--io-events` and
//! `--io-events-busy` the most I/O events a worker takes from the kernel per poll when idle and
//! when busy (tokio's `max_io_events_per_tick` / `max_io_events_per_busy_tick`; default 1024);
//! `--slice-us` and `--nice` the threads' scheduling (`sched_setattr`, SCHED_OTHER: the EEVDF time
//! slice, Linux 6.12+, and the nice value, 0 unless given; a negative one needs CAP_SYS_NICE);
//! `--pin 1` binds each runtime thread to one CPU in turn (`sched_setaffinity`).

use std::collections::HashMap;
use std::time::Duration;

use pgbay_pooler::{
    BackendConfig, ClientAuthMethod, ClientLimits, PoolConfig, PoolMode, PoolSettings, Pooler,
    PoolerConfig, ServiceConfig, TlsConfig, UserConfig,
};

fn usage(msg: &str) -> ! {
    eprintln!("standalone: {msg}");
    eprintln!(
        "usage: PGBAY_POOLER_PASSWORD=P standalone --listen ADDR --backend-host H --backend-port N \
         --user U --pool NAME --database DB --mode session|transaction|statement --size N \
         [--max-client-conn N] [--max-prepared-statements N] [--query-wait-timeout SECS] [--md5] \
         [--threads N] [--io-events N] [--io-events-busy N] [--slice-us N] [--nice N] [--pin 1] \
         [--tls-cert FILE --tls-key FILE]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut md5 = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--md5" {
            md5 = true;
            continue;
        }
        let Some(name) = flag.strip_prefix("--") else {
            usage(&format!("unexpected argument {flag}"))
        };
        let Some(value) = it.next() else {
            usage(&format!("{flag} needs a value"))
        };
        args.insert(name.to_string(), value);
    }
    let get = |name: &str| -> String {
        args.get(name)
            .cloned()
            .unwrap_or_else(|| usage(&format!("--{name} is required")))
    };
    let num = |name: &str, default: Option<u64>| -> u64 {
        match args.get(name) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("--{name} must be a number"))),
            None => default.unwrap_or_else(|| usage(&format!("--{name} is required"))),
        }
    };
    let mode = match get("mode").as_str() {
        "session" => PoolMode::Session,
        "transaction" => PoolMode::Transaction,
        "statement" => PoolMode::Statement,
        other => usage(&format!("unknown mode {other}")),
    };
    let listen = get("listen")
        .parse()
        .unwrap_or_else(|_| usage("--listen must be ADDR:PORT"));
    let user = get("user");
    let Ok(password) = std::env::var("PGBAY_POOLER_PASSWORD") else {
        usage("PGBAY_POOLER_PASSWORD must hold the user's password")
    };
    let read = |flag: &str| -> String {
        let path = get(flag);
        std::fs::read_to_string(&path).unwrap_or_else(|e| usage(&format!("--{flag} {path}: {e}")))
    };
    let tls = args.contains_key("tls-cert").then(|| TlsConfig {
        cert_chain_pem: read("tls-cert"),
        key_pem: read("tls-key"),
        required: true,
    });
    let service = ServiceConfig {
        name: "standalone".into(),
        listen,
        tls,
        backend: BackendConfig {
            host: get("backend-host"),
            port: num("backend-port", None) as u16,
            require_primary: false,
            unavailable_hold: Default::default(),
        },
        users: vec![UserConfig {
            name: user.clone(),
            password,
            admin: true,
        }],
        pools: vec![PoolConfig {
            name: get("pool"),
            database: get("database"),
            username: user,
            mode,
            size: num("size", None) as u32,
        }],
        settings: PoolSettings {
            max_prepared_statements: num("max-prepared-statements", Some(100)) as u32,
            ..PoolSettings::default()
        },
        limits: ClientLimits {
            max_client_conn: num("max-client-conn", Some(10_000)) as u32,
            query_wait_timeout: Duration::from_secs(num("query-wait-timeout", Some(120))),
            ..ClientLimits::default()
        },
        allowed_cidrs: vec![],
    };
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    // The runtime's counts must be positive (tokio panics on zero): refused with the usage.
    let positive = |name: &str| -> Option<usize> {
        args.get(name).map(|v| {
            v.parse::<std::num::NonZeroUsize>()
                .unwrap_or_else(|_| usage(&format!("--{name} must be a positive number")))
                .get()
        })
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = positive("threads") {
        builder.worker_threads(n);
    }
    if let Some(n) = positive("io-events") {
        builder.max_io_events_per_tick(n);
    }
    if let Some(n) = positive("io-events-busy") {
        builder.max_io_events_per_busy_tick(n);
    }
    // --slice-us / --nice: the worker threads' scheduling (sched_setattr, SCHED_OTHER): the time
    // slice the kernel's EEVDF scheduler gives them (Linux 6.12+, 100..100000 µs) and their nice
    // value; for measuring how often a woken peer preempts the pooler.
    let slice_us = args.get("slice-us").map(|v| {
        v.parse::<u64>()
            .ok()
            .filter(|n| (100..=100_000).contains(n))
            .unwrap_or_else(|| usage("--slice-us must be 100..100000"))
    });
    let nice = args.get("nice").map(|v| {
        v.parse::<i32>()
            .ok()
            .filter(|n| (-20..=19).contains(n))
            .unwrap_or_else(|| usage("--nice must be -20..19"))
    });
    // --pin: each runtime thread bound to one CPU in turn (sched_setaffinity), so that the
    // scheduler never moves a worker; for measuring what migrations cost.
    let pin = args.get("pin").is_some_and(|v| v == "1");
    if slice_us.is_some() || nice.is_some() || pin {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.on_thread_start(move || {
            if slice_us.is_some() || nice.is_some() {
                set_sched(slice_us, nice);
            }
            if pin {
                pin_to(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % cpus);
            }
        });
        if slice_us.is_some() || nice.is_some() {
            set_sched(slice_us, nice);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => usage(&format!("cannot start runtime: {e}")),
    };
    runtime.block_on(async move {
        let pooler = Pooler::new();
        if md5 {
            pooler.set_client_auth_method(ClientAuthMethod::Md5);
        }
        match pooler
            .apply(PoolerConfig {
                services: vec![service],
            })
            .await
        {
            Ok(report) if report.is_ok() => {}
            Ok(report) => {
                for f in report.failures {
                    eprintln!("standalone: service {}: {}", f.service, f.reason);
                }
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("standalone: {e}");
                std::process::exit(1);
            }
        }
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => usage(&format!("cannot listen for SIGTERM: {e}")),
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        pooler.shutdown().await;
    });
}

/// Binds the calling thread to CPU `cpu` (see `--pin`).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only read and
    // write the set given, for the calling thread (pid 0).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        usage(&format!(
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// The calling thread's SCHED_OTHER slice and nice value (see `--slice-us`, `--nice`).
fn set_sched(slice_us: Option<u64>, nice: Option<i32>) {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: 0,
        flags: 0,
        nice: nice.unwrap_or(0),
        priority: 0,
        runtime: slice_us.unwrap_or(0) * 1000,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr reads `attr` (size given in it) for the calling thread (pid 0).
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        usage(&format!(
            "sched_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
}
