//! Every statement the single writer runs, examined with `EXPLAIN` on a connection set up as
//! the writer's: none may build a temporary b-tree per execution.
//!
//! SQLite codes `x IN (a, b, c)` (three or more constants) as a temporary b-tree built each
//! time a statement runs — a pager, a page cache, inserts, a close — so an `IN` list in a
//! partial index's predicate or a `CHECK` constraint costs that on every row the writer
//! stores (migration 0006, `direct::configure`).

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
use fixtures::EVENT_FILES;

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
    let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    // The inline path: every fixture event, stored and applied in the writer's transactions.
    let cti = Cti::builder()
        .store(Arc::new(store.clone()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            ..CtiConfig::default()
        })
        .build();
    let running = cti.start();
    let (app, key) = cti.create_app("Tenant", Default::default()).await.unwrap();
    for (name, text) in EVENT_FILES {
        if *name == "lifecycles.json" {
            continue;
        }
        let sig = sign_hmac_b64(text.as_bytes(), b"W");
        let outcome = cti
            .ingest(WebhookRequest {
                body: text.as_bytes(),
                content_type: Some("application/json"),
                signature: Some(&sig),
                app_key: Some(key.expose()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(matches!(outcome, IngestOutcome::Accepted { .. }), "{name}");
    }
    running.shutdown(Duration::from_secs(2)).await;
    // The processor's path: claims, completions, retries.
    let now = chrono::Utc::now();
    let events = (0..3)
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
        .inbox_claim(3, Duration::from_secs(60), now)
        .await
        .unwrap();
    let [a, b, ..] = &claimed[..] else {
        panic!("{claimed:?}")
    };
    let ignored = EventResult::Ignored("test".into());
    store
        .inbox_complete(a.id, a.attempts, ignored, now)
        .await
        .unwrap();
    store
        .inbox_fail(b.id, b.attempts, "boom", None, now)
        .await
        .unwrap();
    store.close().await;

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
