//! Webhook payloads: Dialpad call events from `fixtures/dialpad/events/` turned into templates
//! with holes for the call id, the event times and the JWT `iat`, rendered with fresh unique
//! call ids and signed.
//!
//! Rendering is string splicing (no JSON serialisation per request): about a microsecond, then
//! one HMAC-SHA256 (plus base64url for JWTs). Request `i` is a pure function of `i` and the run's
//! [`Plan`], so requests can be pre-signed before the timed loop or rendered on the fly, and a
//! duplicate is byte-identical to the request it repeats (the server deduplicates by the SHA-256
//! of the raw body).

use bytes::Bytes;
use serde_json::Value;

use crate::{Error, Result};

include!("../../../fixtures/dialpad/embedded.rs");

/// The fixture used when every call is a single `ringing` event.
pub const RINGING_FIXTURE: &str = "call_inbound_02_ringing.json";

/// Which events make up a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// Each call replays one fixture lifecycle (round robin over `lifecycles.json`), its events
    /// in the lifecycle's order: 2–7 requests per call.
    Lifecycles,
    /// Each call is one `ringing` event: one request per call (and one WebSocket message).
    Ringing,
}

/// How a webhook is authenticated (spec §2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPath {
    /// `Content-Type: application/jwt`, HS256 with the webhook secret, on
    /// `POST /webhooks/dialpad/<app_id>` (tenant from the path).
    Jwt,
    /// JSON body with `x-dialpad-signature` = base64 HMAC-SHA256 of the body (global webhook
    /// secret) on `POST /webhooks/dialpad`, tenant from the `x-app-api-key` header.
    ApiKey,
}

/// Where the `event_timestamp` of a rendered event comes from.
///
/// Dialpad stamps an event with the moment it happens and sends it then, so the events a
/// server receives in one second carry timestamps from about that second, whatever calls
/// they belong to. The load generator sends a call's events one after another, so it cannot
/// both keep the fixtures' real offsets (a lifecycle spans up to six minutes) and keep the
/// timestamps in send order; the `date_*` fields keep the real offsets either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventTime {
    /// `event_timestamp` follows the send order, as live traffic's does: the call's first
    /// request number (in ms after the run's start) plus the event's rank by fixture time in
    /// its lifecycle. A lifecycle's deliberately late event keeps its earlier timestamp.
    #[default]
    SendOrder,
    /// `event_timestamp` is the call's base time (1 ms per call) plus the fixture's real
    /// offset: consecutive requests carry timestamps up to six minutes apart (the model of
    /// the figures recorded up to 2026-11-30 h; pessimistic for time-ordered indexes).
    CallOffsets,
}

/// A hole in a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hole {
    /// The call id (a bare JSON number).
    CallId,
    /// A time in ms: the call's base time plus this offset.
    Time(i64),
    /// `event_timestamp`: the call's base time plus this offset, or the send-order time
    /// (see [`EventTime`]).
    EventTime(i64),
    /// The JWT `iat` claim (seconds).
    Iat,
}

const MARK: &str = "\"@@lg:";
const MARK_END: &str = "@@\"";

/// One fixture event with holes.
#[derive(Clone, Debug)]
pub struct Template {
    /// Fixture file name.
    pub name: String,
    /// Dialpad `state` of the event.
    pub state: String,
    segments: Vec<String>,
    holes: Vec<Hole>,
    /// Rank of the event by fixture `event_timestamp` within its lifecycle (0 = earliest).
    rank: u64,
}

