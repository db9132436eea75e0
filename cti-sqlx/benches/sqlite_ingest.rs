//! SQLite inbox throughput on a temporary database file (WAL, `synchronous=NORMAL`):
//!
//! * `sqlite_ingest/1_writer_batch_1` — one task inserting one event per transaction;
//! * `sqlite_ingest/16_writers_batch_64` — 16 concurrent tasks, each inserting a batch of 64
//!   events (1,024 events per iteration);
//! * `sqlite_process/claim_64_complete_each` — claim 64 due events, then complete each with
//!   the event `cti_core::normalize::normalize_json` makes of its payload (call upsert + outbox).
//!
//! Events are the Dialpad fixture `call_inbound_02_ringing.json` with a distinct `call_id`,
//! `event_timestamp` and dedupe key each. Throughput is reported in events per second.
//!
//! Run with `cargo bench -p cti-sqlx --bench sqlite_ingest`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_main};
use cti_core::model::{AppId, AuditContext, DialpadId};
use cti_core::normalize::normalize_json;
use cti_core::store::*;
use cti_sqlx::SqliteStore;
use serde_json::Value;
use uuid::Uuid;

const RINGING: &str = include_str!("../../fixtures/dialpad/events/call_inbound_02_ringing.json");

/// Source of distinct call ids / dedupe keys across all iterations.
static NEXT: AtomicU64 = AtomicU64::new(1);

struct Fixture {
    template: Value,
    app: AppId,
    store: Arc<SqliteStore>,
}

impl Fixture {
    async fn new() -> Self {
        let template: Value =
            serde_json::from_str(RINGING).unwrap_or_else(|e| panic!("fixture is not JSON: {e}"));
        let store = SqliteStore::open_temporary()
            .await
            .unwrap_or_else(|e| panic!("cannot open sqlite: {e}"));
        let app = AppId::new();
        let key = NewKey {
            lookup: format!("{:0>64}", app.0.simple()),
            hint: "raw_bench...0000".into(),
        };
        store
            .create_app(
                NewApp {
                    id: app,
                    name: "bench".into(),
                    key,
                    now: Utc::now(),
                },
                AuditContext::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot create app: {e}"));
        Self {
            template,
            app,
            store: Arc::new(store),
        }
    }

    /// `n` realistic events, each of its own call.
    fn events(&self, n: usize) -> Vec<NewInboxEvent> {
        let now = Utc::now();
        (0..n)
            .map(|_| {
                let i = NEXT.fetch_add(1, Ordering::Relaxed);
                let call_id = 5_744_118_934_454_272 + i;
                let ts = 1_767_261_601_210 + i as i64;
                let mut payload = self.template.clone();
                if let Value::Object(m) = &mut payload {
                    m.insert("call_id".into(), Value::from(call_id));
                    m.insert("event_timestamp".into(), Value::from(ts));
                }
                NewInboxEvent {
                    id: Uuid::new_v4(),
                    app_id: self.app,
                    dedupe_key: format!("{call_id}:ringing:{ts}"),
                    event_type: Some("ringing".into()),
                    call_id: Some(DialpadId(call_id)),
                    state: Some("ringing".into()),
                    event_timestamp: Some(ts),
                    payload: payload.into(),
                    received_at: now,
                }
            })
            .collect()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn bench_ingest(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sqlite_ingest");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));

    let fx = rt.block_on(Fixture::new());
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_writer_batch_1", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let events = fx.events(iters as usize);
            let store = fx.store.clone();
            async move {
                let start = Instant::now();
                for e in events {
                    let out = store.inbox_insert(vec![e]).await;
                    if !matches!(out.as_deref(), Ok([InsertOutcome::Inserted(_)])) {
                        panic!("insert failed: {out:?}");
                    }
                }
                start.elapsed()
            }
        })
    });

    let fx = rt.block_on(Fixture::new());
    let (writers, batch) = (16usize, 64usize);
    group.throughput(Throughput::Elements((writers * batch) as u64));
    group.bench_function("16_writers_batch_64", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let rounds: Vec<Vec<Vec<NewInboxEvent>>> = (0..iters)
                .map(|_| (0..writers).map(|_| fx.events(batch)).collect())
                .collect();
            let store = fx.store.clone();
            async move {
                let start = Instant::now();
                for round in rounds {
                    let tasks: Vec<_> = round
                        .into_iter()
                        .map(|events| {
                            let store = store.clone();
                            tokio::spawn(async move { store.inbox_insert(events).await })
                        })
                        .collect();
                    for t in tasks {
                        match t.await {
                            Ok(Ok(out)) if out.iter().all(|o| !o.is_duplicate()) => {}
                            other => panic!("insert failed: {other:?}"),
                        }
                    }
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

fn bench_process(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sqlite_process");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let fx = rt.block_on(Fixture::new());
    let claim = 64usize;
    group.throughput(Throughput::Elements(claim as u64));
    group.bench_function("claim_64_complete_each", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = fx.store.clone();
            let events = fx.events(iters as usize * claim);
            async move {
                // Untimed: fill the inbox in large batches.
                for chunk in events.chunks(1024) {
                    if let Err(e) = store.inbox_insert(chunk.to_vec()).await {
                        panic!("insert failed: {e}");
                    }
                }
                let start = Instant::now();
                let mut done = 0;
                while done < iters as usize * claim {
                    let now = Utc::now();
                    let claimed = store
                        .inbox_claim(claim, Duration::from_secs(60), now)
                        .await
                        .unwrap_or_else(|e| panic!("claim failed: {e}"));
                    if claimed.is_empty() {
                        panic!("inbox drained early after {done} events");
                    }
                    for e in claimed {
                        let n = normalize_json(&e.payload, e.received_at);
                        let result = if n.is_ignored() {
                            EventResult::Ignored(format!("{:?}", n.event))
                        } else {
                            EventResult::Apply(Box::new(n))
                        };
                        if let Err(err) = store.inbox_complete(e.id, e.attempts, result, now).await
                        {
                            panic!("complete failed: {err}");
                        }
                        done += 1;
                    }
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

mod group {
    //! The criterion groups (their generated functions have no doc comments).
    #![allow(missing_docs)]
    use super::{bench_ingest, bench_process};
    criterion::criterion_group!(benches, bench_ingest, bench_process);
}

criterion_main!(group::benches);
