//! The OpenAPI 3.1 description of the router, served at `GET /openapi.json`.
//!
//! Generated with [`utoipa`] from the `#[utoipa::path]` annotations on the handlers in
//! [`crate::rest`] (and one for `/ws`, below). The response schemas are documentation types:
//! the handlers build their bodies with `serde_json::json!`, and a test in this module checks
//! that every answer of every route matches the schema documented for its status, and that the
//! documented paths and methods are exactly the routes the router serves.
//!
//! Paths are relative to where the router is mounted: an application that nests it with
//! `.nest("/cti", …)` serves them under `/cti`.

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Security scheme of the client API: the app's key in the `x-app-api-key` header.
pub const APP_API_KEY: &str = "app_api_key";
/// Security scheme of `/ws`: the app's key in the `api_key` query parameter.
pub const APP_API_KEY_QUERY: &str = "app_api_key_query";
/// Security scheme of `/internal/*`: `Authorization: Bearer <INTERNAL_API_SECRET>`.
pub const INTERNAL_BEARER: &str = "internal_bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CTI server",
        description = "Dialpad computer-telephony integration: webhooks, the client API, the \
                       internal administration API and the `/ws` live stream. Every error body is \
                       JSON; every response echoes `x-request-id`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        crate::rest::ops::root,
        crate::rest::ops::health,
        crate::rest::ops::metrics,
        crate::rest::ops::prometheus,
        serve,
        crate::rest::ops::webhook,
        crate::rest::ops::webhook_for_app,
        crate::rest::api::list_calls,
        crate::rest::api::list_active_calls,
        crate::rest::api::get_call,
        crate::rest::api::list_messages,
        crate::rest::api::get_message,
        crate::rest::api::list_voicemails,
        crate::rest::api::get_voicemail,
        crate::rest::internal::create_app,
        crate::rest::internal::list_apps,
        crate::rest::internal::get_app,
        crate::rest::internal::patch_app,
        crate::rest::internal::issue_key,
        crate::rest::internal::revoke_key,
        crate::rest::internal::key_status,
        crate::rest::internal::key_audit,
        crate::rest::internal::list_voicemails,
        crate::rest::internal::get_voicemail,
        crate::rest::internal::delete_voicemail,
        crate::rest::internal::map_user,
        crate::rest::internal::batch_map,
        crate::rest::internal::list_mappings,
        crate::rest::internal::get_mapping_by_dialpad,
        crate::rest::internal::delete_mapping_by_dialpad,
        crate::rest::internal::get_mapping_by_crm,
        crate::rest::internal::delete_mapping,
        crate::rest::internal::list_webhooks,
        crate::rest::internal::get_webhook,
        crate::rest::internal::delete_webhook,
        crate::rest::internal::event_stats,
        crate::rest::internal::retry_event,
        ws_upgrade,
    ),
    // Named only inside `WebhookResponses` (an `IntoResponses` type), which utoipa does not
    // collect schemas from.
    components(schemas(WebhookReceived)),
    modifiers(&Security),
    tags(
        (name = "ops", description = "Root, health, metrics and this document."),
        (name = "webhooks", description = "Dialpad event intake (signed JWT or HMAC-signed JSON)."),
        (name = "client", description = "Client API of a tenant app (`x-app-api-key`)."),
        (name = "internal", description = "Administration API (`Authorization: Bearer <INTERNAL_API_SECRET>`)."),
        (name = "websocket", description = "Live events of a tenant app."),
    ),
)]
struct ApiDoc;

/// Adds the security schemes (components cannot be declared inline in `#[openapi]`).
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            APP_API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-app-api-key",
                "The tenant app's API key (issued by `POST /internal/apps` or `…/api-key`).",
            ))),
        );
        components.add_security_scheme(
            APP_API_KEY_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "api_key",
                "The tenant app's API key as a query parameter (WebSocket clients that cannot \
                 set headers).",
            ))),
        );
        components.add_security_scheme(
            INTERNAL_BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`INTERNAL_API_SECRET`. Missing or other scheme: 401; wrong secret: 403.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of [`crate::router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        openapi().to_pretty_json().unwrap_or_else(|e| {
            format!("{{\"error\":\"cannot render the OpenAPI document: {e}\"}}")
        })
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get, path = "/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3.1 document.", body = Object)),
)]
pub(crate) async fn serve() -> Response {
    let mut resp = (StatusCode::OK, json()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Documents `GET /ws` (the handler lives in [`crate::ws`]).
#[utoipa::path(
    get, path = "/ws", tag = "websocket", operation_id = "ws_upgrade",
    description = "WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`). The key is \
                   checked before the upgrade. Each text frame is one flat JSON event with a \
                   per-app, gap-free `seq`; see docs/api.md for events, resume and close codes.",
    params(
        ("api_key" = Option<String>, Query, description = "The app's API key (or header `x-app-api-key`)."),
        ("crm_user_id" = Option<String>, Query, description = "Only events targeted at this CRM user, plus untargeted ones."),
        ("since" = Option<u64>, Query, description = "Resume after this `seq` (events are kept 24 h)."),
    ),
    responses(
        (status = 101, description = "Switching protocols: the live event stream."),
        (status = 400, description = "Invalid `since` or `crm_user_id`, or not a WebSocket upgrade request.", body = ErrorBody),
        (status = 401, description = "No API key.", body = ErrorBody),
        (status = 403, description = "Invalid key or inactive app.", body = ErrorBody),
        (status = 503, description = "Shutting down, or the database is unreachable.", body = ErrorBody),
    ),
    security(("app_api_key" = []), ("app_api_key_query" = [])),
)]
#[allow(dead_code)] // documentation only: `crate::ws::routes` serves the route
fn ws_upgrade() {}

