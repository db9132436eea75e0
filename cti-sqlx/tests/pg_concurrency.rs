//! Two processors (separate pools, real concurrency) completing the events of one call at the
//! same time never lose a transition nor resurrect an ended call: the record equals the
//! sequential merge, and the outbox numbering stays gap-free.

mod pg_support;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use cti_core::model::*;
use cti_core::normalize::{CallUpdate, CtiEvent, Normalized};
use cti_core::store::*;
use cti_sqlx::pg::{PgOptions, PgStore};
use pg_support::TestDb;
use uuid::Uuid;

fn t0() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 29, 12, 0, 0)
        .single()
        .unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// One call's lifecycle (event time in ms), including a late ring that must not resurrect it.
fn lifecycle(call: u64) -> Vec<Normalized> {
    let upd = |event: CtiEvent, ms: i64| {
        let mut u = CallUpdate {
            dialpad_call_id: Some(DialpadId(call)),
            status: event.call_status(),
            event_ms: ms,
            direction: Some(Direction::Inbound),
            from_number: Some(format!("+1555000{ms:04}")),
            to_number: Some("+15550002222".into()),
            dialpad_user_id: Some(DialpadId(12345)),
            raw_payload: Some(
                serde_json::json!({ "state": format!("{event:?}"), "ms": ms }).into(),
            ),
            ..Default::default()
        };
        match event {
            CtiEvent::CallRinging => u.started_at = Some(t0()),
            CtiEvent::CallStarted => {
                u.answered_at = Some(t0() + secs(ms / 1000));
                u.held = Some(false);
            }
            CtiEvent::CallHeld => u.held = Some(true),
            CtiEvent::CallEnded => {
                u.ended_at = Some(t0() + secs(120));
                u.duration_seconds = Some(120);
            }
            CtiEvent::RecordingCompleted => {
                u.recording_url = Some(format!("https://rec.example/{call}.mp3"))
            }
            CtiEvent::Transcription => u.transcript = Some("hello there".into()),
            _ => {}
        }
        Normalized {
            event,
            call: Some(u),
            voicemail: None,
            message: None,
        }
    };
    vec![
        upd(CtiEvent::CallRinging, 1_000),
        upd(CtiEvent::CallStarted, 5_000),
        upd(CtiEvent::CallHeld, 20_000),
        upd(CtiEvent::CallStarted, 30_000),
        upd(CtiEvent::CallEnded, 125_000),
        upd(CtiEvent::RecordingCompleted, 130_000),
        upd(CtiEvent::Transcription, 140_000),
        upd(CtiEvent::CallRinging, 500), // late duplicate ring, earliest event time
    ]
}

/// The record a single processor would produce, event by event.
fn sequential(app: AppId, events: &[Normalized]) -> Call {
    let mut call: Option<Call> = None;
    for n in events {
        let applied = apply_event(
            app,
            n,
            Existing {
                call: call.clone(),
                ..Default::default()
            },
            t0(),
        );
        if let Some(c) = applied.call {
            call = Some(c);
        }
    }
    call.expect("a call")
}

/// Everything but bookkeeping (row id, creation/update times).
fn data(c: &Call) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap();
    if let Some(m) = v.as_object_mut() {
        for k in ["id", "created_at", "updated_at"] {
            m.remove(k);
        }
    }
    v
}

