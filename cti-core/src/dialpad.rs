//! Typed Dialpad payloads: call and SMS webhook events, OAuth token, company, webhook and event
//! subscription responses.
//!
//! Every type is lenient in the ways real Dialpad traffic requires (see
//! `fixtures/dialpad/README.md`):
//!
//! * 64-bit ids are [`DialpadId`]s, accepted as a JSON number or a decimal string and never
//!   routed through `f64` (ids above 2^53 survive exactly);
//! * `contact.id` is an opaque string (Dialpad sends numbers, strings and even URLs);
//! * epoch-millisecond times accept an integer, a float or a numeric string; durations
//!   (milliseconds, often fractional) accept a number or a numeric string; booleans accept
//!   `true`/`false` and their string forms;
//! * almost every field is optional and `null`/absent/empty-string values read as `None`;
//! * unknown fields are kept in `extra` and written back on serialisation.
//!
//! ```
//! use cti_core::dialpad::CallEvent;
//! let ev: CallEvent = serde_json::from_str(
//!     r#"{"call_id":4611686018427387913,"state":"ringing","duration":"1500.5","x":1}"#,
//! )
//! .unwrap();
//! assert_eq!(ev.call_id.0, 4_611_686_018_427_387_913);
//! assert_eq!(ev.duration, Some(1500.5));
//! assert_eq!(ev.extra["x"], 1);
//! ```

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{DialpadId, Direction, Timestamp};

/// Converts epoch milliseconds (Dialpad's time unit) into a UTC timestamp; `None` when out of
/// range.
///
/// ```
/// use cti_core::dialpad::ms_to_timestamp;
/// use cti_core::model::format_ts;
/// let ts = ms_to_timestamp(1769688000000).unwrap();
/// assert_eq!(format_ts(&ts), "2026-01-29T12:00:00.000Z");
/// ```
pub fn ms_to_timestamp(ms: i64) -> Option<Timestamp> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// Converts a Dialpad duration in (possibly fractional) milliseconds into whole seconds,
/// rounded half up; `None` for negative or non-finite values.
///
/// ```
/// use cti_core::dialpad::ms_to_seconds;
/// assert_eq!(ms_to_seconds(120000.0), Some(120));
/// assert_eq!(ms_to_seconds(183245.117), Some(183));
/// assert_eq!(ms_to_seconds(-1.0), None);
/// ```
pub fn ms_to_seconds(ms: f64) -> Option<i64> {
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    Some((ms / 1000.0).round() as i64)
}

/// A JSON value that Dialpad sends either as a single item or as a list (`recording_url`, SMS
/// `to_number`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single item.
    One(T),
    /// A list of items.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// All items, in order.
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(x) => std::slice::from_ref(x),
            OneOrMany::Many(v) => v,
        }
    }
}

impl OneOrMany<String> {
    /// The first non-blank item.
    pub fn first_non_empty(&self) -> Option<&str> {
        self.as_slice()
            .iter()
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
    }

    /// All non-blank items, trimmed.
    pub fn non_empty(&self) -> Vec<String> {
        self.as_slice()
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Lenient field deserialisers. Each goes through [`serde_json::Value`] (integers stay exact).
mod lenient {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use crate::model::DialpadId;

    fn is_blank(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::String(s) => s.trim().is_empty(),
            _ => false,
        }
    }

    /// `Option<DialpadId>`: number or decimal string; `null`/`""` → `None`.
    pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DialpadId>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_blank(&v) {
            return Ok(None);
        }
        DialpadId::from_json(&v)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid dialpad id {v}")))
    }

    /// `Option<String>` that also accepts numbers and booleans (rendered as text); `null`/`""`
    /// → `None`.
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Value::deserialize(d)?;
        match v {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s)),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(D::Error::custom(format!("expected a string, got {other}"))),
        }
    }

    /// Opaque identifier as a string: string, number (exact) or any other JSON rendered as text.
    pub fn opaque<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        })
    }

    /// Epoch milliseconds: integer, float (rounded) or numeric string.
    pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_blank(&v) {
            return Ok(None);
        }
        let parsed = match &v {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.round() as i64)
            }),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i64>().ok().or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(|f| f.round() as i64)
                })
            }
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid epoch milliseconds {v}")))
    }

    /// A number (possibly fractional) or numeric string.
    pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_blank(&v) {
            return Ok(None);
        }
        let parsed = match &v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        parsed
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid number {v}")))
    }

    /// A boolean, also `"true"`/`"false"` (any case) and `0`/`1`.
    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_blank(&v) {
            return Ok(None);
        }
        let parsed = match &v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            },
            Value::Number(n) => match n.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid boolean {v}")))
    }
}

