//! End-to-end scenarios of spec §10 against the real `cti-server` binary, on SQLite and (when
//! reachable) PostgreSQL. Test names carry the scenario ids.

use std::time::Duration;

use cti_e2e::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cti-server");

/// Defines `<name>_sqlite` and `<name>_postgres` running the same scenario.
macro_rules! scenario {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let s = Server::start(BIN, ServerOptions::sqlite()).await;
                $body(&s).await;
            }
            #[tokio::test]
            async fn postgres() {
                let Some(url) = postgres_url().await else {
                    return;
                };
                let s = Server::start(BIN, ServerOptions::postgres(url)).await;
                $body(&s).await;
            }
        }
    };
}

async fn root(s: &Server) {
    let (st, v) = get_json(&s.at("/"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v, json!({"message": "CTI Server is running"}));
}
scenario!(t01_root, root);

async fn health(s: &Server) {
    let (st, v) = get_json(&s.at("/health"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["environment"], "sandbox");
    assert!(v["uptime"].as_f64().is_some_and(|u| u >= 0.0), "{v}");
    assert_eq!(v["port"].as_u64(), Some(u64::from(s.port)));
}
scenario!(t02_health, health);

async fn not_found(s: &Server) {
    let (st, v) = get_json(&s.at("/does-not-exist"), None).await;
    assert_eq!(st, 404);
    assert_eq!(v, json!({"error": "Not Found"}));
}
scenario!(t04_not_found, not_found);

async fn create_app(s: &Server) {
    let (id, key) = s.create_app("  Tenant A  ").await;
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert!(key.starts_with("raw_") && key.len() == 68, "{key}");
    assert_eq!(s.calls_total(&key).await, 0);
}
scenario!(t13_create_app, create_app);

async fn rotate(s: &Server) {
    let (id, old) = s.create_app("Tenant D").await;
    let r = client()
        .post(s.at(&format!("/internal/apps/{id}/api-key")))
        .bearer_auth(S)
        .send()
        .await;
    let (st, v) = match r {
        Ok(r) => (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        ),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(st, 200, "{v}");
    let new = v["api_key"].as_str().unwrap_or_default().to_string();
    assert!(new.starts_with("raw_") && new != old);
    let (st_old, _) = get_json(&s.at("/api/calls"), Some(&old)).await;
    assert_eq!(st_old, 401);
    let (st_new, _) = get_json(&s.at("/api/calls"), Some(&new)).await;
    assert_eq!(st_new, 200);
}
scenario!(t19_rotate_key, rotate);

async fn api_auth(s: &Server) {
    let (st, _) = get_json(&s.at("/api/calls"), None).await;
    assert_eq!(st, 401);
    let (st, _) = get_json(&s.at("/api/calls"), Some("raw_0000")).await;
    assert_eq!(st, 401);
}
scenario!(t27_t28_api_auth, api_auth);

/// Webhook rejections: each answers the expected status and leaves `GET /api/calls` unchanged.
async fn webhook_rejections(s: &Server) {
    let (id, key) = s.create_app("Tenant A").await;
    let before = s.calls_total(&key).await;
    let url = s.at(&format!("/webhooks/dialpad/{id}"));
    // forged signature
    let forged = cti_core::verify::sign_jwt_hs256(&call(9001, "ringing", json!({})), b"not-W");
    assert_eq!(
        post_raw(&url, "application/jwt", forged.into_bytes(), &[])
            .await
            .0,
        401
    );
    // alg: none
    let none = jwt_alg_none(&call(9002, "ringing", json!({})));
    assert_eq!(
        post_raw(&url, "application/jwt", none.into_bytes(), &[])
            .await
            .0,
        401
    );
    // expired
    let expired = jwt(&call(9003, "ringing", json!({"exp": 1_000_000_000})));
    assert_eq!(
        post_raw(&url, "application/jwt", expired.into_bytes(), &[])
            .await
            .0,
        401
    );
    // iat too old
    let old = jwt(&call(9004, "ringing", json!({"iat": 1_000_000_000})));
    assert_eq!(
        post_raw(&url, "application/jwt", old.into_bytes(), &[])
            .await
            .0,
        401
    );
    // wrong media type
    let token = jwt(&call(9005, "ringing", json!({})));
    assert_eq!(
        post_raw(&url, "text/plain", token.into_bytes(), &[])
            .await
            .0,
        401
    );
    // oversized
    let big = vec![b'a'; 2 * 1024 * 1024];
    assert_eq!(post_raw(&url, "application/jwt", big, &[]).await.0, 413);
    // malformed JSON on the HMAC path
    let body = b"{not json".to_vec();
    let sig = sign(&body);
    let (st, _) = post_raw(
        &s.at("/webhooks/dialpad"),
        "application/json",
        body,
        &[("x-dialpad-signature", &sig), ("x-app-api-key", &key)],
    )
    .await;
    assert_eq!(st, 400);
    // unsigned JSON
    let body = call(9006, "ringing", json!({})).to_string().into_bytes();
    assert_eq!(
        post_raw(
            &s.at("/webhooks/dialpad"),
            "application/json",
            body,
            &[("x-app-api-key", &key)]
        )
        .await
        .0,
        401
    );
    // unknown tenant
    let other = uuid::Uuid::new_v4();
    let token = jwt(&call(9007, "ringing", json!({})));
    assert_eq!(s.post_jwt(&other.to_string(), &token).await.0, 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.calls_total(&key).await,
        before,
        "a rejected webhook changed the calls"
    );
}
scenario!(t32_t36_webhook_rejections, webhook_rejections);

async fn json_lifecycle(s: &Server) {
    let (_id, key) = s.create_app("Tenant A").await;
    for state in ["ringing", "connected", "hangup"] {
        let body = call(7001, state, json!({})).to_string().into_bytes();
        let sig = sign(&body);
        let (st, v) = post_raw(
            &s.at("/webhooks/dialpad"),
            "application/json",
            body,
            &[("x-dialpad-signature", &sig), ("x-app-api-key", &key)],
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["received"], true);
    }
    let ok = settle(|| async {
        let (_, v) = get_json(&s.at("/api/calls"), Some(&key)).await;
        v["data"].as_array().is_some_and(|d| {
            d.iter()
                .any(|c| c["dialpad_call_id"] == "7001" && c["status"] == "ended")
        })
    })
    .await;
    assert!(ok, "call 7001 never reached ended");
}
scenario!(t37_t38_call_lifecycle, json_lifecycle);

async fn jwt_lifecycle(s: &Server) {
    let (id, key) = s.create_app("Tenant A").await;
    let (_b_id, kb) = s.create_app("Tenant B").await;
    let names = [
        "call_inbound_01_preanswer.json",
        "call_inbound_02_ringing.json",
        "call_inbound_03_connected.json",
        "call_inbound_04_hangup.json",
    ];
    let mut first = String::new();
    for n in names {
        let token = jwt(&fixture(n));
        if first.is_empty() {
            first = token.clone();
        }
        let (st, v) = s.post_jwt(&id, &token).await;
        assert_eq!(st, 200, "{n}: {v}");
        assert_eq!(v["received"], true);
    }
    // replay: duplicate
    let (st, v) = s.post_jwt(&id, &first).await;
    assert_eq!(st, 200);
    assert_eq!(v["duplicate"], true, "{v}");
    let mut call_id = String::new();
    let ok = settle(|| {
        let key = key.clone();
        async move {
            let (_, v) = get_json(&s.at("/api/calls"), Some(&key)).await;
            v["data"].as_array().is_some_and(|d| {
                d.iter()
                    .any(|c| c["dialpad_call_id"] == "5744118934454272" && c["status"] == "ended")
            })
        }
    })
    .await;
    assert!(ok, "fixture call never reached ended");
    let (_, v) = get_json(&s.at("/api/calls"), Some(&key)).await;
    assert_eq!(v["pagination"]["total"], 1, "{v}");
    if let Some(id) = v["data"][0]["id"].as_str() {
        call_id = id.to_string();
    }
    // cross-tenant: B cannot read A's call
    let (st, _) = get_json(&s.at(&format!("/api/calls/{call_id}")), Some(&kb)).await;
    assert_eq!(st, 404);
    assert_eq!(s.calls_total(&kb).await, 0);
    let (st, _) = get_json(&s.at(&format!("/api/calls/{call_id}")), Some(&key)).await;
    assert_eq!(st, 200);
}
scenario!(t55_t56_jwt_lifecycle, jwt_lifecycle);

async fn pagination(s: &Server) {
    let (id, key) = s.create_app("Tenant F").await;
    for n in 0..5u64 {
        let (st, _) = s
            .post_jwt(&id, &jwt(&call(8000 + n, "ringing", json!({}))))
            .await;
        assert_eq!(st, 200);
    }
    assert!(
        settle(|| {
            let k = key.clone();
            async move { s.calls_total(&k).await == 5 }
        })
        .await
    );
    let (_, v) = get_json(&s.at("/api/calls?limit=2&offset=0"), Some(&key)).await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["pagination"]["has_more"], true);
    let (_, v) = get_json(&s.at("/api/calls?limit=2&offset=4"), Some(&key)).await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["pagination"]["has_more"], false);
}
scenario!(t81_pagination, pagination);

async fn sigterm_drains(s: &Server) {
    let _ = s;
}

#[tokio::test]
async fn t133_sigterm_drains() {
    let mut s = Server::start(BIN, ServerOptions::sqlite()).await;
    sigterm_drains(&s).await;
    s.sigterm();
    let status = s.wait_exit(Duration::from_secs(25)).await;
    assert!(
        status.is_some_and(|st| st.success()),
        "exit: {status:?}; stderr:\n{}",
        s.stderr()
    );
}

#[test]
fn t07_missing_internal_secret_exits() {
    let env = vec![
        ("DATABASE_URL".to_string(), "sqlite::memory:".to_string()),
        ("DIALPAD_WEBHOOK_SECRET".to_string(), W.to_string()),
        ("PORT".to_string(), free_port().to_string()),
    ];
    let out = command(std::path::Path::new(BIN), &env)
        .arg("serve")
        .output();
    let Ok(out) = out else {
        panic!("cannot run {BIN}")
    };
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("INTERNAL_API_SECRET"));
}

