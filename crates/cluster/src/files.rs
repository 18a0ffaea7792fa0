//! Small file helpers shared by the key, CA and credential files (control's `crypto.rs` and
//! `ca.rs`): secrets are written with mode 0600 from the start (never world-readable, not even for
//! an instant) and replaced atomically.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic(path, data, 0o600, None)
}

/// Writes a non-secret file (mode 0644), atomically.
pub fn write_public(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic(path, data, 0o644, None)
}

/// Writes `data` to `path` with `mode`, atomically: a new temp file beside it (created, never
/// opened through an existing name or link), handed to `owner` (uid, gid) before anything is
/// written, synced, then renamed into place.
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Whether one of process `pid`'s arguments is `arg` (`/proc/PID/cmdline`): false for a process
/// gone, a zombie, or one whose exec has not finished (its command line is empty until then).
pub(crate) fn cmdline_has(pid: i32, arg: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        .unwrap_or(false)
}
