//! PostgreSQL inbox throughput (custom harness: prints one line per scenario).
//!
//! * `ingest W writers × batch B, A apps` — W concurrent tasks, each calling `inbox_insert`
//!   with B events per call (one statement, one commit per call), as the facade's group commit
//!   would, events spread over A tenants;
//! * `claim+complete W workers, A apps` — W concurrent workers, each `inbox_claim(64)` then
//!   `inbox_complete` of every claimed event with what `cti_core::normalize::normalize_json` makes of
//!   its payload (call upsert + outbox append, one transaction per event).
//!
//! Events are the Dialpad fixture `call_inbound_02_ringing.json` with a distinct `call_id`,
//! `event_timestamp` and dedupe key each. Uses `CTI_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and a scratch schema dropped at the end.
//!
//! ```text
//! cargo bench -p cti-sqlx --bench pg_ingest                 # ~5 s per scenario
//! PG_BENCH_SECS=10 cargo bench -p cti-sqlx --bench pg_ingest
//! ```
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs a few milliseconds per scenario as a
//! smoke test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use cti_core::model::{AppId, AuditContext, DialpadId};
use cti_core::normalize::normalize_json;
use cti_core::store::*;
use cti_sqlx::pg::{PgOptions, PgStore};
use serde_json::Value;
use sqlx::Connection;
use uuid::Uuid;

const RINGING: &str = include_str!("../../fixtures/dialpad/events/call_inbound_02_ringing.json");

/// Source of distinct call ids / dedupe keys.
static NEXT: AtomicU64 = AtomicU64::new(1);

struct Bench {
    store: Arc<PgStore>,
    /// Tenants; scenarios spread their events round-robin over the first `apps` of them.
    apps: Arc<Vec<AppId>>,
    template: Arc<Value>,
    run_for: Duration,
}

fn events(template: &Value, apps: &[AppId], n: usize) -> Vec<NewInboxEvent> {
    let now = Utc::now();
    (0..n)
        .map(|_| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            let app = apps[i as usize % apps.len()];
            let call_id = 5_744_118_934_454_272 + i;
            let ts = 1_767_261_601_210 + i as i64;
            let mut payload = template.clone();
            if let Value::Object(m) = &mut payload {
                m.insert("call_id".into(), Value::from(call_id));
                m.insert("event_timestamp".into(), Value::from(ts));
            }
            NewInboxEvent {
                id: Uuid::new_v4(),
                app_id: app,
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

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

impl Bench {
    /// `writers` tasks inserting batches of `batch` for `run_for`; returns (events, elapsed,
    /// mean latency per call).
    async fn ingest(&self, writers: usize, batch: usize, apps: usize) -> (u64, Duration, Duration) {
        let apps: Arc<Vec<AppId>> = Arc::new(self.apps[..apps].to_vec());
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (store, template, apps, stop) = (
                self.store.clone(),
                self.template.clone(),
                apps.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (mut n, mut calls, mut busy) = (0u64, 0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let evs = events(&template, &apps, batch);
                    let t = Instant::now();
                    let out = store
                        .inbox_insert(evs)
                        .await
                        .unwrap_or_else(|e| fail("insert", e));
                    busy += t.elapsed();
                    calls += 1;
                    n += out.len() as u64;
                }
                (n, calls, busy)
            }));
        }
        tokio::time::sleep(self.run_for).await;
        stop.store(true, Ordering::Relaxed);
        let (mut total, mut calls, mut busy) = (0, 0u32, Duration::ZERO);
        for t in tasks {
            let (n, c, b) = t.await.unwrap_or_else(|e| fail("writer", e));
            total += n;
            calls += c;
            busy += b;
        }
        (total, start.elapsed(), busy / calls.max(1))
    }

    /// Fills the inbox, then `workers` claim+complete until it is drained.
    /// Returns (events, elapsed, mean claim call, mean complete call).
    async fn process(
        &self,
        workers: usize,
        events_n: usize,
        apps: usize,
    ) -> (u64, Duration, Duration, Duration) {
        for chunk in events(&self.template, &self.apps[..apps], events_n).chunks(1000) {
            self.store
                .inbox_insert(chunk.to_vec())
                .await
                .unwrap_or_else(|e| fail("fill", e));
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let store = self.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                let (mut claims, mut claim_t, mut complete_t) =
                    (0u32, Duration::ZERO, Duration::ZERO);
                loop {
                    let now = Utc::now();
                    let t = Instant::now();
                    let claimed = store
                        .inbox_claim(64, Duration::from_secs(60), now)
                        .await
                        .unwrap_or_else(|e| fail("claim", e));
                    claim_t += t.elapsed();
                    claims += 1;
                    if claimed.is_empty() {
                        return (done, claims, claim_t, complete_t);
                    }
                    for e in claimed {
                        let n = normalize_json(&e.payload, e.received_at);
                        let result = if n.is_ignored() {
                            EventResult::Ignored(format!("{:?}", n.event))
                        } else {
                            EventResult::Apply(Box::new(n))
                        };
                        let t = Instant::now();
                        store
                            .inbox_complete(e.id, e.attempts, result, now)
                            .await
                            .unwrap_or_else(|e| fail("complete", e));
                        complete_t += t.elapsed();
                        done += 1;
                    }
                }
            }));
        }
        let (mut total, mut claims, mut claim_t, mut complete_t) =
            (0, 0u32, Duration::ZERO, Duration::ZERO);
        for t in tasks {
            let (d, c, ct, pt) = t.await.unwrap_or_else(|e| fail("worker", e));
            total += d;
            claims += c;
            claim_t += ct;
            complete_t += pt;
        }
        let per_complete = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        (
            total,
            start.elapsed(),
            claim_t / claims.max(1),
            complete_t / per_complete,
        )
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

