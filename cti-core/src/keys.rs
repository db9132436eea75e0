//! API keys (spec §5.1, §5.4).
//!
//! * Keys are `raw_` + 64 lowercase hex characters (256 bits from the OS CSPRNG), returned once
//!   in plaintext ([`generate_key`]) and never stored.
//! * Storage keeps a lookup hash ([`KeyHasher::lookup`]: HMAC-SHA256 with the `API_KEY_PEPPER`,
//!   or plain SHA-256 without one) under a unique index, so authentication is one indexed lookup
//!   plus a constant-time compare, and a [`hint`] for display and audit.
//! * Rows migrated from the original server hold only a bcrypt hash; they are checked with
//!   `verify_legacy_bcrypt` (feature `legacy-bcrypt`) and then backfilled.
//! * [`KeyCache`] caches positive lookups for a short time so hot keys skip the store.
//!
//! ```
//! use cti_core::keys::{KeyHasher, generate_key, hint, is_well_formed};
//! let key = generate_key();
//! assert!(is_well_formed(key.expose()));
//! assert_eq!(hint(key.expose()).len(), 15);
//! let hasher = KeyHasher::new(Some(b"pepper"));
//! let lookup = hasher.lookup(key.expose());
//! assert!(hasher.matches(key.expose(), &lookup));
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::model::AppId;
use crate::secrets::Secret;

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "raw_";

/// Length of a well-formed key: `raw_` + 64 hex characters.
pub const KEY_LEN: usize = KEY_PREFIX.len() + 64;

/// Generates a new plaintext key: `raw_` + 64 lowercase hex characters (256 bits).
///
/// The bytes come from the operating system's CSPRNG.
pub fn generate_key() -> Secret<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    key.push_str(&hex::encode(bytes));
    bytes.fill(0);
    Secret::new(key)
}

/// `HINT(k)`: first 8 characters + `...` + last 4 (`***` for strings shorter than 12).
///
/// Counts characters, not bytes. For a real key the hint looks like `raw_1a2b...9f0e`.
pub fn hint(key: &str) -> String {
    let count = key.chars().count();
    if count < 12 {
        return String::from("***");
    }
    let head: String = key.chars().take(8).collect();
    let tail: String = key.chars().skip(count - 4).collect();
    format!("{head}...{tail}")
}

/// True for keys of the issued format `^raw_[0-9a-f]{64}$`.
///
/// Use it to reject garbage before hashing or touching the store; it says nothing about whether
/// the key exists.
pub fn is_well_formed(key: &str) -> bool {
    key.len() == KEY_LEN
        && key.starts_with(KEY_PREFIX)
        && key.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Computes lookup hashes of keys: hex HMAC-SHA256(pepper, key), or SHA-256 without a pepper.
///
/// An empty pepper counts as no pepper (an environment variable set to the empty string).
#[derive(Clone, Default)]
pub struct KeyHasher {
    pepper: Option<Secret<Vec<u8>>>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHasher")
            .field("pepper", &self.pepper.is_some())
            .finish()
    }
}

impl KeyHasher {
    /// A hasher with an optional pepper.
    pub fn new(pepper: Option<&[u8]>) -> Self {
        Self {
            pepper: pepper
                .filter(|p| !p.is_empty())
                .map(|p| Secret::new(p.to_vec())),
        }
    }

    /// True if lookups are keyed with a pepper.
    pub fn has_pepper(&self) -> bool {
        self.pepper.is_some()
    }

    /// Lookup hash of a key (64 lowercase hex chars).
    pub fn lookup(&self, key: &str) -> String {
        match &self.pepper {
            Some(pepper) => {
                hex::encode(crate::digest::hmac_sha256(pepper.expose(), key.as_bytes()))
            }
            None => hex::encode(crate::digest::sha256(key.as_bytes())),
        }
    }

    /// True if `key` hashes to `stored_lookup` (compared in constant time).
    pub fn matches(&self, key: &str, stored_lookup: &str) -> bool {
        let computed = self.lookup(key);
        computed.as_bytes().ct_eq(stored_lookup.as_bytes()).into()
    }
}

