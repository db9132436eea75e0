//! The single writer's direct connection, checked after real work: every fixture event through
//! the inline path, and inbox events through claims, completions, retries and dead-lettering.
//!
//! - No statement it ran builds a temporary b-tree per execution. SQLite codes `x IN (a, b, c)`
//!   (three or more constants) as a temporary b-tree built each time a statement runs — a
//!   pager, a page cache, inserts, a close — so an `IN` list in a partial index's predicate or
//!   a `CHECK` constraint costs that on every row the writer stores (migration 0006,
//!   `direct::configure`).
//! - Every row it wrote satisfies the `CHECK` constraints it does not evaluate.

use std::path::Path;
use std::time::Duration;

use cti_core::inbox::{IngestOutcome, WebhookRequest};
use cti_core::model::*;
use cti_core::secrets::Secret;
use cti_core::store::*;
use cti_core::verify::sign_hmac_b64;
use cti_core::{Cti, CtiConfig};

use super::direct::{self, DirectOptions};
use super::*;

/// The embedded fixture files.
mod fixtures {
    #![allow(dead_code)]
    include!("../../../fixtures/dialpad/embedded.rs");
}

/// Runs the writer's paths on a new database file at `path`: every fixture event ingested and
/// processed inline, one of them redelivered, then eight inbox events claimed and left ignored, failed for a retry,
/// dead, or processing.
async fn exercise_the_writer(path: &Path) {
    let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let cti = Cti::builder()
        .store(Arc::new(store.clone()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            ..CtiConfig::default()
        })
        .build();
    let running = cti.start();
    let (app, key) = cti.create_app("Tenant", Default::default()).await.unwrap();
    for (name, text) in fixtures::EVENT_FILES {
        if *name == "lifecycles.json" {
            continue;
        }
        let outcome = post(&cti, key.expose(), text).await;
        assert!(matches!(outcome, IngestOutcome::Accepted { .. }), "{name}");
    }
    // A redelivery: the duplicate lookup.
    let again = post(&cti, key.expose(), fixtures::EVENT_FILES[0].1).await;
    assert!(
        matches!(again, IngestOutcome::Duplicate { .. }),
        "{again:?}"
    );
    // With the `Cti` stopped, only this function claims.
    running.shutdown(Duration::from_secs(2)).await;
    let now = chrono::Utc::now();
    let events = (0..8)
        .map(|i| NewInboxEvent {
            id: uuid::Uuid::now_v7(),
            app_id: app.id,
            dedupe_key: format!("k{i}"),
            event_type: Some("call.ring".into()),
            call_id: Some(DialpadId(700 + i)),
            state: Some("ringing".into()),
            event_timestamp: Some(1),
            payload: serde_json::json!({"call_id": 700 + i, "state": "ringing"}).into(),
            received_at: now,
        })
        .collect();
    store.inbox_insert(events).await.unwrap();
    let claimed = store
        .inbox_claim(8, Duration::from_secs(60), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 8);
    for (i, e) in claimed.iter().enumerate() {
        let (id, attempt) = (e.id, e.attempts);
        let retry = now + chrono::Duration::seconds(1);
        match i % 4 {
            0 => {
                let ignored = EventResult::Ignored("test".into());
                store
                    .inbox_complete(id, attempt, ignored, now)
                    .await
                    .unwrap();
            }
            1 => store
                .inbox_fail(id, attempt, "boom", Some(retry), now)
                .await
                .unwrap(),
            2 => store
                .inbox_fail(id, attempt, "boom", None, now)
                .await
                .unwrap(),
            _ => {} // left processing
        }
    }
    store.close().await;
}

/// `text` as a JSON webhook signed with the secret `W` for the app of `key`.
async fn post(cti: &Cti, key: &str, text: &str) -> IngestOutcome {
    let sig = sign_hmac_b64(text.as_bytes(), b"W");
    cti.ingest(WebhookRequest {
        body: text.as_bytes(),
        content_type: Some("application/json"),
        signature: Some(&sig),
        app_key: Some(key),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `OpenEphemeral` instructions (temporary b-trees) in the program of `sql` on `conn`.
fn temp_btrees(conn: &rusqlite::Connection, sql: &str) -> usize {
    let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
    let mut rows = stmt.raw_query();
    let mut n = 0;
    while let Some(r) = rows.next().unwrap() {
        n += usize::from(r.get::<_, String>(1).unwrap() == "OpenEphemeral");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_builds_no_temporary_b_tree_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cti.db");
    exercise_the_writer(&path).await;

    let statements = direct::recorded_statements();
    assert!(statements.len() >= 12, "{statements:#?}");
    let writer = rusqlite::Connection::open(&path).unwrap();
    direct::configure(
        &writer,
        &DirectOptions {
            path: &path,
            cache_size: WRITER_CACHE,
            wal_autocheckpoint: WRITER_AUTOCHECKPOINT,
            journal_size_limit: JOURNAL_SIZE_LIMIT,
            busy_timeout: BUSY_TIMEOUT,
        },
    )
    .unwrap();
    let plain = rusqlite::Connection::open(&path).unwrap();
    let mut with_checks = 0;
    for sql in &statements {
        assert_eq!(temp_btrees(&writer, sql), 0, "{sql}");
        with_checks += temp_btrees(&plain, sql);
    }
    // The same statements with the CHECK constraints evaluated: the status checks do.
    assert!(with_checks > 0);
}

/// The direct connection does not evaluate `CHECK` constraints; `PRAGMA integrity_check`
/// verifies them, so every row it wrote must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_the_direct_connection_pass_the_check_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cti.db");
    exercise_the_writer(&path).await;

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn.prepare("PRAGMA integrity_check").unwrap();
    let report: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(report, ["ok"]);
    // Not vacuous: the rows cover the constrained values.
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert!(count("SELECT COUNT(DISTINCT status) FROM calls") >= 4);
    assert_eq!(count("SELECT COUNT(DISTINCT direction) FROM calls"), 2);
    // done (fixtures), ignored, failed, dead, processing
    assert_eq!(
        count("SELECT COUNT(DISTINCT status) FROM webhook_events"),
        5
    );
}