impl Template {
    /// Builds a template from fixture JSON. `base_ms` is the time the offsets of the event's
    /// `date_*`/`event_timestamp` fields are taken from; `iat` adds an `iat` claim hole.
    pub fn from_fixture(name: &str, text: &str, base_ms: i64, iat: bool) -> Result<Self> {
        let mut v: Value =
            serde_json::from_str(text).map_err(|e| Error::new(format!("fixture {name}: {e}")))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::new(format!("fixture {name}: not a JSON object")))?;
        let state = obj
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for (k, val) in obj.iter_mut() {
            if k == "call_id" {
                *val = Value::from("@@lg:C@@");
            } else if k == "event_timestamp"
                && let Some(t) = val.as_i64()
            {
                *val = Value::from(format!("@@lg:E{}@@", t - base_ms));
            } else if k.starts_with("date_")
                && let Some(t) = val.as_i64()
            {
                *val = Value::from(format!("@@lg:T{}@@", t - base_ms));
            }
        }
        if iat {
            obj.insert("iat".into(), Value::from("@@lg:I@@"));
        }
        let text = serde_json::to_string(&v).map_err(|e| Error::new(e.to_string()))?;
        let mut segments = Vec::new();
        let mut holes = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(MARK) {
            segments.push(rest[..at].to_string());
            let after = &rest[at + MARK.len()..];
            let end = after
                .find(MARK_END)
                .ok_or_else(|| Error::new("unterminated template mark"))?;
            let tag = &after[..end];
            holes.push(match tag {
                "C" => Hole::CallId,
                "I" => Hole::Iat,
                t => {
                    let bad = || Error::new(format!("bad template mark {t:?}"));
                    let (kind, n) = t.split_at_checked(1).ok_or_else(bad)?;
                    let off: i64 = n.parse().map_err(|_| bad())?;
                    match kind {
                        "T" => Hole::Time(off),
                        "E" => Hole::EventTime(off),
                        _ => return Err(bad()),
                    }
                }
            });
            rest = &after[end + MARK_END.len()..];
        }
        segments.push(rest.to_string());
        if !holes.contains(&Hole::CallId) {
            return Err(Error::new(format!("fixture {name}: no call_id")));
        }
        Ok(Self {
            name: name.to_string(),
            state,
            segments,
            holes,
            rank: 0,
        })
    }

    /// The fixture offset of the event's `event_timestamp` (None without one).
    fn event_offset(&self) -> Option<i64> {
        self.holes.iter().find_map(|h| match h {
            Hole::EventTime(off) => Some(*off),
            _ => None,
        })
    }

    /// Appends the event JSON with these values to `out`: times are `base_ms` plus the
    /// fixture offset, except `event_timestamp`, which is `event_ms` when given.
    pub fn render(
        &self,
        call_id: u64,
        base_ms: i64,
        event_ms: Option<i64>,
        iat: i64,
        out: &mut Vec<u8>,
    ) {
        use std::io::Write;
        for (i, seg) in self.segments.iter().enumerate() {
            out.extend_from_slice(seg.as_bytes());
            let _ = match self.holes.get(i) {
                Some(Hole::CallId) => write!(out, "{call_id}"),
                Some(Hole::Time(off)) => write!(out, "{}", base_ms + off),
                Some(Hole::EventTime(off)) => {
                    write!(out, "{}", event_ms.unwrap_or(base_ms + off))
                }
                Some(Hole::Iat) => write!(out, "{iat}"),
                None => Ok(()),
            };
        }
    }
}

/// The text of an embedded fixture.
pub fn fixture_text(name: &str) -> Result<&'static str> {
    EVENT_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| Error::new(format!("unknown fixture {name:?}")))
}

/// One call shape: the templates of its events, in order.
#[derive(Clone, Debug)]
pub struct CallShape {
    /// Lifecycle name.
    pub name: String,
    /// Event templates.
    pub events: Vec<Template>,
}

/// The call shapes of a [`Mix`].
pub fn call_shapes(mix: Mix, iat: bool) -> Result<Vec<CallShape>> {
    match mix {
        Mix::Ringing => {
            let text = fixture_text(RINGING_FIXTURE)?;
            let base = first_event_time(&[text]);
            Ok(vec![CallShape {
                name: "ringing".into(),
                events: vec![Template::from_fixture(RINGING_FIXTURE, text, base, iat)?],
            }])
        }
        Mix::Lifecycles => {
            let v: Value = serde_json::from_str(LIFECYCLES)
                .map_err(|e| Error::new(format!("lifecycles.json: {e}")))?;
            let seqs = v
                .get("sequences")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::new("lifecycles.json: no sequences"))?;
            let mut out = Vec::new();
            for s in seqs {
                let name = s.get("name").and_then(Value::as_str).unwrap_or("?");
                let files: Vec<&str> = s
                    .get("events")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let texts = files
                    .iter()
                    .map(|f| fixture_text(f))
                    .collect::<Result<Vec<_>>>()?;
                let base = first_event_time(&texts);
                let mut events = files
                    .iter()
                    .zip(&texts)
                    .map(|(f, t)| Template::from_fixture(f, t, base, iat))
                    .collect::<Result<Vec<_>>>()?;
                rank_by_event_time(&mut events);
                if !events.is_empty() {
                    out.push(CallShape {
                        name: name.to_string(),
                        events,
                    });
                }
            }
            Ok(out)
        }
    }
}

/// Sets each template's rank by fixture `event_timestamp` (ties and events without one keep
/// their lifecycle order).
fn rank_by_event_time(events: &mut [Template]) {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].event_offset().unwrap_or(i64::MAX), i));
    for (rank, i) in order.into_iter().enumerate() {
        events[i].rank = rank as u64;
    }
}

/// The smallest `event_timestamp` of some fixture texts (0 when none has one).
fn first_event_time(texts: &[&str]) -> i64 {
    texts
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter_map(|v| v.get("event_timestamp").and_then(Value::as_i64))
        .min()
        .unwrap_or(0)
}

