//! Root, health, metrics and the Dialpad webhook intake.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cti_core::inbox::{IngestOutcome, WebhookRequest};
use cti_core::model::format_ts;
use cti_core::store::InboxBacklog;
use serde_json::{Value, json};

use crate::{AppState, Shared, error};

/// `GET /`.
#[utoipa::path(
    get, path = "/", tag = "ops", operation_id = "root",
    responses((status = 200, description = "The server runs.", body = crate::openapi::Root)),
)]
pub(crate) async fn root() -> Response {
    error::json(
        StatusCode::OK,
        json!({ "message": "CTI Server is running" }),
    )
}

/// `GET /health`: `503 unhealthy` when the store is unreachable or the server is draining.
#[utoipa::path(
    get, path = "/health", tag = "ops", operation_id = "health",
    responses(
        (status = 200, description = "Healthy.", body = crate::openapi::Health),
        (status = 503, description = "`status: unhealthy`: database unreachable or shutting down.", body = crate::openapi::Health),
    ),
)]
pub(crate) async fn health(State(st): State<Shared>) -> Response {
    let db_ok = st.cti.store().ping().await.is_ok();
    let draining = st.shutting_down.load(Ordering::Relaxed);
    let healthy = db_ok && !draining;
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "timestamp": format_ts(&st.cti.now()),
        "uptime": st.started.elapsed().as_secs_f64(),
        "environment": st.config.environment,
        "port": st.config.port,
        "database": if db_ok { "ok" } else { "unreachable" },
        "processor": if draining { "stopped" } else { "running" },
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    error::json(status, body)
}

/// Process memory in MiB from `/proc/self/statm` (Linux; zeros elsewhere): `heap_used` ≈
/// resident minus shared pages, `heap_total` ≈ resident, `external` ≈ shared. Approximations
/// of the original's V8 heap numbers.
fn memory_mb() -> (u64, u64, u64) {
    const PAGE: u64 = 4096;
    const MIB: u64 = 1024 * 1024;
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return (0, 0, 0);
    };
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let (resident, shared) = (
        f.get(1).copied().unwrap_or(0),
        f.get(2).copied().unwrap_or(0),
    );
    (
        resident.saturating_sub(shared) * PAGE / MIB,
        resident * PAGE / MIB,
        shared * PAGE / MIB,
    )
}

/// `None` when the request may read metrics, else the 401/403 response.
fn metrics_auth(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    if st.config.metrics_require_auth {
        super::internal::check_bearer(st, headers).err()
    } else {
        None
    }
}

struct Snapshot {
    stats: Option<InboxBacklog>,
    oldest_age: Option<f64>,
}

async fn snapshot(st: &AppState) -> Snapshot {
    let stats = st.cti.store().inbox_backlog().await.ok();
    let now = st.cti.now();
    let oldest_age = stats
        .as_ref()
        .and_then(|s| s.oldest_unprocessed_at)
        .map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0);
    Snapshot { stats, oldest_age }
}

/// `GET /metrics` (JSON).
#[utoipa::path(
    get, path = "/metrics", tag = "ops", operation_id = "metrics",
    description = "Bearer-protected only with `METRICS_REQUIRE_AUTH`.",
    responses(
        (status = 200, description = "Gauges.", body = crate::openapi::Metrics),
        (status = 401, description = "`METRICS_REQUIRE_AUTH` and no bearer.", body = crate::openapi::ErrorBody),
        (status = 403, description = "`METRICS_REQUIRE_AUTH` and a wrong secret.", body = crate::openapi::ErrorBody),
    ),
    security((), ("internal_bearer" = [])),
)]
pub(crate) async fn metrics(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = metrics_auth(&st, &headers) {
        return r;
    }
    let (used, total, external) = memory_mb();
    let snap = snapshot(&st).await;
    let hub = st.cti.hub();
    let events = match &snap.stats {
        Some(s) => json!({
            "unprocessed": s.unprocessed,
            "processing": s.processing,
            "oldest_unprocessed_age_s": snap.oldest_age,
            "dead_lettered": s.dead,
        }),
        None => {
            json!({ "unprocessed": null, "oldest_unprocessed_age_s": null, "dead_lettered": null })
        }
    };
    error::json(
        StatusCode::OK,
        json!({
            "timestamp": format_ts(&st.cti.now()),
            "memory": { "heap_used_mb": used, "heap_total_mb": total, "external_mb": external },
            "uptime_seconds": st.started.elapsed().as_secs_f64(),
            "websocket": { "connections_total": hub.connection_count(), "apps": hub.app_count() },
            "events": events,
            "db": { "backend": st.cti.store().backend() },
        }),
    )
}

