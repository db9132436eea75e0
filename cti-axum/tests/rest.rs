//! Acceptance scenarios of spec §10 against the REST router (memory store, in-process).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use cti_axum::{HttpConfig, RateLimits};
use cti_core::inbox::{ProcessorConfig, Running};
use cti_core::keys::hint;
use cti_core::secrets::Secret;
use cti_core::store::MemoryStore;
use cti_core::verify::sign_hmac_b64;
use cti_core::{Cti, CtiConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

const S: &str = "SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS";
const IA: (&str, &str) = ("authorization", "Bearer SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS");

struct H {
    app: Router,
    _run: Option<Running>,
}

fn cti() -> Cti {
    Cti::builder()
        .store(Arc::new(MemoryStore::new()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            processor: ProcessorConfig {
                poll_interval: Duration::from_millis(20),
                ..Default::default()
            },
            ..Default::default()
        })
        .build()
}

fn harness_with(http: HttpConfig) -> H {
    let cti = cti();
    let run = cti.start();
    H {
        app: cti_axum::router(cti, http),
        _run: Some(run),
    }
}

fn harness() -> H {
    harness_with(HttpConfig::new(S))
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl H {
    async fn req(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(body.map_or_else(Body::empty, |s| Body::from(s.to_string())))
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }
    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Resp {
        self.req("GET", uri, headers, None).await
    }
    async fn ia(&self, method: &str, uri: &str, body: Option<Value>) -> Resp {
        let s = body.map(|b| b.to_string());
        let hs: Vec<(&str, &str)> = if s.is_some() {
            vec![IA, ("content-type", "application/json")]
        } else {
            vec![IA]
        };
        self.req(method, uri, &hs, s.as_deref()).await
    }
    async fn create(&self, name: &str) -> (String, String) {
        let r = self
            .ia("POST", "/internal/apps", Some(json!({ "name": name })))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (
            r.body["app_id"].as_str().expect("id").into(),
            r.body["api_key"].as_str().expect("key").into(),
        )
    }
    async fn hook(&self, key: &str, body: Value) -> Resp {
        let s = body.to_string();
        let sig = sign_hmac_b64(s.as_bytes(), b"W");
        let hs = [
            ("content-type", "application/json"),
            ("x-dialpad-signature", sig.as_str()),
            ("x-app-api-key", key),
        ];
        self.req("POST", "/webhooks/dialpad", &hs, Some(&s)).await
    }
    async fn api(&self, uri: &str, key: &str) -> Resp {
        self.get(uri, &[("x-app-api-key", key)]).await
    }
    /// Polls `uri` until `cond` holds (10 s max).
    async fn settle(&self, uri: &str, key: &str, cond: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let r = self.api(uri, key).await;
            if r.status == StatusCode::OK && cond(&r.body) {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition never held on {uri}");
    }
    async fn settle_ia(&self, uri: &str, cond: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let r = self.ia("GET", uri, None).await;
            if r.status == StatusCode::OK && cond(&r.body) {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition never held on {uri}");
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default().to_string())
        .collect()
}

const CALL_KEYS: [&str; 12] = [
    "id",
    "dialpad_call_id",
    "direction",
    "from_number",
    "to_number",
    "status",
    "dialpad_user_id",
    "started_at",
    "ended_at",
    "duration_seconds",
    "recording_url",
    "created_at",
];

#[tokio::test]
async fn group_a_root_health_metrics_routing() {
    let h = harness();
    let r = h.get("/", &[]).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!({"message":"CTI Server is running"}))
    );
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let r = h.get("/", &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.headers["x-request-id"], "abc-123");

    let r = h.get("/health", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "healthy");
    assert!(is_rfc3339(&r.body["timestamp"]));
    assert!(r.body["uptime"].as_f64().is_some_and(|u| u >= 0.0));
    assert_eq!(r.body["environment"], "sandbox");
    assert_eq!(r.body["port"], 4000);
    assert_eq!(r.body["database"], "ok");

    let r = h.get("/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    for k in ["heap_used_mb", "heap_total_mb", "external_mb"] {
        assert!(r.body["memory"][k].is_u64(), "{k}: {}", r.text);
    }
    assert!(r.body["uptime_seconds"].is_number());
    assert!(is_rfc3339(&r.body["timestamp"]));
    assert_eq!(r.body["websocket"]["connections_total"], 0);
    assert_eq!(r.body["db"]["backend"], "memory");
    assert!(r.body["events"]["dead_lettered"].is_u64());

    let r = h.get("/metrics/prometheus", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("cti_events_dead_lettered 0"), "{}", r.text);

    let r = h.get("/does-not-exist", &[]).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"Not Found"}))
    );
    let r = h.req("DELETE", "/health", &[], None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body, json!({"error":"Method Not Allowed"}));
}

#[tokio::test]
async fn metrics_auth_and_production_redirect() {
    let mut cfg = HttpConfig::new(S);
    cfg.metrics_require_auth = true;
    cfg.production = true;
    cfg.public_base_url = Some("https://cti.test".into());
    let h = harness_with(cfg);
    // T05
    let r = h.get("/health", &[("host", "evil.example")]).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "https://cti.test/health");
    let https = ("x-forwarded-proto", "https");
    let r = h.get("/health", &[https]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let r = h.get("/metrics", &[https]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h.get("/metrics", &[https, IA]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn group_b_internal_auth() {
    let h = harness();
    let (a, _) = h.create("Tenant A").await;
    let uri = format!("/internal/apps/{a}/api-key/status");
    let t08 = json!({"error":"Unauthorized","message":"Missing or invalid Authorization header. Use: Authorization: Bearer <secret>"});
    let r = h.get(&uri, &[]).await;
    assert_eq!((r.status, r.body), (StatusCode::UNAUTHORIZED, t08.clone()));
    let r = h
        .get(&uri, &[("authorization", "Basic dXNlcjpwYXNz")])
        .await;
    assert_eq!((r.status, r.body), (StatusCode::UNAUTHORIZED, t08.clone()));
    let r = h
        .get(
            &uri,
            &[("authorization", "bearer SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h
        .get(&uri, &[("authorization", "Bearer wrong-secret")])
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::FORBIDDEN,
            json!({"error":"Forbidden","message":"Invalid authentication token"})
        )
    );
    let r = h.get(&uri, &[IA]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["ratelimit-policy"], "100;w=60");
    // T12
    let r = h.get("/internal/anything-unknown", &[]).await;
    assert_eq!((r.status, r.body), (StatusCode::UNAUTHORIZED, t08));
    let r = h.get("/internal/anything-unknown", &[IA]).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"Not Found"}))
    );
}

