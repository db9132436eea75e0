//! Webhook authentication (spec §2.2, §2.7).
//!
//! Dialpad signs every event of a webhook created with a secret as a compact HS256 JWT
//! (`Content-Type: application/jwt`) whose payload is the event object. The CRM's test tooling
//! uses a second scheme: a JSON body with the base64 HMAC-SHA256 of the body in a header.
//! [`WebhookVerifier`] checks both, against one or more active secrets (several may be active
//! while a secret is being rotated), comparing MACs in constant time.
//!
//! Rejections carry a short machine-readable reason for logs (`"bad_alg"`,
//! `"signature_mismatch"`, `"expired"`, …); callers answer with
//! [`VerifyError::status`] and [`VerifyError::public_message`] only. Reasons never contain a
//! secret or the token.
//!
//! ```
//! use cti_core::verify::{WebhookVerifier, sign_jwt_hs256};
//! let token = sign_jwt_hs256(&serde_json::json!({"call_id": 5744118934454272u64}), b"s3cret");
//! let verifier = WebhookVerifier::default();
//! let payload = verifier.verify_jwt(token.as_bytes(), &[b"s3cret"], chrono::Utc::now()).unwrap();
//! assert_eq!(payload["call_id"].as_u64(), Some(5744118934454272));
//! ```

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::digest::{hmac_sha256, hmac_sha256_matches};
use crate::json::{JsonText, Validate};
use crate::model::Timestamp;

/// Length of an HMAC-SHA256 tag in bytes.
const TAG_LEN: usize = 32;

/// Longest signature segment worth decoding (a canonical 32-byte tag is 43 or 44 characters).
const MAX_SIGNATURE_CHARS: usize = 64;

/// The JOSE header written by [`sign_jwt_hs256`]: `{"alg":"HS256","typ":"JWT"}`.
const JWT_HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// [`JWT_HEADER_JSON`] in base64url: the header of almost every token, accepted without decoding.
const JWT_HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Verification settings.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// Maximum age of a JWT `iat` claim; `None` (or zero) disables the check. Default 24 h.
    pub jwt_max_age: Option<Duration>,
    /// Clock skew allowed on `exp` and future `iat`. Default 60 s.
    pub leeway: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            jwt_max_age: Some(Duration::from_secs(86_400)),
            leeway: Duration::from_secs(60),
        }
    }
}

/// Why a webhook was rejected (for logs; callers only see [`VerifyError::public_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// JWT path: any signature / header / claim failure → `401 Invalid JWT signature`.
    #[error("invalid JWT: {0}")]
    InvalidJwt(String),
    /// JWT path: correctly signed but the payload is not a JSON object → `400 Invalid JWT format`.
    #[error("invalid JWT payload: {0}")]
    InvalidJwtFormat(String),
    /// HMAC header path failure → `401 Invalid webhook signature`.
    #[error("invalid HMAC signature: {0}")]
    InvalidSignature(String),
}

impl VerifyError {
    /// HTTP status for this rejection.
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::InvalidJwtFormat(_) => 400,
            _ => 401,
        }
    }

    /// The exact `error` text of the spec.
    pub fn public_message(&self) -> &'static str {
        match self {
            VerifyError::InvalidJwt(_) => "Invalid JWT signature",
            VerifyError::InvalidJwtFormat(_) => "Invalid JWT format",
            VerifyError::InvalidSignature(_) => "Invalid webhook signature",
        }
    }

    /// The machine-readable reason for logs (`"bad_alg"`, `"expired"`, …).
    pub fn reason(&self) -> &str {
        match self {
            VerifyError::InvalidJwt(r)
            | VerifyError::InvalidJwtFormat(r)
            | VerifyError::InvalidSignature(r) => r,
        }
    }
}

fn jwt_err(reason: &str) -> VerifyError {
    VerifyError::InvalidJwt(reason.to_owned())
}

fn format_err(reason: &str) -> VerifyError {
    VerifyError::InvalidJwtFormat(reason.to_owned())
}

fn sig_err(reason: &str) -> VerifyError {
    VerifyError::InvalidSignature(reason.to_owned())
}

/// Verifies Dialpad webhooks against one or more active secrets.
#[derive(Clone, Debug, Default)]
pub struct WebhookVerifier {
    config: VerifyConfig,
}

impl WebhookVerifier {
    /// A verifier with these settings.
    pub fn new(config: VerifyConfig) -> Self {
        Self { config }
    }

    /// The settings of this verifier.
    pub fn config(&self) -> &VerifyConfig {
        &self.config
    }

    /// Verifies a compact HS256 JWT and returns its payload (a JSON object).
    ///
    /// `token` is the raw request body; surrounding ASCII whitespace is ignored. The token is
    /// accepted if its HMAC-SHA256 matches under **any** of `secrets` (empty secrets are ignored).
    ///
    /// Checks, in order: three dot-separated segments; a header that is canonical base64url of a
    /// JSON object with `"alg":"HS256"` and no `crit`; a signature segment that is canonical
    /// unpadded base64url of 32 bytes; the MAC (constant time); then the payload must be canonical
    /// base64url of a JSON object (else [`VerifyError::InvalidJwtFormat`]); finally the optional
    /// `exp` and `iat` claims against `now` (see [`VerifyConfig`]).
    pub fn verify_jwt(
        &self,
        token: &[u8],
        secrets: &[&[u8]],
        now: Timestamp,
    ) -> Result<serde_json::Value, VerifyError> {
        let text = self.verify_jwt_text(token, secrets, now)?;
        text.to_value().map_err(|_| format_err("payload_not_json"))
    }

