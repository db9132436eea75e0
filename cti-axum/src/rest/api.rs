//! Client API (`/api/*`, `x-app-api-key`): calls, messages, voicemails (spec §1.8–§1.12, §1.22).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cti_core::model::{App, Call, CallStatus, DialpadId, Direction, Message, Voicemail};
use cti_core::store::{CallFilter, MessageFilter, VoicemailFilter};
use serde_json::{Value, json};

use super::{Params, loose_uuid, page, pagination, params, parse_js_int, ts};
use crate::error;

/// Authenticates `x-app-api-key` (bodies of §1.12).
pub(crate) async fn authenticate(
    st: &crate::AppState,
    headers: &HeaderMap,
) -> Result<App, Response> {
    let Some(raw) = headers.get("x-app-api-key") else {
        return Err(unauthorized("Missing x-app-api-key header"));
    };
    if raw.is_empty() {
        return Err(unauthorized("Missing x-app-api-key header"));
    }
    let Ok(key) = raw.to_str() else {
        return Err(unauthorized("Invalid API key"));
    };
    match st.cti.authenticate(key).await {
        Ok(Some(app)) => Ok(app),
        Ok(None) => Err(unauthorized("Invalid API key")),
        Err(e) => {
            tracing::error!(error = %e, "API key authentication failed");
            Err(error::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "Internal Server Error", "message": "Authentication failed" }),
            ))
        }
    }
}

fn unauthorized(msg: &str) -> Response {
    error::json(
        StatusCode::UNAUTHORIZED,
        json!({ "error": "Unauthorized", "message": msg }),
    )
}

fn fail(status: StatusCode, err: &str, msg: &str) -> Response {
    error::json(
        status,
        json!({ "success": false, "error": err, "message": msg }),
    )
}

fn server_error(msg: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "{msg}");
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        msg,
    )
}

/// The 12 keys of a call (§1.8).
pub(crate) fn call_json(c: &Call) -> Value {
    json!({
        "id": c.id,
        "dialpad_call_id": c.dialpad_call_id,
        "direction": c.direction.map(Direction::as_str),
        "from_number": c.from_number,
        "to_number": c.to_number,
        "status": c.status.as_str(),
        "dialpad_user_id": c.dialpad_user_id,
        "started_at": ts(c.started_at.as_ref()),
        "ended_at": ts(c.ended_at.as_ref()),
        "duration_seconds": c.duration_seconds,
        "recording_url": c.recording_url,
        "created_at": ts(Some(&c.created_at)),
    })
}

/// The 9 keys of a message (§1.11).
pub(crate) fn message_json(m: &Message) -> Value {
    json!({
        "id": m.id,
        "dialpad_message_id": m.dialpad_message_id,
        "direction": m.direction.map(Direction::as_str),
        "from_number": m.from_number,
        "to_number": m.to_number,
        "text": m.text,
        "dialpad_user_id": m.dialpad_user_id,
        "sent_at": ts(m.sent_at.as_ref()),
        "created_at": ts(Some(&m.created_at)),
    })
}

/// A voicemail row (§1.18), with or without `app_id`.
pub(crate) fn voicemail_json(v: &Voicemail, with_app: bool) -> Value {
    let mut o = json!({
        "id": v.id,
        "dialpad_call_id": v.dialpad_call_id,
        "dialpad_user_id": v.dialpad_user_id,
        "from_number": v.from_number,
        "to_number": v.to_number,
        "recording_url": v.recording_url,
        "transcript": v.transcript,
        "duration_seconds": v.duration_seconds,
        "created_at": ts(Some(&v.created_at)),
        "updated_at": ts(Some(&v.updated_at)),
    });
    if with_app && let Some(m) = o.as_object_mut() {
        m.insert("app_id".into(), json!(v.app_id.to_string()));
    }
    o
}

fn trimmed(p: &Params, k: &str) -> Option<String> {
    p.get(k).map(|s| s.trim().to_string())
}

fn direction(p: &Params) -> Option<Direction> {
    p.get("direction")
        .and_then(|d| Direction::parse_filter(&d.to_ascii_lowercase()))
}

