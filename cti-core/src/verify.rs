//! Webhook authentication (spec §2.2, §2.7). STUB: being implemented.

use std::time::Duration;

use crate::model::Timestamp;

/// Verification settings.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// Maximum age of a JWT `iat` claim; `None` disables the check. Default 24 h.
    pub jwt_max_age: Option<Duration>,
    /// Clock skew allowed on `exp` and future `iat`. Default 60 s.
    pub leeway: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self { jwt_max_age: Some(Duration::from_secs(86_400)), leeway: Duration::from_secs(60) }
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

    /// Verifies a compact HS256 JWT and returns its payload (a JSON object).
    pub fn verify_jwt(&self, token: &[u8], secrets: &[&[u8]], now: Timestamp) -> Result<serde_json::Value, VerifyError> {
        let _ = (token, secrets, now, &self.config);
        Err(VerifyError::InvalidJwt("unimplemented".into()))
    }

    /// Verifies the base64 HMAC-SHA256 of `body` given in the signature header.
    pub fn verify_hmac(&self, body: &[u8], signature: Option<&str>, secrets: &[&[u8]]) -> Result<(), VerifyError> {
        let _ = (body, signature, secrets);
        Err(VerifyError::InvalidSignature("unimplemented".into()))
    }
}