/// SplitMix64: a tiny deterministic hash / generator.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh 16-digit base for the call ids of one run (ids `base + call_no` never collide with
/// another run's in practice, nor with the fixtures' own ids).
pub fn random_call_id_base() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let r = splitmix64(nanos ^ (u64::from(std::process::id()) << 32));
    // 1e15 ..= 8e15, multiple of 1e9: room for a billion calls per run.
    1_000_000_000_000_000 + (r % 7_000_000) * 1_000_000_000
}

/// Now in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One rendered, signed webhook.
#[derive(Clone, Debug)]
pub struct SignedWebhook {
    /// Request body (JWT text or JSON).
    pub body: Bytes,
    /// `x-dialpad-signature` value on the API-key path.
    pub signature: Option<String>,
    /// The call number within the run (call id = base + call number).
    pub call_no: u64,
    /// Whether this request repeats an earlier one byte for byte.
    pub duplicate: bool,
}

/// What request `i` of a run is: a pure function of `i`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Call shapes, used round robin.
    pub shapes: Vec<CallShape>,
    /// Auth path (decides JWT vs JSON + HMAC).
    pub auth: AuthPath,
    /// Signing secret.
    pub secret: Vec<u8>,
    /// Call id of call number 0.
    pub call_id_base: u64,
    /// Base time of call 0 (ms); call `n` starts `n` ms later.
    pub start_ms: i64,
    /// JWT `iat` for every request (seconds).
    pub iat: i64,
    /// Fraction of requests that repeat an earlier request (0 ≤ d < 1).
    pub duplicates: f64,
    /// Where `event_timestamp` comes from.
    pub event_time: EventTime,
    /// Prefix sums of the shapes' event counts (len = shapes + 1).
    offsets: Vec<u64>,
}

impl Plan {
    /// A plan over `mix` for `auth`, signed with `secret`, with fresh call ids.
    pub fn new(mix: Mix, auth: AuthPath, secret: &[u8], duplicates: f64) -> Result<Self> {
        let shapes = call_shapes(mix, auth == AuthPath::Jwt)?;
        if shapes.is_empty() {
            return Err(Error::new("no call shapes"));
        }
        let mut offsets = vec![0u64];
        for s in &shapes {
            let last = offsets.last().copied().unwrap_or(0);
            offsets.push(last + s.events.len() as u64);
        }
        let start_ms = now_ms();
        Ok(Self {
            shapes,
            auth,
            secret: secret.to_vec(),
            call_id_base: random_call_id_base(),
            start_ms,
            iat: start_ms / 1000,
            duplicates: duplicates.clamp(0.0, 0.99),
            event_time: EventTime::default(),
            offsets,
        })
    }

    /// The same plan with `event_timestamp` from `model`.
    pub fn with_event_time(mut self, model: EventTime) -> Self {
        self.event_time = model;
        self
    }

    /// Events in one round (one call of every shape).
    fn round_len(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(1).max(1)
    }

    /// The original (non-duplicate) event at position `i`: (call number, shape, event index).
    fn original(&self, i: u64) -> (u64, usize, usize) {
        let round = i / self.round_len();
        let pos = i % self.round_len();
        // Few shapes: a linear scan is fine.
        let mut k = 0;
        while k + 1 < self.offsets.len() && self.offsets[k + 1] <= pos {
            k += 1;
        }
        let e = (pos - self.offsets[k]) as usize;
        (round * self.shapes.len() as u64 + k as u64, k, e)
    }

    /// If request `i` is a duplicate, the earlier request it repeats.
    fn duplicate_of(&self, i: u64) -> Option<u64> {
        if self.duplicates <= 0.0 || i == 0 {
            return None;
        }
        let h = splitmix64(i ^ self.call_id_base);
        let threshold = (self.duplicates * u64::MAX as f64) as u64;
        if h >= threshold {
            return None;
        }
        let back = 1 + splitmix64(h) % i.min(256);
        Some(i - back)
    }

    /// The call number request `i` belongs to.
    pub fn call_no(&self, i: u64) -> u64 {
        let mut i = i;
        while let Some(j) = self.duplicate_of(i) {
            i = j;
        }
        self.original(i).0
    }

    /// Number of distinct calls among requests `0..n` (upper bound: duplicates never add calls).
    pub fn calls_upper_bound(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.original(n - 1).0 + 1
    }

