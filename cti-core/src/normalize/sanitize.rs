//! Payload sanitisation for `calls.raw_payload` (spec §3.9). STUB: being implemented.

/// Returns a sanitised copy of `payload`; never fails.
pub fn sanitize(payload: &serde_json::Value) -> serde_json::Value {
    payload.clone()
}
