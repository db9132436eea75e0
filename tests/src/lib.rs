//! End-to-end test support: starts the real `cti-server` binary on a free port with a fresh
//! database (a temporary SQLite file, or its own schema on PostgreSQL, dropped afterwards),
//! waits for `/health`, and kills it on drop; plus request helpers following spec §10.1 (`IA`,
//! `HOOK`, `JHOOK`, `SIGN`, `JWT`, `CALL`, settle).
//!
//! The scenario tests live in `examples/cti-server/tests/e2e/` where Cargo provides the binary
//! path (`CARGO_BIN_EXE_cti-server`); they pass it to [`Server::start`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub mod migrate;
pub mod ws;

/// `INTERNAL_API_SECRET` of the suite (`S`, ≥ 32 characters).
pub const S: &str = "e2e-internal-secret-0123456789abcdefghijklmnop";
/// `DIALPAD_WEBHOOK_SECRET` of the suite (`W`).
pub const W: &str = "e2e-webhook-secret-W";
/// `DATA_ENCRYPTION_KEY` of the suite (base64 of 32 bytes), so a test can encrypt a per-app
/// webhook secret the server decrypts.
pub const DATA_KEY: &str = "ZTJlLWRhdGEta2V5LTAxMjM0NTY3ODlhYmNkZWYwMTI=";
/// Default PostgreSQL URL of `CTI_TEST_DATABASE_URL`.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long [`settle`] polls (spec §10.1).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of [`settle`] (the spec's 250 ms or faster).
pub const SETTLE_INTERVAL: Duration = Duration::from_millis(100);

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
    /// PostgreSQL in a fresh schema.
    Postgres {
        /// URL the server connects to.
        url: String,
        /// URL the harness uses to drop the schema (differs from `url` behind a proxy).
        admin_url: String,
    },
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
        let url = url.into();
        Self::postgres_via(url.clone(), url)
    }
    /// PostgreSQL reached by the server at `url` (e.g. through a proxy the test can cut) while
    /// the harness manages the schema through `admin_url`.
    pub fn postgres_via(url: impl Into<String>, admin_url: impl Into<String>) -> Self {
        Self {
            backend: Backend::Postgres {
                url: url.into(),
                admin_url: admin_url.into(),
            },
            raise_limits: true,
            env: Vec::new(),
        }
    }
    /// Adds a variable.
    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Keeps the default (spec §0.5) rate limits — group M.
    pub fn default_limits(mut self) -> Self {
        self.raise_limits = false;
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

/// One HTTP response as seen by a test.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// Body as text.
    pub text: String,
}

impl Resp {
    /// A header as text (empty when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
    /// `(status, body)` for one-line comparisons.
    pub fn pair(&self) -> (u16, Value) {
        (self.status, self.body.clone())
    }
}