    /// Renders and signs request `i`.
    pub fn render(&self, i: u64) -> SignedWebhook {
        let mut j = i;
        while let Some(k) = self.duplicate_of(j) {
            j = k;
        }
        let (call_no, shape, event) = self.original(j);
        let template = &self.shapes[shape].events[event];
        // Send order: the call's first request number plus the event's rank (< the call's
        // event count), so timestamps rise with the request number across calls.
        let event_ms = (self.event_time == EventTime::SendOrder)
            .then(|| self.start_ms + (j - event as u64 + template.rank) as i64);
        let mut json = Vec::with_capacity(4096);
        template.render(
            self.call_id_base + call_no,
            self.start_ms + call_no as i64,
            event_ms,
            self.iat,
            &mut json,
        );
        let (body, signature) = match self.auth {
            AuthPath::Jwt => (
                Bytes::from(cti_core::verify::sign_jwt_hs256_raw(&json, &self.secret)),
                None,
            ),
            AuthPath::ApiKey => {
                let sig = cti_core::verify::sign_hmac_b64(&json, &self.secret);
                (Bytes::from(json), Some(sig))
            }
        };
        SignedWebhook {
            body,
            signature,
            call_no,
            duplicate: j != i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_valid_json_with_fresh_ids() {
        let shapes = call_shapes(Mix::Lifecycles, true).unwrap_or_default();
        assert!(shapes.len() >= 5);
        for s in &shapes {
            for t in &s.events {
                let mut out = Vec::new();
                t.render(
                    1_234_567_890_123_456,
                    1_800_000_000_000,
                    None,
                    1_800_000_000,
                    &mut out,
                );
                let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
                assert_eq!(
                    v["call_id"].as_u64(),
                    Some(1_234_567_890_123_456),
                    "{}",
                    t.name
                );
                assert_eq!(v["iat"].as_i64(), Some(1_800_000_000));
                if let Some(ts) = v["event_timestamp"].as_i64() {
                    assert!((ts - 1_800_000_000_000).abs() < 86_400_000, "{}", t.name);
                }
            }
        }
    }

    /// `(call number, event_timestamp)` of request `i`.
    fn call_and_time(plan: &Plan, i: u64) -> (u64, i64) {
        let w = plan.render(i);
        let v: Value = serde_json::from_slice(&w.body).unwrap_or(Value::Null);
        (w.call_no, v["event_timestamp"].as_i64().unwrap_or(i64::MIN))
    }

    #[test]
    fn send_order_timestamps_rise_with_the_request_and_keep_each_call_s_order() {
        let plan = Plan::new(Mix::Lifecycles, AuthPath::ApiKey, b"W", 0.0);
        let Ok(plan) = plan else { panic!("plan") };
        let calls = plan.clone().with_event_time(EventTime::CallOffsets);
        let n = 3 * plan.round_len();
        let mut late = 0;
        for i in 1..n {
            let ((c0, t0), (c1, t1)) = (call_and_time(&plan, i - 1), call_and_time(&plan, i));
            if c0 != c1 {
                // A new call starts after every timestamp of the previous one.
                assert!(t1 > t0, "request {i}: {t1} after {t0}");
                continue;
            }
            // Within a call, both models order the events alike (the late event included).
            let (_, o0) = call_and_time(&calls, i - 1);
            let (_, o1) = call_and_time(&calls, i);
            assert_eq!(t1 > t0, o1 > o0, "request {i}");
            late += usize::from(t1 < t0);
        }
        // The fixture lifecycle with a late `connected` event, once per round.
        assert_eq!(late, 3);
        // Send order keeps a run's timestamps within its request count of the start.
        let (_, last) = call_and_time(&plan, n - 1);
        assert!((plan.start_ms..plan.start_ms + n as i64).contains(&last));
    }

    #[test]
    fn plan_is_deterministic_and_duplicates_repeat_bytes() {
        let plan = Plan::new(Mix::Lifecycles, AuthPath::Jwt, b"secret", 0.2).ok();
        let Some(plan) = plan else { panic!("plan") };
        let mut dups = 0;
        for i in 0..2000 {
            let a = plan.render(i);
            let b = plan.render(i);
            assert_eq!(a.body, b.body);
            assert_eq!(a.call_no, plan.call_no(i));
            if a.duplicate {
                dups += 1;
            }
        }
        assert!((200..600).contains(&dups), "{dups}");
    }

    #[test]
    fn api_key_path_signs_json() {
        let plan = Plan::new(Mix::Ringing, AuthPath::ApiKey, b"W", 0.0).ok();
        let Some(plan) = plan else { panic!("plan") };
        let w = plan.render(3);
        let sig = w.signature.clone().unwrap_or_default();
        assert_eq!(sig, cti_core::verify::sign_hmac_b64(&w.body, b"W"));
        let v: Value = serde_json::from_slice(&w.body).unwrap_or(Value::Null);
        assert_eq!(v["call_id"].as_u64(), Some(plan.call_id_base + 3));
        assert_eq!(plan.call_no(3), 3);
        assert!(v.get("iat").is_none());
    }
}