pub(crate) use schema::*;

/// Documentation types: never built, only described. The handlers write the same keys with
/// `json!`; the route test compares real answers against them.
#[allow(dead_code)]
mod schema {
    use utoipa::ToSchema;

    /// Every error body: `{"error": …}`, with `message` on validation and authentication errors.
    #[derive(ToSchema)]
    pub(crate) struct ErrorBody {
        /// `false` on the client API's own errors (`/api/*` 400, 404 and 500).
        success: Option<bool>,
        /// Short error, e.g. `Not Found`, `Invalid request`, `Unauthorized`.
        error: String,
        /// Details.
        message: Option<String>,
        /// `POST …/users/map`: the required fields.
        required: Option<Vec<String>>,
        /// `POST …/users/batch-map`: the expected body.
        #[schema(value_type = Option<Object>)]
        expected: Option<()>,
    }

    /// The bearer check of every `/internal/*` route.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum BearerErrors {
        /// Missing bearer, or another scheme.
        #[response(status = 401)]
        Missing(ErrorBody),
        /// Wrong bearer secret.
        #[response(status = 403)]
        Wrong(ErrorBody),
    }

    /// Answers most routes can give: the rate limit and storage errors.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum CommonErrors {
        /// Rate limited (`Retry-After`).
        #[response(status = 429)]
        RateLimited(ErrorBody),
        /// Database error.
        #[response(status = 500)]
        Database(ErrorBody),
    }

    /// `/api/*` errors: the app key check, the rate limit and storage errors.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum ClientErrors {
        /// Missing or invalid `x-app-api-key`.
        #[response(status = 401)]
        Unauthorized(ErrorBody),
        /// Rate limited (`Retry-After`).
        #[response(status = 429)]
        RateLimited(ErrorBody),
        /// Database error.
        #[response(status = 500)]
        Database(ErrorBody),
    }

    /// Every answer of the two webhook routes.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum WebhookResponses {
        /// Stored durably (`duplicate: true` for a retry).
        #[response(status = 200)]
        Received(WebhookReceived),
        /// `Invalid JWT format`, `Invalid JSON`, `Invalid webhook payload` or `Invalid request body`.
        #[response(status = 400)]
        Invalid(ErrorBody),
        /// `Invalid JWT signature`, `Invalid webhook signature` or `Unknown or unauthorized app`.
        #[response(status = 401)]
        Unauthorized(ErrorBody),
        /// Body over `WEBHOOK_BODY_LIMIT`.
        #[response(status = 413)]
        TooLarge(ErrorBody),
        /// Too many rejected requests from this client (`Retry-After`).
        #[response(status = 429)]
        RateLimited(ErrorBody),
        /// `Webhook persistence failed`: storage error.
        #[response(status = 500)]
        Storage(ErrorBody),
        /// `Webhook persistence failed`: database down, Dialpad retries.
        #[response(status = 503)]
        Unavailable(ErrorBody),
    }

    /// `limit` and `offset` of the paged lists.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub(crate) struct PageParams {
        /// Page size (default 50, max 100).
        limit: Option<u32>,
        /// Items to skip.
        offset: Option<u64>,
    }

    /// Paging of a list.
    #[derive(ToSchema)]
    pub(crate) struct Pagination {
        /// Page size used.
        limit: u32,
        /// Items skipped.
        offset: u64,
        /// Items matching the filters.
        total: u64,
        /// More items after this page.
        has_more: bool,
    }

    /// `GET /`.
    #[derive(ToSchema)]
    pub(crate) struct Root {
        /// `CTI Server is running`.
        message: String,
    }

    /// `GET /health`.
    #[derive(ToSchema)]
    pub(crate) struct Health {
        /// `healthy` or `unhealthy`.
        status: String,
        /// Now (RFC 3339, milliseconds).
        #[schema(format = DateTime)]
        timestamp: String,
        /// Seconds since the process started.
        uptime: f64,
        /// `NODE_ENV` (`sandbox` when unset).
        environment: String,
        /// Listening port.
        port: u16,
        /// `ok` or `unreachable`.
        database: String,
        /// `running`, or `stopped` while shutting down.
        processor: String,
    }

    /// `memory` of `/metrics` (approximations from the process' resident memory, MiB).
    #[derive(ToSchema)]
    pub(crate) struct MetricsMemory {
        /// Private resident memory.
        heap_used_mb: u64,
        /// Resident memory.
        heap_total_mb: u64,
        /// Shared resident memory.
        external_mb: u64,
    }

    /// `websocket` of `/metrics`.
    #[derive(ToSchema)]
    pub(crate) struct MetricsWebsocket {
        /// Live subscriptions.
        connections_total: u64,
        /// Apps with at least one subscription.
        apps: u64,
    }

    /// `events` of `/metrics` (`null` values when the database is unreachable).
    #[derive(ToSchema)]
    pub(crate) struct MetricsEvents {
        /// Events waiting for processing.
        unprocessed: Option<u64>,
        /// Events held by workers.
        processing: Option<u64>,
        /// Age of the oldest waiting event, seconds.
        oldest_unprocessed_age_s: Option<f64>,
        /// Dead-lettered events.
        dead_lettered: Option<u64>,
    }

    /// `db` of `/metrics`.
    #[derive(ToSchema)]
    pub(crate) struct MetricsDb {
        /// `memory`, `sqlite` or `postgres`.
        backend: String,
    }

    /// `GET /metrics`.
    #[derive(ToSchema)]
    pub(crate) struct Metrics {
        /// Now.
        #[schema(format = DateTime)]
        timestamp: String,
        /// Memory.
        memory: MetricsMemory,
        /// Seconds since the process started.
        uptime_seconds: f64,
        /// WebSocket subscriptions.
        websocket: MetricsWebsocket,
        /// Inbox.
        events: MetricsEvents,
        /// Database.
        db: MetricsDb,
    }

    /// A webhook was stored (or was a retry of one already stored).
    #[derive(ToSchema)]
    pub(crate) struct WebhookReceived {
        /// Always `true`.
        received: bool,
        /// `true` for a retry of an event already stored.
        duplicate: Option<bool>,
    }

    /// Direction of a call or message.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub(crate) enum Direction {
        /// Inbound.
        Inbound,
        /// Outbound.
        Outbound,
    }

    /// Status of a call.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub(crate) enum CallStatus {
        /// Ringing.
        Ringing,
        /// Answered.
        Active,
        /// Hung up.
        Ended,
        /// Not answered.
        Missed,
        /// Rejected.
        Rejected,
        /// Went to voicemail.
        Voicemail,
    }

    /// A call (the 12 keys of the original API). Dialpad ids are strings.
    #[derive(ToSchema)]
    pub(crate) struct Call {
        /// Call id.
        id: uuid::Uuid,
        /// Dialpad `call_id`.
        dialpad_call_id: String,
        /// Direction, when known.
        direction: Option<Direction>,
        /// Caller.
        from_number: Option<String>,
        /// Callee.
        to_number: Option<String>,
        /// Status.
        status: CallStatus,
        /// Dialpad user the call targets.
        dialpad_user_id: Option<String>,
        /// Start.
        #[schema(format = DateTime)]
        started_at: Option<String>,
        /// End.
        #[schema(format = DateTime)]
        ended_at: Option<String>,
        /// Duration, whole seconds.
        duration_seconds: Option<i64>,
        /// Recording link.
        recording_url: Option<String>,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
    }

    /// A page of calls.
    #[derive(ToSchema)]
    pub(crate) struct CallList {
        /// Always `true`.
        success: bool,
        /// Calls, newest first.
        data: Vec<Call>,
        /// Paging.
        pagination: Pagination,
    }

    /// One call.
    #[derive(ToSchema)]
    pub(crate) struct CallOne {
        /// Always `true`.
        success: bool,
        /// The call.
        data: Call,
    }

    /// An SMS.
    #[derive(ToSchema)]
    pub(crate) struct Message {
        /// Message id.
        id: uuid::Uuid,
        /// Dialpad message id.
        dialpad_message_id: String,
        /// Direction, when known.
        direction: Option<Direction>,
        /// Sender.
        from_number: Option<String>,
        /// First recipient.
        to_number: Option<String>,
        /// Text.
        text: Option<String>,
        /// Dialpad user.
        dialpad_user_id: Option<String>,
        /// Send time.
        #[schema(format = DateTime)]
        sent_at: Option<String>,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
    }

    /// A page of messages.
    #[derive(ToSchema)]
    pub(crate) struct MessageList {
        /// Always `true`.
        success: bool,
        /// Messages, newest first.
        data: Vec<Message>,
        /// Paging.
        pagination: Pagination,
    }

    /// One message.
    #[derive(ToSchema)]
    pub(crate) struct MessageOne {
        /// Always `true`.
        success: bool,
        /// The message.
        data: Message,
    }

    /// A voicemail (`app_id` only on the internal routes).
    #[derive(ToSchema)]
    pub(crate) struct Voicemail {
        /// Voicemail id.
        id: uuid::Uuid,
        /// Tenant (internal routes only).
        app_id: Option<uuid::Uuid>,
        /// Dialpad call.
        dialpad_call_id: Option<String>,
        /// Dialpad user.
        dialpad_user_id: Option<String>,
        /// Caller.
        from_number: Option<String>,
        /// Callee.
        to_number: Option<String>,
        /// Recording link.
        recording_url: Option<String>,
        /// Transcript.
        transcript: Option<String>,
        /// Duration, seconds.
        duration_seconds: Option<i64>,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
        /// Last change.
        #[schema(format = DateTime)]
        updated_at: String,
    }

    /// A page of voicemails.
    #[derive(ToSchema)]
    pub(crate) struct VoicemailList {
        /// Always `true`.
        success: bool,
        /// Voicemails, newest first.
        data: Vec<Voicemail>,
        /// Paging.
        pagination: Pagination,
    }

    /// One voicemail.
    #[derive(ToSchema)]
    pub(crate) struct VoicemailOne {
        /// Always `true`.
        success: bool,
        /// The voicemail.
        data: Voicemail,
    }

    /// A tenant app.
    #[derive(ToSchema)]
    pub(crate) struct App {
        /// App id.
        id: uuid::Uuid,
        /// Display name.
        name: String,
        /// Inactive apps cannot authenticate or receive webhooks.
        is_active: bool,
        /// A key is set.
        has_active_key: bool,
        /// Non-secret hint of the key.
        key_hint: Option<String>,
        /// When the current key was issued.
        #[schema(format = DateTime)]
        api_key_issued_at: Option<String>,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
        /// Last change.
        #[schema(format = DateTime)]
        updated_at: String,
    }

    /// A page of apps.
    #[derive(ToSchema)]
    pub(crate) struct AppList {
        /// Always `true`.
        success: bool,
        /// Apps.
        data: Vec<App>,
        /// Paging.
        pagination: Pagination,
    }

    /// One app.
    #[derive(ToSchema)]
    pub(crate) struct AppOne {
        /// Always `true`.
        success: bool,
        /// The app.
        data: App,
    }

    /// `POST /internal/apps` body.
    #[derive(ToSchema)]
    pub(crate) struct CreateApp {
        /// Display name (non-empty).
        name: String,
    }

    /// `PATCH /internal/apps/{app_id}` body.
    #[derive(ToSchema)]
    pub(crate) struct PatchApp {
        /// New display name (non-empty).
        name: Option<String>,
        /// Activate or deactivate (deactivation closes the app's sockets).
        is_active: Option<bool>,
    }

    /// An app was created with its first key (shown once).
    #[derive(ToSchema)]
    pub(crate) struct AppCreated {
        /// Always `true`.
        success: bool,
        /// Confirmation.
        message: String,
        /// New app id.
        app_id: uuid::Uuid,
        /// Its name.
        app_name: String,
        /// The API key (only time it is shown).
        api_key: String,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
        /// Reminder to store the key.
        warning: String,
        /// How to use the key.
        usage: String,
    }

    /// `POST …/api-key` body (optional).
    #[derive(ToSchema)]
    pub(crate) struct IssueKey {
        /// Keep the previous key working this many seconds (0–604800).
        grace_seconds: Option<u64>,
    }

    /// A key was issued (shown once).
    #[derive(ToSchema)]
    pub(crate) struct KeyIssued {
        /// Always `true`.
        success: bool,
        /// Confirmation.
        message: String,
        /// The API key (only time it is shown).
        api_key: String,
        /// App id.
        app_id: uuid::Uuid,
        /// App name.
        app_name: String,
        /// Issue time.
        #[schema(format = DateTime)]
        generated_at: String,
        /// Reminder to store the key.
        warning: String,
        /// How to use the key.
        usage: String,
    }

    /// The key was revoked.
    #[derive(ToSchema)]
    pub(crate) struct KeyRevoked {
        /// Always `true`.
        success: bool,
        /// Confirmation.
        message: String,
        /// App id.
        app_id: uuid::Uuid,
        /// App name.
        app_name: String,
        /// Revocation time.
        #[schema(format = DateTime)]
        revoked_at: String,
    }

    /// Key status of an app.
    #[derive(ToSchema)]
    pub(crate) struct KeyStatus {
        /// Always `true`.
        success: bool,
        /// App id.
        app_id: uuid::Uuid,
        /// App name.
        app_name: String,
        /// A key is set.
        has_active_key: bool,
        /// Non-secret hint of the key.
        key_hint: Option<String>,
        /// Issue time of the key, or `Never`.
        last_rotated: String,
        /// `Generate a new API key` when there is no key.
        action_needed: Option<String>,
    }

    /// One key audit entry.
    #[derive(ToSchema)]
    pub(crate) struct AuditEntry {
        /// Entry id.
        id: uuid::Uuid,
        /// App id.
        app_id: uuid::Uuid,
        /// `created`, `rotated` or `revoked`.
        action: String,
        /// Hint of the previous key.
        old_key_hint: Option<String>,
        /// Hint of the new key.
        new_key_hint: Option<String>,
        /// Time.
        #[schema(format = DateTime)]
        created_at: String,
    }

    /// Key audit log of an app.
    #[derive(ToSchema)]
    pub(crate) struct AuditLog {
        /// Always `true`.
        success: bool,
        /// App id.
        app_id: uuid::Uuid,
        /// Entries, newest first.
        audit_log: Vec<AuditEntry>,
        /// Entries in total.
        total: u64,
        /// Page size used.
        limit: u32,
        /// Entries skipped.
        offset: u64,
    }

    /// `{"success":true,"message":…}`.
    #[derive(ToSchema)]
    pub(crate) struct Done {
        /// Always `true`.
        success: bool,
        /// What was done.
        message: String,
    }

    /// A Dialpad user → CRM user mapping.
    #[derive(ToSchema)]
    pub(crate) struct UserMapping {
        /// Mapping id.
        id: uuid::Uuid,
        /// App id.
        app_id: uuid::Uuid,
        /// Dialpad user.
        dialpad_user_id: String,
        /// CRM user.
        crm_user_id: String,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
        /// Last change.
        #[schema(format = DateTime)]
        updated_at: String,
    }

    /// `POST …/users/map` body, and one item of `…/users/batch-map`.
    #[derive(ToSchema)]
    pub(crate) struct MapUser {
        /// Positive integer (≤ 2^63−1), as a JSON integer or decimal string.
        #[schema(value_type = String)]
        dialpad_user_id: (),
        /// CRM user id (1–255 characters).
        crm_user_id: String,
    }

    /// `POST …/users/batch-map` body.
    #[derive(ToSchema)]
    pub(crate) struct BatchMap {
        /// At most 1000 items.
        mappings: Vec<MapUser>,
    }

    /// A mapping was created or updated.
    #[derive(ToSchema)]
    pub(crate) struct MappingSaved {
        /// Always `true`.
        success: bool,
        /// The mapping.
        data: UserMapping,
        /// Confirmation.
        message: String,
    }

    /// Mappings were created or updated.
    #[derive(ToSchema)]
    pub(crate) struct BatchMapped {
        /// Always `true`.
        success: bool,
        /// Confirmation.
        message: String,
        /// Mappings written.
        count: u64,
    }

    /// A page of mappings.
    #[derive(ToSchema)]
    pub(crate) struct MappingList {
        /// Always `true`.
        success: bool,
        /// Mappings.
        data: Vec<UserMapping>,
        /// Paging.
        pagination: Pagination,
    }

    /// One mapping.
    #[derive(ToSchema)]
    pub(crate) struct MappingOne {
        /// Always `true`.
        success: bool,
        /// The mapping.
        data: UserMapping,
    }

    /// Metadata of a Dialpad webhook (the secret is never returned).
    #[derive(ToSchema)]
    pub(crate) struct Webhook {
        /// Row id.
        id: uuid::Uuid,
        /// App id.
        app_id: uuid::Uuid,
        /// Dialpad webhook id.
        webhook_id: String,
        /// URL Dialpad posts to.
        hook_url: String,
        /// Signature algorithm.
        algo: Option<String>,
        /// Signature type.
        signature_type: Option<String>,
        /// A per-webhook secret is stored (encrypted).
        secret_set: bool,
        /// Creation time.
        #[schema(format = DateTime)]
        created_at: String,
        /// Last change.
        #[schema(format = DateTime)]
        updated_at: String,
    }

    /// Webhooks of an app.
    #[derive(ToSchema)]
    pub(crate) struct WebhookList {
        /// Always `true`.
        success: bool,
        /// Number of webhooks.
        count: u64,
        /// Webhooks.
        webhooks: Vec<Webhook>,
    }

    /// One webhook.
    #[derive(ToSchema)]
    pub(crate) struct WebhookOne {
        /// Always `true`.
        success: bool,
        /// The webhook.
        webhook: Webhook,
    }

    /// Inbox counters.
    #[derive(ToSchema)]
    pub(crate) struct EventStats {
        /// Always `true`.
        success: bool,
        /// Waiting for processing.
        unprocessed: u64,
        /// Held by workers.
        processing: u64,
        /// Waiting for a retry.
        failed: u64,
        /// Dead-lettered.
        dead: u64,
        /// Applied.
        done: u64,
        /// Ignored.
        ignored: u64,
        /// Receive time of the oldest waiting event.
        #[schema(format = DateTime)]
        oldest_unprocessed_at: Option<String>,
        /// Its age, seconds.
        oldest_unprocessed_age_s: Option<f64>,
    }

    /// An event was put back in the queue.
    #[derive(ToSchema)]
    pub(crate) struct EventRetried {
        /// Always `true`.
        success: bool,
        /// Event id.
        event_id: uuid::Uuid,
        /// `pending`.
        status: String,
    }
}