/// Tiny deterministic shuffle (xorshift), so failures are reproducible from the seed.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completes_of_one_call_equal_the_sequential_merge() {
    let Some(db) = TestDb::new("conc").await else {
        return;
    };
    let opts = PgOptions {
        max_connections: 4,
        ..PgOptions::default()
    };
    let s1 = Arc::new(db.store_with(opts.clone()).await);
    let s2 = Arc::new(db.store_with(opts).await); // second pool, same schema
    let app = new_app(&s1, "0").await;
    s1.upsert_mapping(app.id, DialpadId(12345), "crm_1", t0())
        .await
        .unwrap();

    let rounds = 50u64;
    let mut published_total = 0usize;
    for round in 0..rounds {
        let call = 9_000_000 + round;
        let events = lifecycle(call);
        let want = sequential(app.id, &events);

        // Store the events and mark them all claimed (attempt 1), as if two workers had leased
        // them after expired leases: both may now complete events of the same call at once.
        let new: Vec<NewInboxEvent> = events
            .iter()
            .enumerate()
            .map(|(i, _)| NewInboxEvent {
                id: Uuid::new_v4(),
                app_id: app.id,
                dedupe_key: format!("{call}-{i}"),
                event_type: None,
                call_id: Some(DialpadId(call)),
                state: None,
                event_timestamp: None,
                payload: serde_json::json!({}).into(),
                received_at: t0(),
            })
            .collect();
        let ids: Vec<Uuid> = new.iter().map(|e| e.id).collect();
        s1.inbox_insert(new).await.unwrap();
        sqlx::query("UPDATE webhook_events SET status = 'processing', attempts = 1, locked_until = $2 WHERE id = ANY($1)")
            .bind(&ids)
            .bind(t0() + secs(3600))
            .execute(s1.pool())
            .await
            .unwrap();

        let mut jobs: Vec<(Uuid, Normalized)> = ids.into_iter().zip(events).collect();
        shuffle(&mut jobs, round * 7919 + 17);
        let (mine, theirs): (Vec<_>, Vec<_>) =
            jobs.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let run = |store: Arc<PgStore>,
                   jobs: Vec<(usize, (Uuid, Normalized))>,
                   barrier: Arc<tokio::sync::Barrier>| {
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::new();
                for (_, (id, n)) in jobs {
                    out.extend(
                        store
                            .inbox_complete(id, 1, EventResult::Apply(Box::new(n)), t0())
                            .await
                            .unwrap(),
                    );
                }
                out
            })
        };
        let h1 = run(s1.clone(), mine, barrier.clone());
        let h2 = run(s2.clone(), theirs, barrier);
        let mut published = h1.await.unwrap();
        published.extend(h2.await.unwrap());
        published_total += published.len();

        let got = s1
            .get_call_by_dialpad_id(app.id, DialpadId(call))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.status, CallStatus::Ended, "round {round}");
        assert_eq!(
            data(&got),
            data(&want),
            "round {round}: concurrent result differs from sequential"
        );

        // Never resurrected: no ring/started message after the call.ended message.
        published.sort_by_key(|e| e.seq);
        let call_str = call.to_string();
        let mine: Vec<&str> = published
            .iter()
            .filter(|e| e.payload["call_id"] == call_str.as_str())
            .map(|e| e.event.as_str())
            .collect();
        assert_eq!(
            mine.iter().filter(|e| **e == "call.ended").count(),
            1,
            "round {round}: {mine:?}"
        );
        if let Some(end) = mine.iter().position(|e| *e == "call.ended") {
            assert!(
                mine[end..]
                    .iter()
                    .all(|e| *e != "call.ring" && *e != "call.started"),
                "round {round}: resurrected after end: {mine:?}"
            );
        }
    }

    // Outbox: gap-free 1..=N, matching what the completes returned.
    let all = s1.events_since(app.id, 0, 100_000).await.unwrap();
    assert_eq!(all.len(), published_total);
    assert!(
        all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1),
        "gap or duplicate in outbox seqs"
    );
    assert_eq!(
        s1.event_heads().await.unwrap(),
        vec![(app.id, published_total as u64)]
    );
    let st = s1.inbox_stats().await.unwrap();
    assert_eq!(st.done, rounds * 8);
    assert_eq!(st.processing, 0);
}

/// Many workers on two pools drain a backlog of interleaved calls with claim + complete; every
/// event is applied exactly once and every call ends in the sequential result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_two_pools_drain_interleaved_calls() {
    drain("drain", false).await;
}

/// The same with `inbox_complete_batch`, two apps per batch: the batch transactions of eight
/// workers never deadlock (app locks in key order) and give the same records and numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_workers_on_two_pools_drain_interleaved_calls() {
    drain("drain_batched", true).await;
}

