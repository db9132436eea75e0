//! Payload → [`Normalized`] (spec §3.2 detection and mapping, §3.4 call fields, §3.7 voicemail,
//! §3.8 SMS).
//!
//! Detection, in order:
//!
//! 1. An explicit `event_type` (else `type`) decides alone. One of the internal names of spec
//!    §3.3 ([`INTERNAL_EVENT_TYPES`]) selects the legacy JSON test path with the original
//!    extraction chains; any other value is [`CtiEvent::Ignored`] with that value as reason,
//!    even when the payload also carries a Dialpad `state`.
//! 2. `call_id` + `state`: a real Dialpad call event, mapped by the REWRITE table of spec §3.2
//!    (unknown or unmapped states are ignored, never an error).
//! 3. `id` plus one of `from_number`/`to_number`/`created_date`/`text` and no `call_id`: a
//!    Dialpad SMS event (`inbound` → [`CtiEvent::SmsReceived`], `outbound` →
//!    [`CtiEvent::SmsSent`]; whether a repeat is a delivery update is the applier's business).
//! 4. Anything else is ignored.
//!
//! Bad data never panics and never fails: a missing or malformed id gives an ignored event with
//! a reason (`missing_call_id`, `invalid_call_id`, `missing_recording_url`, …).

use serde_json::Value;

use super::sanitize::{sanitize, sanitize_text};
use super::{CallUpdate, CtiEvent, MessageUpdate, Normalized, VoicemailUpdate};
use crate::dialpad::{CallEvent, CallEventProbe, SmsEvent, ms_to_seconds, ms_to_timestamp};
use crate::json::JsonText;
use crate::model::{DialpadId, Direction, Timestamp};

/// Event types of the legacy JSON test path (spec §3.3), used verbatim when a payload names one
/// in `event_type` or `type`.
pub const INTERNAL_EVENT_TYPES: [&str; 14] = [
    "call.ring",
    "call.started",
    "call.ended",
    "call.recording.completed",
    "voicemail.received",
    "call.voicemail",
    "sms.received",
    "sms.sent",
    "sms.delivered",
    "message.received",
    "message.sent",
    "message.delivered",
    "message.inbound",
    "message.outbound",
];

/// Maps a Dialpad call `state` (trimmed, any case) to the logical event (spec §3.2 REWRITE
/// table). Unmapped and unknown states give [`CtiEvent::Ignored`].
///
/// ```
/// use cti_core::normalize::CtiEvent;
/// use cti_core::normalize::extract::event_for_state;
/// assert_eq!(event_for_state("calling"), CtiEvent::CallRinging);
/// assert_eq!(event_for_state("voicemail_uploaded"), CtiEvent::VoicemailReceived);
/// assert_eq!(event_for_state("recap_summary"), CtiEvent::Ignored { state: "recap_summary".into() });
/// ```
pub fn event_for_state(state: &str) -> CtiEvent {
    let s = state.trim().to_ascii_lowercase();
    match s.as_str() {
        "calling" | "ringing" | "queued" => CtiEvent::CallRinging,
        "preanswer" => CtiEvent::CallUpdated,
        "connected" => CtiEvent::CallStarted,
        "hold" => CtiEvent::CallHeld,
        "hangup" => CtiEvent::CallEnded,
        "missed" => CtiEvent::CallMissed,
        "blocked" => CtiEvent::CallRejected,
        "voicemail" => CtiEvent::CallVoicemail,
        "voicemail_uploaded" => CtiEvent::VoicemailReceived,
        "recording" | "admin_recording" => CtiEvent::RecordingCompleted,
        "transcription" | "call_transcription" => CtiEvent::Transcription,
        _ => CtiEvent::Ignored {
            state: state.trim().to_string(),
        },
    }
}

