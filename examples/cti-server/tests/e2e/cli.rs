//! `cti-server serve --dev` (not a spec §10 scenario).

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