/// Verifies `key` against a bcrypt hash written by the original Node server
/// (`$2a$`, `$2b$` or `$2y$`, cost read from the hash).
///
/// Any malformed hash or other error counts as "no match", as in the original. This costs tens
/// of milliseconds of CPU: run it off the request path's async threads.
#[cfg(feature = "legacy-bcrypt")]
pub fn verify_legacy_bcrypt(key: &str, hash: &str) -> bool {
    let supported = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix));
    supported && bcrypt::verify(key, hash).unwrap_or(false)
}

/// Default lifetime of a [`KeyCache`] entry (spec §5.4: ≤ 60 s).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// Default capacity of a [`KeyCache`].
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// A small thread-safe cache of positive key lookups: lookup hash → app.
///
/// Entries expire after the TTL. When the cache is full, expired entries are dropped and, if it
/// is still full, everything is. Invalidate an app's entries on rotate, revoke and deactivate
/// ([`KeyCache::invalidate_app`]). Only lookup hashes are kept, never plaintext keys.
pub struct KeyCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (AppId, Instant)>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_TTL, DEFAULT_CACHE_CAPACITY)
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl KeyCache {
    /// A cache whose entries live for `ttl` and which holds at most `capacity` entries.
    ///
    /// A zero `ttl` or `capacity` disables caching.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Lifetime of an entry.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The app cached for this lookup hash, if the entry is still fresh.
    pub fn get(&self, lookup: &str) -> Option<AppId> {
        let mut entries = self.entries.lock();
        let (app, inserted_at) = *entries.get(lookup)?;
        if inserted_at.elapsed() < self.ttl {
            Some(app)
        } else {
            entries.remove(lookup);
            None
        }
    }

    /// Caches `lookup → app` for the TTL (replacing any previous entry).
    pub fn insert(&self, lookup: String, app: AppId) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&lookup) {
            let ttl = self.ttl;
            entries.retain(|_, (_, inserted_at)| inserted_at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(lookup, (app, Instant::now()));
    }

    /// Removes every entry of `app` (call on rotate, revoke and deactivate).
    pub fn invalidate_app(&self, app: AppId) {
        self.entries.lock().retain(|_, (a, _)| *a != app);
    }

    /// Removes one lookup hash.
    pub fn remove(&self, lookup: &str) {
        self.entries.lock().remove(lookup);
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.entries.lock().clear();
    }

    /// Number of entries held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// True if the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let key = generate_key().into_inner();
            assert_eq!(key.len(), 68);
            assert!(key.starts_with("raw_"));
            assert!(is_well_formed(&key), "{key}");
            assert!(
                key[4..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert!(seen.insert(key));
        }
    }

    #[test]
    fn generated_key_debug_is_redacted() {
        let key = generate_key();
        assert_eq!(format!("{key:?}"), "[redacted]");
        assert_eq!(format!("{key}"), "[redacted]");
    }

    #[test]
    fn well_formed_rejects_other_shapes() {
        let good = format!("raw_{}", "0123456789abcdef".repeat(4));
        assert!(is_well_formed(&good));
        for bad in [
            String::new(),
            "raw_".to_string(),
            format!("raw_{}", "0123456789ABCDEF".repeat(4)),
            format!("app_{}", "0123456789abcdef".repeat(4)),
            format!("RAW_{}", "0123456789abcdef".repeat(4)),
            format!("raw_{}", "0123456789abcdeg".repeat(4)),
            format!("{good}0"),
            good[..67].to_string(),
            format!(" {}", &good[1..]),
            format!("raw_{}é", &"0123456789abcdef".repeat(4)[..62]),
        ] {
            assert!(!is_well_formed(&bad), "{bad}");
        }
    }

    #[test]
    fn hint_of_a_real_key() {
        let key = format!("raw_1a2b{}9f0e", "0".repeat(56));
        assert_eq!(hint(&key), "raw_1a2b...9f0e");
        let generated = generate_key();
        let h = hint(generated.expose());
        assert_eq!(h.len(), 15);
        assert!(h.starts_with("raw_"));
        assert_eq!(&h[8..11], "...");
        assert_eq!(&h[11..], &generated.expose()[64..]);
    }

    #[test]
    fn hint_of_short_and_edge_strings() {
        assert_eq!(hint(""), "***");
        assert_eq!(hint("abc"), "***");
        assert_eq!(hint("12345678901"), "***");
        assert_eq!(hint("123456789012"), "12345678...9012");
        // A bcrypt hash (the original's buggy hints).
        assert_eq!(
            hint("$2b$10$xAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijkAbCd"),
            "$2b$10$x...AbCd"
        );
    }

    #[test]
    fn hint_counts_characters_not_bytes() {
        // 11 characters but 22 bytes: still too short.
        assert_eq!(hint("ééééééééééé"), "***");
        assert_eq!(hint("ééééééééééééé"), "éééééééé...éééé");
        assert_eq!(hint("αβγδεζηθικλμνξ"), "αβγδεζηθ...λμνξ");
    }

    #[test]
    fn lookup_without_pepper_is_sha256_hex() {
        let hasher = KeyHasher::new(None);
        assert!(!hasher.has_pepper());
        assert_eq!(
            hasher.lookup("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hasher.lookup("abc"), KeyHasher::default().lookup("abc"));
        assert_eq!(
            KeyHasher::new(Some(b"")).lookup("abc"),
            hasher.lookup("abc")
        );
    }

    #[test]
    fn lookup_with_pepper_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let hasher = KeyHasher::new(Some(b"Jefe"));
        assert!(hasher.has_pepper());
        assert_eq!(
            hasher.lookup("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn lookup_is_deterministic_and_pepper_dependent() {
        let key = generate_key();
        let a = KeyHasher::new(Some(b"pepper-a"));
        let b = KeyHasher::new(Some(b"pepper-b"));
        let none = KeyHasher::new(None);
        let la = a.lookup(key.expose());
        assert_eq!(la, a.clone().lookup(key.expose()));
        assert_eq!(la.len(), 64);
        assert!(
            la.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(la, b.lookup(key.expose()));
        assert_ne!(la, none.lookup(key.expose()));
        assert_ne!(la, a.lookup(generate_key().expose()));
    }

    #[test]
    fn matches_compares_lookup_hashes() {
        let hasher = KeyHasher::new(Some(b"pepper"));
        let key = generate_key();
        let stored = hasher.lookup(key.expose());
        assert!(hasher.matches(key.expose(), &stored));
        assert!(!hasher.matches(generate_key().expose(), &stored));
        assert!(!hasher.matches(key.expose(), &stored[..63]));
        assert!(!hasher.matches(key.expose(), ""));
        assert!(!KeyHasher::new(None).matches(key.expose(), &stored));
    }

    #[test]
    fn hasher_debug_hides_the_pepper() {
        let hasher = KeyHasher::new(Some(b"super-secret-pepper"));
        let text = format!("{hasher:?}");
        assert!(!text.contains("super-secret-pepper"));
        assert!(text.contains("pepper: true"));
    }

    #[cfg(feature = "legacy-bcrypt")]
    #[test]
    fn legacy_bcrypt_hashes_verify() {
        use bcrypt::Version;
        let key = generate_key().into_inner();
        let parts = bcrypt::hash_with_result(&key, 4).unwrap();
        for version in [Version::TwoA, Version::TwoB, Version::TwoY] {
            let hash = parts.format_for_version(version);
            assert!(verify_legacy_bcrypt(&key, &hash), "{hash}");
            assert!(!verify_legacy_bcrypt(&generate_key().into_inner(), &hash));
        }
        // $2x$ is not a format the original wrote.
        assert!(!verify_legacy_bcrypt(
            &key,
            &parts.format_for_version(Version::TwoX)
        ));
    }

    #[cfg(feature = "legacy-bcrypt")]
    #[test]
    fn legacy_bcrypt_published_vector_verifies() {
        // OpenBSD / John the Ripper test vector.
        let hash = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        assert!(verify_legacy_bcrypt("U*U", hash));
        assert!(!verify_legacy_bcrypt("U*V", hash));
    }

    #[cfg(feature = "legacy-bcrypt")]
    #[test]
    fn legacy_bcrypt_errors_are_no_match() {
        for hash in [
            "",
            "not a hash",
            "$2b$",
            "$2b$99$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123",
            "$2b$04$short",
            "2a$$$0$OOOOOOOOOOOOOOOOOOOOO£OOOOOOOOOOOOOOOOOOOOOOOOOOOOOO",
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
        ] {
            assert!(!verify_legacy_bcrypt("raw_x", hash), "{hash}");
        }
    }

    #[test]
    fn cache_hits_and_misses() {
        let cache = KeyCache::default();
        assert_eq!(cache.ttl(), Duration::from_secs(60));
        assert!(cache.is_empty());
        let app = AppId::new();
        assert_eq!(cache.get("h1"), None);
        cache.insert("h1".into(), app);
        assert_eq!(cache.get("h1"), Some(app));
        assert_eq!(cache.get("h2"), None);
        assert_eq!(cache.len(), 1);
        let other = AppId::new();
        cache.insert("h1".into(), other);
        assert_eq!(cache.get("h1"), Some(other));
        assert_eq!(cache.len(), 1);
        cache.remove("h1");
        assert_eq!(cache.get("h1"), None);
    }

    #[test]
    fn cache_entries_expire() {
        let cache = KeyCache::new(Duration::from_millis(50), 10);
        let app = AppId::new();
        cache.insert("h".into(), app);
        assert_eq!(cache.get("h"), Some(app));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(cache.get("h"), None);
        assert!(cache.is_empty(), "expired entry is removed on read");
    }

    #[test]
    fn cache_invalidation_by_app() {
        let cache = KeyCache::default();
        let (a, b) = (AppId::new(), AppId::new());
        cache.insert("a1".into(), a);
        cache.insert("a2".into(), a);
        cache.insert("b1".into(), b);
        cache.invalidate_app(a);
        assert_eq!(cache.get("a1"), None);
        assert_eq!(cache.get("a2"), None);
        assert_eq!(cache.get("b1"), Some(b));
        cache.clear();
        assert_eq!(cache.get("b1"), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn full_cache_drops_expired_entries_first() {
        let cache = KeyCache::new(Duration::from_millis(60), 3);
        let app = AppId::new();
        cache.insert("old1".into(), app);
        cache.insert("old2".into(), app);
        std::thread::sleep(Duration::from_millis(80));
        cache.insert("fresh".into(), app);
        cache.insert("new".into(), app);
        assert_eq!(cache.len(), 2, "only the expired entries were dropped");
        assert_eq!(cache.get("fresh"), Some(app));
        assert_eq!(cache.get("new"), Some(app));
    }

    #[test]
    fn full_cache_of_fresh_entries_is_cleared() {
        let cache = KeyCache::new(Duration::from_secs(60), 3);
        let app = AppId::new();
        for k in ["a", "b", "c"] {
            cache.insert(k.into(), app);
        }
        assert_eq!(cache.len(), 3);
        // Replacing an existing key does not evict.
        cache.insert("a".into(), app);
        assert_eq!(cache.len(), 3);
        cache.insert("d".into(), app);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("d"), Some(app));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        for cache in [
            KeyCache::new(Duration::ZERO, 10),
            KeyCache::new(Duration::from_secs(60), 0),
        ] {
            cache.insert("h".into(), AppId::new());
            assert_eq!(cache.get("h"), None);
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn cache_is_shared_across_threads() {
        let cache = Arc::new(KeyCache::default());
        let app = AppId::new();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let key = format!("{t}-{i}");
                        cache.insert(key.clone(), app);
                        assert_eq!(cache.get(&key), Some(app));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(cache.len(), 4000);
        cache.invalidate_app(app);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_debug_hides_lookup_hashes() {
        let cache = KeyCache::default();
        cache.insert("deadbeefcafe".into(), AppId::new());
        let text = format!("{cache:?}");
        assert!(!text.contains("deadbeefcafe"));
        assert!(text.contains("len: 1"));
    }
}
