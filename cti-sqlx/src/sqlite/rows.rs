//! Column lists and row decoders of the SQLite schema.

use chrono::DateTime;
use cti_core::json::JsonText;
use cti_core::model::*;
use cti_core::store::{InboxEvent, PublishedEvent, StoreError, StoreResult};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::common::{self, corrupt, map_err};

/// Timestamp → `INTEGER` microseconds since the epoch (every `chrono` time fits).
pub(crate) fn ts(t: &Timestamp) -> i64 {
    t.timestamp_micros()
}

/// Optional timestamp → optional microseconds.
pub(crate) fn opt_ts(t: Option<&Timestamp>) -> Option<i64> {
    t.map(ts)
}

/// Microseconds → timestamp.
pub(crate) fn from_ts(column: &str, v: i64) -> StoreResult<Timestamp> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(column, v))
}

/// Optional microseconds → optional timestamp.
pub(crate) fn from_opt_ts(column: &str, v: Option<i64>) -> StoreResult<Option<Timestamp>> {
    v.map(|v| from_ts(column, v)).transpose()
}

/// `u64` (offset, sequence number) → SQLite `INTEGER`, saturating.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `INTEGER` count → `u64`.
pub(crate) fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A column value both drivers decode: sqlx (every read) and rusqlite (the direct write
/// transactions of `super::direct`).
pub(crate) trait Col:
    for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + rusqlite::types::FromSql
{
}

impl<T> Col for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + rusqlite::types::FromSql
{
}

/// A result row of either driver, read by column name, so one decoder per entity serves both.
pub(crate) trait SqlRow {
    /// The value of column `col`.
    fn col<T: Col>(&self, col: &str) -> StoreResult<T>;
}

impl SqlRow for SqliteRow {
    fn col<T: Col>(&self, col: &str) -> StoreResult<T> {
        self.try_get(col).map_err(map_err)
    }
}

impl SqlRow for rusqlite::Row<'_> {
    fn col<T: Col>(&self, col: &str) -> StoreResult<T> {
        self.get(col).map_err(super::direct::map_err)
    }
}

fn get<T: Col>(r: &impl SqlRow, col: &str) -> StoreResult<T> {
    r.col(col)
}

fn get_uuid(r: &impl SqlRow, col: &str) -> StoreResult<Uuid> {
    let s: String = get(r, col)?;
    common::uuid_from_text(col, &s)
}

fn get_app_id(r: &impl SqlRow, col: &str) -> StoreResult<AppId> {
    get_uuid(r, col).map(AppId)
}

fn get_ts(r: &impl SqlRow, col: &str) -> StoreResult<Timestamp> {
    from_ts(col, get(r, col)?)
}

fn get_opt_ts(r: &impl SqlRow, col: &str) -> StoreResult<Option<Timestamp>> {
    from_opt_ts(col, get(r, col)?)
}

fn get_id(r: &impl SqlRow, col: &str) -> StoreResult<DialpadId> {
    common::dialpad_id(col, get(r, col)?)
}

fn get_opt_id(r: &impl SqlRow, col: &str) -> StoreResult<Option<DialpadId>> {
    common::opt_dialpad_id(col, get(r, col)?)
}

fn get_bool(r: &impl SqlRow, col: &str) -> StoreResult<bool> {
    let v: i64 = get(r, col)?;
    Ok(v != 0)
}

/// Columns of [`App`] (plus nothing secret: lookup hashes are only tested for presence).
pub(crate) const APP_COLS: &str = "id, name, is_active, api_key_hint, api_key_issued_at, \
     (api_key_lookup IS NOT NULL OR api_key IS NOT NULL) AS has_key, created_at, updated_at";

