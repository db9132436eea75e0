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

use crate::json::JsonText;

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

/// [`sanitize`] for a payload kept as text: the same result (as JSON), but a payload that
/// [`needs_sanitizing`] says nothing about is returned as it is (a shared clone, no decoding).
/// Text that is not JSON is returned unchanged.
pub fn sanitize_text(payload: &JsonText) -> JsonText {
    if !needs_sanitizing(payload.as_str()) {
        return payload.clone();
    }
    match payload.to_value() {
        Ok(v) => JsonText::from_value(&sanitize(&v)),
        Err(_) => payload.clone(),
    }
}

/// A conservative scan of JSON text: `false` only when [`sanitize`] would return the payload
/// unchanged — no array longer than [`MAX_ARRAY_LEN`], no binary-data key, no `metadata` key
/// holding an object or array, no transcript-like key holding a string longer than
/// [`MAX_TRANSCRIPT_CHARS`] bytes, and no escape sequence inside a member name (it could spell
/// one of those names). It may say `true` for a payload `sanitize` leaves alone (for example a
/// long array deeper than [`MAX_DEPTH`]); that only costs the slower path.
pub fn needs_sanitizing(text: &str) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Searchers are built once: building one costs about as much as searching a payload.
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    static BINARY: LazyLock<[Finder<'static>; 3]> =
        LazyLock::new(|| BINARY_KEYS.map(|k| Finder::new(k.as_bytes())));
    static METADATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"metadata\""));
    static TRANSCRIPT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"transcript"));

    let b = text.as_bytes();
    // An escape in a member name could spell one of the names below: any `\u` is treated as
    // needing the full pass (other escapes cannot produce letters or `_`).
    if ESCAPE.find(b).is_some() {
        return true;
    }
    // Binary-data names anywhere (as a name or inside a string: either way, the full pass).
    if BINARY.iter().any(|f| f.find(b).is_some()) {
        return true;
    }
    // `"metadata"` as a name holding an object or array.
    for at in METADATA.find_iter(b) {
        if matches!(value_after_name(b, at + 10), Some(b'{' | b'[')) {
            return true;
        }
    }
    // A transcript-like name (any case) holding a string longer than the limit.
    if b.len() > MAX_TRANSCRIPT_CHARS {
        let lower = b.to_ascii_lowercase();
        for at in TRANSCRIPT.find_iter(&lower) {
            let Some(end) = string_end(b, at) else {
                return true;
            };
            if value_after_name(b, end + 1) == Some(b'"') {
                let value_start = skip_ws(b, end + 1).map_or(b.len(), |c| c + 1);
                let value_start = skip_ws(b, value_start).map_or(b.len(), |c| c + 1);
                match string_end(b, value_start) {
                    Some(value_end) if value_end - value_start <= MAX_TRANSCRIPT_CHARS => {}
                    _ => return true,
                }
            }
        }
    }
    // Arrays longer than the limit: from every `[`, count the commas of its own level. A `[`
    // inside a string starts a misaligned scan, which can only report more, never less.
    for at in memchr::memchr_iter(b'[', b) {
        if array_longer_than_limit(b, at + 1) {
            return true;
        }
    }
    false
}

/// Index of the closing quote of the string that `from` is inside (or starts), skipping escapes;
/// `None` if the text ends first.
fn string_end(b: &[u8], mut from: usize) -> Option<usize> {
    while from < b.len() {
        match b[from] {
            b'"' => return Some(from),
            b'\\' => from += 2,
            _ => from += 1,
        }
    }
    None
}

/// Index of the next non-whitespace byte at or after `from`.
fn skip_ws(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len()).find(|&i| !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r'))
}

/// If the string that closed just before `after` is a member name (`:` follows), the first byte
/// of its value.
fn value_after_name(b: &[u8], after: usize) -> Option<u8> {
    let colon = skip_ws(b, after)?;
    if b[colon] != b':' {
        return None;
    }
    skip_ws(b, colon + 1).map(|i| b[i])
}