/// The external party of a call or message (`contact`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Opaque contact id (number, string or URL in the wild), kept as text.
    #[serde(default, deserialize_with = "lenient::opaque")]
    pub id: Option<String>,
    /// `type` (`local`, `user`, …).
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub kind: Option<String>,
    /// Display name.
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: Option<String>,
    /// Phone number (call events).
    #[serde(default, deserialize_with = "lenient::string")]
    pub phone: Option<String>,
    /// Phone number (SMS events).
    #[serde(default, deserialize_with = "lenient::string")]
    pub phone_number: Option<String>,
    /// E-mail address.
    #[serde(default, deserialize_with = "lenient::string")]
    pub email: Option<String>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The Dialpad side of a call or message (`target`): a user, office, department, call centre…
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Target id.
    #[serde(default, deserialize_with = "lenient::id")]
    pub id: Option<DialpadId>,
    /// `type` (`user`, `office`, `department`, `callcenter`, …).
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub kind: Option<String>,
    /// Display name.
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: Option<String>,
    /// Phone number (call events).
    #[serde(default, deserialize_with = "lenient::string")]
    pub phone: Option<String>,
    /// Phone number (SMS events; may be formatted like `(555) 555-0142`).
    #[serde(default, deserialize_with = "lenient::string")]
    pub phone_number: Option<String>,
    /// E-mail address.
    #[serde(default, deserialize_with = "lenient::string")]
    pub email: Option<String>,
    /// Office the target belongs to (event payloads only).
    #[serde(default, deserialize_with = "lenient::id")]
    pub office_id: Option<DialpadId>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Target {
    /// `true` when `type` is `user` (case-insensitive).
    pub fn is_user(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("user"))
    }

    /// The target id when the target is a Dialpad user.
    pub fn user_id(&self) -> Option<DialpadId> {
        if self.is_user() { self.id } else { None }
    }
}