/// Decodes [`APP_COLS`].
pub(crate) fn app(r: &impl SqlRow) -> StoreResult<App> {
    Ok(App {
        id: get_app_id(r, "id")?,
        name: get(r, "name")?,
        is_active: get_bool(r, "is_active")?,
        api_key_hint: get(r, "api_key_hint")?,
        api_key_issued_at: get_opt_ts(r, "api_key_issued_at")?,
        has_key: get_bool(r, "has_key")?,
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`AuditEntry`].
pub(crate) const AUDIT_COLS: &str =
    "id, app_id, action, old_key_hint, new_key_hint, actor, request_ip, user_agent, created_at";

/// Decodes [`AUDIT_COLS`].
pub(crate) fn audit(r: &impl SqlRow) -> StoreResult<AuditEntry> {
    let action: String = get(r, "action")?;
    Ok(AuditEntry {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        action: AuditAction::parse(&action).ok_or_else(|| corrupt("action", &action))?,
        old_key_hint: get(r, "old_key_hint")?,
        new_key_hint: get(r, "new_key_hint")?,
        context: AuditContext {
            actor: get(r, "actor")?,
            request_ip: get(r, "request_ip")?,
            user_agent: get(r, "user_agent")?,
        },
        created_at: get_ts(r, "created_at")?,
    })
}

/// Columns of [`InboxEvent`].
pub(crate) const EVENT_COLS: &str = "id, app_id, dedupe_key, event_type, call_id, state, \
     event_timestamp, payload, status, attempts, last_error, next_attempt_at, locked_until, \
     received_at, processed_at";

/// Decodes [`EVENT_COLS`].
pub(crate) fn event(r: &impl SqlRow) -> StoreResult<InboxEvent> {
    let payload: String = get(r, "payload")?;
    let status: String = get(r, "status")?;
    Ok(InboxEvent {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        dedupe_key: get(r, "dedupe_key")?,
        event_type: get(r, "event_type")?,
        call_id: get_opt_id(r, "call_id")?,
        state: get(r, "state")?,
        event_timestamp: get(r, "event_timestamp")?,
        payload: JsonText::assume_valid(payload),
        status: common::event_status(&status)?,
        attempts: common::attempts(get(r, "attempts")?)?,
        last_error: get(r, "last_error")?,
        next_attempt_at: get_ts(r, "next_attempt_at")?,
        locked_until: get_opt_ts(r, "locked_until")?,
        received_at: get_ts(r, "received_at")?,
        processed_at: get_opt_ts(r, "processed_at")?,
    })
}

/// Columns of [`PublishedEvent`].
pub(crate) const OUTBOX_COLS: &str = "app_id, seq, event, payload, target_crm_user, created_at";

/// Decodes [`OUTBOX_COLS`].
pub(crate) fn published(r: &impl SqlRow) -> StoreResult<PublishedEvent> {
    let payload: String = get(r, "payload")?;
    let seq: i64 = get(r, "seq")?;
    Ok(PublishedEvent {
        app_id: get_app_id(r, "app_id")?,
        seq: u64::try_from(seq).map_err(|_| corrupt("cti_events.seq", seq))?,
        event: get(r, "event")?,
        payload: common::json_from_text("payload", &payload)?,
        target_crm_user: get(r, "target_crm_user")?,
        created_at: get_ts(r, "created_at")?,
    })
}

/// Columns of [`Call`].
pub(crate) const CALL_COLS: &str = "id, app_id, dialpad_call_id, direction, from_number, \
     to_number, status, dialpad_user_id, target_type, target_id, started_at, answered_at, \
     ended_at, duration_seconds, recording_url, is_voicemail, voicemail_audio_url, transcript, \
     held, merge_log, last_event_ms, raw_payload, created_at, updated_at";

/// Decodes [`CALL_COLS`].
pub(crate) fn call(r: &impl SqlRow) -> StoreResult<Call> {
    let direction: Option<String> = get(r, "direction")?;
    let status: String = get(r, "status")?;
    let merge_log: String = get(r, "merge_log")?;
    let raw: Option<String> = get(r, "raw_payload")?;
    Ok(Call {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        dialpad_call_id: get_id(r, "dialpad_call_id")?,
        direction: common::opt_direction(direction.as_deref())?,
        from_number: get(r, "from_number")?,
        to_number: get(r, "to_number")?,
        status: common::call_status(&status)?,
        dialpad_user_id: get_opt_id(r, "dialpad_user_id")?,
        target_type: get(r, "target_type")?,
        target_id: get_opt_id(r, "target_id")?,
        started_at: get_opt_ts(r, "started_at")?,
        answered_at: get_opt_ts(r, "answered_at")?,
        ended_at: get_opt_ts(r, "ended_at")?,
        duration_seconds: get(r, "duration_seconds")?,
        recording_url: get(r, "recording_url")?,
        is_voicemail: get_bool(r, "is_voicemail")?,
        voicemail_audio_url: get(r, "voicemail_audio_url")?,
        transcript: get(r, "transcript")?,
        held: get_bool(r, "held")?,
        merge_log: common::merge_log_from_json(Some(&merge_log))?,
        last_event_ms: get(r, "last_event_ms")?,
        raw_payload: raw.map(JsonText::assume_valid),
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`Voicemail`].
pub(crate) const VOICEMAIL_COLS: &str = "id, app_id, dialpad_call_id, dialpad_user_id, \
     from_number, to_number, recording_url, transcript, duration_seconds, created_at, updated_at";

/// Decodes [`VOICEMAIL_COLS`].
pub(crate) fn voicemail(r: &impl SqlRow) -> StoreResult<Voicemail> {
    Ok(Voicemail {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        dialpad_call_id: get_opt_id(r, "dialpad_call_id")?,
        dialpad_user_id: get_opt_id(r, "dialpad_user_id")?,
        from_number: get(r, "from_number")?,
        to_number: get(r, "to_number")?,
        recording_url: get(r, "recording_url")?,
        transcript: get(r, "transcript")?,
        duration_seconds: get(r, "duration_seconds")?,
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`Message`].
pub(crate) const MESSAGE_COLS: &str = "id, app_id, dialpad_message_id, direction, from_number, \
     to_number, to_numbers, text, dialpad_user_id, sent_at, message_status, created_at, updated_at";

/// Decodes [`MESSAGE_COLS`].
pub(crate) fn message(r: &impl SqlRow) -> StoreResult<Message> {
    let direction: Option<String> = get(r, "direction")?;
    let to_numbers: Option<String> = get(r, "to_numbers")?;
    Ok(Message {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        dialpad_message_id: get_id(r, "dialpad_message_id")?,
        direction: common::opt_direction(direction.as_deref())?,
        from_number: get(r, "from_number")?,
        to_number: get(r, "to_number")?,
        to_numbers: common::to_numbers_from_json(to_numbers.as_deref())?,
        text: get(r, "text")?,
        dialpad_user_id: get_opt_id(r, "dialpad_user_id")?,
        sent_at: get_opt_ts(r, "sent_at")?,
        message_status: get(r, "message_status")?,
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`UserMapping`].
pub(crate) const MAPPING_COLS: &str =
    "id, app_id, dialpad_user_id, crm_user_id, created_at, updated_at";

/// Decodes [`MAPPING_COLS`].
pub(crate) fn mapping(r: &impl SqlRow) -> StoreResult<UserMapping> {
    Ok(UserMapping {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        dialpad_user_id: get_id(r, "dialpad_user_id")?,
        crm_user_id: get(r, "crm_user_id")?,
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`DialpadConnection`].
pub(crate) const CONNECTION_COLS: &str = "id, app_id, dialpad_org_id, access_token_enc, \
     refresh_token_enc, token_expires_at, environment, status, created_at, updated_at";

/// Decodes [`CONNECTION_COLS`].
pub(crate) fn connection(r: &impl SqlRow) -> StoreResult<DialpadConnection> {
    let env: String = get(r, "environment")?;
    let environment = match env.as_str() {
        "sandbox" => DialpadEnvironment::Sandbox,
        "production" => DialpadEnvironment::Production,
        other => return Err(corrupt("environment", other)),
    };
    Ok(DialpadConnection {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        dialpad_org_id: get_opt_id(r, "dialpad_org_id")?,
        access_token_enc: get(r, "access_token_enc")?,
        refresh_token_enc: get(r, "refresh_token_enc")?,
        token_expires_at: get_ts(r, "token_expires_at")?,
        environment,
        status: get(r, "status")?,
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`DialpadWebhook`].
pub(crate) const WEBHOOK_COLS: &str =
    "id, app_id, webhook_id, hook_url, secret_enc, algo, signature_type, created_at, updated_at";

/// Decodes [`WEBHOOK_COLS`].
pub(crate) fn webhook(r: &impl SqlRow) -> StoreResult<DialpadWebhook> {
    Ok(DialpadWebhook {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        webhook_id: get_id(r, "webhook_id")?,
        hook_url: get(r, "hook_url")?,
        secret_enc: get(r, "secret_enc")?,
        algo: get(r, "algo")?,
        signature_type: get(r, "signature_type")?,
        created_at: get_ts(r, "created_at")?,
        updated_at: get_ts(r, "updated_at")?,
    })
}

/// Columns of [`DialpadSubscription`].
pub(crate) const SUBSCRIPTION_COLS: &str =
    "id, app_id, webhook_id, kind, dialpad_subscription_id, config, created_at";

/// Decodes [`SUBSCRIPTION_COLS`].
pub(crate) fn subscription(r: &impl SqlRow) -> StoreResult<DialpadSubscription> {
    let kind: String = get(r, "kind")?;
    let config: String = get(r, "config")?;
    Ok(DialpadSubscription {
        id: get_uuid(r, "id")?,
        app_id: get_app_id(r, "app_id")?,
        webhook_id: get_id(r, "webhook_id")?,
        kind: match kind.as_str() {
            "call" => SubscriptionKind::Call,
            "sms" => SubscriptionKind::Sms,
            other => return Err(corrupt("kind", other)),
        },
        dialpad_subscription_id: get_id(r, "dialpad_subscription_id")?,
        config: common::json_from_text("config", &config)?,
        created_at: get_ts(r, "created_at")?,
    })
}

/// Maps a foreign-key violation (the referenced app does not exist) to
/// [`StoreError::NotFound`], anything else as usual.
pub(crate) fn map_fk(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation
    {
        return StoreError::NotFound;
    }
    map_err(e)
}