/// Counts the elements of the array whose contents start at `from`; `true` as soon as there are
/// more than [`MAX_ARRAY_LEN`], or if the text ends first.
fn array_longer_than_limit(b: &[u8], from: usize) -> bool {
    let mut depth = 0usize;
    let mut commas = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'"' => match string_end(b, i + 1) {
                Some(end) => i = end,
                None => return true,
            },
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            b',' if depth == 0 => {
                commas += 1;
                if commas >= MAX_ARRAY_LEN {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
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
        // Anchor on the needle's only `c` (index 5) instead of comparing every window.
        let k = key.as_bytes();
        k.len() >= NEEDLE.len()
            && (5..=k.len() - NEEDLE.len() + 5).any(|i| {
                k[i] | 0x20 == b'c' && k[i - 5..i - 5 + NEEDLE.len()].eq_ignore_ascii_case(NEEDLE)
            })
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
    fn text_scan_flags_what_sanitize_changes() {
        let long = "x".repeat(MAX_TRANSCRIPT_CHARS + 1);
        let dirty = [
            json!({"labels": (0..11).collect::<Vec<_>>()}),
            json!({"a": {"b": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}}),
            json!({"audio_data": 1}),
            json!({"x": {"file_data": null}}),
            json!({"metadata": {}}),
            json!({"metadata": []}),
            json!({"Call_Transcript": long}),
        ];
        for v in dirty {
            assert!(needs_sanitizing(&v.to_string()), "{v}");
        }
        let clean = [
            json!({"labels": (0..10).collect::<Vec<_>>()}),
            json!({"metadata": null, "transcription_text": null}),
            json!({"transcription_text": "x".repeat(MAX_TRANSCRIPT_CHARS)}),
            json!({"note": "metadata: {}, [1, 2]", "metadata": null, "m": "\"metadata\": 1"}),
            json!({"quoted": "say \"hi\", va\\lue \u{e9} [1,2]"}),
        ];
        for v in clean {
            assert!(!needs_sanitizing(&v.to_string()), "{v}");
            assert_eq!(sanitize(&v), v);
        }
        // Conservative: names and arrays inside strings take the full pass (which keeps them).
        let conservative = json!({"note": "audio_data, [1,2,3,4,5,6,7,8,9,10,11]"});
        assert!(needs_sanitizing(&conservative.to_string()));
        assert_eq!(sanitize(&conservative), conservative);
        // An escape inside a member name could spell a sanitised key.
        assert!(needs_sanitizing(r#"{"audio\u005fdata": 1}"#));
        // Every fixture: the text path gives the same JSON as the Value path.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/dialpad/events");
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let payload = JsonText::parse(text).unwrap();
            let v = payload.to_value().unwrap();
            assert_eq!(sanitize_text(&payload).to_value().unwrap(), sanitize(&v));
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("metadata".to_string()),
            Just("audio_data".to_string()),
            Just("transcription_text".to_string()),
            Just("Transcript".to_string()),
            Just("call_id".to_string()),
            "[a-z]{1,3}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0usize..700).prop_map(|n| Value::from("é".repeat(n / 2))),
            prop_oneof![
                Just("[1,2,3,4,5,6,7,8,9,10,11,12]"),
                Just("\"metadata\": {"),
                Just("x\"transcript\": \""),
                Just("]]}},,,,,,,,,,,,"),
                Just("TRANSCRIPT"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(7, 200, 14, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..14).prop_map(Value::from),
                proptest::collection::btree_map(key.clone(), inner, 0..24)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn text_path_equals_value_path(v in arb_json()) {
            let text = JsonText::from_value(&v);
            if !needs_sanitizing(text.as_str()) {
                proptest::prop_assert_eq!(&sanitize(&v), &v);
            }
            proptest::prop_assert_eq!(sanitize_text(&text).to_value().unwrap(), sanitize(&v));
        }
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