async fn run(full: bool) {
    let url = std::env::var("CTI_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Err(e) = sqlx::postgres::PgConnection::connect(&url).await {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            fail("database unreachable under CI=true", e);
        }
        eprintln!("warning: skipping pg_ingest, database {url} unreachable: {e}");
        return;
    }
    let schema = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let opts = PgOptions {
        max_connections: 24,
        ..PgOptions::with_schema(schema.clone())
    };
    let store = Arc::new(
        PgStore::open(&url, opts)
            .await
            .unwrap_or_else(|e| fail("open", e)),
    );
    let mut apps = Vec::new();
    for _ in 0..16 {
        let app = AppId::new();
        store
            .create_app(
                NewApp {
                    id: app,
                    name: "bench".into(),
                    key: NewKey {
                        lookup: format!("{:0>64}", app.0.simple()),
                        hint: "raw_bench...0000".into(),
                    },
                    now: Utc::now(),
                },
                AuditContext::default(),
            )
            .await
            .unwrap_or_else(|e| fail("create app", e));
        apps.push(app);
    }
    let secs = std::env::var("PG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(5.0);
    let bench = Bench {
        store: store.clone(),
        apps: Arc::new(apps),
        template: Arc::new(serde_json::from_str(RINGING).unwrap_or_else(|e| fail("fixture", e))),
        run_for: if full {
            Duration::from_secs_f64(secs)
        } else {
            Duration::from_millis(50)
        },
    };

    println!(
        "pg_ingest (schema {schema}, {:.1} s per ingest scenario)",
        bench.run_for.as_secs_f64()
    );
    for (writers, batch, apps) in [
        (1, 1, 1),
        (1, 64, 1),
        (16, 1, 1),
        (16, 64, 1),
        (16, 1, 16),
        (16, 64, 16),
    ] {
        let (n, d, lat) = bench.ingest(writers, batch, apps).await;
        println!(
            "ingest          {writers:>2} writers × batch {batch:>2}, {apps:>2} apps: {:>7.0} events/s  ({n} events, {:.1} ms per insert call)",
            rate(n, d),
            lat.as_secs_f64() * 1000.0
        );
    }
    // Start claim+complete from an empty queue.
    sqlx::query("DELETE FROM webhook_events")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| fail("reset", e));
    let backlog = if full { 10_000 } else { 200 };
    for (workers, apps) in [(1, 1), (4, 1), (16, 1), (4, 16), (16, 16)] {
        let (n, d, claim, complete) = bench.process(workers, backlog, apps).await;
        println!(
            "claim+complete  {workers:>2} workers, claim 64, {apps:>2} apps: {:>7.0} events/s  ({n} events in {:.2} s; \
             {:.1} ms per claim, {:.2} ms per complete)",
            rate(n, d),
            d.as_secs_f64(),
            claim.as_secs_f64() * 1000.0,
            complete.as_secs_f64() * 1000.0
        );
    }

    store.close().await;
    if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&mut c)
            .await;
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("tokio runtime", e));
    rt.block_on(run(full));
}
