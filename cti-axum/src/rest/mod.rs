//! REST routes: root, health, metrics, Dialpad webhooks, the client API (`/api/*`) and the
//! internal administration API (`/internal/*`), with the cross-cutting layers of spec §0
//! (request ids, CORS, body limits, JSON errors, rate limits, production HTTPS redirect).

// Handlers return `Result<_, Response>` for early exits; responses are built once per request, so
// boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub(crate) mod api;
pub(crate) mod internal;
pub(crate) mod ops;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, OriginalUri, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::{Shared, error, ratelimit};

/// REST + webhook routes with every layer applied.
pub fn routes(state: impl Into<Shared>) -> Router {
    let state: Shared = state.into();
    let webhooks = Router::new()
        .route("/webhooks/dialpad", post(ops::webhook))
        .route("/webhooks/dialpad/{app_id}", post(ops::webhook_for_app))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::webhook_limit,
        ))
        .layer(DefaultBodyLimit::max(state.config.webhook_body_limit));

    let api = Router::new()
        .route("/api/calls", get(api::list_calls))
        .route("/api/calls/active", get(api::list_active_calls))
        .route("/api/calls/{id}", get(api::get_call))
        .route("/api/messages", get(api::list_messages))
        .route("/api/messages/{id}", get(api::get_message))
        .route("/api/voicemails", get(api::list_voicemails))
        .route("/api/voicemails/{id}", get(api::get_voicemail))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::api_limit,
        ));

    let base = Router::new()
        .route("/", get(ops::root))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/metrics/prometheus", get(ops::prometheus))
        .route("/openapi.json", get(crate::openapi::serve));

    base.merge(webhooks)
        .merge(api)
        .nest("/internal", internal::routes(state.clone()))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(state.config.api_body_limit))
        .layer(middleware::map_response(error::normalize))
        .layer(middleware::from_fn_with_state(state.clone(), production))
        .layer(CorsLayer::permissive())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Production mode: plain-HTTP requests (no `x-forwarded-proto: https`) are redirected to
