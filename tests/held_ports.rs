//! Ports for the Rust tests' servers that must be named before they listen (a PostgreSQL
//! cluster, a control plane's port range), held by reservation rather than picked free and let
//! go: a window of the span below the kernel's ephemeral range (so no client connection's local
//! port is ever one of them), locked with `flock` on the same files as the Python harness's
//! `PortWindow` (tests/conftest.py), so that concurrent test processes never share a window;
//! held for the life of the test process, each port handed out once.
//!
//! Included by the test crates that need it (`#[path = ".../tests/held_ports.rs"] mod
//! held_ports;`).

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// The span the windows are taken from, and a window's size: as in tests/conftest.py.
const SPAN_LOW: u16 = 22000;
const SPAN_HIGH: u16 = 32000;
const WINDOW: u16 = 200;

struct Window {
    /// The lock file, kept open: the reservation lasts as long as the process.
    _lock: File,
    next: u16,
    end: u16,
}

static WINDOWS: Mutex<Vec<Window>> = Mutex::new(Vec::new());

/// One port nothing listens on, held (module docs).
pub fn held_port() -> u16 {
    *held_ports(1).start()
}

/// `n` consecutive ports (at most a window's) nothing listens on, held (module docs).
pub fn held_ports(n: u16) -> RangeInclusive<u16> {
    assert!((1..=WINDOW).contains(&n));
    let mut windows = WINDOWS.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(w) = windows.last_mut() {
            while w.next + n <= w.end {
                let range = w.next..=w.next + n - 1;
                w.next += n;
                if range.clone().all(free) {
                    return range;
                }
            }
        }
        windows.push(reserve());
    }
}

/// Whether nothing listens on `port` (bound for a moment: inside a held window nobody else
/// binds it after).
fn free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Locks a window of the span no other test process holds.
fn reserve() -> Window {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = SPAN_HIGH.min(ephemeral_low);
    let starts: Vec<u16> = (SPAN_LOW..=high - WINDOW)
        .step_by(WINDOW as usize)
        .collect();
    // Start somewhere of this process's own, so that concurrent processes rarely try the same
    // windows first.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let offset = (std::process::id() as usize ^ nanos as usize) % starts.len();
    for i in 0..starts.len() {
        let start = starts[(offset + i) % starts.len()];
        let path = std::env::temp_dir().join(format!("pgbay-test-ports-{start}.lock"));
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        return Window {
            _lock: lock,
            next: start,
            end: start + WINDOW,
        };
    }
    panic!("no free port window in {SPAN_LOW}-{high}");
}
