//! A service's TCP listener: accepts clients and hands each to its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Listen backlog: connection storms of thousands of clients must not be refused by the kernel.
const BACKLOG: i32 = 4096;

/// Binds `addr` (SO_REUSEADDR, large backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until `stop` is cancelled.
pub async fn accept_loop(listener: TcpListener, service: Arc<Service>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, addr)) => {
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
                let count = service.client_guard();
                tokio::spawn(crate::frontend::handle(socket, addr, count));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(service = %service.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