/// `GET /metrics/prometheus`: the same gauges in the text exposition format.
#[utoipa::path(
    get, path = "/metrics/prometheus", tag = "ops", operation_id = "prometheus",
    description = "Bearer-protected only with `METRICS_REQUIRE_AUTH`.",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain"),
        (status = 401, description = "`METRICS_REQUIRE_AUTH` and no bearer.", body = crate::openapi::ErrorBody),
        (status = 403, description = "`METRICS_REQUIRE_AUTH` and a wrong secret.", body = crate::openapi::ErrorBody),
    ),
    security((), ("internal_bearer" = [])),
)]
pub(crate) async fn prometheus(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = metrics_auth(&st, &headers) {
        return r;
    }
    let (used, total, external) = memory_mb();
    let snap = snapshot(&st).await;
    let hub = st.cti.hub();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
        ));
    };
    gauge(
        "cti_uptime_seconds",
        "Seconds since the process started.",
        st.started.elapsed().as_secs_f64(),
    );
    gauge(
        "cti_memory_heap_used_mb",
        "Approximate private resident memory (MiB).",
        used as f64,
    );
    gauge(
        "cti_memory_heap_total_mb",
        "Resident memory (MiB).",
        total as f64,
    );
    gauge(
        "cti_memory_external_mb",
        "Shared resident memory (MiB).",
        external as f64,
    );
    gauge(
        "cti_websocket_connections",
        "Live WebSocket subscriptions.",
        hub.connection_count() as f64,
    );
    gauge(
        "cti_websocket_apps",
        "Apps with at least one live subscription.",
        hub.app_count() as f64,
    );
    gauge(
        "cti_database_up",
        "1 when the last stats query succeeded.",
        if snap.stats.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(s) = &snap.stats {
        gauge(
            "cti_events_unprocessed",
            "Inbox events waiting for processing.",
            s.unprocessed as f64,
        );
        gauge(
            "cti_events_processing",
            "Inbox events held by workers.",
            s.processing as f64,
        );
        gauge(
            "cti_events_failed",
            "Inbox events waiting for a retry.",
            s.failed as f64,
        );
        gauge(
            "cti_events_dead_lettered",
            "Dead-lettered inbox events.",
            s.dead as f64,
        );
        gauge(
            "cti_events_oldest_unprocessed_age_seconds",
            "Age of the oldest unprocessed inbox event.",
            snap.oldest_age.unwrap_or(0.0),
        );
    }
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `POST /webhooks/dialpad`.
#[utoipa::path(
    post, path = "/webhooks/dialpad", tag = "webhooks", operation_id = "webhook",
    description = "Legacy intake verified with the global `DIALPAD_WEBHOOK_SECRET`; the tenant comes from `x-app-api-key` or the payload's organization linked to an active app.",
    params(("x-app-api-key" = Option<String>, Header, description = "Selects the tenant app.")),
    request_body(
        description = "A Dialpad event: a compact HS256 JWT (`application/jwt`) or JSON signed with HMAC-SHA256 of the raw body, base64, in `x-dialpad-signature` or `x-signature` (`application/json`).",
        content(("application/jwt"), ("application/json")),
    ),
    responses(crate::openapi::WebhookResponses),
)]
pub(crate) async fn webhook(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    ingest(&st, &headers, None, body).await
}

/// `POST /webhooks/dialpad/{app_id}`.
#[utoipa::path(
    post, path = "/webhooks/dialpad/{app_id}", tag = "webhooks", operation_id = "webhook_for_app",
    description = "Intake of one tenant app, verified with that app's webhook secret.",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    request_body(
        description = "A Dialpad event: a compact HS256 JWT (`application/jwt`) or JSON signed with HMAC-SHA256 of the raw body, base64, in `x-dialpad-signature` or `x-signature` (`application/json`).",
        content(("application/jwt"), ("application/json")),
    ),
    responses(crate::openapi::WebhookResponses),
)]
pub(crate) async fn webhook_for_app(
    State(st): State<Shared>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    ingest(&st, &headers, Some(&app_id), body).await
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn ingest(
    st: &AppState,
    headers: &HeaderMap,
    path_app: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::warn!(
                limit = st.config.webhook_body_limit,
                "webhook rejected: body over the limit"
            );
            return error::payload_too_large();
        }
        Err(e) => {
            tracing::warn!(reason = %e.body_text(), "webhook rejected: body could not be read");
            return error::error(StatusCode::BAD_REQUEST, "Invalid request body");
        }
    };
    let signature = header_str(headers, st.config.signature_header.as_str())
        .or_else(|| header_str(headers, "x-signature"));
    let req = WebhookRequest {
        body: &body,
        content_type: header_str(headers, header::CONTENT_TYPE.as_str()),
        signature,
        app_key: header_str(headers, "x-app-api-key"),
        path_app,
        event_type_header: header_str(headers, "x-event-type"),
    };
    match st.cti.ingest(req).await {
        Ok(IngestOutcome::Accepted { .. }) => {
            error::json(StatusCode::OK, json!({ "received": true }))
        }
        Ok(IngestOutcome::Duplicate { event_id, app_id }) => {
            tracing::debug!(%event_id, %app_id, "duplicate webhook");
            error::json(
                StatusCode::OK,
                json!({ "received": true, "duplicate": true }),
            )
        }
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if e.is_rejection() {
                tracing::warn!(status = status.as_u16(), reason = %e, len = body.len(), "webhook rejected");
            } else {
                tracing::error!(status = status.as_u16(), reason = %e, "webhook could not be stored");
            }
            let body: Value = json!({ "error": e.public_message() });
            error::json(status, body)
        }
    }
}
