//! Failed server logins are logged at most a burst of lines per 10 s per pool: while the server
//! is down, every client held for it retries, and each failure used to be logged. The first line
//! of a later window counts the failures left out.

mod support;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The pooler's log lines, as the fmt layer writes them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// The `not_logged` count of every failed-login line of `service`, in order.
    fn failed_logins(&self, service: &str) -> Vec<u64> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("server connection failed") && l.contains(service))
            .map(|l| {
                let rest = &l[l.find("not_logged=").expect("a not_logged field") + 11..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_server_logins_are_logged_a_few_times_per_window_then_counted() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(LevelFilter::WARN)
        .init();
    let pg = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    pg.setup_app().await;
    let cfg = holding_service("connlog", pg.port, Duration::from_secs(2));
    let (pooler, addr) = start(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = connect(addr, "p1").await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
        clients.push(c);
    }
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();

    // Four clients held for the server at once, each retried until the bound (2 s, well inside
    // the 10 s window): more failed logins than the burst, and only the burst logged.
    let held: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.simple_query("SELECT 1").await.map(|_| ()) }))
        .collect();
    for h in held {
        let e = must_fail(h.await.unwrap(), "server down past the bound");
        assert_eq!(sqlstate(&e), "08001", "{}", describe(&e));
    }
    assert_eq!(logs.failed_logins("connlog"), vec![0, 0, 0]);

    // Past the window, the next failure is logged with the count of those left out.
    let deadline = Instant::now() + Duration::from_secs(40);
    while logs.failed_logins("connlog").len() == 3 {
        assert!(
            Instant::now() < deadline,
            "no failed login logged after the window"
        );
        let c = connect(addr, "p1").await.unwrap();
        must_fail(c.simple_query("SELECT 1").await, "server still down");
    }
    let lines = logs.failed_logins("connlog");
    assert!(
        lines[3] > 0,
        "the first line of the next window counts none: {lines:?}"
    );
    pooler.shutdown().await;
    drop(pg);
}