/// Normalises a verified payload. `received_at` is the inbox arrival time, used when the payload
/// carries no `event_timestamp` (legacy JSON path) and as `ended_at` fallback of `call.ended`.
pub fn normalize(payload: &serde_json::Value, received_at: Timestamp) -> Normalized {
    let Some(obj) = payload.as_object() else {
        return Normalized::ignored("not_an_object");
    };
    if let Some(t) = first_truthy(&[obj.get("event_type"), obj.get("type")]) {
        let name = match t {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return match name.as_str() {
            "call.ring" => legacy_call(CtiEvent::CallRinging, payload, received_at),
            "call.started" => legacy_call(CtiEvent::CallStarted, payload, received_at),
            "call.ended" => legacy_call(CtiEvent::CallEnded, payload, received_at),
            "call.recording.completed" => legacy_recording(payload, received_at),
            "voicemail.received" | "call.voicemail" => legacy_voicemail(payload, received_at),
            t if INTERNAL_EVENT_TYPES.contains(&t) => legacy_sms(t, payload),
            _ => Normalized::ignored(name),
        };
    }
    let has_call_id = obj.get("call_id").is_some_and(truthy);
    let has_state = obj.get("state").is_some_and(truthy);
    if has_call_id && has_state {
        return dialpad_call(payload, received_at);
    }
    if !has_call_id && is_sms_shape(payload) {
        return dialpad_sms(payload);
    }
    if has_state {
        return Normalized::ignored("missing_call_id");
    }
    Normalized::ignored("no_event_type")
}

fn is_sms_shape(payload: &Value) -> bool {
    payload.get("id").is_some_and(truthy)
        && ["from_number", "to_number", "created_date", "text"]
            .iter()
            .any(|k| payload.get(k).is_some_and(|v| !v.is_null()))
}

// ---------------------------------------------------------------------------------------------
// Real Dialpad events
// ---------------------------------------------------------------------------------------------

fn dialpad_call(payload: &Value, received_at: Timestamp) -> Normalized {
    match CallEvent::from_json_fields(payload) {
        Ok(ev) => call_event(ev, || JsonText::from_value(&sanitize(payload)), received_at),
        Err(e) => {
            if payload
                .get("call_id")
                .and_then(DialpadId::from_json)
                .is_none()
            {
                return Normalized::ignored("invalid_call_id");
            }
            Normalized::ignored(format!("malformed_call_event: {e}"))
        }
    }
}

/// Normalises a verified payload kept as JSON text; the same result as [`normalize`] of the
/// decoded payload (`raw_payload` equal as JSON), and text that is not JSON is ignored
/// (`not_json`).
///
/// A Dialpad call event (the bulk of the traffic) takes a fast path: its fields are read
/// straight from the text — no `Value` tree — and when [`super::sanitize::needs_sanitizing`]
/// finds nothing to cut, `raw_payload` is the payload text itself (shared, not copied). Any
/// other shape, or text the fast path cannot read as a call event, goes through [`normalize`].
///
/// ```
/// use cti_core::json::JsonText;
/// use cti_core::normalize::{CtiEvent, normalize_json};
/// let text = JsonText::parse(r#"{"call_id": 5744118934454272, "state": "connected",
///     "direction": "inbound", "event_timestamp": 1767261605000}"#).unwrap();
/// let n = normalize_json(&text, chrono::Utc::now());
/// assert_eq!(n.event, CtiEvent::CallStarted);
/// assert_eq!(n.call.unwrap().raw_payload, Some(text));
/// ```
pub fn normalize_json(payload: &JsonText, received_at: Timestamp) -> Normalized {
    if let Ok(probe) = serde_json::from_str::<CallEventProbe>(payload.as_str()) {
        let explicit_type = [probe.event_type.as_ref(), probe.kind.as_ref()]
            .into_iter()
            .flatten()
            .any(truthy);
        // The conditions under which `normalize` takes its Dialpad call path with these fields
        // (`call_id` and `state` truthy, no explicit type).
        let ev = probe.into_event();
        if !explicit_type && ev.call_id.0 != 0 && !ev.state.is_empty() {
            return call_event(ev, || sanitize_text(payload), received_at);
        }
    }
    match payload.to_value() {
        Ok(v) => normalize(&v, received_at),
        Err(_) => Normalized::ignored("not_json"),
    }
}

/// The normalisation of a decoded Dialpad call event; `raw` gives the sanitised payload.
fn call_event(ev: CallEvent, raw: impl FnOnce() -> JsonText, received_at: Timestamp) -> Normalized {
    let event = event_for_state(&ev.state);
    if matches!(event, CtiEvent::Ignored { .. }) {
        return Normalized::ignored(ev.state.trim());
    }

    // Ringing/connected/hold events carry `duration: 0`; only outcome and post-call events (or a
    // positive value) may set the duration.
    let final_like = matches!(
        event,
        CtiEvent::CallEnded
            | CtiEvent::CallMissed
            | CtiEvent::CallRejected
            | CtiEvent::CallVoicemail
            | CtiEvent::VoicemailReceived
            | CtiEvent::RecordingCompleted
            | CtiEvent::Transcription
    );
    let duration_seconds = ev
        .duration
        .filter(|d| final_like || *d > 0.0)
        .and_then(ms_to_seconds);
    let (from_number, to_number) = ev.from_to();
    let transcript = ev.transcript();
    let voicemail_link = match event {
        CtiEvent::VoicemailReceived => ev.voicemail_link(),
        _ => None,
    };
    let call = CallUpdate {
        dialpad_call_id: Some(ev.call_id),
        status: event.call_status(),
        event_ms: ev
            .event_timestamp
            .unwrap_or_else(|| received_at.timestamp_millis()),
        direction: ev.direction(),
        from_number: from_number.clone(),
        to_number: to_number.clone(),
        dialpad_user_id: ev.target_user_id(),
        target_type: ev
            .target
            .as_ref()
            .and_then(|t| t.kind.as_deref())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string),
        target_id: ev.target.as_ref().and_then(|t| t.id),
        started_at: ev.date_started.and_then(ms_to_timestamp),
        answered_at: ev.date_connected.and_then(ms_to_timestamp),
        ended_at: ev.date_ended.and_then(ms_to_timestamp),
        duration_seconds,
        recording_url: match event {
            CtiEvent::RecordingCompleted => ev.recording_link(),
            _ => None,
        },
        transcript: transcript.clone(),
        voicemail_audio_url: voicemail_link.clone(),
        held: match event {
            CtiEvent::CallStarted => Some(false),
            CtiEvent::CallHeld => Some(true),
            _ => None,
        },
        raw_payload: Some(raw()),
    };
    let voicemail = matches!(event, CtiEvent::VoicemailReceived).then(|| VoicemailUpdate {
        dialpad_call_id: Some(ev.call_id),
        dialpad_user_id: ev.target_user_id(),
        from_number,
        to_number,
        recording_url: voicemail_link,
        transcript,
        duration_seconds: ev.voicemail_duration_seconds(),
    });
    Normalized {
        event,
        call: Some(call),
        voicemail,
        message: None,
    }
}

