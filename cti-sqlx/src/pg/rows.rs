//! Error mapping and row decoding shared by the PostgreSQL store modules.

use chrono::{DateTime, Utc};
use cti_core::json::JsonText;
use cti_core::model::*;
use cti_core::store::{EventStatus, InboxEvent, PublishedEvent, StoreError, StoreResult};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use crate::common;

/// Maps a sqlx error to the store's public error: [`crate::common::map_err`] (outages →
/// `Unavailable`, unique violations → `Conflict`, …), plus foreign-key violations →
/// [`StoreError::NotFound`] (the referenced app does not exist).
pub(crate) fn pg_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_foreign_key_violation()
    {
        return StoreError::NotFound;
    }
    common::map_err(e)
}

/// Corrupt or unexpected column content.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt row: {what}"))
}

/// Reads a column, mapping decode errors.
pub(crate) fn col<'r, T>(row: &'r PgRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name).map_err(pg_err)
}

/// A payload column (`text` since migration 0009) as JSON text: the store only ever writes
/// [`JsonText`] there.
pub(crate) fn json_text(row: &PgRow, name: &str) -> StoreResult<Option<JsonText>> {
    let raw: Option<&str> = col(row, name)?;
    Ok(raw.map(JsonText::assume_valid))
}

/// A `BIGINT` column holding a Dialpad id.
pub(crate) fn did(v: i64) -> StoreResult<DialpadId> {
    if v > 0 {
        Ok(DialpadId(v as u64))
    } else {
        Err(corrupt(format!("dialpad id {v}")))
    }
}

/// A nullable `BIGINT` column holding a Dialpad id.
pub(crate) fn opt_did(v: Option<i64>) -> StoreResult<Option<DialpadId>> {
    v.map(did).transpose()
}

/// A nullable `direction` column.
pub(crate) fn opt_direction(v: Option<String>) -> StoreResult<Option<Direction>> {
    v.map(|s| Direction::parse_filter(&s).ok_or_else(|| corrupt(format!("direction {s:?}"))))
        .transpose()
}