#[tokio::test]
async fn group_c_apps_and_keys() {
    let h = harness();
    // T13
    let r = h
        .ia(
            "POST",
            "/internal/apps",
            Some(json!({"name":"  Tenant D  "})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        keys(&r.body),
        sorted(&[
            "success",
            "message",
            "app_id",
            "app_name",
            "api_key",
            "created_at",
            "warning",
            "usage"
        ])
    );
    assert_eq!(r.body["app_name"], "Tenant D");
    assert_eq!(
        r.body["message"],
        "App created successfully. Store the API key securely - it CANNOT be retrieved again."
    );
    assert_eq!(
        r.body["warning"],
        "This is the ONLY time this API key will be displayed. Store it immediately in a secure location."
    );
    assert_eq!(
        r.body["usage"],
        "Include this app_id for account identification and the api_key in the 'x-app-api-key' header when making API requests"
    );
    let d = r.body["app_id"].as_str().expect("id").to_string();
    let kd = r.body["api_key"].as_str().expect("key").to_string();
    assert!(uuid::Uuid::parse_str(&d).expect("uuid").get_version_num() == 4);
    assert!(
        kd.starts_with("raw_") && kd.len() == 68 && kd[4..].bytes().all(|b| b.is_ascii_hexdigit())
    );
    assert!(is_rfc3339(&r.body["created_at"]));

    // T14/T15
    let t14 = json!({"error":"Invalid request","message":"name is required and must be a non-empty string"});
    for body in [json!({"name":"   "}), json!({"name":123}), json!([1])] {
        let r = h.ia("POST", "/internal/apps", Some(body)).await;
        assert_eq!((r.status, r.body), (StatusCode::BAD_REQUEST, t14.clone()));
    }
    let r = h.req("POST", "/internal/apps", &[IA], None).await;
    assert_eq!((r.status, r.body), (StatusCode::BAD_REQUEST, t14.clone()));
    let r = h
        .req(
            "POST",
            "/internal/apps",
            &[IA, ("content-type", "application/json")],
            Some("{bad"),
        )
        .await;
    assert_eq!((r.status, r.body), (StatusCode::BAD_REQUEST, t14.clone()));
    let r = h
        .req(
            "POST",
            "/internal/apps",
            &[IA, ("content-type", "text/plain")],
            Some("{\"name\":\"x\"}"),
        )
        .await;
    assert_eq!((r.status, r.body), (StatusCode::BAD_REQUEST, t14));

    // T16/T17
    let bad_uuid = json!({"error":"Invalid request","message":"app_id must be a valid UUID"});
    for id in ["not-a-uuid", "550e8400-e29b-01d4-a716-446655440000"] {
        let r = h
            .ia("POST", &format!("/internal/apps/{id}/api-key"), None)
            .await;
        assert_eq!(
            (r.status, r.body),
            (StatusCode::BAD_REQUEST, bad_uuid.clone())
        );
    }
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "00000000-0000-0000-0000-000000000000".into(),
    ] {
        let r = h
            .ia("POST", &format!("/internal/apps/{id}/api-key"), None)
            .await;
        assert_eq!(
            (r.status, r.body),
            (StatusCode::NOT_FOUND, json!({"error":"App not found"}))
        );
    }

    // T18 with C deactivated through PATCH
    let (c, kc) = h.create("Tenant C").await;
    let r = h
        .ia(
            "PATCH",
            &format!("/internal/apps/{c}"),
            Some(json!({"is_active":false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["data"]["is_active"], false);
    let r = h
        .ia(
            "PATCH",
            &format!("/internal/apps/{c}"),
            Some(json!({"is_active":"no"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .ia(
            "PATCH",
            &format!("/internal/apps/{}", uuid::Uuid::new_v4()),
            Some(json!({"name":"x"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"App not found"}))
    );
    let r = h.ia("GET", &format!("/internal/apps/{c}"), None).await;
    assert_eq!(
        (r.status, r.body["data"]["name"].clone()),
        (StatusCode::OK, json!("Tenant C"))
    );
    let r = h.ia("GET", "/internal/apps?limit=1", None).await;
    assert_eq!(
        (
            r.body["pagination"]["total"].clone(),
            r.body["data"].as_array().map(Vec::len)
        ),
        (json!(2), Some(1))
    );
    let r = h
        .ia("POST", &format!("/internal/apps/{c}/api-key"), None)
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::FORBIDDEN, json!({"error":"App is not active"}))
    );
    // T29
    let r = h.api("/api/calls", &kc).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Unauthorized","message":"Invalid API key"})
        )
    );

    // T19
    let r = h
        .ia("POST", &format!("/internal/apps/{d}/api-key"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["message"],
        "API key rotated successfully. Store this securely - it CANNOT be retrieved again."
    );
    assert_eq!(
        keys(&r.body),
        sorted(&[
            "success",
            "message",
            "api_key",
            "app_id",
            "app_name",
            "generated_at",
            "warning",
            "usage"
        ])
    );
    assert_eq!(
        r.body["usage"],
        "Include this key in the 'x-app-api-key' header when making API requests"
    );
    let kd2 = r.body["api_key"].as_str().expect("key").to_string();
    assert_ne!(kd, kd2);
    assert_eq!(
        h.api("/api/calls", &kd).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(h.api("/api/calls", &kd2).await.status, StatusCode::OK);

    // T20
    let r = h
        .ia("GET", &format!("/internal/apps/{d}/api-key/status"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["key_hint"], hint(&kd2));
    assert_eq!(
        (
            r.body["has_active_key"].clone(),
            r.body["action_needed"].clone()
        ),
        (json!(true), Value::Null)
    );
    assert_eq!(r.body["app_name"], "Tenant D");
    assert!(is_rfc3339(&r.body["last_rotated"]));

    // T21/T22
    let r = h
        .ia("GET", &format!("/internal/apps/{d}/api-key/audit"), None)
        .await;
    assert_eq!(
        (
            r.body["total"].clone(),
            r.body["limit"].clone(),
            r.body["offset"].clone()
        ),
        (json!(2), json!(50), json!(0))
    );
    let log = r.body["audit_log"].as_array().expect("log");
    assert_eq!(log[0]["action"], "rotated");
    assert_eq!(
        (
            log[0]["old_key_hint"].clone(),
            log[0]["new_key_hint"].clone()
        ),
        (json!(hint(&kd)), json!(hint(&kd2)))
    );
    assert_eq!(
        (log[1]["action"].clone(), log[1]["old_key_hint"].clone()),
        (json!("created"), Value::Null)
    );
    assert_eq!(
        keys(&log[0]),
        sorted(&[
            "id",
            "app_id",
            "action",
            "old_key_hint",
            "new_key_hint",
            "created_at"
        ])
    );
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{d}/api-key/audit?limit=abc"),
            None,
        )
        .await;
    assert_eq!(r.body["limit"], 50);
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{d}/api-key/audit?limit=1000"),
            None,
        )
        .await;
    assert_eq!(r.body["limit"], 100);

    // T23
    let r = h
        .ia("POST", &format!("/internal/apps/{d}/api-key/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["message"],
        "API key revoked. App cannot authenticate until new key is generated."
    );
    assert!(is_rfc3339(&r.body["revoked_at"]));
    assert_eq!(
        h.api("/api/calls", &kd2).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = h
        .ia("GET", &format!("/internal/apps/{d}/api-key/status"), None)
        .await;
    assert_eq!(
        (
            r.body["has_active_key"].clone(),
            r.body["key_hint"].clone(),
            r.body["action_needed"].clone()
        ),
        (json!(false), Value::Null, json!("Generate a new API key"))
    );

    // T24
    let r = h
        .ia("POST", &format!("/internal/apps/{d}/api-key"), None)
        .await;
    assert!(
        r.body["message"]
            .as_str()
            .expect("msg")
            .starts_with("API key created successfully.")
    );
    let r = h
        .ia("GET", &format!("/internal/apps/{d}/api-key/audit"), None)
        .await;
    assert_eq!(
        (
            r.body["audit_log"][0]["action"].clone(),
            r.body["audit_log"][0]["old_key_hint"].clone()
        ),
        (json!("created"), Value::Null)
    );

    // T25
    let (e, _) = h.create("Tenant E").await;
    let r = h
        .ia("GET", &format!("/internal/apps/{e}/api-key/status"), None)
        .await;
    assert!(is_rfc3339(&r.body["last_rotated"]));

    // T26
    let uri = format!("/internal/apps/{d}/api-key");
    let futs: Vec<_> = (0..5).map(|_| h.ia("POST", &uri, None)).collect();
    let results = futures::future::join_all(futs).await;
    let mut working = vec![];
    for r in &results {
        assert_eq!(r.status, StatusCode::OK);
        let k = r.body["api_key"].as_str().expect("key").to_string();
        if h.api("/api/calls", &k).await.status == StatusCode::OK {
            working.push(k);
        }
    }
    assert_eq!(working.len(), 1);
    let r = h
        .ia("GET", &format!("/internal/apps/{d}/api-key/audit"), None)
        .await;
    let log = r.body["audit_log"].as_array().expect("log");
    assert_eq!(log[0]["new_key_hint"], hint(&working[0]));
    for i in 0..5 {
        assert_eq!(log[i]["action"], "rotated");
        assert_eq!(log[i]["old_key_hint"], log[i + 1]["new_key_hint"]);
    }

    // grace_seconds validation
    let r = h.ia("POST", &uri, Some(json!({"grace_seconds": -1}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn group_d_client_auth_and_empty_lists() {
    let h = harness();
    let r = h.get("/api/calls", &[]).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Unauthorized","message":"Missing x-app-api-key header"})
        )
    );
    let zeros = format!("raw_{}", "0".repeat(64));
    let r = h.api("/api/calls", &zeros).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Unauthorized","message":"Invalid API key"})
        )
    );
    assert_eq!(r.headers["ratelimit-policy"], "300;w=60");
    let (_, ke) = h.create("Tenant E").await;
    let empty = json!({"success":true,"data":[],"pagination":{"limit":50,"offset":0,"total":0,"has_more":false}});
    for uri in [
        "/api/messages",
        "/api/calls",
        "/api/calls/active",
        "/api/voicemails",
    ] {
        let r = h.api(uri, &ke).await;
        assert_eq!((r.status, r.body), (StatusCode::OK, empty.clone()), "{uri}");
    }
}

#[tokio::test]
async fn group_e_webhooks_and_group_g_queries() {
    let h = harness();
    let (a, ka) = h.create("Tenant A").await;
    let (_, kb) = h.create("Tenant B").await;
    let body = json!({"event_type":"call.ring","call_id":1000}).to_string();
    // T32
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[("content-type", "application/json")],
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Invalid webhook signature"})
        )
    );
    assert_eq!(r.headers["ratelimit-policy"], "1000;w=60");
    assert_eq!(r.headers["ratelimit-remaining"], "999");
    // T33
    let bad = sign_hmac_b64(body.as_bytes(), b"not-W");
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[
                ("content-type", "application/json"),
                ("x-dialpad-signature", &bad),
            ],
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Invalid webhook signature"})
        )
    );
    let good = sign_hmac_b64(body.as_bytes(), b"W");
    let ct = ("content-type", "application/json");
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[ct, ("x-signature", &good), ("x-app-api-key", &ka)],
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::OK, json!({"received":true}))
    );
    assert_eq!(r.headers["ratelimit-remaining"], "998"); // accepted requests are not counted
    // T34
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[ct, ("x-dialpad-signature", &good)],
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Unknown or unauthorized app"})
        )
    );
    // T36
    let sig = sign_hmac_b64(b"{bad json", b"W");
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[ct, ("x-dialpad-signature", &sig), ("x-app-api-key", &ka)],
            Some("{bad json"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // per-app route with a bad id
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad/not-a-uuid",
            &[ct, ("x-dialpad-signature", &good)],
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error":"Unknown or unauthorized app"})
        )
    );

    // T37
    let r = h
        .hook(&ka, json!({"event_type":"call.ring","call_id":1001,"direction":"incoming","from":"+15550001111","to":"+15550002222","user_id":12345}))
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::OK, json!({"received":true}))
    );
    let v = h
        .settle("/api/calls/active", &ka, |v| {
            ids(v, "dialpad_call_id").contains(&"1001".to_string())
        })
        .await;
    let c = v["data"]
        .as_array()
        .expect("d")
        .iter()
        .find(|c| c["dialpad_call_id"] == "1001")
        .expect("call")
        .clone();
    assert_eq!(keys(&c), sorted(&CALL_KEYS));
    assert_eq!(
        (
            c["direction"].clone(),
            c["from_number"].clone(),
            c["to_number"].clone(),
            c["status"].clone(),
            c["dialpad_user_id"].clone()
        ),
        (
            json!("inbound"),
            json!("+15550001111"),
            json!("+15550002222"),
            json!("ringing"),
            json!("12345")
        )
    );
    for k in [
        "started_at",
        "ended_at",
        "duration_seconds",
        "recording_url",
    ] {
        assert_eq!(c[k], Value::Null, "{k}");
    }
    let call_id = c["id"].as_str().expect("id").to_string();
    // T38
    let r = h.hook(&ka, json!({"event_type":"call.started","call_id":1001,"started_at":"2026-01-29T12:00:00.000Z"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = h
        .settle(&format!("/api/calls/{call_id}"), &ka, |v| {
            v["data"]["status"] == "active"
        })
        .await;
    assert_eq!(v["data"]["started_at"], "2026-01-29T12:00:00.000Z");
    let ended = json!({"event_type":"call.ended","call_id":1001,"ended_at":"2026-01-29T12:02:00.000Z","duration":120});
    assert_eq!(h.hook(&ka, ended.clone()).await.status, StatusCode::OK);
    let v = h
        .settle("/api/calls?status=ended", &ka, |v| {
            ids(v, "dialpad_call_id").contains(&"1001".to_string())
        })
        .await;
    assert_eq!(v["data"][0]["ended_at"], "2026-01-29T12:02:00.000Z");
    assert_eq!(v["data"][0]["duration_seconds"], 120);
    let r = h.api("/api/calls/active", &ka).await;
    assert!(!ids(&r.body, "dialpad_call_id").contains(&"1001".to_string()));
    // T39 duplicate
    let r = h.hook(&ka, ended).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::OK, json!({"received":true,"duplicate":true}))
    );

    // more calls for the query tests
    h.hook(&ka, json!({"event_type":"call.ended","call_id":1002,"direction":"outbound","from":"+15550002222","to":"+15550009999","duration":30}))
        .await;
    h.hook(&ka, json!({"event_type":"call.ring","call_id":1005,"direction":"inbound","from":"+15550003333","to":"+15550002222"}))
        .await;
    h.settle("/api/calls", &ka, |v| v["pagination"]["total"] == 4)
        .await;

    // T72–T77
    let r = h.api("/api/calls?limit=500", &ka).await;
    assert_eq!(r.body["pagination"]["limit"], 100);
    let r = h.api("/api/calls?limit=-5", &ka).await;
    assert_eq!(
        (r.status, r.body["pagination"]["limit"].clone()),
        (StatusCode::OK, json!(50))
    );
    let r = h.api("/api/calls?limit=0&offset=-10", &ka).await;
    assert_eq!(
        (
            r.body["pagination"]["limit"].clone(),
            r.body["pagination"]["offset"].clone()
        ),
        (json!(50), json!(0))
    );
    assert_eq!(
        h.api("/api/calls?limit=abc", &ka).await.body["pagination"]["limit"],
        50
    );
    let r = h.api("/api/calls?limit=2abc", &ka).await;
    assert_eq!(
        (
            r.body["pagination"]["limit"].clone(),
            r.body["pagination"]["has_more"].clone()
        ),
        (json!(2), json!(true))
    );
    assert_eq!(
        h.api("/api/calls?status=bogus&direction=sideways", &ka)
            .await
            .body["pagination"]["total"],
        4
    );
    let r = h.api("/api/calls?direction=INBOUND", &ka).await;
    assert!(
        r.body["data"]
            .as_array()
            .expect("d")
            .iter()
            .all(|c| c["direction"] == "inbound")
    );
    assert_eq!(r.body["pagination"]["total"], 2);
    let r = h.api("/api/calls?status=ENDED", &ka).await;
    assert!(
        r.body["data"]
            .as_array()
            .expect("d")
            .iter()
            .all(|c| c["status"] == "ended")
    );
    assert_eq!(r.body["pagination"]["total"], 2);
    let r = h.api("/api/calls?from=%2B15550001111", &ka).await;
    assert_eq!(ids(&r.body, "dialpad_call_id"), vec!["1001"]);
    let r = h
        .api("/api/calls?to=%2B15550002222&direction=inbound", &ka)
        .await;
    let items = r.body["data"].as_array().expect("d");
    assert!(
        !items.is_empty()
            && items
                .iter()
                .all(|c| c["to_number"] == "+15550002222" && c["direction"] == "inbound")
    );
    // T78–T80
    let r = h.api("/api/calls/not-a-uuid", &ka).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"success":false,"error":"Bad Request","message":"Invalid call ID format"})
        )
    );
    let nf = json!({"success":false,"error":"Not Found","message":"Call not found"});
    for id in [
        "00000000-0000-0000-0000-000000000000",
        "550e8400-e29b-01d4-a716-446655440000",
    ] {
        let r = h.api(&format!("/api/calls/{id}"), &ka).await;
        assert_eq!((r.status, r.body), (StatusCode::NOT_FOUND, nf.clone()));
    }
    let r = h.api(&format!("/api/calls/{call_id}"), &kb).await;
    assert_eq!((r.status, r.body), (StatusCode::NOT_FOUND, nf));
    let r = h.api(&format!("/api/calls/{call_id}"), &ka).await;
    assert_eq!(
        (r.status, keys(&r.body["data"])),
        (StatusCode::OK, sorted(&CALL_KEYS))
    );

    // messages (T51/T52 setup) and T83/T84
    h.hook(&ka, json!({"event_type":"sms.received","id":5001,"direction":"inbound","from":"+15550003333","to":"+15550004444","text":"Hello","user_id":12345,"sent_at":"2026-01-29T12:00:00.000Z"}))
        .await;
    h.hook(&ka, json!({"event_type":"sms.sent","id":5002,"from":"+15550004444","to":"+15550003333","text":"Hi"})).await;
    let v = h
        .settle("/api/messages", &ka, |v| v["pagination"]["total"] == 2)
        .await;
    let m = v["data"]
        .as_array()
        .expect("d")
        .iter()
        .find(|m| m["dialpad_message_id"] == "5001")
        .expect("m")
        .clone();
    assert_eq!(
        keys(&m),
        sorted(&[
            "id",
            "dialpad_message_id",
            "direction",
            "from_number",
            "to_number",
            "text",
            "dialpad_user_id",
            "sent_at",
            "created_at"
        ])
    );
    assert_eq!(
        (m["sent_at"].clone(), m["dialpad_user_id"].clone()),
        (json!("2026-01-29T12:00:00.000Z"), json!("12345"))
    );
    let mid = m["id"].as_str().expect("id");
    let r = h.api(&format!("/api/messages/{mid}"), &kb).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::NOT_FOUND,
            json!({"success":false,"error":"Not Found","message":"Message not found"})
        )
    );
    assert_eq!(
        h.api(&format!("/api/messages/{mid}"), &ka).await.body["success"],
        true
    );
    let r = h.api("/api/messages/not-a-uuid", &ka).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"success":false,"error":"Bad Request","message":"Invalid message ID format"})
        )
    );
    let r = h
        .api(&format!("/api/messages/{}", uuid::Uuid::new_v4()), &ka)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.api("/api/messages?dialpad_user_id=abc", &ka).await.body["pagination"]["total"],
        2
    );
    let r = h.api("/api/messages?dialpad_user_id=12345", &ka).await;
    assert_eq!(ids(&r.body, "dialpad_user_id"), vec!["12345"]);
    let r = h.api("/api/messages?direction=outbound", &ka).await;
    assert_eq!(ids(&r.body, "dialpad_message_id"), vec!["5002"]);
    assert_eq!(
        h.api("/api/messages", &kb).await.body["pagination"]["total"],
        0
    );

    // events stats
    let r = h.ia("GET", "/internal/events/stats", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .ia(
            "POST",
            &format!("/internal/events/{}/retry", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"Event not found"}))
    );
    let _ = a;
}

