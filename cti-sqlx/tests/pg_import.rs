//! Import of an ORIGINAL Node-server database (spec §7.1 DDL, built here in a scratch schema)
//! into a `PgStore`: ids kept, legacy bcrypt keys still authenticate, pending events become
//! inbox rows, plaintext secrets encrypted (or skipped without a key), originals untouched,
//! re-runs idempotent.
#![allow(clippy::type_complexity)]

mod pg_support;

use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use cti_core::model::*;
use cti_core::normalize::{CallUpdate, CtiEvent, Normalized};
use cti_core::secrets::DataCipher;
use cti_core::store::*;
use cti_sqlx::import::{ImportOptions, ImportReport, from_original};
use cti_sqlx::pg::PgStore;
use pg_support::TestDb;
use uuid::Uuid;

/// The original schema: `DB_Schema.sql` + `migrations/006_dialpad_webhooks.sql` (spec §7.1).
const ORIGINAL_DDL: &str = include_str!("fixtures/original_schema.sql");

const LEGACY_KEY: &str = "raw_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Original {
    app_a: Uuid,
    app_b: Uuid,
    audit: [Uuid; 3],
    mapping: Uuid,
    call_ended: Uuid,
    call_odd_status: Uuid,
    call_active: Uuid,
    msg_array: Uuid,
    vm_old: Uuid,
    vm_new: Uuid,
    ev_done: Uuid,
    ev_pending_keyed: Uuid,
    ev_pending_anon: Uuid,
    hook: Uuid,
}

fn ids<const N: usize>() -> [Uuid; N] {
    std::array::from_fn(|_| Uuid::new_v4())
}

