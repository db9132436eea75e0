//! On PostgreSQL, `Cti::start` runs each ingest writer on a thread of its own
//! (`InboxStore::writer_threads`), and the store sends that writer's batches over one
//! connection of the thread's own (`application_name` `<pool's>/writer`): reused batch after
//! batch, opened again after it failed (no webhook is lost meanwhile), closed with the thread
//! at shutdown.

mod facade_support;
mod pg_support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cti_core::model::{CallStatus, DialpadId};
use cti_core::secrets::Secret;
use cti_core::store::{InboxStore, RecordStore};
use cti_core::{Cti, CtiConfig};
use facade_support::ingest_json;
use pg_support::TestDb;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// `(pid, ran an applying write last)` of the backends named `name`. The write statement (the
/// statement of every inline batch, `write_sql`) starts with `WITH lk AS MATERIALIZED`.
async fn backends(admin: &mut PgConnection, name: &str) -> Vec<(i32, bool)> {
    sqlx::query_as(
        "SELECT pid, query LIKE 'WITH lk AS MATERIALIZED%' FROM pg_stat_activity \
         WHERE application_name = $1 ORDER BY pid",
    )
    .bind(name)
    .fetch_all(admin)
    .await
    .unwrap()
}

fn ring(call: i64) -> String {
    format!(r#"{{"event_type":"call.ring","call_id":{call},"direction":"inbound"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_writer_writes_over_one_connection_of_its_own() {
    let Some(db) = TestDb::new("writer").await else {
        return;
    };
    let pool_name = format!("cti-test-{}", db.schema);
    let writer_name = format!("{pool_name}/writer");
    let connect = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .application_name(&pool_name);
    let store = db.store_via(connect, db.options()).await;
    assert!(store.writer_threads());
    let cti = Cti::builder()
        .store(Arc::new(store.clone()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            // One writer thread, so one writer's connection (each writer has its own).
            ingest_writers: 1,
            ..CtiConfig::default()
        })
        .build();
    let running = cti.start();
    let (app, key) = cti.create_app("Tenant", Default::default()).await.unwrap();
    let mut admin = db.conn().await;

    // One batch after another (each ingest waits for its batch to commit): all over the
    // writer's connection, none over the pool's.
    for call in 1000..1020 {
        ingest_json(&cti, b"W", key.expose(), ring(call).as_bytes()).await;
    }
    let writer = backends(&mut admin, &writer_name).await;
    assert_eq!(writer.len(), 1, "{writer:?}");
    let (first, wrote) = writer[0];
    assert!(wrote, "the writer's connection ran the batches");
    let pool = backends(&mut admin, &pool_name).await;
    assert!(!pool.is_empty(), "the pool serves the rest");
    assert!(pool.iter().all(|&(_, wrote)| !wrote), "{pool:?}");

    // The writer's connection dies: the next webhook is still accepted (its batch fails, the
    // fallback insert opens a new connection) and processed.
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    ingest_json(&cti, b"W", key.expose(), ring(2000).as_bytes()).await;
    let mut call = None;
    for _ in 0..100 {
        call = store
            .get_call_by_dialpad_id(app.id, DialpadId(2000))
            .await
            .unwrap();
        if call.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call.map(|c| c.status), Some(CallStatus::Ringing));

    // Later batches go over the new connection, processed inline again.
    for call in 3000..3010 {
        ingest_json(&cti, b"W", key.expose(), ring(call).as_bytes()).await;
    }
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!(
        (stats.unprocessed, stats.processing, stats.done),
        (0, 0, 31),
        "{stats:?}"
    );
    let writer = backends(&mut admin, &writer_name).await;
    assert_eq!(writer.len(), 1, "{writer:?}");
    assert_ne!(writer[0].0, first, "a new connection");
    assert!(writer[0].1);

    // Shutdown ends the writer thread, and its connection with it.
    running.shutdown(Duration::from_secs(5)).await;
    let mut left = backends(&mut admin, &writer_name).await;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = backends(&mut admin, &writer_name).await;
    }
    assert!(left.is_empty(), "{left:?}");
}