#[test]
fn t07_short_internal_secret_exits() {
    let env = vec![
        ("DATABASE_URL".to_string(), "sqlite::memory:".to_string()),
        ("INTERNAL_API_SECRET".to_string(), "short".to_string()),
        ("DIALPAD_WEBHOOK_SECRET".to_string(), W.to_string()),
    ];
    let out = command(std::path::Path::new(BIN), &env).output();
    let Ok(out) = out else {
        panic!("cannot run {BIN}")
    };
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("INTERNAL_API_SECRET"));
}

#[test]
fn t06_production_http_redirect_exits() {
    let env = vec![
        ("NODE_ENV".to_string(), "production".to_string()),
        ("DATABASE_URL".to_string(), "sqlite::memory:".to_string()),
        ("INTERNAL_API_SECRET".to_string(), S.to_string()),
        ("DIALPAD_WEBHOOK_SECRET".to_string(), W.to_string()),
        (
            "PUBLIC_BASE_URL".to_string(),
            "https://cti.test".to_string(),
        ),
        (
            "DIALPAD_PROD_REDIRECT_URI".to_string(),
            "http://cti.test/cb".to_string(),
        ),
    ];
    let out = command(std::path::Path::new(BIN), &env)
        .arg("serve")
        .output();
    let Ok(out) = out else {
        panic!("cannot run {BIN}")
    };
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DIALPAD_PROD_REDIRECT_URI"));
}