fn dialpad_sms(payload: &Value) -> Normalized {
    let ev: SmsEvent = match serde_json::from_value(payload.clone()) {
        Ok(ev) => ev,
        Err(e) => {
            if payload.get("id").and_then(DialpadId::from_json).is_none() {
                return Normalized::ignored("invalid_message_id");
            }
            return Normalized::ignored(format!("malformed_sms_event: {e}"));
        }
    };
    let direction = ev.direction();
    let event = match direction {
        Some(Direction::Outbound) => CtiEvent::SmsSent,
        _ => CtiEvent::SmsReceived,
    };
    let to_numbers = ev.to_numbers();
    let message = MessageUpdate {
        dialpad_message_id: Some(ev.id),
        direction,
        from_number: ev
            .from_number
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        to_number: to_numbers.first().cloned(),
        to_numbers,
        text: ev.body(),
        dialpad_user_id: ev.user_id(),
        sent_at: ev.created_date.and_then(ms_to_timestamp),
        message_status: ev.message_status.clone(),
    };
    Normalized {
        event,
        call: None,
        voicemail: None,
        message: Some(message),
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy JSON test path (explicit internal event type; ORIG extraction chains)
// ---------------------------------------------------------------------------------------------

/// `call = payload.call || payload.data.call || payload` (spec §3.4).
fn legacy_call(event: CtiEvent, payload: &Value, received_at: Timestamp) -> Normalized {
    let call = pick_object(payload, &[&["call"], &["data", "call"]]);
    let dialpad_call_id = match first_id(&[call.get("id"), call.get("call_id")]) {
        IdLookup::Found(id) => id,
        IdLookup::Missing => return Normalized::ignored("missing_call_id"),
        IdLookup::Invalid => return Normalized::ignored("invalid_call_id"),
    };
    let ended_at = first_time(&[call.get("ended_at"), call.get("end_time")]);
    let ended_at = match event {
        // ORIG: `ended_at = COALESCE(<payload ended_at>, now())`.
        CtiEvent::CallEnded => ended_at.or(Some(received_at)),
        _ => ended_at,
    };
    let update = CallUpdate {
        dialpad_call_id: Some(dialpad_call_id),
        status: event.call_status(),
        event_ms: event_ms(call, payload, received_at),
        direction: first_text(&[call.get("direction")])
            .as_deref()
            .and_then(Direction::normalize),
        from_number: first_text(&[
            call.get("from"),
            call.get("from_number"),
            call.get("caller"),
        ]),
        to_number: first_text(&[call.get("to"), call.get("to_number"), call.get("callee")]),
        dialpad_user_id: first_id(&[
            call.get("user_id"),
            call.get("dialpad_user_id"),
            path(call, &["owner", "id"]),
        ])
        .found(),
        target_type: None,
        target_id: None,
        started_at: first_time(&[
            call.get("started_at"),
            call.get("start_time"),
            call.get("created_at"),
        ]),
        answered_at: None,
        ended_at,
        // Seconds on this path (test tooling), unlike Dialpad's milliseconds.
        duration_seconds: first_truthy(&[call.get("duration"), call.get("duration_seconds")])
            .and_then(number)
            .and_then(seconds),
        recording_url: first_text(&[call.get("recording_url"), path(call, &["recording", "url"])]),
        transcript: None,
        voicemail_audio_url: None,
        held: match event {
            CtiEvent::CallStarted => Some(false),
            _ => None,
        },
        raw_payload: Some(JsonText::from_value(&sanitize(payload))),
    };
    Normalized {
        event,
        call: Some(update),
        voicemail: None,
        message: None,
    }
}

/// `recording = payload.recording || payload.data.recording || payload` (spec §3.6).
fn legacy_recording(payload: &Value, received_at: Timestamp) -> Normalized {
    let rec = pick_object(payload, &[&["recording"], &["data", "recording"]]);
    let dialpad_call_id = match first_id(&[
        rec.get("call_id"),
        path(payload, &["call", "id"]),
        payload.get("call_id"),
    ]) {
        IdLookup::Found(id) => id,
        IdLookup::Missing => return Normalized::ignored("missing_call_id"),
        IdLookup::Invalid => return Normalized::ignored("invalid_call_id"),
    };
    let Some(url) = first_text(&[
        rec.get("url"),
        rec.get("download_url"),
        rec.get("recording_url"),
    ]) else {
        return Normalized::ignored("missing_recording_url");
    };
    let update = CallUpdate {
        dialpad_call_id: Some(dialpad_call_id),
        event_ms: event_ms(rec, payload, received_at),
        recording_url: Some(url),
        raw_payload: Some(JsonText::from_value(&sanitize(payload))),
        ..CallUpdate::default()
    };
    Normalized {
        event: CtiEvent::RecordingCompleted,
        call: Some(update),
        voicemail: None,
        message: None,
    }
}

/// `vm = payload.voicemail || payload.data.voicemail || payload` (spec §3.7).
fn legacy_voicemail(payload: &Value, received_at: Timestamp) -> Normalized {
    let vm = pick_object(payload, &[&["voicemail"], &["data", "voicemail"]]);
    let dialpad_call_id = match first_id(&[vm.get("call_id"), vm.get("dialpad_call_id")]) {
        IdLookup::Found(id) => Some(id),
        IdLookup::Missing => None,
        IdLookup::Invalid => return Normalized::ignored("invalid_call_id"),
    };
    let Some(user) = first_id(&[vm.get("user_id"), vm.get("dialpad_user_id")]).found() else {
        return Normalized::ignored("missing_user_id");
    };
    let Some(recording_url) = first_text(&[vm.get("recording_url"), vm.get("audio_url")]) else {
        return Normalized::ignored("missing_recording_url");
    };
    let from_number = first_text(&[vm.get("from"), vm.get("from_number"), vm.get("caller")]);
    let to_number = first_text(&[vm.get("to"), vm.get("to_number"), vm.get("callee")]);
    let transcript = first_body(&[vm.get("transcript")]);
    // ORIG: `vm.duration || vm.duration_seconds || 0`, in seconds.
    let duration_seconds = first_truthy(&[vm.get("duration"), vm.get("duration_seconds")])
        .and_then(number)
        .and_then(seconds)
        .or(Some(0));
    let call = dialpad_call_id.map(|id| CallUpdate {
        dialpad_call_id: Some(id),
        status: CtiEvent::VoicemailReceived.call_status(),
        event_ms: event_ms(vm, payload, received_at),
        from_number: from_number.clone(),
        to_number: to_number.clone(),
        dialpad_user_id: Some(user),
        voicemail_audio_url: Some(recording_url.clone()),
        transcript: transcript.clone(),
        raw_payload: Some(JsonText::from_value(&sanitize(payload))),
        ..CallUpdate::default()
    });
    Normalized {
        event: CtiEvent::VoicemailReceived,
        call,
        voicemail: Some(VoicemailUpdate {
            dialpad_call_id,
            dialpad_user_id: Some(user),
            from_number,
            to_number,
            recording_url: Some(recording_url),
            transcript,
            duration_seconds,
        }),
        message: None,
    }
}

/// `msg = payload.message || payload.data.message || payload.sms || payload` (spec §3.8), plus
/// the Dialpad SMS fields so a Dialpad-shaped payload with an explicit type works too.
fn legacy_sms(event_type: &str, payload: &Value) -> Normalized {
    let msg = pick_object(payload, &[&["message"], &["data", "message"], &["sms"]]);
    let dialpad_message_id = match first_id(&[
        msg.get("id"),
        msg.get("message_id"),
        payload.get("message_id"),
        payload.get("id"),
    ]) {
        IdLookup::Found(id) => id,
        IdLookup::Missing => return Normalized::ignored("missing_message_id"),
        IdLookup::Invalid => return Normalized::ignored("invalid_message_id"),
    };
    let direction = first_text(&[
        msg.get("direction"),
        payload.get("direction"),
        payload.get("sms_direction"),
    ])
    .as_deref()
    .and_then(Direction::normalize)
    .or_else(|| {
        if event_type.contains("received") || event_type.contains("inbound") {
            Some(Direction::Inbound)
        } else if event_type.contains("sent") || event_type.contains("outbound") {
            Some(Direction::Outbound)
        } else {
            None
        }
    });
    let event = if event_type.ends_with(".delivered") {
        CtiEvent::SmsDelivered
    } else if direction == Some(Direction::Outbound) {
        CtiEvent::SmsSent
    } else {
        CtiEvent::SmsReceived
    };
    let to_numbers = first_truthy(&[
        msg.get("to"),
        msg.get("to_number"),
        msg.get("recipient"),
        payload.get("to"),
    ])
    .map(text_list)
    .unwrap_or_default();
    let dialpad_user_id = first_id(&[
        msg.get("user_id"),
        msg.get("dialpad_user_id"),
        path(msg, &["owner", "id"]),
    ])
    .found()
    .or_else(|| {
        let is_user = path(msg, &["target", "type"])
            .and_then(Value::as_str)
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("user"));
        if is_user {
            path(msg, &["target", "id"]).and_then(DialpadId::from_json)
        } else {
            None
        }
    });
    let sent_at = first_time(&[
        msg.get("sent_at"),
        msg.get("timestamp"),
        msg.get("created_at"),
        payload.get("time"),
        msg.get("created_date"),
    ]);
    let message = MessageUpdate {
        dialpad_message_id: Some(dialpad_message_id),
        direction,
        from_number: first_text(&[
            msg.get("from"),
            msg.get("from_number"),
            msg.get("sender"),
            payload.get("from"),
        ]),
        to_number: to_numbers.first().cloned(),
        to_numbers,
        text: first_body(&[
            msg.get("text"),
            msg.get("body"),
            msg.get("message"),
            payload.get("text"),
            msg.get("text_content"),
        ]),
        dialpad_user_id,
        sent_at,
        message_status: first_text(&[msg.get("message_status"), msg.get("status")]),
    };
    Normalized {
        event,
        call: None,
        voicemail: None,
        message: Some(message),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers (JavaScript "first truthy" semantics)
// ---------------------------------------------------------------------------------------------

/// JavaScript truthiness: `null`, `false`, `0`, `""` are falsy.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn first_truthy<'a>(candidates: &[Option<&'a Value>]) -> Option<&'a Value> {
    candidates.iter().flatten().copied().find(|v| truthy(v))
}

fn path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |cur, k| cur.get(k))
}

