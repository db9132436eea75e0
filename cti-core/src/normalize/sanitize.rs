//! Payload sanitisation for `calls.raw_payload` (spec §3.9, ORIG `sanitizeCallPayload`).
//!
//! The copy is walked recursively from depth 0 (the payload itself) to depth 5; deeper values
//! are kept as they are (not removed). At every processed level:
//!
//! * an array longer than 10 keeps its first 10 elements followed by
//!   `{"_truncated":true,"original_length":N}`;
//! * a key whose lower-cased name contains `transcript` and holds a string longer than 500
//!   characters keeps the first 500 characters followed by `... [truncated]`;
//! * keys `binary_data`, `audio_data`, `file_data` become `"[removed - binary data]"`;
//! * key `metadata` holding an object (or array) with more than 20 keys becomes
//!   `{"_truncated":true,"sample_keys":[first 5 keys],"total_keys":N}`.
//!
//! Unlike the original, `metadata: null` is simply kept (the original threw on it, making the
//! event a poison event). Sanitisation never fails.
//!
//! ```
//! use cti_core::normalize::sanitize::sanitize;
//! use serde_json::json;
//! let out = sanitize(&json!({"audio_data": "AAAA", "metadata": null, "call_id": 1}));
//! assert_eq!(out, json!({"audio_data": "[removed - binary data]", "metadata": null, "call_id": 1}));
//! ```

use serde_json::{Value, json};

/// Deepest level whose contents are sanitised (the payload itself is level 0).
pub const MAX_DEPTH: usize = 5;
/// Longest array kept whole.
pub const MAX_ARRAY_LEN: usize = 10;
/// Longest transcript (in characters) kept whole.
pub const MAX_TRANSCRIPT_CHARS: usize = 500;
/// Largest `metadata` object (in keys) kept whole.
pub const MAX_METADATA_KEYS: usize = 20;
/// Number of sample keys kept from an oversized `metadata` object.
pub const METADATA_SAMPLE_KEYS: usize = 5;

const BINARY_KEYS: [&str; 3] = ["binary_data", "audio_data", "file_data"];

/// Returns a sanitised copy of `payload`; never fails.
pub fn sanitize(payload: &serde_json::Value) -> serde_json::Value {
    let mut out = payload.clone();
    walk(&mut out, 0);
    out
}

