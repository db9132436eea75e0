//! The call status state machine (spec §3.5) and the pure, order-independent record merges.
//!
//! # Why the merge is order-independent
//!
//! Dialpad delivers events out of order. Applying the §3.5 table in *arrival* order would make
//! the final record depend on network timing (a late `voicemail` after `hangup` would be
//! dropped). Instead a call keeps, in its [`MergeLog`], the earliest event time at which each
//! status was reported; the status is the table walked over those statuses in event-time order.
//! Walking in event-time order only needs the earliest report of each status because the table
//! only ever moves "up" a partial order (once a status is refused it stays refused). Snapshot
//! fields are per-field last-writer-wins registers keyed by event time (ties broken by value), so
//! merging is commutative, associative and idempotent: any arrival order gives the same record.
//!
//! Guarantees (property-tested): an `ended` call is never moved back to `ringing`/`active`, and
//! the same set of events gives the same record whatever the order.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{CallUpdate, MessageUpdate, VoicemailUpdate};
use crate::model::*;

/// The §3.5 transition table. `from = None` is "no row yet".
///
/// ```
/// use cti_core::model::CallStatus::*;
/// use cti_core::normalize::status_transition_allowed;
/// assert!(status_transition_allowed(Some(Ringing), Active));
/// assert!(!status_transition_allowed(Some(Ended), Ringing));
/// assert!(status_transition_allowed(Some(Missed), Missed));
/// ```
pub fn status_transition_allowed(from: Option<CallStatus>, to: CallStatus) -> bool {
    use CallStatus::*;
    match from {
        None => true,
        Some(f) if f == to => true,
        Some(Ringing) => true,
        Some(Active) => matches!(to, Ended | Voicemail),
        Some(Ended) | Some(Missed) | Some(Rejected) | Some(Voicemail) => false,
    }
}

/// Status derived from the earliest report of each status: the table walked in event-time
/// order (ties by table order). An empty log gives `Ringing` (a call known only from
/// status-less events such as `preanswer` or an early `recording`).
pub fn derive_status(first: &BTreeMap<CallStatus, i64>) -> CallStatus {
    let mut seen: Vec<(i64, CallStatus)> = first.iter().map(|(s, t)| (*t, *s)).collect();
    seen.sort();
    let mut cur: Option<CallStatus> = None;
    for (_, st) in seen {
        if status_transition_allowed(cur, st) {
            cur = Some(st);
        }
    }
    cur.unwrap_or(CallStatus::Ringing)
}

/// Outcome of merging a [`CallUpdate`] into a call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallMerge {
    /// The record to write.
    pub call: Call,
    /// The row did not exist before.
    pub created: bool,
    /// Status before the merge (`None` for a new row).
    pub previous_status: Option<CallStatus>,
    /// Anything stored changed (data or merge bookkeeping): the row must be written.
    pub changed: bool,
    /// A data field changed (not only bookkeeping): worth a realtime push for status-less events.
    pub data_changed: bool,
    /// The update reported a status the call had never reported before.
    pub newly_reported: Option<CallStatus>,
}

impl CallMerge {
    /// `true` when the update's status is now the call's status and it was not before (or the
    /// status was first reported by this update): the event is worth a realtime push.
    pub fn reached(&self, status: CallStatus) -> bool {
        self.call.status == status
            && (self.previous_status != Some(status) || self.newly_reported == Some(status))
    }