/// The first of `paths` that holds an object, else the payload itself.
fn pick_object<'a>(payload: &'a Value, paths: &[&[&str]]) -> &'a Value {
    paths
        .iter()
        .filter_map(|p| path(payload, p))
        .find(|v| v.is_object())
        .unwrap_or(payload)
}

/// A scalar as trimmed text (`null`/blank → `None`).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_string),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// First truthy candidate that is usable text (trimmed).
fn first_text(candidates: &[Option<&Value>]) -> Option<String> {
    candidates
        .iter()
        .flatten()
        .filter(|v| truthy(v))
        .find_map(|v| scalar_text(v))
}

/// First non-empty string candidate, kept byte-exact (message and transcript bodies).
fn first_body(candidates: &[Option<&Value>]) -> Option<String> {
    candidates
        .iter()
        .flatten()
        .find_map(|v| v.as_str().filter(|s| !s.trim().is_empty()))
        .map(str::to_string)
}

/// A string, or the non-blank strings of an array.
fn text_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar_text).collect(),
        other => scalar_text(other).into_iter().collect(),
    }
}

enum IdLookup {
    Found(DialpadId),
    Missing,
    Invalid,
}

impl IdLookup {
    fn found(self) -> Option<DialpadId> {
        match self {
            IdLookup::Found(id) => Some(id),
            _ => None,
        }
    }
}

