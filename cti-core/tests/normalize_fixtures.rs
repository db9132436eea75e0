//! Normalisation + merge of the Dialpad fixtures (`fixtures/dialpad/events`) and of the spec's
//! webhook scenarios (SPEC §10.6 JSON path, §10.7 Dialpad JWT claims) at library level.

// Test helpers outside `#[test]` functions: a broken fixture must fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{Duration, TimeZone, Utc};
use cti_core::model::*;
use cti_core::normalize::apply::{apply_event, call_key};
use cti_core::normalize::merge::merge_voicemail;
use cti_core::normalize::{CallMerge, CtiEvent, Normalized, normalize};
use cti_core::store::{Existing, OutboxMessage};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dialpad/events")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(events_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn received_at() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
}

fn app() -> AppId {
    AppId(Uuid::from_u128(0x0a0a_0a0a_0a0a_4a0a_8a0a_0a0a_0a0a_0a0a))
}

fn rfc(ts: Option<Timestamp>) -> Option<String> {
    ts.as_ref().map(format_ts)
}

/// Normalises every event (fixed `received_at`) and folds the call updates.
fn fold(events: &[Value]) -> Option<Call> {
    let mut call: Option<Call> = None;
    for ev in events {
        let n = normalize(ev, received_at());
        if let Some(upd) = &n.call {
            let id = upd.dialpad_call_id.unwrap();
            call = Some(CallMerge::apply(call.as_ref(), upd, app(), id, received_at()).call);
        }
    }
    call
}

struct Lifecycle {
    name: String,
    files: Vec<String>,
    expected: CallStatus,
}

