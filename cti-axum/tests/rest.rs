//! In-process checks of the REST router (memory store, `tower::ServiceExt::oneshot`): the
//! cross-cutting layers, configuration-dependent behaviour and paths that need control of the
//! engine's state. The spec §10 acceptance scenarios (groups A–I, M) run end to end against the
//! real server in `examples/cti-server/tests/e2e/`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use cti_axum::{HttpConfig, RateLimits};
use cti_core::inbox::{ProcessorConfig, Running};
use cti_core::secrets::Secret;
use cti_core::store::MemoryStore;
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
    async fn api(&self, uri: &str, key: &str) -> Resp {
        self.get(uri, &[("x-app-api-key", key)]).await
    }
}

/// Request ids, CORS, the JSON 405, and the fields `/health` and `/metrics` add to spec §1.
#[tokio::test]
async fn router_layers_and_ops_fields() {
    let h = harness();
    let r = h.get("/", &[]).await;
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let r = h.get("/", &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.headers["x-request-id"], "abc-123");

    let r = h.get("/health", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["port"], 4000);
    assert_eq!(r.body["database"], "ok");

    let r = h.get("/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["websocket"]["connections_total"], 0);
    assert_eq!(r.body["db"]["backend"], "memory");
    assert!(r.body["events"]["dead_lettered"].is_u64(), "{}", r.text);

    let r = h.get("/metrics/prometheus", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("cti_events_dead_lettered 0"), "{}", r.text);

    let r = h.req("DELETE", "/health", &[], None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body, json!({"error":"Method Not Allowed"}));
}

#[tokio::test]
async fn metrics_require_auth() {
    let mut cfg = HttpConfig::new(S);
    cfg.metrics_require_auth = true;
    let h = harness_with(cfg);
    let r = h.get("/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h.get("/metrics", &[IA]).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Policy headers of the default buckets (the e2e suite raises them outside group M), the
/// `/api` bucket shared by calls and messages, and the case-sensitive `Bearer` scheme.
#[tokio::test]
async fn rate_limit_headers_and_bearer_scheme() {
    let h = harness();
    let (a, ka) = h.create("Tenant A").await;
    let status = format!("/internal/apps/{a}/api-key/status");
    let r = h.get(&status, &[IA]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["ratelimit-policy"], "100;w=60");
    let r = h
        .get(
            &status,
            &[("authorization", "bearer SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = h.api("/api/calls", &ka).await;
    assert_eq!(
        (
            r.headers["ratelimit-policy"].to_str().ok(),
            r.headers["ratelimit-remaining"].to_str().ok()
        ),
        (Some("300;w=60"), Some("299"))
    );
    let r = h.api("/api/messages", &ka).await;
    assert_eq!(r.headers["ratelimit-remaining"], "298");

    let r = h
        .req(
            "POST",
            "/webhooks/dialpad",
            &[("content-type", "application/json")],
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["ratelimit-policy"], "1000;w=60");
    assert_eq!(r.headers["ratelimit-remaining"], "999");
}

/// `PATCH`/`GET /internal/apps[/:id]` validation and the rotation grace period bound.
#[tokio::test]
async fn app_admin_routes() {
    let h = harness();
    let (c, _) = h.create("Tenant C").await;
    let (d, _) = h.create("Tenant D").await;
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
        .ia(
            "POST",
            &format!("/internal/apps/{d}/api-key"),
            Some(json!({"grace_seconds": -1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
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
        payload: json!({}).into(),
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
    let r = h.ia("GET", "/internal/events/stats", None).await;
    assert_eq!(
        (r.status, r.body["failed"].clone()),
        (StatusCode::OK, json!(0))
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
