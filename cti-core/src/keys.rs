//! API keys (spec §5). STUB: being implemented.

use crate::secrets::Secret;

/// Generates a new plaintext key: `raw_` + 64 lowercase hex characters (256 bits).
pub fn generate_key() -> Secret<String> {
    Secret::new(String::new())
}

/// `HINT(k)`: first 8 characters + `...` + last 4 (`***` for strings shorter than 12).
pub fn hint(key: &str) -> String {
    let _ = key;
    String::from("***")
}

/// Computes lookup hashes of keys: hex HMAC-SHA256(pepper, key), or SHA-256 without a pepper.
#[derive(Clone, Default)]
pub struct KeyHasher {
    pepper: Option<Secret<Vec<u8>>>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHasher").field("pepper", &self.pepper.is_some()).finish()
    }
}

impl KeyHasher {
    /// A hasher with an optional pepper.
    pub fn new(pepper: Option<&[u8]>) -> Self {
        Self { pepper: pepper.map(|p| Secret::new(p.to_vec())) }
    }

    /// Lookup hash of a key (64 lowercase hex chars).
    pub fn lookup(&self, key: &str) -> String {
        key.to_string()
    }
}
