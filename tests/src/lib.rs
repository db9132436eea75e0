//! End-to-end test support: starts the real `cti-server` binary on a free port with a fresh
//! database (a temporary SQLite file, or its own schema on PostgreSQL), waits for `/health`, and
//! kills it on drop; plus request helpers following spec §10.1 (`IA`, `SIGN`, `JWT`, `CALL`,
//! settle).
//!
//! The scenario tests live in `examples/cti-server/tests/` where Cargo provides the binary path
//! (`CARGO_BIN_EXE_cti-server`); they pass it to [`Server::start`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub mod migrate;

/// `INTERNAL_API_SECRET` of the suite (`S`, ≥ 32 characters).
pub const S: &str = "e2e-internal-secret-0123456789abcdefghijklmnop";
/// `DIALPAD_WEBHOOK_SECRET` of the suite (`W`).
pub const W: &str = "e2e-webhook-secret-W";
/// Default PostgreSQL URL of `CTI_TEST_DATABASE_URL`.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Variables removed from the child environment so the caller's shell cannot leak in.
const CONFIG_VARS: &[&str] = &[
    "PORT",
    "NODE_ENV",
    "DATABASE_URL",
    "DATABASE_SCHEMA",
    "INTERNAL_API_SECRET",
    "DIALPAD_WEBHOOK_SECRET",
    "API_KEY_PEPPER",
    "DATA_ENCRYPTION_KEY",
    "PUBLIC_BASE_URL",
    "DIALPAD_PROD_REDIRECT_URI",
    "TRUST_PROXY",
    "WEBHOOK_BODY_LIMIT",
    "JWT_MAX_AGE_SECONDS",
    "PROCESSOR_BATCH_SIZE",
    "PROCESSOR_POLL_MS",
    "PROCESSOR_MAX_ATTEMPTS",
    "WS_HEARTBEAT_MS",
    "WS_MAX_FRAME_BYTES",
    "SHUTDOWN_DRAIN_MS",
    "RATE_LIMIT_WEBHOOK_PER_MIN",
    "RATE_LIMIT_API_PER_MIN",
    "RATE_LIMIT_INTERNAL_PER_MIN",
    "RATE_LIMIT_AUTH_PER_15MIN",
    "METRICS_REQUIRE_AUTH",
    "DIALPAD_WEBHOOK_SIGNATURE_HEADER",
    "LOG_LEVEL",
    "JSON_LOGS",
];

/// Which database a server uses.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A temporary SQLite file.
    Sqlite,
    /// PostgreSQL at this URL, in a fresh schema.
    Postgres(String),
}

/// Options of [`Server::start`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Database.
    pub backend: Backend,
    /// Raise every `RATE_LIMIT_*` (all groups except M).
    pub raise_limits: bool,
    /// Extra variables (override the suite defaults; an empty value removes the variable).
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    /// SQLite with raised limits.
    pub fn sqlite() -> Self {
        Self {
            backend: Backend::Sqlite,
            raise_limits: true,
            env: Vec::new(),
        }
    }
    /// PostgreSQL at `url` with raised limits.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self {
            backend: Backend::Postgres(url.into()),
            raise_limits: true,
            env: Vec::new(),
        }
    }
    /// Adds a variable.
    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running `cti-server` process, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Port.
    pub port: u16,
    dir: tempfile::TempDir,
    _schema: Option<PgSchema>,
}

/// The suite's base environment (spec §10.1) for a server on `port` with `database_url`.
pub fn base_env(port: u16, database_url: &str, raise_limits: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PORT".into(), port.to_string()),
        ("DATABASE_URL".into(), database_url.into()),
        ("INTERNAL_API_SECRET".into(), S.into()),
        ("DIALPAD_WEBHOOK_SECRET".into(), W.into()),
        ("API_KEY_PEPPER".into(), "e2e-pepper".into()),
        ("DIALPAD_SANDBOX_CLIENT_ID".into(), "test-client".into()),
        ("DIALPAD_SANDBOX_CLIENT_SECRET".into(), "test-secret".into()),
        (
            "DIALPAD_SANDBOX_REDIRECT_URI".into(),
            "http://localhost:4000/auth/dialpad/callback".into(),
        ),
        (
            "DIALPAD_PROD_REDIRECT_URI".into(),
            "https://cti.test".into(),
        ),
        ("PUBLIC_BASE_URL".into(), "https://cti.test".into()),
        ("PROCESSOR_POLL_MS".into(), "100".into()),
        ("LOG_LEVEL".into(), "info".into()),
    ];
    if raise_limits {
        for k in [
            "RATE_LIMIT_WEBHOOK_PER_MIN",
            "RATE_LIMIT_API_PER_MIN",
            "RATE_LIMIT_INTERNAL_PER_MIN",
            "RATE_LIMIT_AUTH_PER_15MIN",
        ] {
            env.push((k.into(), "100000".into()));
        }
    }
    env
}

