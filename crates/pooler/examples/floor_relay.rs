//! A measuring instrument, not a pooler: the least CPU a process can spend relaying a PostgreSQL
//! transaction on this machine. Every accepted client gets its own connection to the server
//! (no pooling, so the client authenticates with the server itself), and the bytes of each
//! side are copied to the other unread: one thread, level-triggered epoll, one `read` and one
//! `write` per burst. What it spends per transaction is the kernel's share of a relay (the
//! system calls and the wake-ups they cause) plus almost nothing; `bench/pooler.sh` runs it
//! beside the poolers (`FLOOR=1`) so their CPU per transaction can be read against it.
//!
//!   floor_relay --listen 127.0.0.1:6500 --backend 127.0.0.1:5432
//!
//! Plaintext only: it answers nothing itself, so a client's SSLRequest reaches the server.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

struct Side {
    stream: TcpStream,
    peer: RawFd,
}

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: floor_relay --listen ADDR:PORT --backend ADDR:PORT");
    std::process::exit(2)
}

fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `ev` lives on this stack for the call; the kernel copies it.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } != 0 {
        panic!("epoll_ctl: {}", std::io::Error::last_os_error());
    }
}

/// Writes all of `buf` to a non-blocking socket, waiting for it only if its buffer is full
/// (a large COPY; never in a pgbench transaction).
fn write_all(stream: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    match stream.write(buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => blocking_write(stream, &buf[n..]),
        Err(e) if e.kind() == ErrorKind::WouldBlock => blocking_write(stream, buf),
        Err(e) => Err(e),
    }
}

fn blocking_write(stream: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let r = stream.write_all(buf);
    stream.set_nonblocking(true)?;
    r
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| usage(&format!("{name} is required")))
    };
    let backend = arg("--backend");
    let listener = TcpListener::bind(arg("--listen")).unwrap_or_else(|e| usage(&e.to_string()));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    // SAFETY: plain system call; the descriptor is owned by this process until it exits.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epoll >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    epoll_ctl(epoll, libc::EPOLL_CTL_ADD, listener.as_raw_fd());

    let mut sides: HashMap<RawFd, Side> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` has room for the number of entries passed.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            panic!("epoll_wait: {e}");
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == listener.as_raw_fd() {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(server) = TcpStream::connect(&backend) else {
                        continue;
                    };
                    for s in [&client, &server] {
                        s.set_nodelay(true).expect("TCP_NODELAY");
                        s.set_nonblocking(true).expect("non-blocking socket");
                        epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd());
                    }
                    let (c, s) = (client.as_raw_fd(), server.as_raw_fd());
                    sides.insert(
                        c,
                        Side {
                            stream: client,
                            peer: s,
                        },
                    );
                    sides.insert(
                        s,
                        Side {
                            stream: server,
                            peer: c,
                        },
                    );
                }
                continue;
            }
            // Already closed with its peer earlier in this batch.
            let Some(side) = sides.get_mut(&fd) else {
                continue;
            };
            let peer = side.peer;
            let done = match side.stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    let peer = sides.get_mut(&peer).expect("a side's peer is registered");
                    write_all(&mut peer.stream, &buf[..n]).is_err()
                }
                Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted,
            };
            if done {
                for gone in [fd, peer] {
                    if let Some(s) = sides.remove(&gone) {
                        epoll_ctl(epoll, libc::EPOLL_CTL_DEL, s.stream.as_raw_fd());
                    }
                }
            }
        }
    }
}