/// Builds the original schema in `source` and fills it with rows shaped like the original's.
async fn build_original(db: &TestDb, source: &str, bcrypt_hash: &str) -> Original {
    let mut c = db.conn().await;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{source}\"; SET search_path TO \"{source}\";"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::raw_sql(ORIGINAL_DDL).execute(&mut c).await.unwrap();
    let [app_a, app_b] = ids();
    let audit = ids::<3>();
    let [
        mapping,
        call_ended,
        call_odd_status,
        call_active,
        msg_array,
        msg_plain,
    ] = ids();
    let [
        vm_old,
        vm_new,
        vm_nocall,
        ev_done,
        ev_pending_keyed,
        ev_pending_anon,
        ev_orphan,
    ] = ids();
    let [conn_old, conn_new, hook] = ids();
    let stmts: Vec<(&str, Vec<Uuid>)> = vec![
        (
            "INSERT INTO apps (id, name, api_key, is_active, api_key_rotated_at, created_at, updated_at) VALUES
             ($1, 'Acme', NULL, true, '2025-02-01 10:00:00', '2025-01-15 09:00:00', '2025-02-01 10:00:00'),
             ($2, 'Gone', NULL, false, NULL, '2025-01-16 09:00:00', '2025-01-16 09:00:00')",
            vec![app_a, app_b],
        ),
        (
            "INSERT INTO api_key_audit_log (id, app_id, action, old_key_hint, new_key_hint, performed_at, created_at) VALUES
             ($1, $4, 'created', NULL, '$2b$10$ab...wxyz', '2025-01-15 09:00:00', '2025-01-15 09:00:00'),
             ($2, $4, 'rotated', '$2b$10$ab...wxyz', '$2b$10$cd...qrst', '2025-02-01 10:00:00', '2025-02-01 10:00:00'),
             ($3, $5, 'revoked', '$2b$10$ef...mnop', NULL, '2025-01-17 09:00:00', '2025-01-17 09:00:00')",
            vec![audit[0], audit[1], audit[2], app_a, app_b],
        ),
        (
            "INSERT INTO dialpad_user_mappings (id, app_id, dialpad_user_id, crm_user_id) VALUES ($1, $2, 4611686018427387913, 'crm_42')",
            vec![mapping, app_a],
        ),
        (
            "INSERT INTO dialpad_users (dialpad_user_id, app_id, name) VALUES (77, $1, 'unused')",
            vec![app_a],
        ),
        (
            "INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number, status, dialpad_user_id,
                                started_at, ended_at, duration_seconds, is_voicemail, voicemail_transcript, raw_payload, created_at) VALUES
             ($1, $4, 1001, 'inbound', '+15550001111', '+15550002222', 'ended', 4611686018427387913,
              '2025-03-01 12:00:00', '2025-03-01 12:02:00', 120, false, NULL, '{\"state\":\"hangup\"}', '2025-03-01 12:00:00'),
             ($2, $4, 1002, 'outbound', '+15550002222', '+15550003333', 'completed', NULL,
              '2025-03-02 12:00:00', NULL, NULL, false, NULL, NULL, '2025-03-02 12:00:00'),
             ($3, $4, 1003, 'inbound', '+15550004444', '+15550002222', 'active', NULL,
              '2025-03-03 12:00:00', NULL, NULL, true, 'call me', NULL, '2025-03-03 12:00:00')",
            vec![call_ended, call_odd_status, call_active, app_a],
        ),
        (
            "INSERT INTO messages (id, app_id, dialpad_message_id, direction, from_number, to_number, text, sent_at) VALUES
             ($1, $3, 5001, 'inbound', '+15550001111', '{\"+15550002222\",\"+15550003333\"}', 'Hi', '2025-03-01 12:00:00'),
             ($2, $3, 5002, 'outbound', '+15550002222', '+15550001111', 'Yo', '2025-03-01 12:01:00')",
            vec![msg_array, msg_plain, app_a],
        ),
        (
            "INSERT INTO voicemails (id, app_id, dialpad_call_id, dialpad_user_id, recording_url, transcript, duration_seconds, created_at, updated_at) VALUES
             ($1, $4, 1001, 12345, 'https://vm/old.mp3', NULL, 10, '2025-03-01 12:03:00', '2025-03-01 12:03:00'),
             ($2, $4, 1001, 12345, 'https://vm/new.mp3', 'hello', 12, '2025-03-01 12:04:00', '2025-03-01 12:05:00'),
             ($3, $4, NULL, 12345, 'https://vm/anon.mp3', NULL, 5, '2025-03-01 12:06:00', '2025-03-01 12:06:00')",
            vec![vm_old, vm_new, vm_nocall, app_a],
        ),
        (
            "INSERT INTO webhook_events (id, app_id, event_type, dialpad_event_id, payload, processed_at, received_at) VALUES
             ($1, $5, 'call.ring', 'evt-1', '{\"call_id\": 1001, \"state\": \"ringing\"}', '2025-03-01 12:00:01', '2025-03-01 12:00:00'),
             ($2, $5, 'hangup', 'evt-2', '{\"call_id\": 1003, \"state\": \"hangup\", \"event_timestamp\": 1741003500000}', NULL, '2025-03-03 12:05:00'),
             ($3, $5, NULL, NULL, '{\"id\": 5003, \"direction\": \"inbound\", \"text\": \"late\"}', NULL, '2025-03-03 12:06:00'),
             ($4, NULL, 'call.ring', 'evt-orphan', '{\"call_id\": 1}', NULL, '2025-03-03 12:07:00')",
            vec![ev_done, ev_pending_keyed, ev_pending_anon, ev_orphan, app_a],
        ),
        (
            "INSERT INTO dialpad_connections (id, app_id, dialpad_org_id, access_token, refresh_token, token_expires_at, environment, created_at, updated_at) VALUES
             ($1, $3, 4993497561530368, 'old-access', 'old-refresh', '2025-03-01 00:00:00', 'production', '2025-01-01 00:00:00', '2025-01-01 00:00:00'),
             ($2, $3, 4993497561530368, 'new-access', 'new-refresh', '2025-04-01 00:00:00', 'production', '2025-02-01 00:00:00', '2025-02-01 00:00:00')",
            vec![conn_old, conn_new, app_a],
        ),
        (
            "INSERT INTO dialpad_webhooks (id, app_id, webhook_id, hook_url, secret, algo, signature_type) VALUES
             ($1, $2, 193, 'https://old.example/webhooks/dialpad', 'plain-secret', 'HS256', 'jwt')",
            vec![hook, app_a],
        ),
    ];
    for (sql, binds) in stmts {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b);
        }
        q.execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }
    sqlx::query("UPDATE apps SET api_key = $1 WHERE id = $2")
        .bind(bcrypt_hash)
        .bind(app_a)
        .execute(&mut c)
        .await
        .unwrap();
    Original {
        app_a,
        app_b,
        audit,
        mapping,
        call_ended,
        call_odd_status,
        call_active,
        msg_array,
        vm_old,
        vm_new,
        ev_done,
        ev_pending_keyed,
        ev_pending_anon,
        hook,
    }
}

