//! One OS user per service. When pgbay runs as root, each service's PostgreSQL (and every other
//! program pgbay runs for that service) runs as a system user of its own, so that nothing one
//! service's processes can do — a server bug, a file an extension writes — reaches another
//! service's files: each service directory is mode 0700 and owned by its user alone.
//!
//! Users are made with `useradd --system` (no login shell, the service directory as home, never
//! created), with a uid and a group of the same name from the configured range; `useradd` picks
//! the first free id under its own lock on `/etc/passwd`, so two pgbay processes on one machine
//! never get the same one. Names are `pgbay-` and 12 hex digits of the service's id (a random
//! UUID), so a restarted pgbay finds the user again and two pgbay servers on one machine never
//! collide. The user goes with its service (`userdel`).
//!
//! Self-contained on purpose: it knows nothing of the store or the API, only names, paths and ids.

use std::path::Path;
use std::process::Command;

/// Prefix of every user pgbay makes; pgbay removes no user without it.
pub const PREFIX: &str = "pgbay-";

/// Default `--service-uid-range`: above Debian's ordinary users (up to 59999), below systemd's
/// `DynamicUser=` range (61184-65519), and within the 65536 ids a user namespace often maps.
pub const DEFAULT_UID_RANGE: &str = "60000-61099";

/// The uids (and gids) service users are given, e.g. `60000-61099`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First id.
    pub lo: u32,
    /// Last id.
    pub hi: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            lo: 60000,
            hi: 61099,
        }
    }
}

impl std::str::FromStr for UidRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("uid range {s:?} must look like {DEFAULT_UID_RANGE}"))?;
        let a: u32 = a.trim().parse().map_err(|_| format!("bad uid {a:?}"))?;
        let b: u32 = b.trim().parse().map_err(|_| format!("bad uid {b:?}"))?;
        // Below 1000 are the distribution's own system users; 65534 is `nobody`, and
        // 4294967295 is (uid_t)-1, which chown takes for "unchanged".
        if a < 1000 || a > b || b >= u32::MAX - 1 || (a..=b).contains(&65534) {
            return Err(format!(
                "uid range {s:?} must lie above 999, exclude 65534 (nobody) and start at or \
                 below its end"
            ));
        }
        Ok(UidRange { lo: a, hi: b })
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// An OS user of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// A failure to make, find or remove a service user.
#[derive(Debug, thiserror::Error)]
pub enum OsUserError {
    /// Reading the user database or running a program failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `useradd` or `userdel` said no.
    #[error("{program} {name} failed: {output}")]
    Program {
        /// Program.
        program: &'static str,
        /// User name.
        name: String,
        /// Its last output line.
        output: String,
    },
    /// A user of that name exists but is not one pgbay may use for a service.
    #[error("OS user {name} exists with uid {uid}, outside the service uid range {range}")]
    Foreign {
        /// User name.
        name: String,
        /// Its uid.
        uid: u32,
        /// The configured range.
        range: UidRange,
    },
}

type Result<T> = std::result::Result<T, OsUserError>;

/// The user name of the service with id `service_id` (stable across restarts).
pub fn name_for(service_id: &uuid::Uuid) -> String {
    let hex = service_id.simple().to_string();
    format!("{PREFIX}{}", &hex[..12])
}

/// Whether this process may make users and run programs as them (it is root).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Reads `/etc/passwd` and returns the first entry `pick` accepts. (`useradd` writes there; no
/// NSS cache stands between it and the next lookup.)
fn find(pick: impl Fn(&OsUser) -> bool) -> Result<Option<OsUser>> {
    let text = std::fs::read_to_string("/etc/passwd").map_err(|source| OsUserError::Io {
        what: "reading /etc/passwd".into(),
        source,
    })?;
    Ok(text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let user = OsUser {
            name: name.to_string(),
            uid,
            gid,
        };
        pick(&user).then_some(user)
    }))
}

