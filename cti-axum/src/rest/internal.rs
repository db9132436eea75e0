//! Internal administration API (`/internal/*`, `Authorization: Bearer <INTERNAL_API_SECRET>`):
//! apps and API keys (§1.13–§1.17), voicemails (§1.18), user mappings (§1.19), webhook metadata
//! (§1.20) and inbox operations.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use cti_core::inbox::CtiError;
use cti_core::model::{
    App, AuditAction, AuditContext, AuditEntry, DialpadId, DialpadWebhook, UserMapping, format_ts,
};
use cti_core::store::{AppPatch, StoreError, VoicemailFilter};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::api::{user_filter, voicemail_json};
use super::{JsonBody, Params, page, pagination, params, read_json, strict_uuid, ts};
use crate::{AppState, Shared, error, ratelimit};

/// Max items of one `users/batch-map` request.
const BATCH_CAP: usize = 1000;
/// Max `grace_seconds` of a rotation (7 days).
const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Max length of a CRM user id.
const MAX_CRM_ID_LEN: usize = 255;

type Q = Result<Query<Params>, QueryRejection>;
type B = Result<Bytes, BytesRejection>;

/// Routes under `/internal` (rate limit first, then bearer auth, for every path).
pub(super) fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/apps", post(create_app).get(list_apps))
        .route("/apps/{app_id}", get(get_app).patch(patch_app))
        .route("/apps/{app_id}/api-key", post(issue_key))
        .route("/apps/{app_id}/api-key/revoke", post(revoke_key))
        .route("/apps/{app_id}/api-key/status", get(key_status))
        .route("/apps/{app_id}/api-key/audit", get(key_audit))
        .route("/apps/{app_id}/voicemails", get(list_voicemails))
        .route(
            "/apps/{app_id}/voicemails/{voicemail_id}",
            get(get_voicemail).delete(delete_voicemail),
        )
        .route("/apps/{app_id}/users/map", post(map_user))
        .route("/apps/{app_id}/users/batch-map", post(batch_map))
        .route("/apps/{app_id}/users/mappings", get(list_mappings))
        .route(
            "/apps/{app_id}/users/mappings/dialpad/{dialpad_user_id}",
            get(get_mapping_by_dialpad).delete(delete_mapping_by_dialpad),
        )
        .route(
            "/apps/{app_id}/users/mappings/crm/{crm_user_id}",
            get(get_mapping_by_crm),
        )
        .route(
            "/apps/{app_id}/users/mappings/{mapping_id}",
            delete(delete_mapping),
        )
        .route("/webhooks", get(list_webhooks))
        .route(
            "/webhooks/{webhook_id}",
            get(get_webhook).delete(delete_webhook),
        )
        .route("/events/stats", get(event_stats))
        .route("/events/{event_id}/retry", post(retry_event))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), bearer))
        .layer(middleware::from_fn_with_state(
            state,
            ratelimit::internal_limit,
        ))
}

/// Checks `Authorization: Bearer <secret>` (exact, case-sensitive prefix; constant-time
/// comparison). `Err` carries the 401/403 response of §1.12.
pub(crate) fn check_bearer(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(error::internal_unauthorized());
    };
    let secret = st.config.internal_secret.expose().as_bytes();
    let ok = token.len() == secret.len() && bool::from(token.as_bytes().ct_eq(secret));
    if ok {
        Ok(())
    } else {
        Err(error::internal_forbidden())
    }
}

async fn bearer(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match check_bearer(&st, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => r,
    }
}

fn ok(body: Value) -> Response {
    error::json(StatusCode::OK, body)
}

fn internal_error(msg: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "{msg}");
    error::error(StatusCode::INTERNAL_SERVER_ERROR, msg)
}

fn app_id(raw: &str) -> Result<cti_core::model::AppId, Response> {
    strict_uuid(raw)
        .map(cti_core::model::AppId)
        .ok_or_else(error::invalid_app_id)
}

fn audit_ctx(st: &AppState, headers: &HeaderMap, ext: &Extensions) -> AuditContext {
    let peer = ext.get::<ConnectInfo<SocketAddr>>();
    AuditContext {
        actor: Some("internal".into()),
        request_ip: crate::client_ip(headers, peer.map(|c| c.0.ip()), st.config.trust_proxy)
            .map(|ip| ip.to_string()),
        user_agent: headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
    }
}

