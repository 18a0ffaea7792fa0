//! The sizing template runner: how much shared memory PostgreSQL says a configuration needs.
//!
//! `postgres -C shared_memory_size` refuses a running data directory, so it runs against a
//! template data directory made once per data dir (`<data-dir>/sizing/pgdata`, initdb'ed, never
//! started), as the clusters' OS user, with the candidate settings on its command line (settings
//! are not secrets). One run takes ~20 ms; answers are cached per candidate. What the answer means
//! for a plan (the memory budget) is the control plane's business (its `sizing.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::provision::local::LocalProvisioner;
use crate::provision::ProvisionError;

/// Answers kept before the cache starts over.
const CACHE_LIMIT: usize = 512;

/// A sizing that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    /// PostgreSQL refused a value of the candidate configuration.
    #[error("PostgreSQL refused setting `{setting}`: {why}")]
    Refused {
        /// The setting, as pgbay names it.
        setting: String,
        /// PostgreSQL's words.
        why: String,
    },
    /// Making the template or running postgres failed.
    #[error("sizing a configuration: {0}")]
    Failed(#[from] ProvisionError),
}

/// Runs `postgres -C shared_memory_size` against the template data directory, making it first.
#[derive(Debug)]
pub struct Sizer {
    dir: PathBuf,
    /// Held while the template is checked or made (so two calls never initdb at once).
    template: Mutex<()>,
    cache: Mutex<HashMap<Vec<String>, u64>>,
}

impl Sizer {
    /// A sizer keeping its template under `<data_dir>/sizing`.
    pub fn new(data_dir: &Path) -> Sizer {
        Sizer {
            dir: data_dir.join("sizing"),
            template: Mutex::new(()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn pgdata(&self) -> PathBuf {
        self.dir.join("pgdata")
    }

    /// Makes the template unless a complete one exists (a half-made one is made again).
    pub fn ensure_template(&self, prov: &LocalProvisioner) -> Result<(), ProvisionError> {
        let _g = self.template.lock().unwrap_or_else(|p| p.into_inner());
        let marker = self.dir.join("initialized");
        if marker.exists() {
            return Ok(());
        }
        let io = |what: &'static str| {
            move |source| ProvisionError::Io {
                what: what.to_string(),
                source,
            }
        };
        if self.pgdata().exists() {
            std::fs::remove_dir_all(self.pgdata()).map_err(io("removing sizing template"))?;
        }
        std::fs::create_dir_all(&self.dir).map_err(io("creating sizing dir"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting sizing dir"))?;
        prov.chown_scratch(&self.dir)?;
        // Never started: no login can reach it, so no password is needed.
        let mut cmd = prov.scratch_command("initdb", &self.dir);
        cmd.arg("-D")
            .arg(self.pgdata())
            .args(["--auth=reject", "-U", "pgbay_sizing", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"]);
        prov.run(cmd, "initdb (sizing template)")?;
        std::fs::write(&marker, b"").map_err(io("writing sizing marker"))?;
        Ok(())
    }

    /// `shared_memory_size` (MB) of a cluster with these settings (`(name, value as
    /// postgresql.conf spells it)`, as control's `ClusterConfig::entries` gives them).
    pub fn shared_memory_mb(
        &self,
        prov: &LocalProvisioner,
        settings: &[(String, String)],
    ) -> Result<u64, SizingError> {
        let args: Vec<String> = settings
            .iter()
            .map(|(k, v)| format!("{k}={}", unquote(v)))
            .collect();
        if let Some(mb) = self.cached(&args) {
            return Ok(mb);
        }
        self.ensure_template(prov)?;
        let mut cmd = prov.scratch_command("postgres", &self.dir);
        cmd.arg("-D")
            .arg(self.pgdata())
            .args(["-C", "shared_memory_size"]);
        for a in &args {
            cmd.arg("-c").arg(a);
        }
        let out = cmd.output().map_err(|source| ProvisionError::Io {
            what: "running postgres -C shared_memory_size".into(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            if let Ok(mb) = stdout.trim().parse::<u64>() {
                self.remember(args, mb);
                return Ok(mb);
            }
        }
        if let Some(refused) = refused_setting(settings, &stderr) {
            return Err(refused);
        }
        // Anything else is the template's fault: make it again next time.
        let _ = std::fs::remove_file(self.dir.join("initialized"));
        Err(ProvisionError::Program {
            program: "postgres -C shared_memory_size".into(),
            output: format!("{}{}", stdout.trim(), stderr.trim()),
        }
        .into())
    }

    fn cached(&self, args: &[String]) -> Option<u64> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(args).copied()
    }

    fn remember(&self, args: Vec<String>, mb: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(args, mb);
    }
}

/// A postgresql.conf value as a `-c name=value` argument takes it (no quotes).
fn unquote(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => v.to_string(),
    }
}

/// The setting PostgreSQL's error names (`invalid value for parameter "TimeZone": ...`), mapped
/// to the configuration's spelling.
fn refused_setting(settings: &[(String, String)], stderr: &str) -> Option<SizingError> {
    let line = stderr.lines().find(|l| l.contains("FATAL:"))?;
    let named = line.split('"').nth(1)?;
    let setting = settings
        .iter()
        .map(|(k, _)| k)
        .find(|k| k.eq_ignore_ascii_case(named))?
        .clone();
    let why = line
        .split_once("FATAL:")
        .map(|(_, w)| w.trim())
        .unwrap_or(line);
    let detail = stderr
        .lines()
        .find_map(|l| l.split_once("DETAIL:").map(|(_, d)| d.trim()));
    let why = match detail {
        Some(d) => format!("{why} ({d})"),
        None => why.to_string(),
    };
    Some(SizingError::Refused { setting, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lose_their_conf_quotes() {
        assert_eq!(unquote("'UTC'"), "UTC");
        assert_eq!(unquote("'it''s'"), "it's");
        assert_eq!(unquote("512MB"), "512MB");
    }

    /// PostgreSQL 15 itself, on a template made in a temp dir (as `nobody` when root).
    #[test]
    fn postgres_sizes_the_attack_and_names_a_refused_value() {
        let Some(bin) = crate::provision::local::default_bin_dir() else {
            panic!("PostgreSQL binaries are needed");
        };
        let dir = tempfile::tempdir().unwrap();
        let prov = LocalProvisioner::new(bin, dir.path().join("services"), "127.0.0.1".into());
        prov.ensure_traversable(dir.path()).unwrap();
        let sizer = Sizer::new(dir.path());
        let conf = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = [("shared_buffers", "512MB"), ("max_connections", "200")];
        let plain = sizer.shared_memory_mb(&prov, &conf(&base)).unwrap();
        assert!((512..700).contains(&plain), "{plain}");
        let mut attack = base.to_vec();
        attack.push(("max_prepared_transactions", "10000"));
        attack.push(("max_pred_locks_per_transaction", "5000"));
        let big = sizer.shared_memory_mb(&prov, &conf(&attack)).unwrap();
        assert!(big > 10_000, "{big}");
        let mut bad = base.to_vec();
        bad.push(("timezone", "'Mars/Olympus'"));
        match sizer.shared_memory_mb(&prov, &conf(&bad)) {
            Err(SizingError::Refused { setting, why }) => {
                assert_eq!(setting, "timezone");
                assert!(why.contains("Mars/Olympus"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The template survives; a second sizer on the same data dir reuses it.
        assert!(dir.path().join("sizing/initialized").exists());
        let again = Sizer::new(dir.path());
        assert_eq!(again.shared_memory_mb(&prov, &conf(&base)).unwrap(), plain);
    }
}