#[tokio::test]
async fn group_g_pagination_t81_t82() {
    let h = harness();
    let (_, kf) = h.create("Tenant F").await;
    for (n, s) in [(4001, "01"), (4002, "02"), (4003, "03")] {
        let r = h
            .hook(&kf, json!({"event_type":"call.started","call_id":n,"direction":"inbound","started_at":format!("2026-01-29T12:00:{s}.000Z")}))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    h.settle("/api/calls", &kf, |v| v["pagination"]["total"] == 3)
        .await;
    let r = h.api("/api/calls?limit=2", &kf).await;
    assert_eq!(ids(&r.body, "dialpad_call_id"), vec!["4003", "4002"]);
    assert_eq!(
        (
            r.body["pagination"]["total"].clone(),
            r.body["pagination"]["has_more"].clone()
        ),
        (json!(3), json!(true))
    );
    let r = h.api("/api/calls?limit=2&offset=2", &kf).await;
    assert_eq!(ids(&r.body, "dialpad_call_id"), vec!["4001"]);
    assert_eq!(r.body["pagination"]["has_more"], false);
    let r = h.api("/api/calls?offset=3", &kf).await;
    assert_eq!(
        (
            ids(&r.body, "dialpad_call_id").len(),
            r.body["pagination"]["has_more"].clone()
        ),
        (0, json!(false))
    );
    let r = h.api("/api/calls/active?status=ended", &kf).await;
    assert_eq!(r.body["pagination"]["total"], 3);
}

#[tokio::test]
async fn group_h_voicemails() {
    let h = harness();
    let (a, ka) = h.create("Tenant A").await;
    let (b, kb) = h.create("Tenant B").await;
    let (e, _) = h.create("Tenant E").await;
    h.hook(&ka, json!({"event_type":"call.ring","call_id":1010,"direction":"inbound","from":"+15550005555","to":"+15550002222","user_id":12345}))
        .await;
    h.hook(&ka, json!({"event_type":"voicemail.received","voicemail":{"call_id":1010,"user_id":12345,"from":"+15550005555","to":"+15550002222","recording_url":"https://files.example.com/vm1010.mp3","transcript":"Please call back","duration":30}}))
        .await;
    let v = h
        .settle_ia(&format!("/internal/apps/{a}/voicemails"), |v| {
            v["pagination"]["total"] == 1
        })
        .await;
    let vm = v["data"][0].clone();
    assert_eq!(
        keys(&vm),
        sorted(&[
            "id",
            "app_id",
            "dialpad_call_id",
            "dialpad_user_id",
            "from_number",
            "to_number",
            "recording_url",
            "transcript",
            "duration_seconds",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(
        (
            vm["dialpad_call_id"].clone(),
            vm["duration_seconds"].clone()
        ),
        (json!("1010"), json!(30))
    );
    assert_eq!(
        (
            v["pagination"]["limit"].clone(),
            v["pagination"]["offset"].clone()
        ),
        (json!(50), json!(0))
    );
    let vid = vm["id"].as_str().expect("id").to_string();
    // T85 (client API)
    let r = h.api("/api/voicemails", &ka).await;
    assert_eq!(r.body["pagination"]["total"], 1);
    assert!(r.body["data"][0].get("app_id").is_none());
    assert_eq!(
        h.api("/api/voicemails", &kb).await.body["pagination"]["total"],
        0
    );
    assert_eq!(
        h.api(&format!("/api/voicemails/{vid}"), &kb).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.api(&format!("/api/voicemails/{vid}"), &ka).await.status,
        StatusCode::OK
    );
    // T86
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/voicemails?dialpad_user_id=12345"),
            None,
        )
        .await;
    assert_eq!(ids(&r.body, "dialpad_user_id"), vec!["12345"]);
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/voicemails?dialpad_user_id=999"),
            None,
        )
        .await;
    assert_eq!(r.body["pagination"]["total"], 0);
    assert_eq!(
        h.ia("GET", &format!("/internal/apps/{e}/voicemails"), None)
            .await
            .body["pagination"]["total"],
        0
    );
    // T87
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/voicemails/not-a-uuid"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","message":"app_id and voicemail_id must be valid UUIDs"})
        )
    );
    let r = h
        .ia("GET", "/internal/apps/not-a-uuid/voicemails", None)
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","message":"app_id must be a valid UUID"})
        )
    );
    // T88
    let r = h
        .ia("GET", &format!("/internal/apps/{b}/voicemails/{vid}"), None)
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::NOT_FOUND,
            json!({"error":"Voicemail not found"})
        )
    );
    let r = h
        .ia("GET", &format!("/internal/apps/{a}/voicemails/{vid}"), None)
        .await;
    assert_eq!(
        (
            r.status,
            r.body["success"].clone(),
            keys(&r.body["data"]).len()
        ),
        (StatusCode::OK, json!(true), 11)
    );
    // T90
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/voicemails?limit=-1"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["pagination"]["limit"].clone()),
        (StatusCode::OK, json!(50))
    );
    assert_eq!(
        h.ia(
            "GET",
            &format!("/internal/apps/{a}/voicemails?limit=1000"),
            None
        )
        .await
        .body["pagination"]["limit"],
        100
    );
    assert_eq!(
        h.ia(
            "GET",
            &format!("/internal/apps/{a}/voicemails?offset=abc"),
            None
        )
        .await
        .body["pagination"]["offset"],
        0
    );
    // T89
    let r = h
        .ia(
            "DELETE",
            &format!("/internal/apps/{b}/voicemails/{vid}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .ia(
            "DELETE",
            &format!("/internal/apps/{a}/voicemails/{vid}"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::OK,
            json!({"success":true,"message":"Voicemail deleted"})
        )
    );
    let r = h
        .ia(
            "DELETE",
            &format!("/internal/apps/{a}/voicemails/{vid}"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::NOT_FOUND,
            json!({"error":"Voicemail not found"})
        )
    );
}

