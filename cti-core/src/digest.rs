//! SHA-256 and HMAC-SHA256, the hashes of the ingest hot path (JWT and header signatures, the
//! body-hash dedupe key, API key lookups).
//!
//! Backed by `ring`, whose SHA-256 picks the CPU's fastest code at run time (SHA extensions,
//! else AVX2 or SSSE3). `sha2` 0.10 uses the SHA extensions too, but without them it falls back
//! to portable code: on a host without them (the project's machine on 2026-12-01) an HMAC of a
//! 1.8 kB webhook costs about 0.55× the time with `ring` (docs/performance.md, 2026-12-01 l).
//! Both hashes run once per webhook.

use ring::{digest, hmac};

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// HMAC-SHA256 of `message` under `key` (any length).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// True if `tag` is the HMAC-SHA256 of `message` under `key`, compared in constant time.
pub(crate) fn hmac_sha256_matches(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), message, tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 6: a key longer than the block size is hashed first.
    #[test]
    fn long_keys_and_tag_checks() {
        let key = [0xaau8; 131];
        let msg = b"Test Using Larger Than Block-Size Key - Hash Key First";
        let tag = hmac_sha256(&key, msg);
        assert_eq!(
            hex::encode(tag),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert!(hmac_sha256_matches(&key, msg, &tag));
        let mut bad = tag;
        bad[31] ^= 1;
        assert!(!hmac_sha256_matches(&key, msg, &bad));
        assert!(!hmac_sha256_matches(&key, msg, &tag[..31]));
        assert!(!hmac_sha256_matches(b"other", msg, &tag));
    }
}