fn lifecycles() -> Vec<Lifecycle> {
    let doc = load("lifecycles.json");
    doc["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Lifecycle {
            name: s["name"].as_str().unwrap().to_string(),
            files: s["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect(),
            expected: CallStatus::parse(s["expected_status"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

fn run_lifecycle(name: &str) -> (Call, Vec<Value>) {
    let lc = lifecycles().into_iter().find(|l| l.name == name).unwrap();
    let events: Vec<Value> = lc.files.iter().map(|f| load(f)).collect();
    (fold(&events).unwrap(), events)
}

#[test]
fn every_lifecycle_reaches_its_expected_status() {
    let all = lifecycles();
    assert_eq!(all.len(), 12);
    for lc in all {
        let events: Vec<Value> = lc.files.iter().map(|f| load(f)).collect();
        let call = fold(&events).unwrap_or_else(|| panic!("{}: no call", lc.name));
        assert_eq!(call.status, lc.expected, "lifecycle {}", lc.name);
        assert_eq!(call.app_id, app());
    }
}

#[test]
fn inbound_answered_fields() {
    let (c, _) = run_lifecycle("inbound_answered");
    assert_eq!(c.dialpad_call_id, DialpadId(5744118934454272));
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(c.direction, Some(Direction::Inbound));
    assert_eq!(c.from_number.as_deref(), Some("+15555550123"));
    assert_eq!(c.to_number.as_deref(), Some("+15555550100"));
    assert_eq!(c.dialpad_user_id, Some(DialpadId(5151009844330496)));
    assert_eq!(c.target_type.as_deref(), Some("user"));
    assert_eq!(c.target_id, Some(DialpadId(5151009844330496)));
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-01T10:00:00.000Z")
    );
    assert_eq!(
        rfc(c.answered_at).as_deref(),
        Some("2026-01-01T10:00:09.850Z")
    );
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-01T10:03:13.095Z"));
    assert_eq!(c.duration_seconds, Some(183));
    assert_eq!(c.recording_url, None);
    assert_eq!(c.transcript, None);
    assert!(!c.held && !c.is_voicemail);
    assert_eq!(c.last_event_ms, 1767261793600);
    assert_eq!(
        c.raw_payload.as_ref().unwrap().to_value().unwrap()["state"],
        "hangup"
    );
}

#[test]
fn inbound_post_call_artifacts() {
    let (c, events) = run_lifecycle("inbound_answered_post_call_artifacts");
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(
        c.recording_url.as_deref(),
        Some("https://dialpad.com/r/EXAMPLErecording1")
    );
    assert_eq!(
        c.transcript.as_deref(),
        events[5]["transcription_text"].as_str()
    );
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-01T10:03:13.095Z"));
    assert_eq!(c.duration_seconds, Some(183));
    // recap_summary is ignored: the raw payload is the newest *applied* event (transcription).
    assert_eq!(
        c.raw_payload.as_ref().unwrap().to_value().unwrap()["state"],
        "call_transcription"
    );
    assert_eq!(
        normalize(&events[6], received_at()),
        Normalized::ignored("recap_summary")
    );
}

#[test]
fn outbound_answered_fields() {
    let (c, _) = run_lifecycle("outbound_answered");
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(c.direction, Some(Direction::Outbound));
    assert_eq!(
        c.from_number.as_deref(),
        Some("+15555550142"),
        "outbound: from = internal"
    );
    assert_eq!(
        c.to_number.as_deref(),
        Some("+15555550155"),
        "outbound: to = external"
    );
    assert_eq!(c.dialpad_user_id, Some(DialpadId(5151009844330496)));
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-01T11:00:00.000Z")
    );
    assert_eq!(
        rfc(c.answered_at).as_deref(),
        Some("2026-01-01T11:00:14.300Z")
    );
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-01T11:01:15.410Z"));
    assert_eq!(c.duration_seconds, Some(61));

    let (late, _) = run_lifecycle("out_of_order_late_connected");
    assert_eq!(late.status, CallStatus::Ended);
    assert_eq!(
        rfc(late.answered_at).as_deref(),
        Some("2026-01-01T11:00:14.300Z")
    );
    assert_eq!(late.duration_seconds, Some(61));
    assert!(!late.held);
}

#[test]
fn missed_fields() {
    let (c, _) = run_lifecycle("inbound_missed_unicode");
    assert_eq!(c.status, CallStatus::Missed);
    assert_eq!(c.from_number.as_deref(), Some("+15555550199"));
    assert_eq!(c.to_number.as_deref(), Some("+15555550188"));
    assert_eq!(c.dialpad_user_id, Some(DialpadId(4923118834778112)));
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-01T12:00:00.000Z")
    );
    assert_eq!(c.answered_at, None);
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-01T12:00:31.010Z"));
    assert_eq!(c.duration_seconds, Some(0));
    assert_eq!(
        c.raw_payload.as_ref().unwrap().to_value().unwrap()["contact"]["name"],
        "Zoë Ñúñez-Østergaard 山田"
    );
}

#[test]
fn voicemail_fields_and_row() {
    let (c, events) = run_lifecycle("inbound_voicemail");
    assert_eq!(c.status, CallStatus::Voicemail);
    assert!(c.is_voicemail);
    assert_eq!(c.from_number.as_deref(), Some("+15555550134"));
    assert_eq!(c.to_number.as_deref(), Some("+15555550177"));
    assert_eq!(c.dialpad_user_id, Some(DialpadId(6287001192443904)));
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-01T13:00:00.000Z")
    );
    assert_eq!(c.answered_at, None);
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-01T13:00:58.100Z"));
    assert_eq!(
        c.voicemail_audio_url.as_deref(),
        Some("https://dialpad.com/r/EXAMPLEvoicemail4")
    );
    let transcript = "Hi Jordan, it's Sam Okafor. Please call me back about the invoice. Thanks.";
    assert_eq!(c.transcript.as_deref(), Some(transcript));
    assert_eq!(
        c.recording_url, None,
        "the voicemail recording is not the call recording"
    );

    let n = normalize(&events[3], received_at());
    assert_eq!(n.event, CtiEvent::VoicemailReceived);
    let (vm, created) = merge_voicemail(None, n.voicemail.as_ref().unwrap(), app(), received_at());
    assert!(created);
    assert_eq!(vm.dialpad_call_id, Some(DialpadId(5609872347414528)));
    assert_eq!(vm.dialpad_user_id, Some(DialpadId(6287001192443904)));
    assert_eq!(vm.from_number.as_deref(), Some("+15555550134"));
    assert_eq!(vm.to_number.as_deref(), Some("+15555550177"));
    assert_eq!(
        vm.recording_url.as_deref(),
        Some("https://dialpad.com/r/EXAMPLEvoicemail4")
    );
    assert_eq!(vm.transcript.as_deref(), Some(transcript));
    assert_eq!(vm.duration_seconds, Some(31));
    // The events before voicemail_uploaded make no voicemail row.
    for ev in &events[..3] {
        assert!(normalize(ev, received_at()).voicemail.is_none());
    }
}

#[test]
fn hold_and_resume_held_flag() {
    let lc = lifecycles()
        .into_iter()
        .find(|l| l.name == "hold_and_resume")
        .unwrap();
    let events: Vec<Value> = lc.files.iter().map(|f| load(f)).collect();
    let held_after: Vec<(CallStatus, bool)> = (1..=events.len())
        .map(|k| {
            let c = fold(&events[..k]).unwrap();
            (c.status, c.held)
        })
        .collect();
    assert_eq!(
        held_after,
        vec![
            (CallStatus::Active, false),
            (CallStatus::Active, true),
            (CallStatus::Active, false),
            (CallStatus::Ended, false),
        ]
    );
    let c = fold(&events).unwrap();
    assert_eq!(c.duration_seconds, Some(155));
}

#[test]
fn big_ids_survive() {
    let (c, _) = run_lifecycle("big_19_digit_id");
    assert_eq!(c.dialpad_call_id.to_string(), "4611686018427387913");
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(c.duration_seconds, Some(30));
    let raw = c.raw_payload.unwrap().to_value().unwrap();
    assert_eq!(raw["contact"]["id"].as_u64(), Some(9007199254740993));
    assert_eq!(raw["call_id"].as_u64(), Some(4611686018427387913));
    assert_eq!(
        serde_json::to_value(c.dialpad_call_id).unwrap(),
        json!("4611686018427387913")
    );
}

#[test]
fn minimal_unknown_and_transfer() {
    let (c, _) = run_lifecycle("minimal_payload");
    assert_eq!(c.status, CallStatus::Ringing);
    assert_eq!(c.from_number.as_deref(), Some("+15555550145"));
    assert_eq!(
        (c.to_number.as_ref(), c.started_at, c.dialpad_user_id),
        (None, None, None)
    );
    assert_eq!(c.last_event_ms, 1767286800000);

    let (c, _) = run_lifecycle("unknown_future_state_after_connect");
    assert_eq!(c.status, CallStatus::Active);
    assert_eq!(
        normalize(&load("call_unknown_future_state.json"), received_at()),
        Normalized::ignored("ai_live_coaching")
    );

    let (leg1, _) = run_lifecycle("transfer_leg1");
    let (leg2, _) = run_lifecycle("transfer_leg2");
    assert_ne!(leg1.dialpad_call_id, leg2.dialpad_call_id);
    assert_eq!(leg1.dialpad_user_id, Some(DialpadId(5151009844330496)));
    assert_eq!(leg2.dialpad_user_id, Some(DialpadId(6287001192443904)));
    assert_eq!(
        (leg1.duration_seconds, leg2.duration_seconds),
        (Some(65), Some(119))
    );
}

// ---------------------------------------------------------------------------------------------
// A tiny in-memory world: normalize → apply_event → rows, per tenant
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct World {
    calls: HashMap<(AppId, DialpadId), Call>,
    voicemails: Vec<Voicemail>,
    messages: HashMap<(AppId, DialpadId), Message>,
    outbox: Vec<(AppId, OutboxMessage)>,
    ticks: i64,
}

const A: u128 = 0xaaaa_aaaa_aaaa_4aaa_8aaa_aaaa_aaaa_aaaa;
const B: u128 = 0xbbbb_bbbb_bbbb_4bbb_8bbb_bbbb_bbbb_bbbb;

fn tenant(id: u128) -> AppId {
    AppId(Uuid::from_u128(id))
}

impl World {
    /// Arrival time of the next event (one second apart).
    fn clock(&self) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 29, 12, 0, 0).unwrap() + Duration::seconds(self.ticks)
    }

    /// Delivers one payload to tenant `app` (HOOK/JHOOK at library level).
    fn hook(&mut self, app: AppId, payload: Value) -> Normalized {
        self.ticks += 1;
        let now = self.clock();
        let n = normalize(&payload, now);
        if n.is_ignored() {
            return n;
        }
        let call_id = call_key(&n);
        let existing = Existing {
            call: call_id.and_then(|id| self.calls.get(&(app, id)).cloned()),
            voicemail: call_id.and_then(|id| {
                self.voicemails
                    .iter()
                    .find(|v| v.app_id == app && v.dialpad_call_id == Some(id))
                    .cloned()
            }),
            message: n
                .message
                .as_ref()
                .and_then(|m| m.dialpad_message_id)
                .and_then(|id| self.messages.get(&(app, id)).cloned()),
            crm_user: None,
        };
        let applied = apply_event(app, &n, existing, now);
        if let Some(c) = applied.call {
            self.calls.insert((app, c.dialpad_call_id), c);
        }
        if let Some(v) = applied.voicemail {
            match self.voicemails.iter_mut().find(|x| x.id == v.id) {
                Some(slot) => *slot = v,
                None => self.voicemails.push(v),
            }
        }
        if let Some(m) = applied.message {
            self.messages.insert((app, m.dialpad_message_id), m);
        }
        self.outbox
            .extend(applied.outbox.into_iter().map(|o| (app, o)));
        n
    }

    fn call(&self, app: AppId, id: u64) -> Option<&Call> {
        self.calls.get(&(app, DialpadId(id)))
    }

    fn active(&self, app: AppId) -> Vec<&Call> {
        self.calls
            .values()
            .filter(|c| c.app_id == app && c.status.is_live())
            .collect()
    }

    fn voicemails_of(&self, app: AppId) -> Vec<&Voicemail> {
        self.voicemails.iter().filter(|v| v.app_id == app).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// §10.6 Group E — JSON/HMAC path payloads
// ---------------------------------------------------------------------------------------------

fn t37_t38(w: &mut World) {
    let a = tenant(A);
    w.hook(
        a,
        json!({"event_type":"call.ring","call_id":1001,"direction":"incoming","from":"+15550001111","to":"+15550002222","user_id":12345}),
    );
    w.hook(
        a,
        json!({"event_type":"call.started","call_id":1001,"started_at":"2026-01-29T12:00:00.000Z"}),
    );
    w.hook(a, json!({"event_type":"call.ended","call_id":1001,"ended_at":"2026-01-29T12:02:00.000Z","duration":120}));
}

#[test]
fn t37_ring_json_path() {
    let mut w = World::default();
    let a = tenant(A);
    let n = w.hook(
        a,
        json!({"event_type":"call.ring","call_id":1001,"direction":"incoming","from":"+15550001111","to":"+15550002222","user_id":12345}),
    );
    assert_eq!(n.event, CtiEvent::CallRinging);
    let active = w.active(a);
    assert_eq!(active.len(), 1);
    let c = active[0];
    assert_eq!(c.dialpad_call_id.to_string(), "1001");
    assert_eq!(c.direction, Some(Direction::Inbound));
    assert_eq!(c.from_number.as_deref(), Some("+15550001111"));
    assert_eq!(c.to_number.as_deref(), Some("+15550002222"));
    assert_eq!(c.status, CallStatus::Ringing);
    assert_eq!(
        c.dialpad_user_id.map(|u| u.to_string()).as_deref(),
        Some("12345")
    );
    assert_eq!(
        (
            c.started_at,
            c.ended_at,
            c.duration_seconds,
            c.recording_url.as_ref()
        ),
        (None, None, None, None)
    );
    assert_eq!(w.outbox.len(), 1);
    assert_eq!(w.outbox[0].1.event, "call.ring");
}

#[test]
fn t38_t39_t40_started_ended_duplicate_late_ring() {
    let mut w = World::default();
    let a = tenant(A);
    w.hook(
        a,
        json!({"event_type":"call.ring","call_id":1001,"direction":"incoming","from":"+15550001111","to":"+15550002222","user_id":12345}),
    );
    w.hook(
        a,
        json!({"event_type":"call.started","call_id":1001,"started_at":"2026-01-29T12:00:00.000Z"}),
    );
    let c = w.call(a, 1001).unwrap();
    assert_eq!(c.status, CallStatus::Active);
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-29T12:00:00.000Z")
    );
    assert_eq!(c.direction, Some(Direction::Inbound));
    assert_eq!(c.from_number.as_deref(), Some("+15550001111"));
    assert_eq!(c.to_number.as_deref(), Some("+15550002222"));

    let ended = json!({"event_type":"call.ended","call_id":1001,"ended_at":"2026-01-29T12:02:00.000Z","duration":120});
    w.hook(a, ended.clone());
    let c = w.call(a, 1001).unwrap().clone();
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-29T12:02:00.000Z"));
    assert_eq!(c.duration_seconds, Some(120));
    assert!(w.active(a).is_empty());

    // T39: the same body again (had it passed the inbox dedupe) changes nothing and pushes nothing.
    let pushed = w.outbox.len();
    w.hook(a, ended);
    let again = w.call(a, 1001).unwrap();
    assert_eq!(
        rfc(again.ended_at).as_deref(),
        Some("2026-01-29T12:02:00.000Z")
    );
    assert_eq!(
        (again.status, again.duration_seconds),
        (CallStatus::Ended, Some(120))
    );
    assert_eq!(w.outbox.len(), pushed);

    // T40: a late ring never reopens the call.
    w.hook(
        a,
        json!({"event_type":"call.ring","call_id":1001,"event_id":"late-ring-1"}),
    );
    assert_eq!(w.call(a, 1001).unwrap().status, CallStatus::Ended);
    assert_eq!(w.outbox.len(), pushed);
}