#[tokio::test]
async fn group_i_user_mappings() {
    let h = harness();
    let (a, _) = h.create("Tenant A").await;
    let (b, _) = h.create("Tenant B").await;
    let map = format!("/internal/apps/{a}/users/map");
    let missing =
        json!({"error":"Missing required fields","required":["dialpad_user_id","crm_user_id"]});
    // T91
    for body in [json!({}), json!({"dialpad_user_id":0,"crm_user_id":"x"})] {
        let r = h.ia("POST", &map, Some(body)).await;
        assert_eq!(
            (r.status, r.body),
            (StatusCode::BAD_REQUEST, missing.clone())
        );
    }
    let r = h.req("POST", &map, &[IA], None).await;
    assert_eq!((r.status, r.body), (StatusCode::BAD_REQUEST, missing));
    // T92
    let bad =
        json!({"error":"Invalid request","message":"dialpad_user_id must be a positive integer"});
    for d in [
        json!("12a"),
        json!(-5),
        json!("007"),
        json!(12.5),
        json!("9223372036854775808"),
    ] {
        let r = h
            .ia(
                "POST",
                &map,
                Some(json!({"dialpad_user_id":d,"crm_user_id":"x"})),
            )
            .await;
        assert_eq!(
            (r.status, r.body),
            (StatusCode::BAD_REQUEST, bad.clone()),
            "{d}"
        );
    }
    // T93
    let r = h
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id":777,"crm_user_id":"crm_7"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["message"], "User mapping created/updated");
    assert_eq!(
        (
            r.body["data"]["dialpad_user_id"].clone(),
            r.body["data"]["app_id"].clone()
        ),
        (json!("777"), json!(a))
    );
    assert_eq!(
        keys(&r.body["data"]),
        sorted(&[
            "id",
            "app_id",
            "dialpad_user_id",
            "crm_user_id",
            "created_at",
            "updated_at"
        ])
    );
    let id777 = r.body["data"]["id"].clone();
    let r = h
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id":777,"crm_user_id":"crm_8"})),
        )
        .await;
    assert_eq!(
        (
            r.body["data"]["id"].clone(),
            r.body["data"]["crm_user_id"].clone()
        ),
        (id777.clone(), json!("crm_8"))
    );
    let r = h
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id":"778","crm_user_id":"crm_x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id":"9223372036854775807","crm_user_id":"big"})),
        )
        .await;
    assert_eq!(r.body["data"]["dialpad_user_id"], "9223372036854775807");
    // T94
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/users/mappings/dialpad/777"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["data"]["crm_user_id"].clone()),
        (StatusCode::OK, json!("crm_8"))
    );
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/users/mappings/crm/crm_8"),
            None,
        )
        .await;
    assert_eq!(r.body["data"]["id"], id777);
    let nf = json!({"error":"Mapping not found"});
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/users/mappings/dialpad/779"),
            None,
        )
        .await;
    assert_eq!((r.status, r.body), (StatusCode::NOT_FOUND, nf.clone()));
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{b}/users/mappings/dialpad/777"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // T95
    let r = h
        .ia(
            "POST",
            &format!("/internal/apps/{}/users/map", uuid::Uuid::new_v4()),
            Some(json!({"dialpad_user_id":1,"crm_user_id":"x"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"App not found"}))
    );
    // T96
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/users/mappings/dialpad/abc"),
            None,
        )
        .await;
    assert_eq!((r.status, r.body), (StatusCode::BAD_REQUEST, bad));
    let r = h
        .ia(
            "GET",
            "/internal/apps/not-a-uuid/users/mappings/dialpad/777",
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","message":"app_id must be a valid UUID"})
        )
    );
    // T97
    let r = h
        .ia(
            "DELETE",
            &format!("/internal/apps/{a}/users/mappings/not-a-uuid"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","message":"mapping_id must be a valid UUID"})
        )
    );
    let del = format!(
        "/internal/apps/{a}/users/mappings/{}",
        id777.as_str().expect("id")
    );
    let deleted = json!({"success":true,"message":"Mapping deleted"});
    let r = h.ia("DELETE", &del, None).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, deleted.clone()));
    let r = h.ia("DELETE", &del, None).await;
    assert_eq!((r.status, r.body), (StatusCode::NOT_FOUND, nf.clone()));
    // T98
    let del = format!("/internal/apps/{a}/users/mappings/dialpad/778");
    let r = h.ia("DELETE", &del, None).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, deleted));
    let r = h.ia("DELETE", &del, None).await;
    assert_eq!((r.status, r.body), (StatusCode::NOT_FOUND, nf));
    // T99
    let batch = format!("/internal/apps/{a}/users/batch-map");
    let r = h.ia("POST", &batch, Some(json!({"mappings":"x"}))).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","expected":{"mappings":"array of {dialpad_user_id, crm_user_id}"}})
        )
    );
    let r = h.ia("POST", &batch, Some(json!({"mappings":[]}))).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::OK,
            json!({"success":true,"message":"Batch mapped 0 users","count":0})
        )
    );
    let r = h
        .ia("POST", &batch, Some(json!({"mappings":[{"dialpad_user_id":801,"crm_user_id":"crm_a"},{"dialpad_user_id":802,"crm_user_id":"crm_b"}]})))
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::OK,
            json!({"success":true,"message":"Batch mapped 2 users","count":2})
        )
    );
    let r = h
        .ia("GET", &format!("/internal/apps/{a}/users/mappings"), None)
        .await;
    let d = ids(&r.body, "dialpad_user_id");
    assert!(d.contains(&"801".to_string()) && d.contains(&"802".to_string()));
    // T100
    let r = h
        .ia("POST", &batch, Some(json!({"mappings":[{"dialpad_user_id":803,"crm_user_id":"crm_c"},{"dialpad_user_id":804}]})))
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","message":"mappings[1]: crm_user_id is required"})
        )
    );
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/users/mappings/dialpad/803"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .ia(
            "GET",
            &format!("/internal/apps/{a}/users/mappings?limit=abc"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["pagination"]["limit"].clone()),
        (StatusCode::OK, json!(100))
    );
    let items: Vec<Value> = (1..=1001)
        .map(|i| json!({"dialpad_user_id": i, "crm_user_id": format!("c{i}")}))
        .collect();
    let r = h
        .ia("POST", &batch, Some(json!({ "mappings": items })))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .ia(
            "POST",
            &format!("/internal/apps/{}/users/batch-map", uuid::Uuid::new_v4()),
            Some(json!({"mappings":[{"dialpad_user_id":1,"crm_user_id":"x"}]})),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"App not found"}))
    );
}

