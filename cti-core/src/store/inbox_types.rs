//! Rows of the inbox (`webhook_events`) and of the realtime outbox (`cti_events`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{AppId, DialpadId, Timestamp};

/// Processing state of an inbox event (spec §3.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Waiting for a worker.
    Pending,
    /// Held by a worker until `locked_until`.
    Processing,
    /// Applied.
    Done,
    /// Nothing to apply (unknown type/state, missing ids…); never retried.
    Ignored,
    /// Last attempt failed; retried at `next_attempt_at`.
    Failed,
    /// Gave up after the maximum number of attempts; re-drivable.
    Dead,
}

impl EventStatus {
    /// Wire / column name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    /// Parses a column value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "processing" => Self::Processing,
            "done" => Self::Done,
            "ignored" => Self::Ignored,
            "failed" => Self::Failed,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// An event accepted by `ingest`, ready to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewInboxEvent {
    /// Row id. `ingest` issues time-ordered UUIDv7 ids, so consecutive events land next to each
    /// other in a store's id index instead of on a random page each.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Explicit event id (`id:` + `event_id`/`uuid`) or SHA-256 hex of the raw body.
    ///
    /// A key of 64 lowercase hex digits is taken to be such a body hash: events that share one
    /// carry the same [`event_timestamp`](Self::event_timestamp) (the body fixes it). SQL stores
    /// rely on that to keep their dedupe index in event-time order (cti-sqlx migration 0005):
    /// a caller that reused such a key with another event time would have both events stored.
    /// Any other key deduplicates whatever the event times.
    pub dedupe_key: String,
    /// Explicit internal type (`event_type`/`type`) or Dialpad `state`.
    pub event_type: Option<String>,
    /// Dialpad `call_id` (per-call ordering key).
    pub call_id: Option<DialpadId>,
    /// Dialpad `state`.
    pub state: Option<String>,
    /// Dialpad `event_timestamp` (epoch ms).
    pub event_timestamp: Option<i64>,
    /// The verified payload: the JSON text exactly as it was signed.
    pub payload: crate::json::JsonText,
    /// Arrival time.
    pub received_at: Timestamp,
}

/// A stored inbox event.
#[derive(Clone, Debug, PartialEq)]
pub struct InboxEvent {
    /// Row id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Dedupe key.
    pub dedupe_key: String,
    /// Event type or state.
    pub event_type: Option<String>,
    /// Dialpad call id.
    pub call_id: Option<DialpadId>,
    /// Dialpad state.
    pub state: Option<String>,
    /// Dialpad event time (ms).
    pub event_timestamp: Option<i64>,
    /// Payload (the verified JSON text).
    pub payload: crate::json::JsonText,
    /// State.
    pub status: EventStatus,
    /// Attempts so far (incremented by each claim; the claim's value is the lease token).
    pub attempts: u32,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Earliest time of the next attempt.
    pub next_attempt_at: Timestamp,
    /// Lease expiry while `processing`.
    pub locked_until: Option<Timestamp>,
    /// Arrival time.
    pub received_at: Timestamp,
    /// When it reached `done`/`ignored`/`dead`.
    pub processed_at: Option<Timestamp>,
}

/// Result of inserting one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// New row with this id.
    Inserted(Uuid),
    /// An event with the same `(app_id, dedupe_key)` already exists (its id).
    Duplicate(Uuid),
}

impl InsertOutcome {
    /// `true` for [`InsertOutcome::Duplicate`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, InsertOutcome::Duplicate(_))
    }
}

/// Every inbox counter, for `GET /internal/events/stats` and `cti-server events stats`.
///
/// Counting `done` and `ignored` events reads the whole retained history; the gauges that are
/// polled (`/metrics`) use [`InboxBacklog`] instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboxStats {
    /// `pending` + `failed` (waiting for an attempt).
    pub unprocessed: u64,
    /// Held by workers.
    pub processing: u64,
    /// Failed at least once and waiting for a retry.
    pub failed: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Applied.
    pub done: u64,
    /// Ignored.
    pub ignored: u64,
    /// Arrival time of the oldest unprocessed (`pending`/`failed`/`processing`) event.
    pub oldest_unprocessed_at: Option<Timestamp>,
}

impl InboxStats {
    /// Counts `n` more events of `status` (`failed` ones are also `unprocessed`).
    pub fn add(&mut self, status: EventStatus, n: u64) {
        match status {
            EventStatus::Pending => self.unprocessed += n,
            EventStatus::Failed => {
                self.unprocessed += n;
                self.failed += n;
            }
            EventStatus::Processing => self.processing += n,
            EventStatus::Done => self.done += n,
            EventStatus::Ignored => self.ignored += n,
            EventStatus::Dead => self.dead += n,
        }
    }
}

/// The inbox gauges of `GET /metrics` and `/metrics/prometheus`: what is waiting, held or
/// dead-lettered. A store reads them at a cost that follows the backlog and the dead letters,
/// not the retained history of finished events (see [`InboxStore::inbox_backlog`]).
///
/// [`InboxStore::inbox_backlog`]: super::InboxStore::inbox_backlog
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboxBacklog {
    /// `pending` + `failed` (waiting for an attempt).
    pub unprocessed: u64,
    /// Held by workers.
    pub processing: u64,
    /// Failed at least once and waiting for a retry.
    pub failed: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Arrival time of the oldest unprocessed (`pending`/`failed`/`processing`) event.
    pub oldest_unprocessed_at: Option<Timestamp>,
}

impl From<InboxStats> for InboxBacklog {
    fn from(s: InboxStats) -> Self {
        InboxBacklog {
            unprocessed: s.unprocessed,
            processing: s.processing,
            failed: s.failed,
            dead: s.dead,
            oldest_unprocessed_at: s.oldest_unprocessed_at,
        }
    }
}

/// A realtime message produced by applying an event, before the store numbers it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    /// Event name (`call.ring`, `voicemail.received`, …).
    pub event: String,
    /// The message body (flat JSON object, spec §4.5) without `seq`.
    pub payload: serde_json::Value,
    /// CRM user the message targets (via the user mapping), if any.
    pub target_crm_user: Option<String>,
}

/// A committed realtime message with its per-app sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedEvent {
    /// Tenant.
    pub app_id: AppId,
    /// Per-app monotonically increasing number, gap-free, starting at 1.
    pub seq: u64,
    /// Event name.
    pub event: String,
    /// Body without `seq`.
    pub payload: serde_json::Value,
    /// Targeted CRM user.
    pub target_crm_user: Option<String>,
    /// Commit time.
    pub created_at: Timestamp,
}

impl PublishedEvent {
    /// The wire JSON: `payload` plus `"seq"`.
    pub fn to_wire(&self) -> serde_json::Value {
        let mut v = self.payload.clone();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("seq".into(), serde_json::Value::from(self.seq));
        }
        v
    }
}
