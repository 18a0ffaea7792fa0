//! The connections SHOW CLIENTS and SHOW SERVERS list. Each logged-in client and each server
//! connection registers a `SocketInfo` (a weak reference in its service's or pool's `Sockets`;
//! dropping the connection is its removal). What changes per transaction (state, link, request
//! time) is a relaxed store to the connection's own entry, never a shared write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;

/// Ids shown in the `id` and `ptr`/`link` columns, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One connection as the console shows it.
#[derive(Debug)]
pub struct SocketInfo {
    pub id: u64,
    pub user: String,
    /// The pool (PgBouncer's `database` column).
    pub pool: String,
    pub addr: Option<SocketAddr>,
    /// For a server connection: its host (or socket directory) and port.
    pub host: Option<(String, u16)>,
    pub local: Option<SocketAddr>,
    pub connect_time: SystemTime,
    pub tls: bool,
    pub application_name: String,
    /// The server's backend pid (0 for clients).
    pub pid: i32,
    /// `ClientState` or `ServerState` as u8.
    pub state: AtomicU8,
    /// The id of the connection it is linked to (0: none).
    pub link: AtomicU64,
    /// `stats::now_us` of the client's latest request (0: none yet).
    pub request_us: AtomicU64,
}

impl SocketInfo {
    pub fn new(user: String, pool: String) -> SocketInfo {
        SocketInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            user,
            pool,
            addr: None,
            host: None,
            local: None,
            connect_time: SystemTime::now(),
            tls: false,
            application_name: String::new(),
            pid: 0,
            state: AtomicU8::new(0),
            link: AtomicU64::new(0),
            request_us: AtomicU64::new(0),
        }
    }
}

/// The registered connections of a service (clients) or a pool (servers).
#[derive(Default)]
pub struct Sockets {
    list: Mutex<Vec<Weak<SocketInfo>>>,
}

impl Sockets {
    /// Registers `info` for as long as the returned `Arc` lives.
    pub fn register(&self, info: SocketInfo) -> Arc<SocketInfo> {
        let info = Arc::new(info);
        let mut list = self.list.lock();
        // Entries of closed connections are dropped from time to time, not on each close.
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(Arc::downgrade(&info));
        info
    }

    /// The live connections counted by state (`state` below `N`; others are not counted): what
    /// SHOW POOLS and the metrics read, from the same entries SHOW CLIENTS/SERVERS list.
    pub fn count_states<const N: usize>(&self) -> [u32; N] {
        let mut counts = [0u32; N];
        let list = self.list.lock();
        for info in list.iter().filter_map(Weak::upgrade) {
            if let Some(c) = counts.get_mut(usize::from(info.state.load(Ordering::Relaxed))) {
                *c += 1;
            }
        }
        counts
    }

    /// The live connections, oldest first.
    pub fn live(&self) -> Vec<Arc<SocketInfo>> {
        let mut list = self.list.lock();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }
}