#[test]
fn t41_t42_ended_first_then_late_start() {
    let mut w = World::default();
    let a = tenant(A);
    w.hook(
        a,
        json!({"event_type":"call.ended","call_id":1002,"direction":"outbound","from":"+15550002222","to":"+15550009999","duration":30}),
    );
    let request_time = w.clock();
    let c = w.call(a, 1002).unwrap();
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(c.direction, Some(Direction::Outbound));
    assert_eq!(c.duration_seconds, Some(30));
    assert_eq!(c.started_at, None);
    let ended_at = c.ended_at.unwrap();
    assert!((ended_at - request_time).num_seconds().abs() <= 60);

    w.hook(
        a,
        json!({"event_type":"call.started","call_id":1002,"event_id":"late-start-1002","started_at":"2026-01-29T11:59:00.000Z"}),
    );
    let c = w.call(a, 1002).unwrap();
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-29T11:59:00.000Z")
    );
    assert_eq!(c.ended_at, Some(ended_at));
}

#[test]
fn t43_t44_t45_unknown_untyped_and_id_less_events() {
    let mut w = World::default();
    let a = tenant(A);
    let n = w.hook(a, json!({"event_type":"call.teleported","call_id":1003}));
    assert_eq!(n, Normalized::ignored("call.teleported"));
    let n = w.hook(a, json!({"call_id":1004,"direction":"inbound"}));
    assert!(n.is_ignored());
    let n = w.hook(
        a,
        json!({"event_type":"call.ring","direction":"inbound","event_id":"no-id-1"}),
    );
    assert_eq!(n, Normalized::ignored("missing_call_id"));
    assert!(w.calls.is_empty());
    assert!(w.outbox.is_empty());
}

