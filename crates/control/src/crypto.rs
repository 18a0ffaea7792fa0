//! Encryption at rest of user passwords: AES-256-GCM with a random 96-bit nonce per value, the key
//! kept in `<data-dir>/secret.key` (mode 0600). The store only ever sees `base64(nonce || ct)`.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine;
use pgbay_cluster::files::write_private;

/// Failure to load the key or to open a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file could not be read or written.
    #[error("secret key file {path}: {source}")]
    Io {
        /// Key file path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error("secret key file {0} is corrupt")]
    BadKey(String),
    /// A stored value does not decrypt with this key.
    #[error("a stored secret does not decrypt with the data dir's key")]
    Open,
}

/// Seals and opens secrets with the data dir's key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box over a 32-byte key held in memory only (the key that wraps shared secrets).
    pub fn from_key(key: [u8; 32]) -> Self {
        SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }

    /// Loads the key at `path`, creating it on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.display().to_string(),
            source,
        };
        let key = if path.exists() {
            let hexkey = std::fs::read_to_string(path).map_err(io)?;
            hex::decode(hexkey.trim())
                .map_err(|_| CryptoError::BadKey(path.display().to_string()))?
        } else {
            let key = Aes256Gcm::generate_key(OsRng);
            write_private(path, hex::encode(key).as_bytes()).map_err(io)?;
            key.to_vec()
        };
        if key.len() != 32 {
            return Err(CryptoError::BadKey(path.display().to_string()));
        }
        Ok(SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    /// Encrypts `plain`.
    pub fn seal(&self, plain: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = self
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts a value made by `seal`.
    pub fn open(&self, sealed: &str) -> Result<String, CryptoError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| CryptoError::Open)?;
        if raw.len() < 12 {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seal_open_roundtrip_and_key_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let b = SecretBox::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = b.seal("hunter2hunter2");
        assert!(!sealed.contains("hunter2"));
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "hunter2hunter2");
        let other = SecretBox::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed).is_err());
    }
}