fn app_json(a: &App) -> Value {
    json!({
        "id": a.id.to_string(),
        "name": a.name,
        "is_active": a.is_active,
        "has_active_key": a.has_key,
        "key_hint": a.api_key_hint,
        "api_key_issued_at": ts(a.api_key_issued_at.as_ref()),
        "created_at": ts(Some(&a.created_at)),
        "updated_at": ts(Some(&a.updated_at)),
    })
}

// ---------------------------------------------------------------- apps

#[utoipa::path(
    post, path = "/internal/apps", tag = "internal", operation_id = "create_app",
    description = "Creates a tenant app and its first API key (shown once).",
    request_body(content = crate::openapi::CreateApp, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 201, description = "Created; the key is in `api_key`.", body = crate::openapi::AppCreated),
        (status = 400, description = "`name` missing or empty.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn create_app(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    body: B,
) -> Response {
    let bad = || error::invalid("name is required and must be a non-empty string");
    let v = match read_json(&headers, body) {
        Ok(JsonBody::Value(v)) => v,
        Ok(_) => return bad(),
        Err(r) => return r,
    };
    let Some(name) = v
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return bad();
    };
    match st
        .cti
        .create_app(name, audit_ctx(&st, &headers, &ext))
        .await
    {
        Ok((app, key)) => error::json(
            StatusCode::CREATED,
            json!({
                "success": true,
                "message": "App created successfully. Store the API key securely - it CANNOT be retrieved again.",
                "app_id": app.id.to_string(),
                "app_name": app.name,
                "api_key": key.expose(),
                "created_at": format_ts(&app.created_at),
                "warning": "This is the ONLY time this API key will be displayed. Store it immediately in a secure location.",
                "usage": "Include this app_id for account identification and the api_key in the 'x-app-api-key' header when making API requests",
            }),
        ),
        Err(e) => internal_error("Failed to create app", &e),
    }
}

#[utoipa::path(
    get, path = "/internal/apps", tag = "internal", operation_id = "list_apps",
    description = "Lists apps.",
    params(crate::openapi::PageParams),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "A page of apps.", body = crate::openapi::AppList),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn list_apps(State(st): State<Shared>, q: Q) -> Response {
    let req = page(&params(q), 50, 100);
    match st.cti.store().list_apps(req).await {
        Ok(pg) => ok(json!({
            "success": true,
            "data": pg.items.iter().map(app_json).collect::<Vec<_>>(),
            "pagination": pagination(&pg, req),
        })),
        Err(e) => internal_error("Failed to list apps", &e),
    }
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}", tag = "internal", operation_id = "get_app",
    description = "One app.",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The app.", body = crate::openapi::AppOne),
        (status = 400, description = "`app_id` is not a valid UUID.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn get_app(State(st): State<Shared>, Path(raw): Path<String>) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match st.cti.store().get_app(id).await {
        Ok(Some(a)) => ok(json!({ "success": true, "data": app_json(&a) })),
        Ok(None) => error::app_not_found(),
        Err(e) => internal_error("Failed to fetch app", &e),
    }
}

#[utoipa::path(
    patch, path = "/internal/apps/{app_id}", tag = "internal", operation_id = "patch_app",
    description = "Renames, activates or deactivates an app (deactivation closes its sockets).",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    request_body(content = crate::openapi::PatchApp, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The updated app.", body = crate::openapi::AppOne),
        (status = 400, description = "Invalid id or body.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn patch_app(
    State(st): State<Shared>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: B,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let obj = match read_json(&headers, body) {
        Ok(JsonBody::Value(Value::Object(o))) => o,
        Ok(_) => return error::invalid("Request body must be a JSON object"),
        Err(r) => return r,
    };
    let mut patch = AppPatch::default();
    if let Some(n) = obj.get("name") {
        match n.as_str().map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => patch.name = Some(n.to_string()),
            None => return error::invalid("name must be a non-empty string"),
        }
    }
    if let Some(a) = obj.get("is_active") {
        match a.as_bool() {
            Some(b) => patch.is_active = Some(b),
            None => return error::invalid("is_active must be a boolean"),
        }
    }
    match st.cti.update_app(id, patch).await {
        Ok(a) => ok(json!({ "success": true, "data": app_json(&a) })),
        Err(CtiError::AppNotFound) => error::app_not_found(),
        Err(e) => internal_error("Failed to update app", &e),
    }
}