    /// Merges `upd` into `existing` (or a new call for `app`).
    pub fn apply(
        existing: Option<&Call>,
        upd: &CallUpdate,
        app: AppId,
        call_id: DialpadId,
        now: Timestamp,
    ) -> CallMerge {
        let created = existing.is_none();
        let mut call = match existing {
            Some(c) => c.clone(),
            // Record ids are time-ordered (UUIDv7): new rows append to the id index.
            None => Call {
                id: Uuid::now_v7(),
                app_id: app,
                dialpad_call_id: call_id,
                direction: None,
                from_number: None,
                to_number: None,
                status: CallStatus::Ringing,
                dialpad_user_id: None,
                target_type: None,
                target_id: None,
                started_at: None,
                answered_at: None,
                ended_at: None,
                duration_seconds: None,
                recording_url: None,
                is_voicemail: false,
                voicemail_audio_url: None,
                transcript: None,
                held: false,
                merge_log: MergeLog::default(),
                last_event_ms: upd.event_ms,
                raw_payload: None,
                created_at: now,
                updated_at: now,
            },
        };
        let before = call.clone();
        let t = upd.event_ms;
        let newly_reported = upd
            .status
            .filter(|st| !before.merge_log.first.contains_key(st));
        let log = &mut call.merge_log;

        if let Some(st) = upd.status {
            let e = log.first.entry(st).or_insert(t);
            if t < *e {
                *e = t;
            }
        }
        match upd.held {
            Some(true) => log.hold = Some(log.hold.map_or(t, |h| h.max(t))),
            Some(false) => log.connected = Some(log.connected.map_or(t, |c| c.max(t))),
            None => {}
        }

        lww(
            &mut log.fields,
            "direction",
            t,
            &mut call.direction,
            upd.direction.as_ref(),
        );
        lww(
            &mut log.fields,
            "from_number",
            t,
            &mut call.from_number,
            upd.from_number.as_ref(),
        );
        lww(
            &mut log.fields,
            "to_number",
            t,
            &mut call.to_number,
            upd.to_number.as_ref(),
        );
        lww(
            &mut log.fields,
            "dialpad_user_id",
            t,
            &mut call.dialpad_user_id,
            upd.dialpad_user_id.as_ref(),
        );
        lww(
            &mut log.fields,
            "target_type",
            t,
            &mut call.target_type,
            upd.target_type.as_ref(),
        );
        lww(
            &mut log.fields,
            "target_id",
            t,
            &mut call.target_id,
            upd.target_id.as_ref(),
        );
        lww(
            &mut log.fields,
            "started_at",
            t,
            &mut call.started_at,
            upd.started_at.as_ref(),
        );
        lww(
            &mut log.fields,
            "answered_at",
            t,
            &mut call.answered_at,
            upd.answered_at.as_ref(),
        );
        lww(
            &mut log.fields,
            "ended_at",
            t,
            &mut call.ended_at,
            upd.ended_at.as_ref(),
        );
        lww(
            &mut log.fields,
            "duration_seconds",
            t,
            &mut call.duration_seconds,
            upd.duration_seconds.as_ref(),
        );
        lww(
            &mut log.fields,
            "recording_url",
            t,
            &mut call.recording_url,
            upd.recording_url.as_ref(),
        );
        lww(
            &mut log.fields,
            "transcript",
            t,
            &mut call.transcript,
            upd.transcript.as_ref(),
        );
        lww(
            &mut log.fields,
            "voicemail_audio_url",
            t,
            &mut call.voicemail_audio_url,
            upd.voicemail_audio_url.as_ref(),
        );
        // The sanitised payload follows the newest event (ties: keep the current one).
        if upd.raw_payload.is_some() && (call.raw_payload.is_none() || t > call.last_event_ms) {
            call.raw_payload = upd.raw_payload.clone();
        }

        call.status = derive_status(&call.merge_log.first);
        call.is_voicemail = call.merge_log.first.contains_key(&CallStatus::Voicemail);
        call.held = call.status == CallStatus::Active
            && match (call.merge_log.hold, call.merge_log.connected) {
                (Some(h), Some(c)) => h > c,
                (Some(_), None) => true,
                _ => false,
            };
        call.last_event_ms = call.last_event_ms.max(t);

        let data_changed = created || !same_record(&before, &call);
        let changed = data_changed
            || before.merge_log != call.merge_log
            || before.raw_payload != call.raw_payload;
        if data_changed {
            call.updated_at = now;
        }
        CallMerge {
            call,
            created,
            previous_status: existing.map(|c| c.status),
            changed,
            data_changed,
            newly_reported,
        }
    }
}

