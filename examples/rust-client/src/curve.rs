//! ZeroMQ CURVE keys for a sidecar that runs with `[zmq.curve]` (PROTOCOL.md 2 and 12).
//!
//! The key files are the certificates `comfy-bridge keys generate` writes (czmq's and pyzmq's
//! format): `NAME.key` holds `public-key = "<40 Z85 characters>"`, `NAME.key_secret` holds
//! both keys. A client needs the sidecar's public key and its own pair; the sidecar lets it in
//! only when its public key is one of the `NAME.key` files of its `zmq.curve.clients_dir`.
//!
//! Each socket (the DEALER and the SUB alike) gets the three keys before it connects:
//! `set_curve_serverkey`, `set_curve_publickey`, `set_curve_secretkey`, each with the 32
//! raw bytes `zmq::z85_decode` gives. A client without keys, or with a key the sidecar does
//! not list, never completes a handshake: with `ZMQ_IMMEDIATE` its DEALER stays unwritable and
//! its SUB receives nothing.

use std::fmt;

#[derive(Clone)]
pub struct CurveKeys {
    pub server_public: Vec<u8>,
    pub public: Vec<u8>,
    secret: Vec<u8>,
}

impl fmt::Debug for CurveKeys {
    /// Never shows the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CurveKeys {{ public: {} }}", z85(&self.public))
    }
}

fn z85(raw: &[u8]) -> String {
    zmq::z85_encode(raw).unwrap_or_else(|_| "?".into())
}

/// The value of `name = "..."` in a certificate file (comment lines start with `#`).
fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        })
}

/// A Z85 key of a file: 40 characters, 32 bytes once decoded. Errors name the file, never the key.
fn key(path: &str, text: &str, name: &str) -> Result<Vec<u8>, String> {
    let encoded = field(text, name).ok_or_else(|| format!("{path}: no {name} line"))?;
    if encoded.len() != 40 {
        return Err(format!("{path}: {name} is not a 40-character Z85 key"));
    }
    zmq::z85_decode(&encoded).map_err(|_| format!("{path}: {name} is not valid Z85"))
}

impl CurveKeys {
    /// `server_key`: the sidecar's `NAME.key`; `client_key`: this client's `NAME.key_secret`.
    pub fn load(server_key: &str, client_key: &str) -> Result<CurveKeys, String> {
        let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
        let server = read(server_key)?;
        let client = read(client_key)?;
        Ok(CurveKeys {
            server_public: key(server_key, &server, "public-key")?,
            public: key(client_key, &client, "public-key")?,
            secret: key(client_key, &client, "secret-key")?,
        })
    }

    /// A fresh pair that no sidecar lists, with the same server key (to check a refusal).
    pub fn stranger(&self) -> Result<CurveKeys, String> {
        let pair = zmq::CurveKeyPair::new().map_err(|e| e.to_string())?;
        Ok(CurveKeys {
            server_public: self.server_public.clone(),
            public: pair.public_key.to_vec(),
            secret: pair.secret_key.to_vec(),
        })
    }

    /// Before `connect`.
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_serverkey(&self.server_public)?;
        socket.set_curve_publickey(&self.public)?;
        socket.set_curve_secretkey(&self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_certificate_in_the_pyzmq_format() {
        let pair = zmq::CurveKeyPair::new().unwrap();
        let (public, secret) = (z85(&pair.public_key), z85(&pair.secret_key));
        let text = format!(
            "#   ZeroMQ CURVE **Secret** Certificate\n\nmetadata\ncurve\n    public-key = \"{public}\"\n    secret-key = \"{secret}\"\n"
        );
        assert_eq!(key("f", &text, "public-key").unwrap(), pair.public_key.to_vec());
        assert_eq!(key("f", &text, "secret-key").unwrap(), pair.secret_key.to_vec());
        let public_only = format!("curve\n    public-key = \"{public}\"\n");
        let err = key("f.key", &public_only, "secret-key").unwrap_err();
        assert_eq!(err, "f.key: no secret-key line");
        assert!(!err.contains(&public));
    }
}
