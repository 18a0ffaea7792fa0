//! Port allocation for service clusters and pooler listeners. Each service gets two ports from
//! the configured range once, at creation; they are stored with the service and never handed to
//! another service while it exists. Ports some other process is listening on are skipped.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

/// The configured range, e.g. `21000-21999`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("port range {s:?} must look like 21000-21999"))?;
        let a: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
        let b: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
        if a == 0 || a > b || u32::from(b) - u32::from(a) < 1 {
            return Err(format!("port range {s:?} must hold at least two ports"));
        }
        Ok(PortRange(a..=b))
    }
}

fn is_free(port: u16, public_host: &str) -> bool {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
        return false;
    }
    if public_host != "127.0.0.1" && public_host != "localhost" {
        if let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(public_host, port)) {
            if let Some(addr) = addrs.next() {
                return TcpListener::bind(addr).is_ok();
            }
        }
    }
    true
}

/// Picks `n` distinct ports of `range` that are neither in `used` nor bound by anyone.
pub fn allocate(
    range: &PortRange,
    used: &HashSet<u16>,
    public_host: &str,
    n: usize,
) -> Option<Vec<u16>> {
    let mut out = Vec::with_capacity(n);
    for port in range.0.clone() {
        if out.len() == n {
            break;
        }
        if !used.contains(&port) && is_free(port, public_host) {
            out.push(port);
        }
    }
    (out.len() == n).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_used_and_bound_ports() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let busy = l.local_addr().unwrap().port();
        // Other processes may hold any port after `busy`: the range is wide enough that two
        // of its ports are free on a loaded machine, and only what is held is asserted.
        let range = PortRange(busy..=busy.saturating_add(64));
        let used: HashSet<u16> = [busy.saturating_add(1)].into();
        let got = allocate(&range, &used, "127.0.0.1", 2).unwrap();
        assert!(!got.contains(&busy) && !got.contains(&(busy + 1)));
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|p| range.0.contains(p)));
        assert!(allocate(&PortRange(busy..=busy), &HashSet::new(), "127.0.0.1", 1).is_none());
        assert!("21000-21999".parse::<PortRange>().is_ok());
        assert!("21000".parse::<PortRange>().is_err());
        assert!("2-1".parse::<PortRange>().is_err());
    }
}