    /// [`WebhookVerifier::verify_jwt`] without decoding the payload into a `Value`: returns the
    /// verified payload as the JSON text that was signed. The checks and rejections are the same;
    /// the payload is validated (and its `exp`/`iat` read) in one pass over the text.
    pub fn verify_jwt_text(
        &self,
        token: &[u8],
        secrets: &[&[u8]],
        now: Timestamp,
    ) -> Result<JsonText, VerifyError> {
        let token = token.trim_ascii();
        if token.is_empty() {
            return Err(jwt_err("empty_token"));
        }
        // The dots, found with a vectorised search (a byte loop over a 2 kB token shows up).
        let mut dots = memchr::memchr_iter(b'.', token);
        let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
            return Err(jwt_err("not_three_parts"));
        };
        let (header, payload, signature) = (
            &token[..first],
            &token[first + 1..second],
            &token[second + 1..],
        );

        check_header(header)?;

        if signature.len() > MAX_SIGNATURE_CHARS {
            return Err(jwt_err("bad_signature_length"));
        }
        let mut tag = [0u8; TAG_LEN + 2];
        let tag_len = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut tag)
            .map_err(|e| match e {
                base64::DecodeSliceError::OutputSliceTooSmall => jwt_err("bad_signature_length"),
                base64::DecodeSliceError::DecodeError(_) => {
                    jwt_err("signature_not_canonical_base64")
                }
            })?;
        if tag_len != TAG_LEN {
            return Err(jwt_err("bad_signature_length"));
        }

        // `<part0>.<part1>` exactly as sent.
        let signing_input = &token[..header.len() + 1 + payload.len()];
        if !any_secret_matches(secrets, signing_input, &tag[..TAG_LEN])? {
            return Err(jwt_err("signature_mismatch"));
        }

        // Signed by a holder of the secret: payload problems are format errors (HTTP 400).
        // Vectorised (the payload is most of the token); rejects padding, characters outside
        // the URL-safe alphabet and non-zero trailing bits like the signature's decoder.
        let payload = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(payload)
            .map_err(|_| format_err("payload_not_canonical_base64"))?;
        let payload = String::from_utf8(payload).map_err(|_| format_err("payload_not_json"))?;
        let claims = read_claims(&payload).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format_err("payload_not_object"),
            _ => format_err("payload_not_json"),
        })?;

        self.check_claims(claims.exp.as_ref(), claims.iat.as_ref(), now)?;
        Ok(JsonText::assume_valid(payload))
    }

    /// Verifies the base64 HMAC-SHA256 of `body` given in the signature header.
    ///
    /// `signature` is the header value (`x-dialpad-signature` or `x-signature`): the standard,
    /// padded base64 of HMAC-SHA256(secret, exact body bytes). Accepted if it matches under
    /// **any** of `secrets` (empty secrets are ignored); compared in constant time.
    pub fn verify_hmac(
        &self,
        body: &[u8],
        signature: Option<&str>,
        secrets: &[&[u8]],
    ) -> Result<(), VerifyError> {
        let signature = signature.map(str::trim).unwrap_or_default();
        if signature.is_empty() {
            return Err(sig_err("missing_header"));
        }
        if secrets.iter().all(|s| s.is_empty()) {
            return Err(sig_err("missing_secret"));
        }
        if body.is_empty() {
            return Err(sig_err("empty_body"));
        }
        if signature.len() > MAX_SIGNATURE_CHARS {
            return Err(sig_err("bad_signature_length"));
        }
        let tag = STANDARD
            .decode(signature)
            .map_err(|_| sig_err("not_canonical_base64"))?;
        if tag.len() != TAG_LEN {
            return Err(sig_err("bad_signature_length"));
        }
        let mut matched = false;
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            // No early exit: every active secret costs the same.
            matched |= hmac_sha256_matches(secret, body, &tag);
        }
        if matched {
            Ok(())
        } else {
            Err(sig_err("signature_mismatch"))
        }
    }

    fn check_claims(
        &self,
        exp: Option<&Value>,
        iat: Option<&Value>,
        now: Timestamp,
    ) -> Result<(), VerifyError> {
        let now_ms = i128::from(now.timestamp_millis());
        let leeway_ms = duration_ms(self.config.leeway);

        if let Some(exp) = exp {
            let exp_ms = numeric_date_ms(exp).ok_or_else(|| jwt_err("exp_not_numeric"))?;
            if exp_ms <= now_ms - leeway_ms {
                return Err(jwt_err("expired"));
            }
        }
        if let Some(iat) = iat {
            let iat_ms = numeric_date_ms(iat).ok_or_else(|| jwt_err("iat_not_numeric"))?;
            if iat_ms > now_ms + leeway_ms {
                return Err(jwt_err("iat_in_future"));
            }
            if let Some(max_age) = self.config.jwt_max_age.filter(|d| !d.is_zero())
                && iat_ms < now_ms - duration_ms(max_age)
            {
                return Err(jwt_err("iat_too_old"));
            }
        }
        Ok(())
    }
}

/// The registered claims the verifier checks; every other member is only validated.
#[derive(Default)]
struct Claims {
    exp: Option<Value>,
    iat: Option<Value>,
}