/// `PUBLIC_BASE_URL` + path (never to the client-supplied `Host`); HTTPS responses get HSTS.
async fn production(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if !state.config.production {
        return next.run(req).await;
    }
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if !https && let Some(base) = state.config.public_base_url.as_deref() {
        // The full path, also when the router is nested inside an application's router.
        let uri = req
            .extensions()
            .get::<OriginalUri>()
            .map_or_else(|| req.uri(), |o| &o.0);
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let location = format!("{}{}", base.trim_end_matches('/'), pq);
        let mut resp = StatusCode::FOUND.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    resp
}

/// Query parameters as a map; a malformed query string counts as empty.
pub(crate) type Params = HashMap<String, String>;

pub(crate) fn params(q: Result<Query<Params>, axum::extract::rejection::QueryRejection>) -> Params {
    q.map(|Query(p)| p).unwrap_or_default()
}

/// JS-`parseInt`-like: optional leading whitespace, optional sign, leading decimal digits.
pub(crate) fn parse_js_int(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    let v = digits.bytes().fold(0i64, |acc, d| {
        acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    Some(if neg { -v } else { v })
}

/// Limit/offset of a list endpoint (spec §1.8 REWRITE): missing, unparsable, 0 or negative
/// limit → `default`; above `max` → `max`; missing, unparsable or negative offset → 0.
pub(crate) fn page(p: &Params, default: u32, max: u32) -> cti_core::model::PageRequest {
    let limit = match p.get("limit").and_then(|s| parse_js_int(s)) {
        Some(n) if n > 0 => n.min(i64::from(max)) as u32,
        _ => default,
    };
    let offset = match p.get("offset").and_then(|s| parse_js_int(s)) {
        Some(n) if n > 0 => n as u64,
        _ => 0,
    };
    cti_core::model::PageRequest::new(limit, offset)
}

/// `{"limit","offset","total","has_more"}`.
pub(crate) fn pagination<T>(
    pg: &cti_core::model::Page<T>,
    req: cti_core::model::PageRequest,
) -> Value {
    serde_json::json!({
        "limit": req.limit, "offset": req.offset, "total": pg.total, "has_more": pg.has_more(req),
    })
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn uuid_groups(s: &str) -> Option<Vec<&str>> {
    let g: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    (g.len() == 5 && g.iter().zip(lens).all(|(p, l)| p.len() == l && is_hex(p))).then_some(g)
}

/// Loose 8-4-4-4-12 hex pattern of `/api/*/:id` (spec §1.10, §5.6).
pub(crate) fn loose_uuid(s: &str) -> Option<uuid::Uuid> {
    uuid_groups(s)?;
    uuid::Uuid::parse_str(s).ok()
}

/// Strict rule of the internal routes (spec §5.6): version 1–8, variant 8–b, or nil/max.
pub(crate) fn strict_uuid(s: &str) -> Option<uuid::Uuid> {
    let g = uuid_groups(s)?;
    let lower = s.to_ascii_lowercase();
    let special = lower == "00000000-0000-0000-0000-000000000000"
        || lower == "ffffffff-ffff-ffff-ffff-ffffffffffff";
    let version_ok = matches!(g[2].as_bytes()[0], b'1'..=b'8');
    let variant_ok = matches!(
        g[3].as_bytes()[0].to_ascii_lowercase(),
        b'8' | b'9' | b'a' | b'b'
    );
    if special || (version_ok && variant_ok) {
        uuid::Uuid::parse_str(s).ok()
    } else {
        None
    }
}

/// A JSON request body as read by the admin routes.
pub(crate) enum JsonBody {
    /// Parsed JSON (an empty body with a JSON content type counts as `{}`).
    Value(Value),
    /// No JSON content type.
    Absent,
    /// JSON content type but malformed.
    Malformed,
}

/// Reads a JSON body: `413` JSON when over the limit.
pub(crate) fn read_json(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<JsonBody, Response> {
    let bytes = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(error::payload_too_large());
        }
        Err(_) => return Ok(JsonBody::Malformed),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|ct| {
            ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
        });
    if !is_json {
        return Ok(JsonBody::Absent);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonBody::Value(Value::Object(Default::default())));
    }
    Ok(serde_json::from_slice(&bytes).map_or(JsonBody::Malformed, JsonBody::Value))
}

/// Optional RFC 3339 millisecond timestamp as JSON.
pub(crate) fn ts(t: Option<&cti_core::model::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(cti_core::model::format_ts(t))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_int() {
        assert_eq!(parse_js_int("12abc"), Some(12));
        assert_eq!(parse_js_int("1.9"), Some(1));
        assert_eq!(parse_js_int("1e3"), Some(1));
        assert_eq!(parse_js_int("-5"), Some(-5));
        assert_eq!(parse_js_int(" +7"), Some(7));
        assert_eq!(parse_js_int("abc"), None);
        assert_eq!(parse_js_int("-"), None);
        assert_eq!(parse_js_int("99999999999999999999999"), Some(i64::MAX));
    }

    #[test]
    fn paging_rules() {
        let p = |l: &str, o: &str| {
            let mut m = Params::new();
            m.insert("limit".into(), l.into());
            m.insert("offset".into(), o.into());
            page(&m, 50, 100)
        };
        assert_eq!(
            (
                p("500", "0").limit,
                p("-5", "0").limit,
                p("0", "-10").offset
            ),
            (100, 50, 0)
        );
        assert_eq!(
            (
                p("abc", "abc").limit,
                p("2abc", "3").limit,
                p("2", "3").offset
            ),
            (50, 2, 3)
        );
        assert_eq!(page(&Params::new(), 100, 1000).limit, 100);
    }

    #[test]
    fn uuid_rules() {
        assert!(strict_uuid("550e8400-e29b-41d4-a716-446655440000").is_some());
        assert!(strict_uuid("550e8400-e29b-01d4-a716-446655440000").is_none());
        assert!(strict_uuid("550e8400-e29b-41d4-c716-446655440000").is_none());
        assert!(strict_uuid("00000000-0000-0000-0000-000000000000").is_some());
        assert!(strict_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF").is_some());
        assert!(strict_uuid("not-a-uuid").is_none());
        assert!(loose_uuid("550e8400-e29b-01d4-a716-446655440000").is_some());
        assert!(loose_uuid("550e8400e29b41d4a716446655440000").is_none());
        assert!(loose_uuid("{550e8400-e29b-41d4-a716-446655440000}").is_none());
    }
}
