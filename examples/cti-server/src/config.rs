//! Configuration from the environment (spec §8.1 / §8.7).
//!
//! [`ServerConfig::from_env`] is strict: a missing or invalid required variable is a
//! [`ConfigError`] naming it, which `main` turns into exit code 1 (spec T07). In `--dev` mode the
//! missing secrets are generated once and kept in [`DevSecrets`] beside the SQLite file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cti_axum::{HttpConfig, RateLimits};
use cti_core::CtiConfig;
use cti_core::inbox::ProcessorConfig;
use cti_core::secrets::{DataCipher, Secret};
use cti_core::verify::VerifyConfig;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://cti.db";

/// Minimum length of `INTERNAL_API_SECRET`.
pub const MIN_INTERNAL_SECRET_LEN: usize = 32;

/// A configuration problem; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration error: {} {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

/// Reads a variable; empty (after trimming) counts as unset, like the original's truthiness check.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn parse_num<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| err(name, format!("is not a valid number: {v:?}"))),
    }
}

fn parse_bool(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match var(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(err(name, format!("must be true or false, got {v:?}"))),
        },
    }
}

/// Parses a byte size: `1048576`, `512KiB`, `1MiB`, `1mb`, `100kb`, `2M`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Secrets that `serve --dev` generates once and keeps beside the SQLite file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevSecrets {
    /// Generated values by variable name.
    pub values: BTreeMap<String, String>,
}

/// Variables `--dev` fills in when missing.
pub const DEV_GENERATED: [&str; 4] = [
    "INTERNAL_API_SECRET",
    "DIALPAD_WEBHOOK_SECRET",
    "API_KEY_PEPPER",
    "DATA_ENCRYPTION_KEY",
];

/// A random alphanumeric string of `len` characters.
pub fn random_token(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Path of the SQLite database file of a `sqlite:` URL (`None` for in-memory databases).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// `<db file>.dev-secrets` (or `cti.db.dev-secrets` in the current directory for a memory
/// SQLite database or PostgreSQL).
pub fn dev_secrets_path(database_url: &str) -> PathBuf {
    let db = sqlite_file(database_url).unwrap_or_else(|| PathBuf::from("cti.db"));
    let mut name = db.as_os_str().to_owned();
    name.push(".dev-secrets");
    PathBuf::from(name)
}

impl DevSecrets {
    /// Loads the file if it exists.
    pub fn load(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the file with mode 0600.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")
    }

    /// Generates a value for every missing variable of [`DEV_GENERATED`]; returns whether
    /// anything was added.
    pub fn fill_missing(&mut self) -> bool {
        let mut changed = false;
        for name in DEV_GENERATED {
            if var(name).is_some() || self.values.contains_key(name) {
                continue;
            }
            let value = if name == "DATA_ENCRYPTION_KEY" {
                DataCipher::generate_key_base64()
            } else {
                random_token(48)
            };
            self.values.insert(name.to_string(), value);
            changed = true;
        }
        changed
    }
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `PORT`.
    pub port: u16,
    /// `NODE_ENV` (`None` = sandbox).
    pub node_env: Option<String>,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `DATABASE_SCHEMA` (PostgreSQL schema, default `cti`).
    pub database_schema: String,
    /// `SHUTDOWN_DRAIN_MS`.
    pub shutdown_drain: Duration,
    /// Engine settings.
    pub cti: CtiConfig,
    /// HTTP settings.
    pub http: HttpConfig,
}

impl ServerConfig {
    /// `true` when `NODE_ENV=production`.
    pub fn production(&self) -> bool {
        self.node_env.as_deref() == Some("production")
    }
}

/// Looks a variable up in the environment, then in the dev secrets.
struct Source<'a> {
    dev: Option<&'a DevSecrets>,
}

impl Source<'_> {
    fn get(&self, name: &str) -> Option<String> {
        var(name).or_else(|| self.dev.and_then(|d| d.values.get(name).cloned()))
    }
}

/// The storage-related part of the configuration (admin subcommands need only this).
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `DATABASE_SCHEMA`.
    pub database_schema: String,
    /// `API_KEY_PEPPER`.
    pub pepper: Option<Secret<Vec<u8>>>,
    /// `DATA_ENCRYPTION_KEY`.
    pub cipher: Option<DataCipher>,
    /// `DIALPAD_WEBHOOK_SECRET` (optional here).
    pub webhook_secret: Option<Secret<String>>,
}

