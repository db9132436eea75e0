//! Fan-out and ingest benchmarks.
//!
//! `cargo bench -p cti-core --bench pipeline`
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cti_core::fanout::Hub;
use cti_core::inbox::WebhookRequest;
use cti_core::model::AppId;
use cti_core::secrets::Secret;
use cti_core::store::{MemoryStore, PublishedEvent};
use cti_core::verify::sign_jwt_hs256;
use cti_core::{Cti, CtiConfig};

fn hub_publish(c: &mut Criterion) {
    let hub = Hub::new();
    let app = AppId::new();
    // 1,000 subscribers of one app; a drainer empties their queues between iterations.
    let mut subs: Vec<_> = (0..1000).map(|_| hub.subscribe(app, None, 1024)).collect();
    let ev = Arc::new(PublishedEvent {
        app_id: app,
        seq: 1,
        event: "call.ring".into(),
        payload: serde_json::json!({"event": "call.ring", "call_id": "5744118934454272"}),
        target_crm_user: None,
        created_at: chrono::Utc::now(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("publish_to_1000_subscribers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let n = (iters - done).min(512);
                let start = std::time::Instant::now();
                for _ in 0..n {
                    assert_eq!(hub.publish(ev.clone()), 1000);
                }
                total += start.elapsed();
                rt.block_on(async {
                    for s in subs.iter_mut() {
                        for _ in 0..n {
                            let _ = s.recv().await;
                        }
                    }
                });
                done += n;
            }
            total
        })
    });
    g.finish();
}

fn ingest_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cti = Cti::builder()
        .store(Arc::new(MemoryStore::new()))
        .config(CtiConfig {
            webhook_secret: Some(Secret::new("W".into())),
            ..CtiConfig::default()
        })
        .build();
    let (app, _running) = rt.block_on(async {
        let running = cti.start();
        let (app, _) = cti.create_app("bench", Default::default()).await.unwrap();
        (app, running)
    });
    let path = app.id.to_string();
    let base: serde_json::Value = serde_json::from_str(include_str!(
        "../../fixtures/dialpad/events/call_inbound_02_ringing.json"
    ))
    .unwrap();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    // 16 concurrent webhook senders, as under HTTP load; pre-signed tokens.
    g.bench_function("jwt_ingest_memory_store_16_concurrent", |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(16);
            let tokens: Vec<Vec<String>> = (0..16u64)
                .map(|w| {
                    (0..per)
                        .map(|i| {
                            let mut p = base.clone();
                            p["call_id"] = serde_json::json!(
                                1_000_000_000 + w * 10_000_000 + i + rand_offset()
                            );
                            sign_jwt_hs256(&p, b"W")
                        })
                        .collect()
                })
                .collect();
            let start = std::time::Instant::now();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for toks in tokens {
                    let cti = cti.clone();
                    let path = path.clone();
                    tasks.push(tokio::spawn(async move {
                        for t in toks {
                            cti.ingest(WebhookRequest {
                                body: t.as_bytes(),
                                content_type: Some("application/jwt"),
                                path_app: Some(&path),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

fn rand_offset() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_000_000_000
}

criterion_group!(benches, hub_publish, ingest_memory);
criterion_main!(benches);
