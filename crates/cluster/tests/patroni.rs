//! Two Patroni members (issue 17) on the embedded etcd, on this node: a primary and a streaming
//! standby; the primary's Patroni and postmaster SIGKILLed; the standby promoted (its
//! `GET /primary` answers 200 and a write commits there); the killed member, restarted by the
//! supervision step, returns as a standby that has the row written after the failover.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgbay_cluster::etcd::{self, EmbeddedEtcd};
use pgbay_cluster::provision::patroni::{self, Member, MemberConfig};

#[path = "../../../tests/held_ports.rs"]
mod held_ports;
use held_ports::held_port;

const PASSWORD: &str = "su-secret-\"quoted\"";

fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() >= deadline {
            // The members' logs say why (they hold no secret: Patroni does not log passwords).
            for log in glob_logs() {
                eprintln!(
                    "--- {}\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

thread_local! {
    static LOGS: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn glob_logs() -> Vec<std::path::PathBuf> {
    LOGS.with(|l| l.borrow().clone())
}

fn psql(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &port.to_string(), "-d", "postgres", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn bin_dir() -> std::path::PathBuf {
    pgbay_cluster::provision::local::default_bin_dir().expect("PostgreSQL bin dir")
}

fn member(dir: &Path, name: &str, etcd_host: &str) -> MemberConfig {
    let cfg = MemberConfig {
        scope: "ha-test".into(),
        name: name.into(),
        etcd_hosts: vec![etcd_host.into()],
        rest_port: held_port(),
        pg_port: held_port(),
        dir: dir.join(name),
        bin_dir: bin_dir(),
        superuser_password: PASSWORD.into(),
        replication_password: "repl-secret".into(),
        rewind_password: "rewind-secret".into(),
        synchronous_mode: true,
        maximum_lag_on_failover: patroni::lag_seconds_to_bytes(60).unwrap(),
        extra_hba: vec![],
        ..Default::default()
    };
    LOGS.with(|l| l.borrow_mut().push(cfg.log_path()));
    cfg
}

#[test]
fn two_members_fail_over_and_the_lost_one_returns_as_standby() {
    let tmp = tempfile::Builder::new()
        .prefix("ha-patroni-")
        .tempdir()
        .unwrap();
    // PostgreSQL refuses root: as root (CI) the members run as nobody, like pgbay's scratch work.
    let owner = (unsafe { libc::geteuid() } == 0).then_some((65534u32, 65534u32));
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid)).unwrap();
    }
    let etcd_member = EmbeddedEtcd::start(&tmp.path().join("etcd")).expect("etcd");
    let host = etcd_member
        .client_url()
        .trim_start_matches("http://")
        .to_string();

    let c0 = member(tmp.path(), "m0", &host);
    let c1 = member(tmp.path(), "m1", &host);
    let mut m0 = Member::start(c0, owner).expect("m0");
    // m0 bootstraps first (it then holds the leader key); m1 joins as its standby.
    wait_for("m0 primary", Duration::from_secs(60), || {
        m0.rest_status("/primary") == Some(200)
    });
    let mut m1 = Member::start(c1, owner).expect("m1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m0.config.yaml_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    wait_for("m1 streaming standby", Duration::from_secs(180), || {
        m1.rest_status("/replica") == Some(200)
    });
    let (p0, p1) = (m0.config.pg_port, m1.config.pg_port);
    psql(
        p0,
        "CREATE TABLE t (n int primary key); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    wait_for("row on the standby", Duration::from_secs(30), || {
        psql(p1, "SELECT count(*) FROM t").as_deref() == Ok("1")
    });
    assert!(
        psql(p1, "INSERT INTO t VALUES (99)").is_err(),
        "standby is read-only"
    );

    // Lose the primary: its Patroni and its postmaster, SIGKILL.
    let patroni_pid = m0.pid().unwrap() as libc::pid_t;
    let postmaster = m0.postmaster_pid().expect("postmaster pid");
    let killed = Instant::now();
    unsafe {
        libc::kill(patroni_pid, libc::SIGKILL);
        libc::kill(postmaster, libc::SIGKILL);
    }
    let mut n = 2;
    wait_for(
        "a write on the promoted member",
        Duration::from_secs(120),
        || {
            m1.rest_status("/primary") == Some(200)
                && psql(p1, &format!("INSERT INTO t VALUES ({n})")).is_ok()
        },
    );
    let failover = killed.elapsed();
    eprintln!("FAILOVER_SECONDS={:.2}", failover.as_secs_f64());
    n += 1;
    psql(p1, &format!("INSERT INTO t VALUES ({n})")).unwrap();
    assert_eq!(psql(p1, "SELECT count(*) FROM t").unwrap(), "3");

    // Healing: the supervision step restarts the dead Patroni; pg_rewind makes it a standby.
    wait_for("old postmaster gone", Duration::from_secs(30), || unsafe {
        libc::kill(postmaster, 0) != 0
    });
    // Restarted once the killed Patroni has exited (a step before that restarts nothing).
    wait_for("m0's Patroni restarted", Duration::from_secs(30), || {
        m0.ensure_running(false).unwrap()
    });
    wait_for("m0 back as standby", Duration::from_secs(180), || {
        m0.rest_status("/replica") == Some(200)
    });
    wait_for(
        "m0 has the rows written after failover",
        Duration::from_secs(60),
        || psql(p0, "SELECT count(*) FROM t").as_deref() == Ok("3"),
    );
    assert_ne!(m0.rest_status("/primary"), Some(200));

    m1.stop();
    m0.stop();
    assert!(
        etcd::count_prefix(etcd_member.client_addr(), &patroni::etcd_prefix("ha-test")).unwrap()
            > 0
    );
    etcd_member
        .delete_prefix(&patroni::etcd_prefix("ha-test"))
        .unwrap();
    assert_eq!(
        etcd::count_prefix(etcd_member.client_addr(), &patroni::etcd_prefix("ha-test")).unwrap(),
        0
    );
}
