//! Every fixture lifecycle of `fixtures/dialpad/events/lifecycles.json`, signed as Dialpad does
//! (HS256 JWT), ingested through `Cti` + `MemoryStore`: checks the final records and the exact
//! realtime messages one subscriber receives (one per logical event), that Dialpad retries are
//! deduplicated, and that a second tenant sees nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cti_core::fanout::{Delivery, Subscription};
use cti_core::inbox::{IngestOutcome, WebhookRequest};
use cti_core::model::{CallStatus, DialpadId, PageRequest};
use cti_core::secrets::Secret;
use cti_core::store::{MemoryStore, VoicemailFilter};
use cti_core::verify::sign_jwt_hs256;
use cti_core::{Cti, CtiConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dialpad/events")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn drain(sub: &mut Subscription, quiet: Duration) -> Vec<String> {
    let mut names = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, sub.recv()).await {
        match d {
            Delivery::Event(e) => names.push(e.event.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    names
}

async fn settle(cti: &Cti) {
    for _ in 0..200 {
        let s = cti.store().inbox_stats().await.unwrap();
        if s.unprocessed == 0 && s.processing == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("inbox did not drain");
}

fn expected_events(name: &str) -> Vec<&'static str> {
    match name {
        "inbound_answered" | "outbound_answered" | "transfer_leg2" => {
            vec!["call.ring", "call.started", "call.ended"]
        }
        "inbound_answered_post_call_artifacts" => {
            vec![
                "call.ring",
                "call.started",
                "call.ended",
                "call.recording.completed",
                "call.transcription",
            ]
        }
        "inbound_missed_unicode" => vec!["call.ring", "call.missed"],
        "inbound_voicemail" => vec!["call.ring", "call.voicemail", "voicemail.received"],
        "hold_and_resume" => vec!["call.started", "call.held", "call.resumed", "call.ended"],
        "transfer_leg1" | "big_19_digit_id" => vec!["call.started", "call.ended"],
        "unknown_future_state_after_connect" => vec!["call.ring", "call.started"],
        "minimal_payload" => vec!["call.ring"],
        // the late `connected` merges its data but neither resurrects nor announces anything
        "out_of_order_late_connected" => vec!["call.ring", "call.ended"],
        other => panic!("lifecycle {other} has no expectation in this test; add one"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_lifecycles_through_the_facade() {
    let lifecycles = load("lifecycles.json");
    let seqs = lifecycles["sequences"].as_array().unwrap();
    assert!(seqs.len() >= 7);
    for seq in seqs {
        let name = seq["name"].as_str().unwrap();
        let events = seq["events"].as_array().unwrap();
        let first = load(events[0].as_str().unwrap());
        let Some(call_id) = DialpadId::from_json(&first["call_id"]).map(|d| d.0) else {
            continue; // SMS sequences are covered by the normalize tests
        };
        let cti = Cti::builder()
            .store(Arc::new(MemoryStore::new()))
            .config(CtiConfig {
                webhook_secret: Some(Secret::new("W".into())),
                ..CtiConfig::default()
            })
            .build();
        let running = cti.start();
        let (a, _) = cti
            .create_app("Tenant A", Default::default())
            .await
            .unwrap();
        let (b, _) = cti
            .create_app("Tenant B", Default::default())
            .await
            .unwrap();
        let mut sub_a = cti.subscribe(a.id, None);
        let mut sub_b = cti.subscribe(b.id, None);
        let path = a.id.to_string();

        for file in events {
            let token = sign_jwt_hs256(&load(file.as_str().unwrap()), b"W");
            let req = WebhookRequest {
                body: token.as_bytes(),
                content_type: Some("application/jwt"),
                path_app: Some(&path),
                ..Default::default()
            };
            let first = cti.ingest(req).await.unwrap();
            assert!(
                matches!(first, IngestOutcome::Accepted { .. }),
                "{name}/{file}"
            );
            // Dialpad retries the identical token: deduplicated.
            let retry = cti.ingest(req).await.unwrap();
            assert!(
                matches!(retry, IngestOutcome::Duplicate { .. }),
                "{name}/{file} retry"
            );
            // Process one event at a time so the messages follow the lifecycle order.
            settle(&cti).await;
        }
        let got = drain(&mut sub_a, Duration::from_millis(300)).await;
        assert_eq!(got, expected_events(name), "{name}: realtime messages");
        assert!(
            drain(&mut sub_b, Duration::from_millis(50))
                .await
                .is_empty(),
            "{name}: tenant B saw events"
        );

        let call = cti
            .store()
            .get_call_by_dialpad_id(a.id, DialpadId(call_id))
            .await
            .unwrap()
            .unwrap();
        let want = CallStatus::parse(seq["expected_status"].as_str().unwrap()).unwrap();
        assert_eq!(call.status, want, "{name}: final status");
        assert!(
            cti.store()
                .get_call_by_dialpad_id(b.id, DialpadId(call_id))
                .await
                .unwrap()
                .is_none()
        );
        match name {
            "inbound_answered" => {
                assert_eq!(call.from_number.as_deref(), Some("+15555550123"));
                assert_eq!(call.to_number.as_deref(), Some("+15555550100"));
                assert_eq!(call.dialpad_user_id, Some(DialpadId(5151009844330496)));
                assert!(call.answered_at.is_some() && call.ended_at.is_some());
            }
            "inbound_answered_post_call_artifacts" => {
                assert!(call.recording_url.is_some(), "recording url stored");
                assert!(call.transcript.is_some(), "transcript stored");
            }
            "inbound_voicemail" => {
                let vms = cti
                    .store()
                    .list_voicemails(a.id, &VoicemailFilter::default(), PageRequest::new(10, 0))
                    .await
                    .unwrap();
                assert_eq!(vms.total, 1);
                assert_eq!(vms.items[0].dialpad_call_id, Some(DialpadId(call_id)));
                assert!(vms.items[0].recording_url.is_some());
                assert!(call.is_voicemail);
            }
            "hold_and_resume" => assert!(!call.held),
            "big_19_digit_id" => {
                assert_eq!(call.dialpad_call_id.to_string(), "4611686018427387913")
            }
            "out_of_order_late_connected" => {
                assert!(call.answered_at.is_some(), "late connected data merged")
            }
            _ => {}
        }
        running.shutdown(Duration::from_secs(2)).await;
    }
}
