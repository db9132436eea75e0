//! PostgreSQL-specific behaviour of `PgStore` beyond the conformance suite: schema placement,
//! migration ledger, refusal of newer schemas, configuration errors, outage mapping.

mod pg_support;

use std::time::{Duration, Instant};

use chrono::TimeZone;
use cti_core::model::*;
use cti_core::store::*;
use cti_sqlx::pg::{MigrationError, PgOptions, PgStore, validate_schema_name};
use pg_support::TestDb;
use uuid::Uuid;

fn t0() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 29, 12, 0, 0)
        .single()
        .unwrap()
}

/// A new app named `name` with key `k`.
async fn new_app(s: &PgStore, name: &str, k: &str) -> App {
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

fn key(n: &str) -> NewKey {
    NewKey {
        lookup: format!("{n:0>64}"),
        hint: format!("raw_{n}...{n}"),
    }
}

#[tokio::test]
async fn tables_and_ledger_live_in_the_configured_schema() {
    let Some(db) = TestDb::new("layout").await else {
        return;
    };
    let store = db.store().await;
    assert_eq!(store.schema(), db.schema);
    assert_eq!(
        store.applied_version().await.unwrap(),
        Some(PgStore::binary_version())
    );
    let mut c = db.conn().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&db.schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    for t in [
        "_sqlx_migrations",
        "api_key_audit_log",
        "apps",
        "calls",
        "cti_events",
        "dialpad_connections",
        "dialpad_subscriptions",
        "dialpad_user_mappings",
        "dialpad_webhooks",
        "messages",
        "voicemails",
        "webhook_events",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    // Every timestamp column is TIMESTAMPTZ.
    let naive: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 \
         AND data_type = 'timestamp without time zone'",
    )
    .bind(&db.schema)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(naive, 0);
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    let again = PgStore::open(&db.url, db.options()).await.unwrap();
    assert_eq!(
        again.applied_version().await.unwrap(),
        Some(PgStore::binary_version())
    );
    again.close().await;
}

#[tokio::test]
async fn refuses_a_schema_migrated_by_a_newer_release() {
    let Some(db) = TestDb::new("newer").await else {
        return;
    };
    let store = db.store().await;
    let future = PgStore::binary_version() + 1000;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from the future', true, '\\x00', 0)",
    )
    .bind(future)
    .execute(store.pool())
    .await
    .unwrap();
    match store.migrate().await {
        Err(MigrationError::SchemaTooNew { applied, known }) => {
            assert_eq!(applied, future);
            assert_eq!(known, PgStore::binary_version());
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let err = PgStore::open(&db.url, db.options()).await.unwrap_err();
    assert!(
        matches!(err, MigrationError::SchemaTooNew { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn schemas_are_isolated_from_each_other() {
    let Some(db1) = TestDb::new("iso1").await else {
        return;
    };
    let Some(db2) = TestDb::new("iso2").await else {
        return;
    };
    let (s1, s2) = (db1.store().await, db2.store().await);
    let app = new_app(&s1, "one", "k1").await;
    assert!(s2.get_app(app.id).await.unwrap().is_none());
    assert_eq!(
        s2.list_apps(PageRequest::new(10, 0)).await.unwrap().total,
        0
    );
    // The same id and key may exist in the other schema.
    s2.create_app(
        NewApp {
            id: app.id,
            name: "two".into(),
            key: key("k1"),
            now: t0(),
        },
        AuditContext::default(),
    )
    .await
    .unwrap();
}

#[test]
fn schema_names_are_validated() {
    assert!(validate_schema_name("cti").is_ok());
    assert!(validate_schema_name("_cti_2").is_ok());
    for bad in [
        "",
        "Cti",
        "1cti",
        "cti-x",
        "cti\"; DROP",
        "pg_cti",
        &"x".repeat(64),
    ] {
        assert!(validate_schema_name(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn invalid_configuration_is_a_backend_error_not_unavailable() {
    let err = PgStore::connect("not a url", PgOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = PgStore::connect(&pg_support::db_url(), PgOptions::with_schema("Bad Name"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_quickly() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = PgOptions {
        acquire_timeout: Duration::from_millis(500),
        ..PgOptions::with_schema("cti_unreachable")
    };
    let started = Instant::now();
    let err = PgStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/test"), opts)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unique_and_foreign_key_violations_map_to_conflict_and_not_found() {
    let Some(db) = TestDb::new("errs").await else {
        return;
    };
    let s = db.store().await;
    let a = new_app(&s, "A", "a").await;
    let dup_key = s
        .create_app(
            NewApp {
                id: AppId::new(),
                name: "B".into(),
                key: key("a"),
                now: t0(),
            },
            AuditContext::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(dup_key, StoreError::Conflict(_)), "{dup_key:?}");
    let dup_id = s
        .create_app(
            NewApp {
                id: a.id,
                name: "C".into(),
                key: key("c"),
                now: t0(),
            },
            AuditContext::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(dup_id, StoreError::Conflict(_)), "{dup_id:?}");
    // The failed creations left no audit rows behind (one transaction each).
    assert_eq!(
        s.list_audit(a.id, PageRequest::new(10, 0))
            .await
            .unwrap()
            .total,
        1
    );
    // A record of an app that does not exist: the foreign key makes it NotFound.
    let unknown_app = s
        .upsert_mapping(AppId::new(), DialpadId(7), "crm_7", t0())
        .await
        .unwrap_err();
    assert!(
        matches!(unknown_app, StoreError::NotFound),
        "{unknown_app:?}"
    );
    // The inbox has no foreign key (migration 0004, as on SQLite): an event of an unknown app
    // is stored; applying it would fail on the call's key, inside its transaction.
    let ghost = s
        .inbox_insert(vec![NewInboxEvent {
            id: Uuid::new_v4(),
            app_id: AppId::new(),
            dedupe_key: "k".into(),
            event_type: None,
            call_id: None,
            state: None,
            event_timestamp: None,
            payload: serde_json::json!({}).into(),
            received_at: t0(),
        }])
        .await
        .unwrap();
    assert!(
        matches!(ghost[..], [InsertOutcome::Inserted(_)]),
        "{ghost:?}"
    );
}

#[tokio::test]
async fn legacy_keys_listed_until_backfilled() {
    let Some(db) = TestDb::new("legacy").await else {
        return;
    };
    let s = db.store().await;
    let id = AppId::new();
    let hash = "$2b$10$abcdefghijklmnopqrstuuN0vVw2Cq7pq0x7HkS8tXgQv6r1YyF6a";
    s.insert_legacy_app(id, "Legacy", hash, t0()).await.unwrap();
    let legacy = s.legacy_keys().await.unwrap();
    assert_eq!(legacy.len(), 1);
    assert_eq!(legacy[0].bcrypt_hash, hash);
    assert!(legacy[0].app.has_key);
    assert_eq!(legacy[0].app.api_key_hint, None);
    s.backfill_key(id, "$2b$10$other", key("x")).await.unwrap();
    assert_eq!(
        s.legacy_keys().await.unwrap().len(),
        1,
        "mismatching hash is a no-op"
    );
    s.backfill_key(id, hash, key("legacy")).await.unwrap();
    assert!(s.legacy_keys().await.unwrap().is_empty());
    let m = s
        .find_app_by_key(&key("legacy").lookup, t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.app.id, id);
    assert_eq!(m.app.api_key_hint.as_deref(), Some("raw_legacy...legacy"));
    // Rotating a legacy key audits "rotated" and drops the bcrypt hash.
    let out = s
        .change_key(
            id,
            KeyChange::Issue {
                key: key("new"),
                grace_until: None,
            },
            AuditContext::default(),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(out.audit.action, AuditAction::Rotated);
}

#[tokio::test]
async fn equal_arrival_times_are_claimed_in_insertion_order() {
    let Some(db) = TestDb::new("order").await else {
        return;
    };
    let s = db.store().await;
    let a = new_app(&s, "A", "a").await;
    let batch: Vec<NewInboxEvent> = (0..40)
        .map(|i| NewInboxEvent {
            id: Uuid::new_v4(),
            app_id: a.id,
            dedupe_key: format!("k{i}"),
            event_type: None,
            call_id: None,
            state: None,
            event_timestamp: None,
            payload: serde_json::json!({ "i": i }).into(),
            received_at: t0(),
        })
        .collect();
    let want: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
    s.inbox_insert(batch).await.unwrap();
    let got: Vec<Uuid> = s
        .inbox_claim(100, Duration::from_secs(30), t0())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, want);
}

/// An inline batch whose apps' row locks cannot be taken (another session holds one past
/// `lock_timeout`) fails with nothing stored, and the connection it failed on never serves
/// another batch in a bad state: with a pool of one connection, the next batch succeeds.
/// Locked path: the lock is sent with the `BEGIN`, so its failure leaves an aborted
/// transaction on that connection, which must be closed.
#[tokio::test]
async fn a_failed_applier_lock_does_not_poison_the_pool() {
    applier_lock_failure(false).await;
}

/// Same for the optimistic path, whose write statement takes the row locks.
#[tokio::test]
async fn a_failed_optimistic_write_stores_nothing_and_the_pool_recovers() {
    applier_lock_failure(true).await;
}

async fn applier_lock_failure(optimistic_inline: bool) {
    use cti_core::normalize::{CallUpdate, CtiEvent, Normalized};
    use sqlx::Connection;
    use sqlx::postgres::PgConnectOptions;

    let Some(db) = TestDb::new("lockfail").await else {
        return;
    };
    let connect: PgConnectOptions = db
        .url
        .parse::<PgConnectOptions>()
        .unwrap()
        .options([("lock_timeout", "200ms")]);
    let mut opts = db.options();
    opts.max_connections = 1;
    opts.optimistic_inline = optimistic_inline;
    let s = db.store_via(connect, opts).await;
    let app = new_app(&s, "A", "a").await;
    let event = NewInboxEvent {
        id: Uuid::now_v7(),
        app_id: app.id,
        dedupe_key: "k1".into(),
        event_type: Some("call".into()),
        call_id: Some(DialpadId(31)),
        state: Some("ringing".into()),
        event_timestamp: Some(1),
        payload: serde_json::json!({"call_id": 31, "state": "ringing"}).into(),
        received_at: t0(),
    };
    let ringing = || {
        Some(EventResult::Apply(Box::new(Normalized {
            event: CtiEvent::CallRinging,
            call: Some(CallUpdate {
                dialpad_call_id: Some(DialpadId(31)),
                status: Some(CallStatus::Ringing),
                event_ms: 1,
                ..Default::default()
            }),
            voicemail: None,
            message: None,
        })))
    };
    let lease = Duration::from_secs(30);

    // Another session holds the app's row lock, as an applier does.
    let mut holder = db.conn().await;
    let mut held = holder.begin().await.unwrap();
    let lock = format!(
        "SELECT 1 FROM \"{}\".apps WHERE id = $1 FOR UPDATE",
        db.schema
    );
    sqlx::query(&lock)
        .bind(app.id.0)
        .execute(&mut *held)
        .await
        .unwrap();
    let err = s
        .inbox_insert_processed(std::slice::from_ref(&event), vec![ringing()], lease, t0())
        .await
        .unwrap_err();
    assert!(!matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(s.inbox_get(None, event.id).await.unwrap().is_none());
    held.rollback().await.unwrap();

    let done = s
        .inbox_insert_processed(std::slice::from_ref(&event), vec![ringing()], lease, t0())
        .await
        .unwrap();
    assert_eq!(done.outcomes, [InsertOutcome::Inserted(event.id)]);
    assert_eq!(done.processed, [true]);
    let call = s
        .get_call_by_dialpad_id(app.id, DialpadId(31))
        .await
        .unwrap();
    assert_eq!(call.map(|c| c.status), Some(CallStatus::Ringing));
}
