//! The store conformance suite: one set of async checks every [`Store`] must pass.
//!
//! Backends run it with [`store_conformance_tests!`](crate::store_conformance_tests), giving a
//! path to an `async fn() -> Arc<dyn Store>` that returns a fresh, empty, migrated store:
//!
//! ```ignore
//! async fn make_store() -> std::sync::Arc<dyn cti_core::store::Store> { /* … */ }
//! cti_core::store_conformance_tests!(make_store);
//! ```
//!
//! Each check is also a public function taking the store, so a backend can run a subset.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test-suite code: failures must panic

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use uuid::Uuid;

use super::*;
use crate::normalize::{CallUpdate, CtiEvent, MessageUpdate, Normalized, VoicemailUpdate};

/// Generates one `#[tokio::test]` per conformance check for a store factory.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:path) => {
        $crate::store_conformance_tests!(@cases $make;
            apps_and_keys, concurrent_key_rotation, legacy_key_backfill, tenant_isolation,
            inbox_dedupe_per_tenant, inbox_dedupe_of_body_hashes, claim_lease_and_expiry,
            retry_backoff_dead_letter_redrive, per_call_ordering, concurrent_claims_are_exclusive,
            complete_applies_and_publishes,
            complete_batch, insert_processed, insert_processed_updates_records,
            call_pagination_and_filters, message_and_voicemail_queries, mappings,
            dialpad_connections_webhooks_subscriptions, purge_and_retention);
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = $make().await;
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}

fn t0() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 29, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// [`InboxStore::inbox_stats`], checked against [`InboxStore::inbox_backlog`]: every case that
/// reads the counters also proves that the backlog gauges agree with them.
async fn stats(s: &Arc<dyn Store>) -> InboxStats {
    let stats = s.inbox_stats().await.unwrap();
    let backlog = s.inbox_backlog().await.unwrap();
    assert_eq!(
        backlog,
        InboxBacklog::from(stats.clone()),
        "inbox_backlog vs inbox_stats"
    );
    stats
}

fn key(n: &str) -> NewKey {
    NewKey {
        lookup: format!("{:0>64}", n),
        hint: format!("raw_{n}...{n}"),
    }
}

async fn new_app(s: &Arc<dyn Store>, name: &str, k: &str) -> App {
    s.create_app(
        NewApp {
            id: AppId::new(),
            name: name.into(),
            key: key(k),
            now: t0(),
        },
        AuditContext::default(),
    )
    .await
    .unwrap()
}

fn ev(
    app: AppId,
    dedupe: &str,
    call: Option<u64>,
    ts: Option<i64>,
    at: Timestamp,
) -> NewInboxEvent {
    NewInboxEvent {
        id: Uuid::new_v4(),
        app_id: app,
        dedupe_key: dedupe.into(),
        event_type: Some("ringing".into()),
        call_id: call.map(DialpadId),
        state: Some("ringing".into()),
        event_timestamp: ts,
        payload:
            serde_json::json!({"call_id": call, "state": "ringing", "big": 4611686018427387913u64})
                .into(),
        received_at: at,
    }
}

/// A voicemail event of `call` at `ms`: the call becomes a voicemail and `update` (its call id
/// filled in) is its record. Shared with the stores' own tests.
pub fn voicemail_norm(call: u64, ms: i64, update: VoicemailUpdate) -> Normalized {
    Normalized {
        event: CtiEvent::VoicemailReceived,
        call: Some(CallUpdate {
            dialpad_call_id: Some(DialpadId(call)),
            status: Some(CallStatus::Voicemail),
            event_ms: ms,
            ..Default::default()
        }),
        voicemail: Some(VoicemailUpdate {
            dialpad_call_id: Some(DialpadId(call)),
            ..update
        }),
        message: None,
    }
}

fn call_norm(event: CtiEvent, call: u64, ms: i64, user: Option<u64>) -> Normalized {
    Normalized {
        call: Some(CallUpdate {
            dialpad_call_id: Some(DialpadId(call)),
            status: event.call_status(),
            event_ms: ms,
            direction: Some(Direction::Inbound),
            from_number: Some("+15550001111".into()),
            to_number: Some("+15550002222".into()),
            dialpad_user_id: user.map(DialpadId),
            started_at: Some(t0()),
            ended_at: (event == CtiEvent::CallEnded).then(|| t0() + secs(120)),
            duration_seconds: (event == CtiEvent::CallEnded).then_some(120),
            ..Default::default()
        }),
        event,
        voicemail: None,
        message: None,
    }
}

/// Inserts, claims and completes one event; returns what was published.
async fn process(
    s: &Arc<dyn Store>,
    app: AppId,
    dedupe: &str,
    n: Normalized,
    at: Timestamp,
) -> Vec<PublishedEvent> {
    let call = n.call.as_ref().and_then(|c| c.dialpad_call_id).map(|c| c.0);
    let out = s
        .inbox_insert(vec![ev(app, dedupe, call, None, at)])
        .await
        .unwrap();
    let InsertOutcome::Inserted(id) = out[0] else {
        panic!("duplicate {dedupe}")
    };
    let claimed = s
        .inbox_claim(100, Duration::from_secs(30), at)
        .await
        .unwrap();
    let e = claimed
        .iter()
        .find(|e| e.id == id)
        .expect("event claimable");
    s.inbox_complete(id, e.attempts, EventResult::Apply(Box::new(n)), at)
        .await
        .unwrap()
}