/// A processor: claims up to `claim` events and completes them (as one batch, or one by one)
/// until it found nothing to claim 20 times in a row while `quiet()` held; returns how many
/// events it applied.
async fn process(
    s: Arc<PgStore>,
    by_key: Arc<std::collections::HashMap<String, Normalized>>,
    claim: usize,
    batched: bool,
    quiet: impl Fn() -> bool,
) -> usize {
    let mut done = 0usize;
    let mut idle = 0;
    while idle < 20 {
        let claimed = s
            .inbox_claim(claim, Duration::from_secs(60), t0() + secs(600))
            .await
            .unwrap();
        if claimed.is_empty() {
            if quiet() {
                idle += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        idle = 0;
        if batched {
            let items = applying(&claimed, &by_key);
            for r in s.inbox_complete_batch(items, t0() + secs(600)).await {
                r.unwrap();
                done += 1;
            }
            continue;
        }
        for e in claimed {
            let n = by_key[&e.dedupe_key].clone();
            s.inbox_complete(
                e.id,
                e.attempts,
                EventResult::Apply(Box::new(n)),
                t0() + secs(600),
            )
            .await
            .unwrap();
            done += 1;
        }
    }
    done
}

/// Completions applying the claimed events' lifecycle updates (by dedupe key).
fn applying(
    claimed: &[InboxEvent],
    by_key: &std::collections::HashMap<String, Normalized>,
) -> Vec<Completion> {
    claimed
        .iter()
        .map(|e| Completion {
            event_id: e.id,
            attempt: e.attempts,
            result: EventResult::Apply(Box::new(by_key[&e.dedupe_key].clone())),
        })
        .collect()
}

/// A new app whose key lookup repeats `digit`.
async fn new_app(s: &PgStore, digit: &str) -> App {
    s.create_app(
        NewApp {
            id: AppId::new(),
            name: format!("App {digit}"),
            key: NewKey {
                lookup: digit.repeat(64),
                hint: "h".into(),
            },
            now: t0(),
        },
        AuditContext::default(),
    )
    .await
    .unwrap()
}

/// Two stores on separate pools of `max_connections` over `db`'s schema, and two apps whose
/// key lookups repeat `digits`.
async fn two_pools_two_apps(
    db: &TestDb,
    max_connections: u32,
    digits: [&str; 2],
) -> ([Arc<PgStore>; 2], Vec<AppId>) {
    let opts = PgOptions {
        max_connections,
        ..PgOptions::default()
    };
    let stores = [
        Arc::new(db.store_with(opts.clone()).await),
        Arc::new(db.store_with(opts).await),
    ];
    let mut apps = Vec::new();
    for digit in digits {
        let app = new_app(&stores[0], digit).await;
        apps.push(app.id);
    }
    (stores, apps)
}

/// Every call (the `k`-th belongs to `apps[k % 2]`) equals the sequential merge of its
/// lifecycle, read through the second store, and each app's outbox is numbered 1…n.
async fn assert_sequential_and_gap_free(
    stores: &[Arc<PgStore>; 2],
    apps: &[AppId],
    calls: Vec<u64>,
) {
    for (k, call) in calls.into_iter().enumerate() {
        let app = apps[k % 2];
        let got = stores[1]
            .get_call_by_dialpad_id(app, DialpadId(call))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            data(&got),
            data(&sequential(app, &lifecycle(call))),
            "call {call}"
        );
    }
    for &app in apps {
        let all = stores[0].events_since(app, 0, 100_000).await.unwrap();
        assert!(!all.is_empty());
        assert!(
            all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1),
            "gap or duplicate in the outbox numbering"
        );
    }
}