/// `parseInt`-like Dialpad user filter; NaN, 0 and negatives are ignored.
pub(crate) fn user_filter(p: &Params) -> Option<DialpadId> {
    p.get("dialpad_user_id")
        .and_then(|s| parse_js_int(s))
        .filter(|n| *n > 0)
        .map(|n| DialpadId(n as u64))
}

async fn calls(
    st: crate::Shared,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
    active: bool,
) -> Response {
    let app = match authenticate(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let p = params(q);
    let statuses = if active {
        Some(vec![CallStatus::Ringing, CallStatus::Active])
    } else {
        p.get("status")
            .and_then(|s| CallStatus::parse(&s.to_ascii_lowercase()))
            .map(|s| vec![s])
    };
    let filter = CallFilter {
        statuses,
        direction: direction(&p),
        from: trimmed(&p, "from"),
        to: trimmed(&p, "to"),
    };
    let req = page(&p, 50, 100);
    match st.cti.store().list_calls(app.id, &filter, req).await {
        Ok(pg) => error::json(
            StatusCode::OK,
            json!({
                "success": true,
                "data": pg.items.iter().map(call_json).collect::<Vec<_>>(),
                "pagination": pagination(&pg, req),
            }),
        ),
        Err(e) => server_error(
            if active {
                "Failed to fetch active calls"
            } else {
                "Failed to fetch calls"
            },
            &e,
        ),
    }
}

/// `GET /api/calls`.
#[utoipa::path(
    get, path = "/api/calls", tag = "client", operation_id = "list_calls",
    description = "Calls of the app.",
    params(
        crate::openapi::PageParams,
        ("status" = Option<String>, Query, description = "ringing, active, ended, missed, rejected or voicemail."),
        ("direction" = Option<String>, Query, description = "inbound or outbound."),
        ("from" = Option<String>, Query, description = "Caller number."),
        ("to" = Option<String>, Query, description = "Callee number."),
    ),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "A page, newest first.", body = crate::openapi::CallList),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn list_calls(
    State(st): State<crate::Shared>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    calls(st, headers, q, false).await
}

/// `GET /api/calls/active`.
#[utoipa::path(
    get, path = "/api/calls/active", tag = "client", operation_id = "list_active_calls",
    description = "Calls ringing or in progress.",
    params(
        crate::openapi::PageParams,
        ("direction" = Option<String>, Query, description = "inbound or outbound."),
        ("from" = Option<String>, Query, description = "Caller number."),
        ("to" = Option<String>, Query, description = "Callee number."),
    ),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "A page, newest first.", body = crate::openapi::CallList),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn list_active_calls(
    State(st): State<crate::Shared>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    calls(st, headers, q, true).await
}

/// `GET /api/calls/{id}`.
#[utoipa::path(
    get, path = "/api/calls/{id}", tag = "client", operation_id = "get_call",
    params(("id" = String, Path, description = "Call id (UUID).")),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "The call.", body = crate::openapi::CallOne),
        (status = 400, description = "Malformed id.", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such call for this app.", body = crate::openapi::ErrorBody),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn get_call(
    State(st): State<crate::Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = match authenticate(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(id) = loose_uuid(&id) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "Invalid call ID format",
        );
    };
    match st.cti.store().get_call(app.id, id).await {
        Ok(Some(c)) => error::json(
            StatusCode::OK,
            json!({ "success": true, "data": call_json(&c) }),
        ),
        Ok(None) => fail(StatusCode::NOT_FOUND, "Not Found", "Call not found"),
        Err(e) => server_error("Failed to fetch call", &e),
    }
}