/// App CRUD, key issue/rotate/revoke with audit rows, inactive and unknown apps, grace period.
pub async fn apps_and_keys(s: Arc<dyn Store>) {
    let a = new_app(&s, "Tenant A", "a1").await;
    assert!(a.is_active && a.has_key);
    assert_eq!(a.api_key_hint.as_deref(), Some("raw_a1...a1"));
    assert_eq!(a.api_key_issued_at, Some(t0()));
    assert_eq!(s.get_app(a.id).await.unwrap().unwrap().name, "Tenant A");
    assert!(s.get_app(AppId::new()).await.unwrap().is_none());
    let b = new_app(&s, "Tenant B", "b1").await;
    let all = s.list_apps(PageRequest::new(10, 0)).await.unwrap();
    assert_eq!(all.total, 2);
    assert!(all.items.iter().any(|x| x.id == b.id));

    let m = s
        .find_app_by_key(&key("a1").lookup, t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.app.id, a.id);
    assert!(m.current);
    assert!(
        s.find_app_by_key(&key("zz").lookup, t0())
            .await
            .unwrap()
            .is_none()
    );

    // rotate without grace: old key stops working at once
    let out = s
        .change_key(
            a.id,
            KeyChange::Issue {
                key: key("a2"),
                grace_until: None,
            },
            AuditContext::default(),
            t0() + secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.audit.action, AuditAction::Rotated);
    assert_eq!(out.audit.old_key_hint.as_deref(), Some("raw_a1...a1"));
    assert_eq!(out.audit.new_key_hint.as_deref(), Some("raw_a2...a2"));
    assert_eq!(out.app.api_key_issued_at, Some(t0() + secs(10)));
    assert!(
        s.find_app_by_key(&key("a1").lookup, t0() + secs(11))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.find_app_by_key(&key("a2").lookup, t0() + secs(11))
            .await
            .unwrap()
            .is_some()
    );

    // rotate with grace: previous key valid until the deadline only
    s.change_key(
        a.id,
        KeyChange::Issue {
            key: key("a3"),
            grace_until: Some(t0() + secs(100)),
        },
        AuditContext::default(),
        t0() + secs(20),
    )
    .await
    .unwrap();
    let prev = s
        .find_app_by_key(&key("a2").lookup, t0() + secs(50))
        .await
        .unwrap()
        .unwrap();
    assert!(!prev.current);
    assert!(
        s.find_app_by_key(&key("a2").lookup, t0() + secs(101))
            .await
            .unwrap()
            .is_none()
    );

    // revoke: nothing authenticates, audit revoked, issue afterwards is "created"
    let r = s
        .change_key(
            a.id,
            KeyChange::Revoke,
            AuditContext::default(),
            t0() + secs(30),
        )
        .await
        .unwrap();
    assert_eq!(r.audit.action, AuditAction::Revoked);
    assert_eq!(r.audit.old_key_hint.as_deref(), Some("raw_a3...a3"));
    assert!(!r.app.has_key);
    assert_eq!(r.app.api_key_hint, None);
    assert!(
        s.find_app_by_key(&key("a3").lookup, t0() + secs(31))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.find_app_by_key(&key("a2").lookup, t0() + secs(31))
            .await
            .unwrap()
            .is_none()
    );
    let r2 = s
        .change_key(
            a.id,
            KeyChange::Revoke,
            AuditContext::default(),
            t0() + secs(31),
        )
        .await
        .unwrap();
    assert_eq!(r2.audit.old_key_hint, None);
    let c = s
        .change_key(
            a.id,
            KeyChange::Issue {
                key: key("a4"),
                grace_until: None,
            },
            AuditContext::default(),
            t0() + secs(40),
        )
        .await
        .unwrap();
    assert_eq!(c.audit.action, AuditAction::Created);
    assert_eq!(c.audit.old_key_hint, None);

    let audit = s.list_audit(a.id, PageRequest::new(50, 0)).await.unwrap();
    assert_eq!(audit.total, 6);
    let actions: Vec<AuditAction> = audit.items.iter().map(|e| e.action).collect();
    use AuditAction::*;
    assert_eq!(
        actions,
        vec![Created, Revoked, Revoked, Rotated, Rotated, Created]
    );
    let paged = s.list_audit(a.id, PageRequest::new(2, 1)).await.unwrap();
    assert_eq!(paged.items.len(), 2);
    assert_eq!(paged.items[0].action, Revoked);
    assert_eq!(
        s.list_audit(b.id, PageRequest::new(50, 0))
            .await
            .unwrap()
            .total,
        1
    );

    // deactivate: issuing is refused, revoking allowed; inactive apps are still found by key
    let upd = s
        .update_app(
            b.id,
            AppPatch {
                is_active: Some(false),
                name: Some("B2".into()),
            },
            t0() + secs(5),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!upd.is_active);
    assert_eq!(upd.name, "B2");
    let found = s
        .find_app_by_key(&key("b1").lookup, t0())
        .await
        .unwrap()
        .unwrap();
    assert!(!found.app.is_active);
    let err = s
        .change_key(
            b.id,
            KeyChange::Issue {
                key: key("b2"),
                grace_until: None,
            },
            AuditContext::default(),
            t0(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Inactive), "{err:?}");
    s.change_key(b.id, KeyChange::Revoke, AuditContext::default(), t0())
        .await
        .unwrap();
    let err = s
        .change_key(
            AppId::new(),
            KeyChange::Revoke,
            AuditContext::default(),
            t0(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert!(
        s.update_app(AppId::new(), AppPatch::default(), t0())
            .await
            .unwrap()
            .is_none()
    );
}

/// Concurrent rotations serialise: the audit hint chain is unbroken and the last key wins.
pub async fn concurrent_key_rotation(s: Arc<dyn Store>) {
    let a = new_app(&s, "D", "d0").await;
    let mut tasks = Vec::new();
    for i in 1..=5 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.change_key(
                a.id,
                KeyChange::Issue {
                    key: key(&format!("d{i}")),
                    grace_until: None,
                },
                AuditContext::default(),
                t0() + secs(i),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let audit = s.list_audit(a.id, PageRequest::new(50, 0)).await.unwrap();
    assert_eq!(audit.total, 6);
    // newest first: each row's old hint is the next (older) row's new hint
    for w in audit.items.windows(2) {
        assert_eq!(
            w[0].old_key_hint, w[1].new_key_hint,
            "hint chain broken: {:?}",
            audit.items
        );
    }
    let newest = audit.items[0].new_key_hint.clone().unwrap();
    let app = s.get_app(a.id).await.unwrap().unwrap();
    assert_eq!(app.api_key_hint.as_deref(), Some(newest.as_str()));
    let mut valid = 0;
    for i in 0..=5 {
        if s.find_app_by_key(&key(&format!("d{i}")).lookup, t0() + secs(60))
            .await
            .unwrap()
            .is_some()
        {
            valid += 1;
        }
    }
    assert_eq!(valid, 1);
}

/// Apps imported with only a bcrypt hash are listed until a lookup hash is backfilled.
pub async fn legacy_key_backfill(s: Arc<dyn Store>) {
    // Not every backend can create legacy rows through the trait; they are created by import.
    // The trait contract checked here: a store without legacy rows lists none, and a backfill
    // for an unknown app or mismatching hash is a harmless no-op.
    assert!(s.legacy_keys().await.unwrap().is_empty());
    let a = new_app(&s, "A", "a1").await;
    s.backfill_key(a.id, "$2b$10$notthehash", key("x"))
        .await
        .unwrap();
    s.backfill_key(AppId::new(), "$2b$10$x", key("y"))
        .await
        .unwrap();
    assert!(
        s.find_app_by_key(&key("x").lookup, t0())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.find_app_by_key(&key("a1").lookup, t0())
            .await
            .unwrap()
            .is_some()
    );
}

/// App B never sees or changes app A's rows.
pub async fn tenant_isolation(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let b = new_app(&s, "B", "b").await;
    process(
        &s,
        a.id,
        "a-ring",
        call_norm(CtiEvent::CallRinging, 1001, 1, Some(12345)),
        t0(),
    )
    .await;
    // the same Dialpad call id for B is a different record
    process(
        &s,
        b.id,
        "b-ring",
        call_norm(CtiEvent::CallRinging, 1001, 2, None),
        t0(),
    )
    .await;
    process(
        &s,
        b.id,
        "b-end",
        call_norm(CtiEvent::CallEnded, 1001, 3, None),
        t0(),
    )
    .await;
    let ca = s
        .get_call_by_dialpad_id(a.id, DialpadId(1001))
        .await
        .unwrap()
        .unwrap();
    let cb = s
        .get_call_by_dialpad_id(b.id, DialpadId(1001))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(ca.id, cb.id);
    assert_eq!(ca.status, CallStatus::Ringing);
    assert_eq!(cb.status, CallStatus::Ended);
    assert!(s.get_call(b.id, ca.id).await.unwrap().is_none());
    assert_eq!(
        s.list_calls(b.id, &CallFilter::default(), PageRequest::new(50, 0))
            .await
            .unwrap()
            .total,
        1
    );

    let msg = Normalized {
        event: CtiEvent::SmsReceived,
        call: None,
        voicemail: None,
        message: Some(MessageUpdate {
            dialpad_message_id: Some(DialpadId(5001)),
            text: Some("Hello".into()),
            ..Default::default()
        }),
    };
    process(&s, a.id, "a-sms", msg, t0()).await;
    let ma = s
        .list_messages(a.id, &MessageFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(ma.total, 1);
    assert!(s.get_message(b.id, ma.items[0].id).await.unwrap().is_none());
    assert_eq!(
        s.list_messages(b.id, &MessageFilter::default(), PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        0
    );

    let vm = voicemail_norm(
        1010,
        5,
        VoicemailUpdate {
            recording_url: Some("https://files.example.com/vm.mp3".into()),
            ..Default::default()
        },
    );
    process(&s, a.id, "a-vm", vm, t0()).await;
    let va = s
        .list_voicemails(a.id, &VoicemailFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(va.total, 1);
    let vid = va.items[0].id;
    assert!(s.get_voicemail(b.id, vid).await.unwrap().is_none());
    assert!(!s.delete_voicemail(b.id, vid).await.unwrap());
    assert!(s.get_voicemail(a.id, vid).await.unwrap().is_some());

    let m = s
        .upsert_mapping(a.id, DialpadId(777), "crm_7", t0())
        .await
        .unwrap();
    assert!(
        s.get_mapping_by_dialpad(b.id, DialpadId(777))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!s.delete_mapping(b.id, m.id).await.unwrap());
    assert!(
        !s.delete_mapping_by_dialpad(b.id, DialpadId(777))
            .await
            .unwrap()
    );
    assert!(
        s.get_mapping_by_dialpad(a.id, DialpadId(777))
            .await
            .unwrap()
            .is_some()
    );

    let out = s
        .inbox_insert(vec![ev(a.id, "x", None, None, t0())])
        .await
        .unwrap();
    let InsertOutcome::Inserted(eid) = out[0] else {
        panic!()
    };
    assert!(s.inbox_get(Some(b.id), eid).await.unwrap().is_none());
    assert!(s.inbox_get(Some(a.id), eid).await.unwrap().is_some());
    assert!(!s.inbox_redrive(Some(b.id), eid, t0()).await.unwrap());
    assert!(
        s.events_since(b.id, 0, 100)
            .await
            .unwrap()
            .iter()
            .all(|e| e.app_id == b.id)
    );
}

/// `(app_id, dedupe_key)` is unique per tenant, also inside one batch; payload ids stay exact.
pub async fn inbox_dedupe_per_tenant(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let b = new_app(&s, "B", "b").await;
    let first = ev(a.id, "k1", Some(1), None, t0());
    let out = s
        .inbox_insert(vec![
            first.clone(),
            ev(a.id, "k1", Some(1), None, t0()),
            ev(b.id, "k1", Some(1), None, t0()),
            ev(a.id, "k2", Some(1), None, t0()),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], InsertOutcome::Inserted(first.id));
    assert_eq!(out[1], InsertOutcome::Duplicate(first.id));
    assert!(matches!(out[2], InsertOutcome::Inserted(_)));
    assert!(matches!(out[3], InsertOutcome::Inserted(_)));
    let again = s
        .inbox_insert(vec![ev(a.id, "k1", Some(1), None, t0())])
        .await
        .unwrap();
    assert_eq!(again[0], InsertOutcome::Duplicate(first.id));
    let got = s.inbox_get(None, first.id).await.unwrap().unwrap();
    assert_eq!(got.status, EventStatus::Pending);
    assert_eq!(got.attempts, 0);
    assert_eq!(
        got.payload.to_value().unwrap()["big"].as_u64(),
        Some(4611686018427387913)
    );
    assert_eq!(got.call_id, Some(DialpadId(1)));
    assert_eq!(got.dedupe_key, "k1");
    let stats = stats(&s).await;
    assert_eq!(stats.unprocessed, 3);
    assert_eq!(stats.oldest_unprocessed_at, Some(t0()));
}

/// Keys of the form `Cti::ingest` gives id-less bodies (64 lowercase hex digits, the body's
/// SHA-256) with event timestamps, and explicit `id:` keys redelivered with another timestamp:
/// a repeated key is a duplicate of the first event with it — across batches, inside one, and
/// through the inline path — and never of another tenant's or another key's event. (SQL stores
/// order their dedupe index by event time for such keys; the outcome must not change.)
pub async fn inbox_dedupe_of_body_hashes(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let b = new_app(&s, "B", "b").await;
    let hash = |n: u8| format!("{n:02x}").repeat(32);
    let ms = 1_767_225_600_000;
    let h1 = ev(a.id, &hash(1), Some(1), Some(ms), t0());
    let h2 = ev(a.id, &hash(2), Some(1), Some(ms), t0());
    let untimed = ev(a.id, &hash(3), None, None, t0());
    let explicit = ev(a.id, "id:evt-7", Some(2), Some(ms), t0());
    let out = s
        .inbox_insert(vec![
            h1.clone(),
            h2.clone(),
            untimed.clone(),
            explicit.clone(),
            ev(a.id, &hash(1), Some(1), Some(ms), t0() + secs(1)),
            ev(b.id, &hash(1), Some(1), Some(ms), t0()),
        ])
        .await
        .unwrap();
    assert_eq!(
        out[..4],
        [h1.id, h2.id, untimed.id, explicit.id].map(InsertOutcome::Inserted)
    );
    assert_eq!(out[4], InsertOutcome::Duplicate(h1.id), "in one batch");
    assert!(
        matches!(out[5], InsertOutcome::Inserted(_)),
        "another tenant"
    );
    // Redeliveries: the same bodies later, and the explicit id with another event time.
    let again = s
        .inbox_insert(vec![
            ev(a.id, &hash(2), Some(1), Some(ms), t0() + secs(60)),
            ev(a.id, &hash(3), None, None, t0() + secs(60)),
            ev(a.id, "id:evt-7", Some(2), Some(ms + 5_000), t0() + secs(60)),
            ev(a.id, "id:evt-7", Some(2), None, t0() + secs(60)),
        ])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![
            InsertOutcome::Duplicate(h2.id),
            InsertOutcome::Duplicate(untimed.id),
            InsertOutcome::Duplicate(explicit.id),
            InsertOutcome::Duplicate(explicit.id),
        ]
    );
    let fresh = ev(a.id, &hash(4), Some(3), Some(ms + 1), t0() + secs(61));
    let done = s
        .inbox_insert_processed(
            &[
                ev(a.id, &hash(1), Some(1), Some(ms), t0() + secs(61)),
                fresh.clone(),
            ],
            vec![
                Some(EventResult::Ignored("ignored: test".into())),
                Some(EventResult::Ignored("ignored: test".into())),
            ],
            Duration::from_secs(30),
            t0() + secs(62),
        )
        .await
        .unwrap();
    assert_eq!(
        done.outcomes,
        vec![
            InsertOutcome::Duplicate(h1.id),
            InsertOutcome::Inserted(fresh.id)
        ],
        "inline path"
    );
    let got = s.inbox_get(None, h1.id).await.unwrap().unwrap();
    assert_eq!(
        got.dedupe_key,
        hash(1),
        "the stored key is the spec's hex digest"
    );
    assert_eq!(got.event_timestamp, Some(ms));
}

/// Claims take a lease; a held event is not handed out again until the lease expires; a stale
/// worker's completion is refused.
pub async fn claim_lease_and_expiry(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    s.inbox_insert(vec![ev(a.id, "k", None, None, t0())])
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let c1 = s.inbox_claim(10, lease, t0()).await.unwrap();
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].status, EventStatus::Processing);
    assert_eq!(c1[0].attempts, 1);
    assert_eq!(c1[0].locked_until, Some(t0() + secs(30)));
    assert!(
        s.inbox_claim(10, lease, t0() + secs(29))
            .await
            .unwrap()
            .is_empty()
    );
    let c2 = s.inbox_claim(10, lease, t0() + secs(31)).await.unwrap();
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].attempts, 2);
    let stale = s
        .inbox_complete(
            c1[0].id,
            1,
            EventResult::Ignored("x".into()),
            t0() + secs(32),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost)), "{stale:?}");
    let stale = s
        .inbox_fail(c1[0].id, 1, "boom", None, t0() + secs(32))
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost)), "{stale:?}");
    s.inbox_complete(
        c2[0].id,
        2,
        EventResult::Ignored("unknown_state".into()),
        t0() + secs(33),
    )
    .await
    .unwrap();
    let e = s.inbox_get(None, c2[0].id).await.unwrap().unwrap();
    assert_eq!(e.status, EventStatus::Ignored);
    assert_eq!(e.processed_at, Some(t0() + secs(33)));
    assert!(
        s.inbox_claim(10, lease, t0() + secs(100))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(stats(&s).await.ignored, 1);
}

