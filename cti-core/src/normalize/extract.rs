//! Payload → [`Normalized`] (spec §3.2 detection and mapping, §3.4 call fields, §3.7 voicemail,
//! §3.8 SMS). STUB: being implemented.

use super::Normalized;
use crate::model::Timestamp;

/// Normalises a verified payload. `received_at` is the inbox arrival time, used when the payload
/// carries no `event_timestamp` (legacy JSON path) and as `ended_at` fallback of `call.ended`.
pub fn normalize(payload: &serde_json::Value, received_at: Timestamp) -> Normalized {
    let _ = (payload, received_at);
    Normalized::ignored("unimplemented")
}
