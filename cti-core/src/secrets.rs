//! Secrets: [`Secret<T>`] that never prints, AES-256-GCM encryption at rest (spec §6.4).
//!
//! [`DataCipher`] encrypts OAuth tokens and webhook secrets before they are stored, with the
//! application key `DATA_ENCRYPTION_KEY`. Every ciphertext names the key that made it
//! (`v1:<kid>:<base64(nonce || ciphertext || tag)>`), so keys can be rotated: the first key
//! encrypts, all keys decrypt, and rows are re-encrypted at leisure.
//!
//! ```
//! use cti_core::secrets::DataCipher;
//! let cipher = DataCipher::from_base64_env(&DataCipher::generate_key_base64()).unwrap();
//! let stored = cipher.encrypt("access-token");
//! assert!(stored.starts_with("v1:k1:"));
//! assert_eq!(cipher.decrypt(&stored).unwrap().expose(), "access-token");
//! ```

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::RngCore;

/// A value that must never appear in logs: `Debug` and `Display` print `[redacted]`.
///
/// Serde is deliberately not implemented: writing a secret somewhere must be an explicit
/// [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(v: T) -> Self {
        Self(v)
    }

    /// The wrapped value; call sites are easy to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value; call sites are easy to audit.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(v: T) -> Self {
        Self(v)
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a key set could not be built or a value could not be decrypted.
///
/// Messages never contain key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No key was given.
    #[error("no data encryption key configured")]
    NoKeys,
    /// Entry `index` (0-based) of the key list is unusable.
    #[error("data encryption key #{index} is invalid: {reason}")]
    InvalidKey {
        /// Position of the entry in the list.
        index: usize,
        /// What is wrong (`"bad_base64"`, `"wrong_length"`, `"bad_key_id"`).
        reason: &'static str,
    },
    /// Two keys share an id.
    #[error("duplicate data encryption key id {0:?}")]
    DuplicateKeyId(String),
    /// The stored value is not `v1:<kid>:<base64>` (or its content is malformed).
    #[error("encrypted value is malformed: {0}")]
    BadFormat(&'static str),
    /// The value was encrypted with a key that is not configured.
    #[error("encrypted value uses unknown key id {0:?}")]
    UnknownKeyId(String),
    /// Authentication failed: wrong key, tampered value or wrong associated data.
    #[error("encrypted value failed authentication")]
    DecryptionFailed,
    /// The plaintext exceeds AES-GCM's limit (64 GiB).
    #[error("plaintext too long to encrypt")]
    EncryptionFailed,
}

/// Format version prefix of ciphertexts.
const VERSION: &str = "v1";
/// AES-GCM nonce length.
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Longest key id accepted.
const MAX_KID_LEN: usize = 32;
/// Key id of a key given without one.
const DEFAULT_KID: &str = "k1";

/// Standard or URL-safe base64 alphabets, padding optional: for operator-supplied keys.
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// AES-256-GCM encryption at rest of tokens and webhook secrets, with key rotation.
///
/// The first key encrypts; every key decrypts. Output format:
/// `v1:<kid>:<base64(12-byte random nonce || ciphertext || 16-byte tag)>` (standard padded
/// base64). `Debug` shows key ids only.
#[derive(Clone)]
pub struct DataCipher {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for DataCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataCipher")
            .field("key_ids", &self.key_ids())
            .field("keys", &"[redacted]")
            .finish()
    }
}

