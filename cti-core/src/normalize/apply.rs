//! Applying a [`Normalized`] event to the rows a store has loaded, and the realtime messages it
//! produces (spec §4.5: exactly one message per logical event, Dialpad ids as strings).

use serde_json::{Map, Value, json};

use super::merge::{CallMerge, merge_message, merge_voicemail};
use super::{CtiEvent, Normalized};
use crate::model::*;
use crate::store::{Applied, Existing, OutboxMessage};

/// The Dialpad user an event targets, used to look up the CRM user mapping: the user named by
/// the event, else the user already stored on the call.
pub fn target_user(n: &Normalized, existing_call: Option<&Call>) -> Option<DialpadId> {
    n.call
        .as_ref()
        .and_then(|c| c.dialpad_user_id)
        .or_else(|| n.voicemail.as_ref().and_then(|v| v.dialpad_user_id))
        .or_else(|| n.message.as_ref().and_then(|m| m.dialpad_user_id))
        .or_else(|| existing_call.and_then(|c| c.dialpad_user_id))
}

/// The Dialpad call id whose call row an event touches (the call update's, or the voicemail's).
pub fn call_key(n: &Normalized) -> Option<DialpadId> {
    n.call
        .as_ref()
        .and_then(|c| c.dialpad_call_id)
        .or_else(|| n.voicemail.as_ref().and_then(|v| v.dialpad_call_id))
}

/// Computes the rows to write and the messages to publish. Pure: stores call it inside the
/// transaction that holds the rows in `existing` locked.
pub fn apply_event(app: AppId, n: &Normalized, existing: Existing, now: Timestamp) -> Applied {
    let mut out = Applied::default();
    let crm = existing.crm_user.clone();

    let call_merge = match (&n.call, call_key(n)) {
        (Some(upd), Some(id)) => Some(CallMerge::apply(existing.call.as_ref(), upd, app, id, now)),
        _ => None,
    };

    let mut voicemail_created_or_changed = None;
    if let Some(vu) = &n.voicemail {
        let has_recording = vu.recording_url.is_some() || existing.voicemail.is_some();
        if has_recording {
            let (vm, created) = merge_voicemail(existing.voicemail.as_ref(), vu, app, now);
            let changed = created || existing.voicemail.as_ref() != Some(&vm);
            if changed {
                voicemail_created_or_changed = Some(vm.clone());
                out.voicemail = Some(vm);
            }
        }
    }

    if let Some(mu) = &n.message
        && let Some(mid) = mu.dialpad_message_id
    {
        let (msg, created) = merge_message(existing.message.as_ref(), mu, app, mid, now);
        let changed = created || existing.message.as_ref() != Some(&msg);
        if changed {
            let name = match (&n.event, created) {
                (CtiEvent::SmsDelivered, _) if !created => Some("sms.delivered"),
                (_, true) => match msg.direction {
                    Some(Direction::Outbound) => Some("sms.sent"),
                    _ => Some("sms.received"),
                },
                _ => None,
            };
            if let Some(name) = name {
                out.outbox.push(OutboxMessage {
                    event: name.to_string(),
                    payload: message_payload(name, &msg, crm.as_deref(), now),
                    target_crm_user: crm.clone(),
                });
            }
            out.message = Some(msg);
        }
    }

    if let Some(m) = &call_merge {
        let push = match &n.event {
            CtiEvent::VoicemailReceived => false, // announced by the voicemail message below
            e => match (e.call_status(), e.wire_name()) {
                (Some(st), Some(_)) => m.reached(st),
                (None, Some(_)) => m.data_changed,
                _ => false,
            },
        };
        // A `connected` that takes the call off hold is announced as `call.resumed`.
        let resumed = n.event == CtiEvent::CallStarted
            && !push
            && existing.call.as_ref().is_some_and(|c| c.held)
            && !m.call.held;
        let name = if resumed {
            Some("call.resumed")
        } else {
            n.event.wire_name().filter(|_| push)
        };
        if let Some(name) = name {
            out.outbox.push(OutboxMessage {
                event: name.to_string(),
                payload: call_payload(name, &m.call, crm.as_deref(), now),
                target_crm_user: crm.clone(),
            });
        }
        if m.changed {
            out.call = Some(m.call.clone());
        }
    }

    if let Some(vm) = voicemail_created_or_changed {
        out.outbox.push(OutboxMessage {
            event: "voicemail.received".into(),
            payload: voicemail_payload(&vm, crm.as_deref(), now),
            target_crm_user: crm.clone(),
        });
    }
    out
}