fn walk(v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Array(items) => {
            let original_length = items.len();
            items.truncate(MAX_ARRAY_LEN);
            for item in items.iter_mut() {
                walk(item, depth + 1);
            }
            if original_length > MAX_ARRAY_LEN {
                items.push(json!({"_truncated": true, "original_length": original_length}));
            }
        }
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if value.is_string() && mentions_transcript(key) {
                    if let Value::String(s) = value {
                        truncate_transcript(s);
                    }
                } else if BINARY_KEYS.contains(&key.as_str()) {
                    *value = Value::String("[removed - binary data]".into());
                } else if key == "metadata" && (value.is_object() || value.is_array()) {
                    let keys = container_keys(value);
                    if keys.len() > MAX_METADATA_KEYS {
                        let total = keys.len();
                        let sample: Vec<String> =
                            keys.into_iter().take(METADATA_SAMPLE_KEYS).collect();
                        *value =
                            json!({"_truncated": true, "sample_keys": sample, "total_keys": total});
                    } else {
                        walk(value, depth + 1);
                    }
                } else if value.is_object() || value.is_array() {
                    walk(value, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// `key.to_lowercase().contains("transcript")`, without allocating for ASCII keys (no
/// non-ASCII character lower-cases to an ASCII letter of "transcript", so the ASCII
/// comparison gives the same answer).
fn mentions_transcript(key: &str) -> bool {
    const NEEDLE: &[u8] = b"transcript";
    if key.is_ascii() {
        key.as_bytes()
            .windows(NEEDLE.len())
            .any(|w| w.eq_ignore_ascii_case(NEEDLE))
    } else {
        key.to_lowercase().contains("transcript")
    }
}

/// Keys as JavaScript's `Object.keys` gives them (array indices as strings).
fn container_keys(v: &Value) -> Vec<String> {
    match v {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => (0..a.len()).map(|i| i.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn truncate_transcript(s: &mut String) {
    if let Some((cut, _)) = s.char_indices().nth(MAX_TRANSCRIPT_CHARS) {
        s.truncate(cut);
        s.push_str("... [truncated]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(depth: usize, leaf: Value) -> Value {
        (0..depth).fold(leaf, |acc, _| json!({ "n": acc }))
    }

    #[test]
    fn scalars_and_null_pass_through() {
        for v in [json!(null), json!(1), json!("x"), json!(true)] {
            assert_eq!(sanitize(&v), v);
        }
        let v = json!({"metadata": null, "call": {"metadata": null}});
        assert_eq!(sanitize(&v), v);
    }

    #[test]
    fn long_arrays_are_cut_with_a_marker() {
        let v =
            json!({"labels": (0..12).collect::<Vec<_>>(), "short": (0..10).collect::<Vec<_>>()});
        let out = sanitize(&v);
        let labels = out["labels"].as_array().unwrap();
        assert_eq!(labels.len(), 11);
        assert_eq!(labels[9], json!(9));
        assert_eq!(
            labels[10],
            json!({"_truncated": true, "original_length": 12})
        );
        assert_eq!(out["short"], v["short"]);
        // A top-level array is processed too.
        let out = sanitize(&json!((0..11).collect::<Vec<_>>()));
        assert_eq!(out.as_array().unwrap().len(), 11);
        assert_eq!(out[10]["original_length"], 11);
    }

    #[test]
    fn transcripts_are_cut_at_500_chars() {
        let long: String = "é".repeat(600);
        let exact: String = "a".repeat(500);
        let v = json!({
            "transcription_text": long,
            "Voicemail_Transcript": exact,
            "transcript_meta": {"transcript": "ü".repeat(501)},
            "transcript_count": 3,
            "other": "b".repeat(600),
        });
        let out = sanitize(&v);
        let cut = out["transcription_text"].as_str().unwrap();
        assert_eq!(cut, format!("{}... [truncated]", "é".repeat(500)));
        assert_eq!(out["Voicemail_Transcript"], json!(exact));
        assert_eq!(
            out["transcript_meta"]["transcript"],
            json!(format!("{}... [truncated]", "ü".repeat(500)))
        );
        assert_eq!(out["transcript_count"], json!(3));
        assert_eq!(out["other"], v["other"]);
    }

    #[test]
    fn binary_fields_are_removed() {
        let v = json!({"audio_data": "AAAA", "data": {"file_data": [1, 2], "binary_data": null}, "audio": "keep"});
        let out = sanitize(&v);
        assert_eq!(out["audio_data"], "[removed - binary data]");
        assert_eq!(out["data"]["file_data"], "[removed - binary data]");
        assert_eq!(out["data"]["binary_data"], "[removed - binary data]");
        assert_eq!(out["audio"], "keep");
    }

    #[test]
    fn large_metadata_is_sampled() {
        let big: serde_json::Map<String, Value> =
            (0..25).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let small: serde_json::Map<String, Value> = (0..20)
            .map(|i| (format!("k{i:02}"), json!({"audio_data": "x"})))
            .collect();
        let v = json!({"metadata": big, "nested": {"metadata": small}});
        let out = sanitize(&v);
        assert_eq!(
            out["metadata"],
            json!({"_truncated": true, "sample_keys": ["k00", "k01", "k02", "k03", "k04"], "total_keys": 25})
        );
        // 20 keys is kept, and sanitised inside.
        assert_eq!(out["nested"]["metadata"].as_object().unwrap().len(), 20);
        assert_eq!(
            out["nested"]["metadata"]["k00"]["audio_data"],
            "[removed - binary data]"
        );
        // An oversized array under `metadata` is sampled by index like `Object.keys`.
        let out = sanitize(&json!({"metadata": (0..21).collect::<Vec<_>>()}));
        assert_eq!(
            out["metadata"]["sample_keys"],
            json!(["0", "1", "2", "3", "4"])
        );
        assert_eq!(out["metadata"]["total_keys"], 21);
        // Non-container metadata is left alone.
        assert_eq!(
            sanitize(&json!({"metadata": "text"})),
            json!({"metadata": "text"})
        );
    }

    #[test]
    fn depth_limit_leaves_deeper_levels_untouched() {
        // The object at depth 5 is still processed …
        let v = nest(5, json!({"audio_data": "x", "deeper": {"audio_data": "y"}}));
        let mut out = &sanitize(&v);
        for _ in 0..5 {
            out = &out["n"];
        }
        assert_eq!(out["audio_data"], "[removed - binary data]");
        // … its children (depth 6) are not.
        assert_eq!(out["deeper"]["audio_data"], "y");

        // Arrays count as a level: an array at depth 5 is cut, its elements are not processed.
        let elems: Vec<Value> = (0..12).map(|_| json!({"audio_data": "z"})).collect();
        let v = nest(4, json!({"a": elems.clone()}));
        let mut out = &sanitize(&v);
        for _ in 0..4 {
            out = &out["n"];
        }
        let arr = out["a"].as_array().unwrap();
        assert_eq!(arr.len(), 11);
        assert_eq!(arr[0]["audio_data"], "z");
        // One level deeper the array itself is beyond the limit and kept whole.
        let v = nest(5, json!({"a": elems}));
        let mut out = &sanitize(&v);
        for _ in 0..5 {
            out = &out["n"];
        }
        assert_eq!(out["a"].as_array().unwrap().len(), 12);
    }

    #[test]
    fn input_is_not_modified() {
        let v = json!({"audio_data": "AAAA"});
        let _ = sanitize(&v);
        assert_eq!(v["audio_data"], "AAAA");
    }
}