fn same_record(a: &Call, b: &Call) -> bool {
    // `updated_at` and `raw_payload` are bookkeeping; everything else is data.
    a.direction == b.direction
        && a.from_number == b.from_number
        && a.to_number == b.to_number
        && a.status == b.status
        && a.dialpad_user_id == b.dialpad_user_id
        && a.target_type == b.target_type
        && a.target_id == b.target_id
        && a.started_at == b.started_at
        && a.answered_at == b.answered_at
        && a.ended_at == b.ended_at
        && a.duration_seconds == b.duration_seconds
        && a.recording_url == b.recording_url
        && a.is_voicemail == b.is_voicemail
        && a.voicemail_audio_url == b.voicemail_audio_url
        && a.transcript == b.transcript
        && a.held == b.held
}

/// Per-field last-writer-wins register: the value with the newest event time wins; on equal
/// times the greater value wins, so the result never depends on arrival order.
fn lww<T: Clone + PartialOrd>(
    times: &mut BTreeMap<String, i64>,
    name: &str,
    t: i64,
    slot: &mut Option<T>,
    value: Option<&T>,
) {
    let Some(new_val) = value else {
        return;
    };
    let take = match (times.get(name), slot.as_ref()) {
        (_, None) | (None, Some(_)) => true,
        (Some(&old_t), Some(old)) => t > old_t || (t == old_t && new_val > old),
    };
    if take {
        *slot = Some(new_val.clone());
        times.insert(name.to_string(), t);
    }
}

/// Merges a voicemail update: new non-null values replace stored ones.
/// Returns the row and whether it was created.
pub fn merge_voicemail(
    existing: Option<&Voicemail>,
    upd: &VoicemailUpdate,
    app: AppId,
    now: Timestamp,
) -> (Voicemail, bool) {
    match existing {
        Some(v) => {
            let mut v = v.clone();
            let before = v.clone();
            set_some(&mut v.dialpad_user_id, upd.dialpad_user_id);
            set_some(&mut v.from_number, upd.from_number.clone());
            set_some(&mut v.to_number, upd.to_number.clone());
            set_some(&mut v.recording_url, upd.recording_url.clone());
            set_some(&mut v.transcript, upd.transcript.clone());
            set_some(&mut v.duration_seconds, upd.duration_seconds);
            if v != before {
                v.updated_at = now;
            }
            (v, false)
        }
        None => (
            Voicemail {
                id: Uuid::now_v7(),
                app_id: app,
                dialpad_call_id: upd.dialpad_call_id,
                dialpad_user_id: upd.dialpad_user_id,
                from_number: upd.from_number.clone(),
                to_number: upd.to_number.clone(),
                recording_url: upd.recording_url.clone(),
                transcript: upd.transcript.clone(),
                duration_seconds: upd.duration_seconds,
                created_at: now,
                updated_at: now,
            },
            true,
        ),
    }
}

/// Merges a message update: new non-null values replace stored ones.
/// Returns the row and whether it was created.
pub fn merge_message(
    existing: Option<&Message>,
    upd: &MessageUpdate,
    app: AppId,
    id: DialpadId,
    now: Timestamp,
) -> (Message, bool) {
    match existing {
        Some(m) => {
            let mut m = m.clone();
            let before = m.clone();
            set_some(&mut m.direction, upd.direction);
            set_some(&mut m.from_number, upd.from_number.clone());
            set_some(&mut m.to_number, upd.to_number.clone());
            if !upd.to_numbers.is_empty() {
                m.to_numbers = upd.to_numbers.clone();
            }
            set_some(&mut m.text, upd.text.clone());
            set_some(&mut m.dialpad_user_id, upd.dialpad_user_id);
            set_some(&mut m.sent_at, upd.sent_at);
            set_some(&mut m.message_status, upd.message_status.clone());
            if m != before {
                m.updated_at = now;
            }
            (m, false)
        }
        None => (
            Message {
                id: Uuid::now_v7(),
                app_id: app,
                dialpad_message_id: id,
                direction: upd.direction,
                from_number: upd.from_number.clone(),
                to_number: upd.to_number.clone(),
                to_numbers: upd.to_numbers.clone(),
                text: upd.text.clone(),
                dialpad_user_id: upd.dialpad_user_id,
                sent_at: upd.sent_at,
                message_status: upd.message_status.clone(),
                created_at: now,
                updated_at: now,
            },
            true,
        ),
    }
}

fn set_some<T>(slot: &mut Option<T>, v: Option<T>) {
    if v.is_some() {
        *slot = v;
    }
}