/// The user called `name`, if any.
pub fn lookup(name: &str) -> Result<Option<OsUser>> {
    find(|u| u.name == name)
}

/// The user with uid `uid`, if any.
pub fn by_uid(uid: u32) -> Result<Option<OsUser>> {
    find(|u| u.uid == uid)
}

/// `useradd`/`userdel` fail with exit status 10 ("can't update group file") or 1 ("can't update
/// password file") while another process holds the lock: tried again a few times.
fn run_locked(program: &'static str, name: &str, args: &[&str]) -> Result<()> {
    let mut last = String::new();
    for attempt in 0..20u64 {
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| OsUserError::Io {
                what: format!("running {program}"),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        last = text.trim().lines().last().unwrap_or("").to_string();
        let busy = matches!(out.status.code(), Some(1) | Some(10))
            && (last.contains("lock") || last.contains("try again"));
        if !busy {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50 * (attempt + 1)));
    }
    Err(OsUserError::Program {
        program,
        name: name.to_string(),
        output: last,
    })
}

/// The service user `name`, made now (home `home`, not created) unless it exists. An existing
/// user outside `range` is refused: it is not one pgbay made, and running a cluster as it could
/// hand a service's files to someone else.
pub fn ensure(name: &str, home: &Path, range: UidRange) -> Result<OsUser> {
    if let Some(u) = lookup(name)? {
        return check_range(u, range);
    }
    let (min, max) = (range.lo.to_string(), range.hi.to_string());
    let home = home.to_string_lossy();
    let args = [
        "--system",
        "--no-create-home",
        "--home-dir",
        &home,
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
        "--comment",
        "pgbay service",
        "-K",
        &format!("SYS_UID_MIN={min}"),
        "-K",
        &format!("SYS_UID_MAX={max}"),
        "-K",
        &format!("SYS_GID_MIN={min}"),
        "-K",
        &format!("SYS_GID_MAX={max}"),
        name,
    ];
    if let Err(e) = run_locked("useradd", name, &args) {
        // Another thread or process may have made it meanwhile.
        return match lookup(name)? {
            Some(u) => check_range(u, range),
            None => Err(e),
        };
    }
    let u = lookup(name)?.ok_or_else(|| OsUserError::Program {
        program: "useradd",
        name: name.to_string(),
        output: "the new user is not in /etc/passwd".into(),
    })?;
    tracing::info!(user = %u.name, uid = u.uid, "service OS user created");
    check_range(u, range)
}

fn check_range(u: OsUser, range: UidRange) -> Result<OsUser> {
    if (range.lo..=range.hi).contains(&u.uid) && u.uid != 0 && u.gid != 0 {
        Ok(u)
    } else {
        Err(OsUserError::Foreign {
            name: u.name,
            uid: u.uid,
            range,
        })
    }
}

/// Removes the service user `name` and its group, if it exists and is one of pgbay's (named with
/// [`PREFIX`]). Its processes must have ended.
pub fn remove(name: &str) -> Result<()> {
    if !name.starts_with(PREFIX) || lookup(name)?.is_none() {
        return Ok(());
    }
    run_locked("userdel", name, &[name])?;
    tracing::info!(user = %name, "service OS user removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_dangerous_ids() {
        assert_eq!(
            DEFAULT_UID_RANGE.parse::<UidRange>().unwrap(),
            UidRange::default()
        );
        assert!("500-2000".parse::<UidRange>().is_err());
        assert!("65000-66000".parse::<UidRange>().is_err());
        assert!("70000-60000".parse::<UidRange>().is_err());
        assert!("70000".parse::<UidRange>().is_err());
        assert_eq!(
            "70000-70010".parse::<UidRange>().unwrap().to_string(),
            "70000-70010"
        );
    }

    #[test]
    fn names_are_stable_and_short() {
        let id = uuid::Uuid::parse_str("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        assert_eq!(name_for(&id), "pgbay-0f1e2d3c4b5a");
        assert!(name_for(&id).len() <= 32);
    }
}
