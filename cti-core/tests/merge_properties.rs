//! Properties of the order-independent call merge (`normalize::merge`), driven by the Dialpad
//! fixtures and synthetic events:
//!
//! (a) once a call is `ended`, no further update moves it back to `ringing` or `active`;
//! (b) a lifecycle applied in any order gives the same record as in order.

// Test helpers outside `#[test]` functions: a broken fixture must fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{TimeZone, Utc};
use cti_core::model::*;
use cti_core::normalize::{CallMerge, normalize};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

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
    AppId(Uuid::from_u128(0x1111_2222_3333_4444_8555_6666_7777_8888))
}

/// `(name, events)` of every sequence in `lifecycles.json`.
fn lifecycles() -> &'static [(String, Vec<Value>)] {
    static CELL: OnceLock<Vec<(String, Vec<Value>)>> = OnceLock::new();
    CELL.get_or_init(|| {
        let doc = load("lifecycles.json");
        doc["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let events = s["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| load(f.as_str().unwrap()))
                    .collect();
                (s["name"].as_str().unwrap().to_string(), events)
            })
            .collect()
    })
}

/// Every call fixture, grouped by `call_id` (sorted for determinism).
fn call_groups() -> &'static [Vec<Value>] {
    static CELL: OnceLock<Vec<Vec<Value>>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut names: Vec<String> = std::fs::read_dir(events_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("call_") && n.ends_with(".json"))
            .collect();
        names.sort();
        let mut groups: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
        for n in names {
            let v = load(&n);
            let id = v["call_id"].as_u64().unwrap();
            groups.entry(id).or_default().push(v);
        }
        groups.into_values().collect()
    })
}

/// Every Dialpad call state, plus an invented one.
const STATES: [&str; 32] = [
    "admin",
    "admin_recording",
    "ai_playbook",
    "barge",
    "blocked",
    "call_transcription",
    "calling",
    "connected",
    "csat",
    "dispositions",
    "hangup",
    "hold",
    "merged",
    "missed",
    "monitor",
    "parked",
    "pcsat",
    "postcall",
    "preanswer",
    "queued",
    "recap_action_items",
    "recap_outcome",
    "recap_purposes",
    "recap_summary",
    "recording",
    "ringing",
    "takeover",
    "transcription",
    "voicemail",
    "voicemail_uploaded",
    "ai_live_coaching",
    "all",
];

/// One step of a generated sequence.
#[derive(Clone, Debug)]
enum Step {
    /// A fixture of the chosen call (index modulo the group size).
    Fixture(usize),
    /// A synthetic event of the chosen call.
    Synthetic {
        state: usize,
        /// `event_timestamp` offset from the call's `date_started`, ms (absent when `None`).
        dt: Option<i64>,
        connected: Option<i64>,
        ended: Option<i64>,
        duration: Option<f64>,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..16).prop_map(Step::Fixture),
        (
            0..STATES.len(),
            proptest::option::weighted(0.9, -300_000i64..600_000),
            proptest::option::of(0i64..300_000),
            proptest::option::of(0i64..600_000),
            proptest::option::of(0.0f64..400_000.0),
        )
            .prop_map(|(state, dt, connected, ended, duration)| Step::Synthetic {
                state,
                dt,
                connected,
                ended,
                duration
            }),
    ]
}

fn payload(group: &[Value], s: &Step) -> Value {
    match s {
        Step::Fixture(i) => group[i % group.len()].clone(),
        Step::Synthetic {
            state,
            dt,
            connected,
            ended,
            duration,
        } => {
            let mut v = group[0].clone();
            let base = v["date_started"].as_i64().unwrap_or(1_767_261_600_000);
            v["state"] = json!(STATES[*state]);
            v["event_timestamp"] = dt.map_or(Value::Null, |d| json!(base + d));
            v["date_connected"] = connected.map_or(Value::Null, |d| json!(base + d));
            v["date_ended"] = ended.map_or(Value::Null, |d| json!(base + d));
            v["duration"] = duration.map_or(json!(0), |d| json!(d));
            v
        }
    }
}

