//! Real-time (WebSocket) test support: a WebSocket client with the helpers the `/ws` scenarios
//! need, and [`Cluster`] — several `cti-server` processes on **one** database (one PostgreSQL
//! schema, or one SQLite file), for cross-instance delivery and for admin CLI commands run as a
//! separate process against a running server.
//!
//! Helpers take the server's base URL (`http://127.0.0.1:<port>`), so they work with both
//! [`crate::Server`] and [`Instance`].

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use futures::{SinkExt, StreamExt};
pub use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::{S, base_env, client, command, free_port, sign};

/// A WebSocket client connection.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `ws://<host>` + `path_and_query` of a server's base URL.
pub fn ws_path(base: &str, path_and_query: &str) -> String {
    format!(
        "ws://{}{path_and_query}",
        base.trim_start_matches("http://")
    )
}

/// `ws://…/ws?<query>` of a server's base URL.
pub fn ws_url(base: &str, query: &str) -> String {
    if query.is_empty() {
        ws_path(base, "/ws")
    } else {
        ws_path(base, &format!("/ws?{query}"))
    }
}

/// `true` when `v` is an RFC 3339 timestamp string.
pub fn is_timestamp(v: &Value) -> bool {
    v.is_string() && serde_json::from_value::<cti_core::model::Timestamp>(v.clone()).is_ok()
}

/// `websocket.connections_total` of the server's `/metrics`.
pub async fn ws_connections(base: &str) -> u64 {
    match client().get(format!("{base}/metrics")).send().await {
        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["websocket"]["connections_total"]
            .as_u64()
            .unwrap_or(0),
        Err(e) => panic!("GET /metrics: {e}"),
    }
}

/// Waits (≤ `wait`) until the server counts `n` WebSocket connections; whether it did.
pub async fn wait_ws_connections(base: &str, n: u64, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if ws_connections(base).await == n {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects to `/ws?<query>`; panics unless the server answers `101`.
pub async fn connect(base: &str, query: &str) -> Client {
    connect_request(ws_url(base, query)).await
}

/// Connects with a prepared request (e.g. with an `x-app-api-key` header); panics unless `101`.
pub async fn connect_request(req: impl IntoClientRequest + Unpin) -> Client {
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            ws
        }
        Err(e) => panic!("websocket upgrade failed: {e}"),
    }
}

/// Connects over a socket whose kernel receive buffer is `recv_buffer` bytes and with a tiny
/// client read buffer: a client that then never reads stalls the server's writes quickly.
pub async fn connect_stalled(base: &str, query: &str, recv_buffer: u32) -> Client {
    let addr = base.trim_start_matches("http://");
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => panic!("base URL {base}: {e}"),
    };
    let socket = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => panic!("socket: {e}"),
    };
    let _ = socket.set_recv_buffer_size(recv_buffer);
    let tcp = match socket.connect(addr).await {
        Ok(t) => t,
        Err(e) => panic!("connect {addr}: {e}"),
    };
    let config = WebSocketConfig::default().read_buffer_size(256);
    match tokio_tungstenite::client_async_with_config(
        ws_url(base, query),
        MaybeTlsStream::Plain(tcp),
        Some(config),
    )
    .await
    {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            ws
        }
        Err(e) => panic!("websocket upgrade failed: {e}"),
    }
}

/// Status and JSON body of a refused handshake; panics when the upgrade succeeds.
pub async fn refused(req: impl IntoClientRequest + Unpin) -> (u16, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => panic!("unexpected handshake error {e}"),
        Ok(_) => panic!("upgrade unexpectedly accepted"),
    }
}

/// Next JSON text message within `wait` (pings/pongs skipped); `None` on timeout. Panics on a
/// close frame, an error or a non-JSON message.
pub async fn next_json(ws: &mut Client, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match msg {
            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                Ok(v) => return Some(v),
                Err(e) => panic!("non-JSON message {t:?}: {e}"),
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Every JSON message until `quiet` passes without one.
pub async fn drain_json(ws: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_json(ws, quiet).await {
        out.push(v);
    }
    out
}

/// Reads until the server's close frame (within `wait`); returns its code and reason. Panics
/// when the connection ends without one.
pub async fn close_frame(ws: &mut Client, wait: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(m) => m,
            Err(_) => panic!("no close frame within {wait:?}"),
        };
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_string());
            }
            Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new()),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