impl DataCipher {
    /// A cipher over `(key id, 256-bit key)` pairs; the first key encrypts, all decrypt.
    ///
    /// Key ids are 1–32 characters of `[A-Za-z0-9._-]` and must be distinct.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Result<Self, SecretError> {
        if keys.is_empty() {
            return Err(SecretError::NoKeys);
        }
        let mut ciphers: Vec<(String, Aes256Gcm)> = Vec::with_capacity(keys.len());
        for (index, (kid, mut key)) in keys.into_iter().enumerate() {
            if !valid_kid(&kid) {
                return Err(SecretError::InvalidKey {
                    index,
                    reason: "bad_key_id",
                });
            }
            if ciphers.iter().any(|(k, _)| *k == kid) {
                return Err(SecretError::DuplicateKeyId(kid));
            }
            let cipher = Aes256Gcm::new(&key.into());
            key.fill(0);
            ciphers.push((kid, cipher));
        }
        Ok(Self { keys: ciphers })
    }

    /// Parses `DATA_ENCRYPTION_KEY`: either one base64 32-byte key (key id `k1`) or a
    /// comma-separated list `kid:base64,kid2:base64` whose first entry encrypts.
    ///
    /// Standard or URL-safe base64, with or without padding; whitespace around entries is
    /// ignored, as are empty entries.
    pub fn from_base64_env(value: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        let entries = value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate();
        for (index, entry) in entries {
            let (kid, b64) = match entry.split_once(':') {
                Some((kid, b64)) => (kid.trim(), b64.trim()),
                None => (DEFAULT_KID, entry),
            };
            if !valid_kid(kid) {
                return Err(SecretError::InvalidKey {
                    index,
                    reason: "bad_key_id",
                });
            }
            let mut bytes = LENIENT_STANDARD
                .decode(b64)
                .or_else(|_| LENIENT_URL_SAFE.decode(b64))
                .map_err(|_| SecretError::InvalidKey {
                    index,
                    reason: "bad_base64",
                })?;
            let key: Result<[u8; 32], _> = bytes.as_slice().try_into();
            bytes.fill(0);
            let key = key.map_err(|_| SecretError::InvalidKey {
                index,
                reason: "wrong_length",
            })?;
            keys.push((kid.to_owned(), key));
        }
        Self::new(keys)
    }

    /// A fresh random 256-bit key, standard padded base64 (for `DATA_ENCRYPTION_KEY`).
    pub fn generate_key_base64() -> String {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let encoded = STANDARD.encode(key);
        key.fill(0);
        encoded
    }

    /// Id of the key used to encrypt.
    pub fn primary_key_id(&self) -> &str {
        self.keys
            .first()
            .map(|(kid, _)| kid.as_str())
            .unwrap_or_default()
    }

    /// Ids of all configured keys, encrypting key first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(kid, _)| kid.as_str()).collect()
    }

    /// True if `stored` looks like a value produced by [`DataCipher::encrypt`] (a `v1:` prefix);
    /// used to tell encrypted rows from plaintext ones left by the original server.
    pub fn is_encrypted(stored: &str) -> bool {
        stored.starts_with("v1:")
    }

    /// True if `stored` was encrypted with a key other than the primary one and should be
    /// re-encrypted (rotation). Values that are not ciphertexts return `false`.
    pub fn needs_reencryption(&self, stored: &str) -> bool {
        match stored.split(':').nth(1) {
            Some(kid) if Self::is_encrypted(stored) => kid != self.primary_key_id(),
            _ => false,
        }
    }

    /// Encrypts `plaintext` with the primary key and a fresh random nonce.
    ///
    /// # Panics
    ///
    /// Only if `plaintext` exceeds AES-GCM's 64 GiB limit; use [`DataCipher::try_encrypt`] to
    /// get an error instead.
    pub fn encrypt(&self, plaintext: &str) -> String {
        match self.try_encrypt_with_aad(plaintext, b"") {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`DataCipher::encrypt`], returning an error instead of panicking.
    pub fn try_encrypt(&self, plaintext: &str) -> Result<String, SecretError> {
        self.try_encrypt_with_aad(plaintext, b"")
    }

    /// Encrypts `plaintext` bound to `aad` (e.g. `b"app:<uuid>:refresh_token"`): decryption
    /// then needs the same `aad`, so a ciphertext copied to another row or column fails.
    pub fn try_encrypt_with_aad(&self, plaintext: &str, aad: &[u8]) -> Result<String, SecretError> {
        let Some((kid, cipher)) = self.keys.first() else {
            return Err(SecretError::NoKeys);
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .map_err(|_| SecretError::EncryptionFailed)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{VERSION}:{kid}:{}", STANDARD.encode(blob)))
    }

    /// Decrypts a value produced by [`DataCipher::encrypt`] with any configured key.
    pub fn decrypt(&self, stored: &str) -> Result<Secret<String>, SecretError> {
        self.decrypt_with_aad(stored, b"")
    }

    /// Decrypts a value produced by [`DataCipher::try_encrypt_with_aad`] with the same `aad`.
    pub fn decrypt_with_aad(
        &self,
        stored: &str,
        aad: &[u8],
    ) -> Result<Secret<String>, SecretError> {
        let mut parts = stored.trim().splitn(3, ':');
        let (Some(version), Some(kid), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::BadFormat("not_v1_kid_base64"));
        };
        if version != VERSION {
            return Err(SecretError::BadFormat("unsupported_version"));
        }
        if !valid_kid(kid) {
            return Err(SecretError::BadFormat("bad_key_id"));
        }
        let Some((_, cipher)) = self.keys.iter().find(|(k, _)| k == kid) else {
            return Err(SecretError::UnknownKeyId(kid.to_owned()));
        };
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| SecretError::BadFormat("bad_base64"))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::BadFormat("too_short"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| SecretError::DecryptionFailed)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| SecretError::BadFormat("not_utf8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K_OLD: [u8; 32] = [1; 32];
    const K_NEW: [u8; 32] = [2; 32];

    fn cipher(keys: &[(&str, [u8; 32])]) -> DataCipher {
        DataCipher::new(keys.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()).unwrap()
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s.clone().into_inner(), "hunter2");
        assert_eq!(Secret::from(5), Secret::new(5));
    }

    #[test]
    fn roundtrip() {
        let c = cipher(&[("k1", K_OLD)]);
        for plain in [
            "",
            "a",
            "access-token-123",
            "ünïcödé ✓",
            &"x".repeat(10_000),
        ] {
            let enc = c.encrypt(plain);
            assert!(enc.starts_with("v1:k1:"), "{enc}");
            if plain.len() > 3 {
                assert!(!enc.contains(plain));
            }
            assert_eq!(c.decrypt(&enc).unwrap().expose(), plain);
        }
    }

    #[test]
    fn format_is_v1_kid_nonce_ciphertext_tag() {
        let c = cipher(&[("main", K_OLD)]);
        let enc = c.encrypt("hello");
        let rest = enc.strip_prefix("v1:main:").unwrap();
        let blob = STANDARD.decode(rest).unwrap();
        assert_eq!(blob.len(), NONCE_LEN + "hello".len() + TAG_LEN);
    }

    #[test]
    fn nonces_are_random() {
        let c = cipher(&[("k1", K_OLD)]);
        let a = c.encrypt("same");
        let b = c.encrypt("same");
        assert_ne!(a, b);
        assert_eq!(c.decrypt(&a).unwrap(), c.decrypt(&b).unwrap());
    }

    #[test]
    fn tampering_is_detected() {
        let c = cipher(&[("k1", K_OLD)]);
        let enc = c.encrypt("refresh-token");
        let rest = enc.strip_prefix("v1:k1:").unwrap();
        let blob = STANDARD.decode(rest).unwrap();
        for i in [0, NONCE_LEN, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let tampered = format!("v1:k1:{}", STANDARD.encode(&bad));
            assert_eq!(
                c.decrypt(&tampered),
                Err(SecretError::DecryptionFailed),
                "byte {i}"
            );
        }
        let truncated = format!("v1:k1:{}", STANDARD.encode(&blob[..blob.len() - 1]));
        assert_eq!(c.decrypt(&truncated), Err(SecretError::DecryptionFailed));
    }

    #[test]
    fn wrong_key_with_same_id_fails_authentication() {
        let enc = cipher(&[("k1", K_OLD)]).encrypt("x");
        assert_eq!(
            cipher(&[("k1", K_NEW)]).decrypt(&enc),
            Err(SecretError::DecryptionFailed)
        );
    }

    #[test]
    fn rotation_old_values_still_decrypt() {
        let old = cipher(&[("k1", K_OLD)]);
        let enc_old = old.encrypt("token-from-last-year");
        let rotated = cipher(&[("k2", K_NEW), ("k1", K_OLD)]);
        assert_eq!(rotated.primary_key_id(), "k2");
        assert_eq!(rotated.key_ids(), vec!["k2", "k1"]);
        assert_eq!(
            rotated.decrypt(&enc_old).unwrap().expose(),
            "token-from-last-year"
        );
        assert!(rotated.needs_reencryption(&enc_old));
        let enc_new = rotated.encrypt("fresh");
        assert!(enc_new.starts_with("v1:k2:"));
        assert!(!rotated.needs_reencryption(&enc_new));
        assert!(!rotated.needs_reencryption("plaintext-token"));
        // The old cipher cannot read values made with the new key.
        assert_eq!(
            old.decrypt(&enc_new),
            Err(SecretError::UnknownKeyId("k2".into()))
        );
    }

    #[test]
    fn unknown_kid_is_reported() {
        let enc = cipher(&[("k9", K_OLD)]).encrypt("x");
        assert_eq!(
            cipher(&[("k1", K_OLD)]).decrypt(&enc),
            Err(SecretError::UnknownKeyId("k9".into()))
        );
    }

    #[test]
    fn bad_formats_are_reported() {
        let c = cipher(&[("k1", K_OLD)]);
        for (input, reason) in [
            ("", "not_v1_kid_base64"),
            ("plaintext-token", "not_v1_kid_base64"),
            ("v1:k1", "not_v1_kid_base64"),
            ("v2:k1:AAAA", "unsupported_version"),
            ("v1::AAAA", "bad_key_id"),
            ("v1:k 1:AAAA", "bad_key_id"),
            ("v1:k1:not base64!", "bad_base64"),
            ("v1:k1:AAAA", "too_short"),
        ] {
            assert_eq!(
                c.decrypt(input),
                Err(SecretError::BadFormat(reason)),
                "{input}"
            );
        }
    }

    #[test]
    fn non_utf8_plaintext_is_bad_format() {
        let key = [3u8; 32];
        let c = cipher(&[("k1", key)]);
        let raw = Aes256Gcm::new(&key.into());
        let nonce = [9u8; NONCE_LEN];
        let sealed = raw
            .encrypt(Nonce::from_slice(&nonce), &[0xff, 0xfe][..])
            .unwrap();
        let blob = [nonce.as_slice(), &sealed].concat();
        let stored = format!("v1:k1:{}", STANDARD.encode(blob));
        assert_eq!(c.decrypt(&stored), Err(SecretError::BadFormat("not_utf8")));
    }

    #[test]
    fn associated_data_binds_the_context() {
        let c = cipher(&[("k1", K_OLD)]);
        let enc = c
            .try_encrypt_with_aad("secret", b"app:1:webhook_secret")
            .unwrap();
        assert_eq!(
            c.decrypt_with_aad(&enc, b"app:1:webhook_secret")
                .unwrap()
                .expose(),
            "secret"
        );
        assert_eq!(
            c.decrypt_with_aad(&enc, b"app:2:webhook_secret"),
            Err(SecretError::DecryptionFailed)
        );
        assert_eq!(c.decrypt(&enc), Err(SecretError::DecryptionFailed));
        assert_eq!(
            c.decrypt(&c.try_encrypt("x").unwrap()).unwrap().expose(),
            "x"
        );
    }

    #[test]
    fn new_validates_keys() {
        assert_eq!(DataCipher::new(vec![]).unwrap_err(), SecretError::NoKeys);
        assert_eq!(
            DataCipher::new(vec![("a".into(), K_OLD), ("a".into(), K_NEW)]).unwrap_err(),
            SecretError::DuplicateKeyId("a".into())
        );
        for bad in ["", "a:b", "a,b", "with space", &"x".repeat(33)] {
            assert_eq!(
                DataCipher::new(vec![("ok".into(), K_OLD), (bad.to_owned(), K_NEW)]).unwrap_err(),
                SecretError::InvalidKey {
                    index: 1,
                    reason: "bad_key_id"
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn from_env_single_key() {
        let b64 = STANDARD.encode(K_OLD);
        let c = DataCipher::from_base64_env(&format!(" {b64}\n")).unwrap();
        assert_eq!(c.key_ids(), vec!["k1"]);
        let enc = c.encrypt("x");
        assert_eq!(
            cipher(&[("k1", K_OLD)]).decrypt(&enc).unwrap().expose(),
            "x"
        );
        // Unpadded and URL-safe spellings of the same key.
        let nopad = b64.trim_end_matches('=');
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb; 32]);
        assert!(DataCipher::from_base64_env(nopad).is_ok());
        assert!(DataCipher::from_base64_env(&url).is_ok());
    }

    #[test]
    fn from_env_key_list() {
        let value = format!(
            "k2:{}, k1:{},",
            STANDARD.encode(K_NEW),
            STANDARD.encode(K_OLD)
        );
        let c = DataCipher::from_base64_env(&value).unwrap();
        assert_eq!(c.key_ids(), vec!["k2", "k1"]);
        let enc_old = cipher(&[("k1", K_OLD)]).encrypt("old");
        assert_eq!(c.decrypt(&enc_old).unwrap().expose(), "old");
        assert!(c.encrypt("new").starts_with("v1:k2:"));
    }

    #[test]
    fn from_env_errors_do_not_leak_key_material() {
        let b64 = STANDARD.encode(K_OLD);
        let short = STANDARD.encode([7u8; 16]);
        for (value, expected) in [
            ("", SecretError::NoKeys),
            (" , ", SecretError::NoKeys),
            (
                "not base64 at all!",
                SecretError::InvalidKey {
                    index: 0,
                    reason: "bad_base64",
                },
            ),
            (
                short.as_str(),
                SecretError::InvalidKey {
                    index: 0,
                    reason: "wrong_length",
                },
            ),
        ] {
            assert_eq!(
                DataCipher::from_base64_env(value).unwrap_err(),
                expected,
                "{value:?}"
            );
        }
        let list = format!("k1:{b64},k1:{b64}");
        assert_eq!(
            DataCipher::from_base64_env(&list).unwrap_err(),
            SecretError::DuplicateKeyId("k1".into())
        );
        let bad_kid = format!("k1:{b64},bad kid:{b64}");
        let err = DataCipher::from_base64_env(&bad_kid).unwrap_err();
        assert_eq!(
            err,
            SecretError::InvalidKey {
                index: 1,
                reason: "bad_key_id"
            }
        );
        assert!(!err.to_string().contains(&b64));
    }

    #[test]
    fn generated_keys_are_usable_and_distinct() {
        let a = DataCipher::generate_key_base64();
        let b = DataCipher::generate_key_base64();
        assert_ne!(a, b);
        assert_eq!(STANDARD.decode(&a).unwrap().len(), 32);
        let c = DataCipher::from_base64_env(&a).unwrap();
        assert_eq!(c.decrypt(&c.encrypt("t")).unwrap().expose(), "t");
    }

    #[test]
    fn debug_is_redacted() {
        let b64 = STANDARD.encode([0xAB; 32]);
        let c = DataCipher::from_base64_env(&format!("main:{b64}")).unwrap();
        let text = format!("{c:?}");
        assert!(text.contains("main"));
        assert!(text.contains("[redacted]"));
        assert!(!text.contains(&b64));
        assert!(!text.to_lowercase().contains("abab"));
        assert!(!text.contains("171"), "no raw key bytes: {text}");
        let plain = c.decrypt(&c.encrypt("token-value")).unwrap();
        assert!(!format!("{plain:?}").contains("token-value"));
    }

    #[test]
    fn is_encrypted_detects_prefix() {
        let c = cipher(&[("k1", K_OLD)]);
        assert!(DataCipher::is_encrypted(&c.encrypt("x")));
        assert!(!DataCipher::is_encrypted("plain-token"));
    }
}