/// Builds the command for `bin` with a cleaned environment plus `env` (empty values are removed).
pub fn command(bin: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin);
    for k in CONFIG_VARS {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

impl Server {
    /// Starts `bin serve` and waits (≤ 30 s) until `/health` answers. Panics with the server's
    /// stderr when it exits early.
    pub async fn start(bin: &str, opts: ServerOptions) -> Server {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let port = free_port();
        let (database_url, schema) = match &opts.backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("cti.db").display()),
                None,
            ),
            Backend::Postgres(url) => (url.clone(), Some(PgSchema::create(url).await)),
        };
        let mut env = base_env(port, &database_url, opts.raise_limits);
        if let Some(s) = &schema {
            env.push(("DATABASE_SCHEMA".into(), s.name.clone()));
        }
        env.extend(opts.env.iter().cloned());
        let child = Self::spawn(Path::new(bin), &env, dir.path());
        let mut server = Server {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            _schema: schema,
        };
        server.wait_ready().await;
        server
    }

    fn spawn(bin: &Path, env: &[(String, String)], dir: &Path) -> Child {
        let out = std::fs::File::create(dir.join("stdout.log"));
        let err = std::fs::File::create(dir.join("stderr.log"));
        let (Ok(out), Ok(err)) = (out, err) else {
            panic!("cannot create log files in {}", dir.display())
        };
        match command(bin, env)
            .arg("serve")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot start {}: {e}", bin.display()),
        }
    }

    async fn wait_ready(&mut self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "cti-server exited early ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            if client
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "cti-server did not answer /health within 30 s; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM (via `kill -TERM`).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `url + path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Creates an app through `POST /internal/apps`; returns `(app_id, api_key)`.
    pub async fn create_app(&self, name: &str) -> (String, String) {
        let res = client()
            .post(self.at("/internal/apps"))
            .bearer_auth(S)
            .json(&json!({ "name": name }))
            .send()
            .await;
        let body = match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 201, "create app: {v}");
                v
            }
            Err(e) => panic!("create app: {e}"),
        };
        let id = body["app_id"].as_str().unwrap_or_default().to_string();
        let key = body["api_key"].as_str().unwrap_or_default().to_string();
        assert!(
            !id.is_empty() && !key.is_empty(),
            "create app response: {body}"
        );
        (id, key)
    }

    /// `GET /api/calls` total for `key`.
    pub async fn calls_total(&self, key: &str) -> u64 {
        let (status, v) = get_json(&self.at("/api/calls?limit=100"), Some(key)).await;
        assert_eq!(status, 200, "GET /api/calls: {v}");
        v["pagination"]["total"].as_u64().unwrap_or(0)
    }

    /// Posts a JWT webhook to `/webhooks/dialpad/<app_id>`; returns status and JSON body.
    pub async fn post_jwt(&self, app_id: &str, token: &str) -> (u16, Value) {
        post_raw(
            &self.at(&format!("/webhooks/dialpad/{app_id}")),
            "application/jwt",
            token.as_bytes().to_vec(),
            &[],
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh PostgreSQL schema `cti_e2e_<random>`, dropped (CASCADE) on drop.
pub struct PgSchema {
    /// Schema name.
    pub name: String,
    url: String,
}

impl PgSchema {
    async fn create(url: &str) -> PgSchema {
        let name = format!("cti_e2e_{}", uuid::Uuid::new_v4().simple());
        // PgStore creates its schema itself on migrate; nothing to do but remember it.
        PgSchema {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// The PostgreSQL URL to test against, if reachable. Unreachable: `None` with a warning, or a
/// panic when `CI=true`.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("CTI_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string());
    use sqlx::Connection;
    let ok = tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(&url)).await;
    match ok {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Some(url)
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timeout".to_string(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at CTI_TEST_DATABASE_URL is unreachable in CI: {why}");
            }
            eprintln!("warning: skipping PostgreSQL e2e test, database unreachable: {why}");
            None
        }
    }
}

/// An HTTP client with a 15 s timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default()
}

/// GET with optional `x-app-api-key`; returns status and JSON body (`Null` if not JSON).
pub async fn get_json(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(k) = key {
        req = req.header("x-app-api-key", k);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// POST raw bytes with a content type and extra headers.
pub async fn post_raw(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// `SIGN(body)`: base64 HMAC-SHA256 keyed by `W`.
pub fn sign(body: &[u8]) -> String {
    cti_core::verify::sign_hmac_b64(body, W.as_bytes())
}

/// `JWT(claims, W, HS256)`.
pub fn jwt(claims: &Value) -> String {
    cti_core::verify::sign_jwt_hs256(claims, W.as_bytes())
}

/// An unsigned `alg: none` token.
pub fn jwt_alg_none(claims: &Value) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        e.encode(br#"{"alg":"none","typ":"JWT"}"#),
        e.encode(claims.to_string())
    )
}

/// `CALL(n, state, extra)` of spec §10.1 with a unique `event_timestamp`.
pub fn call(n: u64, state: &str, extra: Value) -> Value {
    static SEQ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let ts = 1_769_688_000_000i64 + SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut v = json!({
        "call_id": n, "state": state, "direction": "inbound",
        "external_number": "+15557770000", "internal_number": "+15558880000",
        "target": {"id": 12345, "type": "user", "office_id": 999},
        "date_started": 1_769_688_000_000i64, "event_timestamp": ts,
    });
    if let (Some(obj), Some(ex)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in ex {
            obj.insert(k.clone(), x.clone());
        }
    }
    v
}

/// Polls `check` every 250 ms for up to 10 s (spec "settle"); returns whether it held.
pub async fn settle<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Directory of the Dialpad event fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dialpad/events")
}

/// A fixture event as JSON.
pub fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    match std::fs::read_to_string(&path).map(|t| serde_json::from_str(&t)) {
        Ok(Ok(v)) => v,
        other => panic!("fixture {}: {other:?}", path.display()),
    }
}