async fn drain(name: &str, batched: bool) {
    let Some(db) = TestDb::new(name).await else {
        return;
    };
    let (stores, apps) = two_pools_two_apps(&db, 6, ["1", "2"]).await;
    let calls: Vec<u64> = (0..20).map(|i| 7_000_000 + i).collect();
    let mut new = Vec::new();
    let mut by_key = std::collections::HashMap::new();
    for (k, call) in calls.iter().enumerate() {
        // Even calls belong to the first app, odd calls to the second.
        let app = apps[k % 2];
        for (i, n) in lifecycle(*call).into_iter().enumerate() {
            let key = format!("{call}-{i}");
            new.push(NewInboxEvent {
                id: Uuid::new_v4(),
                app_id: app,
                dedupe_key: key.clone(),
                event_type: None,
                call_id: Some(DialpadId(*call)),
                state: None,
                event_timestamp: n.call.as_ref().map(|c| c.event_ms),
                payload: serde_json::json!({}).into(),
                received_at: t0() + secs((i * 20 + k) as i64),
            });
            by_key.insert(key, n);
        }
    }
    shuffle(&mut new, 42);
    stores[0].inbox_insert(new).await.unwrap();
    let by_key = Arc::new(by_key);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let worker = process(stores[w % 2].clone(), by_key.clone(), 5, batched, || true);
        tasks.push(tokio::spawn(worker));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, calls.len() * 8, "every event applied exactly once");
    assert_sequential_and_gap_free(&stores, &apps, calls).await;
}

/// An inline batch that read its app before another applier committed finds the app's
/// generation moved when it writes, writes nothing, and runs again under the row lock: its
/// outbox numbers continue after the other applier's, not from what it first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_batch_that_read_stale_state_runs_again_under_the_lock() {
    use sqlx::Connection;

    let Some(db) = TestDb::new("stale").await else {
        return;
    };
    let s = Arc::new(db.store().await);
    let app = new_app(&s, "5").await;

    // Another applier, mid-transaction: it holds the app's row, moved its generation and
    // assigned five outbox numbers.
    let mut other = db.conn().await;
    let mut tx = other.begin().await.unwrap();
    let apply = format!(
        "UPDATE \"{}\".apps SET apply_gen = apply_gen + 1, last_event_seq = last_event_seq + 5 \
         WHERE id = $1",
        db.schema
    );
    sqlx::query(&apply)
        .bind(app.id.0)
        .execute(&mut *tx)
        .await
        .unwrap();

    let call = 4_000_001;
    let event = NewInboxEvent {
        id: Uuid::now_v7(),
        app_id: app.id,
        dedupe_key: "ring".into(),
        event_type: Some("call".into()),
        call_id: Some(DialpadId(call)),
        state: Some("ringing".into()),
        event_timestamp: Some(1_000),
        payload: serde_json::json!({}).into(),
        received_at: t0(),
    };
    let ring = lifecycle(call).remove(0);
    let batch = {
        let s = s.clone();
        let event = event.clone();
        tokio::spawn(async move {
            s.inbox_insert_processed(
                std::slice::from_ref(&event),
                vec![Some(EventResult::Apply(Box::new(ring)))],
                Duration::from_secs(30),
                t0(),
            )
            .await
        })
    };
    // The batch has read (its read takes no lock) and now waits for the app's row.
    until_waiting(&db, 1).await;
    tx.commit().await.unwrap();

    let done = batch.await.unwrap().unwrap();
    assert_eq!(done.outcomes, [InsertOutcome::Inserted(event.id)]);
    assert_eq!(done.processed, [true]);
    let seqs: Vec<u64> = done.published.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [6], "numbered after the other applier's five");
    assert_eq!(s.event_heads().await.unwrap(), vec![(app.id, 6)]);
    let stored = s.events_since(app.id, 0, 10).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    let got = s
        .get_call_by_dialpad_id(app.id, DialpadId(call))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, CallStatus::Ringing);
    assert_eq!(s.inbox_stats().await.unwrap().done, 1);
    assert_eq!(s.inline_reruns(), 1, "one optimistic batch ran again");
}

