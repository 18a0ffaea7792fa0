//! SCRAM-SHA-256 (RFC 5802/7677) without channel binding, as PostgreSQL uses it.
//!
//! `ServerSecret` is derived once per password (PBKDF2 is deliberately slow) and cached by the
//! service, so a storm of logins costs HMACs, not key stretching.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// With `tls-server-end-point` channel binding, offered to TLS clients.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
const ITERATIONS: u32 = 4096;

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    BadProof,
    #[error("server signature mismatch")]
    ServerSignature,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any size"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

/// What the server keeps about a password.
#[derive(Clone)]
pub struct ServerSecret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ServerSecret {
    pub fn derive(password: &str) -> ServerSecret {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let salted = salted_password(password, &salt, ITERATIONS);
        let client_key = hmac(&salted, b"Client Key");
        ServerSecret {
            salt,
            iterations: ITERATIONS,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

/// Server side of one exchange, between the client's first and final messages.
pub struct ServerExchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The expected `c=` data: the gs2 header, plus the TLS binding for PLUS.
    channel: Vec<u8>,
}

impl ServerExchange {
    /// Takes the client-first-message, returns the exchange and the server-first-message.
    /// `binding`: the client selected SCRAM-SHA-256-PLUS and this is the TLS connection's
    /// `tls-server-end-point` data. `offered_plus`: PLUS was offered (the client is on TLS),
    /// so a client saying "y" (it supports binding but thinks the server does not) is refused,
    /// as PostgreSQL does: a downgrade.
    pub fn start(
        secret: &ServerSecret,
        client_first: &[u8],
        binding: Option<&[u8; 32]>,
        offered_plus: bool,
    ) -> Result<(ServerExchange, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let flag = text.as_bytes().first().copied();
        match (flag, binding) {
            (Some(b'n'), None) => {}
            (Some(b'y'), None) if !offered_plus => {}
            (Some(b'p'), Some(_)) if text.starts_with("p=tls-server-end-point,") => {}
            (Some(b'n' | b'y' | b'p'), _) => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 header")),
        }
        let (gs2_header, bare) = {
            let second = text[1..]
                .find(',')
                .ok_or(ScramError::Malformed("gs2 header"))?
                + 1;
            let end = text[second + 1..]
                .find(',')
                .ok_or(ScramError::Malformed("gs2 header"))?
                + second
                + 1;
            (&text[..=end], &text[end + 1..])
        };
        // What the client's final message must carry as `c=`: the header, then the binding.
        let mut channel = gs2_header.as_bytes().to_vec();
        if let Some(b) = binding {
            channel.extend_from_slice(b);
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client nonce"))?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ServerExchange {
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                channel,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message; returns the server-final-message on success.
    pub fn finish(self, secret: &ServerSecret, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let proof_at = text.rfind(",p=").ok_or(ScramError::Malformed("proof"))?;
        let without_proof = &text[..proof_at];
        let proof = B64
            .decode(&text[proof_at + 3..])
            .map_err(|_| ScramError::Malformed("proof encoding"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let channel = B64
            .decode(channel.ok_or(ScramError::Malformed("channel binding"))?)
            .map_err(|_| ScramError::Malformed("channel binding encoding"))?;
        if channel != self.channel {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        if proof.len() != 32 {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison: a timing side channel on the stored key is cheap to avoid.
        if stored
            .iter()
            .zip(secret.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Client side of one exchange (the pooler logging in to PostgreSQL).
pub struct ClientExchange {
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    /// Returns the exchange and the client-first-message.
    pub fn start() -> (ClientExchange, String) {
        let nonce = nonce();
        let bare = format!("n=,r={nonce}");
        let first = format!("n,,{bare}");
        (
            ClientExchange {
                nonce,
                client_first_bare: bare,
                server_signature: None,
            },
            first,
        )
    }

    /// Takes the server-first-message, returns the client-final-message.
    pub fn respond(&mut self, password: &str, server_first: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v);
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("server nonce"))?;
        if !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("salt"))?)
            .map_err(|_| ScramError::Malformed("salt encoding"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::Malformed("iterations"))?
            .parse()
            .map_err(|_| ScramError::Malformed("iterations"))?;
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ signature[i];
        }
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = text.strip_prefix("v=").ok_or(ScramError::ServerSignature)?;
        let v = B64
            .decode(v.trim_end())
            .map_err(|_| ScramError::ServerSignature)?;
        match self.server_signature {
            Some(expected) if v == expected => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_agree() {
        let secret = ServerSecret::derive("pencil");
        let (mut client, first) = ClientExchange::start();
        let (server, server_first) =
            ServerExchange::start(&secret, first.as_bytes(), None, false).unwrap();
        let client_final = client.respond("pencil", server_first.as_bytes()).unwrap();
        let server_final = server.finish(&secret, client_final.as_bytes()).unwrap();
        client.verify(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        let secret = ServerSecret::derive("pencil");
        let (mut client, first) = ClientExchange::start();
        let (server, server_first) =
            ServerExchange::start(&secret, first.as_bytes(), None, false).unwrap();
        let client_final = client.respond("crayon", server_first.as_bytes()).unwrap();
        assert!(matches!(
            server.finish(&secret, client_final.as_bytes()),
            Err(ScramError::BadProof)
        ));
    }

    /// A SCRAM-SHA-256-PLUS exchange as a client computes it (RFC 5802 with a gs2 header of
    /// `p=tls-server-end-point,,` and the binding data in `c=`).
    fn plus_exchange(
        secret: &ServerSecret,
        server_binding: &[u8; 32],
        client_binding: &[u8],
    ) -> Result<String, ScramError> {
        let header = "p=tls-server-end-point,,";
        let bare = "n=,r=clientnonce";
        let first = format!("{header}{bare}");
        let (server, server_first) =
            ServerExchange::start(secret, first.as_bytes(), Some(server_binding), true)?;
        let mut c = header.as_bytes().to_vec();
        c.extend_from_slice(client_binding);
        let nonce = server_first.split(',').next().unwrap();
        let without_proof = format!("c={},{nonce}", B64.encode(&c));
        let salted = salted_password("pencil", &secret.salt, secret.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = (0..32).map(|i| client_key[i] ^ signature[i]).collect();
        let client_final = format!("{without_proof},p={}", B64.encode(proof));
        server.finish(secret, client_final.as_bytes())
    }

    #[test]
    fn channel_binding() {
        let secret = ServerSecret::derive("pencil");
        let binding = [7u8; 32];
        assert!(plus_exchange(&secret, &binding, &binding).is_ok());
        assert!(matches!(
            plus_exchange(&secret, &binding, &[8u8; 32]),
            Err(ScramError::ChannelBinding)
        ));
        // "y" (client could bind, thinks the server cannot) when PLUS was offered: a downgrade.
        let first = b"y,,n=,r=abc";
        assert!(ServerExchange::start(&secret, first, None, true).is_err());
        assert!(ServerExchange::start(&secret, first, None, false).is_ok());
        // PLUS selected with a plain header, or a plain mechanism with a PLUS header.
        assert!(ServerExchange::start(&secret, b"n,,n=,r=abc", Some(&binding), true).is_err());
        let p = b"p=tls-server-end-point,,n=,r=abc";
        assert!(ServerExchange::start(&secret, p, None, true).is_err());
        let unique = b"p=tls-unique,,n=,r=abc";
        assert!(ServerExchange::start(&secret, unique, Some(&binding), true).is_err());
    }
}
