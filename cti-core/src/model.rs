//! Domain records shared by every adapter: tenants, calls, voicemails, messages, mappings, audit.
//!
//! Pure data with serde. Dialpad identifiers are 64-bit integers that JavaScript clients cannot
//! represent exactly, so [`DialpadId`] always serialises as a decimal JSON string and accepts a
//! JSON number or a decimal string on input (never through `f64`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A point in time, always UTC.
pub type Timestamp = DateTime<Utc>;

/// Formats a timestamp as RFC 3339 UTC with millisecond precision and `Z` (spec §0.3).
pub fn format_ts(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde helpers that write timestamps as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub mod ts_millis {
    use super::*;

    /// Serialise a timestamp with millisecond precision.
    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ts(ts))
    }

    /// Deserialise any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// Same for `Option<Timestamp>`.
    pub mod option {
        use super::*;

        /// Serialise an optional timestamp (`null` when absent).
        pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match ts {
                Some(t) => s.serialize_str(&format_ts(t)),
                None => s.serialize_none(),
            }
        }

        /// Deserialise an optional RFC 3339 timestamp.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            let s: Option<String> = Option::deserialize(d)?;
            s.map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

/// Identifier of a tenant ("app").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppId(pub Uuid);

impl AppId {
    /// A fresh random (v4) app id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for AppId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for AppId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A Dialpad 64-bit identifier (call, user, message, webhook, company…).
///
/// Serialises as a decimal string; deserialises from a JSON integer or a decimal string.
///
/// ```
/// use cti_core::model::DialpadId;
/// let id: DialpadId = serde_json::from_str("4611686018427387913").unwrap();
/// assert_eq!(serde_json::to_string(&id).unwrap(), "\"4611686018427387913\"");
/// let same: DialpadId = serde_json::from_str("\"4611686018427387913\"").unwrap();
/// assert_eq!(id, same);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialpadId(pub u64);

impl DialpadId {
    /// The id as a signed 64-bit integer for `BIGINT` columns (ids above `i64::MAX` are rejected
    /// at parse time, see [`DialpadId::parse`]).
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// Parses a strictly canonical positive decimal (`"007"`, `"+7"`, `"1.0"`, `"0"` rejected),
    /// at most `i64::MAX` so it fits a PostgreSQL `BIGINT`.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if s.starts_with('0') {
            return None;
        }
        let v: u64 = s.parse().ok()?;
        if v == 0 || v > i64::MAX as u64 {
            return None;
        }
        Some(Self(v))
    }

    /// Converts a JSON value (integer or decimal string) into an id, if it is one.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::Number(n) => {
                let u = n.as_u64()?;
                (u > 0 && u <= i64::MAX as u64).then_some(Self(u))
            }
            serde_json::Value::String(s) => Self::parse(s.trim()),
            _ => None,
        }
    }
}