/// Failed events wait for their backoff; `None` dead-letters; re-drive resets attempts.
pub async fn retry_backoff_dead_letter_redrive(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    s.inbox_insert(vec![ev(a.id, "k", None, None, t0())])
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let c = s.inbox_claim(10, lease, t0()).await.unwrap();
    s.inbox_fail(c[0].id, 1, "db timeout", Some(t0() + secs(2)), t0())
        .await
        .unwrap();
    let e = s.inbox_get(None, c[0].id).await.unwrap().unwrap();
    assert_eq!(e.status, EventStatus::Failed);
    assert_eq!(e.last_error.as_deref(), Some("db timeout"));
    assert_eq!(e.next_attempt_at, t0() + secs(2));
    assert!(
        s.inbox_claim(10, lease, t0() + secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    let st = stats(&s).await;
    assert_eq!((st.failed, st.unprocessed), (1, 1));
    let c = s.inbox_claim(10, lease, t0() + secs(2)).await.unwrap();
    assert_eq!(c[0].attempts, 2);
    s.inbox_fail(c[0].id, 2, "still broken", None, t0() + secs(3))
        .await
        .unwrap();
    let e = s.inbox_get(None, c[0].id).await.unwrap().unwrap();
    assert_eq!(e.status, EventStatus::Dead);
    assert!(
        s.inbox_claim(10, lease, t0() + secs(1000))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(stats(&s).await.dead, 1);
    assert!(
        s.inbox_redrive(Some(a.id), e.id, t0() + secs(5))
            .await
            .unwrap()
    );
    assert!(
        !s.inbox_redrive(None, e.id, t0() + secs(5)).await.unwrap(),
        "pending is not re-drivable"
    );
    assert!(!s.inbox_redrive(None, Uuid::new_v4(), t0()).await.unwrap());
    let e = s.inbox_get(None, e.id).await.unwrap().unwrap();
    assert_eq!((e.status, e.attempts), (EventStatus::Pending, 0));
    let c = s.inbox_claim(10, lease, t0() + secs(5)).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].attempts, 1);
}

/// Events of one call are handed out one at a time, earliest `event_timestamp` first.
pub async fn per_call_ordering(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let lease = Duration::from_secs(30);
    // arrival order: hangup (ts 300) before ringing (ts 100); plus an unrelated call and an id-less event
    s.inbox_insert(vec![
        ev(a.id, "hangup", Some(7), Some(300), t0()),
        ev(a.id, "ring", Some(7), Some(100), t0() + secs(1)),
        ev(a.id, "other", Some(8), Some(50), t0() + secs(2)),
        ev(a.id, "sms", None, None, t0() + secs(3)),
    ])
    .await
    .unwrap();
    let c = s.inbox_claim(10, lease, t0() + secs(10)).await.unwrap();
    let keys: HashSet<&str> = c.iter().map(|e| e.dedupe_key.as_str()).collect();
    assert_eq!(
        keys,
        HashSet::from(["ring", "other", "sms"]),
        "one event per call, earliest first"
    );
    // call 7 is busy: its second event is not claimable while the lease holds
    assert!(
        s.inbox_claim(10, lease, t0() + secs(11))
            .await
            .unwrap()
            .is_empty()
    );
    let ring = c.iter().find(|e| e.dedupe_key == "ring").unwrap();
    s.inbox_complete(
        ring.id,
        ring.attempts,
        EventResult::Ignored("t".into()),
        t0() + secs(12),
    )
    .await
    .unwrap();
    let c2 = s.inbox_claim(10, lease, t0() + secs(12)).await.unwrap();
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].dedupe_key, "hangup");
}