/// A running `cti-server` process, killed on drop (then its PostgreSQL schema is dropped).
pub struct Server {
    child: Option<Child>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Port.
    pub port: u16,
    /// `DATABASE_URL` of the server.
    pub database_url: String,
    /// `DATABASE_SCHEMA` on PostgreSQL.
    pub schema: Option<String>,
    http: reqwest::Client,
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
        ("DATA_ENCRYPTION_KEY".into(), DATA_KEY.into()),
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

/// An HTTP client with a 15 s timeout and no automatic redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
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
            Backend::Postgres { url, admin_url } => (url.clone(), Some(PgSchema::new(admin_url))),
        };
        let mut env = base_env(port, &database_url, opts.raise_limits);
        if let Some(s) = &schema {
            env.push(("DATABASE_SCHEMA".into(), s.name.clone()));
        }
        env.extend(opts.env.iter().cloned());
        let mut server = Server {
            child: None,
            bin: PathBuf::from(bin),
            env,
            url: format!("http://127.0.0.1:{port}"),
            port,
            database_url,
            schema: schema.as_ref().map(|s| s.name.clone()),
            http: client(),
            dir,
            _schema: schema,
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// Starts the process again on the same database (after it exited), on a new port.
    pub async fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.port = free_port();
        self.url = format!("http://127.0.0.1:{}", self.port);
        let port = self.port.to_string();
        self.env.retain(|(k, _)| k != "PORT");
        self.env.push(("PORT".into(), port));
        self.spawn();
        self.wait_ready().await;
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("stdout.log"));
        let err = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"));
        let (Ok(out), Ok(err)) = (out, err) else {
            panic!("cannot create log files in {}", dir.display())
        };
        match command(&self.bin, &self.env)
            .arg("serve")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
        {
            Ok(c) => self.child = Some(c),
            Err(e) => panic!("cannot start {}: {e}", self.bin.display()),
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "cti-server exited early ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            if self.http.get(self.at("/health")).send().await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "cti-server did not answer /health within 30 s; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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

    /// Sends SIGTERM to the server process (via `kill -TERM <pid>`).
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

    /// `ws://` URL of `path`.
    pub fn ws_at(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// One request: `method path` with `headers` and an optional raw body.
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let m = match reqwest::Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("method {method}: {e}"),
        };
        let mut rb = self.http.request(m, self.at(path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let r = match rb.send().await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap_or_default();
        Resp {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// `GET path` with `headers`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.req("GET", path, headers, None).await
    }

    /// A request with `IA` (`Authorization: Bearer S`) and, when given, a JSON body.
    pub async fn ia(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {S}");
        match body {
            Some(b) => {
                let hs = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ];
                self.req(method, path, &hs, Some(b.to_string().into_bytes()))
                    .await
            }
            None => {
                self.req(method, path, &[("authorization", auth.as_str())], None)
                    .await
            }
        }
    }

    /// `GET path` with `x-app-api-key: key`.
    pub async fn api(&self, path: &str, key: &str) -> Resp {
        self.get(path, &[("x-app-api-key", key)]).await
    }

    /// `HOOK(key, body)`: signed JSON to `POST /webhooks/dialpad`.
    pub async fn hook(&self, key: &str, body: &Value) -> Resp {
        let text = body.to_string();
        let sig = sign(text.as_bytes());
        let hs = [
            ("content-type", "application/json"),
            ("x-dialpad-signature", sig.as_str()),
            ("x-app-api-key", key),
        ];
        self.req("POST", "/webhooks/dialpad", &hs, Some(text.into_bytes()))
            .await
    }

    /// `JHOOK(key, token)`: a JWT to `POST /webhooks/dialpad`.
    pub async fn jhook(&self, key: &str, token: &str) -> Resp {
        let hs = [("content-type", "application/jwt"), ("x-app-api-key", key)];
        self.req(
            "POST",
            "/webhooks/dialpad",
            &hs,
            Some(token.as_bytes().to_vec()),
        )
        .await
    }

    /// Posts a JWT to the per-app route `/webhooks/dialpad/<app_id>` (no API key).
    pub async fn post_jwt(&self, app_id: &str, token: &str) -> Resp {
        let hs = [("content-type", "application/jwt")];
        self.req(
            "POST",
            &format!("/webhooks/dialpad/{app_id}"),
            &hs,
            Some(token.as_bytes().to_vec()),
        )
        .await
    }

    /// Creates an app through `POST /internal/apps`; returns `(app_id, api_key)`.
    pub async fn create_app(&self, name: &str) -> (String, String) {
        let r = self
            .ia("POST", "/internal/apps", Some(json!({ "name": name })))
            .await;
        assert_eq!(r.status, 201, "create app: {}", r.text);
        let id = r.body["app_id"].as_str().unwrap_or_default().to_string();
        let key = r.body["api_key"].as_str().unwrap_or_default().to_string();
        assert!(!id.is_empty() && !key.is_empty(), "create app: {}", r.text);
        (id, key)
    }

    /// Deactivates an app (`PATCH /internal/apps/<id> {"is_active":false}`).
    pub async fn deactivate(&self, app_id: &str) {
        let r = self
            .ia(
                "PATCH",
                &format!("/internal/apps/{app_id}"),
                Some(json!({"is_active": false})),
            )
            .await;
        assert_eq!(r.status, 200, "deactivate: {}", r.text);
    }

    /// `pagination.total` of `GET path` with `key`.
    pub async fn total(&self, path: &str, key: &str) -> u64 {
        let r = self.api(path, key).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.body["pagination"]["total"].as_u64().unwrap_or(0)
    }

    /// Settles `GET path` (with `key`) until it answers `200` and `cond` holds; returns that
    /// body. Panics with the last body when it never holds.
    pub async fn settle_api(&self, path: &str, key: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.settle_on(path, Some(key), cond).await
    }

    /// Like [`settle_api`](Self::settle_api) with `IA` instead of an API key.
    pub async fn settle_ia(&self, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.settle_on(path, None, cond).await
    }

    async fn settle_on(
        &self,
        path: &str,
        key: Option<&str>,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let r = match key {
                Some(k) => self.api(path, k).await,
                None => self.ia("GET", path, None).await,
            };
            if r.status == 200 && cond(&r.body) {
                return r.body;
            }
            if Instant::now() > deadline {
                panic!(
                    "condition on GET {path} never held within {SETTLE_TIMEOUT:?}; last answer {}: {}",
                    r.status, r.text
                );
            }
            tokio::time::sleep(SETTLE_INTERVAL).await;
        }
    }

    /// The inbox counters of `GET /internal/events/stats`.
    pub async fn event_stats(&self) -> Value {
        let r = self.ia("GET", "/internal/events/stats", None).await;
        assert_eq!(r.status, 200, "event stats: {}", r.text);
        r.body
    }

    /// Processing barrier: waits until every accepted event has been handled (nothing pending,
    /// failed-awaiting-retry or held by a worker). Accepted webhooks are committed before their
    /// `200`, so after this returns the outcome of every earlier webhook is final — the
    /// deterministic form of the spec's "after 3 s" / "never" checks.
    pub async fn drained(&self) -> Value {
        self.settle_ia("/internal/events/stats", |v| {
            v["unprocessed"] == 0 && v["processing"] == 0
        })
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

/// A fresh PostgreSQL schema name `cti_e2e_<random>` (the server creates the schema on start);
/// dropped (CASCADE) through the admin URL on drop.
pub struct PgSchema {
    /// Schema name.
    pub name: String,
    admin_url: String,
}

impl PgSchema {
    /// A new unique schema name managed through `admin_url`.
    pub fn new(admin_url: &str) -> PgSchema {
        PgSchema {
            name: format!("cti_e2e_{}", uuid::Uuid::new_v4().simple()),
            admin_url: admin_url.to_string(),
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        drop_schemas(&self.admin_url, &[&self.name]);
    }
}

/// Drops the PostgreSQL `schemas` (best effort; a failure is printed, not raised). Runs on a
/// thread with its own runtime, so it can be called from `Drop` inside a test's runtime, and
/// returns when done.
pub fn drop_schemas(url: &str, schemas: &[&str]) {
    let url = url.to_string();
    let sql = schemas
        .iter()
        .map(|s| format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
        .collect::<Vec<_>>()
        .join("; ");
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
                if let Err(e) = sqlx::raw_sql(&sql).execute(&mut c).await {
                    eprintln!("warning: cannot drop the test schemas: {e}");
                }
                let _ = c.close().await;
            }
        });
    })
    .join();
}