/// Validates `payload` as one JSON object (every string decoded, as [`JsonText::parse`] does)
/// and returns its `exp` and `iat` members (the last one wins if a name repeats, as when decoding
/// into a `Value`). A valid document that is not an object fails with a `Data` error.
fn read_claims(payload: &str) -> Result<Claims, serde_json::Error> {
    // Skipping a string (`IgnoredAny`) checks its escapes and control characters but not that
    // `\u` escapes pair their surrogates; only text with a `\u` needs the decoding walk.
    let strict = memchr::memmem::find(payload.as_bytes(), b"\\u").is_some();
    let mut de = serde_json::Deserializer::from_str(payload);
    let claims = de.deserialize_map(ClaimsVisitor { strict })?;
    de.end()?;
    Ok(claims)
}

struct ClaimsVisitor {
    /// Decode every other string too (the text has `\u` escapes).
    strict: bool,
}

impl<'de> Visitor<'de> for ClaimsVisitor {
    type Value = Claims;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut claims = Claims::default();
        while let Some(key) = map.next_key_seed(ClaimKey)? {
            match key {
                Some(Claim::Exp) => claims.exp = Some(map.next_value()?),
                Some(Claim::Iat) => claims.iat = Some(map.next_value()?),
                None if self.strict => map.next_value_seed(Validate)?,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(claims)
    }
}

enum Claim {
    Exp,
    Iat,
}

/// Reads a member name without allocating: `Some` for the claims we check.
struct ClaimKey;

impl<'de> DeserializeSeed<'de> for ClaimKey {
    type Value = Option<Claim>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ClaimKey {
    type Value = Option<Claim>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(match key {
            "exp" => Some(Claim::Exp),
            "iat" => Some(Claim::Iat),
            _ => None,
        })
    }
}

/// Decodes and checks the JOSE header: a JSON object with `"alg":"HS256"` and no `crit`.
fn check_header(segment: &[u8]) -> Result<(), VerifyError> {
    if segment == JWT_HEADER_B64.as_bytes() {
        return Ok(());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| jwt_err("header_not_canonical_base64"))?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| jwt_err("header_not_json"))?;
    let Value::Object(header) = header else {
        return Err(jwt_err("header_not_object"));
    };
    match header.get("alg") {
        None => return Err(jwt_err("missing_alg")),
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(_) => return Err(jwt_err("bad_alg")),
    }
    // RFC 7515 §4.1.11: extensions we do not understand must be rejected.
    if header.contains_key("crit") {
        return Err(jwt_err("unsupported_crit"));
    }
    Ok(())
}

/// True if `tag` is the HMAC-SHA256 of `message` under any non-empty secret (constant time).
fn any_secret_matches(secrets: &[&[u8]], message: &[u8], tag: &[u8]) -> Result<bool, VerifyError> {
    let mut usable = false;
    let mut matched = false;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        usable = true;
        // No early exit: every active secret costs the same.
        matched |= hmac_sha256_matches(secret, message, tag);
    }
    if usable {
        Ok(matched)
    } else {
        Err(jwt_err("missing_secret"))
    }
}

fn duration_ms(d: Duration) -> i128 {
    i128::try_from(d.as_millis()).unwrap_or(i128::MAX / 4)
}

/// A JWT NumericDate (seconds since the epoch, integer or fractional) in milliseconds.
fn numeric_date_ms(v: &Value) -> Option<i128> {
    let Value::Number(n) = v else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        Some(i128::from(i) * 1000)
    } else if let Some(u) = n.as_u64() {
        Some(i128::from(u) * 1000)
    } else {
        // Fractional seconds; `as` saturates for out-of-range values.
        n.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| (f * 1000.0).floor() as i128)
    }
}

/// True for the `application/jwt` media type, whatever its parameters and letter case
/// (`Application/JWT; charset=utf-8`).
pub fn is_jwt_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/jwt")
}

/// Signs `claims` as a compact HS256 JWT with header `{"alg":"HS256","typ":"JWT"}`.
///
/// For tests, tooling and the `simulate` command (Dialpad signs real events). The payload is the
/// compact serde_json serialisation of `claims` (object keys in sorted order); use
/// [`sign_jwt_hs256_raw`] to sign exact payload bytes.
pub fn sign_jwt_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    sign_jwt_hs256_raw(claims.to_string().as_bytes(), secret)
}