/// Many workers claiming concurrently never receive the same event twice.
pub async fn concurrent_claims_are_exclusive(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let n = 300;
    let batch: Vec<NewInboxEvent> = (0..n)
        .map(|i| {
            ev(
                a.id,
                &format!("e{i}"),
                if i % 3 == 0 {
                    None
                } else {
                    Some(10_000 + i as u64)
                },
                Some(i),
                t0(),
            )
        })
        .collect();
    s.inbox_insert(batch).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let c = s
                    .inbox_claim(7, Duration::from_secs(300), t0() + secs(1))
                    .await
                    .unwrap();
                if c.is_empty() {
                    break;
                }
                for e in c {
                    s.inbox_complete(
                        e.id,
                        e.attempts,
                        EventResult::Ignored("t".into()),
                        t0() + secs(1),
                    )
                    .await
                    .unwrap();
                    mine.push(e.id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), n as usize, "every event claimed");
    assert_eq!(unique.len(), n as usize, "no event claimed twice");
    assert_eq!(stats(&s).await.ignored, n as u64);
}

/// Completing applies the merge, numbers realtime messages per app from 1 without gaps, and
/// targets the mapped CRM user.
pub async fn complete_applies_and_publishes(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let b = new_app(&s, "B", "b").await;
    s.upsert_mapping(a.id, DialpadId(12345), "crm_1", t0())
        .await
        .unwrap();
    let p1 = process(
        &s,
        a.id,
        "ring",
        call_norm(CtiEvent::CallRinging, 3001, 100, Some(12345)),
        t0(),
    )
    .await;
    assert_eq!(p1.len(), 1);
    assert_eq!((p1[0].seq, p1[0].event.as_str()), (1, "call.ring"));
    assert_eq!(p1[0].target_crm_user.as_deref(), Some("crm_1"));
    assert_eq!(p1[0].payload["call_id"], "3001");
    assert_eq!(p1[0].payload["user_id"], "12345");
    assert_eq!(p1[0].payload["target_crm_user"], "crm_1");
    // hangup without a user id still targets the call's user
    let mut end = call_norm(CtiEvent::CallEnded, 3001, 300, None);
    if let Some(c) = end.call.as_mut() {
        c.from_number = None;
    }
    let p2 = process(&s, a.id, "end", end, t0() + secs(1)).await;
    assert_eq!(p2.len(), 1);
    assert_eq!((p2[0].seq, p2[0].event.as_str()), (2, "call.ended"));
    assert_eq!(p2[0].target_crm_user.as_deref(), Some("crm_1"));
    assert_eq!(p2[0].payload["duration_seconds"], 120);
    // a late ring neither resurrects the call nor publishes anything
    let p3 = process(
        &s,
        a.id,
        "late-ring",
        call_norm(CtiEvent::CallRinging, 3001, 50, Some(12345)),
        t0() + secs(2),
    )
    .await;
    assert!(p3.is_empty());
    let c = s
        .get_call_by_dialpad_id(a.id, DialpadId(3001))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, CallStatus::Ended);
    assert_eq!(c.from_number.as_deref(), Some("+15550001111"));
    assert_eq!(c.duration_seconds, Some(120));
    assert_eq!(c.ended_at, Some(t0() + secs(120)));
    assert_eq!(c.merge_log.first.get(&CallStatus::Ringing), Some(&50));
    // other app numbers independently
    let pb = process(
        &s,
        b.id,
        "ring",
        call_norm(CtiEvent::CallRinging, 1, 1, None),
        t0(),
    )
    .await;
    assert_eq!(pb[0].seq, 1);
    assert_eq!(pb[0].target_crm_user, None);
    let since = s.events_since(a.id, 0, 100).await.unwrap();
    assert_eq!(since.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(since[1].payload, p2[0].payload);
    assert_eq!(s.events_since(a.id, 1, 100).await.unwrap().len(), 1);
    assert_eq!(s.events_since(a.id, 0, 1).await.unwrap().len(), 1);
    let mut heads = s.event_heads().await.unwrap();
    heads.sort();
    let mut want = vec![(a.id, 2), (b.id, 1)];
    want.sort();
    assert_eq!(heads, want);
    assert_eq!(s.oldest_event_seq(a.id).await.unwrap(), Some(1));
    let st = stats(&s).await;
    assert_eq!((st.done, st.unprocessed, st.processing), (4, 0, 0));
}