impl fmt::Display for DialpadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for DialpadId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DialpadId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DialpadId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive 64-bit integer or its decimal string")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DialpadId, E> {
                if v == 0 || v > i64::MAX as u64 {
                    return Err(E::custom("dialpad id out of range"));
                }
                Ok(DialpadId(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DialpadId, E> {
                if v <= 0 {
                    return Err(E::custom("dialpad id must be positive"));
                }
                Ok(DialpadId(v as u64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DialpadId, E> {
                DialpadId::parse(v.trim()).ok_or_else(|| E::custom("invalid dialpad id string"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Status of a call record (spec §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    /// A target is being rung (inbound) or the call is being placed (outbound).
    Ringing,
    /// Answered and in progress.
    Active,
    /// Hung up after being answered (or ended without a more specific outcome).
    Ended,
    /// Not answered.
    Missed,
    /// Blocked / rejected.
    Rejected,
    /// The caller reached voicemail.
    Voicemail,
}

impl CallStatus {
    /// All statuses, in table order.
    pub const ALL: [CallStatus; 6] = [
        CallStatus::Ringing,
        CallStatus::Active,
        CallStatus::Ended,
        CallStatus::Missed,
        CallStatus::Rejected,
        CallStatus::Voicemail,
    ];

    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ringing => "ringing",
            CallStatus::Active => "active",
            CallStatus::Ended => "ended",
            CallStatus::Missed => "missed",
            CallStatus::Rejected => "rejected",
            CallStatus::Voicemail => "voicemail",
        }
    }

    /// Parses a wire name case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// `true` for `ringing` and `active` (the "active calls" view).
    pub fn is_live(self) -> bool {
        matches!(self, CallStatus::Ringing | CallStatus::Active)
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Direction of a call or message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From an external party to the tenant.
    Inbound,
    /// From the tenant to an external party.
    Outbound,
}

impl Direction {
    /// Normalises `inbound|incoming|in` / `outbound|outgoing|out` (trimmed, any case).
    pub fn normalize(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inbound" | "incoming" | "in" => Some(Direction::Inbound),
            "outbound" | "outgoing" | "out" => Some(Direction::Outbound),
            _ => None,
        }
    }

    /// Strict filter parse used by list endpoints (`inbound`/`outbound`, any case).
    pub fn parse_filter(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }

    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A tenant of the CTI service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Tenant id.
    pub id: AppId,
    /// Display name (trimmed).
    pub name: String,
    /// Inactive apps cannot authenticate and receive no webhooks.
    pub is_active: bool,
    /// `HINT(key)` of the current plaintext key, `None` when the app has no key.
    pub api_key_hint: Option<String>,
    /// When the current key was issued (creation counts); `None` when the app has no key.
    pub api_key_issued_at: Option<Timestamp>,
    /// `true` when a key (new-style lookup hash or legacy bcrypt hash) is active.
    pub has_key: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change of name/state/key.
    pub updated_at: Timestamp,
}

/// Action recorded in the API key audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    /// First key of an app, or a key issued after a revocation.
    Created,
    /// A key replaced an existing one.
    Rotated,
    /// The key was removed.
    Revoked,
}

impl AuditAction {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Created => "created",
            AuditAction::Rotated => "rotated",
            AuditAction::Revoked => "revoked",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Self::Created),
            "rotated" => Some(Self::Rotated),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// Who did a key operation and from where (additive audit fields, spec §5.5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    /// Actor label, e.g. `internal` or `cli`.
    pub actor: Option<String>,
    /// Client address of the request.
    pub request_ip: Option<String>,
    /// User agent of the request.
    pub user_agent: Option<String>,
}

/// One row of the API key audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Row id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// What happened.
    pub action: AuditAction,
    /// Hint of the key that stopped being current.
    pub old_key_hint: Option<String>,
    /// Hint of the key that became current.
    pub new_key_hint: Option<String>,
    /// Who/where (not returned by the HTTP API unless asked).
    #[serde(skip)]
    pub context: AuditContext,
    /// When.
    #[serde(with = "ts_millis")]
    pub created_at: Timestamp,
}

/// A call record (one per `(app_id, dialpad_call_id)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Internal id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Dialpad `call_id`.
    pub dialpad_call_id: DialpadId,
    /// Direction, when known.
    pub direction: Option<Direction>,
    /// Caller number.
    pub from_number: Option<String>,
    /// Callee number.
    pub to_number: Option<String>,
    /// Current status (derived from [`Call::merge_log`]).
    pub status: CallStatus,
    /// Dialpad user the call targets.
    pub dialpad_user_id: Option<DialpadId>,
    /// Dialpad `target.type`.
    pub target_type: Option<String>,
    /// Dialpad `target.id`.
    pub target_id: Option<DialpadId>,
    /// Start of the call.
    pub started_at: Option<Timestamp>,
    /// When it was answered.
    pub answered_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Duration in whole seconds.
    pub duration_seconds: Option<i64>,
    /// Recording link.
    pub recording_url: Option<String>,
    /// Whether the caller reached voicemail.
    pub is_voicemail: bool,
    /// Voicemail recording link.
    pub voicemail_audio_url: Option<String>,
    /// Call or voicemail transcript.
    pub transcript: Option<String>,
    /// On hold right now (the newest `hold` is newer than the newest `connected`).
    pub held: bool,
    /// Event times behind the derived fields; makes the record independent of arrival order
    /// (see [`crate::normalize::CallMerge`]). Stored as JSON.
    pub merge_log: MergeLog,
    /// `event_timestamp` (ms) of the newest event merged into the snapshot fields.
    pub last_event_ms: i64,
    /// Sanitised copy of the newest payload, as JSON text.
    pub raw_payload: Option<crate::json::JsonText>,
    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Event times (epoch ms) behind a call's derived fields.
///
/// * `first`: earliest time each status was reported — the status is the §3.5 table walked in
///   that order;
/// * `fields`: time of the value currently held by each snapshot field (per-field
///   last-writer-wins);
/// * `hold` / `connected`: newest `hold` and `connected` events, for [`Call::held`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeLog {
    /// Earliest report of each status.
    #[serde(default)]
    pub first: std::collections::BTreeMap<CallStatus, i64>,
    /// Time of each field's current value.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, i64>,
    /// Newest `hold`.
    #[serde(default)]
    pub hold: Option<i64>,
    /// Newest `connected`.
    #[serde(default)]
    pub connected: Option<i64>,
}

/// A voicemail left for a Dialpad user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Voicemail {
    /// Internal id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Call it belongs to, when known (unique per app).
    pub dialpad_call_id: Option<DialpadId>,
    /// Dialpad user whose voicemail box received it.
    pub dialpad_user_id: Option<DialpadId>,
    /// Caller.
    pub from_number: Option<String>,
    /// Callee.
    pub to_number: Option<String>,
    /// Recording link.
    pub recording_url: Option<String>,
    /// Transcript.
    pub transcript: Option<String>,
    /// Length in seconds.
    pub duration_seconds: Option<i64>,
    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// An SMS/MMS message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Internal id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Dialpad message id (unique per app).
    pub dialpad_message_id: DialpadId,
    /// Direction.
    pub direction: Option<Direction>,
    /// Sender.
    pub from_number: Option<String>,
    /// First recipient.
    pub to_number: Option<String>,
    /// All recipients.
    pub to_numbers: Vec<String>,
    /// Text (present only with Dialpad's message-content scope).
    pub text: Option<String>,
    /// Dialpad user the message belongs to.
    pub dialpad_user_id: Option<DialpadId>,
    /// When it was sent/received.
    pub sent_at: Option<Timestamp>,
    /// Delivery status (`pending`, `success`, `failed`, …).
    pub message_status: Option<String>,
    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Maps a Dialpad user to a CRM user of the same tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserMapping {
    /// Row id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Dialpad user.
    pub dialpad_user_id: DialpadId,
    /// CRM user.
    pub crm_user_id: String,
    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Dialpad environment of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DialpadEnvironment {
    /// `https://sandbox.dialpad.com`.
    Sandbox,
    /// `https://dialpad.com`.
    Production,
}

impl DialpadEnvironment {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Production => "production",
        }
    }
}

/// OAuth connection of a tenant to its Dialpad company. Tokens are stored encrypted
/// (see [`crate::secrets`]); this struct carries the ciphertexts.
#[derive(Clone, Debug, PartialEq)]
pub struct DialpadConnection {
    /// Row id.
    pub id: Uuid,
    /// Tenant (unique).
    pub app_id: AppId,
    /// Dialpad company id (unique across tenants when set).
    pub dialpad_org_id: Option<DialpadId>,
    /// Encrypted access token.
    pub access_token_enc: String,
    /// Encrypted refresh token.
    pub refresh_token_enc: String,
    /// Access token expiry.
    pub token_expires_at: Timestamp,
    /// Environment.
    pub environment: DialpadEnvironment,
    /// `active` or `reauth_required`.
    pub status: String,
    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// A Dialpad webhook registered for a tenant. The secret is stored encrypted.
#[derive(Clone, Debug, PartialEq)]
pub struct DialpadWebhook {
    /// Row id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Dialpad webhook id (unique per app).
    pub webhook_id: DialpadId,
    /// Destination URL.
    pub hook_url: String,
    /// Encrypted signing secret, `None` for unsigned webhooks.
    pub secret_enc: Option<String>,
    /// `HS256`.
    pub algo: Option<String>,
    /// `jwt`.
    pub signature_type: Option<String>,
    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Kind of a Dialpad event subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionKind {
    /// Call events.
    Call,
    /// SMS events.
    Sms,
}

impl SubscriptionKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Sms => "sms",
        }
    }
}