/// Reads the storage settings, falling back to the `--dev` secrets file when one exists where
/// `serve --dev` keeps it ([`dev_secrets_path`]: beside the SQLite database, or
/// `./cti.db.dev-secrets` for PostgreSQL), so admin commands and `simulate` work against a dev
/// server's database with its pepper and secrets. Set variables win over the file.
pub fn storage_from_env() -> Result<StorageConfig, ConfigError> {
    let database_url = var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let dev = DevSecrets::load(&dev_secrets_path(&database_url))
        .ok()
        .flatten();
    storage_with(&Source { dev: dev.as_ref() }, database_url)
}

fn storage_with(src: &Source<'_>, database_url: String) -> Result<StorageConfig, ConfigError> {
    let database_schema = var("DATABASE_SCHEMA").unwrap_or_else(|| "cti".to_string());
    let cipher = match src.get("DATA_ENCRYPTION_KEY") {
        None => None,
        Some(v) => Some(
            DataCipher::from_base64_env(&v)
                .map_err(|e| err("DATA_ENCRYPTION_KEY", format!("is invalid: {e}")))?,
        ),
    };
    Ok(StorageConfig {
        database_url,
        database_schema,
        pepper: src
            .get("API_KEY_PEPPER")
            .map(|p| Secret::new(p.into_bytes())),
        cipher,
        webhook_secret: src.get("DIALPAD_WEBHOOK_SECRET").map(Secret::new),
    })
}

