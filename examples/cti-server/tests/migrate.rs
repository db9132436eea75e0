//! `cti-server migrate --from-original` end to end: an original Node-server database (spec
//! §7.1 tables in their own PostgreSQL schema) is imported by the binary, then the server
//! starts on the imported schema and the original's bcrypt API key reads the original calls
//! (spec §9.7). On SQLite the command refuses with a clear message.

use std::path::Path;

use cti_e2e::migrate::OriginalDb;
use cti_e2e::{Server, ServerOptions, base_env, client, command, postgres_url};
use serde_json::Value;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_cti-server");
/// A key the original server issued; it stored only its bcrypt hash.
const LEGACY_KEY: &str = "raw_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Runs `cti-server migrate --from-original` on `url`; returns exit code, stdout JSON, stderr.
fn migrate(url: &str, db: &OriginalDb) -> (Option<i32>, Value, String) {
    let mut env = base_env(0, url, false);
    env.push(("DATABASE_SCHEMA".into(), db.target.clone()));
    let out = command(Path::new(BIN), &env)
        .args(["migrate", "--from-original", "--source-schema", &db.source])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code(), json, stderr)
}

async fn get(url: &str, key: &str) -> (u16, Value) {
    let r = client()
        .get(url)
        .header("x-app-api-key", key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_legacy_key_reads_the_original_calls() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let db = OriginalDb::create(&url).await;
    let (app, call) = (Uuid::new_v4(), Uuid::new_v4());
    let hash = bcrypt::hash(LEGACY_KEY, 4).unwrap_or_else(|e| panic!("bcrypt: {e}"));
    db.insert_app(app, "Acme", &hash).await;
    db.insert_call(call, app, 1001, "completed").await;

    let (code, report, stderr) = migrate(&url, &db);
    assert_eq!(code, Some(0), "migrate failed: {report}\n{stderr}");
    assert_eq!(report["target_schema"], db.target.as_str());
    let imported = &report["imported"];
    assert_eq!(
        (
            &imported["apps"],
            &imported["legacy_keys"],
            &imported["calls"],
            &imported["calls_status_remapped"]
        ),
        (
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        ),
        "{report}"
    );
    // A second run copies nothing new.
    let (code, again, _) = migrate(&url, &db);
    assert_eq!(code, Some(0));
    assert_eq!(again["imported"]["apps"], 0, "{again}");
    assert_eq!(again["imported"]["calls"], 0, "{again}");

    let server = Server::start(
        BIN,
        ServerOptions::postgres(&url).with_env("DATABASE_SCHEMA", &db.target),
    )
    .await;
    let (status, body) = get(&server.at("/api/calls"), LEGACY_KEY).await;
    assert_eq!(status, 200, "legacy key refused: {body}");
    assert_eq!(body["pagination"]["total"], 1, "{body}");
    let c = &body["data"][0];
    assert_eq!(c["id"], call.to_string());
    assert_eq!(c["dialpad_call_id"], "1001");
    assert_eq!(c["status"], "ended"); // `completed` is not one of the six statuses
    assert_eq!(c["duration_seconds"], 120);
    // Still accepted after the first use moved it to the lookup hash; a wrong key is not.
    let (status, _) = get(&server.at("/api/calls/active"), LEGACY_KEY).await;
    assert_eq!(status, 200);
    let (status, _) = get(&server.at("/api/calls"), &format!("{LEGACY_KEY}0")).await;
    assert_eq!(status, 401);
    drop(server); // before `db` drops the schemas
}

#[test]
fn sqlite_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("cti.db").display());
    let out = command(Path::new(BIN), &base_env(0, &url, false))
        .args(["migrate", "--from-original"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
}