/// Waits until `n` sessions wait for a lock on a statement that moves an apply generation.
async fn until_waiting(db: &TestDb, n: i64) {
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%apply_gen%' AND pid <> pg_backend_pid() AND datname = current_database()";
    let mut probe = db.conn().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got: i64 = sqlx::query_scalar(waiting)
            .fetch_one(&mut probe)
            .await
            .unwrap();
        if got >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{got} of {n} batches waited for the app's row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two pipelined one-event batches of a call, and the app they ran for: another session
/// runs `hold` (SQL over the app's row, `{schema}` and `$1` = the app's id) in a transaction,
/// so the first batch's write waits for the row; the second batch reads and plans on top of
/// the first meanwhile; then the other session commits or rolls back (`commit`).
struct Pipelined {
    store: Arc<PgStore>,
    app: App,
    call: u64,
    events: Vec<Normalized>,
    first: InsertProcessed,
    second: InsertProcessed,
}

impl Pipelined {
    async fn run(db: &TestDb, digit: &str, call: u64, hold: &str, commit: bool) -> Self {
        use sqlx::Connection;

        let s = Arc::new(db.store().await);
        let app = new_app(&s, digit).await;
        s.upsert_mapping(app.id, DialpadId(12345), "crm_1", t0())
            .await
            .unwrap();
        let events = lifecycle(call);
        let mut other = db.conn().await;
        let mut tx = other.begin().await.unwrap();
        sqlx::query(&hold.replace("{schema}", &db.schema))
            .bind(app.id.0)
            .execute(&mut *tx)
            .await
            .unwrap();
        let spawn = |i: usize| {
            let s = s.clone();
            let n = events[i].clone();
            let event = NewInboxEvent {
                id: Uuid::now_v7(),
                app_id: app.id,
                dedupe_key: format!("e{i}"),
                event_type: Some("call".into()),
                call_id: Some(DialpadId(call)),
                state: None,
                event_timestamp: n.call.as_ref().map(|c| c.event_ms),
                payload: serde_json::json!({}).into(),
                received_at: t0(),
            };
            tokio::spawn(async move {
                s.inbox_insert_processed(
                    std::slice::from_ref(&event),
                    vec![Some(EventResult::Apply(Box::new(n)))],
                    Duration::from_secs(30),
                    t0(),
                )
                .await
            })
        };
        let first = spawn(0);
        until_waiting(db, 1).await;
        let second = spawn(1);
        // The second batch has read and planned (on top of the first) and waits for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.inline_batches_in_flight() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the second batch never planned"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert_eq!(
            (&first.processed, &second.processed),
            (&vec![true], &vec![true])
        );
        Pipelined {
            store: s,
            app,
            call,
            events,
            first,
            second,
        }
    }

    /// Checks that the batches published `from`, `from + 1`, … in write order (at least one
    /// message each), that the app's head is the last of them, and that the call is the
    /// sequential merge of the two events.
    async fn assert_sequential_from(&self, from: u64) {
        let seqs: Vec<u64> = self
            .first
            .published
            .iter()
            .chain(&self.second.published)
            .map(|p| p.seq)
            .collect();
        let n = seqs.len() as u64;
        assert!(n >= 2, "{seqs:?}");
        assert_eq!(
            seqs,
            (from..from + n).collect::<Vec<_>>(),
            "numbered in write order"
        );
        assert_eq!(
            self.store.event_heads().await.unwrap(),
            vec![(self.app.id, from + n - 1)]
        );
        let got = self
            .store
            .get_call_by_dialpad_id(self.app.id, DialpadId(self.call))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            data(&got),
            data(&sequential(self.app.id, &self.events[..2]))
        );
    }
}

/// Pipelined inline batches whose first one turns out stale: another applier (holding the
/// app's row, with its generation moved and five outbox numbers assigned) commits first, so
/// the first batch runs again under the lock; the second, planned on top of it, sees that the
/// batch it planned on did not commit and plans again (no second rerun): outbox numbers
/// continue gap-free after the other applier's, and the call is the sequential merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_planned_on_a_stale_one_plans_again() {
    let Some(db) = TestDb::new("replan").await else {
        return;
    };
    let apply = "UPDATE \"{schema}\".apps SET apply_gen = apply_gen + 1, \
                 last_event_seq = last_event_seq + 5 WHERE id = $1";
    let run = Pipelined::run(&db, "7", 4_000_003, apply, true).await;
    assert_eq!(
        run.store.inline_reruns(),
        1,
        "only the stale batch ran under the lock"
    );
    run.assert_sequential_from(6).await;
}