impl ServerConfig {
    /// Reads and validates the environment; `dev` supplies generated secrets for unset variables.
    pub fn from_env(dev: Option<&DevSecrets>) -> Result<Self, ConfigError> {
        let src = Source { dev };
        let node_env = var("NODE_ENV");
        let production = node_env.as_deref() == Some("production");
        let database_url = var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(err(
                "DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }

        let internal = src
            .get("INTERNAL_API_SECRET")
            .ok_or_else(|| err("INTERNAL_API_SECRET", "is required"))?;
        if internal.chars().count() < MIN_INTERNAL_SECRET_LEN {
            return Err(err(
                "INTERNAL_API_SECRET",
                format!("must be at least {MIN_INTERNAL_SECRET_LEN} characters"),
            ));
        }
        if src.get("DIALPAD_WEBHOOK_SECRET").is_none() {
            return Err(err("DIALPAD_WEBHOOK_SECRET", "is required"));
        }
        let public_base_url = var("PUBLIC_BASE_URL").map(|u| u.trim_end_matches('/').to_string());
        if production {
            match &public_base_url {
                None => return Err(err("PUBLIC_BASE_URL", "is required in production")),
                Some(u) if !u.starts_with("https://") => {
                    return Err(err(
                        "PUBLIC_BASE_URL",
                        "must start with https:// in production",
                    ));
                }
                Some(_) => {}
            }
            if let Some(r) = var("DIALPAD_PROD_REDIRECT_URI")
                && !r.starts_with("https://")
            {
                return Err(err(
                    "DIALPAD_PROD_REDIRECT_URI",
                    "must start with https:// in production",
                ));
            }
        }
        let storage = storage_with(&src, database_url.clone())?;

        let port: u16 = parse_num("PORT", 4000)?;
        let webhook_body_limit = match var("WEBHOOK_BODY_LIMIT") {
            None => 1024 * 1024,
            Some(v) => parse_size(&v)
                .ok_or_else(|| err("WEBHOOK_BODY_LIMIT", format!("is not a size: {v:?}")))?,
        };
        let jwt_max_age: u64 = parse_num("JWT_MAX_AGE_SECONDS", 86_400)?;
        // SQLite has one writer connection: a second ingest writer or processor only queues
        // behind it, while one of each makes every transaction carry everything that piled up
        // meanwhile (bigger group commits). PostgreSQL commits in parallel.
        let sqlite = database_url.starts_with("sqlite:");
        let processor = ProcessorConfig {
            batch_size: parse_num("PROCESSOR_BATCH_SIZE", 50usize)?.max(1),
            poll_interval: Duration::from_millis(parse_num("PROCESSOR_POLL_MS", 1000u64)?.max(1)),
            max_attempts: parse_num("PROCESSOR_MAX_ATTEMPTS", 10u32)?.max(1),
            workers: parse_num("PROCESSOR_WORKERS", if sqlite { 1 } else { 2 })?.max(1),
            ..ProcessorConfig::default()
        };
        // Inline processing (the ingest transaction also processes the batch), on both backends:
        // an acknowledged webhook is already applied and published, and processing keeps up
        // with any ingest rate. On PostgreSQL it serialises an app's ingest writes behind its
        // row lock, so its peak ingest rate is lower than with the processor path
        // (`INLINE_PROCESSING=false`, which takes bursts faster and processes them afterwards).
        // Ingest writers: SQLite has one writer connection. PostgreSQL's inline batches can
        // run in a two-stage pipeline (the next batch reads while the last one writes), which
        // `INGEST_WRITERS=2` fills: more throughput flat out, but at moderate rates two writers
        // split the batches and the tail latency grows, so one by default
        // (docs/performance.md "2026-11-30 j").
        let inline_processing = parse_bool("INLINE_PROCESSING", true)?;
        let ingest_writers: usize = parse_num(
            "INGEST_WRITERS",
            if sqlite || inline_processing { 1 } else { 4 },
        )?
        .max(1);
        let defaults = RateLimits::default();
        let rate_limits = RateLimits {
            webhook_per_min: parse_num("RATE_LIMIT_WEBHOOK_PER_MIN", defaults.webhook_per_min)?,
            api_per_min: parse_num("RATE_LIMIT_API_PER_MIN", defaults.api_per_min)?,
            internal_per_min: parse_num("RATE_LIMIT_INTERNAL_PER_MIN", defaults.internal_per_min)?,
            auth_per_15min: parse_num("RATE_LIMIT_AUTH_PER_15MIN", defaults.auth_per_15min)?,
        };

        let mut http = HttpConfig::new(internal);
        http.environment = node_env.clone().unwrap_or_else(|| "sandbox".to_string());
        http.port = port;
        http.rate_limits = rate_limits;
        http.trust_proxy = parse_num("TRUST_PROXY", 0usize)?;
        http.webhook_body_limit = webhook_body_limit;
        if let Some(h) = var("DIALPAD_WEBHOOK_SIGNATURE_HEADER") {
            http.signature_header = h.to_ascii_lowercase();
        }
        http.ws_heartbeat = Duration::from_millis(parse_num("WS_HEARTBEAT_MS", 30_000u64)?.max(1));
        http.ws_max_frame = parse_num("WS_MAX_FRAME_BYTES", 65_536usize)?;
        http.metrics_require_auth = parse_bool("METRICS_REQUIRE_AUTH", false)?;
        http.production = production;
        http.public_base_url = public_base_url;

        let cti = CtiConfig {
            webhook_secret: storage.webhook_secret,
            api_key_pepper: storage.pepper,
            data_cipher: storage.cipher,
            verify: VerifyConfig {
                jwt_max_age: (jwt_max_age > 0).then(|| Duration::from_secs(jwt_max_age)),
                ..VerifyConfig::default()
            },
            processor,
            ingest_writers,
            inline_processing,
            ..CtiConfig::default()
        };
        Ok(Self {
            port,
            node_env,
            database_url,
            database_schema: storage.database_schema,
            shutdown_drain: Duration::from_millis(parse_num("SHUTDOWN_DRAIN_MS", 25_000u64)?),
            cti,
            http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Some(1024 * 1024));
        assert_eq!(parse_size("100kb"), Some(100 * 1024));
        assert_eq!(parse_size("42"), Some(42));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("1 TiB"), None);
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file("sqlite://cti.db"),
            Some(PathBuf::from("cti.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:///tmp/a.db?mode=rwc"),
            Some(PathBuf::from("/tmp/a.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(
            dev_secrets_path("sqlite:///tmp/a.db"),
            PathBuf::from("/tmp/a.db.dev-secrets")
        );
    }

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let a = random_token(48);
        assert_eq!(a.len(), 48);
        assert_ne!(a, random_token(48));
    }
}