#[test]
fn t46_t47_t48_recording_and_tenant_isolation() {
    let mut w = World::default();
    let (a, b) = (tenant(A), tenant(B));
    t37_t38(&mut w);
    let n = w.hook(
        a,
        json!({"event_type":"call.recording.completed","event_id":"rec-1001","recording":{"call_id":1001,"url":"https://files.example.com/r1001.mp3"}}),
    );
    assert_eq!(n.event, CtiEvent::RecordingCompleted);
    let c = w.call(a, 1001).unwrap();
    assert_eq!(
        c.recording_url.as_deref(),
        Some("https://files.example.com/r1001.mp3")
    );
    assert_eq!(c.status, CallStatus::Ended);

    // T47
    w.hook(
        b,
        json!({"event_type":"call.ring","call_id":1001,"direction":"inbound","from":"+15553330000","to":"+15554440000"}),
    );
    let cb = w.call(b, 1001).unwrap();
    assert_eq!(
        (cb.status, cb.from_number.as_deref()),
        (CallStatus::Ringing, Some("+15553330000"))
    );
    let ca = w.call(a, 1001).unwrap();
    assert_eq!(
        (ca.status, ca.from_number.as_deref()),
        (CallStatus::Ended, Some("+15550001111"))
    );

    // T48
    w.hook(
        b,
        json!({"event_type":"call.recording.completed","event_id":"rec-b-1001","recording":{"call_id":1001,"url":"https://evil.example.com/x.mp3"}}),
    );
    assert_eq!(
        w.call(a, 1001).unwrap().recording_url.as_deref(),
        Some("https://files.example.com/r1001.mp3")
    );
    assert_eq!(
        w.call(b, 1001).unwrap().recording_url.as_deref(),
        Some("https://evil.example.com/x.mp3")
    );
}

