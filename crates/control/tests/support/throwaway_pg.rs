//! A throwaway PostgreSQL server for store tests: initdb in a temp dir (as nobody when run as
//! root: initdb refuses root), listening on a Unix socket in that dir only (no TCP port to
//! race for), trust authentication for its one user. Stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Server {
    dir: tempfile::TempDir,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: PostgreSQL server binaries are needed")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no initdb found")
}

fn run(bin: &str, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin_dir().join(bin));
        c
    } else {
        Command::new(bin_dir().join(bin))
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("pgbay-store-pg")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
        }
        let data = dir.path().join("data");
        check(
            "initdb",
            run(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    "pgbay",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ],
            ),
        );
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off",
            dir.path().display()
        );
        check(
            "pg_ctl start",
            run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-l",
                    dir.path().join("log").to_str().unwrap(),
                    "-w",
                    "start",
                ],
            ),
        );
        Server { dir }
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store URL: database `postgres` over the Unix socket.
    pub fn url(&self) -> String {
        format!(
            "postgres://pgbay@localhost/postgres?host={}",
            self.socket_dir().display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
