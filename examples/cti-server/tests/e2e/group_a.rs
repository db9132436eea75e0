//! Group A — root, health, metrics, routing (spec §10.2).

use crate::*;

/// T01–T04 on one server.
async fn root_health_metrics_routing(opts: ServerOptions) {
    let s = start(opts).await;
    // T01
    let r = s.get("/", &[]).await;
    assert_eq!(
        r.pair(),
        (200, json!({"message": "CTI Server is running"})),
        "T01"
    );
    // T02
    let r = s.get("/health", &[]).await;
    assert_eq!(r.status, 200, "T02: {}", r.text);
    assert_eq!(r.body["status"], "healthy", "T02");
    assert!(is_rfc3339(&r.body["timestamp"]), "T02: {}", r.text);
    assert!(
        r.body["uptime"].as_f64().is_some_and(|u| u >= 0.0),
        "T02: {}",
        r.text
    );
    assert_eq!(r.body["environment"], "sandbox", "T02");
    assert_eq!(r.body["port"], json!(s.port), "T02");
    // T03
    let r = s.get("/metrics", &[]).await;
    assert_eq!(r.status, 200, "T03: {}", r.text);
    for k in ["heap_used_mb", "heap_total_mb", "external_mb"] {
        assert!(r.body["memory"][k].is_u64(), "T03 {k}: {}", r.text);
    }
    assert!(r.body["uptime_seconds"].is_number(), "T03: {}", r.text);
    assert!(is_rfc3339(&r.body["timestamp"]), "T03: {}", r.text);
    // T04
    let r = s.get("/does-not-exist", &[]).await;
    assert_eq!(r.pair(), (404, json!({"error": "Not Found"})), "T04");
}
crate::on_both_backends!(
    t01_t04_root_health_metrics_routing,
    super::root_health_metrics_routing
);

/// T05: production mode redirects plain HTTP to `PUBLIC_BASE_URL` and sets HSTS over HTTPS.
async fn production_redirect(opts: ServerOptions) {
    let s = start(opts.with_env("NODE_ENV", "production").with_env(
        "DIALPAD_PROD_REDIRECT_URI",
        "https://cti.test/auth/dialpad/callback",
    ))
    .await;
    let r = s.get("/health", &[("host", "evil.example")]).await;
    assert_eq!(r.status, 302, "T05: {}", r.text);
    assert!(
        r.header("location").starts_with("https://cti.test/"),
        "T05 location: {:?}",
        r.headers.get("location")
    );
    let r = s
        .get(
            "/health",
            &[("host", "evil.example"), ("x-forwarded-proto", "https")],
        )
        .await;
    assert_eq!(r.status, 200, "T05: {}", r.text);
    assert_eq!(
        r.header("strict-transport-security"),
        "max-age=31536000; includeSubDomains",
        "T05"
    );
}
crate::on_both_backends!(t05_production_https_redirect, super::production_redirect);

/// Runs `cti-server serve` with `env` (and the database of `opts`); returns its exit code and
/// stderr. The process must exit on its own within 30 s.
async fn boot(opts: &ServerOptions, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let database_url = match &opts.backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("cti.db").display()),
        Backend::Postgres { url, .. } => url.clone(),
    };
    let mut vars = vec![
        ("DATABASE_URL".to_string(), database_url),
        ("PORT".to_string(), free_port().to_string()),
        // a schema that is never created: configuration errors come before the database
        (
            "DATABASE_SCHEMA".to_string(),
            format!("cti_e2e_boot_{}", uuid::Uuid::new_v4().simple()),
        ),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut cmd = tokio::process::Command::from(command(std::path::Path::new(BIN), &vars));
    cmd.arg("serve").current_dir(dir.path()).kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output()).await;
    match out {
        Ok(Ok(o)) => (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        other => panic!("cti-server did not exit at boot: {other:?}"),
    }
}

/// T06: production mode with a plain-HTTP `DIALPAD_PROD_REDIRECT_URI` exits non-zero at boot.
async fn production_http_redirect_uri(opts: ServerOptions) {
    let (code, stderr) = boot(
        &opts,
        &[
            ("NODE_ENV", "production"),
            ("INTERNAL_API_SECRET", S),
            ("DIALPAD_WEBHOOK_SECRET", W),
            ("PUBLIC_BASE_URL", "https://cti.test"),
            ("DIALPAD_PROD_REDIRECT_URI", "http://cti.test/cb"),
        ],
    )
    .await;
    assert!(code.is_some_and(|c| c != 0), "T06 exit {code:?}");
    assert!(
        stderr.contains("DIALPAD_PROD_REDIRECT_URI"),
        "T06: {stderr}"
    );
}
crate::on_both_backends!(
    t06_production_http_redirect_uri_exits,
    super::production_http_redirect_uri
);

/// T07: `INTERNAL_API_SECRET` unset (or too short) exits non-zero naming the variable.
async fn missing_internal_secret(opts: ServerOptions) {
    for env in [
        vec![("DIALPAD_WEBHOOK_SECRET", W)],
        vec![
            ("DIALPAD_WEBHOOK_SECRET", W),
            ("INTERNAL_API_SECRET", "short"),
        ],
    ] {
        let (code, stderr) = boot(&opts, &env).await;
        assert_eq!(code, Some(1), "T07 {env:?}: {stderr}");
        assert!(stderr.contains("INTERNAL_API_SECRET"), "T07: {stderr}");
    }
}
crate::on_both_backends!(
    t07_missing_internal_secret_exits,
    super::missing_internal_secret
);
