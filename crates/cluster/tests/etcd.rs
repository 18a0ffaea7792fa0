//! The embedded etcd (issue 17): a real etcd started in a temp dir on free loopback ports,
//! supervised (a SIGKILLed member comes back on the same client URL with its keys), keys of a
//! removed service deleted by prefix, and a restart of pgbay reusing the remembered ports.

use std::time::{Duration, Instant};

use pgbay_cluster::etcd::{self, EmbeddedEtcd};

fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn embedded_etcd_is_supervised_and_keeps_its_url_and_keys() {
    let tmp = tempfile::Builder::new()
        .prefix("ha-etcd-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("etcd");
    let mut member = EmbeddedEtcd::start(&dir).expect("etcd starts");
    let url = member.client_url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(member.healthy());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "etcd dir mode {mode:o}");

    let addr = member.client_addr();
    etcd::put(addr, "/service/a/leader", "m1").unwrap();
    etcd::put(addr, "/service/a/members/m1", "{}").unwrap();
    etcd::put(addr, "/service/ab/leader", "other").unwrap();
    assert_eq!(etcd::count_prefix(addr, "/service/a/").unwrap(), 2);

    // SIGKILL: the next supervision step restarts it on the same URL, with its data.
    let pid = member.pid().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on the pid of the etcd this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // A supervision step restarts it once the killed process has exited (not before: a
    // process that is still exiting is not restarted twice).
    wait_for("etcd to be restarted", Duration::from_secs(30), || {
        member.ensure_running().expect("restart")
    });
    assert_eq!(member.restarts(), 1);
    assert_eq!(member.client_url(), url);
    assert_ne!(member.pid().unwrap() as libc::pid_t, pid);
    assert!(member.healthy());
    assert_eq!(etcd::count_prefix(addr, "/service/a/").unwrap(), 2);
    // A live member is left alone.
    assert!(!member.ensure_running().unwrap());

    // A removed service's keys go, its neighbour's (same leading characters) stay.
    assert_eq!(member.delete_prefix("/service/a/").unwrap(), 2);
    assert_eq!(etcd::count_prefix(addr, "/service/a/").unwrap(), 0);
    assert_eq!(etcd::count_prefix(addr, "/service/ab/").unwrap(), 1);

    // pgbay restarting: a new EmbeddedEtcd on the same dir reuses the remembered ports and data.
    member.stop();
    assert!(!etcd::health(addr));
    let again = EmbeddedEtcd::start(&dir).expect("etcd restarts");
    assert_eq!(again.client_url(), url);
    assert_eq!(etcd::count_prefix(addr, "/service/ab/").unwrap(), 1);
    drop(again);
    assert!(!etcd::health(addr), "dropping the handle stops etcd");
}
