//! End-to-end flows through the `Cti` facade with `MemoryStore`.

use std::sync::Arc;
use std::time::Duration;

use cti_core::fanout::Delivery;
use cti_core::inbox::{IngestError, IngestOutcome, WebhookRequest};
use cti_core::secrets::Secret;
use cti_core::store::MemoryStore;
use cti_core::verify::sign_hmac_b64;
use cti_core::{Cti, CtiConfig};

fn cti() -> Cti {
    Cti::builder()
        .store(Arc::new(MemoryStore::new()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            ..CtiConfig::default()
        })
        .build()
}

#[tokio::test]
async fn json_hook_reaches_subscriber_once() {
    let cti = cti();
    let running = cti.start();
    let (app, key) = cti
        .create_app("Tenant A", Default::default())
        .await
        .unwrap();
    let mut live = cti.subscribe(app.id, None);
    let body =
        br#"{"event_type":"call.ring","call_id":1001,"direction":"inbound","user_id":12345}"#;
    let sig = sign_hmac_b64(body, b"W");
    let req = WebhookRequest {
        body,
        content_type: Some("application/json"),
        signature: Some(&sig),
        app_key: Some(key.expose()),
        ..Default::default()
    };
    assert!(matches!(
        cti.ingest(req).await.unwrap(),
        IngestOutcome::Accepted { .. }
    ));
    assert!(matches!(
        cti.ingest(req).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    let got = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .unwrap();
    match got {
        Some(Delivery::Event(e)) => {
            assert_eq!(e.event, "call.ring");
            assert_eq!(e.seq, 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.recv())
            .await
            .is_err(),
        "no second message"
    );
    let bad = WebhookRequest {
        signature: Some("AAAA"),
        ..req
    };
    assert!(matches!(cti.ingest(bad).await, Err(IngestError::Verify(_))));
    running.shutdown(Duration::from_secs(2)).await;
}