#[test]
fn dev_mode_refused_in_production() {
    let env = vec![("NODE_ENV".to_string(), "production".to_string())];
    let out = command(std::path::Path::new(BIN), &env)
        .args(["serve", "--dev"])
        .output();
    let Ok(out) = out else {
        panic!("cannot run {BIN}")
    };
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn migrate_from_original_not_available() {
    let env = vec![("DATABASE_URL".to_string(), "sqlite::memory:".to_string())];
    let out = command(std::path::Path::new(BIN), &env)
        .args(["migrate", "--from-original"])
        .output();
    let Ok(out) = out else {
        panic!("cannot run {BIN}")
    };
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not available"));
}

#[tokio::test]
async fn dev_mode_generates_and_reuses_secrets() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("dev.db");
    let port = free_port();
    let env = vec![
        (
            "DATABASE_URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
        ("PORT".to_string(), port.to_string()),
    ];
    let mut child = command(std::path::Path::new(BIN), &env)
        .args(["serve", "--dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets = dir.path().join("dev.db.dev-secrets");
    let ok = settle(|| {
        let p = secrets.clone();
        async move { p.exists() }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "secrets file not written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secrets)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
    }
    let first = std::fs::read_to_string(&secrets).unwrap_or_default();
    assert!(first.contains("INTERNAL_API_SECRET") && first.contains("DATA_ENCRYPTION_KEY"));
    // the admin CLI works on the dev database with the same pepper
    let out = command(std::path::Path::new(BIN), &env)
        .args(["apps", "create", "Dev App"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = std::fs::read_to_string(&secrets).unwrap_or_default();
    assert_eq!(first, again);
}

/// T132: with PostgreSQL behind a TCP proxy that is then stopped, `/health` answers 503 and a
/// valid webhook is never answered 200.
#[tokio::test]
async fn t132_database_down_health() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let Some(proxy) = TcpProxy::start(&url).await else {
        return;
    };
    let s = Server::start(BIN, ServerOptions::postgres(proxy.url.clone())).await;
    let (id, _key) = s.create_app("Tenant A").await;
    let (st, _) = get_json(&s.at("/health"), None).await;
    assert_eq!(st, 200);
    proxy.stop();
    let down = settle(|| async { get_json(&s.at("/health"), None).await.0 == 503 }).await;
    assert!(down, "health never reported 503");
    let (_, v) = get_json(&s.at("/health"), None).await;
    assert_eq!(v["status"], "unhealthy");
    let (st, _) = s
        .post_jwt(&id, &jwt(&call(9100, "ringing", json!({}))))
        .await;
    assert!(st >= 500, "webhook with the database down answered {st}");
}

/// A TCP proxy in front of PostgreSQL that can be cut.
struct TcpProxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
    conns: std::sync::Arc<parking_lot_free::Conns>,
}

mod parking_lot_free {
    /// Live proxied connection tasks.
    #[derive(Default)]
    pub struct Conns(pub std::sync::Mutex<Vec<tokio::task::AbortHandle>>);
}

impl TcpProxy {
    async fn start(pg_url: &str) -> Option<TcpProxy> {
        let parsed = reqwest::Url::parse(pg_url).ok()?;
        let host = parsed.host_str()?.to_string();
        let port = parsed.port().unwrap_or(5432);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let local = listener.local_addr().ok()?;
        let mut proxied = parsed.clone();
        proxied.set_host(Some("127.0.0.1")).ok()?;
        proxied.set_port(Some(local.port())).ok()?;
        let conns = std::sync::Arc::new(parking_lot_free::Conns::default());
        let c2 = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = format!("{host}:{port}");
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                if let Ok(mut v) = c2.0.lock() {
                    v.push(h.abort_handle());
                }
            }
        });
        Some(TcpProxy {
            url: proxied.to_string(),
            task,
            conns,
        })
    }

    fn stop(&self) {
        self.task.abort();
        if let Ok(v) = self.conns.0.lock() {
            for h in v.iter() {
                h.abort();
            }
        }
    }
}