#[test]
fn t49_metadata_null_is_fine() {
    let mut w = World::default();
    let a = tenant(A);
    let n = w.hook(
        a,
        json!({"event_type":"call.started","call_id":1020,"direction":"inbound","metadata":null}),
    );
    assert_eq!(n.event, CtiEvent::CallStarted);
    let c = w.call(a, 1020).unwrap();
    assert_eq!(c.status, CallStatus::Active);
    assert_eq!(
        c.raw_payload.as_ref().unwrap().to_value().unwrap()["metadata"],
        Value::Null
    );
}

#[test]
fn t50_poison_ids_are_ignored() {
    let mut w = World::default();
    let a = tenant(A);
    for i in 1..=60 {
        let n = w.hook(
            a,
            json!({"event_type":"call.ring","call_id":format!("not-a-number-{i}"),"event_id":format!("poison-{i}")}),
        );
        assert_eq!(n, Normalized::ignored("invalid_call_id"));
    }
    assert!(w.calls.is_empty());
    w.hook(
        a,
        json!({"event_type":"call.ring","call_id":1031,"direction":"inbound"}),
    );
    assert_eq!(w.call(a, 1031).unwrap().status, CallStatus::Ringing);
    assert_eq!(w.calls.len(), 1);
}

#[test]
fn t51_t52_sms_json_path() {
    let mut w = World::default();
    let (a, b) = (tenant(A), tenant(B));
    let n = w.hook(
        a,
        json!({"event_type":"sms.received","id":5001,"direction":"inbound","from":"+15550003333","to":"+15550004444","text":"Hello","user_id":12345,"sent_at":"2026-01-29T12:00:00.000Z"}),
    );
    assert_eq!(n.event, CtiEvent::SmsReceived);
    let m = w.messages.get(&(a, DialpadId(5001))).unwrap();
    assert_eq!(m.dialpad_message_id.to_string(), "5001");
    assert_eq!(m.direction, Some(Direction::Inbound));
    assert_eq!(m.from_number.as_deref(), Some("+15550003333"));
    assert_eq!(m.to_number.as_deref(), Some("+15550004444"));
    assert_eq!(m.text.as_deref(), Some("Hello"));
    assert_eq!(
        m.dialpad_user_id.map(|u| u.to_string()).as_deref(),
        Some("12345")
    );
    assert_eq!(rfc(m.sent_at).as_deref(), Some("2026-01-29T12:00:00.000Z"));
    assert!(!w.messages.contains_key(&(b, DialpadId(5001))));

    let n = w.hook(a, json!({"event_type":"sms.sent","id":5002,"from":"+15550004444","to":"+15550003333","text":"Hi"}));
    assert_eq!(n.event, CtiEvent::SmsSent);
    let m = w.messages.get(&(a, DialpadId(5002))).unwrap();
    assert_eq!(m.direction, Some(Direction::Outbound));
    assert_eq!(m.text.as_deref(), Some("Hi"));
}

