//! Helpers shared by the test files that drive a started `Cti` (SQLite and PostgreSQL).

use cti_core::Cti;
use cti_core::inbox::{IngestOutcome, WebhookRequest};
use cti_core::verify::sign_hmac_b64;
use uuid::Uuid;

/// Posts `body` as a JSON webhook signed with `secret` for the app of `app_key` and returns
/// the id of the accepted event (panics on any other outcome).
pub async fn ingest_json(cti: &Cti, secret: &[u8], app_key: &str, body: &[u8]) -> Uuid {
    let sig = sign_hmac_b64(body, secret);
    let outcome = cti
        .ingest(WebhookRequest {
            body,
            content_type: Some("application/json"),
            signature: Some(&sig),
            app_key: Some(app_key),
            ..Default::default()
        })
        .await
        .unwrap();
    let IngestOutcome::Accepted { event_id, .. } = outcome else {
        panic!("{outcome:?}");
    };
    event_id
}