/// Applies `events` in order; returns the status after every applied update.
fn statuses(events: &[Value]) -> (Option<Call>, Vec<CallStatus>) {
    let mut call: Option<Call> = None;
    let mut seen = Vec::new();
    for ev in events {
        let n = normalize(ev, received_at());
        if let Some(upd) = &n.call {
            let id = upd.dialpad_call_id.unwrap();
            let m = CallMerge::apply(call.as_ref(), upd, app(), id, received_at());
            seen.push(m.call.status);
            call = Some(m.call);
        }
    }
    (call, seen)
}

fn never_reopened(seen: &[CallStatus]) -> Result<(), TestCaseError> {
    if let Some(first_end) = seen.iter().position(|s| *s == CallStatus::Ended) {
        for (i, s) in seen.iter().enumerate().skip(first_end) {
            prop_assert!(
                !s.is_live(),
                "status {s:?} at step {i} after ended at step {first_end}: {seen:?}"
            );
        }
    }
    Ok(())
}

/// The record without the fields that legitimately differ between two runs.
fn comparable(c: &Call) -> Call {
    let mut c = c.clone();
    c.id = Uuid::nil();
    c.created_at = received_at();
    c.updated_at = received_at();
    c
}

#[test]
fn lifecycles_in_order_never_reopen() {
    for (name, events) in lifecycles() {
        for k in 1..=events.len() {
            let (_, seen) = statuses(&events[..k]);
            never_reopened(&seen).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) Random sequences over one call (fixtures with repetition + synthetic events): once
    /// `ended`, never `ringing`/`active` again, after any prefix.
    #[test]
    fn ended_is_never_reopened(
        (g, steps) in (0..call_groups().len()).prop_flat_map(|g| (Just(g), proptest::collection::vec(step(), 1..40)))
    ) {
        let group = &call_groups()[g];
        let events: Vec<Value> = steps.iter().map(|s| payload(group, s)).collect();
        let (_, seen) = statuses(&events);
        never_reopened(&seen)?;
    }

    /// (a) also holds for lifecycles with random extra events spliced in.
    #[test]
    fn ended_is_never_reopened_in_shuffled_lifecycles(
        (i, events) in (0..lifecycles().len()).prop_flat_map(|i| (Just(i), Just(lifecycles()[i].1.clone()).prop_shuffle()))
    ) {
        let (_, seen) = statuses(&events);
        never_reopened(&seen).map_err(|e| TestCaseError::fail(format!("{}: {e}", lifecycles()[i].0)))?;
    }

    /// (b) Any permutation of a lifecycle gives the in-order record (except id/created/updated).
    #[test]
    fn lifecycle_permutations_give_the_same_record(
        (i, shuffled) in (0..lifecycles().len()).prop_flat_map(|i| (Just(i), Just(lifecycles()[i].1.clone()).prop_shuffle()))
    ) {
        let (name, events) = &lifecycles()[i];
        let (in_order, _) = statuses(events);
        let (permuted, _) = statuses(&shuffled);
        let (in_order, permuted) = (in_order.unwrap(), permuted.unwrap());
        prop_assert_eq!(comparable(&permuted), comparable(&in_order), "lifecycle {}", name);
    }

    /// (b) generalised: any permutation of random fixture/synthetic events of one call (with
    /// distinct event times) gives the same record.
    #[test]
    fn random_sequence_permutations_give_the_same_record(
        (g, steps, seed) in (0..call_groups().len()).prop_flat_map(|g| (Just(g), proptest::collection::vec(step(), 1..20), any::<u64>()))
    ) {
        let group = &call_groups()[g];
        let mut events: Vec<Value> = steps.iter().map(|s| payload(group, s)).collect();
        // Make event times distinct: two different payloads with the same event time are a
        // genuine tie, which `raw_payload` (newest payload, ties keep the stored one) resolves by
        // arrival order.
        events.sort_by_key(|e| e["event_timestamp"].as_i64());
        events.dedup_by_key(|e| e["event_timestamp"].as_i64());
        let in_order = statuses(&events).0;
        // A deterministic shuffle from the seed (Fisher–Yates with an LCG).
        let mut shuffled = events.clone();
        let mut x = seed | 1;
        for k in (1..shuffled.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (x >> 33) as usize % (k + 1);
            shuffled.swap(k, j);
        }
        let permuted = statuses(&shuffled).0;
        match (in_order, permuted) {
            (Some(a), Some(b)) => prop_assert_eq!(comparable(&b), comparable(&a)),
            (a, b) => prop_assert_eq!(a.is_none(), b.is_none()),
        }
    }
}
