//! JSON kept as text: [`JsonText`], and validation without building a `serde_json::Value`.
//!
//! A webhook payload is verified once and then only stored, read back and normalised. Decoding it
//! into a [`serde_json::Value`] (one allocation per key and string, a `BTreeMap` per object) and
//! serialising it back for the database cost more than verifying its signature, so the pipeline
//! carries the verified text instead: [`JsonText`] is an immutable, cheaply cloned
//! (reference-counted) string that holds one complete JSON document.
//!
//! ```
//! use cti_core::json::JsonText;
//! let text = JsonText::parse(r#"{"call_id": 5744118934454272, "state": "ringing"}"#).unwrap();
//! assert_eq!(text.to_value().unwrap()["call_id"].as_u64(), Some(5744118934454272));
//! assert!(JsonText::parse("{not json").is_err());
//! // Serialises as the JSON it holds, not as a string.
//! assert_eq!(serde_json::to_string(&text).unwrap(), text.as_str());
//! ```

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// One complete JSON document, kept as the text it arrived as.
///
/// Built by [`JsonText::parse`] (validates), [`JsonText::from_value`], by the webhook verifier
/// (which validates while it checks the claims) or, for text a store wrote itself, by
/// [`JsonText::assume_valid`]. Serialises as the JSON it holds; clones share the text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// Validates `text` as one JSON document (strings must be valid Unicode, surrogate escapes
    /// paired, nothing may follow the value).
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        let text = text.into();
        validate(&text)?;
        Ok(Self(Arc::from(text)))
    }

    /// The compact text of `value`.
    pub fn from_value(value: &Value) -> Self {
        Self(Arc::from(value.to_string()))
    }

    /// Wraps text without validating it. For text read back from a store that only ever stores
    /// [`JsonText`]; if it is not JSON after all, [`JsonText::to_value`] and serialisation fail
    /// and the normaliser ignores the event (`not_json`) — nothing panics.
    pub fn assume_valid(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The members of a JSON object named in `names`, decoded, as a new object; the rest of the
    /// document is skipped without being built. A repeated name keeps its last value (as
    /// decoding into a [`Value`] does), so reading those names from the result gives exactly
    /// what reading them from the whole decoded document gives. `None` when the text is not a
    /// JSON object.
    ///
    /// ```
    /// use cti_core::json::JsonText;
    /// let t = JsonText::parse(r#"{"a": 1, "b": {"c": [2]}, "a": 3}"#).unwrap();
    /// assert_eq!(t.select(&["a", "z"]), Some(serde_json::json!({"a": 3})));
    /// assert_eq!(JsonText::parse("[1]").unwrap().select(&["a"]), None);
    /// ```
    pub fn select(&self, names: &[&str]) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_str(&self.0);
        let map = de.deserialize_map(SelectVisitor { names }).ok()?;
        de.end().ok()?;
        Some(Value::Object(map))
    }

    /// Decodes the text into a [`Value`].
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::from_value(&value)
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        Self::from_value(value)
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue =
            serde_json::from_str(&self.0).map_err(<S::Error as serde::ser::Error>::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self(Arc::from(raw.get())))
    }
}

struct SelectVisitor<'n> {
    names: &'n [&'n str],
}

impl<'de> Visitor<'de> for SelectVisitor<'_> {
    type Value = serde_json::Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(name) = map.next_key_seed(NameSeed { names: self.names })? {
            match name {
                Some(name) => {
                    out.insert(name.to_owned(), map.next_value()?);
                }
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// Reads a member name without allocating: the matching entry of `names`, if any.
struct NameSeed<'n> {
    names: &'n [&'n str],
}

impl<'de, 'n> DeserializeSeed<'de> for NameSeed<'n> {
    type Value = Option<&'n str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'n> Visitor<'de> for NameSeed<'n> {
    type Value = Option<&'n str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().copied().find(|n| *n == name))
    }
}

/// Checks that `text` is one JSON document, without building it.
///
/// Stricter than deserializing into `serde::de::IgnoredAny` (which skips string contents):
/// every string is decoded, so invalid escapes and unpaired surrogates are rejected exactly as
/// decoding into a [`Value`] rejects them.
pub fn validate(text: &str) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    Validate.deserialize(&mut de)?;
    de.end()
}

/// A `DeserializeSeed` that walks any JSON value, decoding every string, and keeps nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Validate;

impl<'de> DeserializeSeed<'de> for Validate {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Validate {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Validate)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Validate)?.is_some() {
            map.next_value_seed(Validate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_accepts_json_and_rejects_the_rest() {
        for ok in [
            "{}",
            "[]",
            "1",
            "\"x\"",
            "null",
            r#"{"a":[1,{"b":"\u00e9"}]}"#,
            " {} ",
        ] {
            assert!(JsonText::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "{",
            "{} {}",
            r#"{"a":1,}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\x"}"#,
            "nul",
        ] {
            assert!(JsonText::parse(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<Value>(bad).is_err(),
                "Value agrees on {bad}"
            );
        }
    }

    #[test]
    fn serde_round_trip_keeps_the_text() {
        let t = JsonText::parse(r#"{"b": 1, "a": [true, null]}"#).unwrap();
        let wrapped = json!({"payload": t.clone()});
        assert_eq!(wrapped["payload"], json!({"a": [true, null], "b": 1}));
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, r#"{"b": 1, "a": [true, null]}"#);
        let back: JsonText = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
        // Big integers survive exactly.
        let big = JsonText::parse(r#"{"id": 4611686018427387913}"#).unwrap();
        assert_eq!(
            big.to_value().unwrap()["id"].as_u64(),
            Some(4611686018427387913)
        );
    }

    #[test]
    fn invalid_assumed_text_fails_cleanly() {
        let t = JsonText::assume_valid("{oops");
        assert!(t.to_value().is_err());
        assert!(serde_json::to_string(&t).is_err());
    }
}