/// The first truthy candidate that is a valid Dialpad id; `Invalid` when candidates were given
/// but none was valid.
fn first_id(candidates: &[Option<&Value>]) -> IdLookup {
    let mut saw_value = false;
    for v in candidates.iter().flatten().filter(|v| truthy(v)) {
        saw_value = true;
        if let Some(id) = DialpadId::from_json(v) {
            return IdLookup::Found(id);
        }
    }
    if saw_value {
        IdLookup::Invalid
    } else {
        IdLookup::Missing
    }
}

/// A number or numeric string.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// Seconds (possibly fractional) → whole seconds.
fn seconds(s: f64) -> Option<i64> {
    ms_to_seconds(s * 1000.0)
}

/// RFC 3339 text (also `YYYY-MM-DD HH:MM:SS[.fff]`, read as UTC) or epoch milliseconds.
fn parse_time(v: &Value) -> Option<Timestamp> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&chrono::Utc));
            }
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
                return Some(t.and_utc());
            }
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                return Some(t.and_utc());
            }
            s.parse::<i64>().ok().and_then(ms_to_timestamp)
        }
        Value::Number(n) => n.as_i64().and_then(ms_to_timestamp),
        _ => None,
    }
}

fn first_time(candidates: &[Option<&Value>]) -> Option<Timestamp> {
    candidates
        .iter()
        .flatten()
        .filter(|v| truthy(v))
        .find_map(|v| parse_time(v))
}