/// The PostgreSQL URL to test against (`CTI_TEST_DATABASE_URL`, default [`DEFAULT_PG_URL`]), if
/// reachable. Unreachable: `None` with a printed warning, or a panic when `CI=true`.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("CTI_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string());
    let ci = std::env::var("CI").as_deref() == Ok("true");
    postgres_url_checked(&url, ci).await
}

/// [`postgres_url`] for an explicit URL and CI flag.
pub async fn postgres_url_checked(url: &str, ci: bool) -> Option<String> {
    use sqlx::Connection;
    let ok = tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(url)).await;
    let why = match ok {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            return Some(url.to_string());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timeout".to_string(),
    };
    if ci {
        panic!("PostgreSQL at CTI_TEST_DATABASE_URL is unreachable in CI: {why}");
    }
    eprintln!("warning: skipping PostgreSQL e2e test, database unreachable: {why}");
    None
}

/// `SIGN(body)`: base64 HMAC-SHA256 keyed by `W`.
pub fn sign(body: &[u8]) -> String {
    cti_core::verify::sign_hmac_b64(body, W.as_bytes())
}

/// `JWT(claims, W, HS256)`.
pub fn jwt(claims: &Value) -> String {
    jwt_with(claims, W)
}

/// `JWT(claims, secret, HS256)`.
pub fn jwt_with(claims: &Value, secret: &str) -> String {
    cti_core::verify::sign_jwt_hs256(claims, secret.as_bytes())
}

/// An unsigned `alg: none` token (`<header>.<payload>.`).
pub fn jwt_alg_none(claims: &Value) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        e.encode(br#"{"alg":"none","typ":"JWT"}"#),
        e.encode(claims.to_string())
    )
}

/// A correctly HS256-signed (with `W`) token whose payload segment is `payload` verbatim.
pub fn jwt_raw_payload(payload: &[u8]) -> String {
    cti_core::verify::sign_jwt_hs256_raw(payload, W.as_bytes())
}

/// `CALL(n, state, extra)` of spec §10.1 with a unique, increasing `event_timestamp`.
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

/// Polls `check` every [`SETTLE_INTERVAL`] for up to [`SETTLE_TIMEOUT`] (spec "settle");
/// returns whether it held.
pub async fn settle<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(SETTLE_INTERVAL).await;
    }
}

/// Sorted keys of a JSON object (empty for anything else).
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// `names` sorted, for comparing with [`keys`].
pub fn sorted(names: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

/// `true` for an RFC 3339 timestamp string.
pub fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// The `field` of every item of `v.data`, as strings.
pub fn column(v: &Value, field: &str) -> Vec<String> {
    v["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|i| i[field].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The item of `v.data` whose `field` equals `value`.
pub fn find<'a>(v: &'a Value, field: &str, value: &str) -> Option<&'a Value> {
    v["data"]
        .as_array()
        .and_then(|d| d.iter().find(|i| i[field] == value))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Unreachable PostgreSQL is a skip locally and a failure in CI.
    #[tokio::test]
    async fn unreachable_postgres_skips_locally() {
        assert_eq!(
            postgres_url_checked("postgres://nobody@127.0.0.1:1/none", false).await,
            None
        );
    }

    #[tokio::test]
    #[should_panic(expected = "unreachable in CI")]
    async fn unreachable_postgres_fails_in_ci() {
        let _ = postgres_url_checked("postgres://nobody@127.0.0.1:1/none", true).await;
    }

    #[test]
    fn raw_payload_token_has_three_segments() {
        let t = jwt_raw_payload(b"hello");
        assert_eq!(t.split('.').count(), 3);
        assert!(t.split('.').all(|s| !s.is_empty()));
    }
}
