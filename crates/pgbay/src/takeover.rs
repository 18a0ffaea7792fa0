//! Restart without refusing anyone: a `pgbay serve` started on the data dir of a running one
//! takes over its listening sockets (the API's and every service port's) over a Unix socket in
//! the data dir, `takeover.sock` (mode 0600, pgbay's own user only), as SCM_RIGHTS descriptors.
//!
//! The sockets themselves move, not their addresses: the kernel's accept queue belongs to the
//! socket, so a connection waiting in it while the successor starts is accepted by the
//! successor, never refused or reset. The predecessor, once it has sent them, stops its control
//! plane's background work (supervisor, schedules), stops accepting, lets each client finish its
//! transaction and closes it at the next boundary with 57P01 (`Pooler::drain`), and exits
//! without stopping the clusters, which the successor adopts.
//!
//! Wire: the successor sends `HELLO`; the predecessor answers with messages of at most
//! `BATCH` descriptors, each byte of a message's payload naming one descriptor's kind (`A` the
//! API, `P` a service port), and ends with a payload `E` carrying none.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};

const HELLO: &[u8] = b"HELLO";
/// Descriptors per message (the kernel's SCM_MAX_FD is 253).
const BATCH: usize = 200;
/// A predecessor that does not answer within this is not taken over (start-up fails).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The sockets a successor received.
#[derive(Default)]
pub struct Inherited {
    pub api: Vec<std::net::TcpListener>,
    pub ports: Vec<std::net::TcpListener>,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("takeover.sock")
}

/// At start-up: takes the sockets of a pgbay serving `data_dir`, if one is. None when none runs
/// (a leftover socket file of a stopped pgbay is removed).
pub fn take_over(data_dir: &Path) -> anyhow::Result<Option<Inherited>> {
    let path = socket_path(data_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing stale {}", path.display()))?;
            }
            return Ok(None);
        }
        Err(e) => return Err(anyhow!("connecting to {}: {e}", path.display())),
    };
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(HELLO)?;
    let mut inherited = Inherited::default();
    loop {
        let (kinds, fds) = recv_fds(&stream)
            .with_context(|| format!("receiving sockets over {}", path.display()))?;
        if kinds == b"E" {
            break;
        }
        if kinds.len() != fds.len() {
            return Err(anyhow!(
                "takeover: {} kinds for {} sockets",
                kinds.len(),
                fds.len()
            ));
        }
        for (kind, fd) in kinds.iter().zip(fds) {
            let l = std::net::TcpListener::from(fd);
            match kind {
                b'A' => inherited.api.push(l),
                _ => inherited.ports.push(l),
            }
        }
    }
    Ok(Some(inherited))
}

/// Listens for a successor on `takeover.sock`. The file is created anew (a predecessor's, if
/// any, was unlinked by `take_over`'s caller having taken it over).
pub fn listen(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Waits for one successor's HELLO. The stream is then answered with `hand_over`.
pub async fn accept_successor(listener: UnixListener) -> anyhow::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (s, _) = listener.accept().await?;
        let mut s = s.into_std()?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let said_hello = tokio::task::spawn_blocking(move || {
            let mut hello = [0u8; HELLO.len()];
            let ok = s.read_exact(&mut hello).is_ok() && hello == HELLO;
            (ok, s)
        })
        .await?;
        if let (true, s) = said_hello {
            return Ok(s);
        }
        tracing::warn!("takeover socket: a connection that did not say HELLO, ignored");
    }
}

/// Sends the sockets to the successor.
pub fn hand_over(
    stream: &UnixStream,
    api: &[OwnedFd],
    ports: &[(std::net::SocketAddr, OwnedFd)],
) -> anyhow::Result<()> {
    let all: Vec<(u8, RawFd)> = api
        .iter()
        .map(|f| (b'A', f.as_raw_fd()))
        .chain(ports.iter().map(|(_, f)| (b'P', f.as_raw_fd())))
        .collect();
    for chunk in all.chunks(BATCH) {
        let kinds: Vec<u8> = chunk.iter().map(|(k, _)| *k).collect();
        let fds: Vec<RawFd> = chunk.iter().map(|(_, f)| *f).collect();
        send_fds(stream, &kinds, &fds)?;
    }
    send_fds(stream, b"E", &[])?;
    Ok(())
}

fn send_fds(stream: &UnixStream, payload: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(payload)];
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cmsg_buf = vec![0u8; space.max(1)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at a zeroed buffer of CMSG_SPACE(len) bytes, so the first
        // header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(fds),
            );
        }
    }
    // SAFETY: msg and its buffers live across the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != payload.len() {
        return Err(std::io::Error::other("takeover message sent in part"));
    }
    Ok(())
}

fn recv_fds(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; BATCH];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let space = unsafe { libc::CMSG_SPACE((BATCH * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cmsg_buf = vec![0u8; space];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg and its buffers live across the call; MSG_CMSG_CLOEXEC keeps the received
    // descriptors from leaking into children.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the running pgbay closed the takeover socket",
        ));
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("takeover: descriptors truncated"));
    }
    payload.truncate(n as usize);
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_with_their_kinds_and_keep_their_queue() {
        let dir = tempfile::tempdir().unwrap();
        let listener = listen(dir.path()).unwrap();
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (api_addr, port_addr) = (api.local_addr().unwrap(), port.local_addr().unwrap());
        // A connection waiting in the accept queue before the handover.
        let _queued = std::net::TcpStream::connect(port_addr).unwrap();
        let old = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let s = rt.block_on(accept_successor(listener)).unwrap();
            let api_fd = OwnedFd::from(api);
            let port_fd = OwnedFd::from(port);
            hand_over(&s, &[api_fd], &[(port_addr, port_fd)]).unwrap();
        });
        let got = take_over(dir.path()).unwrap().unwrap();
        old.join().unwrap();
        assert_eq!(got.api.len(), 1);
        assert_eq!(got.ports.len(), 1);
        assert_eq!(got.api[0].local_addr().unwrap(), api_addr);
        assert_eq!(got.ports[0].local_addr().unwrap(), port_addr);
        // The predecessor's copies are closed; the queued connection is accepted here.
        let (_c, _) = got.ports[0].accept().unwrap();
    }

    #[test]
    fn a_leftover_socket_file_is_not_a_running_pgbay() {
        let dir = tempfile::tempdir().unwrap();
        drop(listen(dir.path()).unwrap());
        assert!(socket_path(dir.path()).exists());
        assert!(take_over(dir.path()).unwrap().is_none());
        assert!(!socket_path(dir.path()).exists());
    }
}