async fn source_counts(db: &TestDb, source: &str) -> Vec<i64> {
    let mut c = db.conn().await;
    let mut out = Vec::new();
    for t in [
        "apps",
        "api_key_audit_log",
        "calls",
        "messages",
        "voicemails",
        "webhook_events",
        "dialpad_connections",
        "dialpad_webhooks",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{source}\".{t}"))
            .fetch_one(&mut c)
            .await
            .unwrap();
        out.push(n);
    }
    out
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
    Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap(),
    )
}

async fn apply(
    s: &PgStore,
    app: AppId,
    key: &str,
    event: CtiEvent,
    call: u64,
    ms: i64,
) -> Vec<PublishedEvent> {
    let now = Utc::now();
    s.inbox_insert(vec![NewInboxEvent {
        id: Uuid::new_v4(),
        app_id: app,
        dedupe_key: key.into(),
        event_type: None,
        call_id: Some(DialpadId(call)),
        state: None,
        event_timestamp: Some(ms),
        payload: serde_json::json!({}).into(),
        received_at: now,
    }])
    .await
    .unwrap();
    let n = Normalized {
        call: Some(CallUpdate {
            dialpad_call_id: Some(DialpadId(call)),
            status: event.call_status(),
            event_ms: ms,
            ..Default::default()
        }),
        event,
        voicemail: None,
        message: None,
    };
    let claimed = s
        .inbox_claim(
            50,
            Duration::from_secs(30),
            now + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    let e = claimed
        .iter()
        .find(|e| e.dedupe_key == key)
        .unwrap_or_else(|| {
            panic!(
                "not claimed: {:?}",
                claimed
                    .iter()
                    .map(|e| (&e.dedupe_key, e.call_id, e.status))
                    .collect::<Vec<_>>()
            )
        });
    s.inbox_complete(e.id, e.attempts, EventResult::Apply(Box::new(n)), now)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_an_original_database_in_place() {
    let Some(db) = TestDb::new("imp").await else {
        return;
    };
    let Some(src_db) = TestDb::new("orig").await else {
        return;
    };
    let source = src_db.schema.clone(); // dropped with src_db
    let hash = bcrypt::hash(LEGACY_KEY, 4).unwrap();
    let o = build_original(&src_db, &source, &hash).await;
    let before = source_counts(&db, &source).await;

    let store = db.store().await;
    let cipher = DataCipher::new(vec![("k1".into(), [7u8; 32])]).unwrap();
    let opts = ImportOptions {
        source_schema: source.clone(),
        cipher: Some(&cipher),
        ..ImportOptions::default()
    };
    let report = from_original(&store, &opts).await.unwrap();
    assert_eq!(
        report,
        ImportReport {
            apps: 2,
            legacy_keys: 1,
            audit_rows: 3,
            mappings: 1,
            calls: 3,
            calls_status_remapped: 1,
            messages: 2,
            voicemails: 3,
            voicemails_unlinked: 1,
            events_pending: 2,
            events_done: 1,
            events_without_app: 1,
            connections: 1,
            connections_skipped: 0,
            connections_org_dropped: 0,
            webhooks: 1,
            webhook_secrets_encrypted: 1,
            webhook_secrets_skipped: 0,
            dialpad_users_ignored: 1,
        }
    );
    assert_eq!(
        source_counts(&db, &source).await,
        before,
        "original tables untouched"
    );

    // Apps keep their ids; the bcrypt key still authenticates through legacy_keys().
    let (a, b) = (AppId(o.app_a), AppId(o.app_b));
    let app = store.get_app(a).await.unwrap().unwrap();
    assert!(app.is_active && app.has_key);
    assert_eq!(app.created_at, utc(2025, 1, 15, 9, 0));
    assert_eq!(app.api_key_issued_at, Some(utc(2025, 2, 1, 10, 0)));
    let gone = store.get_app(b).await.unwrap().unwrap();
    assert!(!gone.is_active && !gone.has_key);
    let legacy = store.legacy_keys().await.unwrap();
    assert_eq!(legacy.len(), 1);
    assert_eq!(legacy[0].app.id, a);
    assert!(cti_core::keys::verify_legacy_bcrypt(
        LEGACY_KEY,
        &legacy[0].bcrypt_hash
    ));
    assert!(bcrypt::verify(LEGACY_KEY, &legacy[0].bcrypt_hash).unwrap());
    assert!(!cti_core::keys::verify_legacy_bcrypt(
        "raw_wrong",
        &legacy[0].bcrypt_hash
    ));

    // Audit: same ids, newest first.
    let audit = store.list_audit(a, PageRequest::new(10, 0)).await.unwrap();
    assert_eq!(
        audit.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![o.audit[1], o.audit[0]]
    );
    assert_eq!(
        store
            .list_audit(b, PageRequest::new(10, 0))
            .await
            .unwrap()
            .items[0]
            .id,
        o.audit[2]
    );

    let m = store
        .get_mapping_by_dialpad(a, DialpadId(4611686018427387913))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.id, m.crm_user_id.as_str()), (o.mapping, "crm_42"));

    // Calls: same ids, statuses normalised, timestamps in UTC.
    let ended = store.get_call(a, o.call_ended).await.unwrap().unwrap();
    assert_eq!(ended.status, CallStatus::Ended);
    assert_eq!(ended.dialpad_user_id, Some(DialpadId(4611686018427387913)));
    assert_eq!(ended.ended_at, Some(utc(2025, 3, 1, 12, 2)));
    assert_eq!(
        ended.raw_payload.map(|r| r.to_value().unwrap()),
        Some(serde_json::json!({"state": "hangup"}))
    );
    assert_eq!(
        store
            .get_call(a, o.call_odd_status)
            .await
            .unwrap()
            .unwrap()
            .status,
        CallStatus::Ended
    );
    let active = store.get_call(a, o.call_active).await.unwrap().unwrap();
    assert_eq!(
        (
            active.status,
            active.transcript.as_deref(),
            active.is_voicemail
        ),
        (CallStatus::Active, Some("call me"), true)
    );
    // Events: processed → done, pending → claimable inbox rows with their dedupe keys.
    assert_eq!(
        store
            .inbox_get(Some(a), o.ev_done)
            .await
            .unwrap()
            .unwrap()
            .status,
        EventStatus::Done
    );
    let keyed = store
        .inbox_get(Some(a), o.ev_pending_keyed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (keyed.status, keyed.dedupe_key.as_str()),
        (EventStatus::Pending, "evt-2")
    );
    assert_eq!(
        (keyed.call_id, keyed.event_timestamp, keyed.state.as_deref()),
        (Some(DialpadId(1003)), Some(1741003500000), Some("hangup"))
    );
    let anon = store
        .inbox_get(Some(a), o.ev_pending_anon)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(anon.dedupe_key, format!("import:{}", o.ev_pending_anon));
    let claimed = store
        .inbox_claim(10, Duration::from_secs(30), Utc::now())
        .await
        .unwrap();
    let mut got: Vec<Uuid> = claimed.iter().map(|e| e.id).collect();
    got.sort();
    let mut want = vec![o.ev_pending_keyed, o.ev_pending_anon];
    want.sort();
    assert_eq!(got, want);
    // The imported pending hangup is processed by the new pipeline: the active call ends.
    let hangup = claimed.iter().find(|e| e.id == o.ev_pending_keyed).unwrap();
    let n = Normalized {
        call: Some(CallUpdate {
            dialpad_call_id: Some(DialpadId(1003)),
            status: Some(CallStatus::Ended),
            event_ms: 1741003500000,
            ..Default::default()
        }),
        event: CtiEvent::CallEnded,
        voicemail: None,
        message: None,
    };
    let end = store
        .inbox_complete(
            hangup.id,
            hangup.attempts,
            EventResult::Apply(Box::new(n)),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(end.len(), 1);
    assert_eq!(end[0].event, "call.ended");
    assert_eq!(
        store
            .get_call(a, o.call_active)
            .await
            .unwrap()
            .unwrap()
            .status,
        CallStatus::Ended
    );
    let anon = claimed.iter().find(|e| e.id == o.ev_pending_anon).unwrap();
    store
        .inbox_complete(
            anon.id,
            anon.attempts,
            EventResult::Ignored("test".into()),
            Utc::now(),
        )
        .await
        .unwrap();
    // A late ring for the imported ended call does not resurrect it.
    let late = apply(
        &store,
        a,
        "late-ring",
        CtiEvent::CallRinging,
        1001,
        utc(2025, 3, 1, 11, 59).timestamp_millis(),
    )
    .await;
    assert!(late.is_empty());
    assert_eq!(
        store
            .get_call(a, o.call_ended)
            .await
            .unwrap()
            .unwrap()
            .status,
        CallStatus::Ended
    );

    // Messages: the array literal became a list.
    let msg = store.get_message(a, o.msg_array).await.unwrap().unwrap();
    assert_eq!(
        msg.to_numbers,
        vec!["+15550002222".to_string(), "+15550003333".to_string()]
    );
    assert_eq!(msg.to_number.as_deref(), Some("+15550002222"));
    assert_eq!(
        store
            .list_messages(a, &MessageFilter::default(), PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        2
    );

    // Voicemails: the newest of a call keeps the link, the older one is kept unlinked.
    assert_eq!(
        store
            .get_voicemail(a, o.vm_new)
            .await
            .unwrap()
            .unwrap()
            .dialpad_call_id,
        Some(DialpadId(1001))
    );
    assert_eq!(
        store
            .get_voicemail(a, o.vm_old)
            .await
            .unwrap()
            .unwrap()
            .dialpad_call_id,
        None
    );
    assert_eq!(
        store
            .list_voicemails(a, &VoicemailFilter::default(), PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        3
    );

    // A redelivery of an imported event is recognised as a duplicate.
    let dup = store
        .inbox_insert(vec![NewInboxEvent {
            id: Uuid::new_v4(),
            app_id: a,
            dedupe_key: "evt-1".into(),
            event_type: None,
            call_id: None,
            state: None,
            event_timestamp: None,
            payload: serde_json::json!({}).into(),
            received_at: Utc::now(),
        }])
        .await
        .unwrap();
    assert_eq!(dup[0], InsertOutcome::Duplicate(o.ev_done));

    // Secrets: encrypted at rest, the newest connection per app.
    let conn = store.get_connection(a).await.unwrap().unwrap();
    assert!(DataCipher::is_encrypted(&conn.access_token_enc));
    assert_eq!(
        cipher.decrypt(&conn.access_token_enc).unwrap().expose(),
        "new-access"
    );
    assert_eq!(
        cipher.decrypt(&conn.refresh_token_enc).unwrap().expose(),
        "new-refresh"
    );
    assert_eq!(conn.token_expires_at, utc(2025, 4, 1, 0, 0));
    assert_eq!(
        store
            .find_app_by_org(DialpadId(4993497561530368))
            .await
            .unwrap(),
        Some(a)
    );
    let hook = store.get_webhook(DialpadId(193)).await.unwrap().unwrap();
    assert_eq!(hook.id, o.hook);
    assert_eq!(
        cipher
            .decrypt(hook.secret_enc.as_deref().unwrap())
            .unwrap()
            .expose(),
        "plain-secret"
    );

    // Re-running copies nothing new and changes nothing.
    let again = from_original(&store, &opts).await.unwrap();
    assert_eq!(
        again,
        ImportReport {
            events_without_app: 1,
            dialpad_users_ignored: 1,
            ..ImportReport::default()
        },
        "second run imports nothing"
    );
    assert_eq!(
        store
            .list_apps(PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cipher_secrets_are_skipped_and_time_zone_is_applied() {
    let Some(db) = TestDb::new("imp2").await else {
        return;
    };
    let Some(src_db) = TestDb::new("orig2").await else {
        return;
    };
    let source = src_db.schema.clone();
    let hash = bcrypt::hash(LEGACY_KEY, 4).unwrap();
    let o = build_original(&src_db, &source, &hash).await;
    let store = db.store().await;
    let opts = ImportOptions {
        source_schema: source.clone(),
        source_time_zone: "America/New_York".into(),
        cipher: None,
    };
    let report = from_original(&store, &opts).await.unwrap();
    assert_eq!((report.connections, report.connections_skipped), (0, 1));
    assert_eq!(
        (
            report.webhooks,
            report.webhook_secrets_skipped,
            report.webhook_secrets_encrypted
        ),
        (1, 1, 0)
    );
    assert!(
        store
            .get_connection(AppId(o.app_a))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .get_webhook(DialpadId(193))
            .await
            .unwrap()
            .unwrap()
            .secret_enc,
        None
    );
    // 09:00 in New York (EST) is 14:00 UTC.
    assert_eq!(
        store
            .get_app(AppId(o.app_a))
            .await
            .unwrap()
            .unwrap()
            .created_at,
        utc(2025, 1, 15, 14, 0)
    );

    // Refusals: same schema, a schema without the original tables, a bad time zone.
    let same = ImportOptions {
        source_schema: store.schema().to_string(),
        ..ImportOptions::default()
    };
    assert!(from_original(&store, &same).await.is_err());
    let empty = ImportOptions {
        source_schema: "t_no_such_schema".into(),
        ..ImportOptions::default()
    };
    assert!(from_original(&store, &empty).await.is_err());
    let bad_tz = ImportOptions {
        source_schema: source,
        source_time_zone: "Mars/Olympus".into(),
        cipher: None,
    };
    assert!(from_original(&store, &bad_tz).await.is_err());
}