/// One entry of `recording_details`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingDetail {
    /// Recording id (a string in the spec).
    #[serde(default, deserialize_with = "lenient::opaque")]
    pub id: Option<String>,
    /// Download link (present only with the `recordings_export` scope).
    #[serde(default, deserialize_with = "lenient::string")]
    pub url: Option<String>,
    /// Length in milliseconds.
    #[serde(default, deserialize_with = "lenient::float")]
    pub duration: Option<f64>,
    /// `callrecording`, `admincallrecording` or `voicemail`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub recording_type: Option<String>,
    /// Start (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub start_time: Option<i64>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RecordingDetail {
    /// `true` for voicemail recordings.
    pub fn is_voicemail(&self) -> bool {
        self.recording_type
            .as_deref()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("voicemail"))
    }

    fn link(&self) -> Option<&str> {
        non_blank(self.url.as_deref())
    }
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Defines [`CallEvent`] and `CallEventFields`, the same fields without `extra`: the
/// normaliser deserializes the latter straight from a borrowed `Value`, skipping the buffering
/// that `#[serde(flatten)]` costs (most of a call event's normalisation time).
macro_rules! call_event {
    ($($(#[$fm:meta])* pub $f:ident: $t:ty,)*) => {
        /// A Dialpad call event: the call object as of one state transition (one POST per
        /// transition, all with the same `call_id`, a new `state` and a new `event_timestamp`).
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct CallEvent {
            $($(#[$fm])* pub $f: $t,)*
            /// Fields not modelled above.
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        }

        /// [`CallEvent`] without `extra` (unknown fields are skipped, not collected).
        #[derive(Deserialize)]
        struct CallEventFields {
            $($(#[$fm])* $f: $t,)*
        }

        impl CallEventFields {
            fn into_event(self) -> CallEvent {
                CallEvent { $($f: self.$f,)* extra: Map::new() }
            }
        }

        /// [`CallEvent`]'s fields plus the explicit type members, read straight from JSON
        /// text by the normaliser's fast path (`normalize::normalize_json`).
        #[derive(Deserialize)]
        pub(crate) struct CallEventProbe {
            $($(#[$fm])* $f: $t,)*
            /// Explicit `event_type` (the legacy path when truthy).
            #[serde(default)]
            pub(crate) event_type: Option<Value>,
            /// Explicit `type` (same).
            #[serde(default, rename = "type")]
            pub(crate) kind: Option<Value>,
        }

        impl CallEventProbe {
            pub(crate) fn into_event(self) -> CallEvent {
                CallEvent { $($f: self.$f,)* extra: Map::new() }
            }
        }
    };
}

call_event! {
    /// Id of this call leg.
    pub call_id: DialpadId,
    /// Master call id (transfers, conferences).
    #[serde(default, deserialize_with = "lenient::id")]
    pub master_call_id: Option<DialpadId>,
    /// Call id of the entry-point (e.g. main line) call.
    #[serde(default, deserialize_with = "lenient::id")]
    pub entry_point_call_id: Option<DialpadId>,
    /// Operator call id.
    #[serde(default, deserialize_with = "lenient::id")]
    pub operator_call_id: Option<DialpadId>,
    /// Dialpad call state (`ringing`, `connected`, `hangup`, …).
    pub state: String,
    /// `inbound` / `outbound`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub direction: Option<String>,
    /// Call began in Dialpad (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub date_started: Option<i64>,
    /// First ring (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub date_rang: Option<i64>,
    /// Answered (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub date_connected: Option<i64>,
    /// Hung up (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub date_ended: Option<i64>,
    /// Talk duration in milliseconds.
    #[serde(default, deserialize_with = "lenient::float")]
    pub duration: Option<f64>,
    /// Duration including ring time, in milliseconds.
    #[serde(default, deserialize_with = "lenient::float")]
    pub total_duration: Option<f64>,
    /// Number outside the company.
    #[serde(default, deserialize_with = "lenient::string")]
    pub external_number: Option<String>,
    /// Number inside the company.
    #[serde(default, deserialize_with = "lenient::string")]
    pub internal_number: Option<String>,
    /// External party.
    #[serde(default)]
    pub contact: Option<Contact>,
    /// Dialpad side (user, office, …).
    #[serde(default)]
    pub target: Option<Target>,
    /// When this event happened (epoch ms); the ordering key.
    #[serde(default, deserialize_with = "lenient::millis")]
    pub event_timestamp: Option<i64>,
    /// The call was transferred.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub is_transferred: Option<bool>,
    /// The call was recorded.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub was_recorded: Option<bool>,
    /// Recordings of the call (and the voicemail recording).
    #[serde(default)]
    pub recording_details: Option<Vec<RecordingDetail>>,
    /// Recording link(s) (a string or a list).
    #[serde(default)]
    pub recording_url: Option<OneOrMany<String>>,
    /// Voicemail link (name seen in real events).
    #[serde(default, deserialize_with = "lenient::string")]
    pub voicemail_link: Option<String>,
    /// Voicemail share link (name in Dialpad's OpenAPI document).
    #[serde(default, deserialize_with = "lenient::string")]
    pub voicemail_share_link: Option<String>,
    /// Voicemail recording id.
    #[serde(default, deserialize_with = "lenient::opaque")]
    pub voicemail_recording_id: Option<String>,
    /// Transcript text (call transcription or voicemail).
    #[serde(default, deserialize_with = "lenient::string")]
    pub transcription_text: Option<String>,
    /// Call labels.
    #[serde(default)]
    pub labels: Option<Vec<Value>>,
}

impl CallEvent {
    /// Deserializes the modelled fields from a borrowed JSON value, leaving `extra` empty:
    /// no copy of the payload and no collection of unknown fields. Accepts and rejects exactly
    /// what deserializing a `CallEvent` does.
    pub fn from_json_fields(v: &Value) -> Result<CallEvent, serde_json::Error> {
        CallEventFields::deserialize(v).map(CallEventFields::into_event)
    }
}

impl CallEvent {
    /// The state, trimmed and lower-cased.
    pub fn state_normalized(&self) -> String {
        self.state.trim().to_ascii_lowercase()
    }

    /// Normalised direction (`inbound|incoming|in`, `outbound|outgoing|out`).
    pub fn direction(&self) -> Option<Direction> {
        self.direction.as_deref().and_then(Direction::normalize)
    }

    /// `(from, to)` numbers: inbound external → internal, outbound internal → external; both
    /// `None` when the direction is unknown.
    pub fn from_to(&self) -> (Option<String>, Option<String>) {
        let ext = non_blank(self.external_number.as_deref()).map(str::to_string);
        let int = non_blank(self.internal_number.as_deref()).map(str::to_string);
        match self.direction() {
            Some(Direction::Inbound) => (ext, int),
            Some(Direction::Outbound) => (int, ext),
            None => (None, None),
        }
    }

    /// The targeted Dialpad user (`target.id` when `target.type == "user"`).
    pub fn target_user_id(&self) -> Option<DialpadId> {
        self.target.as_ref().and_then(Target::user_id)
    }

    /// The call recording link: `recording_url` (first of a list, or the string), else the first
    /// non-voicemail `recording_details[].url`, else any `recording_details[].url`.
    pub fn recording_link(&self) -> Option<String> {
        if let Some(u) = self
            .recording_url
            .as_ref()
            .and_then(OneOrMany::first_non_empty)
        {
            return Some(u.to_string());
        }
        let details = self.recording_details.as_deref().unwrap_or_default();
        details
            .iter()
            .filter(|d| !d.is_voicemail())
            .find_map(RecordingDetail::link)
            .or_else(|| details.iter().find_map(RecordingDetail::link))
            .map(str::to_string)
    }

    /// The voicemail recording: `voicemail_link`, else `voicemail_share_link`, else a
    /// `recording_details` entry of type `voicemail`.
    pub fn voicemail_link(&self) -> Option<String> {
        non_blank(self.voicemail_link.as_deref())
            .or_else(|| non_blank(self.voicemail_share_link.as_deref()))
            .or_else(|| {
                self.recording_details
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| d.is_voicemail())
                    .find_map(RecordingDetail::link)
            })
            .map(str::to_string)
    }

    /// Length of the voicemail in seconds: the `voicemail` recording's duration, else the call
    /// `duration` when positive.
    pub fn voicemail_duration_seconds(&self) -> Option<i64> {
        self.recording_details
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|d| d.is_voicemail())
            .find_map(|d| d.duration)
            .or(self.duration.filter(|d| *d > 0.0))
            .and_then(ms_to_seconds)
    }

    /// Non-blank transcript text.
    pub fn transcript(&self) -> Option<String> {
        self.transcription_text
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(str::to_string)
    }
}

/// A Dialpad SMS/MMS event (no `state`, no `call_id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmsEvent {
    /// Message id.
    pub id: DialpadId,
    /// Created/sent (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub created_date: Option<i64>,
    /// When this event happened (epoch ms).
    #[serde(default, deserialize_with = "lenient::millis")]
    pub event_timestamp: Option<i64>,
    /// `inbound` / `outbound`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub direction: Option<String>,
    /// Dialpad side (user, office, …).
    #[serde(default)]
    pub target: Option<Target>,
    /// External party.
    #[serde(default)]
    pub contact: Option<Contact>,
    /// The user who actually sent the message when `target` is a group.
    #[serde(default, deserialize_with = "lenient::id")]
    pub sender_id: Option<DialpadId>,
    /// Sender number.
    #[serde(default, deserialize_with = "lenient::string")]
    pub from_number: Option<String>,
    /// Receiver numbers (a list in Dialpad events; a string accepted too).
    #[serde(default)]
    pub to_number: Option<OneOrMany<String>>,
    /// Text (only with the `message_content_export` scope).
    #[serde(default, deserialize_with = "lenient::string")]
    pub text: Option<String>,
    /// Text, alternative field.
    #[serde(default, deserialize_with = "lenient::string")]
    pub text_content: Option<String>,
    /// `pending`, `success`, `failed`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub message_status: Option<String>,
    /// `accepted`, `rejected`, `no_route`, …
    #[serde(default, deserialize_with = "lenient::string")]
    pub message_delivery_result: Option<String>,
    /// MMS flag.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub mms: Option<bool>,
    /// MMS media link.
    #[serde(default, deserialize_with = "lenient::string")]
    pub mms_url: Option<String>,
    /// Internal (company-to-company) message.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub is_internal: Option<bool>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SmsEvent {
    /// Normalised direction.
    pub fn direction(&self) -> Option<Direction> {
        self.direction.as_deref().and_then(Direction::normalize)
    }

    /// All receiver numbers (non-blank, trimmed).
    pub fn to_numbers(&self) -> Vec<String> {
        self.to_number
            .as_ref()
            .map(OneOrMany::non_empty)
            .unwrap_or_default()
    }

    /// Message text (`text`, else `text_content`).
    pub fn body(&self) -> Option<String> {
        self.text.clone().or_else(|| self.text_content.clone())
    }

    /// The Dialpad user the message belongs to: `target.id` when the target is a user, else
    /// `sender_id` (the user who sent on behalf of a group target).
    pub fn user_id(&self) -> Option<DialpadId> {
        self.target
            .as_ref()
            .and_then(Target::user_id)
            .or(self.sender_id)
    }
}

/// OAuth token response (`POST /oauth2/token`). `Debug` redacts the secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// Bearer token for the API.
    pub access_token: String,
    /// Usually `bearer`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub token_type: Option<String>,
    /// Lifetime in seconds.
    #[serde(default, deserialize_with = "lenient::millis")]
    pub expires_in: Option<i64>,
    /// Refresh token, when issued.
    #[serde(default, deserialize_with = "lenient::string")]
    pub refresh_token: Option<String>,
    /// OpenID Connect id token, when issued.
    #[serde(default, deserialize_with = "lenient::string")]
    pub id_token: Option<String>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// `GET /api/v2/company` response (id returned as a string by the REST API).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Company {
    /// Company id.
    pub id: DialpadId,
    /// Company name.
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: Option<String>,
    /// Fields not modelled above (`domain`, `country`, `state`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Signing configuration of a webhook. `Debug` redacts the secret.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookSignature {
    /// `HS256`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub algo: Option<String>,
    /// Shared secret (returned in clear by Dialpad).
    #[serde(default, deserialize_with = "lenient::string")]
    pub secret: Option<String>,
    /// `type` (`jwt`).
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub kind: Option<String>,
}

impl fmt::Debug for WebhookSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSignature")
            .field("algo", &self.algo)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("kind", &self.kind)
            .finish()
    }
}

/// A Dialpad webhook (`POST/GET /api/v2/webhooks`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Webhook id.
    pub id: DialpadId,
    /// Destination URL.
    #[serde(default, deserialize_with = "lenient::string")]
    pub hook_url: Option<String>,
    /// Signing configuration (absent for unsigned webhooks).
    #[serde(default)]
    pub signature: Option<WebhookSignature>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A call or SMS event subscription (`/api/v2/subscriptions/{call,sms}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventSubscription {
    /// Subscription id.
    pub id: DialpadId,
    /// Subscribed call states (call subscriptions).
    #[serde(default)]
    pub call_states: Option<Vec<String>>,
    /// `all|inbound|outbound` (SMS subscriptions).
    #[serde(default, deserialize_with = "lenient::string")]
    pub direction: Option<String>,
    /// Delivery enabled.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: Option<bool>,
    /// Delivery-status events enabled (SMS subscriptions).
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub status: Option<bool>,
    /// Target type filter.
    #[serde(default, deserialize_with = "lenient::string")]
    pub target_type: Option<String>,
    /// Target id filter.
    #[serde(default, deserialize_with = "lenient::id")]
    pub target_id: Option<DialpadId>,
    /// The webhook events are delivered to.
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// Fields not modelled above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn events_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dialpad/events")
    }

    fn load(name: &str) -> Value {
        let text = std::fs::read_to_string(events_dir().join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// JSON equality up to number representation (`5` = `5.0` = `"5"`) and absent = `null`.
    fn loose_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
                *s == n.to_string()
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| loose_eq(p, q))
            }
            (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).all(|k| {
                loose_eq(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            }),
            // Blank strings read as `None` and are written back as `null`.
            (Value::String(s), Value::Null) | (Value::Null, Value::String(s)) => s.is_empty(),
            _ => a == b,
        }
    }

    #[test]
    fn every_fixture_parses() {
        let mut calls = 0;
        let mut sms = 0;
        let mut entries: Vec<_> = std::fs::read_dir(events_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| p.file_name().is_some_and(|n| n != "lifecycles.json"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            if v.get("call_id").is_some() {
                let ev: CallEvent = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(Some(ev.call_id), DialpadId::from_json(&v["call_id"]));
                assert_eq!(ev.state, v["state"].as_str().unwrap());
                calls += 1;
            } else {
                let ev: SmsEvent = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(Some(ev.id), DialpadId::from_json(&v["id"]));
                sms += 1;
            }
        }
        assert_eq!(calls, 30);
        assert_eq!(sms, 5);
    }

    #[test]
    fn big_ids_are_exact() {
        for name in ["call_bigid_01_connected.json", "call_bigid_02_hangup.json"] {
            let text = std::fs::read_to_string(events_dir().join(name)).unwrap();
            let ev: CallEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(ev.call_id, DialpadId(4_611_686_018_427_387_913));
            assert_eq!(ev.call_id.to_string(), "4611686018427387913");
            let contact = ev.contact.as_ref().unwrap();
            assert_eq!(contact.id.as_deref(), Some("9007199254740993"));
            // And again after a round trip.
            let back: CallEvent =
                serde_json::from_value(serde_json::to_value(&ev).unwrap()).unwrap();
            assert_eq!(back.call_id, ev.call_id);
            assert_eq!(
                back.contact.unwrap().id.as_deref(),
                Some("9007199254740993")
            );
        }
        let sms: SmsEvent = serde_json::from_value(load("sms_inbound_unicode_mms.json")).unwrap();
        assert_eq!(sms.id, DialpadId(9_007_199_254_740_995));
        assert_eq!(
            sms.body().as_deref(),
            Some("Merci François 🙏 — photo du colis ci-jointe. 你好!")
        );
    }

    #[test]
    fn unknown_fields_round_trip() {
        let mut v = load("call_inbound_05_recording.json");
        v["future_field"] =
            json!({"nested": [1, "two", {"three": 3.5}], "big": 9007199254740993u64});
        let ev: CallEvent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(ev.extra["future_field"], v["future_field"]);
        for key in [
            "talk_time",
            "mos_score",
            "group_id",
            "integrations",
            "call_recording_ids",
            "routing_breadcrumbs",
        ] {
            assert!(ev.extra.contains_key(key), "{key} kept in extra");
        }
        assert_eq!(ev.extra["mos_score"], json!(4.41));
        let out = serde_json::to_value(&ev).unwrap();
        // Same data: ids come back as decimal strings and integers as floats where the field is
        // fractional in general; `{}` objects come back with explicit nulls.
        assert!(loose_eq(&out, &v), "{out:#}");
        assert_eq!(out["call_id"], json!("5744118934454272"));
        assert_eq!(out["mos_score"], json!(4.41));
        assert_eq!(
            out["future_field"], v["future_field"],
            "unknown fields written back exactly"
        );
        let again: CallEvent = serde_json::from_value(out).unwrap();
        assert_eq!(again, ev);

        let v = load("sms_outbound.json");
        let sms: SmsEvent = serde_json::from_value(v.clone()).unwrap();
        assert!(sms.extra.contains_key("admins"));
        let out = serde_json::to_value(&sms).unwrap();
        assert_eq!(out["admins"], v["admins"]);
        assert_eq!(out["id"], json!("6095823680520192"));
        assert_eq!(serde_json::from_value::<SmsEvent>(out).unwrap(), sms);
    }

    #[test]
    fn lenient_field_forms() {
        let ev: CallEvent = serde_json::from_value(json!({
            "call_id": "77",
            "state": "hangup",
            "date_started": "1769688000000",
            "date_ended": 1769688125000.0,
            "duration": "120000.0",
            "is_transferred": "FALSE",
            "was_recorded": "true",
            "recording_url": "https://r.example/1",
            "contact": {"id": "https://contacts.example/c/1"},
            "target": {"id": "", "type": "office"},
            "external_number": "",
        }))
        .unwrap();
        assert_eq!(ev.call_id, DialpadId(77));
        assert_eq!(ev.date_started, Some(1_769_688_000_000));
        assert_eq!(ev.date_ended, Some(1_769_688_125_000));
        assert_eq!(ev.duration, Some(120000.0));
        assert_eq!(ev.is_transferred, Some(false));
        assert_eq!(ev.was_recorded, Some(true));
        assert_eq!(ev.recording_link().as_deref(), Some("https://r.example/1"));
        assert_eq!(
            ev.contact.unwrap().id.as_deref(),
            Some("https://contacts.example/c/1")
        );
        assert_eq!(ev.target.as_ref().unwrap().id, None);
        assert_eq!(ev.external_number, None);

        let ev: CallEvent = serde_json::from_value(json!({
            "call_id": 1, "state": "recording", "recording_url": ["", "https://r.example/2"],
        }))
        .unwrap();
        assert_eq!(ev.recording_link().as_deref(), Some("https://r.example/2"));

        assert!(
            serde_json::from_value::<CallEvent>(json!({"call_id": "abc", "state": "x"})).is_err()
        );
        assert!(serde_json::from_value::<CallEvent>(json!({"call_id": 1})).is_err());

        let sms: SmsEvent = serde_json::from_value(json!({"id": 5, "to_number": "+1555"})).unwrap();
        assert_eq!(sms.to_numbers(), vec!["+1555".to_string()]);
    }

    #[test]
    fn voicemail_helpers() {
        let ev: CallEvent =
            serde_json::from_value(load("call_voicemail_04_voicemail_uploaded.json")).unwrap();
        assert_eq!(
            ev.voicemail_link().as_deref(),
            Some("https://dialpad.com/r/EXAMPLEvoicemail4")
        );
        assert_eq!(ev.voicemail_duration_seconds(), Some(31));
        assert_eq!(
            ev.recording_link().as_deref(),
            Some("https://dialpad.com/r/EXAMPLEvoicemail4")
        );
        let ev: CallEvent = serde_json::from_value(json!({
            "call_id": 1, "state": "voicemail_uploaded", "voicemail_share_link": "https://s.example/vm",
        }))
        .unwrap();
        assert_eq!(ev.voicemail_link().as_deref(), Some("https://s.example/vm"));
        assert_eq!(ev.voicemail_duration_seconds(), None);
    }

    #[test]
    fn management_payloads() {
        let tok: Token = serde_json::from_value(json!({
            "access_token": "at-secret", "token_type": "bearer", "expires_in": 3600,
            "refresh_token": "rt-secret", "scope": "recordings_export"
        }))
        .unwrap();
        assert_eq!(tok.expires_in, Some(3600));
        assert_eq!(tok.extra["scope"], "recordings_export");
        let dbg = format!("{tok:?}");
        assert!(
            !dbg.contains("at-secret") && !dbg.contains("rt-secret"),
            "{dbg}"
        );

        let c: Company = serde_json::from_value(
            json!({"id": "4993497561530368", "name": "Acme", "country": "us"}),
        )
        .unwrap();
        assert_eq!(c.id, DialpadId(4_993_497_561_530_368));
        assert_eq!(c.extra["country"], "us");

        let w: Webhook = serde_json::from_value(json!({
            "id": "193", "hook_url": "https://test.com",
            "signature": {"algo": "HS256", "secret": "puppy", "type": "jwt"}
        }))
        .unwrap();
        assert_eq!(w.id, DialpadId(193));
        let sig = w.signature.as_ref().unwrap();
        assert_eq!(sig.kind.as_deref(), Some("jwt"));
        assert_eq!(sig.secret.as_deref(), Some("puppy"));
        assert!(!format!("{w:?}").contains("puppy"));
        assert_eq!(
            serde_json::to_value(&w).unwrap()["signature"]["type"],
            "jwt"
        );

        let s: EventSubscription = serde_json::from_value(json!({
            "call_states": ["barge", "hangup", "recording"], "enabled": true, "group_calls_only": true,
            "id": "194", "webhook": {"hook_url": "https://test.com", "id": "193",
            "signature": {"algo": "HS256", "secret": "puppy", "type": "jwt"}}
        }))
        .unwrap();
        assert_eq!(s.id, DialpadId(194));
        assert_eq!(s.webhook.unwrap().id, DialpadId(193));
        assert_eq!(s.extra["group_calls_only"], true);
    }
}