fn opt_str<T: ToString>(v: Option<T>) -> Value {
    v.map_or(Value::Null, |x| Value::String(x.to_string()))
}

fn finish(mut m: Map<String, Value>, crm: Option<&str>, now: Timestamp) -> Value {
    m.insert("timestamp".into(), Value::String(format_ts(&now)));
    if let Some(c) = crm {
        m.insert("target_crm_user".into(), Value::String(c.to_string()));
    }
    Value::Object(m)
}

/// Realtime message for a call event: `{event, call_id, direction, from_number, to_number,
/// status, user_id, duration_seconds, …, timestamp, target_crm_user?}`.
pub fn call_payload(event: &str, c: &Call, crm: Option<&str>, now: Timestamp) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!(event));
    m.insert("call_id".into(), json!(c.dialpad_call_id.to_string()));
    m.insert("id".into(), json!(c.id));
    m.insert("direction".into(), opt_str(c.direction.map(|d| d.as_str())));
    m.insert("from_number".into(), opt_str(c.from_number.as_deref()));
    m.insert("to_number".into(), opt_str(c.to_number.as_deref()));
    m.insert("status".into(), json!(c.status.as_str()));
    m.insert("user_id".into(), opt_str(c.dialpad_user_id));
    m.insert(
        "duration_seconds".into(),
        c.duration_seconds.map_or(Value::Null, Value::from),
    );
    m.insert(
        "started_at".into(),
        opt_str(c.started_at.as_ref().map(format_ts)),
    );
    m.insert(
        "ended_at".into(),
        opt_str(c.ended_at.as_ref().map(format_ts)),
    );
    if event == "call.held" || event == "call.resumed" {
        m.insert("held".into(), json!(c.held));
    }
    if event == "call.recording.completed" {
        m.insert("recording_url".into(), opt_str(c.recording_url.as_deref()));
    }
    if event == "call.transcription" {
        m.insert("transcript".into(), opt_str(c.transcript.as_deref()));
    }
    finish(m, crm, now)
}

/// Realtime message for a new voicemail (superset of both ORIG variants, spec §4.5).
pub fn voicemail_payload(v: &Voicemail, crm: Option<&str>, now: Timestamp) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!("voicemail.received"));
    m.insert("voicemail_id".into(), json!(v.id));
    m.insert("call_id".into(), opt_str(v.dialpad_call_id));
    m.insert("dialpad_call_id".into(), opt_str(v.dialpad_call_id));
    m.insert("from_number".into(), opt_str(v.from_number.as_deref()));
    m.insert("to_number".into(), opt_str(v.to_number.as_deref()));
    m.insert("recording_url".into(), opt_str(v.recording_url.as_deref()));
    m.insert("transcript".into(), opt_str(v.transcript.as_deref()));
    m.insert(
        "duration_seconds".into(),
        v.duration_seconds.map_or(Value::Null, Value::from),
    );
    m.insert("user_id".into(), opt_str(v.dialpad_user_id));
    finish(m, crm, now)
}

/// Realtime message for an SMS (`sms.received`, `sms.sent`, `sms.delivered`).
pub fn message_payload(event: &str, msg: &Message, crm: Option<&str>, now: Timestamp) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!(event));
    m.insert("message_id".into(), json!(msg.id));
    m.insert(
        "dialpad_message_id".into(),
        json!(msg.dialpad_message_id.to_string()),
    );
    m.insert(
        "direction".into(),
        opt_str(msg.direction.map(|d| d.as_str())),
    );
    m.insert("from_number".into(), opt_str(msg.from_number.as_deref()));
    m.insert("to_number".into(), opt_str(msg.to_number.as_deref()));
    m.insert("text".into(), opt_str(msg.text.as_deref()));
    m.insert("user_id".into(), opt_str(msg.dialpad_user_id));
    m.insert(
        "message_status".into(),
        opt_str(msg.message_status.as_deref()),
    );
    m.insert(
        "sent_at".into(),
        opt_str(msg.sent_at.as_ref().map(format_ts)),
    );
    finish(m, crm, now)
}