// ---------------------------------------------------------------- keys

#[utoipa::path(
    post, path = "/internal/apps/{app_id}/api-key", tag = "internal", operation_id = "issue_key",
    description = "Issues a new key (rotation); the previous one stops working, or after `grace_seconds`.",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    request_body(content = crate::openapi::IssueKey, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The new key (shown once).", body = crate::openapi::KeyIssued),
        (status = 400, description = "Invalid id or body.", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing bearer, or another scheme.", body = crate::openapi::ErrorBody),
        (status = 403, description = "`App is not active`, or a wrong bearer secret.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn issue_key(
    State(st): State<Shared>,
    ext: Extensions,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: B,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let grace = match read_json(&headers, body) {
        Err(r) => return r,
        Ok(JsonBody::Absent) => None,
        Ok(JsonBody::Malformed) => return error::invalid("Request body must be valid JSON"),
        Ok(JsonBody::Value(v)) => match v.get("grace_seconds") {
            None | Some(Value::Null) => None,
            Some(g) => match g.as_u64().filter(|g| *g <= MAX_GRACE_SECS) {
                Some(0) => None,
                Some(g) => Some(Duration::from_secs(g)),
                None => {
                    return error::invalid(&format!(
                        "grace_seconds must be an integer between 0 and {MAX_GRACE_SECS}"
                    ));
                }
            },
        },
    };
    match st
        .cti
        .issue_key(id, grace, audit_ctx(&st, &headers, &ext))
        .await
    {
        Ok((out, key)) => {
            let verb = if out.audit.action == AuditAction::Rotated {
                "rotated"
            } else {
                "created"
            };
            ok(json!({
                "success": true,
                "message": format!("API key {verb} successfully. Store this securely - it CANNOT be retrieved again."),
                "api_key": key.expose(),
                "app_id": out.app.id.to_string(),
                "app_name": out.app.name,
                "generated_at": format_ts(&out.audit.created_at),
                "warning": "This is the ONLY time this key will be displayed. Store it immediately in a secure location.",
                "usage": "Include this key in the 'x-app-api-key' header when making API requests",
            }))
        }
        Err(CtiError::AppNotFound) => error::app_not_found(),
        Err(CtiError::AppInactive) => error::error(StatusCode::FORBIDDEN, "App is not active"),
        Err(e) => internal_error("Failed to generate API key", &e),
    }
}

#[utoipa::path(
    post, path = "/internal/apps/{app_id}/api-key/revoke", tag = "internal", operation_id = "revoke_key",
    description = "Revokes the app's key.",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Revoked.", body = crate::openapi::KeyRevoked),
        (status = 400, description = "`app_id` is not a valid UUID.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn revoke_key(
    State(st): State<Shared>,
    ext: Extensions,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match st.cti.revoke_key(id, audit_ctx(&st, &headers, &ext)).await {
        Ok(out) => ok(json!({
            "success": true,
            "message": "API key revoked. App cannot authenticate until new key is generated.",
            "app_id": out.app.id.to_string(),
            "app_name": out.app.name,
            "revoked_at": format_ts(&out.audit.created_at),
        })),
        Err(CtiError::AppNotFound) => error::app_not_found(),
        Err(e) => internal_error("Failed to revoke API key", &e),
    }
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/api-key/status", tag = "internal", operation_id = "key_status",
    description = "Whether the app has a key, its hint and issue time.",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Key status.", body = crate::openapi::KeyStatus),
        (status = 400, description = "`app_id` is not a valid UUID.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn key_status(State(st): State<Shared>, Path(raw): Path<String>) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match st.cti.store().get_app(id).await {
        Ok(Some(a)) => ok(json!({
            "success": true,
            "app_id": a.id.to_string(),
            "app_name": a.name,
            "has_active_key": a.has_key,
            "key_hint": a.api_key_hint,
            "last_rotated": a.api_key_issued_at.as_ref().map_or_else(|| "Never".to_string(), format_ts),
            "action_needed": if a.has_key { Value::Null } else { json!("Generate a new API key") },
        })),
        Ok(None) => error::app_not_found(),
        Err(e) => internal_error("Failed to check API key status", &e),
    }
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "app_id": e.app_id.to_string(),
        "action": e.action.as_str(),
        "old_key_hint": e.old_key_hint,
        "new_key_hint": e.new_key_hint,
        "created_at": format_ts(&e.created_at),
    })
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/api-key/audit", tag = "internal", operation_id = "key_audit",
    description = "Key audit log, newest first.",
    params(("app_id" = String, Path, description = "App id (UUID)."), crate::openapi::PageParams),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Audit entries.", body = crate::openapi::AuditLog),
        (status = 400, description = "`app_id` is not a valid UUID.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn key_audit(State(st): State<Shared>, Path(raw): Path<String>, q: Q) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let req = page(&params(q), 50, 100);
    let store = st.cti.store();
    match store.get_app(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error::app_not_found(),
        Err(e) => return internal_error("Failed to fetch audit log", &e),
    }
    match store.list_audit(id, req).await {
        Ok(pg) => ok(json!({
            "success": true,
            "app_id": id.to_string(),
            "audit_log": pg.items.iter().map(audit_json).collect::<Vec<_>>(),
            "total": pg.total,
            "limit": req.limit,
            "offset": req.offset,
        })),
        Err(e) => internal_error("Failed to fetch audit log", &e),
    }
}

// ---------------------------------------------------------------- voicemails

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/voicemails", tag = "internal", operation_id = "internal_list_voicemails",
    description = "Voicemails of an app.",
    params(("app_id" = String, Path, description = "App id (UUID)."), crate::openapi::PageParams, ("dialpad_user_id" = Option<String>, Query, description = "Dialpad user.")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "A page of voicemails (with `app_id`).", body = crate::openapi::VoicemailList),
        (status = 400, description = "`app_id` is not a valid UUID.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn list_voicemails(
    State(st): State<Shared>,
    Path(raw): Path<String>,
    q: Q,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let p = params(q);
    let req = page(&p, 50, 100);
    let filter = VoicemailFilter {
        dialpad_user_id: user_filter(&p),
    };
    match st.cti.store().list_voicemails(id, &filter, req).await {
        Ok(pg) => ok(json!({
            "success": true,
            "data": pg.items.iter().map(|v| voicemail_json(v, true)).collect::<Vec<_>>(),
            "pagination": pagination(&pg, req),
        })),
        Err(e) => internal_error("Failed to list voicemails", &e),
    }
}

fn vm_ids(app: &str, vm: &str) -> Result<(cti_core::model::AppId, Uuid), Response> {
    match (strict_uuid(app), strict_uuid(vm)) {
        (Some(a), Some(v)) => Ok((cti_core::model::AppId(a), v)),
        _ => Err(error::invalid(
            "app_id and voicemail_id must be valid UUIDs",
        )),
    }
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/voicemails/{voicemail_id}", tag = "internal", operation_id = "internal_get_voicemail",
    description = "One voicemail.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("voicemail_id" = String, Path, description = "Voicemail id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The voicemail (with `app_id`).", body = crate::openapi::VoicemailOne),
        (status = 400, description = "Invalid ids.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Voicemail not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn get_voicemail(
    State(st): State<Shared>,
    Path((app, vm)): Path<(String, String)>,
) -> Response {
    let (app, vm) = match vm_ids(&app, &vm) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.cti.store().get_voicemail(app, vm).await {
        Ok(Some(v)) => ok(json!({ "success": true, "data": voicemail_json(&v, true) })),
        Ok(None) => error::error(StatusCode::NOT_FOUND, "Voicemail not found"),
        Err(e) => internal_error("Failed to fetch voicemail", &e),
    }
}

#[utoipa::path(
    delete, path = "/internal/apps/{app_id}/voicemails/{voicemail_id}", tag = "internal", operation_id = "internal_delete_voicemail",
    description = "Deletes a voicemail.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("voicemail_id" = String, Path, description = "Voicemail id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "`Voicemail deleted`.", body = crate::openapi::Done),
        (status = 400, description = "Invalid ids.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Voicemail not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn delete_voicemail(
    State(st): State<Shared>,
    Path((app, vm)): Path<(String, String)>,
) -> Response {
    let (app, vm) = match vm_ids(&app, &vm) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.cti.store().delete_voicemail(app, vm).await {
        Ok(true) => ok(json!({ "success": true, "message": "Voicemail deleted" })),
        Ok(false) => error::error(StatusCode::NOT_FOUND, "Voicemail not found"),
        Err(e) => internal_error("Failed to delete voicemail", &e),
    }
}

// ---------------------------------------------------------------- user mappings

fn mapping_json(m: &UserMapping) -> Value {
    json!({
        "id": m.id,
        "app_id": m.app_id.to_string(),
        "dialpad_user_id": m.dialpad_user_id,
        "crm_user_id": m.crm_user_id,
        "created_at": format_ts(&m.created_at),
        "updated_at": format_ts(&m.updated_at),
    })
}

/// JavaScript truthiness of a JSON value (`undefined`, `null`, `false`, `0`, `""` are falsy).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

const BAD_USER_ID: &str = "dialpad_user_id must be a positive integer";

/// A positive integer ≤ 2^63−1 given as a JSON integer or canonical decimal string.
fn dialpad_user_id(v: &Value) -> Option<DialpadId> {
    match v {
        Value::Number(_) => DialpadId::from_json(v),
        Value::String(s) => DialpadId::parse(s),
        _ => None,
    }
}

fn crm_user_id(v: &Value) -> Result<String, &'static str> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return Err("crm_user_id must be a string"),
    };
    if s.is_empty() {
        return Err("crm_user_id must be a non-empty string");
    }
    if s.chars().count() > MAX_CRM_ID_LEN {
        return Err("crm_user_id must be at most 255 characters");
    }
    Ok(s)
}