#[tokio::test]
async fn webhook_metadata_routes() {
    let h = harness();
    let (a, _) = h.create("Tenant A").await;
    let r = h.ia("GET", "/internal/webhooks", None).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"app_id query parameter required"})
        )
    );
    let r = h
        .ia("GET", "/internal/webhooks?app_id=not-a-uuid", None)
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error":"Invalid request","message":"app_id must be a valid UUID"})
        )
    );
    let r = h
        .ia("GET", &format!("/internal/webhooks?app_id={a}"), None)
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::OK,
            json!({"success":true,"count":0,"webhooks":[]})
        )
    );
    assert_eq!(
        h.ia("GET", "/internal/webhooks/abc", None).await.status,
        StatusCode::BAD_REQUEST
    );
    let r = h.ia("GET", "/internal/webhooks/999999999", None).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::NOT_FOUND, json!({"error":"Webhook not found"}))
    );
    let r = h
        .ia(
            "DELETE",
            "/internal/webhooks/999999999?local_only=true",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn webhook_body_limit() {
    let mut cfg = HttpConfig::new(S);
    cfg.webhook_body_limit = 1024;
    let h = harness_with(cfg);
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(2048));
    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[("content-type", "application/json")],
            Some(&big),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error":"Payload too large"})
        )
    );
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(200 * 1024));
    let r = h
        .req(
            "POST",
            "/internal/apps",
            &[IA, ("content-type", "application/json")],
            Some(&big),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error":"Payload too large"})
        )
    );
}