#[test]
fn t53_t54_voicemail_json_path() {
    let mut w = World::default();
    let a = tenant(A);
    w.hook(
        a,
        json!({"event_type":"call.ring","call_id":1010,"direction":"inbound","from":"+15550005555","to":"+15550002222","user_id":12345}),
    );
    let n = w.hook(
        a,
        json!({"event_type":"voicemail.received","voicemail":{"call_id":1010,"user_id":12345,"from":"+15550005555","to":"+15550002222","recording_url":"https://files.example.com/vm1010.mp3","transcript":"Please call back","duration":30}}),
    );
    assert_eq!(n.event, CtiEvent::VoicemailReceived);
    let vms = w.voicemails_of(a);
    assert_eq!(vms.len(), 1);
    let v = vms[0];
    assert_eq!(
        v.dialpad_call_id.map(|x| x.to_string()).as_deref(),
        Some("1010")
    );
    assert_eq!(
        v.dialpad_user_id.map(|x| x.to_string()).as_deref(),
        Some("12345")
    );
    assert_eq!(v.from_number.as_deref(), Some("+15550005555"));
    assert_eq!(v.to_number.as_deref(), Some("+15550002222"));
    assert_eq!(
        v.recording_url.as_deref(),
        Some("https://files.example.com/vm1010.mp3")
    );
    assert_eq!(v.transcript.as_deref(), Some("Please call back"));
    assert_eq!(v.duration_seconds, Some(30));
    assert_eq!(v.app_id, a);
    let c = w.call(a, 1010).unwrap();
    assert_eq!(c.status, CallStatus::Voicemail);
    assert!(c.is_voicemail);
    assert_eq!(
        c.voicemail_audio_url.as_deref(),
        Some("https://files.example.com/vm1010.mp3")
    );
    assert_eq!(
        w.outbox
            .iter()
            .filter(|(_, o)| o.event == "voicemail.received")
            .count(),
        1
    );

    // T54
    let n = w.hook(
        a,
        json!({"event_type":"voicemail.received","voicemail":{"call_id":1011,"user_id":12345,"from":"+15550006666"}}),
    );
    assert_eq!(n, Normalized::ignored("missing_recording_url"));
    assert_eq!(w.voicemails_of(a).len(), 1);
    assert!(w.call(a, 1011).is_none());
}

// ---------------------------------------------------------------------------------------------
// §10.7 Group F — Dialpad JWT claims (the decoded payloads)
// ---------------------------------------------------------------------------------------------