/// Signs exact payload bytes (normally a compact JSON object) as a compact HS256 JWT.
///
/// For tests, tooling and the `simulate` command; same header as [`sign_jwt_hs256`]. Produces the
/// same token as `fixtures/dialpad/make_jwt.py` for the same payload bytes.
pub fn sign_jwt_hs256_raw(payload: &[u8], secret: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(JWT_HEADER_JSON);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let tag = hmac_sha256(secret, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// Standard padded base64 of HMAC-SHA256(secret, body): the value of the `x-dialpad-signature`
/// header checked by [`WebhookVerifier::verify_hmac`].
///
/// For tests, tooling and the `simulate` command.
pub fn sign_hmac_b64(body: &[u8], secret: &[u8]) -> String {
    STANDARD.encode(hmac_sha256(secret, body))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"testsecret";

    /// The tests sign with RustCrypto's HMAC, an implementation independent of the one the
    /// verifier uses (`ring`, through `crate::digest`).
    fn mac_tag(key: &[u8], message: &[u8]) -> Vec<u8> {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }

    /// `python3 fixtures/dialpad/make_jwt.py fixtures/dialpad/events/call_inbound_02_ringing.json testsecret`
    const PYTHON_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJkYXRlX3N0YXJ0ZWQiOjE3NjcyNjE2MDAwMDAsImNhbGxfaWQiOjU3NDQxMTg5MzQ0NTQyNzIsInN0YXRlIjoicmluZ2luZyIsImRpcmVjdGlvbiI6ImluYm91bmQiLCJleHRlcm5hbF9udW1iZXIiOiIrMTU1NTU1NTAxMjMiLCJpbnRlcm5hbF9udW1iZXIiOiIrMTU1NTU1NTAxMDAiLCJkYXRlX3JhbmciOjE3NjcyNjE2MDExOTAsImRhdGVfZmlyc3RfcmFuZyI6MTc2NzI2MTYwMTE5MCwiZGF0ZV9xdWV1ZWQiOm51bGwsInRhcmdldF9hdmFpbGFiaWxpdHlfc3RhdHVzIjoib3BlbiIsImNhbGxiYWNrX3JlcXVlc3RlZCI6bnVsbCwiZGF0ZV9jb25uZWN0ZWQiOm51bGwsImRhdGVfZW5kZWQiOm51bGwsInRhbGtfdGltZSI6MCwiaG9sZF90aW1lIjowLCJkdXJhdGlvbiI6MCwidG90YWxfZHVyYXRpb24iOjAsImNvbnRhY3QiOnsiaWQiOjY0MTMwNzc3Mjk4Njk4MjQsInR5cGUiOiJsb2NhbCIsImVtYWlsIjoiIiwicGhvbmUiOiIrMTU1NTU1NTAxMjMiLCJuYW1lIjoiTW9yZ2FuIExlZSJ9LCJ0YXJnZXQiOnsiaWQiOjUxNTEwMDk4NDQzMzA0OTYsInR5cGUiOiJ1c2VyIiwiZW1haWwiOiJhdmVyeS5xdWlubkBleGFtcGxlLmNvbSIsInBob25lIjoiKzE1NTU1NTUwMTQyIiwibmFtZSI6IkF2ZXJ5IFF1aW5uIiwib2ZmaWNlX2lkIjo1NzM4MjIxNDQ3MzY0NjA4fSwiZW50cnlfcG9pbnRfY2FsbF9pZCI6bnVsbCwiZW50cnlfcG9pbnRfdGFyZ2V0Ijp7ImlkIjo1NzM4MjIxNDQ3MzY0NjA4LCJ0eXBlIjoib2ZmaWNlIiwiZW1haWwiOiIiLCJwaG9uZSI6IisxNTU1NTU1MDEwMCIsIm5hbWUiOiJFeGFtcGxlIFdpZGdldHMgTWFpbiBMaW5lIiwib2ZmaWNlX2lkIjo1NzM4MjIxNDQ3MzY0NjA4fSwib3BlcmF0b3JfY2FsbF9pZCI6bnVsbCwicHJveHlfdGFyZ2V0Ijp7fSwiZ3JvdXBfaWQiOiJPZmZpY2U6NTczODIyMTQ0NzM2NDYwOCIsIm1hc3Rlcl9jYWxsX2lkIjpudWxsLCJpc19pbnRlcm5hbCI6ZmFsc2UsImlzX3RyYW5zZmVycmVkIjpmYWxzZSwidHJhbnNmZXJyZWRfZnJvbSI6e30sImNzYXRfc2NvcmUiOm51bGwsInJvdXRpbmdfYnJlYWRjcnVtYnMiOltdLCJldmVudF90aW1lc3RhbXAiOjE3NjcyNjE2MDEyMTAsIm1vc19zY29yZSI6bnVsbCwibGFiZWxzIjpbXSwid2FzX3JlY29yZGVkIjpmYWxzZSwidm9pY2VtYWlsX2xpbmsiOm51bGwsInZvaWNlbWFpbF9yZWNvcmRpbmdfaWQiOm51bGwsImNhbGxfcmVjb3JkaW5nX2lkcyI6W10sInRyYW5zY3JpcHRpb25fdGV4dCI6bnVsbCwicmVjb3JkaW5nX2RldGFpbHMiOltdLCJjb21wYW55X2NhbGxfcmV2aWV3X3NoYXJlX2xpbmsiOm51bGwsInB1YmxpY19jYWxsX3Jldmlld19zaGFyZV9saW5rIjpudWxsLCJpbnRlZ3JhdGlvbnMiOnt9fQ.gCf_R3wput-sDX4b9SAV-R6D8SAMuM0dL_LgHsDAxVo";

    const RINGING_FIXTURE: &str =
        include_str!("../../fixtures/dialpad/events/call_inbound_02_ringing.json");

    fn now() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().unwrap()
    }

    fn now_secs() -> i64 {
        now().timestamp()
    }

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::default()
    }

    fn verify(token: &str) -> Result<Value, VerifyError> {
        verifier().verify_jwt(token.as_bytes(), &[SECRET], now())
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with an arbitrary header and payload, correctly HMAC-signed with `secret`.
    fn token_with(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        format!("{input}.{}", b64(&mac_tag(secret, input.as_bytes())))
    }

    /// Removes JSON whitespace outside strings (same bytes as Python's compact `json.dumps` for
    /// ASCII fixtures), keeping key order.
    fn minify(json: &str) -> String {
        let mut out = String::with_capacity(json.len());
        let (mut in_str, mut escaped) = (false, false);
        for c in json.chars() {
            if in_str {
                out.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_str = false;
                }
            } else if c == '"' {
                in_str = true;
                out.push(c);
            } else if !c.is_ascii_whitespace() {
                out.push(c);
            }
        }
        out
    }

    fn assert_jwt_err(result: Result<Value, VerifyError>, reason: &str) {
        match result {
            Err(VerifyError::InvalidJwt(r)) => assert_eq!(r, reason),
            other => panic!("expected InvalidJwt({reason}), got {other:?}"),
        }
    }

    fn assert_format_err(result: Result<Value, VerifyError>, reason: &str) {
        match result {
            Err(e @ VerifyError::InvalidJwtFormat(_)) => {
                assert_eq!(e.reason(), reason);
                assert_eq!(e.status(), 400);
                assert_eq!(e.public_message(), "Invalid JWT format");
            }
            other => panic!("expected InvalidJwtFormat({reason}), got {other:?}"),
        }
    }

    #[test]
    fn valid_token_returns_payload() {
        let claims = json!({"call_id": 1, "state": "ringing"});
        let token = sign_jwt_hs256(&claims, SECRET);
        assert_eq!(verify(&token).unwrap(), claims);
    }

    #[test]
    fn python_signer_token_verifies_and_matches_rust_signer() {
        // Same bytes as the Python signer: compact JSON in the fixture's key order.
        let rust_token = sign_jwt_hs256_raw(minify(RINGING_FIXTURE).as_bytes(), SECRET);
        assert_eq!(rust_token, PYTHON_TOKEN);

        // The Python script prints a trailing newline; it must be ignored.
        let body = format!("{PYTHON_TOKEN}\n");
        let payload = verifier()
            .verify_jwt(body.as_bytes(), &[SECRET], now())
            .unwrap();
        assert_eq!(payload["call_id"].as_u64(), Some(5_744_118_934_454_272));
        assert_eq!(payload["state"], "ringing");
        let fixture: Value = serde_json::from_str(RINGING_FIXTURE).unwrap();
        assert_eq!(payload, fixture);
    }

    #[test]
    fn sign_jwt_uses_the_documented_header() {
        let token = sign_jwt_hs256(&json!({}), SECRET);
        let header = token.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let token = sign_jwt_hs256(&json!({"a": 1}), b"other");
        let err = verify(&token).unwrap_err();
        assert_eq!(err, VerifyError::InvalidJwt("signature_mismatch".into()));
        assert_eq!(err.status(), 401);
        assert_eq!(err.public_message(), "Invalid JWT signature");
    }

    #[test]
    fn no_usable_secret_is_rejected() {
        let token = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        let v = verifier();
        assert_jwt_err(v.verify_jwt(token.as_bytes(), &[], now()), "missing_secret");
        assert_jwt_err(
            v.verify_jwt(token.as_bytes(), &[b""], now()),
            "missing_secret",
        );
    }

    #[test]
    fn alg_none_with_empty_signature_is_rejected() {
        let token = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(br#"{"call_id":1}"#)
        );
        assert_jwt_err(verify(&token), "bad_alg");
        // Even an HMAC-valid signature does not rescue `none`.
        let signed = token_with(r#"{"alg":"none"}"#, r#"{"call_id":1}"#, SECRET);
        assert_jwt_err(verify(&signed), "bad_alg");
    }

    #[test]
    fn other_algorithms_and_bad_headers_are_rejected() {
        let p = r#"{"call_id":1}"#;
        for (header, reason) in [
            (r#"{"alg":"RS256","typ":"JWT"}"#, "bad_alg"),
            (r#"{"alg":"HS512"}"#, "bad_alg"),
            (r#"{"alg":"hs256"}"#, "bad_alg"),
            (r#"{"alg":["HS256"]}"#, "bad_alg"),
            (r#"{"typ":"JWT"}"#, "missing_alg"),
            (r#"["HS256"]"#, "header_not_object"),
            (r#""HS256""#, "header_not_object"),
            ("not json", "header_not_json"),
            ("", "header_not_json"),
            (r#"{"alg":"HS256","crit":["b64"]}"#, "unsupported_crit"),
        ] {
            assert_jwt_err(verify(&token_with(header, p, SECRET)), reason);
        }
        // Accepted: extra header fields such as `kid`.
        let ok = token_with(r#"{"alg":"HS256","kid":"k1"}"#, p, SECRET);
        assert!(verify(&ok).is_ok());
    }

    #[test]
    fn non_canonical_header_base64_is_rejected() {
        let good = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        let (header, rest) = good.split_once('.').unwrap();
        let padded = format!("{header}=.{rest}");
        assert_jwt_err(verify(&padded), "header_not_canonical_base64");
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        assert_jwt_err(verify("abc.def"), "not_three_parts");
        assert_jwt_err(verify("not-a-jwt"), "not_three_parts");
        assert_jwt_err(verify("a.b.c.d"), "not_three_parts");
        assert_jwt_err(verify(""), "empty_token");
        assert_jwt_err(verify(" \r\n\t"), "empty_token");
        let good = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        assert_jwt_err(verify(&format!("{good}.")), "not_three_parts");
    }

    #[test]
    fn empty_body_is_401() {
        let err = verifier().verify_jwt(b"", &[SECRET], now()).unwrap_err();
        assert_eq!(err.status(), 401);
        assert_eq!(err.public_message(), "Invalid JWT signature");
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let token = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        assert!(verify(&format!("\r\n {token} \r\n")).is_ok());
    }

    #[test]
    fn padded_signature_is_rejected() {
        let token = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        assert_jwt_err(
            verify(&format!("{token}=")),
            "signature_not_canonical_base64",
        );
    }

    #[test]
    fn signature_with_garbage_appended_is_rejected() {
        let token = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        assert_jwt_err(
            verify(&format!("{token}!!")),
            "signature_not_canonical_base64",
        );
        // Standard-alphabet characters are outside the base64url alphabet.
        let std_alphabet = token.replace('-', "+").replace('_', "/");
        if std_alphabet != token {
            assert!(verify(&std_alphabet).is_err());
        }
    }

    #[test]
    fn non_zero_trailing_bits_in_signature_are_rejected() {
        let token = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        let (input, sig) = token.rsplit_once('.').unwrap();
        // 43 chars encode 32 bytes + 2 unused bits; change the last char so only those bits move.
        let last = sig.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let idx = alphabet.find(last).unwrap();
        let sibling = alphabet.as_bytes()[idx ^ 1] as char;
        let tweaked = format!("{input}.{}{sibling}", &sig[..sig.len() - 1]);
        assert_jwt_err(verify(&tweaked), "signature_not_canonical_base64");
    }

    #[test]
    fn wrong_length_signatures_are_rejected() {
        let token = sign_jwt_hs256(&json!({"a": 1}), SECRET);
        let (input, _) = token.rsplit_once('.').unwrap();
        assert_jwt_err(verify(&format!("{input}.")), "bad_signature_length");
        assert_jwt_err(
            verify(&format!("{input}.{}", b64(&[7u8; 31]))),
            "bad_signature_length",
        );
        assert_jwt_err(
            verify(&format!("{input}.{}", b64(&[7u8; 64]))),
            "bad_signature_length",
        );
        let huge = "A".repeat(10_000);
        assert_jwt_err(verify(&format!("{input}.{huge}")), "bad_signature_length");
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = sign_jwt_hs256(&json!({"call_id": 1}), SECRET);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(br#"{"call_id":2}"#), parts[2]);
        assert_jwt_err(verify(&forged), "signature_mismatch");
    }

    #[test]
    fn expired_token_is_rejected() {
        let token = sign_jwt_hs256(&json!({"exp": now_secs() - 61}), SECRET);
        assert_jwt_err(verify(&token), "expired");
        let token = sign_jwt_hs256(&json!({"exp": now_secs() - 3600}), SECRET);
        assert_jwt_err(verify(&token), "expired");
    }

    #[test]
    fn exp_within_leeway_is_accepted() {
        for exp in [now_secs() - 59, now_secs(), now_secs() + 3600] {
            let token = sign_jwt_hs256(&json!({ "exp": exp }), SECRET);
            assert!(verify(&token).is_ok(), "exp {exp}");
        }
        let token = sign_jwt_hs256(&json!({"exp": (now_secs() - 30) as f64 + 0.5}), SECRET);
        assert!(verify(&token).is_ok());
        // Exactly at the leeway boundary: expired.
        let token = sign_jwt_hs256(&json!({"exp": now_secs() - 60}), SECRET);
        assert_jwt_err(verify(&token), "expired");
    }

    #[test]
    fn iat_too_old_is_rejected() {
        let token = sign_jwt_hs256(&json!({"iat": now_secs() - 86_401}), SECRET);
        assert_jwt_err(verify(&token), "iat_too_old");
        let token = sign_jwt_hs256(&json!({"iat": now_secs() - 86_400}), SECRET);
        assert!(verify(&token).is_ok());
    }

    #[test]
    fn iat_in_future_is_rejected() {
        let token = sign_jwt_hs256(&json!({"iat": now_secs() + 61}), SECRET);
        assert_jwt_err(verify(&token), "iat_in_future");
        let token = sign_jwt_hs256(&json!({"iat": now_secs() + 60}), SECRET);
        assert!(verify(&token).is_ok());
    }

    #[test]
    fn iat_age_check_can_be_disabled() {
        let token = sign_jwt_hs256(&json!({"iat": 1_000_000}), SECRET);
        for max_age in [None, Some(Duration::ZERO)] {
            let v = WebhookVerifier::new(VerifyConfig {
                jwt_max_age: max_age,
                ..VerifyConfig::default()
            });
            assert!(v.verify_jwt(token.as_bytes(), &[SECRET], now()).is_ok());
        }
        // The future bound still applies with the age check disabled.
        let v = WebhookVerifier::new(VerifyConfig {
            jwt_max_age: None,
            ..VerifyConfig::default()
        });
        let future = sign_jwt_hs256(&json!({"iat": now_secs() + 3600}), SECRET);
        assert_jwt_err(
            v.verify_jwt(future.as_bytes(), &[SECRET], now()),
            "iat_in_future",
        );
    }

    #[test]
    fn custom_max_age_and_leeway() {
        let v = WebhookVerifier::new(VerifyConfig {
            jwt_max_age: Some(Duration::from_secs(300)),
            leeway: Duration::ZERO,
        });
        let check = |claims: Value| {
            v.verify_jwt(sign_jwt_hs256(&claims, SECRET).as_bytes(), &[SECRET], now())
        };
        assert!(check(json!({"iat": now_secs() - 300})).is_ok());
        assert_jwt_err(check(json!({"iat": now_secs() - 301})), "iat_too_old");
        assert_jwt_err(check(json!({"iat": now_secs() + 1})), "iat_in_future");
        assert_jwt_err(check(json!({"exp": now_secs()})), "expired");
        assert!(check(json!({"exp": now_secs() + 1})).is_ok());
    }

    #[test]
    fn non_numeric_claims_are_rejected() {
        for (claims, reason) in [
            (json!({"exp": "tomorrow"}), "exp_not_numeric"),
            (json!({"exp": null}), "exp_not_numeric"),
            (json!({"iat": "now"}), "iat_not_numeric"),
            (json!({"iat": [1]}), "iat_not_numeric"),
        ] {
            assert_jwt_err(verify(&sign_jwt_hs256(&claims, SECRET)), reason);
        }
    }

    #[test]
    fn huge_claims_do_not_overflow() {
        let token = sign_jwt_hs256(&json!({"exp": u64::MAX, "iat": i64::MIN}), SECRET);
        // exp far in the future is fine; iat far in the past is too old.
        assert_jwt_err(verify(&token), "iat_too_old");
        let token = sign_jwt_hs256(&json!({"exp": 1e300}), SECRET);
        assert!(verify(&token).is_ok());
        let token = sign_jwt_hs256(&json!({"exp": -1e300}), SECRET);
        assert_jwt_err(verify(&token), "expired");
    }

    #[test]
    fn signed_non_json_payload_is_format_error() {
        let token = token_with(r#"{"alg":"HS256","typ":"JWT"}"#, "hello", SECRET);
        assert_format_err(verify(&token), "payload_not_json");
    }

    #[test]
    fn signed_non_object_payloads_are_format_errors() {
        for payload in ["[1,2,3]", "null", "\"text\"", "42", "true"] {
            let token = token_with(r#"{"alg":"HS256","typ":"JWT"}"#, payload, SECRET);
            assert_format_err(verify(&token), "payload_not_object");
        }
    }

    #[test]
    fn signed_non_canonical_payload_is_format_error() {
        let header = b64(br#"{"alg":"HS256"}"#);
        // Padding; non-zero trailing bits ("e31" and "e30" both decode to `{}`); characters
        // of the standard alphabet; a length that is no base64 at all.
        for payload in ["e30=", "e31", "e30+", "e30/", "e"] {
            let input = format!("{header}.{payload}");
            let token = format!("{input}.{}", b64(&mac_tag(SECRET, input.as_bytes())));
            assert_format_err(verify(&token), "payload_not_canonical_base64");
        }
        let input = format!("{header}.e30");
        let token = format!("{input}.{}", b64(&mac_tag(SECRET, input.as_bytes())));
        assert_eq!(verify(&token).unwrap(), json!({}));
    }

    #[test]
    fn canonical_header_constant_matches_its_json() {
        assert_eq!(JWT_HEADER_B64, b64(JWT_HEADER_JSON.as_bytes()));
        // Other spellings of an HS256 header still take the decoding path.
        let token = token_with(r#"{"typ":"JWT","alg":"HS256"}"#, r#"{"a":1}"#, SECRET);
        assert_eq!(verify(&token).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn text_path_returns_the_signed_text_and_agrees_with_the_value_path() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/dialpad/events");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let payload = minify(&text);
            let token = token_with(JWT_HEADER_JSON, &payload, SECRET);
            let got = verifier()
                .verify_jwt_text(token.as_bytes(), &[SECRET], now())
                .unwrap();
            assert_eq!(got.as_str(), payload, "the exact signed text");
            assert_eq!(verify(&token).unwrap(), got.to_value().unwrap());
            n += 1;
        }
        assert!(n >= 20, "only {n} fixtures");
        let cases = [
            (r#"{"exp": 1, "exp": 4102444800}"#, None),
            (r#"{"exp": 4102444800, "exp": 1}"#, Some("expired")),
            (r#"{"a": "\ud800"}"#, Some("payload_not_json")),
            (r#"{"a": "\ud83d\ude00", "b": [1, {"c": null}]}"#, None),
            (r#"{"a": 1} x"#, Some("payload_not_json")),
            ("{\"a\": \"tab\there\"}", Some("payload_not_json")),
            (r#"{"a": "bad \q escape"}"#, Some("payload_not_json")),
            (r#"{"a": "\u12G4"}"#, Some("payload_not_json")),
            (r#"{"a": [1, 2,]}"#, Some("payload_not_json")),
            (r#"{"a": "\n\t\"\\\/ fine"}"#, None),
            (r#"{"iat": "yesterday"}"#, Some("iat_not_numeric")),
        ];
        for (payload, want) in cases {
            let token = token_with(JWT_HEADER_JSON, payload, SECRET);
            let text = verifier().verify_jwt_text(token.as_bytes(), &[SECRET], now());
            match want {
                None => assert_eq!(text.unwrap().as_str(), payload),
                Some(reason) => assert_eq!(text.unwrap_err().reason(), reason, "{payload}"),
            }
            // The Value path gives the same answer.
            let value = verify(&token);
            assert_eq!(value.is_ok(), want.is_none(), "{payload}");
        }
        // Bytes that are not UTF-8 are not JSON.
        let input = format!(
            "{}.{}",
            b64(JWT_HEADER_JSON.as_bytes()),
            b64(b"{\"a\":\"\xff\"}")
        );
        let token = format!("{input}.{}", b64(&mac_tag(SECRET, input.as_bytes())));
        assert_format_err(verify(&token), "payload_not_json");
    }

    #[test]
    fn unsigned_non_json_payload_is_signature_error() {
        // Payload problems are only reported once the signature is valid.
        let token = token_with(r#"{"alg":"HS256"}"#, "hello", b"wrong");
        assert_jwt_err(verify(&token), "signature_mismatch");
    }

    #[test]
    fn any_active_secret_accepts_during_rotation() {
        let (old, new) = (b"old-secret".as_slice(), b"new-secret".as_slice());
        let v = verifier();
        let by_old = sign_jwt_hs256(&json!({"n": 1}), old);
        let by_new = sign_jwt_hs256(&json!({"n": 2}), new);
        for secrets in [[old, new], [new, old]] {
            assert!(v.verify_jwt(by_old.as_bytes(), &secrets, now()).is_ok());
            assert!(v.verify_jwt(by_new.as_bytes(), &secrets, now()).is_ok());
        }
        assert!(v.verify_jwt(by_old.as_bytes(), &[new], now()).is_err());
        assert!(v.verify_jwt(by_old.as_bytes(), &[b"", old], now()).is_ok());
    }

    #[test]
    fn nineteen_digit_ids_stay_exact() {
        let token = token_with(
            r#"{"alg":"HS256"}"#,
            r#"{"call_id":4611686018427387913,"big":18446744073709551615,"neg":-9223372036854775808}"#,
            SECRET,
        );
        let payload = verify(&token).unwrap();
        assert_eq!(payload["call_id"].as_u64(), Some(4_611_686_018_427_387_913));
        assert_eq!(payload["big"].as_u64(), Some(u64::MAX));
        assert_eq!(payload["neg"].as_i64(), Some(i64::MIN));
    }

    #[test]
    fn reasons_never_contain_the_token_or_secret() {
        let secret = b"very-secret-value";
        let token = sign_jwt_hs256(&json!({"exp": 1}), secret);
        let err = verifier()
            .verify_jwt(token.as_bytes(), &[secret], now())
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("very-secret-value"));
        assert!(!text.contains(&token));
        assert!(!text.contains(token.split('.').nth(2).unwrap()));
    }

    #[test]
    fn jwt_media_type_detection() {
        for ct in [
            "application/jwt",
            "Application/JWT; charset=utf-8",
            "APPLICATION/JWT",
            " application/jwt ;foo=bar",
        ] {
            assert!(is_jwt_media_type(ct), "{ct}");
        }
        for ct in [
            "",
            "application/json",
            "application/jwt+json",
            "text/plain; application/jwt",
            "application/jwtx",
        ] {
            assert!(!is_jwt_media_type(ct), "{ct}");
        }
    }

    #[test]
    fn hmac_correct_signature_is_accepted() {
        let body = br#"{"call_id":1,"state":"ringing"}"#;
        let sig = sign_hmac_b64(body, SECRET);
        assert_eq!(sig.len(), 44);
        assert!(sig.ends_with('='));
        assert!(verifier().verify_hmac(body, Some(&sig), &[SECRET]).is_ok());
        assert!(
            verifier()
                .verify_hmac(body, Some(&format!(" {sig} ")), &[SECRET])
                .is_ok()
        );
    }

    #[test]
    fn hmac_known_vector() {
        // RFC 4231 test case 2.
        let sig = sign_hmac_b64(b"what do ya want for nothing?", b"Jefe");
        let hex_tag = hex::encode(STANDARD.decode(sig).unwrap());
        assert_eq!(
            hex_tag,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_wrong_secret_is_rejected() {
        let body = b"{}";
        let sig = sign_hmac_b64(body, b"other");
        let err = verifier()
            .verify_hmac(body, Some(&sig), &[SECRET])
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::InvalidSignature("signature_mismatch".into())
        );
        assert_eq!(err.status(), 401);
        assert_eq!(err.public_message(), "Invalid webhook signature");
    }

    #[test]
    fn hmac_body_must_match_exactly() {
        let sig = sign_hmac_b64(b"{\"a\":1}", SECRET);
        let err = verifier()
            .verify_hmac(b"{\"a\": 1}", Some(&sig), &[SECRET])
            .unwrap_err();
        assert_eq!(err.reason(), "signature_mismatch");
    }

    #[test]
    fn hmac_missing_header_or_secret_or_body() {
        let v = verifier();
        let sig = sign_hmac_b64(b"{}", SECRET);
        assert_eq!(
            v.verify_hmac(b"{}", None, &[SECRET]).unwrap_err().reason(),
            "missing_header"
        );
        assert_eq!(
            v.verify_hmac(b"{}", Some("  "), &[SECRET])
                .unwrap_err()
                .reason(),
            "missing_header"
        );
        assert_eq!(
            v.verify_hmac(b"{}", Some(&sig), &[]).unwrap_err().reason(),
            "missing_secret"
        );
        assert_eq!(
            v.verify_hmac(b"{}", Some(&sig), &[b""])
                .unwrap_err()
                .reason(),
            "missing_secret"
        );
        let empty_sig = sign_hmac_b64(b"", SECRET);
        assert_eq!(
            v.verify_hmac(b"", Some(&empty_sig), &[SECRET])
                .unwrap_err()
                .reason(),
            "empty_body"
        );
    }

    #[test]
    fn hmac_garbage_signatures_are_rejected() {
        let v = verifier();
        let body = b"{}";
        let sig = sign_hmac_b64(body, SECRET);
        for (bad, reason) in [
            ("!!!not base64!!!", "not_canonical_base64"),
            (sig.trim_end_matches('='), "not_canonical_base64"),
            ("AAAA", "bad_signature_length"),
        ] {
            let err = v.verify_hmac(body, Some(bad), &[SECRET]).unwrap_err();
            assert_eq!(err, VerifyError::InvalidSignature(reason.into()), "{bad}");
        }
        let url_safe = sig.replace('+', "-").replace('/', "_");
        if url_safe != sig {
            assert!(v.verify_hmac(body, Some(&url_safe), &[SECRET]).is_err());
        }
        let long = "A".repeat(1000);
        assert_eq!(
            v.verify_hmac(body, Some(&long), &[SECRET])
                .unwrap_err()
                .reason(),
            "bad_signature_length"
        );
    }

    #[test]
    fn hmac_rotation_accepts_any_secret() {
        let body = b"{\"x\":true}";
        let sig = sign_hmac_b64(body, b"old");
        assert!(
            verifier()
                .verify_hmac(body, Some(&sig), &[b"new", b"old"])
                .is_ok()
        );
        assert!(verifier().verify_hmac(body, Some(&sig), &[b"new"]).is_err());
    }
}