/// Pipelined inline batches: a batch read while the previous batch's write still waits (for a
/// row another session holds without applying anything) lays that batch over what it read,
/// expects the generation it will set, and so writes optimistically right after it — no
/// rerun — with the call and the outbox numbering as if the two had run one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_while_the_previous_one_writes_builds_on_it() {
    let Some(db) = TestDb::new("pipe").await else {
        return;
    };
    let hold = "SELECT 1 FROM \"{schema}\".apps WHERE id = $1 FOR UPDATE";
    let run = Pipelined::run(&db, "6", 4_000_002, hold, false).await;
    assert_eq!(
        run.store.inline_reruns(),
        0,
        "both batches wrote optimistically"
    );
    run.assert_sequential_from(1).await;
}

/// Two instances (separate pools) ingest the interleaved calls of two apps with inline batches
/// that mix both apps, while a third of the events went to the inbox first and two processors
/// drain them (so inline batches find calls blocked, and optimistic writes race locked
/// completions): every event is applied exactly once, every call ends in the sequential
/// result, and each app's outbox numbering is gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_batches_and_processors_on_two_pools_equal_the_sequential_merge() {
    let Some(db) = TestDb::new("inline_race").await else {
        return;
    };
    let (stores, apps) = two_pools_two_apps(&db, 4, ["3", "4"]).await;
    let calls: Vec<u64> = (0..60).map(|i| 8_000_000 + i).collect();
    let mut queued = Vec::new();
    let mut inline = Vec::new();
    let mut by_key = std::collections::HashMap::new();
    for (k, call) in calls.iter().enumerate() {
        let app = apps[k % 2];
        for (i, n) in lifecycle(*call).into_iter().enumerate() {
            let key = format!("{call}-{i}");
            let e = NewInboxEvent {
                id: Uuid::new_v4(),
                app_id: app,
                dedupe_key: key.clone(),
                event_type: None,
                call_id: Some(DialpadId(*call)),
                state: None,
                event_timestamp: n.call.as_ref().map(|c| c.event_ms),
                payload: serde_json::json!({}).into(),
                received_at: t0() + secs((i * 30 + k) as i64),
            };
            if (k + i) % 3 == 0 {
                queued.push(e);
            } else {
                inline.push(e);
            }
            by_key.insert(key, n);
        }
    }
    let total = by_key.len();
    stores[0].inbox_insert(queued).await.unwrap();
    shuffle(&mut inline, 7);
    let by_key = Arc::new(by_key);
    let ingesting = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let mut tasks = Vec::new();
    for (w, share) in [
        inline.iter().step_by(2).cloned().collect::<Vec<_>>(),
        inline.iter().skip(1).step_by(2).cloned().collect(),
    ]
    .into_iter()
    .enumerate()
    {
        let s = stores[w].clone();
        let by_key = by_key.clone();
        let ingesting = ingesting.clone();
        tasks.push(tokio::spawn(async move {
            let mut processed = 0;
            for batch in share.chunks(6) {
                let results = batch
                    .iter()
                    .map(|e| Some(EventResult::Apply(Box::new(by_key[&e.dedupe_key].clone()))))
                    .collect();
                let done = s
                    .inbox_insert_processed(batch, results, Duration::from_secs(60), t0())
                    .await
                    .unwrap();
                assert!(
                    done.outcomes
                        .iter()
                        .all(|o| matches!(o, InsertOutcome::Inserted(_)))
                );
                processed += done.processed.iter().filter(|p| **p).count();
            }
            ingesting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            processed
        }));
    }
    for s in &stores {
        let ingesting = ingesting.clone();
        let quiet = move || ingesting.load(std::sync::atomic::Ordering::SeqCst) == 0;
        tasks.push(tokio::spawn(process(
            s.clone(),
            by_key.clone(),
            4,
            true,
            quiet,
        )));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap();
    }
    assert_eq!(applied, total, "every event applied exactly once");
    let st = stores[0].inbox_stats().await.unwrap();
    assert_eq!(st.done, total as u64);
    assert_sequential_and_gap_free(&stores, &apps, calls).await;
}