/// A Dialpad event subscription created through the management API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DialpadSubscription {
    /// Row id.
    pub id: Uuid,
    /// Tenant.
    pub app_id: AppId,
    /// Webhook the subscription delivers to.
    pub webhook_id: DialpadId,
    /// Call or SMS.
    pub kind: SubscriptionKind,
    /// Dialpad subscription id.
    pub dialpad_subscription_id: DialpadId,
    /// Request/response configuration as sent to Dialpad.
    pub config: serde_json::Value,
    /// Creation.
    pub created_at: Timestamp,
}

/// An offset/limit page request, already clamped by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Maximum items.
    pub limit: u32,
    /// Items to skip.
    pub offset: u64,
}

impl PageRequest {
    /// A page.
    pub fn new(limit: u32, offset: u64) -> Self {
        Self { limit, offset }
    }
}

/// One page of results plus the total number of matches.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Total number of matching rows.
    pub total: u64,
}

impl<T> Page<T> {
    /// `offset + limit < total`.
    pub fn has_more(&self, req: PageRequest) -> bool {
        req.offset.saturating_add(req.limit as u64) < self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialpad_id_parse_rules() {
        assert_eq!(DialpadId::parse("777"), Some(DialpadId(777)));
        assert_eq!(DialpadId::parse("007"), None);
        assert_eq!(DialpadId::parse("0"), None);
        assert_eq!(DialpadId::parse("12a"), None);
        assert_eq!(DialpadId::parse("-5"), None);
        assert_eq!(
            DialpadId::parse("9223372036854775807"),
            Some(DialpadId(i64::MAX as u64))
        );
        assert_eq!(DialpadId::parse("9223372036854775808"), None);
    }

    #[test]
    fn dialpad_id_json_roundtrip_exact_above_2_pow_53() {
        let id: DialpadId = serde_json::from_str("9007199254740993").unwrap();
        assert_eq!(id.0, 9_007_199_254_740_993);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"9007199254740993\"");
        assert!(serde_json::from_str::<DialpadId>("12.5").is_err());
        assert!(serde_json::from_str::<DialpadId>("-1").is_err());
    }

    #[test]
    fn direction_normalization() {
        assert_eq!(Direction::normalize(" Incoming "), Some(Direction::Inbound));
        assert_eq!(Direction::normalize("OUT"), Some(Direction::Outbound));
        assert_eq!(Direction::normalize("sideways"), None);
        assert_eq!(Direction::parse_filter("in"), None);
    }

    #[test]
    fn status_parse_is_case_insensitive() {
        assert_eq!(CallStatus::parse("ENDED"), Some(CallStatus::Ended));
        assert_eq!(CallStatus::parse("bogus"), None);
    }

    #[test]
    fn page_has_more() {
        let p = Page::<u8> {
            items: vec![],
            total: 3,
        };
        assert!(p.has_more(PageRequest::new(2, 0)));
        assert!(!p.has_more(PageRequest::new(2, 2)));
    }
}
