//! JSON error bodies shared by every route (spec §0.2 REWRITE, §1.12) and the response
//! normaliser that turns framework-generated plain-text errors (404, 405, 413, extractor
//! rejections) into `{"error": …}` JSON.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A JSON response with the given status.
pub fn json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `{"error": msg}` with the given status.
pub fn error(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "error": msg }))
}

/// `400 {"error":"Invalid request","message": msg}` — the shared validation body.
pub fn invalid(msg: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        json!({ "error": "Invalid request", "message": msg }),
    )
}

/// `400 {"error":"Invalid request","message":"app_id must be a valid UUID"}`.
pub fn invalid_app_id() -> Response {
    invalid("app_id must be a valid UUID")
}

/// `404 {"error":"App not found"}`.
pub fn app_not_found() -> Response {
    error(StatusCode::NOT_FOUND, "App not found")
}

/// `404 {"error":"Not Found"}` — the router fallback.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not Found")
}

/// `413 {"error":"Payload too large"}`.
pub fn payload_too_large() -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large")
}

/// `401` of the internal bearer layer (§1.12).
pub fn internal_unauthorized() -> Response {
    json(
        StatusCode::UNAUTHORIZED,
        json!({
            "error": "Unauthorized",
            "message": "Missing or invalid Authorization header. Use: Authorization: Bearer <secret>"
        }),
    )
}

/// `403` of the internal bearer layer (§1.12).
pub fn internal_forbidden() -> Response {
    json(
        StatusCode::FORBIDDEN,
        json!({ "error": "Forbidden", "message": "Invalid authentication token" }),
    )
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

/// Replaces the body of any error response that is not already JSON (axum's default 405,
/// extractor rejections, body-limit 413) with `{"error": <text>}`.
pub async fn normalize(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let text = match status {
        StatusCode::NOT_FOUND => "Not Found",
        StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported Media Type",
        StatusCode::BAD_REQUEST => "Bad Request",
        StatusCode::TOO_MANY_REQUESTS => "Too Many Requests",
        s if s.is_server_error() => "Internal Server Error",
        s => s.canonical_reason().unwrap_or("Error"),
    };
    let (mut parts, _) = resp.into_parts();
    let body = json!({ "error": text }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