/// `event_timestamp` (epoch ms) of the inner object or the payload, else the arrival time.
fn event_ms(inner: &Value, payload: &Value, received_at: Timestamp) -> i64 {
    first_truthy(&[inner.get("event_timestamp"), payload.get("event_timestamp")])
        .and_then(number)
        .map(|f| f.round() as i64)
        .unwrap_or_else(|| received_at.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallStatus, format_ts};
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(2026, 1, 29, 12, 30, 0)
            .unwrap()
    }

    fn fixture(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/dialpad/events")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn state_table() {
        let cases = [
            ("calling", CtiEvent::CallRinging),
            ("ringing", CtiEvent::CallRinging),
            ("queued", CtiEvent::CallRinging),
            ("preanswer", CtiEvent::CallUpdated),
            ("connected", CtiEvent::CallStarted),
            ("hold", CtiEvent::CallHeld),
            ("hangup", CtiEvent::CallEnded),
            ("missed", CtiEvent::CallMissed),
            ("blocked", CtiEvent::CallRejected),
            ("voicemail", CtiEvent::CallVoicemail),
            ("voicemail_uploaded", CtiEvent::VoicemailReceived),
            ("recording", CtiEvent::RecordingCompleted),
            ("admin_recording", CtiEvent::RecordingCompleted),
            ("transcription", CtiEvent::Transcription),
            ("call_transcription", CtiEvent::Transcription),
            (" Ringing ", CtiEvent::CallRinging),
        ];
        for (state, want) in cases {
            assert_eq!(event_for_state(state), want, "{state}");
        }
        for state in [
            "postcall",
            "recap_summary",
            "recap_action_items",
            "recap_outcome",
            "recap_purposes",
            "csat",
            "pcsat",
            "dispositions",
            "ai_playbook",
            "admin",
            "barge",
            "monitor",
            "takeover",
            "parked",
            "merged",
            "all",
            "eavesdrop",
        ] {
            let n = normalize(&json!({"call_id": 1, "state": state}), now());
            assert_eq!(n, Normalized::ignored(state), "{state}");
        }
    }

    #[test]
    fn ringing_does_not_write_zero_duration() {
        let n = normalize(&fixture("call_inbound_02_ringing.json"), now());
        let c = n.call.unwrap();
        assert_eq!(n.event, CtiEvent::CallRinging);
        assert_eq!(c.status, Some(CallStatus::Ringing));
        assert_eq!(c.duration_seconds, None);
        assert_eq!(c.event_ms, 1767261601210);
        assert_eq!(c.from_number.as_deref(), Some("+15555550123"));
        assert_eq!(c.to_number.as_deref(), Some("+15555550100"));
        assert_eq!(c.dialpad_user_id, Some(DialpadId(5151009844330496)));
        assert_eq!(c.target_type.as_deref(), Some("user"));
        assert_eq!(c.held, None);
        assert!(c.raw_payload.is_some());
    }

    #[test]
    fn hangup_maps_times_and_duration() {
        let n = normalize(&fixture("call_outbound_03_hangup.json"), now());
        let c = n.call.unwrap();
        assert_eq!(n.event, CtiEvent::CallEnded);
        assert_eq!(c.from_number.as_deref(), Some("+15555550142"));
        assert_eq!(c.to_number.as_deref(), Some("+15555550155"));
        assert_eq!(c.direction, Some(Direction::Outbound));
        assert_eq!(
            format_ts(&c.started_at.unwrap()),
            "2026-01-01T11:00:00.000Z"
        );
        assert_eq!(
            format_ts(&c.answered_at.unwrap()),
            "2026-01-01T11:00:14.300Z"
        );
        assert_eq!(format_ts(&c.ended_at.unwrap()), "2026-01-01T11:01:15.410Z");
        assert_eq!(c.duration_seconds, Some(61));
    }

    #[test]
    fn connected_and_hold_set_held_flag() {
        let c = normalize(&fixture("call_hold_01_connected.json"), now())
            .call
            .unwrap();
        assert_eq!((c.status, c.held), (Some(CallStatus::Active), Some(false)));
        let n = normalize(&fixture("call_hold_02_hold.json"), now());
        assert_eq!(n.event, CtiEvent::CallHeld);
        let c = n.call.unwrap();
        assert_eq!((c.status, c.held), (None, Some(true)));
    }

    #[test]
    fn preanswer_updates_data_only() {
        let n = normalize(&fixture("call_inbound_01_preanswer.json"), now());
        assert_eq!(n.event, CtiEvent::CallUpdated);
        let c = n.call.unwrap();
        assert_eq!(c.status, None);
        assert_eq!(c.from_number.as_deref(), Some("+15555550123"));
    }

    #[test]
    fn recording_and_transcription() {
        let n = normalize(&fixture("call_inbound_05_recording.json"), now());
        assert_eq!(n.event, CtiEvent::RecordingCompleted);
        let c = n.call.unwrap();
        assert_eq!(c.status, None);
        assert_eq!(
            c.recording_url.as_deref(),
            Some("https://dialpad.com/r/EXAMPLErecording1")
        );
        let n = normalize(&fixture("call_inbound_06_call_transcription.json"), now());
        assert_eq!(n.event, CtiEvent::Transcription);
        let c = n.call.unwrap();
        assert!(
            c.transcript
                .unwrap()
                .starts_with("Avery Quinn: Thanks for calling")
        );
        assert_eq!(c.recording_url, None);
        let n = normalize(&fixture("call_inbound_07_recap_summary.json"), now());
        assert_eq!(n, Normalized::ignored("recap_summary"));
        let n = normalize(
            &json!({"call_id": 9, "state": "admin_recording", "recording_url": ["https://r.example/a"]}),
            now(),
        );
        assert_eq!(
            n.call.unwrap().recording_url.as_deref(),
            Some("https://r.example/a")
        );
    }

    #[test]
    fn voicemail_uploaded_gives_call_and_voicemail() {
        let n = normalize(&fixture("call_voicemail_04_voicemail_uploaded.json"), now());
        assert_eq!(n.event, CtiEvent::VoicemailReceived);
        let c = n.call.unwrap();
        assert_eq!(c.status, Some(CallStatus::Voicemail));
        assert_eq!(
            c.voicemail_audio_url.as_deref(),
            Some("https://dialpad.com/r/EXAMPLEvoicemail4")
        );
        assert_eq!(c.recording_url, None);
        let v = n.voicemail.unwrap();
        assert_eq!(v.dialpad_call_id, Some(DialpadId(5609872347414528)));
        assert_eq!(v.dialpad_user_id, Some(DialpadId(6287001192443904)));
        assert_eq!(v.from_number.as_deref(), Some("+15555550134"));
        assert_eq!(v.to_number.as_deref(), Some("+15555550177"));
        assert_eq!(
            v.recording_url.as_deref(),
            Some("https://dialpad.com/r/EXAMPLEvoicemail4")
        );
        assert!(v.transcript.unwrap().starts_with("Hi Jordan"));
        assert_eq!(v.duration_seconds, Some(31));
    }

    #[test]
    fn minimal_and_malformed_call_events() {
        let n = normalize(&fixture("call_minimal_missing_fields_ringing.json"), now());
        let c = n.call.unwrap();
        assert_eq!(c.from_number.as_deref(), Some("+15555550145"));
        assert_eq!(c.to_number, None);
        assert_eq!(c.dialpad_user_id, None);
        let n = normalize(&json!({"call_id": 5, "state": "ringing"}), now());
        assert_eq!(n.call.unwrap().event_ms, now().timestamp_millis());
        assert_eq!(
            normalize(&json!({"call_id": "x1", "state": "ringing"}), now()),
            Normalized::ignored("invalid_call_id")
        );
        assert!(
            normalize(
                &json!({"call_id": 5, "state": "ringing", "date_started": {"a": 1}}),
                now()
            )
            .is_ignored()
        );
        assert_eq!(
            normalize(&json!({"state": "ringing"}), now()),
            Normalized::ignored("missing_call_id")
        );
        assert_eq!(
            normalize(&json!({"call_id": 1004, "direction": "inbound"}), now()),
            Normalized::ignored("no_event_type")
        );
        assert_eq!(
            normalize(&json!([1, 2]), now()),
            Normalized::ignored("not_an_object")
        );
        assert_eq!(
            normalize(&json!(null), now()),
            Normalized::ignored("not_an_object")
        );
    }

    #[test]
    fn explicit_type_takes_precedence() {
        let n = normalize(
            &json!({"event_type": "call.teleported", "call_id": 1, "state": "ringing"}),
            now(),
        );
        assert_eq!(n, Normalized::ignored("call.teleported"));
        let n = normalize(
            &json!({"type": "call.ring", "call_id": 1, "state": "hangup"}),
            now(),
        );
        assert_eq!(n.event, CtiEvent::CallRinging);
        let n = normalize(
            &json!({"event_type": 7, "call_id": 1, "state": "hangup"}),
            now(),
        );
        assert_eq!(n, Normalized::ignored("7"));
        // Empty event_type is "not given".
        let n = normalize(
            &json!({"event_type": "", "call_id": 1, "state": "hangup"}),
            now(),
        );
        assert_eq!(n.event, CtiEvent::CallEnded);
    }

    #[test]
    fn legacy_call_chains() {
        let n = normalize(
            &json!({"event_type": "call.started", "call": {"id": "42", "direction": " OUTGOING ", "from_number": "+1",
                "callee": "+2", "owner": {"id": 77}, "start_time": "2026-01-29 12:00:00", "duration_seconds": "9.6"},
                "event_timestamp": 1769688000123i64}),
            now(),
        );
        let c = n.call.unwrap();
        assert_eq!(c.dialpad_call_id, Some(DialpadId(42)));
        assert_eq!(c.direction, Some(Direction::Outbound));
        assert_eq!(c.from_number.as_deref(), Some("+1"));
        assert_eq!(c.to_number.as_deref(), Some("+2"));
        assert_eq!(c.dialpad_user_id, Some(DialpadId(77)));
        assert_eq!(c.started_at, Some(ts("2026-01-29T12:00:00Z")));
        assert_eq!(c.duration_seconds, Some(10));
        assert_eq!(c.event_ms, 1769688000123);
        assert_eq!(c.held, Some(false));
        // data.call and a valid call_id after an invalid id.
        let n = normalize(
            &json!({"event_type": "call.ring", "data": {"call": {"id": "evt-1", "call_id": 5}}}),
            now(),
        );
        assert_eq!(n.call.unwrap().dialpad_call_id, Some(DialpadId(5)));
        // `0` duration is falsy in the original chain.
        let n = normalize(
            &json!({"event_type": "call.ended", "call_id": 5, "duration": 0}),
            now(),
        );
        let c = n.call.unwrap();
        assert_eq!(c.duration_seconds, None);
        assert_eq!(c.ended_at, Some(now()));
    }

    #[test]
    fn legacy_recording_and_voicemail_reasons() {
        let n = normalize(
            &json!({"event_type": "call.recording.completed", "recording": {"call_id": 1}}),
            now(),
        );
        assert_eq!(n, Normalized::ignored("missing_recording_url"));
        let n = normalize(
            &json!({"event_type": "call.recording.completed", "recording": {"url": "u"}}),
            now(),
        );
        assert_eq!(n, Normalized::ignored("missing_call_id"));
        let n = normalize(
            &json!({"event_type": "call.recording.completed", "call": {"id": 3}, "data": {"recording": {"download_url": "https://d"}}}),
            now(),
        );
        let c = n.call.unwrap();
        assert_eq!(
            (c.dialpad_call_id, c.recording_url.as_deref(), c.status),
            (Some(DialpadId(3)), Some("https://d"), None)
        );

        let n = normalize(
            &json!({"event_type": "call.voicemail", "voicemail": {"recording_url": "https://v"}}),
            now(),
        );
        assert_eq!(n, Normalized::ignored("missing_user_id"));
        let n = normalize(
            &json!({"event_type": "voicemail.received", "user_id": 5, "audio_url": "https://v", "from": "+1"}),
            now(),
        );
        assert_eq!(n.event, CtiEvent::VoicemailReceived);
        assert!(n.call.is_none());
        let v = n.voicemail.unwrap();
        assert_eq!(
            (
                v.dialpad_call_id,
                v.duration_seconds,
                v.recording_url.as_deref()
            ),
            (None, Some(0), Some("https://v"))
        );
        let n = normalize(
            &json!({"event_type": "voicemail.received", "voicemail": {"call_id": "bad", "user_id": 5, "recording_url": "u"}}),
            now(),
        );
        assert_eq!(n, Normalized::ignored("invalid_call_id"));
    }

    #[test]
    fn sms_detection_and_mapping() {
        let n = normalize(&fixture("sms_inbound.json"), now());
        assert_eq!(n.event, CtiEvent::SmsReceived);
        let m = n.message.unwrap();
        assert_eq!(m.dialpad_message_id, Some(DialpadId(5571516353560576)));
        assert_eq!(m.from_number.as_deref(), Some("+15555550123"));
        assert_eq!(m.to_number.as_deref(), Some("+15555550142"));
        assert_eq!(m.to_numbers, vec!["+15555550142".to_string()]);
        assert_eq!(m.dialpad_user_id, Some(DialpadId(5151009844330496)));
        assert_eq!(m.sent_at.map(|t| t.timestamp_millis()), Some(1767291600000));
        assert_eq!(m.message_status.as_deref(), Some("pending"));

        let n = normalize(&fixture("sms_outbound_status_delivered.json"), now());
        assert_eq!(n.event, CtiEvent::SmsSent);
        let m = n.message.unwrap();
        assert_eq!(m.message_status.as_deref(), Some("success"));
        // Office target: the sending user is used.
        assert_eq!(m.dialpad_user_id, Some(DialpadId(5151009844330496)));

        let n = normalize(&fixture("sms_inbound_no_content_scope.json"), now());
        assert_eq!(n.message.unwrap().text, None);

        let mut delivered = fixture("sms_outbound_status_delivered.json");
        delivered["event_type"] = json!("message.delivered");
        let n = normalize(&delivered, now());
        assert_eq!(n.event, CtiEvent::SmsDelivered);
        let m = n.message.unwrap();
        assert_eq!(m.to_numbers, vec!["+15555550123".to_string()]);
        assert_eq!(m.sent_at.map(|t| t.timestamp_millis()), Some(1767291720000));
        assert_eq!(m.direction, Some(Direction::Outbound));

        let n = normalize(
            &json!({"event_type": "message.inbound", "sms": {"message_id": "12", "body": " hi ", "to": ["+1", "+2"]}}),
            now(),
        );
        assert_eq!(n.event, CtiEvent::SmsReceived);
        let m = n.message.unwrap();
        assert_eq!(
            (m.direction, m.text.as_deref(), m.to_number.as_deref()),
            (Some(Direction::Inbound), Some(" hi "), Some("+1"))
        );
        assert_eq!(
            normalize(&json!({"event_type": "sms.sent", "text": "x"}), now()),
            Normalized::ignored("missing_message_id")
        );
        assert_eq!(
            normalize(&json!({"event_type": "sms.sent", "id": "m-1"}), now()),
            Normalized::ignored("invalid_message_id")
        );
        let n = normalize(&json!({"event_type": "sms.delivered", "id": 9}), now());
        assert_eq!(
            (n.event, n.message.unwrap().direction),
            (CtiEvent::SmsDelivered, None)
        );
    }

    #[test]
    fn raw_payload_is_sanitized() {
        let n = normalize(
            &json!({"event_type": "call.started", "call_id": 1020, "metadata": null, "audio_data": "AAA"}),
            now(),
        );
        let raw = n.call.unwrap().raw_payload.unwrap().to_value().unwrap();
        assert_eq!(raw["audio_data"], "[removed - binary data]");
        assert_eq!(raw["metadata"], Value::Null);
    }

    /// `raw_payload` as canonical (decoded and re-encoded) text, so results compare as JSON.
    fn canonical(mut n: Normalized) -> Normalized {
        if let Some(c) = n.call.as_mut() {
            c.raw_payload = c
                .raw_payload
                .as_ref()
                .map(|r| JsonText::from_value(&r.to_value().unwrap()));
        }
        n
    }

    #[test]
    fn text_path_equals_value_path() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/dialpad/events");
        let mut texts: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(texts.len() >= 20);
        let long = "y".repeat(600);
        texts.extend(
            [
                json!({"call_id": 0, "state": "ringing"}),
                json!({"call_id": "0", "state": "ringing"}),
                json!({"call_id": 7, "state": ""}),
                json!({"call_id": 7, "state": 5}),
                json!({"call_id": 7, "state": "hangup", "event_type": "call.ring"}),
                json!({"call_id": 7, "state": "hangup", "type": "sms.received", "id": 1}),
                json!({"call_id": 7, "state": "hangup", "event_type": "", "type": 0}),
                json!({"call_id": "x", "state": "hangup"}),
                json!({"call_id": 7, "state": "transcription", "transcription_text": long}),
                json!({"call_id": 7, "state": "hangup", "labels": (0..20).collect::<Vec<_>>()}),
                json!({"id": 9, "text": "hi", "direction": "inbound"}),
                json!({"state": "ringing"}),
                json!([1, 2]),
            ]
            .iter()
            .map(Value::to_string),
        );
        texts.push(r#"{"call_id": 7, "state": "ringing", "state": "hangup"}"#.into());
        texts.push(
            r#"{"call_id": 7, "state": "missed", "direction": "inbound", "direction": 3}"#.into(),
        );
        for text in texts {
            let payload = JsonText::parse(text.clone()).unwrap();
            let value = payload.to_value().unwrap();
            assert_eq!(
                canonical(normalize_json(&payload, now())),
                canonical(normalize(&value, now())),
                "{text}"
            );
        }
        let not_json = JsonText::assume_valid("{oops");
        assert_eq!(
            normalize_json(&not_json, now()),
            Normalized::ignored("not_json")
        );
    }

    #[test]
    fn text_path_shares_a_clean_payload() {
        let text = JsonText::parse(include_str!(
            "../../../fixtures/dialpad/events/call_inbound_03_connected.json"
        ))
        .unwrap();
        let raw = normalize_json(&text, now())
            .call
            .unwrap()
            .raw_payload
            .unwrap();
        assert_eq!(raw.as_str(), text.as_str());
    }
}