/// Saturating `u64` → `BIGINT`.
pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Saturating `usize` → `BIGINT`.
pub(crate) fn i64_of_usize(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A non-negative `BIGINT` as `u64`.
pub(crate) fn u64_of(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative count {v}")))
}

/// Columns of [`App`] (`has_key` derived from both key columns).
pub(crate) const APP_COLS: &str = "id, name, is_active, api_key_hint, api_key_issued_at, \
     (api_key_lookup IS NOT NULL OR api_key IS NOT NULL) AS has_key, created_at, updated_at";

pub(crate) fn app_from_row(row: &PgRow) -> StoreResult<App> {
    Ok(App {
        id: AppId(col(row, "id")?),
        name: col(row, "name")?,
        is_active: col(row, "is_active")?,
        api_key_hint: col(row, "api_key_hint")?,
        api_key_issued_at: col(row, "api_key_issued_at")?,
        has_key: col(row, "has_key")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

/// Columns of [`AuditEntry`].
pub(crate) const AUDIT_COLS: &str =
    "id, app_id, action, old_key_hint, new_key_hint, actor, request_ip, user_agent, created_at";

pub(crate) fn audit_from_row(row: &PgRow) -> StoreResult<AuditEntry> {
    let action: String = col(row, "action")?;
    Ok(AuditEntry {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        action: AuditAction::parse(&action)
            .ok_or_else(|| corrupt(format!("audit action {action:?}")))?,
        old_key_hint: col(row, "old_key_hint")?,
        new_key_hint: col(row, "new_key_hint")?,
        context: AuditContext {
            actor: col(row, "actor")?,
            request_ip: col(row, "request_ip")?,
            user_agent: col(row, "user_agent")?,
        },
        created_at: col(row, "created_at")?,
    })
}

/// Columns of [`Call`].
pub(crate) const CALL_COLS: &str = "id, app_id, dialpad_call_id, direction, from_number, to_number, \
     status, dialpad_user_id, target_type, target_id, started_at, answered_at, ended_at, \
     duration_seconds, recording_url, is_voicemail, voicemail_audio_url, transcript, held, \
     merge_log, last_event_ms, raw_payload, created_at, updated_at";

pub(crate) fn call_from_row(row: &PgRow) -> StoreResult<Call> {
    let status: String = col(row, "status")?;
    let merge_log = common::merge_log_from_json(col(row, "merge_log")?)?;
    Ok(Call {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        dialpad_call_id: did(col(row, "dialpad_call_id")?)?,
        direction: opt_direction(col(row, "direction")?)?,
        from_number: col(row, "from_number")?,
        to_number: col(row, "to_number")?,
        status: CallStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("call status {status:?}")))?,
        dialpad_user_id: opt_did(col(row, "dialpad_user_id")?)?,
        target_type: col(row, "target_type")?,
        target_id: opt_did(col(row, "target_id")?)?,
        started_at: col(row, "started_at")?,
        answered_at: col(row, "answered_at")?,
        ended_at: col(row, "ended_at")?,
        duration_seconds: col(row, "duration_seconds")?,
        recording_url: col(row, "recording_url")?,
        is_voicemail: col(row, "is_voicemail")?,
        voicemail_audio_url: col(row, "voicemail_audio_url")?,
        transcript: col(row, "transcript")?,
        held: col(row, "held")?,
        merge_log,
        last_event_ms: col(row, "last_event_ms")?,
        raw_payload: json_text(row, "raw_payload")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

/// Columns of [`Voicemail`].
pub(crate) const VOICEMAIL_COLS: &str = "id, app_id, dialpad_call_id, dialpad_user_id, from_number, \
     to_number, recording_url, transcript, duration_seconds, created_at, updated_at";

pub(crate) fn voicemail_from_row(row: &PgRow) -> StoreResult<Voicemail> {
    voicemail_from_row_as(row, "")
}

/// [`voicemail_from_row`] over columns named `{prefix}{column}`.
pub(crate) fn voicemail_from_row_as(row: &PgRow, prefix: &str) -> StoreResult<Voicemail> {
    let c = Prefixed(row, prefix);
    Ok(Voicemail {
        id: c.get("id")?,
        app_id: AppId(c.get("app_id")?),
        dialpad_call_id: opt_did(c.get("dialpad_call_id")?)?,
        dialpad_user_id: opt_did(c.get("dialpad_user_id")?)?,
        from_number: c.get("from_number")?,
        to_number: c.get("to_number")?,
        recording_url: c.get("recording_url")?,
        transcript: c.get("transcript")?,
        duration_seconds: c.get("duration_seconds")?,
        created_at: c.get("created_at")?,
        updated_at: c.get("updated_at")?,
    })
}

/// A row whose columns are named `{prefix}{column}` (several records in one row).
struct Prefixed<'r, 'p>(&'r PgRow, &'p str);

impl<'r> Prefixed<'r, '_> {
    fn get<T>(&self, name: &str) -> StoreResult<T>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        if self.1.is_empty() {
            col(self.0, name)
        } else {
            col(self.0, &format!("{}{name}", self.1))
        }
    }
}

/// Columns of [`Message`].
pub(crate) const MESSAGE_COLS: &str = "id, app_id, dialpad_message_id, direction, from_number, \
     to_number, to_numbers, text, dialpad_user_id, sent_at, message_status, created_at, updated_at";

pub(crate) fn message_from_row(row: &PgRow) -> StoreResult<Message> {
    message_from_row_as(row, "")
}

/// [`message_from_row`] over columns named `{prefix}{column}`.
pub(crate) fn message_from_row_as(row: &PgRow, prefix: &str) -> StoreResult<Message> {
    let c = Prefixed(row, prefix);
    let Json(to_numbers): Json<Vec<String>> = c.get("to_numbers")?;
    Ok(Message {
        id: c.get("id")?,
        app_id: AppId(c.get("app_id")?),
        dialpad_message_id: did(c.get("dialpad_message_id")?)?,
        direction: opt_direction(c.get("direction")?)?,
        from_number: c.get("from_number")?,
        to_number: c.get("to_number")?,
        to_numbers,
        text: c.get("text")?,
        dialpad_user_id: opt_did(c.get("dialpad_user_id")?)?,
        sent_at: c.get("sent_at")?,
        message_status: c.get("message_status")?,
        created_at: c.get("created_at")?,
        updated_at: c.get("updated_at")?,
    })
}

/// Columns of [`UserMapping`].
pub(crate) const MAPPING_COLS: &str =
    "id, app_id, dialpad_user_id, crm_user_id, created_at, updated_at";

pub(crate) fn mapping_from_row(row: &PgRow) -> StoreResult<UserMapping> {
    Ok(UserMapping {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        dialpad_user_id: did(col(row, "dialpad_user_id")?)?,
        crm_user_id: col(row, "crm_user_id")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

/// Columns of [`InboxEvent`].
pub(crate) const EVENT_COLS: &str = "id, app_id, dedupe_key, event_type, call_id, state, \
     event_timestamp, payload, status, attempts, last_error, next_attempt_at, locked_until, \
     received_at, processed_at";

pub(crate) fn event_from_row(row: &PgRow) -> StoreResult<InboxEvent> {
    let status: String = col(row, "status")?;
    let attempts: i32 = col(row, "attempts")?;
    Ok(InboxEvent {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        dedupe_key: col(row, "dedupe_key")?,
        event_type: col(row, "event_type")?,
        call_id: opt_did(col(row, "call_id")?)?,
        state: col(row, "state")?,
        event_timestamp: col(row, "event_timestamp")?,
        payload: json_text(row, "payload")?.ok_or_else(|| corrupt("null payload"))?,
        status: EventStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("event status {status:?}")))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("attempts {attempts}")))?,
        last_error: col(row, "last_error")?,
        next_attempt_at: col(row, "next_attempt_at")?,
        locked_until: col(row, "locked_until")?,
        received_at: col(row, "received_at")?,
        processed_at: col(row, "processed_at")?,
    })
}

/// Columns of [`PublishedEvent`].
pub(crate) const OUTBOX_COLS: &str = "app_id, seq, event, payload, target_crm_user, created_at";

pub(crate) fn published_from_row(row: &PgRow) -> StoreResult<PublishedEvent> {
    Ok(PublishedEvent {
        app_id: AppId(col(row, "app_id")?),
        seq: u64_of(col(row, "seq")?)?,
        event: col(row, "event")?,
        payload: serde_json::from_str(col(row, "payload")?)
            .map_err(|e| corrupt(format!("outbox payload: {e}")))?,
        target_crm_user: col(row, "target_crm_user")?,
        created_at: col(row, "created_at")?,
    })
}

/// Columns of [`DialpadConnection`].
pub(crate) const CONNECTION_COLS: &str = "id, app_id, dialpad_org_id, access_token_enc, \
     refresh_token_enc, token_expires_at, environment, status, created_at, updated_at";

pub(crate) fn connection_from_row(row: &PgRow) -> StoreResult<DialpadConnection> {
    let env: String = col(row, "environment")?;
    Ok(DialpadConnection {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        dialpad_org_id: opt_did(col(row, "dialpad_org_id")?)?,
        access_token_enc: col(row, "access_token_enc")?,
        refresh_token_enc: col(row, "refresh_token_enc")?,
        token_expires_at: col(row, "token_expires_at")?,
        environment: match env.as_str() {
            "sandbox" => DialpadEnvironment::Sandbox,
            "production" => DialpadEnvironment::Production,
            other => return Err(corrupt(format!("environment {other:?}"))),
        },
        status: col(row, "status")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

/// Columns of [`DialpadWebhook`].
pub(crate) const WEBHOOK_COLS: &str =
    "id, app_id, webhook_id, hook_url, secret_enc, algo, signature_type, created_at, updated_at";

pub(crate) fn webhook_from_row(row: &PgRow) -> StoreResult<DialpadWebhook> {
    Ok(DialpadWebhook {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        webhook_id: did(col(row, "webhook_id")?)?,
        hook_url: col(row, "hook_url")?,
        secret_enc: col(row, "secret_enc")?,
        algo: col(row, "algo")?,
        signature_type: col(row, "signature_type")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

/// Columns of [`DialpadSubscription`].
pub(crate) const SUBSCRIPTION_COLS: &str =
    "id, app_id, webhook_id, kind, dialpad_subscription_id, config, created_at";

pub(crate) fn subscription_from_row(row: &PgRow) -> StoreResult<DialpadSubscription> {
    let kind: String = col(row, "kind")?;
    Ok(DialpadSubscription {
        id: col(row, "id")?,
        app_id: AppId(col(row, "app_id")?),
        webhook_id: did(col(row, "webhook_id")?)?,
        kind: match kind.as_str() {
            "call" => SubscriptionKind::Call,
            "sms" => SubscriptionKind::Sms,
            other => return Err(corrupt(format!("subscription kind {other:?}"))),
        },
        dialpad_subscription_id: did(col(row, "dialpad_subscription_id")?)?,
        config: col(row, "config")?,
        created_at: col(row, "created_at")?,
    })
}

/// Decodes every row with `f`.
pub(crate) fn all<T>(rows: &[PgRow], f: fn(&PgRow) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Converts a lease into a `chrono` duration (saturating at ~292 years).
pub(crate) fn lease_until(now: DateTime<Utc>, lease: std::time::Duration) -> DateTime<Utc> {
    let d = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    now.checked_add_signed(d)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Stable 64-bit FNV-1a hash, used for advisory lock keys (must not change between releases:
/// two versions of the server running side by side must compute the same keys).
pub(crate) fn lock_key(parts: &[&[u8]]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h as i64
}
