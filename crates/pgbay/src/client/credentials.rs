//! The key pair the CLI signs with: `PGBAY_API_KEY`/`PGBAY_API_SECRET`, else the `api-credentials`
//! file that `pgbay serve` writes into its data dir on first start (`key=…` and `secret=…` lines,
//! mode 0600), so that on the server's own machine the CLI needs no setup.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use pgbay_api::Credentials;

/// Where the credentials were found (named when the API refuses them).
#[derive(Debug, Clone)]
pub enum Source {
    /// `PGBAY_API_KEY`/`PGBAY_API_SECRET`.
    Env,
    /// A data dir's `api-credentials`.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env => f.write_str("PGBAY_API_KEY/PGBAY_API_SECRET"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The credentials to use, from the environment or else `<data_dir>/api-credentials`.
pub fn resolve(data_dir: &Path) -> anyhow::Result<(Credentials, Source)> {
    let key = std::env::var("PGBAY_API_KEY")
        .ok()
        .filter(|v| !v.is_empty());
    let secret = std::env::var("PGBAY_API_SECRET")
        .ok()
        .filter(|v| !v.is_empty());
    match (key, secret) {
        (Some(key), Some(secret)) => return Ok((Credentials { key, secret }, Source::Env)),
        (None, None) => {}
        _ => bail!("set both PGBAY_API_KEY and PGBAY_API_SECRET, or neither"),
    }
    let path = data_dir.join("api-credentials");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "no API credentials: PGBAY_API_KEY/PGBAY_API_SECRET are not set and {} cannot be \
             read ({e}); set them, or point --data-dir/PGBAY_DATA_DIR at pgbay's data dir",
            path.display()
        )
    })?;
    let creds = parse(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok((creds, Source::File(path)))
}

/// Parses the `api-credentials` file's `key=` and `secret=` lines.
fn parse(text: &str) -> anyhow::Result<Credentials> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("no `{name}=` line"))
    };
    Ok(Credentials {
        key: field("key")?,
        secret: field("secret")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serve_writes() {
        // The format of `serve::credentials`: `writeln!(f, "key={}\nsecret={}", …)`.
        let c = parse("key=EXOabc\nsecret=s3cr=t\n").expect("parses");
        assert_eq!((c.key.as_str(), c.secret.as_str()), ("EXOabc", "s3cr=t"));
        assert!(parse("key=EXOabc\n").is_err());
        assert!(parse("key=\nsecret=x\n").is_err());
    }
}