/// `inbox_complete_batch`: every item gets the result `inbox_complete` would give it, a lost
/// lease in the middle of a batch changes nothing for the others, sequence numbers stay
/// gap-free per app.
pub async fn complete_batch(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let b = new_app(&s, "B", "b").await;
    s.upsert_mapping(a.id, DialpadId(12345), "crm_1", t0())
        .await
        .unwrap();
    let events = vec![
        ev(a.id, "a-10", Some(10), Some(1), t0()),
        ev(a.id, "a-11", Some(11), Some(1), t0() + secs(1)),
        ev(b.id, "b-10", Some(10), Some(1), t0() + secs(2)),
        ev(a.id, "a-none", None, None, t0() + secs(3)),
        ev(a.id, "a-12", Some(12), Some(1), t0() + secs(4)),
    ];
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    s.inbox_insert(events).await.unwrap();
    let now = t0() + secs(10);
    let claimed = s
        .inbox_claim(10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    let attempt = |id: Uuid| claimed.iter().find(|e| e.id == id).unwrap().attempts;
    // The last event's lease is gone before the batch commits.
    s.inbox_fail(ids[4], attempt(ids[4]), "boom", Some(now + secs(60)), now)
        .await
        .unwrap();
    let apply = |id: Uuid, call: u64| Completion {
        event_id: id,
        attempt: attempt(id),
        result: EventResult::Apply(Box::new(call_norm(
            CtiEvent::CallRinging,
            call,
            100,
            Some(12345),
        ))),
    };
    let items = vec![
        apply(ids[0], 10),
        apply(ids[1], 11),
        apply(ids[2], 10),
        Completion {
            event_id: ids[3],
            attempt: attempt(ids[3]),
            result: EventResult::Ignored("ignored: nothing".into()),
        },
        apply(ids[4], 12),
    ];
    let results = s.inbox_complete_batch(items, now).await;
    assert_eq!(results.len(), 5);
    let seqs = |r: &StoreResult<Vec<PublishedEvent>>| -> Vec<(AppId, u64, Option<String>)> {
        r.as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.app_id, p.seq, p.target_crm_user.clone()))
            .collect()
    };
    assert_eq!(seqs(&results[0]), vec![(a.id, 1, Some("crm_1".into()))]);
    assert_eq!(seqs(&results[1]), vec![(a.id, 2, Some("crm_1".into()))]);
    assert_eq!(seqs(&results[2]), vec![(b.id, 1, None)]);
    assert!(results[3].as_ref().unwrap().is_empty());
    assert!(matches!(results[4], Err(StoreError::LeaseLost)));

    for (app, call) in [(a.id, 10), (a.id, 11), (b.id, 10)] {
        let c = s
            .get_call_by_dialpad_id(app, DialpadId(call))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("call {call} of a batch item is missing"));
        assert_eq!(c.status, CallStatus::Ringing);
    }
    assert!(
        s.get_call_by_dialpad_id(a.id, DialpadId(12))
            .await
            .unwrap()
            .is_none(),
        "the item whose lease was lost wrote nothing"
    );
    let statuses: Vec<EventStatus> = inbox_statuses(&s, &ids).await;
    assert_eq!(
        statuses,
        vec![
            EventStatus::Done,
            EventStatus::Done,
            EventStatus::Done,
            EventStatus::Ignored,
            EventStatus::Failed
        ]
    );
    let since = s.events_since(a.id, 0, 100).await.unwrap();
    assert_eq!(since.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);

    // A stale item (its event is already done) fails alone; the rest of the batch commits.
    let more = vec![
        ev(a.id, "a-13", Some(13), Some(1), now),
        ev(b.id, "b-14", Some(14), Some(1), now + secs(1)),
    ];
    let more_ids: Vec<Uuid> = more.iter().map(|e| e.id).collect();
    s.inbox_insert(more).await.unwrap();
    let later = now + secs(5);
    let claimed2 = s
        .inbox_claim(10, Duration::from_secs(30), later)
        .await
        .unwrap();
    let attempt2 = |id: Uuid| claimed2.iter().find(|e| e.id == id).unwrap().attempts;
    let results = s
        .inbox_complete_batch(
            vec![
                Completion {
                    event_id: more_ids[0],
                    attempt: attempt2(more_ids[0]),
                    result: EventResult::Apply(Box::new(call_norm(
                        CtiEvent::CallRinging,
                        13,
                        100,
                        None,
                    ))),
                },
                apply(ids[0], 10),
                Completion {
                    event_id: more_ids[1],
                    attempt: attempt2(more_ids[1]),
                    result: EventResult::Apply(Box::new(call_norm(
                        CtiEvent::CallRinging,
                        14,
                        100,
                        None,
                    ))),
                },
            ],
            later,
        )
        .await;
    assert_eq!(seqs(&results[0]), vec![(a.id, 3, None)]);
    assert!(matches!(results[1], Err(StoreError::LeaseLost)));
    assert_eq!(seqs(&results[2]), vec![(b.id, 2, None)]);
    assert!(
        s.inbox_complete_batch(Vec::new(), later).await.is_empty(),
        "an empty batch is a no-op"
    );
    let st = stats(&s).await;
    assert_eq!((st.done, st.ignored, st.failed), (5, 1, 1));

    // Two events of one SMS (no call id, so one claim may hand out both) and a voicemail in
    // one batch: the later item sees what the earlier one wrote.
    let sms = |status: &str, text: Option<&str>| Normalized {
        event: CtiEvent::SmsReceived,
        call: None,
        voicemail: None,
        message: Some(MessageUpdate {
            dialpad_message_id: Some(DialpadId(9001)),
            direction: Some(Direction::Inbound),
            text: text.map(Into::into),
            dialpad_user_id: Some(DialpadId(12345)),
            message_status: Some(status.into()),
            ..Default::default()
        }),
    };
    let vm = Normalized {
        event: CtiEvent::VoicemailReceived,
        call: None,
        voicemail: Some(VoicemailUpdate {
            dialpad_call_id: Some(DialpadId(10)),
            recording_url: Some("https://files.example.com/vm10.mp3".into()),
            ..Default::default()
        }),
        message: None,
    };
    let third = vec![
        ev(a.id, "sms-1", None, None, later),
        ev(a.id, "sms-2", None, None, later + secs(1)),
        ev(a.id, "vm-10", Some(10), Some(2), later + secs(2)),
    ];
    let third_ids: Vec<Uuid> = third.iter().map(|e| e.id).collect();
    s.inbox_insert(third).await.unwrap();
    let last = later + secs(10);
    let claimed3 = s
        .inbox_claim(10, Duration::from_secs(30), last)
        .await
        .unwrap();
    assert_eq!(claimed3.len(), 3);
    let attempt3 = |id: Uuid| claimed3.iter().find(|e| e.id == id).unwrap().attempts;
    let results = s
        .inbox_complete_batch(
            vec![
                Completion {
                    event_id: third_ids[0],
                    attempt: attempt3(third_ids[0]),
                    result: EventResult::Apply(Box::new(sms("pending", Some("Hi")))),
                },
                Completion {
                    event_id: third_ids[1],
                    attempt: attempt3(third_ids[1]),
                    result: EventResult::Apply(Box::new(sms("delivered", None))),
                },
                Completion {
                    event_id: third_ids[2],
                    attempt: attempt3(third_ids[2]),
                    result: EventResult::Apply(Box::new(vm)),
                },
            ],
            last,
        )
        .await;
    let published: Vec<u64> = results
        .iter()
        .flat_map(|r| r.as_ref().unwrap().iter().map(|p| p.seq))
        .collect();
    let mut sorted = published.clone();
    sorted.sort_unstable();
    assert_eq!(published, sorted, "sequence numbers follow the batch order");
    assert!(published.iter().all(|seq| *seq > 3));
    let msgs = s
        .list_messages(a.id, &MessageFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(msgs.total, 1, "one message row for both events");
    assert_eq!(msgs.items[0].message_status.as_deref(), Some("delivered"));
    assert_eq!(msgs.items[0].text.as_deref(), Some("Hi"));
    let vms = s
        .list_voicemails(a.id, &VoicemailFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(vms.total, 1);
    assert_eq!(vms.items[0].dialpad_call_id, Some(DialpadId(10)));
    assert_eq!(
        vms.items[0].recording_url.as_deref(),
        Some("https://files.example.com/vm10.mp3")
    );
    let since = s.events_since(a.id, 3, 100).await.unwrap();
    assert_eq!(since.iter().map(|e| e.seq).collect::<Vec<_>>(), published);
}

async fn inbox_statuses(s: &Arc<dyn Store>, ids: &[Uuid]) -> Vec<EventStatus> {
    let mut out = Vec::new();
    for id in ids {
        out.push(s.inbox_get(None, *id).await.unwrap().unwrap().status);
    }
    out
}

/// Ordering `started_at DESC NULLS LAST, created_at DESC`, filters, offset/limit and totals.
pub async fn call_pagination_and_filters(s: Arc<dyn Store>) {
    let a = new_app(&s, "F", "f").await;
    for (i, call) in [4001u64, 4002, 4003].iter().enumerate() {
        let mut n = call_norm(CtiEvent::CallStarted, *call, 10, None);
        if let Some(c) = n.call.as_mut() {
            c.started_at = Some(t0() + secs(i as i64 + 1));
            c.direction = Some(if i == 0 {
                Direction::Outbound
            } else {
                Direction::Inbound
            });
        }
        process(&s, a.id, &format!("s{call}"), n, t0() + secs(i as i64)).await;
    }
    let mut no_start = call_norm(CtiEvent::CallEnded, 4004, 10, None);
    if let Some(c) = no_start.call.as_mut() {
        c.started_at = None;
        c.to_number = Some("+15550009999".into());
    }
    process(&s, a.id, "e4004", no_start, t0() + secs(9)).await;
    let ids = |p: &Page<Call>| {
        p.items
            .iter()
            .map(|c| c.dialpad_call_id.0)
            .collect::<Vec<_>>()
    };
    let all = CallFilter::default();
    let p = s
        .list_calls(a.id, &all, PageRequest::new(2, 0))
        .await
        .unwrap();
    assert_eq!((ids(&p), p.total), (vec![4003, 4002], 4));
    assert!(p.has_more(PageRequest::new(2, 0)));
    let p = s
        .list_calls(a.id, &all, PageRequest::new(2, 2))
        .await
        .unwrap();
    assert_eq!(ids(&p), vec![4001, 4004], "NULL started_at sorts last");
    let p = s
        .list_calls(a.id, &all, PageRequest::new(50, 4))
        .await
        .unwrap();
    assert!(p.items.is_empty());
    assert_eq!(p.total, 4);
    let live = CallFilter {
        statuses: Some(vec![CallStatus::Ringing, CallStatus::Active]),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_calls(a.id, &live, PageRequest::new(50, 0))
            .await
            .unwrap()),
        vec![4003, 4002, 4001]
    );
    let ended = CallFilter {
        statuses: Some(vec![CallStatus::Ended]),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_calls(a.id, &ended, PageRequest::new(50, 0))
            .await
            .unwrap()),
        vec![4004]
    );
    let outb = CallFilter {
        direction: Some(Direction::Outbound),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_calls(a.id, &outb, PageRequest::new(50, 0))
            .await
            .unwrap()),
        vec![4001]
    );
    let to = CallFilter {
        to: Some("+15550009999".into()),
        ..Default::default()
    };
    assert_eq!(
        s.list_calls(a.id, &to, PageRequest::new(50, 0))
            .await
            .unwrap()
            .total,
        1
    );
    let both = CallFilter {
        from: Some("+15550001111".into()),
        direction: Some(Direction::Inbound),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_calls(a.id, &both, PageRequest::new(50, 0))
            .await
            .unwrap()),
        vec![4003, 4002, 4004]
    );
    let c = s
        .get_call_by_dialpad_id(a.id, DialpadId(4003))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get_call(a.id, c.id).await.unwrap().unwrap(), c);
    assert!(s.get_call(a.id, Uuid::nil()).await.unwrap().is_none());
}