/// `CALL(n, state, extra)` of SPEC §10.1 with a unique, increasing `event_timestamp`.
fn call_claims(w: &World, n: u64, state: &str, extra: Value) -> Value {
    let mut claims = json!({
        "call_id": n,
        "state": state,
        "direction": "inbound",
        "external_number": "+15557770000",
        "internal_number": "+15558880000",
        "target": {"id": 12345, "type": "user", "office_id": 999},
        "date_started": 1769688000000i64,
        "event_timestamp": 1769688000000i64 + 1000 * (w.ticks + 1),
    });
    if let (Some(obj), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    claims
}

#[test]
fn t55_t56_ringing_connected_hangup() {
    let mut w = World::default();
    let a = tenant(A);
    let claims = call_claims(&w, 2001, "ringing", json!({}));
    let n = w.hook(a, claims);
    assert_eq!(n.event, CtiEvent::CallRinging);
    let active = w.active(a);
    assert_eq!(active.len(), 1);
    let c = active[0];
    assert_eq!(c.dialpad_call_id.to_string(), "2001");
    assert_eq!(c.status, CallStatus::Ringing);
    assert_eq!(c.direction, Some(Direction::Inbound));
    assert_eq!(c.from_number.as_deref(), Some("+15557770000"));
    assert_eq!(c.to_number.as_deref(), Some("+15558880000"));
    assert_eq!(
        c.dialpad_user_id.map(|u| u.to_string()).as_deref(),
        Some("12345")
    );
    assert_eq!(
        rfc(c.started_at).as_deref(),
        Some("2026-01-29T12:00:00.000Z")
    );
    assert_eq!(c.duration_seconds, None);

    let claims = call_claims(
        &w,
        2001,
        "connected",
        json!({"date_connected": 1769688005000i64}),
    );
    w.hook(a, claims);
    assert_eq!(w.call(a, 2001).unwrap().status, CallStatus::Active);
    let claims = call_claims(
        &w,
        2001,
        "hangup",
        json!({"date_connected": 1769688005000i64, "date_ended": 1769688125000i64, "duration": 120000.0}),
    );
    w.hook(a, claims);
    let c = w.call(a, 2001).unwrap();
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(rfc(c.ended_at).as_deref(), Some("2026-01-29T12:02:05.000Z"));
    assert_eq!(
        rfc(c.answered_at).as_deref(),
        Some("2026-01-29T12:00:05.000Z")
    );
    assert_eq!(c.duration_seconds, Some(120));
    let events: Vec<&str> = w.outbox.iter().map(|(_, o)| o.event.as_str()).collect();
    assert_eq!(events, vec!["call.ring", "call.started", "call.ended"]);
}

#[test]
fn t57_outbound_calling() {
    let mut w = World::default();
    let a = tenant(A);
    let claims = call_claims(&w, 2002, "calling", json!({"direction": "outbound"}));
    w.hook(a, claims);
    let c = w.call(a, 2002).unwrap();
    assert_eq!(c.status, CallStatus::Ringing);
    assert_eq!(c.direction, Some(Direction::Outbound));
    assert_eq!(c.from_number.as_deref(), Some("+15558880000"));
    assert_eq!(c.to_number.as_deref(), Some("+15557770000"));
}

#[test]
fn t58_missed_then_hangup_stays_missed() {
    let mut w = World::default();
    let a = tenant(A);
    for state in ["ringing", "missed", "hangup"] {
        let claims = call_claims(&w, 2003, state, json!({}));
        w.hook(a, claims);
    }
    assert_eq!(w.call(a, 2003).unwrap().status, CallStatus::Missed);
}

#[test]
fn t59_voicemail_uploaded_creates_voicemail_row() {
    let mut w = World::default();
    let a = tenant(A);
    for (state, extra) in [
        ("ringing", json!({})),
        ("voicemail", json!({})),
        (
            "voicemail_uploaded",
            json!({"voicemail_link": "https://dialpad.example/vm/2004"}),
        ),
    ] {
        let claims = call_claims(&w, 2004, state, extra);
        w.hook(a, claims);
    }
    let c = w.call(a, 2004).unwrap();
    assert_eq!(c.status, CallStatus::Voicemail);
    assert_eq!(
        c.voicemail_audio_url.as_deref(),
        Some("https://dialpad.example/vm/2004")
    );
    let vms = w.voicemails_of(a);
    assert_eq!(vms.len(), 1);
    assert_eq!(
        vms[0].dialpad_call_id.map(|x| x.to_string()).as_deref(),
        Some("2004")
    );
    assert_eq!(
        vms[0].dialpad_user_id.map(|x| x.to_string()).as_deref(),
        Some("12345")
    );
    assert_eq!(
        vms[0].recording_url.as_deref(),
        Some("https://dialpad.example/vm/2004")
    );
    assert_eq!(vms[0].from_number.as_deref(), Some("+15557770000"));
}

#[test]
fn t69_sms_event() {
    let mut w = World::default();
    let a = tenant(A);
    let n = w.hook(
        a,
        json!({"id":6001,"created_date":1769688000000i64,"direction":"inbound","from_number":"+15551112222","to_number":["+15558880000"],"text":"Yo","target":{"id":12345,"type":"user"}}),
    );
    assert_eq!(n.event, CtiEvent::SmsReceived);
    let m = w.messages.get(&(a, DialpadId(6001))).unwrap();
    assert_eq!(m.direction, Some(Direction::Inbound));
    assert_eq!(m.from_number.as_deref(), Some("+15551112222"));
    assert_eq!(m.to_number.as_deref(), Some("+15558880000"));
    assert_eq!(m.to_numbers, vec!["+15558880000".to_string()]);
    assert_eq!(m.text.as_deref(), Some("Yo"));
    assert_eq!(
        m.dialpad_user_id.map(|u| u.to_string()).as_deref(),
        Some("12345")
    );
    assert_eq!(rfc(m.sent_at).as_deref(), Some("2026-01-29T12:00:00.000Z"));
    assert_eq!(w.outbox.len(), 1);
    assert_eq!(w.outbox[0].1.event, "sms.received");
}

#[test]
fn sms_fixture_sequences() {
    let mut w = World::default();
    let a = tenant(A);
    w.hook(a, load("sms_inbound.json"));
    let m = w.messages.get(&(a, DialpadId(5571516353560576))).unwrap();
    assert_eq!(m.from_number.as_deref(), Some("+15555550123"));
    assert_eq!(m.to_numbers, vec!["+15555550142".to_string()]);

    let n = w.hook(a, load("sms_outbound.json"));
    assert_eq!(n.event, CtiEvent::SmsSent);
    let m = w.messages.get(&(a, DialpadId(6095823680520192))).unwrap();
    assert_eq!(m.message_status.as_deref(), Some("pending"));
    let n = w.hook(a, load("sms_outbound_status_delivered.json"));
    assert_eq!(n.event, CtiEvent::SmsSent);
    let m = w.messages.get(&(a, DialpadId(6095823680520192))).unwrap();
    assert_eq!(m.message_status.as_deref(), Some("success"));
    assert_eq!(m.direction, Some(Direction::Outbound));

    w.hook(a, load("sms_inbound_unicode_mms.json"));
    let m = w.messages.get(&(a, DialpadId(9007199254740995))).unwrap();
    assert_eq!(m.dialpad_message_id.to_string(), "9007199254740995");
    assert_eq!(
        m.text.as_deref(),
        Some("Merci François 🙏 — photo du colis ci-jointe. 你好!")
    );

    w.hook(a, load("sms_inbound_no_content_scope.json"));
    let m = w.messages.get(&(a, DialpadId(4857711226093568))).unwrap();
    assert_eq!(m.text, None);
    assert_eq!(m.direction, Some(Direction::Inbound));
}

/// The normaliser's fast path (`CallEvent::from_json_fields`) reads exactly what a full
/// `CallEvent` deserialization reads, for every call fixture and for malformed variants.
#[test]
fn fast_call_parse_matches_full_deserialization() {
    use cti_core::dialpad::CallEvent;
    let mut checked = 0;
    for entry in std::fs::read_dir(events_dir()).unwrap() {
        let path = entry.unwrap().path();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if v.get("call_id").is_none() {
            continue;
        }
        let mut full: CallEvent = serde_json::from_value(v.clone()).unwrap();
        full.extra.clear();
        assert_eq!(CallEvent::from_json_fields(&v).unwrap(), full, "{path:?}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} call fixtures");
    for bad in [
        json!({"call_id": "not-a-number", "state": "ringing"}),
        json!({"call_id": 1, "state": 5}),
        json!({"call_id": 1}),
        json!({"call_id": 1, "state": "ringing", "target": "user"}),
    ] {
        let full = serde_json::from_value::<CallEvent>(bad.clone()).is_ok();
        assert_eq!(CallEvent::from_json_fields(&bad).is_ok(), full, "{bad}");
        assert!(!full, "{bad} should be rejected");
    }
}