/// `GET /api/messages`.
#[utoipa::path(
    get, path = "/api/messages", tag = "client", operation_id = "list_messages",
    description = "SMS of the app.",
    params(
        crate::openapi::PageParams,
        ("direction" = Option<String>, Query, description = "inbound or outbound."),
        ("from" = Option<String>, Query, description = "Sender number."),
        ("to" = Option<String>, Query, description = "Recipient number."),
        ("dialpad_user_id" = Option<String>, Query, description = "Dialpad user."),
    ),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "A page, newest first.", body = crate::openapi::MessageList),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn list_messages(
    State(st): State<crate::Shared>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let app = match authenticate(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let p = params(q);
    let filter = MessageFilter {
        direction: direction(&p),
        from: trimmed(&p, "from"),
        to: trimmed(&p, "to"),
        dialpad_user_id: user_filter(&p),
    };
    let req = page(&p, 50, 100);
    match st.cti.store().list_messages(app.id, &filter, req).await {
        Ok(pg) => error::json(
            StatusCode::OK,
            json!({
                "success": true,
                "data": pg.items.iter().map(message_json).collect::<Vec<_>>(),
                "pagination": pagination(&pg, req),
            }),
        ),
        Err(e) => server_error("Failed to fetch messages", &e),
    }
}

/// `GET /api/messages/{id}`.
#[utoipa::path(
    get, path = "/api/messages/{id}", tag = "client", operation_id = "get_message",
    params(("id" = String, Path, description = "Message id (UUID).")),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "The message.", body = crate::openapi::MessageOne),
        (status = 400, description = "Malformed id.", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such message for this app.", body = crate::openapi::ErrorBody),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn get_message(
    State(st): State<crate::Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = match authenticate(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(id) = loose_uuid(&id) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "Invalid message ID format",
        );
    };
    match st.cti.store().get_message(app.id, id).await {
        Ok(Some(m)) => error::json(
            StatusCode::OK,
            json!({ "success": true, "data": message_json(&m) }),
        ),
        Ok(None) => fail(StatusCode::NOT_FOUND, "Not Found", "Message not found"),
        Err(e) => server_error("Failed to fetch message", &e),
    }
}

/// `GET /api/voicemails` (NEW, §1.22).
#[utoipa::path(
    get, path = "/api/voicemails", tag = "client", operation_id = "list_voicemails",
    description = "Voicemails of the app.",
    params(
        crate::openapi::PageParams,
        ("dialpad_user_id" = Option<String>, Query, description = "Dialpad user."),
    ),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "A page, newest first.", body = crate::openapi::VoicemailList),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn list_voicemails(
    State(st): State<crate::Shared>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let app = match authenticate(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let p = params(q);
    let filter = VoicemailFilter {
        dialpad_user_id: user_filter(&p),
    };
    let req = page(&p, 50, 100);
    match st.cti.store().list_voicemails(app.id, &filter, req).await {
        Ok(pg) => error::json(
            StatusCode::OK,
            json!({
                "success": true,
                "data": pg.items.iter().map(|v| voicemail_json(v, false)).collect::<Vec<_>>(),
                "pagination": pagination(&pg, req),
            }),
        ),
        Err(e) => server_error("Failed to fetch voicemails", &e),
    }
}

/// `GET /api/voicemails/{id}` (NEW, §1.22).
#[utoipa::path(
    get, path = "/api/voicemails/{id}", tag = "client", operation_id = "get_voicemail",
    params(("id" = String, Path, description = "Voicemail id (UUID).")),
    responses(
        crate::openapi::ClientErrors,
        (status = 200, description = "The voicemail.", body = crate::openapi::VoicemailOne),
        (status = 400, description = "Malformed id.", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such voicemail for this app.", body = crate::openapi::ErrorBody),
    ),
    security(("app_api_key" = [])),
)]
pub(crate) async fn get_voicemail(
    State(st): State<crate::Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = match authenticate(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(id) = loose_uuid(&id) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "Invalid voicemail ID format",
        );
    };
    match st.cti.store().get_voicemail(app.id, id).await {
        Ok(Some(v)) => error::json(
            StatusCode::OK,
            json!({ "success": true, "data": voicemail_json(&v, false) }),
        ),
        Ok(None) => fail(StatusCode::NOT_FOUND, "Not Found", "Voicemail not found"),
        Err(e) => server_error("Failed to fetch voicemail", &e),
    }
}