/// Messages (upsert by Dialpad id, filters, status updates) and voicemails (one per call).
pub async fn message_and_voicemail_queries(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let sms = |id: u64, dir: Direction, user: Option<u64>, sent: i64, status: &str| Normalized {
        event: if dir == Direction::Inbound {
            CtiEvent::SmsReceived
        } else {
            CtiEvent::SmsSent
        },
        call: None,
        voicemail: None,
        message: Some(MessageUpdate {
            dialpad_message_id: Some(DialpadId(id)),
            direction: Some(dir),
            from_number: Some("+15550003333".into()),
            to_number: Some("+15550004444".into()),
            to_numbers: vec!["+15550004444".into(), "+15550005555".into()],
            text: Some("Hi ☎".into()),
            dialpad_user_id: user.map(DialpadId),
            sent_at: Some(t0() + secs(sent)),
            message_status: Some(status.into()),
        }),
    };
    let p = process(
        &s,
        a.id,
        "m1",
        sms(5001, Direction::Inbound, Some(12345), 1, "pending"),
        t0(),
    )
    .await;
    assert_eq!(p[0].event, "sms.received");
    let p = process(
        &s,
        a.id,
        "m2",
        sms(5002, Direction::Outbound, None, 2, "pending"),
        t0(),
    )
    .await;
    assert_eq!(p[0].event, "sms.sent");
    // delivery update of a known message: status changes, one sms.delivered
    let mut upd = sms(5002, Direction::Outbound, None, 2, "success");
    upd.event = CtiEvent::SmsDelivered;
    let p = process(&s, a.id, "m2-status", upd, t0()).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].event, "sms.delivered");
    let all = s
        .list_messages(a.id, &MessageFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(all.total, 2);
    assert_eq!(all.items[0].dialpad_message_id, DialpadId(5002));
    assert_eq!(all.items[0].message_status.as_deref(), Some("success"));
    assert_eq!(all.items[1].text.as_deref(), Some("Hi ☎"));
    assert_eq!(all.items[1].to_numbers.len(), 2);
    let f = MessageFilter {
        direction: Some(Direction::Outbound),
        ..Default::default()
    };
    assert_eq!(
        s.list_messages(a.id, &f, PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        1
    );
    let f = MessageFilter {
        dialpad_user_id: Some(DialpadId(12345)),
        ..Default::default()
    };
    let only = s
        .list_messages(a.id, &f, PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(only.total, 1);
    assert_eq!(
        s.get_message(a.id, only.items[0].id)
            .await
            .unwrap()
            .unwrap()
            .dialpad_message_id,
        DialpadId(5001)
    );

    let vm = |url: &str, transcript: Option<&str>, user: u64| {
        voicemail_norm(
            1010,
            9,
            VoicemailUpdate {
                dialpad_user_id: Some(DialpadId(user)),
                recording_url: Some(url.into()),
                transcript: transcript.map(str::to_string),
                duration_seconds: Some(30),
                ..Default::default()
            },
        )
    };
    let p = process(
        &s,
        a.id,
        "vm1",
        vm("https://f.example/1.mp3", None, 12345),
        t0(),
    )
    .await;
    assert_eq!(
        p.iter().filter(|e| e.event == "voicemail.received").count(),
        1
    );
    process(
        &s,
        a.id,
        "vm2",
        vm("https://f.example/1.mp3", Some("Please call back"), 12345),
        t0() + secs(1),
    )
    .await;
    let v = s
        .list_voicemails(a.id, &VoicemailFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(v.total, 1, "one voicemail per (app, call)");
    assert_eq!(v.items[0].transcript.as_deref(), Some("Please call back"));
    assert_eq!(v.items[0].duration_seconds, Some(30));
    let call = s
        .get_call_by_dialpad_id(a.id, DialpadId(1010))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call.status, CallStatus::Voicemail);
    assert!(call.is_voicemail);
    let f = VoicemailFilter {
        dialpad_user_id: Some(DialpadId(999)),
    };
    assert_eq!(
        s.list_voicemails(a.id, &f, PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        0
    );
    assert!(s.delete_voicemail(a.id, v.items[0].id).await.unwrap());
    assert!(!s.delete_voicemail(a.id, v.items[0].id).await.unwrap());
}

/// Mapping upsert keeps the row id; batch is all-or-nothing; unknown app is `NotFound`.
pub async fn mappings(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let m1 = s
        .upsert_mapping(a.id, DialpadId(777), "crm_7", t0())
        .await
        .unwrap();
    let m2 = s
        .upsert_mapping(a.id, DialpadId(777), "crm_8", t0() + secs(1))
        .await
        .unwrap();
    assert_eq!(m1.id, m2.id);
    assert_eq!(m2.crm_user_id, "crm_8");
    assert_eq!(m2.updated_at, t0() + secs(1));
    assert_eq!(
        s.get_mapping_by_crm(a.id, "crm_8")
            .await
            .unwrap()
            .unwrap()
            .id,
        m1.id
    );
    assert!(
        s.get_mapping_by_dialpad(a.id, DialpadId(779))
            .await
            .unwrap()
            .is_none()
    );
    let big = DialpadId(i64::MAX as u64);
    let n = s
        .upsert_mappings(
            a.id,
            &[(DialpadId(801), "crm_a".into()), (big, "crm_b".into())],
            t0() + secs(2),
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        s.get_mapping_by_dialpad(a.id, big)
            .await
            .unwrap()
            .unwrap()
            .crm_user_id,
        "crm_b"
    );
    let page = s.list_mappings(a.id, PageRequest::new(2, 0)).await.unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.len(), 2);
    assert_eq!(s.upsert_mappings(a.id, &[], t0()).await.unwrap(), 0);
    let err = s
        .upsert_mapping(AppId::new(), DialpadId(1), "x", t0())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    let err = s
        .upsert_mappings(AppId::new(), &[(DialpadId(1), "x".into())], t0())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert!(s.delete_mapping(a.id, m1.id).await.unwrap());
    assert!(!s.delete_mapping(a.id, m1.id).await.unwrap());
    assert!(
        s.delete_mapping_by_dialpad(a.id, DialpadId(801))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_mapping_by_dialpad(a.id, DialpadId(801))
            .await
            .unwrap()
    );
}

/// Connections (one per app, unique org), org routing only to active apps, webhooks, subscriptions.
pub async fn dialpad_connections_webhooks_subscriptions(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let b = new_app(&s, "B", "b").await;
    let conn = |app: AppId, org: Option<u64>| DialpadConnection {
        id: Uuid::new_v4(),
        app_id: app,
        dialpad_org_id: org.map(DialpadId),
        access_token_enc: "v1:k1:ciphertext".into(),
        refresh_token_enc: "v1:k1:ciphertext2".into(),
        token_expires_at: t0() + secs(3600),
        environment: DialpadEnvironment::Sandbox,
        status: "active".into(),
        created_at: t0(),
        updated_at: t0(),
    };
    let org = 4993497561530368u64;
    s.upsert_connection(conn(a.id, None)).await.unwrap();
    let c = s.upsert_connection(conn(a.id, Some(org))).await.unwrap();
    let got = s.get_connection(a.id).await.unwrap().unwrap();
    assert_eq!(got.dialpad_org_id, Some(DialpadId(org)));
    assert_eq!(got.access_token_enc, c.access_token_enc);
    assert_eq!(got.token_expires_at, t0() + secs(3600));
    assert_eq!(s.find_app_by_org(DialpadId(org)).await.unwrap(), Some(a.id));
    let err = s
        .upsert_connection(conn(b.id, Some(org)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(matches!(
        s.upsert_connection(conn(AppId::new(), None))
            .await
            .unwrap_err(),
        StoreError::NotFound
    ));
    s.update_app(
        a.id,
        AppPatch {
            is_active: Some(false),
            name: None,
        },
        t0(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.find_app_by_org(DialpadId(org)).await.unwrap(),
        None,
        "inactive apps never route"
    );
    assert!(s.delete_connection(a.id).await.unwrap());
    assert!(!s.delete_connection(a.id).await.unwrap());

    let hook = |app: AppId, id: u64, at: i64| DialpadWebhook {
        id: Uuid::new_v4(),
        app_id: app,
        webhook_id: DialpadId(id),
        hook_url: format!("https://cti.test/webhooks/dialpad/{app}"),
        secret_enc: Some("v1:k1:secret".into()),
        algo: Some("HS256".into()),
        signature_type: Some("jwt".into()),
        created_at: t0() + secs(at),
        updated_at: t0() + secs(at),
    };
    s.upsert_webhook(hook(b.id, 193, 1)).await.unwrap();
    s.upsert_webhook(hook(b.id, 194, 2)).await.unwrap();
    s.upsert_webhook(hook(b.id, 193, 3)).await.unwrap();
    let hooks = s.list_webhooks(b.id).await.unwrap();
    assert_eq!(
        hooks.iter().map(|h| h.webhook_id.0).collect::<Vec<_>>(),
        vec![193, 194]
    );
    assert_eq!(hooks[0].secret_enc.as_deref(), Some("v1:k1:secret"));
    assert!(s.list_webhooks(a.id).await.unwrap().is_empty());
    assert_eq!(
        s.get_webhook(DialpadId(194)).await.unwrap().unwrap().app_id,
        b.id
    );
    assert!(s.delete_webhook(DialpadId(194)).await.unwrap());
    assert!(!s.delete_webhook(DialpadId(194)).await.unwrap());
    assert!(
        s.get_webhook(DialpadId(999_999_999))
            .await
            .unwrap()
            .is_none()
    );

    let sub = DialpadSubscription {
        id: Uuid::new_v4(),
        app_id: b.id,
        webhook_id: DialpadId(193),
        kind: SubscriptionKind::Call,
        dialpad_subscription_id: DialpadId(555),
        config: serde_json::json!({"call_states": ["ringing", "hangup"]}),
        created_at: t0(),
    };
    s.insert_subscription(sub.clone()).await.unwrap();
    let subs = s.list_subscriptions(b.id).await.unwrap();
    assert_eq!(subs, vec![sub]);
}

/// Retention removes only finished inbox rows and old outbox rows.
pub async fn purge_and_retention(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    process(
        &s,
        a.id,
        "old",
        call_norm(CtiEvent::CallRinging, 1, 1, None),
        t0(),
    )
    .await;
    process(
        &s,
        a.id,
        "new",
        call_norm(CtiEvent::CallStarted, 1, 2, None),
        t0() + secs(100),
    )
    .await;
    s.inbox_insert(vec![ev(a.id, "pending-old", None, None, t0())])
        .await
        .unwrap();
    assert_eq!(s.inbox_purge(t0() + secs(50)).await.unwrap(), 1);
    let st = stats(&s).await;
    assert_eq!((st.done, st.unprocessed), (1, 1));
    // after purge the dedupe key can be reused (documented retention trade-off)
    assert_eq!(s.events_purge(t0() + secs(50)).await.unwrap(), 1);
    assert_eq!(s.oldest_event_seq(a.id).await.unwrap(), Some(2));
    assert_eq!(s.events_since(a.id, 0, 10).await.unwrap().len(), 1);
    assert_eq!(s.event_heads().await.unwrap(), vec![(a.id, 2)]);
}

/// `inbox_insert_processed` across batches: a later batch updates the voicemail and the
/// message an earlier one stored (one record each, the new fields over the old ones) rather
/// than adding a second.
pub async fn insert_processed_updates_records(s: Arc<dyn Store>) {
    if !s.processes_inline() {
        return;
    }
    let a = new_app(&s, "A", "a").await;
    let voicemail = |transcript: Option<&str>| {
        voicemail_norm(
            1010,
            9,
            VoicemailUpdate {
                recording_url: Some("https://f.example/1.mp3".into()),
                transcript: transcript.map(str::to_string),
                duration_seconds: transcript.is_none().then_some(30),
                ..Default::default()
            },
        )
    };
    let sms = |event: CtiEvent, status: &str| Normalized {
        event,
        call: None,
        voicemail: None,
        message: Some(MessageUpdate {
            dialpad_message_id: Some(DialpadId(5002)),
            direction: Some(Direction::Outbound),
            text: (status == "pending").then(|| "Hi".to_string()),
            message_status: Some(status.into()),
            ..Default::default()
        }),
    };
    let apply = |n: Normalized| Some(EventResult::Apply(Box::new(n)));
    for (round, (vm, message)) in [
        (voicemail(None), sms(CtiEvent::SmsSent, "pending")),
        (
            voicemail(Some("Please call back")),
            sms(CtiEvent::SmsDelivered, "success"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let at = t0() + secs(round as i64);
        let events = [
            ev(a.id, &format!("vm{round}"), Some(1010), None, at),
            ev(a.id, &format!("sms{round}"), None, None, at),
        ];
        let done = s
            .inbox_insert_processed(
                &events,
                vec![apply(vm), apply(message)],
                Duration::from_secs(30),
                at,
            )
            .await
            .unwrap();
        assert_eq!(done.processed, vec![true, true], "round {round}");
    }
    let vms = s
        .list_voicemails(a.id, &VoicemailFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(vms.total, 1, "one voicemail per (app, call)");
    let v = &vms.items[0];
    assert_eq!(v.transcript.as_deref(), Some("Please call back"));
    assert_eq!(v.duration_seconds, Some(30));
    assert_eq!(v.recording_url.as_deref(), Some("https://f.example/1.mp3"));
    let msgs = s
        .list_messages(a.id, &MessageFilter::default(), PageRequest::new(10, 0))
        .await
        .unwrap();
    assert_eq!(msgs.total, 1, "one message per (app, Dialpad message)");
    let m = &msgs.items[0];
    assert_eq!(m.message_status.as_deref(), Some("success"));
    assert_eq!(m.text.as_deref(), Some("Hi"));
}

/// `inbox_insert_processed`: a store that processes inline completes new events in event-time
/// order, except those of a call with an older unfinished event and duplicates; the default
/// only inserts (everything new stays pending).
pub async fn insert_processed(s: Arc<dyn Store>) {
    let a = new_app(&s, "A", "a").await;
    let lease = Duration::from_secs(30);
    // Call 1 already has an unfinished event.
    let older = ev(a.id, "a", Some(1), Some(1), t0());
    s.inbox_insert(vec![older.clone()]).await.unwrap();
    let b = ev(a.id, "b", Some(1), Some(2), t0() + secs(1));
    let c = ev(a.id, "c", Some(2), Some(4), t0() + secs(2));
    let c_again = ev(a.id, "c", Some(2), Some(4), t0() + secs(3));
    let c_earlier = ev(a.id, "c0", Some(2), Some(3), t0() + secs(3));
    let sms = ev(a.id, "d", None, None, t0() + secs(4));
    let ring =
        |call, ms| EventResult::Apply(Box::new(call_norm(CtiEvent::CallRinging, call, ms, None)));
    let started = EventResult::Apply(Box::new(call_norm(CtiEvent::CallStarted, 2, 4, None)));
    let done = s
        .inbox_insert_processed(
            &[
                b.clone(),
                c.clone(),
                c_again.clone(),
                c_earlier.clone(),
                sms.clone(),
            ],
            vec![
                Some(ring(1, 2)),
                Some(started),
                Some(ring(2, 4)),
                Some(ring(2, 3)),
                Some(EventResult::Ignored("ignored: test".into())),
            ],
            lease,
            t0() + secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        done.outcomes,
        vec![
            InsertOutcome::Inserted(b.id),
            InsertOutcome::Inserted(c.id),
            InsertOutcome::Duplicate(c.id),
            InsertOutcome::Inserted(c_earlier.id),
            InsertOutcome::Inserted(sms.id),
        ]
    );
    let status = |id: Uuid| {
        let s = s.clone();
        async move { s.inbox_get(None, id).await.unwrap().unwrap() }
    };
    if !s.processes_inline() {
        assert_eq!(done.processed, vec![false; 5]);
        assert!(done.published.is_empty());
        for id in [b.id, c.id, c_earlier.id, sms.id] {
            assert_eq!(status(id).await.status, EventStatus::Pending);
        }
        return;
    }
    assert_eq!(done.processed, vec![false, true, false, true, true]);
    // Call 2's two events in event-time order (ring at 3, then started at 4), one seq each;
    // call 1 untouched.
    let published: Vec<(u64, &str)> = done
        .published
        .iter()
        .map(|p| (p.seq, p.event.as_str()))
        .collect();
    assert_eq!(published, vec![(1, "call.ring"), (2, "call.started")]);
    let call2 = s.get_call_by_dialpad_id(a.id, DialpadId(2)).await.unwrap();
    assert_eq!(call2.map(|c| c.status), Some(CallStatus::Active));
    assert!(
        s.get_call_by_dialpad_id(a.id, DialpadId(1))
            .await
            .unwrap()
            .is_none()
    );
    let (eb, ec, ed) = (status(b.id).await, status(c.id).await, status(sms.id).await);
    assert_eq!((eb.status, eb.attempts), (EventStatus::Pending, 0));
    assert_eq!((ec.status, ec.attempts), (EventStatus::Done, 1));
    assert_eq!(ed.status, EventStatus::Ignored);
    // Finished like a completion: processed now, no lease left, the ignore reason recorded.
    let processed = Some(t0() + secs(5));
    assert_eq!((ec.processed_at, ec.locked_until), (processed, None));
    assert_eq!(
        (ed.attempts, ed.processed_at, ed.locked_until),
        (1, processed, None)
    );
    assert_eq!(ed.last_error.as_deref(), Some("ignored: test"));
    assert_eq!(eb.processed_at, None);
    assert_eq!(s.events_since(a.id, 0, 10).await.unwrap().len(), 2);
    // The processor then hands out call 1's events oldest first.
    let claimed = s.inbox_claim(10, lease, t0() + secs(6)).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![older.id]
    );
}
