//! A service's TCP listener: accepts clients and hands each to its own task.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Listen backlog: connection storms of thousands of clients must not be refused by the kernel.
const BACKLOG: i32 = 4096;

/// A bound socket that does not accept yet: binding is the step of applying a service that can
/// fail, so it happens before anything of the service is changed, and accepting starts only once
/// the service's pools exist (`serve`).
pub(crate) struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
}

/// An accepting listener; `stop` ends its accept loop (connected clients are not affected).
/// The socket is shared with the accept task so that a successor process can be handed a
/// duplicate of it (`dup`) while this one still accepts: the kernel's accept queue lives as long
/// as either holds it, so no connection waiting in it is lost across a takeover.
pub(crate) struct Listening {
    stop: CancellationToken,
    listener: Arc<TcpListener>,
    task: tokio::task::JoinHandle<()>,
    pub local_addr: SocketAddr,
}

impl Bound {
    /// Binds `addr` (SO_REUSEADDR, large backlog).
    pub fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Bound::from_std(socket.into())
    }

    /// Wraps a socket that is already bound and listening (inherited from the process this one
    /// takes over from).
    pub fn from_std(listener: std::net::TcpListener) -> std::io::Result<Bound> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        Ok(Bound {
            listener,
            local_addr,
        })
    }

    /// Starts accepting clients of `service` in a task of their own.
    pub fn serve(self, service: Arc<Service>) -> Listening {
        let stop = CancellationToken::new();
        tracing::info!(service = %service.name, addr = %self.local_addr, "service listening");
        let listener = Arc::new(self.listener);
        let task = tokio::spawn(accept_loop(listener.clone(), service, stop.clone()));
        Listening {
            stop,
            listener,
            task,
            local_addr: self.local_addr,
        }
    }
}

impl Listening {
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops accepting and returns once the socket is closed: the accept task has dropped its
    /// share and so does this (a duplicate handed to a successor stays open in that process).
    pub async fn close(self) {
        self.stop.cancel();
        let Listening { task, listener, .. } = self;
        let _ = task.await;
        drop(listener);
    }

    /// A duplicate of the listening socket, for a successor process.
    pub fn dup(&self) -> std::io::Result<OwnedFd> {
        self.listener.as_fd().try_clone_to_owned()
    }
}

/// Accepts until `stop` is cancelled.
async fn accept_loop(listener: Arc<TcpListener>, service: Arc<Service>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, addr)) => {
                // Over a bound the socket is closed at once: accepting it drains the backlog,
                // holding it would spend the descriptors the bound is there to keep.
                let Some((count, pending)) = service.admit_socket() else {
                    drop(socket);
                    continue;
                };
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
                tokio::spawn(crate::frontend::handle(socket, addr, count, pending));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(service = %service.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