#[cfg(test)]
mod tests {
    //! The document against the router: same paths, same methods, and every answer of every
    //! documented operation matches the status and schema documented for it.

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, header};
    use cti_core::inbox::ProcessorConfig;
    use cti_core::secrets::Secret;
    use cti_core::store::MemoryStore;
    use cti_core::verify::sign_hmac_b64;
    use cti_core::{Cti, CtiConfig};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::{HttpConfig, RateLimits};

    const SECRET: &str = "openapi-test-internal-secret-0123456789";
    const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

    fn doc() -> Value {
        serde_json::from_str(super::json()).expect("the document is JSON")
    }

    /// Documented `path → methods`.
    fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .map(|(p, ops)| {
                let methods = ops
                    .as_object()
                    .expect("path item")
                    .keys()
                    .filter(|k| METHODS.contains(&k.to_ascii_uppercase().as_str()))
                    .map(|k| k.to_ascii_uppercase())
                    .collect();
                (p.clone(), methods)
            })
            .collect()
    }

    /// The paths the router registers: every `.route("…"` of the modules that build it, with
    /// the prefix they are nested under.
    fn registered() -> BTreeSet<String> {
        let sources = [
            ("", include_str!("rest/mod.rs")),
            ("/internal", include_str!("rest/internal.rs")),
            ("", include_str!("ws.rs")),
        ];
        let mut out = BTreeSet::new();
        for (prefix, src) in sources {
            // Only the code, not this test's own text or doc comments.
            let code = src.split("#[cfg(test)]").next().unwrap_or(src);
            for piece in code.split(".route(").skip(1) {
                let lit = piece.trim_start();
                let Some(rest) = lit.strip_prefix('"') else {
                    continue;
                };
                let path = rest.split('"').next().unwrap_or_default();
                out.insert(format!("{prefix}{path}"));
            }
        }
        assert!(out.len() > 30, "route scan found too little: {out:?}");
        out
    }

    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                let s = &doc["components"]["schemas"][name];
                assert!(!s.is_null(), "unresolved {r}");
                resolve(doc, s)
            }
            None => schema,
        }
    }

    fn type_ok(t: &str, v: &Value) -> bool {
        match t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => false,
        }
    }

    /// Strict structural check: types, enums, required keys, and no undocumented key.
    fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let schema = resolve(doc, schema);
        if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
            let errs: Vec<String> = alts
                .iter()
                .filter_map(|s| conforms(doc, s, v, at).err())
                .collect();
            return if errs.len() < alts.len() {
                Ok(())
            } else {
                Err(errs.join(" / "))
            };
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| type_ok(t, v)) {
            return Err(format!("{at}: {v} is not of type {types:?}"));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array)
            && !v.is_null()
            && !values.contains(v)
        {
            return Err(format!("{at}: {v} is not one of {values:?}"));
        }
        if let (Some(obj), Some(props)) = (
            v.as_object(),
            schema.get("properties").and_then(Value::as_object),
        ) {
            for k in obj.keys() {
                if !props.contains_key(k) {
                    return Err(format!("{at}: undocumented key {k:?}"));
                }
            }
            for req in schema["required"].as_array().into_iter().flatten() {
                let k = req.as_str().unwrap_or_default();
                if !obj.contains_key(k) {
                    return Err(format!("{at}: missing required key {k:?}"));
                }
            }
            for (k, val) in obj {
                conforms(doc, &props[k], val, &format!("{at}.{k}"))?;
            }
        }
        if let (Some(items), Some(schema)) = (v.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                conforms(doc, schema, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    struct Answer {
        status: u16,
        content_type: String,
        request_id: bool,
        text: String,
        body: Value,
    }

    struct Harness {
        app: Router,
        key: String,
        _run: cti_core::inbox::Running,
    }

    impl Harness {
        async fn send(&self, method: &str, uri: &str, body: Option<Value>) -> Answer {
            let mut b = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {SECRET}"))
                .header("x-app-api-key", &self.key);
            if body.is_some() {
                b = b.header(header::CONTENT_TYPE, "application/json");
            }
            let req = b
                .body(body.map_or_else(Body::empty, |v| Body::from(v.to_string())))
                .expect("request");
            let resp = self.app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let request_id = resp.headers().contains_key("x-request-id");
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body");
            Answer {
                status,
                content_type,
                request_id,
                text: String::from_utf8_lossy(&bytes).into_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            }
        }

        async fn hook(&self, body: Value) {
            let s = body.to_string();
            let sig = sign_hmac_b64(s.as_bytes(), b"W");
            let req = Request::post("/webhooks/dialpad")
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-dialpad-signature", sig)
                .header("x-app-api-key", &self.key)
                .body(Body::from(s))
                .expect("request");
            let resp = self.app.clone().oneshot(req).await.expect("infallible");
            assert_eq!(resp.status().as_u16(), 200, "seed webhook {body}");
        }

        /// The first id of `data` once the list is non-empty.
        async fn first_id(&self, uri: &str) -> String {
            for _ in 0..200 {
                let a = self.send("GET", uri, None).await;
                if let Some(id) = a.body["data"][0]["id"].as_str() {
                    return id.to_string();
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{uri} stayed empty");
        }
    }

    /// A router on a memory store with one app, a call, a message, a voicemail and a mapping.
    async fn seeded() -> (Harness, BTreeMap<&'static str, String>) {
        let cti = Cti::builder()
            .store(Arc::new(MemoryStore::new()))
            .config(CtiConfig {
                webhook_secret: Some(Secret::new("W".into())),
                processor: ProcessorConfig {
                    poll_interval: Duration::from_millis(10),
                    ..Default::default()
                },
                ..Default::default()
            })
            .build();
        let run = cti.start();
        let mut http = HttpConfig::new(SECRET);
        http.rate_limits = RateLimits {
            webhook_per_min: 100_000,
            api_per_min: 100_000,
            internal_per_min: 100_000,
            auth_per_15min: 100_000,
        };
        let mut h = Harness {
            app: crate::router(cti, http),
            key: String::new(),
            _run: run,
        };
        let a = h
            .send("POST", "/internal/apps", Some(json!({ "name": "Acme" })))
            .await;
        assert_eq!(a.status, 201, "{}", a.text);
        let app_id = a.body["app_id"].as_str().expect("app_id").to_string();
        h.key = a.body["api_key"].as_str().expect("api_key").to_string();

        h.hook(
            json!({"event_type":"call.ring","call_id":1001,"direction":"incoming",
                      "from":"+15550001111","to":"+15550002222","user_id":12345}),
        )
        .await;
        h.hook(
            json!({"event_type":"sms.received","id":5001,"direction":"inbound",
                      "from":"+15550003333","to":"+15550004444","text":"Hello","user_id":12345}),
        )
        .await;
        h.hook(
            json!({"event_type":"voicemail.received","voicemail":{"call_id":1010,
                      "user_id":12345,"from":"+15550005555","to":"+15550002222",
                      "recording_url":"https://files.example.com/vm.mp3","duration":30}}),
        )
        .await;
        let map = h
            .send(
                "POST",
                &format!("/internal/apps/{app_id}/users/map"),
                Some(json!({ "dialpad_user_id": 12345, "crm_user_id": "crm_1" })),
            )
            .await;
        assert_eq!(map.status, 200, "{}", map.text);
        let mapping_id = map.body["data"]["id"].as_str().expect("id").to_string();

        let mut ids = BTreeMap::new();
        ids.insert("call", h.first_id("/api/calls").await);
        ids.insert("message", h.first_id("/api/messages").await);
        ids.insert("voicemail", h.first_id("/api/voicemails").await);
        ids.insert("app", app_id);
        ids.insert("mapping", mapping_id);
        (h, ids)
    }

    /// A concrete URI for a documented path.
    fn concrete(path: &str, ids: &BTreeMap<&str, String>) -> String {
        let id = if path.starts_with("/api/calls") {
            &ids["call"]
        } else if path.starts_with("/api/messages") {
            &ids["message"]
        } else {
            &ids["voicemail"]
        };
        path.replace("{app_id}", &ids["app"])
            .replace("{id}", id)
            .replace("{voicemail_id}", &ids["voicemail"])
            .replace("{mapping_id}", &ids["mapping"])
            .replace("{dialpad_user_id}", "12345")
            .replace("{crm_user_id}", "crm_1")
            .replace("{webhook_id}", "193")
            .replace("{event_id}", "550e8400-e29b-41d4-a716-446655440000")
    }

    /// A valid request body for the operations that take one.
    fn body_for(method: &str, path: &str) -> Option<Value> {
        Some(match (method, path) {
            ("POST", "/internal/apps") => json!({ "name": "Other" }),
            ("PATCH", "/internal/apps/{app_id}") => json!({ "name": "Acme Inc" }),
            ("POST", "/internal/apps/{app_id}/api-key") => json!({ "grace_seconds": 60 }),
            ("POST", "/internal/apps/{app_id}/users/map") => {
                json!({ "dialpad_user_id": "777", "crm_user_id": "crm_7" })
            }
            ("POST", "/internal/apps/{app_id}/users/batch-map") => {
                json!({ "mappings": [{ "dialpad_user_id": 778, "crm_user_id": "crm_8" }] })
            }
            ("POST", p) if p.starts_with("/webhooks/") => json!({ "event_type": "call.ring" }),
            _ => return None,
        })
    }

    #[test]
    fn every_schema_reference_resolves() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("$ref", Value::String(r)) => out.push(r.clone()),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = doc();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} is not defined"
            );
        }
    }

    #[test]
    fn document_is_openapi_3_1_with_security_schemes() {
        let doc = doc();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        assert_eq!(
            schemes.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            BTreeSet::from([
                APP_API_KEY_NAME,
                APP_API_KEY_QUERY_NAME,
                INTERNAL_BEARER_NAME
            ])
        );
        assert_eq!(schemes[APP_API_KEY_NAME]["name"], "x-app-api-key");
        assert_eq!(schemes[INTERNAL_BEARER_NAME]["scheme"], "bearer");
        let mut operation_ids = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("ops") {
                let id = op["operationId"].as_str().expect("operationId");
                assert!(operation_ids.insert(id.to_string()), "duplicate {id}");
                for req in op["security"].as_array().into_iter().flatten() {
                    for name in req.as_object().expect("requirement").keys() {
                        assert!(schemes.contains_key(name), "{method} {path}: {name}");
                    }
                }
                let internal = path.starts_with("/internal/");
                let client = path.starts_with("/api/");
                let needs = if internal {
                    Some(INTERNAL_BEARER_NAME)
                } else if client {
                    Some(APP_API_KEY_NAME)
                } else {
                    None
                };
                if let Some(name) = needs {
                    assert_eq!(op["security"], json!([{ name: [] }]), "{method} {path}");
                }
            }
        }
    }

    use super::{
        APP_API_KEY as APP_API_KEY_NAME, APP_API_KEY_QUERY as APP_API_KEY_QUERY_NAME,
        INTERNAL_BEARER as INTERNAL_BEARER_NAME,
    };

    #[test]
    fn documented_paths_are_the_router_paths() {
        let doc = doc();
        let documented: BTreeSet<String> = documented(&doc).into_keys().collect();
        assert_eq!(documented, registered());
    }

    #[tokio::test]
    async fn every_route_answers_as_documented() {
        let doc = doc();
        let documented = documented(&doc);
        let (h, ids) = seeded().await;

        // The fallback answer, to tell "no such route" from a handler's 404.
        let fallback = h.send("GET", "/no/such/route", None).await;
        assert_eq!(
            (fallback.status, &fallback.body),
            (404, &json!({"error":"Not Found"}))
        );

        // Documented operations: reads first (writes rotate the key and delete rows).
        let mut ops: Vec<(&str, &String)> = documented
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| (m.as_str(), p)))
            .collect();
        ops.sort_by_key(|(m, _)| *m != "GET");
        for (method, path) in ops {
            let uri = concrete(path, &ids);
            let a = h.send(method, &uri, body_for(method, path)).await;
            let what = format!("{method} {uri} → {} {}", a.status, a.text);
            assert!(a.request_id, "no x-request-id: {what}");
            assert!(
                !(a.status == 404 && a.body == fallback.body),
                "router fallback: {what}"
            );
            let response =
                &doc["paths"][path][method.to_ascii_lowercase()]["responses"][a.status.to_string()];
            assert!(response.is_object(), "undocumented status: {what}");
            let content = &response["content"];
            if a.content_type.contains("json") {
                let schema = &content["application/json"]["schema"];
                assert!(schema.is_object(), "undocumented JSON body: {what}");
                if let Err(e) = conforms(&doc, schema, &a.body, "body") {
                    panic!("{e}: {what}");
                }
            } else if !a.text.is_empty() {
                let ct = a.content_type.split(';').next().unwrap_or_default();
                assert!(content[ct].is_object(), "undocumented {ct} body: {what}");
            }
        }

        // Undocumented methods of documented paths are not served.
        for (path, methods) in &documented {
            let uri = concrete(path, &ids);
            for method in METHODS.iter().filter(|m| !methods.contains(**m)) {
                let a = h.send(method, &uri, None).await;
                assert_eq!(
                    (a.status, &a.body),
                    (405, &json!({"error":"Method Not Allowed"})),
                    "{method} {uri} is served but not documented"
                );
                assert!(a.request_id, "{method} {uri}: no x-request-id");
            }
        }
    }

    #[tokio::test]
    async fn serves_the_document() {
        let (h, _) = seeded().await;
        let a = h.send("GET", "/openapi.json", None).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "application/json");
        assert_eq!(a.body, doc());
    }
}