fn store_err(e: StoreError, msg: &str) -> Response {
    match e {
        StoreError::NotFound => error::app_not_found(),
        e => internal_error(msg, &e),
    }
}

#[utoipa::path(
    post, path = "/internal/apps/{app_id}/users/map", tag = "internal", operation_id = "map_user",
    description = "Maps a Dialpad user to a CRM user (upsert).",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    request_body(content = crate::openapi::MapUser, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The mapping.", body = crate::openapi::MappingSaved),
        (status = 400, description = "`Missing required fields` (with `required`) or invalid values.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn map_user(
    State(st): State<Shared>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: B,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let obj = match read_json(&headers, body) {
        Ok(JsonBody::Value(Value::Object(o))) => o,
        Ok(JsonBody::Malformed) => return error::invalid("Request body must be valid JSON"),
        Ok(_) => Map::new(),
        Err(r) => return r,
    };
    let (d, c) = (obj.get("dialpad_user_id"), obj.get("crm_user_id"));
    let (Some(d), Some(c)) = (d.filter(|v| truthy(Some(v))), c.filter(|v| truthy(Some(v)))) else {
        return error::json(
            StatusCode::BAD_REQUEST,
            json!({ "error": "Missing required fields", "required": ["dialpad_user_id", "crm_user_id"] }),
        );
    };
    let Some(d) = dialpad_user_id(d) else {
        return error::invalid(BAD_USER_ID);
    };
    let c = match crm_user_id(c) {
        Ok(c) => c,
        Err(m) => return error::invalid(m),
    };
    match st.cti.store().upsert_mapping(id, d, &c, st.cti.now()).await {
        Ok(m) => ok(
            json!({ "success": true, "data": mapping_json(&m), "message": "User mapping created/updated" }),
        ),
        Err(e) => store_err(e, "Failed to map user"),
    }
}

fn batch_item(v: &Value) -> Result<(DialpadId, String), String> {
    let Some(o) = v.as_object() else {
        return Err("must be an object with dialpad_user_id and crm_user_id".into());
    };
    let d = o.get("dialpad_user_id");
    if !truthy(d) {
        return Err("dialpad_user_id is required".into());
    }
    let d = d
        .and_then(dialpad_user_id)
        .ok_or_else(|| BAD_USER_ID.to_string())?;
    let c = o.get("crm_user_id");
    if !truthy(c) {
        return Err("crm_user_id is required".into());
    }
    let c = c
        .map(crm_user_id)
        .unwrap_or(Err("crm_user_id is required"))
        .map_err(str::to_string)?;
    Ok((d, c))
}

#[utoipa::path(
    post, path = "/internal/apps/{app_id}/users/batch-map", tag = "internal", operation_id = "batch_map",
    description = "Maps up to 1000 users in one transaction (upsert).",
    params(("app_id" = String, Path, description = "App id (UUID).")),
    request_body(content = crate::openapi::BatchMap, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Mapped.", body = crate::openapi::BatchMapped),
        (status = 400, description = "No `mappings` array (with `expected`), too many items or an invalid item.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`App not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn batch_map(
    State(st): State<Shared>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: B,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let v = match read_json(&headers, body) {
        Ok(JsonBody::Value(v)) => v,
        Ok(_) => Value::Null,
        Err(r) => return r,
    };
    let Some(items) = v.get("mappings").and_then(Value::as_array) else {
        return error::json(
            StatusCode::BAD_REQUEST,
            json!({ "error": "Invalid request", "expected": { "mappings": "array of {dialpad_user_id, crm_user_id}" } }),
        );
    };
    if items.len() > BATCH_CAP {
        return error::invalid(&format!("mappings must contain at most {BATCH_CAP} items"));
    }
    let mut pairs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match batch_item(item) {
            Ok(p) => pairs.push(p),
            Err(m) => return error::invalid(&format!("mappings[{i}]: {m}")),
        }
    }
    match st
        .cti
        .store()
        .upsert_mappings(id, &pairs, st.cti.now())
        .await
    {
        Ok(n) => {
            ok(json!({ "success": true, "message": format!("Batch mapped {n} users"), "count": n }))
        }
        Err(e) => store_err(e, "Failed to batch map users"),
    }
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/users/mappings", tag = "internal", operation_id = "list_mappings",
    description = "User mappings of an app.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("limit" = Option<u32>, Query, description = "Page size (default 100, max 1000)."), ("offset" = Option<u64>, Query, description = "Items to skip.")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "A page of mappings.", body = crate::openapi::MappingList),
        (status = 400, description = "`app_id` is not a valid UUID.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn list_mappings(
    State(st): State<Shared>,
    Path(raw): Path<String>,
    q: Q,
) -> Response {
    let id = match app_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let req = page(&params(q), 100, 1000);
    match st.cti.store().list_mappings(id, req).await {
        Ok(pg) => ok(json!({
            "success": true,
            "data": pg.items.iter().map(mapping_json).collect::<Vec<_>>(),
            "pagination": pagination(&pg, req),
        })),
        Err(e) => internal_error("Failed to list mappings", &e),
    }
}

fn mapping_found(r: Result<Option<UserMapping>, StoreError>) -> Response {
    match r {
        Ok(Some(m)) => ok(json!({ "success": true, "data": mapping_json(&m) })),
        Ok(None) => error::error(StatusCode::NOT_FOUND, "Mapping not found"),
        Err(e) => internal_error("Failed to fetch mapping", &e),
    }
}

fn mapping_deleted(r: Result<bool, StoreError>) -> Response {
    match r {
        Ok(true) => ok(json!({ "success": true, "message": "Mapping deleted" })),
        Ok(false) => error::error(StatusCode::NOT_FOUND, "Mapping not found"),
        Err(e) => internal_error("Failed to delete mapping", &e),
    }
}

fn app_and_user(app: &str, user: &str) -> Result<(cti_core::model::AppId, DialpadId), Response> {
    let id = app_id(app)?;
    let d = DialpadId::parse(user).ok_or_else(|| error::invalid(BAD_USER_ID))?;
    Ok((id, d))
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/users/mappings/dialpad/{dialpad_user_id}", tag = "internal", operation_id = "get_mapping_by_dialpad",
    description = "The mapping of a Dialpad user.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("dialpad_user_id" = String, Path, description = "Dialpad user id (positive integer).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The mapping.", body = crate::openapi::MappingOne),
        (status = 400, description = "Invalid ids.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Mapping not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn get_mapping_by_dialpad(
    State(st): State<Shared>,
    Path((app, user)): Path<(String, String)>,
) -> Response {
    match app_and_user(&app, &user) {
        Ok((id, d)) => mapping_found(st.cti.store().get_mapping_by_dialpad(id, d).await),
        Err(r) => r,
    }
}

#[utoipa::path(
    delete, path = "/internal/apps/{app_id}/users/mappings/dialpad/{dialpad_user_id}", tag = "internal", operation_id = "delete_mapping_by_dialpad",
    description = "Deletes the mapping of a Dialpad user.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("dialpad_user_id" = String, Path, description = "Dialpad user id (positive integer).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "`Mapping deleted`.", body = crate::openapi::Done),
        (status = 400, description = "Invalid ids.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Mapping not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn delete_mapping_by_dialpad(
    State(st): State<Shared>,
    Path((app, user)): Path<(String, String)>,
) -> Response {
    match app_and_user(&app, &user) {
        Ok((id, d)) => mapping_deleted(st.cti.store().delete_mapping_by_dialpad(id, d).await),
        Err(r) => r,
    }
}

#[utoipa::path(
    get, path = "/internal/apps/{app_id}/users/mappings/crm/{crm_user_id}", tag = "internal", operation_id = "get_mapping_by_crm",
    description = "The mapping of a CRM user.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("crm_user_id" = String, Path, description = "CRM user id (1–255 characters).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The mapping.", body = crate::openapi::MappingOne),
        (status = 400, description = "Invalid ids.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Mapping not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn get_mapping_by_crm(
    State(st): State<Shared>,
    Path((app, crm)): Path<(String, String)>,
) -> Response {
    let id = match app_id(&app) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if crm.trim().is_empty() || crm.chars().count() > MAX_CRM_ID_LEN {
        return error::invalid("crm_user_id must be a non-empty string of at most 255 characters");
    }
    mapping_found(st.cti.store().get_mapping_by_crm(id, crm.trim()).await)
}

#[utoipa::path(
    delete, path = "/internal/apps/{app_id}/users/mappings/{mapping_id}", tag = "internal", operation_id = "delete_mapping",
    description = "Deletes a mapping by its id.",
    params(("app_id" = String, Path, description = "App id (UUID)."), ("mapping_id" = String, Path, description = "Mapping id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "`Mapping deleted`.", body = crate::openapi::Done),
        (status = 400, description = "Invalid ids.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Mapping not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn delete_mapping(
    State(st): State<Shared>,
    Path((app, mapping)): Path<(String, String)>,
) -> Response {
    let id = match app_id(&app) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(m) = strict_uuid(&mapping) else {
        return error::invalid("mapping_id must be a valid UUID");
    };
    mapping_deleted(st.cti.store().delete_mapping(id, m).await)
}

// ---------------------------------------------------------------- webhooks

fn webhook_json(w: &DialpadWebhook) -> Value {
    json!({
        "id": w.id,
        "app_id": w.app_id.to_string(),
        "webhook_id": w.webhook_id,
        "hook_url": w.hook_url,
        "algo": w.algo,
        "signature_type": w.signature_type,
        "secret_set": w.secret_enc.is_some(),
        "created_at": format_ts(&w.created_at),
        "updated_at": format_ts(&w.updated_at),
    })
}

#[utoipa::path(
    get, path = "/internal/webhooks", tag = "internal", operation_id = "list_webhooks",
    description = "Dialpad webhook metadata of an app (secrets are never returned).",
    params(("app_id" = String, Query, description = "App id (UUID), required.")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Webhooks.", body = crate::openapi::WebhookList),
        (status = 400, description = "`app_id` missing or not a valid UUID.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn list_webhooks(State(st): State<Shared>, q: Q) -> Response {
    let p = params(q);
    let Some(raw) = p.get("app_id").filter(|s| !s.is_empty()) else {
        return error::error(StatusCode::BAD_REQUEST, "app_id query parameter required");
    };
    let id = match app_id(raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match st.cti.store().list_webhooks(id).await {
        Ok(list) => ok(json!({
            "success": true,
            "count": list.len(),
            "webhooks": list.iter().map(webhook_json).collect::<Vec<_>>(),
        })),
        Err(e) => internal_error("Failed to list webhooks", &e),
    }
}

fn webhook_id(raw: &str) -> Result<DialpadId, Response> {
    DialpadId::parse(raw).ok_or_else(|| error::invalid("webhook_id must be a positive integer"))
}

#[utoipa::path(
    get, path = "/internal/webhooks/{webhook_id}", tag = "internal", operation_id = "get_webhook",
    description = "One webhook's metadata.",
    params(("webhook_id" = String, Path, description = "Dialpad webhook id (positive integer).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "The webhook.", body = crate::openapi::WebhookOne),
        (status = 400, description = "Invalid id.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Webhook not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn get_webhook(State(st): State<Shared>, Path(raw): Path<String>) -> Response {
    let id = match webhook_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match st.cti.store().get_webhook(id).await {
        Ok(Some(w)) => ok(json!({ "success": true, "webhook": webhook_json(&w) })),
        Ok(None) => error::error(StatusCode::NOT_FOUND, "Webhook not found"),
        Err(e) => internal_error("Failed to retrieve webhook", &e),
    }
}

/// `DELETE /internal/webhooks/{id}[?local_only=true]`. Only the local metadata row is removed
/// in both cases for now (deleting the webhook at Dialpad is not wired in yet), and the answer
/// says so, like the original.
#[utoipa::path(
    delete, path = "/internal/webhooks/{webhook_id}", tag = "internal", operation_id = "delete_webhook",
    description = "Removes the local metadata of a webhook (delete it in Dialpad as well).",
    params(("webhook_id" = String, Path, description = "Dialpad webhook id (positive integer)."), ("local_only" = Option<bool>, Query, description = "Only the local row (the only behaviour for now).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Removed.", body = crate::openapi::Done),
        (status = 400, description = "Invalid id.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Webhook not found`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn delete_webhook(
    State(st): State<Shared>,
    Path(raw): Path<String>,
    q: Q,
) -> Response {
    let id = match webhook_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let local_only = params(q)
        .get("local_only")
        .is_some_and(|v| v == "true" || v == "1");
    let store = st.cti.store();
    let app = match store.get_webhook(id).await {
        Ok(Some(w)) => w.app_id,
        Ok(None) => return error::error(StatusCode::NOT_FOUND, "Webhook not found"),
        Err(e) => return internal_error("Failed to delete webhook", &e),
    };
    match store.delete_webhook(id).await {
        Ok(true) => {
            st.cti.invalidate(app);
            tracing::info!(webhook_id = %id, %app, local_only, "webhook metadata removed");
            ok(json!({
                "success": true,
                "message": "Webhook metadata removed. Remember to delete the webhook in Dialpad as well.",
            }))
        }
        Ok(false) => error::error(StatusCode::NOT_FOUND, "Webhook not found"),
        Err(e) => internal_error("Failed to delete webhook", &e),
    }
}

// ---------------------------------------------------------------- events

#[utoipa::path(
    get, path = "/internal/events/stats", tag = "internal", operation_id = "event_stats",
    description = "Inbox counters.",
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Counters.", body = crate::openapi::EventStats),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn event_stats(State(st): State<Shared>) -> Response {
    match st.cti.store().inbox_stats().await {
        Ok(s) => {
            let now = st.cti.now();
            let age = s
                .oldest_unprocessed_at
                .map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0);
            ok(json!({
                "success": true,
                "unprocessed": s.unprocessed,
                "processing": s.processing,
                "failed": s.failed,
                "dead": s.dead,
                "done": s.done,
                "ignored": s.ignored,
                "oldest_unprocessed_at": ts(s.oldest_unprocessed_at.as_ref()),
                "oldest_unprocessed_age_s": age,
            }))
        }
        Err(e) => internal_error("Failed to fetch event stats", &e),
    }
}

#[utoipa::path(
    post, path = "/internal/events/{event_id}/retry", tag = "internal", operation_id = "retry_event",
    description = "Puts a failed or dead-lettered event back in the queue.",
    params(("event_id" = String, Path, description = "Inbox event id (UUID).")),
    responses(
        crate::openapi::CommonErrors,
        crate::openapi::BearerErrors,
        (status = 200, description = "Queued again.", body = crate::openapi::EventRetried),
        (status = 400, description = "Invalid id.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`Event not found`.", body = crate::openapi::ErrorBody),
        (status = 409, description = "`Event is not failed or dead`.", body = crate::openapi::ErrorBody),
    ),
    security(("internal_bearer" = [])),
)]
pub(crate) async fn retry_event(State(st): State<Shared>, Path(raw): Path<String>) -> Response {
    let Some(id) = strict_uuid(&raw) else {
        return error::invalid("event_id must be a valid UUID");
    };
    let store = st.cti.store();
    match store.inbox_get(None, id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error::error(StatusCode::NOT_FOUND, "Event not found"),
        Err(e) => return internal_error("Failed to retry event", &e),
    }
    match store.inbox_redrive(None, id, st.cti.now()).await {
        Ok(true) => ok(json!({ "success": true, "event_id": id, "status": "pending" })),
        Ok(false) => error::error(StatusCode::CONFLICT, "Event is not failed or dead"),
        Err(e) => internal_error("Failed to retry event", &e),
    }
}
