//! Helpers shared by both backends: error mapping, (de)serialisation of JSON columns and of
//! enum / id columns, and the schema-version error.
//!
//! # The `inbox_complete` algorithm (both backends)
//!
//! `inbox_complete` is `inbox_complete_batch` of one item, and a batch is completed in ONE
//! write transaction (SQLite: on the single writer connection, `BEGIN IMMEDIATE`; PostgreSQL:
//! after locking the apps' rows in id order) with a constant number of statements — see
//! `crate::batch` for the steps: lease check and status change of every item in one
//! `UPDATE … RETURNING` (an item whose event is no longer `processing` with its `attempt` gets
//! [`StoreError::LeaseLost`] and changes nothing), one read per record kind, the pure
//! `cti_core::store::apply_event` of every item in order in memory, then multi-row upserts, the
//! new `apps.last_event_seq` and the outbox rows. Any statement error rolls the whole
//! transaction back — records, outbox and inbox status change together or not at all — and the
//! batch is retried item by item. `done` keeps the `last_error` of earlier attempts (it tells
//! why they failed, as `MemoryStore` does); `ignored` records its reason.

// Each helper is used by at least one of the two backends, which are built in parallel.
#![allow(dead_code)]

use std::str::FromStr;

use cti_core::model::{CallStatus, DialpadId, Direction, MergeLog};
use cti_core::store::{EventStatus, StoreError};
use sqlx::error::{DatabaseError, ErrorKind};

/// Maps a sqlx error to the small public [`StoreError`].
///
/// * I/O, pool timeout/closed, crashed worker, TLS, and database errors that mean "cannot
///   talk to the database right now" (PostgreSQL SQLSTATE class `08`, `57P01`–`57P03`,
///   `53300`, serialisation failures / deadlocks / lock or statement timeouts; SQLite
///   `BUSY`, `LOCKED`, `CANTOPEN`, `IOERR`, `FULL`, `NOMEM`) → [`StoreError::Unavailable`];
/// * unique / primary-key violations → [`StoreError::Conflict`] (constraint or message,
///   never the offending values);
/// * everything else → [`StoreError::Backend`].
///
/// Messages never contain SQL parameter values: PostgreSQL puts values in the error *detail*
/// (never read here) except for data exceptions (class `22`), whose message is dropped.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(io) => StoreError::Unavailable(format!("i/o: {}", io.kind())),
        sqlx::Error::PoolTimedOut => StoreError::Unavailable("connection pool timed out".into()),
        sqlx::Error::PoolClosed => StoreError::Unavailable("connection pool closed".into()),
        sqlx::Error::WorkerCrashed => StoreError::Unavailable("database worker crashed".into()),
        sqlx::Error::Tls(_) => StoreError::Unavailable("tls connection failed".into()),
        sqlx::Error::Database(db) => map_db_err(db.as_ref()),
        sqlx::Error::Migrate(m) => match *m {
            sqlx::migrate::MigrateError::Execute(inner)
            | sqlx::migrate::MigrateError::ExecuteMigration(inner, _) => map_err(inner),
            other => StoreError::Backend(format!("migration: {other}")),
        },
        sqlx::Error::RowNotFound => StoreError::Backend("expected row not found".into()),
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::Backend(format!("decoding column {index}: {source}"))
        }
        sqlx::Error::Decode(source) => StoreError::Backend(format!("decoding: {source}")),
        sqlx::Error::Encode(_) => StoreError::Backend("encoding a parameter failed".into()),
        sqlx::Error::Configuration(source) => {
            StoreError::Backend(format!("configuration: {source}"))
        }
        other => StoreError::Backend(other.to_string()),
    }
}

fn map_db_err(db: &dyn DatabaseError) -> StoreError {
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    if db.kind() == ErrorKind::UniqueViolation {
        let what = db
            .constraint()
            .map(str::to_string)
            .unwrap_or_else(|| db.message().to_string());
        return StoreError::Conflict(format!("unique constraint violated: {what}"));
    }
    if let Some(sq) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // Primary result code = low byte of the extended code.
        let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
        // 5 BUSY, 6 LOCKED, 7 NOMEM, 10 IOERR, 13 FULL, 14 CANTOPEN.
        if matches!(primary, 5 | 6 | 7 | 10 | 13 | 14) {
            return StoreError::Unavailable(format!("sqlite {code}: {}", sq.message()));
        }
        return StoreError::Backend(format!("sqlite {code}: {}", sq.message()));
    }
    // PostgreSQL (SQLSTATE).
    let unavailable = code.starts_with("08")
        || matches!(
            code.as_str(),
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "55P03" | "57014"
        );
    if unavailable {
        return StoreError::Unavailable(format!("database {code}: {}", db.message()));
    }
    if code.starts_with("22") {
        return StoreError::Backend(format!("database data exception {code}"));
    }
    StoreError::Backend(format!("database {code}: {}", db.message()))
}

/// A corrupt / unexpected column value.
pub(crate) fn corrupt(column: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("invalid value in column {column}: {what}"))
}

/// `MergeLog` → JSON text (for `TEXT` / `JSONB` columns).
pub(crate) fn merge_log_to_json(log: &MergeLog) -> Result<String, StoreError> {
    serde_json::to_string(log).map_err(|e| StoreError::Backend(format!("encoding merge_log: {e}")))
}

