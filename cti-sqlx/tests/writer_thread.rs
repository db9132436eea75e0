//! On SQLite, `Cti::start` runs the ingest writer on a thread of its own
//! (`InboxStore::writer_threads`), and `Running::shutdown` ends that thread.
//!
//! A test file of its own: it counts the threads of this process by name, so no other test
//! may start a `Cti` in the same process meanwhile.
#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::time::Duration;

use cti_core::model::{CallStatus, DialpadId};
use cti_core::secrets::Secret;
use cti_core::store::{InboxStore, RecordStore};
use cti_core::{Cti, CtiConfig};
use cti_sqlx::SqliteStore;

mod facade_support;
use facade_support::ingest_json;

/// Names (`comm`) of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

fn writer_threads() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.starts_with("cti-writer-"))
        .count()
}

/// The count of writer threads once it equals `want`, or the last count after 2 s (a new
/// thread names itself when it starts, a stopped one leaves the list when it has exited).
async fn writer_threads_settle(want: usize) -> usize {
    let mut n = writer_threads();
    for _ in 0..100 {
        if n == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        n = writer_threads();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ingest_writes_on_its_own_thread_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cti.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    assert!(store.writer_threads());
    let cti = Cti::builder()
        .store(Arc::new(store.clone()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            ingest_writers: 2,
            ..CtiConfig::default()
        })
        .build();
    assert_eq!(writer_threads(), 0);
    let running = cti.start();
    assert_eq!(
        writer_threads_settle(2).await,
        2,
        "one thread per ingest writer: {:?}",
        thread_names()
    );

    // Accepted, stored and processed through the writer thread.
    let (app, key) = cti.create_app("Tenant", Default::default()).await.unwrap();
    for call_id in [5001u64, 5002] {
        let body =
            format!(r#"{{"event_type":"call.ring","call_id":{call_id},"direction":"inbound"}}"#);
        let event_id = ingest_json(&cti, b"W", key.expose(), body.as_bytes()).await;
        assert!(store.inbox_get(None, event_id).await.unwrap().is_some());
        let call = store
            .get_call_by_dialpad_id(app.id, DialpadId(call_id))
            .await
            .unwrap();
        assert_eq!(call.map(|c| c.status), Some(CallStatus::Ringing));
    }

    running.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        writer_threads_settle(0).await,
        0,
        "shutdown ends the writer threads: {:?}",
        thread_names()
    );
}