fn small_limits(n: u32) -> HttpConfig {
    let mut cfg = HttpConfig::new(S);
    cfg.rate_limits = RateLimits {
        webhook_per_min: n,
        api_per_min: n,
        internal_per_min: n,
        auth_per_15min: n,
    };
    cfg
}

#[tokio::test]
async fn t127_api_rate_limit() {
    let h = harness_with(small_limits(5));
    let (_, ka) = h.create("Tenant A").await;
    for i in 0..5 {
        let uri = if i % 2 == 0 {
            "/api/calls"
        } else {
            "/api/messages"
        };
        let r = h.api(uri, &ka).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.headers["ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
    }
    let r = h.api("/api/calls", &ka).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.body,
        json!({"error":"Too many API requests from this IP, please try again later."})
    );
    assert_eq!(r.headers["ratelimit-policy"], "5;w=60");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert!(r.headers.contains_key("retry-after"));
    // T131: separate buckets per forwarded client with trust_proxy
    let mut cfg = small_limits(2);
    cfg.trust_proxy = 1;
    let h = harness_with(cfg);
    for _ in 0..2 {
        h.get("/api/calls", &[("x-forwarded-for", "198.51.100.1")])
            .await;
    }
    assert_eq!(
        h.get("/api/calls", &[("x-forwarded-for", "198.51.100.1")])
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        h.get("/api/calls", &[("x-forwarded-for", "198.51.100.2")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn t128_internal_rate_limit_counts_before_auth() {
    let h = harness_with(small_limits(5));
    let uri = format!("/internal/apps/{}/api-key/status", uuid::Uuid::new_v4());
    for _ in 0..5 {
        assert_eq!(h.get(&uri, &[]).await.status, StatusCode::UNAUTHORIZED);
    }
    let r = h.get(&uri, &[IA]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.body,
        json!({"error":"Too many internal API requests, please try again later."})
    );
}

#[tokio::test]
async fn t130_webhook_rate_limit_counts_rejections_only() {
    let h = harness_with(small_limits(5));
    let (_, ka) = h.create("Tenant A").await;
    // accepted traffic is never throttled
    for i in 0..8 {
        let r = h
            .hook(&ka, json!({"event_type":"call.ring","call_id":9000 + i}))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let ct = [("content-type", "application/json")];
    for _ in 0..5 {
        assert_eq!(
            h.req("POST", "/webhooks/dialpad", &ct, Some("{}"))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = h.req("POST", "/webhooks/dialpad", &ct, Some("{}")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.body,
        json!({"error":"Too many webhook requests from this IP, please try again later."})
    );
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn event_retry_and_draining_health() {
    use cti_core::store::{InboxStore, NewInboxEvent};
    let store = Arc::new(MemoryStore::new());
    let cti = Cti::builder()
        .store(store.clone())
        .config(CtiConfig::default())
        .build();
    let state = cti_axum::AppState {
        limits: Arc::new(cti_axum::ratelimit::Limiter::new(&RateLimits::default())),
        cti: cti.clone(),
        config: Arc::new(HttpConfig::new(S)),
        started: std::time::Instant::now(),
        shutting_down: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let h = H {
        app: cti_axum::router_with_state(state.clone()),
        _run: None,
    };
    // a dead-lettered event (app need not exist for the memory inbox)
    let (app, _) = h.create("Tenant A").await;
    let id = uuid::Uuid::new_v4();
    let now = cti.now();
    let ev = NewInboxEvent {
        id,
        app_id: app.parse().expect("app id"),
        dedupe_key: "k1".into(),
        event_type: Some("call.teleported".into()),
        call_id: None,
        state: None,
        event_timestamp: None,
        payload: json!({}),
        received_at: now,
    };
    // no processor runs here: claim the event ourselves, then fail it for good
    store.inbox_insert(vec![ev]).await.expect("insert");
    let claimed = store
        .inbox_claim(10, Duration::from_secs(30), now)
        .await
        .expect("claim");
    let retry = format!("/internal/events/{id}/retry");
    let e = claimed.iter().find(|e| e.id == id).expect("claimed");
    store
        .inbox_fail(id, e.attempts, "boom", None, now)
        .await
        .expect("fail");
    let r = h.ia("POST", &retry, None).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::OK,
            json!({"success":true,"event_id":id.to_string(),"status":"pending"})
        )
    );
    // a pending event is not re-drivable
    let r = h.ia("POST", &retry, None).await;
    assert_eq!(
        (r.status, r.body),
        (
            StatusCode::CONFLICT,
            json!({"error":"Event is not failed or dead"})
        )
    );
    assert_eq!(
        h.ia("POST", "/internal/events/nope/retry", None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let r = h.get("/health", &[]).await;
    assert_eq!(
        (r.status, r.body["status"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("unhealthy"))
    );
}
