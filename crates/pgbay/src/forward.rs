//! The TCP forwarders of service ports: a business or premium service's own port (its `uri`) is
//! served by pgbay, which forwards each connection byte for byte (TLS stays end to end, between
//! the client and PostgreSQL) to the service's current primary member; on a node that shares a
//! store with others, the port of a service placed on another node is forwarded to that node. When control publishes a
//! new primary (after a failover), new connections go there and the connections to the old one
//! are closed, so nothing the API handed out goes stale. The service's ip-filter is enforced here,
//! before a byte reaches PostgreSQL (which sees these connections come from 127.0.0.1).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use pgbay_control::DesiredState;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Forwarder {
    listen: (String, u16),
    target: watch::Sender<(String, u16)>,
    filter: watch::Sender<Vec<ipnet::IpNet>>,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running forwarders, by service.
#[derive(Default)]
pub struct Forwarders {
    running: HashMap<String, Forwarder>,
}

impl Forwarders {
    /// Makes the running forwarders those `state` asks for.
    pub fn sync(&mut self, state: &DesiredState) {
        let wanted: HashMap<&str, _> = state
            .services
            .iter()
            .filter_map(|s| s.forward.as_ref().map(|f| (s.name.as_str(), (s, f))))
            .collect();
        self.running.retain(|name, fwd| {
            wanted
                .get(name.as_str())
                .is_some_and(|(s, f)| fwd.listen == (s.listen_host.clone(), f.listen_port))
        });
        for (name, (s, f)) in wanted {
            if let Some(fwd) = self.running.get(name) {
                fwd.target.send_if_modified(|t| {
                    let to = (f.target_host.clone(), f.target_port);
                    let changed = *t != to;
                    *t = to;
                    changed
                });
                fwd.filter.send_if_modified(|v| {
                    let changed = *v != s.ip_filter;
                    v.clone_from(&s.ip_filter);
                    changed
                });
                continue;
            }
            let (target, target_rx) = watch::channel((f.target_host.clone(), f.target_port));
            let (filter, filter_rx) = watch::channel(s.ip_filter.clone());
            let listen = (s.listen_host.clone(), f.listen_port);
            let task = tokio::spawn(serve(
                name.to_string(),
                listen.clone(),
                target_rx,
                filter_rx,
            ));
            self.running.insert(
                name.to_string(),
                Forwarder {
                    listen,
                    target,
                    filter,
                    task,
                },
            );
        }
    }
}

async fn serve(
    service: String,
    (host, port): (String, u16),
    target: watch::Receiver<(String, u16)>,
    filter: watch::Receiver<Vec<ipnet::IpNet>>,
) {
    // A predecessor handing over (takeover) may still hold the port for a moment.
    let mut warned = false;
    let listener = loop {
        match TcpListener::bind((host.as_str(), port)).await {
            Ok(l) => break l,
            Err(e) => {
                if !warned {
                    tracing::warn!(service = %service, port, error = %e, "forwarder cannot listen yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tracing::info!(service = %service, port, "forwarding the service port to its primary");
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(service = %service, error = %e, "forwarder accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allowed(&filter.borrow(), peer.ip()) {
            tracing::info!(service = %service, peer = %peer.ip(), "forwarder: address not in ip-filter");
            continue;
        }
        tokio::spawn(relay(client, target.clone()));
    }
}

fn allowed(filter: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    ip.is_loopback() || filter.iter().any(|n| n.contains(&ip))
}

/// One client connection, until either side closes it or the primary changes.
async fn relay(mut client: TcpStream, mut target: watch::Receiver<(String, u16)>) {
    let (host, port) = target.borrow_and_update().clone();
    let Ok(mut server) = TcpStream::connect((host.as_str(), port)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        // A new primary (or the service gone): this connection's server is not the primary.
        _ = target.changed() => {}
    }
}