/// The close code of [`close_frame`].
pub async fn close_code(ws: &mut Client, wait: Duration) -> u16 {
    close_frame(ws, wait).await.0
}

/// `true` when the connection ends (close frame, error or EOF) within `wait`; other frames are
/// read and ignored.
pub async fn ends_within(ws: &mut Client, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends a text frame; `false` when the connection is gone.
pub async fn send_text(ws: &mut Client, text: &str) -> bool {
    ws.send(Message::text(text)).await.is_ok()
}

/// Sends the closing handshake and drops the connection.
pub async fn disconnect(mut ws: Client) {
    let _ = ws.close(None).await;
}

/// `POST url` with a JSON body and headers; returns status and JSON body.
async fn post_json(url: &str, headers: &[(&str, &str)], body: String) -> (u16, Value) {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
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

/// `IA` request: `POST base+path` with `Authorization: Bearer S` and a JSON body.
pub async fn internal_post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {S}");
    post_json(
        &format!("{base}{path}"),
        &[("authorization", &auth)],
        body.to_string(),
    )
    .await
}

/// Deactivates an app: `PATCH /internal/apps/<id> {"is_active":false}`.
pub async fn deactivate_app(base: &str, app_id: &str) {
    let res = client()
        .patch(format!("{base}/internal/apps/{app_id}"))
        .bearer_auth(S)
        .header("content-type", "application/json")
        .body(json!({ "is_active": false }).to_string())
        .send()
        .await;
    match res {
        Ok(r) => assert_eq!(r.status().as_u16(), 200, "deactivate {app_id}"),
        Err(e) => panic!("PATCH /internal/apps/{app_id}: {e}"),
    }
}

/// `HOOK(key, body)` of spec §10.1: signed JSON to `POST /webhooks/dialpad`; asserts `200`.
pub async fn hook(base: &str, key: &str, body: Value) {
    let text = body.to_string();
    let sig = sign(text.as_bytes());
    let (status, v) = post_json(
        &format!("{base}/webhooks/dialpad"),
        &[("x-dialpad-signature", &sig), ("x-app-api-key", key)],
        text,
    )
    .await;
    assert_eq!(status, 200, "HOOK {body}: {v}");
}

/// Posts a signed JWT (Dialpad's format) to `/webhooks/dialpad/<app_id>`; asserts `200`.
pub async fn jwt_hook(base: &str, app_id: &str, claims: &Value) {
    let token = crate::jwt(claims);
    let url = format!("{base}/webhooks/dialpad/{app_id}");
    let res = client()
        .post(&url)
        .header("content-type", "application/jwt")
        .body(token)
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert_eq!(status, 200, "POST {url}: {body}");
        }
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// Creates an app; returns `(app_id, api_key)`.
pub async fn create_app(base: &str, name: &str) -> (String, String) {
    let (status, v) = internal_post(base, "/internal/apps", json!({ "name": name })).await;
    assert_eq!(status, 201, "create app: {v}");
    let id = v["app_id"].as_str().unwrap_or_default().to_string();
    let key = v["api_key"].as_str().unwrap_or_default().to_string();
    assert!(!id.is_empty() && !key.is_empty(), "create app: {v}");
    (id, key)
}

/// Maps a Dialpad user to a CRM user of `app_id`.
pub async fn map_user(base: &str, app_id: &str, dialpad_user_id: u64, crm_user_id: &str) {
    let (status, v) = internal_post(
        base,
        &format!("/internal/apps/{app_id}/users/map"),
        json!({ "dialpad_user_id": dialpad_user_id, "crm_user_id": crm_user_id }),
    )
    .await;
    assert!(status == 200 || status == 201, "map user: {status} {v}");
}

/// Rotates the app's key through the internal API; returns the new key.
pub async fn rotate_key(base: &str, app_id: &str) -> String {
    let (status, v) =
        internal_post(base, &format!("/internal/apps/{app_id}/api-key"), json!({})).await;
    assert!(status == 200 || status == 201, "rotate: {status} {v}");
    let key = v["api_key"].as_str().unwrap_or_default().to_string();
    assert!(!key.is_empty(), "rotate: {v}");
    key
}

/// Revokes the app's key through the internal API.
pub async fn revoke_key(base: &str, app_id: &str) {
    let (status, v) = internal_post(
        base,
        &format!("/internal/apps/{app_id}/api-key/revoke"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "revoke: {v}");
}

/// A Dialpad fixture event (`fixtures/dialpad/events/<name>`).
pub fn fixture_event(name: &str) -> Value {
    crate::fixture(name)
}

/// The event files of a lifecycle of `fixtures/dialpad/events/lifecycles.json`.
pub fn lifecycle(name: &str) -> Vec<String> {
    let all = crate::fixture("lifecycles.json");
    let seq = all["sequences"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name));
    match seq.and_then(|s| s["events"].as_array()) {
        Some(events) => events
            .iter()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect(),
        None => panic!("no lifecycle {name:?} in lifecycles.json"),
    }
}

/// Which database a [`Cluster`] shares.
#[derive(Clone, Debug)]
pub enum SharedDb {
    /// One SQLite file in the cluster's temporary directory.
    Sqlite,
    /// A fresh schema `cti_rt_<random>` at this PostgreSQL URL, dropped with the cluster.
    Postgres(String),
}

/// One `cti-server serve` process of a [`Cluster`], killed on drop.
pub struct Instance {
    child: Option<Child>,
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Port.
    pub port: u16,
    log: PathBuf,
}

impl Instance {
    /// The process's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Several `cti-server` processes sharing one database. Instances are stopped before the
/// PostgreSQL schema is dropped.
pub struct Cluster {
    /// The running instances.
    pub instances: Vec<Instance>,
    bin: PathBuf,
    database_url: String,
    schema: Option<String>,
    extra_env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` instances of `bin serve` on one database, each on its own port, with the
    /// suite's environment (spec §10.1, raised rate limits) plus `env`; waits until each
    /// answers `/health`. Instances start one after the other so migrations never race.
    pub async fn start(bin: &str, db: SharedDb, n: usize, env: &[(&str, &str)]) -> Cluster {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let (database_url, schema) = match db {
            SharedDb::Sqlite => (
                format!("sqlite://{}", dir.path().join("cti.db").display()),
                None,
            ),
            SharedDb::Postgres(url) => (
                url,
                Some(format!("cti_rt_{}", uuid::Uuid::new_v4().simple())),
            ),
        };
        let mut cluster = Cluster {
            instances: Vec::new(),
            bin: PathBuf::from(bin),
            database_url,
            schema,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        for i in 0..n {
            let instance = cluster.spawn(i).await;
            cluster.instances.push(instance);
        }
        cluster
    }

    /// Instance `i`.
    pub fn at(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    /// The environment of a process on the shared database (`PORT` = `port`).
    fn env(&self, port: u16) -> Vec<(String, String)> {
        let mut env = base_env(port, &self.database_url, true);
        if let Some(s) = &self.schema {
            env.push(("DATABASE_SCHEMA".into(), s.clone()));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }

    async fn spawn(&self, index: usize) -> Instance {
        let port = free_port();
        let log = self.dir.path().join(format!("instance-{index}.stderr.log"));
        let err = match std::fs::File::create(&log) {
            Ok(f) => f,
            Err(e) => panic!("log file {}: {e}", log.display()),
        };
        let child = match command(&self.bin, &self.env(port))
            .arg("serve")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot start {}: {e}", self.bin.display()),
        };
        let mut instance = Instance {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        wait_ready(&mut instance).await;
        instance
    }

    /// Runs `cti-server <args>` as a separate process on the shared database (admin CLI) and
    /// returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = command(&self.bin, &self.env(0))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run {} {args:?}: {e}", self.bin.display()),
        }
    }

    /// Like [`Cluster::cli`], asserting success.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cti-server {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Directory of the shared SQLite file and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.instances.clear();
        if let Some(schema) = self.schema.take() {
            crate::drop_schemas(&self.database_url, &[&schema]);
        }
    }
}

async fn wait_ready(instance: &mut Instance) {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = instance
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "cti-server exited early ({status}); stderr:\n{}",
                instance.stderr()
            );
        }
        if http
            .get(format!("{}/health", instance.url))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "cti-server did not answer /health within 30 s; stderr:\n{}",
                instance.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