/// JSON text → `MergeLog`; `NULL` / empty text gives the default log.
pub(crate) fn merge_log_from_json(text: Option<&str>) -> Result<MergeLog, StoreError> {
    match text {
        None => Ok(MergeLog::default()),
        Some(t) if t.trim().is_empty() => Ok(MergeLog::default()),
        Some(t) => serde_json::from_str(t).map_err(|e| corrupt("merge_log", e)),
    }
}

/// Recipients → JSON array text.
pub(crate) fn to_numbers_to_json(numbers: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(numbers)
        .map_err(|e| StoreError::Backend(format!("encoding to_numbers: {e}")))
}

/// JSON array text → recipients; `NULL` gives an empty list.
pub(crate) fn to_numbers_from_json(text: Option<&str>) -> Result<Vec<String>, StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(t) if t.trim().is_empty() => Ok(Vec::new()),
        Some(t) => serde_json::from_str(t).map_err(|e| corrupt("to_numbers", e)),
    }
}

/// JSON value → recipients; `null` gives an empty list.
pub(crate) fn to_numbers_from_value(
    v: Option<serde_json::Value>,
) -> Result<Vec<String>, StoreError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v).map_err(|e| corrupt("to_numbers", e)),
    }
}

/// Any JSON payload → text for a `TEXT` column.
pub(crate) fn json_to_text(v: &serde_json::Value) -> String {
    // Serialising a `Value` to a string cannot fail (keys are always strings).
    v.to_string()
}

/// `TEXT` column → JSON payload (`column` names the column in the error).
pub(crate) fn json_from_text(column: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(column, e))
}

/// Optional `TEXT` column → optional JSON payload.
pub(crate) fn opt_json_from_text(
    column: &str,
    text: Option<&str>,
) -> Result<Option<serde_json::Value>, StoreError> {
    text.map(|t| json_from_text(column, t)).transpose()
}

/// `BIGINT` column → Dialpad id (must be positive).
pub(crate) fn dialpad_id(column: &str, v: i64) -> Result<DialpadId, StoreError> {
    if v > 0 {
        Ok(DialpadId(v as u64))
    } else {
        Err(corrupt(column, v))
    }
}

/// Optional `BIGINT` column → optional Dialpad id.
pub(crate) fn opt_dialpad_id(
    column: &str,
    v: Option<i64>,
) -> Result<Option<DialpadId>, StoreError> {
    v.map(|v| dialpad_id(column, v)).transpose()
}

/// `status` column of `calls`.
pub(crate) fn call_status(v: &str) -> Result<CallStatus, StoreError> {
    CallStatus::parse(v).ok_or_else(|| corrupt("calls.status", v))
}

/// `direction` column.
pub(crate) fn opt_direction(v: Option<&str>) -> Result<Option<Direction>, StoreError> {
    v.map(|s| Direction::parse_filter(s).ok_or_else(|| corrupt("direction", s)))
        .transpose()
}

/// `status` column of `webhook_events`.
pub(crate) fn event_status(v: &str) -> Result<EventStatus, StoreError> {
    EventStatus::parse(v).ok_or_else(|| corrupt("webhook_events.status", v))
}

/// `attempts` column → `u32`.
pub(crate) fn attempts(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt("webhook_events.attempts", v))
}

/// Parses a UUID stored as text.
pub(crate) fn uuid_from_text(column: &str, v: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::from_str(v).map_err(|_| corrupt(column, "not a uuid"))
}

/// Refusal to run against a database whose schema is not the one this binary knows.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database has an applied migration newer than any this binary embeds (it was
    /// migrated by a newer release); running would risk corrupting it.
    #[error(
        "database schema version {applied} is newer than the newest migration this binary knows ({known}); upgrade the binary"
    )]
    SchemaTooNew {
        /// Highest version recorded in the database's migration ledger.
        applied: i64,
        /// Highest version embedded in this binary.
        known: i64,
    },
    /// Any other failure (database unreachable, a migration failed, a changed migration…).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<MigrationError> for StoreError {
    fn from(e: MigrationError) -> Self {
        match e {
            MigrationError::Store(s) => s,
            e @ MigrationError::SchemaTooNew { .. } => StoreError::Backend(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_log_roundtrip_and_null() {
        let mut log = MergeLog::default();
        log.first.insert(CallStatus::Ringing, 5);
        log.fields.insert("from_number".into(), 7);
        log.hold = Some(9);
        let text = merge_log_to_json(&log).unwrap();
        assert_eq!(merge_log_from_json(Some(&text)).unwrap(), log);
        assert_eq!(merge_log_from_json(None).unwrap(), MergeLog::default());
        assert!(merge_log_from_json(Some("{not json")).is_err());
    }

    #[test]
    fn to_numbers_roundtrip() {
        let n = vec!["+1".to_string(), "+2".to_string()];
        let t = to_numbers_to_json(&n).unwrap();
        assert_eq!(to_numbers_from_json(Some(&t)).unwrap(), n);
        assert!(to_numbers_from_json(None).unwrap().is_empty());
    }

    #[test]
    fn io_and_pool_errors_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(map_err(sqlx::Error::Io(io)).is_unavailable());
        assert!(map_err(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(matches!(
            map_err(sqlx::Error::RowNotFound),
            StoreError::Backend(_)
        ));
    }
}
