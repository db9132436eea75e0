//! `cti-server serve --dev` (not a spec §10 scenario), on SQLite and on PostgreSQL.

use crate::*;

#[test]
fn dev_mode_refused_in_production() {
    let env = vec![("NODE_ENV".to_string(), "production".to_string())];
    let out = command(std::path::Path::new(BIN), &env)
        .args(["serve", "--dev"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn dev_mode_generates_and_reuses_secrets() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("dev.db");
    let env = vec![
        (
            "DATABASE_URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
        ("PORT".to_string(), free_port().to_string()),
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

/// `serve --dev` on PostgreSQL keeps its secrets in `./cti.db.dev-secrets`; admin commands run
/// from the same directory use them, so the key `apps create` prints opens the running
/// server's API (with another pepper its lookup hash would match nothing).
#[tokio::test]
async fn dev_mode_on_postgres_shares_its_secrets_with_the_cli() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let schema = PgSchema::new(&url);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let env = vec![
        ("DATABASE_URL".to_string(), url.clone()),
        ("DATABASE_SCHEMA".to_string(), schema.name.clone()),
        ("PORT".to_string(), port.to_string()),
    ];
    let mut child = command(std::path::Path::new(BIN), &env)
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let http = client();
    let health = format!("http://127.0.0.1:{port}/health");
    let up = settle(|| {
        let (http, health) = (http.clone(), health.clone());
        async move {
            http.get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    let created = command(std::path::Path::new(BIN), &env)
        .args(["apps", "create", "Dev App"])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let key = serde_json::from_slice::<Value>(&created.stdout)
        .ok()
        .and_then(|v| v["api_key"].as_str().map(str::to_string));
    let status = match &key {
        Some(key) => http
            .get(format!("http://127.0.0.1:{port}/api/calls"))
            .header("x-app-api-key", key)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        None => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the dev server did not answer /health");
    assert!(
        dir.path().join("cti.db.dev-secrets").exists(),
        "secrets kept in the working directory"
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert_eq!(
        status,
        Some(200),
        "the CLI's key opens the dev server's API"
    );
}
