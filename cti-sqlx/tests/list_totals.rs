//! List totals (`Page::total` of calls, messages, voicemails) stay exact on SQLite and
//! PostgreSQL whatever writes the rows: randomized event sequences through the pipeline
//! (inserts, status and direction changes, late events), multi-row SQL updates and deletes,
//! `delete_voicemail`, app deletion (cascade), the migration backfill, the import of an
//! original database and concurrent completes (PostgreSQL). Also the other migrations that
//! rewrite stored rows: `json` then `text` payloads (PostgreSQL 0003 and 0009) and the
//! time-ordered dedupe index (0005, both backends), whose rows must keep deduplicating
//! redeliveries.
//!
//! Every check compares the store's totals with the rows the page queries return, and the
//! counter tables with a real `COUNT(*) … GROUP BY`.

mod pg_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeZone;
use cti_core::model::*;
use cti_core::normalize::{CallUpdate, CtiEvent, MessageUpdate, Normalized, VoicemailUpdate};
use cti_core::store::conformance::voicemail_norm;
use cti_core::store::*;
use cti_sqlx::SqliteStore;
use uuid::Uuid;

// --- randomness and data ---------------------------------------------------------------------

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn t0() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 29, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

const NUMBERS: [&str; 4] = [
    "+15550000001",
    "+15550000002",
    "+15550000003",
    "+15550000004",
];
const USERS: [u64; 3] = [11, 12, 13];

fn direction(rng: &mut Rng) -> Option<Direction> {
    *rng.pick(&[Some(Direction::Inbound), Some(Direction::Outbound), None])
}

/// A random event: mostly call events (any status, direction flips, late timestamps), some
/// voicemails and SMS (direction may change on a later event of the same message).
fn random_event(rng: &mut Rng, calls: u64) -> (Option<u64>, Normalized) {
    let roll = rng.below(10);
    let call = 1 + rng.below(calls);
    let ms = 1 + rng.below(100_000) as i64;
    if roll < 7 {
        let event = rng
            .pick(&[
                CtiEvent::CallRinging,
                CtiEvent::CallStarted,
                CtiEvent::CallHeld,
                CtiEvent::CallEnded,
                CtiEvent::CallMissed,
                CtiEvent::CallRejected,
                CtiEvent::CallVoicemail,
                CtiEvent::CallUpdated,
                CtiEvent::RecordingCompleted,
            ])
            .clone();
        let n = Normalized {
            call: Some(CallUpdate {
                dialpad_call_id: Some(DialpadId(call)),
                status: event.call_status(),
                event_ms: ms,
                direction: direction(rng),
                from_number: Some(rng.pick(&NUMBERS).to_string()),
                to_number: Some(rng.pick(&NUMBERS).to_string()),
                dialpad_user_id: Some(DialpadId(*rng.pick(&USERS))),
                started_at: (rng.below(10) > 0)
                    .then(|| t0() + chrono::Duration::seconds(rng.below(1000) as i64)),
                ..Default::default()
            }),
            event,
            voicemail: None,
            message: None,
        };
        (Some(call), n)
    } else if roll < 8 {
        let n = voicemail_norm(
            call,
            ms,
            VoicemailUpdate {
                dialpad_user_id: Some(DialpadId(*rng.pick(&USERS))),
                recording_url: Some("https://vm.example/1.mp3".into()),
                duration_seconds: Some(30),
                ..Default::default()
            },
        );
        (Some(call), n)
    } else {
        let dir = *rng.pick(&[Direction::Inbound, Direction::Outbound]);
        let n = Normalized {
            event: if dir == Direction::Inbound {
                CtiEvent::SmsReceived
            } else {
                CtiEvent::SmsSent
            },
            call: None,
            voicemail: None,
            message: Some(MessageUpdate {
                dialpad_message_id: Some(DialpadId(1 + rng.below(calls))),
                direction: (rng.below(8) > 0).then_some(dir),
                from_number: Some(rng.pick(&NUMBERS).to_string()),
                to_number: Some(rng.pick(&NUMBERS).to_string()),
                text: Some("hi".into()),
                dialpad_user_id: (rng.below(3) > 0).then(|| DialpadId(*rng.pick(&USERS))),
                sent_at: (rng.below(10) > 0)
                    .then(|| t0() + chrono::Duration::seconds(rng.below(1000) as i64)),
                ..Default::default()
            }),
        };
        (None, n)
    }
}

async fn new_app(s: &Arc<dyn Store>) -> AppId {
    let id = AppId::new();
    s.create_app(
        NewApp {
            id,
            name: "totals".into(),
            key: NewKey {
                lookup: format!("{:0>64}", id.0.simple()),
                hint: "raw_tot...0000".into(),
            },
            now: t0(),
        },
        AuditContext::default(),
    )
    .await
    .expect("create app");
    id
}

// --- the pipeline ----------------------------------------------------------------------------

/// Inserts `n` random events over `apps`, then `workers` concurrent workers claim and complete
/// until the inbox is drained (per-call order is the inbox's business).
async fn run_events(s: &Arc<dyn Store>, apps: &[AppId], rng: &mut Rng, n: usize, workers: usize) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut pending = HashMap::new();
    let mut batch = Vec::new();
    for _ in 0..n {
        let app = *rng.pick(apps);
        let (call, norm) = random_event(rng, 40);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let e = NewInboxEvent {
            id: Uuid::new_v4(),
            app_id: app,
            dedupe_key: format!("e{seq}"),
            event_type: Some("x".into()),
            call_id: call.map(DialpadId),
            state: Some("x".into()),
            event_timestamp: None,
            payload: serde_json::json!({ "seq": seq }).into(),
            received_at: t0() + chrono::Duration::milliseconds(seq as i64),
        };
        pending.insert(e.id, norm);
        batch.push(e);
    }
    for chunk in batch.chunks(100) {
        s.inbox_insert(chunk.to_vec()).await.expect("insert");
    }
    let pending = Arc::new(Mutex::new(pending));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (s, pending) = (s.clone(), pending.clone());
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            loop {
                let now = t0() + chrono::Duration::days(1);
                let claimed = s
                    .inbox_claim(16, Duration::from_secs(600), now)
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    if pending.lock().expect("lock").is_empty() || idle > 200 {
                        return;
                    }
                    // Others hold the remaining events of a call: wait for them.
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for e in claimed {
                    let n = pending
                        .lock()
                        .expect("lock")
                        .remove(&e.id)
                        .expect("a known event");
                    s.inbox_complete(e.id, e.attempts, EventResult::Apply(Box::new(n)), now)
                        .await
                        .expect("complete");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    assert!(
        pending.lock().expect("lock").is_empty(),
        "inbox not drained"
    );
}

// --- checks ----------------------------------------------------------------------------------

async fn all_calls(s: &Arc<dyn Store>, app: AppId) -> Vec<Call> {
    let mut out = Vec::new();
    loop {
        let p = s
            .list_calls(
                app,
                &CallFilter::default(),
                PageRequest::new(100, out.len() as u64),
            )
            .await
            .expect("list calls");
        let done = p.items.len() < 100;
        out.extend(p.items);
        if done {
            assert_eq!(p.total, out.len() as u64, "unfiltered call total");
            return out;
        }
    }
}

async fn all_messages(s: &Arc<dyn Store>, app: AppId) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let p = s
            .list_messages(
                app,
                &MessageFilter::default(),
                PageRequest::new(100, out.len() as u64),
            )
            .await
            .expect("list messages");
        let done = p.items.len() < 100;
        out.extend(p.items);
        if done {
            assert_eq!(p.total, out.len() as u64, "unfiltered message total");
            return out;
        }
    }
}

fn call_filters() -> Vec<CallFilter> {
    use CallStatus::*;
    let statuses: Vec<Option<Vec<CallStatus>>> = vec![
        None,
        Some(vec![]),
        Some(vec![Ringing]),
        Some(vec![Active]),
        Some(vec![Ended]),
        Some(vec![Missed]),
        Some(vec![Rejected]),
        Some(vec![Voicemail]),
        Some(vec![Ringing, Active]),
        Some(vec![Missed, Ended]),
    ];
    let mut out = Vec::new();
    for st in &statuses {
        for d in [None, Some(Direction::Inbound), Some(Direction::Outbound)] {
            for (from, to) in [
                (None, None),
                (Some(NUMBERS[0]), None),
                (None, Some(NUMBERS[1])),
                (Some(NUMBERS[2]), Some(NUMBERS[3])),
            ] {
                out.push(CallFilter {
                    statuses: st.clone(),
                    direction: d,
                    from: from.map(str::to_string),
                    to: to.map(str::to_string),
                });
            }
        }
    }
    out
}

fn call_matches(c: &Call, f: &CallFilter) -> bool {
    f.statuses.as_ref().is_none_or(|s| s.contains(&c.status))
        && f.direction.is_none_or(|d| c.direction == Some(d))
        && f.from
            .as_ref()
            .is_none_or(|x| c.from_number.as_ref() == Some(x))
        && f.to
            .as_ref()
            .is_none_or(|x| c.to_number.as_ref() == Some(x))
}

/// Totals and first pages of every filter against the app's rows; a page past the end and a
/// page in the middle keep the total.
async fn check_app(s: &Arc<dyn Store>, app: AppId) {
    let calls = all_calls(s, app).await;
    for f in call_filters() {
        let want: Vec<Uuid> = calls
            .iter()
            .filter(|c| call_matches(c, &f))
            .map(|c| c.id)
            .collect();
        let p = s
            .list_calls(app, &f, PageRequest::new(100, 0))
            .await
            .expect("list calls");
        assert_eq!(p.total, want.len() as u64, "total of {f:?}");
        let got: Vec<Uuid> = p.items.iter().map(|c| c.id).collect();
        assert_eq!(got, want[..want.len().min(100)], "items of {f:?}");
        for (limit, offset) in [(2, 1), (5, want.len() as u64 + 3), (0, 0)] {
            let p = s
                .list_calls(app, &f, PageRequest::new(limit, offset))
                .await
                .expect("list calls");
            assert_eq!(p.total, want.len() as u64, "total of {f:?} at {offset}");
        }
    }

    let messages = all_messages(s, app).await;
    for d in [None, Some(Direction::Inbound), Some(Direction::Outbound)] {
        for user in [None, Some(DialpadId(USERS[0]))] {
            for from in [None, Some(NUMBERS[1].to_string())] {
                let f = MessageFilter {
                    direction: d,
                    from: from.clone(),
                    to: None,
                    dialpad_user_id: user,
                };
                let want: Vec<Uuid> = messages
                    .iter()
                    .filter(|m| {
                        d.is_none_or(|d| m.direction == Some(d))
                            && user.is_none_or(|u| m.dialpad_user_id == Some(u))
                            && from
                                .as_ref()
                                .is_none_or(|x| m.from_number.as_ref() == Some(x))
                    })
                    .map(|m| m.id)
                    .collect();
                for (limit, offset) in [(100, 0), (1, 1), (5, want.len() as u64 + 1), (0, 0)] {
                    let p = s
                        .list_messages(app, &f, PageRequest::new(limit, offset))
                        .await
                        .expect("list messages");
                    assert_eq!(p.total, want.len() as u64, "total of {f:?} at {offset}");
                    if limit == 100 {
                        let got: Vec<Uuid> = p.items.iter().map(|m| m.id).collect();
                        assert_eq!(got, want, "items of {f:?}");
                    }
                }
            }
        }
    }

    let all = s
        .list_voicemails(app, &VoicemailFilter::default(), PageRequest::new(100, 0))
        .await
        .expect("list voicemails");
    assert!(all.items.len() < 100);
    assert_eq!(all.total, all.items.len() as u64, "voicemail total");
    let past = s
        .list_voicemails(app, &VoicemailFilter::default(), PageRequest::new(10, 200))
        .await
        .expect("list voicemails");
    assert_eq!(past.total, all.total, "voicemail total past the end");
    let user = VoicemailFilter {
        dialpad_user_id: Some(DialpadId(USERS[1])),
    };
    let p = s
        .list_voicemails(app, &user, PageRequest::new(100, 0))
        .await
        .expect("list voicemails");
    let want = all
        .items
        .iter()
        .filter(|v| v.dialpad_user_id == Some(DialpadId(USERS[1])))
        .count();
    assert_eq!((p.total, p.items.len()), (want as u64, want));
}

/// The counter tables (summed over PostgreSQL's shards) against `COUNT(*) … GROUP BY` of the
/// rows (zero rows may stay); no key sums to a negative count.
const COUNTER_CHECKS: [&str; 4] = [
    "SELECT COUNT(*) FROM (
        SELECT app_id, status, COALESCE(direction, '') AS direction, COUNT(*) AS n
          FROM calls GROUP BY 1, 2, 3
     ) r FULL JOIN (SELECT app_id, status, direction, SUM(n) AS n FROM call_counts
                GROUP BY 1, 2, 3 HAVING SUM(n) <> 0) c USING (app_id, status, direction)
     WHERE r.n IS DISTINCT FROM c.n",
    "SELECT COUNT(*) FROM (
        SELECT app_id, COALESCE(direction, '') AS direction, COUNT(*) AS n
          FROM messages GROUP BY 1, 2
     ) r FULL JOIN (SELECT app_id, direction, SUM(n) AS n FROM message_counts
                GROUP BY 1, 2 HAVING SUM(n) <> 0) c USING (app_id, direction)
     WHERE r.n IS DISTINCT FROM c.n",
    "SELECT COUNT(*) FROM (SELECT app_id, COUNT(*) AS n FROM voicemails GROUP BY 1) r
     FULL JOIN (SELECT app_id, SUM(n) AS n FROM voicemail_counts
                GROUP BY 1 HAVING SUM(n) <> 0) c USING (app_id)
     WHERE r.n IS DISTINCT FROM c.n",
    "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM call_counts GROUP BY app_id, status, direction
                                      HAVING SUM(n) < 0) x)
          + (SELECT COUNT(*) FROM (SELECT 1 FROM message_counts GROUP BY app_id, direction
                                      HAVING SUM(n) < 0) x)
          + (SELECT COUNT(*) FROM (SELECT 1 FROM voicemail_counts GROUP BY app_id
                                      HAVING SUM(n) < 0) x)",
];

/// Plain SQL on the store's database.
enum Raw {
    Lite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Raw {
    async fn exec(&self, sql: &str) -> u64 {
        match self {
            Raw::Lite(p) => sqlx::raw_sql(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Pg(p) => sqlx::raw_sql(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    async fn scalar(&self, sql: &str) -> i64 {
        match self {
            Raw::Lite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Raw::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    async fn check_counters(&self) {
        for sql in COUNTER_CHECKS {
            assert_eq!(self.scalar(sql).await, 0, "counters differ: {sql}");
        }
    }
}

async fn check(s: &Arc<dyn Store>, raw: &Raw, apps: &[AppId]) {
    raw.check_counters().await;
    for app in apps {
        check_app(s, *app).await;
    }
}

/// The randomized scenario shared by both backends.
async fn random_scenario(s: Arc<dyn Store>, raw: Raw, seed: u64, workers: usize) {
    let mut rng = Rng(seed);
    let apps = vec![new_app(&s).await, new_app(&s).await, new_app(&s).await];
    run_events(&s, &apps, &mut rng, 300, workers).await;
    check(&s, &raw, &apps).await;

    // Writers other than the pipeline: multi-row updates and deletes.
    assert!(
        raw.exec(
            "UPDATE calls SET direction = CASE direction WHEN 'inbound' THEN 'outbound'
                 WHEN 'outbound' THEN NULL ELSE 'inbound' END
             WHERE dialpad_call_id % 3 = 0",
        )
        .await
            > 0
    );
    raw.exec("UPDATE calls SET status = 'missed' WHERE status IN ('ringing', 'active')")
        .await;
    raw.exec("UPDATE calls SET status = 'active' WHERE dialpad_call_id % 7 = 2")
        .await;
    raw.exec(
        "UPDATE calls SET recording_url = 'https://r.example/x' WHERE dialpad_call_id % 2 = 0",
    )
    .await;
    assert!(
        raw.exec("DELETE FROM calls WHERE dialpad_call_id % 5 = 1")
            .await
            > 0
    );
    raw.exec(
        "UPDATE messages SET direction = CASE WHEN direction = 'inbound' THEN 'outbound'
             ELSE 'inbound' END WHERE dialpad_message_id % 2 = 0",
    )
    .await;
    raw.exec("DELETE FROM messages WHERE dialpad_message_id % 7 = 0")
        .await;
    raw.exec("DELETE FROM voicemails WHERE dialpad_call_id % 4 = 0")
        .await;
    let vms = s
        .list_voicemails(apps[0], &VoicemailFilter::default(), PageRequest::new(1, 0))
        .await
        .expect("list voicemails");
    if let Some(v) = vms.items.first() {
        assert!(s.delete_voicemail(apps[0], v.id).await.expect("delete"));
    }
    check(&s, &raw, &apps).await;

    // More events: deleted calls come back, statuses move on.
    run_events(&s, &apps, &mut rng, 300, workers).await;
    check(&s, &raw, &apps).await;

    // An app's deletion takes its counters along.
    let gone = apps[2];
    let n = raw
        .exec(&format!("DELETE FROM apps WHERE id = '{}'", gone.0))
        .await;
    assert_eq!(n, 1);
    for t in ["call_counts", "message_counts", "voicemail_counts"] {
        let left = raw
            .scalar(&format!(
                "SELECT COUNT(*) FROM {t} WHERE app_id = '{}'",
                gone.0
            ))
            .await;
        assert_eq!(left, 0, "{t} rows of a deleted app");
    }
    check(&s, &raw, &apps[..2]).await;
}

/// Copies the migrations of `dir` older than `below` into a new directory.
fn migrations_before(dir: &str, below: i64) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tempdir");
    let src = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(&src).expect("migrations") {
        let path = e.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MAX);
        if version < below {
            std::fs::copy(&path, out.path().join(name)).expect("copy");
        }
    }
    out
}

/// Stores inbox rows with raw SQL on a schema older than migration 0005 — a body-hash key with
/// an event time, one without, an explicit id; `columns`/`values` add what the backend's table
/// requires — runs `migrate`, and checks [`old_rows_still_deduplicate`]. Returns the rows
/// (id, key, event time).
async fn dedupe_survives_migration<F, E>(
    s: &Arc<dyn Store>,
    raw: &Raw,
    columns: &str,
    values: &str,
    migrate: impl FnOnce() -> F,
) -> Vec<(Uuid, String, Option<i64>)>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Debug,
{
    let app = new_app(s).await;
    let rows = vec![
        (Uuid::now_v7(), "ab".repeat(32), Some(1_767_225_600_000)),
        (Uuid::now_v7(), "cd".repeat(32), None),
        (
            Uuid::now_v7(),
            "id:evt-1".to_string(),
            Some(1_767_225_600_001),
        ),
    ];
    for (id, key, ts) in &rows {
        let ts = ts.map_or("NULL".to_string(), |t| t.to_string());
        raw.exec(&format!(
            "INSERT INTO webhook_events (id, app_id, dedupe_key, call_id, event_timestamp, payload{columns})
             VALUES ('{id}', '{app}', '{key}', 5, {ts}, '{{\"call_id\": 5}}'{values})",
            app = app.0
        ))
        .await;
    }
    migrate().await.expect("migrate to the newest version");
    old_rows_still_deduplicate(s, app, &rows).await;
    rows
}

/// After migration 0005, redeliveries of the rows of [`dedupe_survives_migration`] are
/// duplicates of them (through the group-commit and the inline insert), new keys are stored,
/// and the old rows are intact.
async fn old_rows_still_deduplicate(
    s: &Arc<dyn Store>,
    app: AppId,
    rows: &[(Uuid, String, Option<i64>)],
) {
    let redelivered: Vec<NewInboxEvent> = rows
        .iter()
        .map(|(_, key, ts)| NewInboxEvent {
            id: Uuid::now_v7(),
            app_id: app,
            dedupe_key: key.clone(),
            event_type: Some("hangup".into()),
            call_id: Some(DialpadId(5)),
            state: Some("hangup".into()),
            event_timestamp: *ts,
            payload: serde_json::json!({"call_id": 5, "state": "hangup"}).into(),
            received_at: t0(),
        })
        .collect();
    let out = s.inbox_insert(redelivered.clone()).await.expect("insert");
    let want: Vec<InsertOutcome> = rows.iter().map(|r| InsertOutcome::Duplicate(r.0)).collect();
    assert_eq!(out, want);
    let inline = s
        .inbox_insert_processed(
            &redelivered,
            vec![None; redelivered.len()],
            Duration::from_secs(30),
            t0(),
        )
        .await
        .expect("insert processed");
    assert_eq!(inline.outcomes, want);
    let mut fresh = redelivered[0].clone();
    fresh.id = Uuid::now_v7();
    fresh.dedupe_key = "ef".repeat(32);
    let out = s.inbox_insert(vec![fresh.clone()]).await.expect("insert");
    assert_eq!(out, vec![InsertOutcome::Inserted(fresh.id)]);
    for (id, key, ts) in rows {
        let got = s
            .inbox_get(Some(app), *id)
            .await
            .expect("get")
            .expect("old row");
        assert_eq!((&got.dedupe_key, got.event_timestamp), (key, *ts));
    }
}

// --- SQLite ----------------------------------------------------------------------------------

mod sqlite {
    use super::*;

    async fn open() -> (tempfile::TempDir, String, SqliteStore, Raw) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("cti.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let raw = Raw::Lite(sqlx::SqlitePool::connect(&url).await.expect("raw"));
        (dir, url, store, raw)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn random_sequences_keep_totals_exact() {
        for seed in [1, 0x5eed] {
            let (_dir, _url, store, raw) = open().await;
            random_scenario(Arc::new(store), raw, seed, 3).await;
        }
    }

    /// A store on a fresh database file with the migrations older than `below` applied, and a
    /// raw pool on the same file (the directory lives as long as the returned guard).
    async fn store_before(below: i64) -> (tempfile::TempDir, SqliteStore, Raw) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("cti.db").display());
        let store = SqliteStore::connect(&url).await.expect("connect");
        let old = migrations_before("sqlite", below);
        let pool = sqlx::SqlitePool::connect(&url).await.expect("raw");
        sqlx::migrate::Migrator::new(old.path())
            .await
            .expect("old migrations")
            .run(&pool)
            .await
            .expect("run old migrations");
        (dir, store, Raw::Lite(pool))
    }

    /// Rows written before migration 0003 are counted by its backfill.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_backfills_counters() {
        let (_dir, store, raw) = store_before(3).await;
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let apps = vec![new_app(&s).await, new_app(&s).await];
        for (i, app) in apps.iter().enumerate() {
            raw.exec(&format!(
                "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 50)
                 INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, status,
                                    started_at, created_at, updated_at)
                 SELECT printf('00000000-0000-4000-8000-%012d', x + {i} * 1000), '{app}', x,
                        CASE x % 3 WHEN 0 THEN NULL WHEN 1 THEN 'inbound' ELSE 'outbound' END,
                        '{from}',
                        CASE x % 4 WHEN 0 THEN 'ringing' WHEN 1 THEN 'ended' ELSE 'missed' END,
                        CASE WHEN x % 5 = 0 THEN NULL ELSE x * 1000000 END, x, x
                 FROM g;
                 WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 50)
                 INSERT INTO messages (id, app_id, dialpad_message_id, direction, created_at, updated_at)
                 SELECT printf('00000000-0000-4000-9000-%012d', x + {i} * 1000), '{app}', x,
                        CASE WHEN x % 3 = 0 THEN 'inbound' ELSE 'outbound' END, x, x
                 FROM g WHERE x <= 20;
                 WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 50)
                 INSERT INTO voicemails (id, app_id, dialpad_call_id, dialpad_user_id, created_at, updated_at)
                 SELECT printf('00000000-0000-4000-a000-%012d', x + {i} * 1000), '{app}', x, {user}, x, x
                 FROM g WHERE x <= 7;",
                app = app.0,
                from = NUMBERS[0],
                user = USERS[1],
            ))
            .await;
        }
        store
            .migrate()
            .await
            .expect("migrate to the newest version");
        check(&s, &raw, &apps).await;
        let p = s
            .list_calls(apps[0], &CallFilter::default(), PageRequest::new(10, 0))
            .await
            .expect("list");
        assert_eq!(p.total, 50);
    }

    /// Inbox rows stored before migration 0005 rebuilt the table keep deduplicating, and keep
    /// their indexes: the pending ones are still claimed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_to_the_time_ordered_dedupe_index_keeps_duplicates() {
        let (_dir, store, raw) = store_before(5).await;
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let rows =
            dedupe_survives_migration(&s, &raw, ", next_attempt_at, received_at", ", 0, 0", || {
                store.migrate()
            })
            .await;
        assert_eq!(
            raw.scalar("SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'")
                .await,
            0
        );
        let claimed = s
            .inbox_claim(
                10,
                Duration::from_secs(30),
                t0() + chrono::Duration::days(1),
            )
            .await
            .expect("claim");
        assert!(
            claimed.iter().any(|e| e.id == rows[0].0),
            "old pending rows are claimed"
        );
    }
}

// --- PostgreSQL ------------------------------------------------------------------------------

mod pg {
    use super::*;
    use cti_sqlx::import::{ImportOptions, from_original};
    use cti_sqlx::pg::PgStore;
    use pg_support::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn random_sequences_keep_totals_exact() {
        let Some(db) = TestDb::new("totals").await else {
            return;
        };
        let store = db.store().await;
        let raw = Raw::Pg(store.pool().clone());
        random_scenario(Arc::new(store), raw, 7, 4).await;
    }

    /// `TRUNCATE` fires no row trigger: the counters are emptied by a statement trigger.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_resets_counters() {
        let Some(db) = TestDb::new("totals_trunc").await else {
            return;
        };
        let store = db.store().await;
        let raw = Raw::Pg(store.pool().clone());
        let s: Arc<dyn Store> = Arc::new(store);
        let apps = vec![new_app(&s).await];
        run_events(&s, &apps, &mut Rng(3), 120, 2).await;
        raw.exec("TRUNCATE calls, messages, voicemails").await;
        check(&s, &raw, &apps).await;
        let p = s
            .list_calls(apps[0], &CallFilter::default(), PageRequest::new(10, 0))
            .await
            .expect("list");
        assert_eq!((p.total, p.items.len()), (0, 0));
        run_events(&s, &apps, &mut Rng(4), 120, 2).await;
        check(&s, &raw, &apps).await;
    }

    /// Many workers completing events of different calls of one app at once (the counter rows
    /// are shared): totals stay exact, nothing deadlocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_completes_keep_totals_exact() {
        let Some(db) = TestDb::new("totals_conc").await else {
            return;
        };
        let store = db.store().await;
        let raw = Raw::Pg(store.pool().clone());
        let s: Arc<dyn Store> = Arc::new(store);
        let apps = vec![new_app(&s).await, new_app(&s).await];
        let mut rng = Rng(99);
        // Mostly one app: its counter rows are the contended ones.
        let hot = [apps[0], apps[0], apps[0], apps[1]];
        run_events(&s, &hot, &mut rng, 800, 16).await;
        check(&s, &raw, &apps).await;
        run_events(&s, &hot, &mut rng, 400, 16).await;
        check(&s, &raw, &apps).await;
    }

    /// A store on the scratch schema of `db` with the migrations older than `below` applied.
    async fn store_before(db: &TestDb, below: i64) -> PgStore {
        let store = PgStore::connect(&db.url, db.options())
            .await
            .expect("connect")
            .with_guard(Arc::new(db.clone()));
        let old = migrations_before("postgres", below);
        sqlx::migrate::Migrator::new(old.path())
            .await
            .expect("old migrations")
            .run(store.pool())
            .await
            .expect("run old migrations");
        store
    }

    /// Rows written before migration 0002 are counted by its backfill.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_backfills_counters() {
        let Some(db) = TestDb::new("totals_mig").await else {
            return;
        };
        let store = store_before(&db, 2).await;
        let raw = Raw::Pg(store.pool().clone());
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let apps = vec![new_app(&s).await, new_app(&s).await];
        for app in &apps {
            raw.exec(&format!(
                "INSERT INTO calls (app_id, dialpad_call_id, direction, from_number, status, started_at)
                 SELECT '{app}', x,
                        CASE x % 3 WHEN 0 THEN NULL WHEN 1 THEN 'inbound' ELSE 'outbound' END,
                        '{from}',
                        CASE x % 4 WHEN 0 THEN 'ringing' WHEN 1 THEN 'ended' ELSE 'missed' END,
                        CASE WHEN x % 5 = 0 THEN NULL ELSE now() - x * interval '1 minute' END
                 FROM generate_series(1, 50) x;
                 INSERT INTO messages (app_id, dialpad_message_id, direction)
                 SELECT '{app}', x, CASE WHEN x % 3 = 0 THEN 'inbound' ELSE 'outbound' END
                 FROM generate_series(1, 20) x;
                 INSERT INTO voicemails (app_id, dialpad_call_id, dialpad_user_id)
                 SELECT '{app}', x, {user} FROM generate_series(1, 7) x;",
                app = app.0,
                from = NUMBERS[0],
                user = USERS[1],
            ))
            .await;
        }
        store
            .migrate()
            .await
            .expect("migrate to the newest version");
        check(&s, &raw, &apps).await;
        let p = s
            .list_calls(apps[0], &CallFilter::default(), PageRequest::new(10, 0))
            .await
            .expect("list");
        assert_eq!(p.total, 50);
    }

    /// Payloads stored as `jsonb` before migration 0003 read back the same after it (`json`)
    /// and after 0009 (`text`, `lz4` where the server has it), so do merge logs (`jsonb`, then
    /// `text` since 0009; `calls` then has `fillfactor = 80`), and the inbox and the outbox
    /// accept rows once migration 0004 dropped their foreign keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn payload_type_migrations_keep_rows() {
        let Some(db) = TestDb::new("json_mig").await else {
            return;
        };
        let store = store_before(&db, 3).await;
        let raw = Raw::Pg(store.pool().clone());
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let app = new_app(&s).await;
        let payload =
            r#"{"call_id": 77, "state": "hangup", "nested": {"name": "Zoë", "n": [1, 2.5]}}"#;
        let event = Uuid::now_v7();
        raw.exec(&format!(
            "INSERT INTO webhook_events (id, app_id, dedupe_key, call_id, payload)
             VALUES ('{event}', '{app}', 'k', 77, '{payload}');
             INSERT INTO calls (app_id, dialpad_call_id, status, raw_payload, merge_log)
             VALUES ('{app}', 77, 'ended', '{payload}',
                     '{{\"first\": {{\"ended\": 5}}, \"fields\": {{\"from_number\": 7}}}}');
             INSERT INTO cti_events (app_id, seq, event, payload)
             VALUES ('{app}', 1, 'call.ended', '{{\"event\": \"call.ended\"}}');",
            app = app.0,
        ))
        .await;
        store
            .migrate()
            .await
            .expect("migrate to the newest version");
        let want: serde_json::Value = serde_json::from_str(payload).unwrap();
        let got = s.inbox_get(None, event).await.unwrap().expect("event");
        assert_eq!(got.payload.to_value().unwrap(), want);
        let call = s
            .get_call_by_dialpad_id(app, DialpadId(77))
            .await
            .unwrap()
            .expect("call");
        assert_eq!(call.raw_payload.expect("raw").to_value().unwrap(), want);
        assert_eq!(call.merge_log.first.get(&CallStatus::Ended), Some(&5));
        assert_eq!(call.merge_log.fields.get("from_number"), Some(&7));
        let published = s.events_since(app, 0, 10).await.unwrap();
        assert_eq!(
            published[0].payload,
            serde_json::json!({"event": "call.ended"})
        );
        let lz4 = raw
            .scalar(
                "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' \
                 AND 'lz4' = ANY(enumvals)",
            )
            .await;
        let text_columns = raw
            .scalar(&format!(
                "SELECT count(*) FROM pg_attribute \
                 WHERE (attrelid, attname) IN (('webhook_events'::regclass, 'payload'), \
                   ('calls'::regclass, 'raw_payload'), ('cti_events'::regclass, 'payload')) \
                   AND atttypid = 'text'::regtype AND attcompression = '{}'",
                if lz4 == 1 { "l" } else { "" }
            ))
            .await;
        assert_eq!(
            text_columns, 3,
            "payload columns are text, lz4-compressed if possible"
        );
        let fillfactor = raw
            .scalar(
                "SELECT count(*) FROM pg_class WHERE oid = 'calls'::regclass \
                 AND 'fillfactor=80' = ANY(reloptions)",
            )
            .await;
        assert_eq!(fillfactor, 1, "calls leave room for HOT updates");
        // No foreign key any more: an event of an app that does not exist is stored.
        raw.exec(&format!(
            "INSERT INTO webhook_events (app_id, dedupe_key, payload)
             VALUES ('{}', 'k', '{{}}')",
            Uuid::new_v4()
        ))
        .await;
    }

    /// Inbox rows stored before migration 0005 keep deduplicating after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_to_the_time_ordered_dedupe_index_keeps_duplicates() {
        let Some(db) = TestDb::new("dedupe_mig").await else {
            return;
        };
        let store = store_before(&db, 5).await;
        let raw = Raw::Pg(store.pool().clone());
        let s: Arc<dyn Store> = Arc::new(store.clone());
        dedupe_survives_migration(&s, &raw, "", "", || store.migrate()).await;
    }

    /// Migration 0008 recomputes `dedupe_at` without the regular expression of 0005: every
    /// row keeps the value 0005 gave it — a body hash (64 lowercase hex digits) its event time,
    /// every near miss 0 — redeliveries stay duplicates, and new payloads are compressed with
    /// lz4 where the server supports it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_to_the_cheaper_dedupe_expression_keeps_every_value() {
        let Some(db) = TestDb::new("dedupe_at_mig").await else {
            return;
        };
        let store = store_before(&db, 8).await;
        let raw = Raw::Pg(store.pool().clone());
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let app = new_app(&s).await;
        let ts = 1_767_225_600_000_i64;
        let hex = "0123456789abcdef".repeat(4);
        let keys: Vec<(String, i64)> = vec![
            (hex.clone(), ts),
            (hex.to_uppercase(), 0),
            (hex[..63].to_string(), 0),
            (format!("{hex}0"), 0),
            (format!("g{}", &hex[1..]), 0),
            (format!("{}\n", &hex[..63]), 0),
            // 64 bytes, 63 characters.
            (format!("é{}", &hex[..62]), 0),
            ("id:evt-1".to_string(), 0),
        ];
        for (i, (key, _)) in keys.iter().enumerate() {
            raw.exec(&format!(
                "INSERT INTO webhook_events (app_id, dedupe_key, call_id, event_timestamp, payload)
                 VALUES ('{app}', {key}, {i}, {ts}, '{{}}')",
                app = app.0,
                key = sql_text(key),
            ))
            .await;
        }
        let dedupe_at = |key: &str| {
            format!(
                "SELECT dedupe_at FROM webhook_events WHERE app_id = '{}' AND dedupe_key = {}",
                app.0,
                sql_text(key)
            )
        };
        for (key, want) in &keys {
            assert_eq!(raw.scalar(&dedupe_at(key)).await, *want, "0005, {key:?}");
        }
        dedupe_survives_migration(&s, &raw, "", "", || store.migrate()).await;
        for (key, want) in &keys {
            assert_eq!(raw.scalar(&dedupe_at(key)).await, *want, "0008, {key:?}");
        }

        let lz4 = sqlx::raw_sql("CREATE TEMP TABLE lz4_probe (v text COMPRESSION lz4)")
            .execute(store.pool())
            .await
            .is_ok();
        for (table, column) in [
            ("webhook_events", "payload"),
            ("calls", "raw_payload"),
            ("cti_events", "payload"),
        ] {
            let method: String = sqlx::query_scalar(
                "SELECT attcompression::text FROM pg_attribute
                 WHERE attrelid = $1::regclass AND attname = $2",
            )
            .bind(table)
            .bind(column)
            .fetch_one(store.pool())
            .await
            .expect("column");
            assert_eq!(method, if lz4 { "l" } else { "" }, "{table}.{column}");
        }
    }

    /// `s` as an SQL string literal.
    fn sql_text(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }

    /// The original server's schema (spec §7.1), shared with `pg_import.rs`.
    const ORIGINAL_DDL: &str = include_str!("fixtures/original_schema.sql");

    /// The rows this test imports.
    const ORIGINAL_ROWS: &str = "
        INSERT INTO apps (id, name) VALUES
            ('00000000-0000-4000-8000-00000000000a', 'A'),
            ('00000000-0000-4000-8000-00000000000b', 'B');
        INSERT INTO calls (app_id, dialpad_call_id, direction, from_number, status, started_at)
        SELECT CASE WHEN x % 4 = 0 THEN '00000000-0000-4000-8000-00000000000b'::uuid
                    ELSE '00000000-0000-4000-8000-00000000000a'::uuid END,
               x,
               CASE x % 3 WHEN 0 THEN NULL WHEN 1 THEN 'inbound' ELSE 'outbound' END,
               '+15550000001',
               CASE x % 5 WHEN 0 THEN 'ringing' WHEN 1 THEN 'completed' WHEN 2 THEN NULL
                          WHEN 3 THEN 'missed' ELSE 'ended' END,
               CASE WHEN x % 6 = 0 THEN NULL ELSE now() - x * interval '1 minute' END
        FROM generate_series(1, 300) x;
        INSERT INTO messages (app_id, dialpad_message_id, direction, sent_at)
        SELECT '00000000-0000-4000-8000-00000000000a', x,
               CASE x % 3 WHEN 0 THEN NULL WHEN 1 THEN 'inbound' ELSE 'outbound' END,
               now() - x * interval '1 minute'
        FROM generate_series(1, 40) x;
        INSERT INTO voicemails (app_id, dialpad_call_id, dialpad_user_id)
        SELECT '00000000-0000-4000-8000-00000000000a', CASE WHEN x % 2 = 0 THEN x END, 12
        FROM generate_series(1, 9) x;";

    /// The import (one multi-row statement per table) counts what it copies; a re-run copies
    /// nothing more and the counts stay; new rows of the source come in on the next run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_keeps_totals_exact() {
        let Some(db) = TestDb::new("totals_imp").await else {
            return;
        };
        let source = pg_support::random_schema("orig");
        let mut c = db.conn().await;
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA \"{source}\"; SET search_path TO \"{source}\"; {ORIGINAL_DDL}; {ORIGINAL_ROWS}"
        ))
        .execute(&mut c)
        .await
        .expect("original schema");
        let store = db.store().await;
        let raw = Raw::Pg(store.pool().clone());
        let opts = ImportOptions {
            source_schema: source.clone(),
            ..ImportOptions::default()
        };
        let first = from_original(&store, &opts).await.expect("import");
        assert_eq!((first.calls, first.messages), (300, 40));
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let apps = [
            AppId(Uuid::parse_str("00000000-0000-4000-8000-00000000000a").expect("uuid")),
            AppId(Uuid::parse_str("00000000-0000-4000-8000-00000000000b").expect("uuid")),
        ];
        check(&s, &raw, &apps).await;
        let again = from_original(&store, &opts).await.expect("re-import");
        assert_eq!((again.calls, again.messages), (0, 0));
        sqlx::raw_sql(
            "INSERT INTO calls (app_id, dialpad_call_id, direction, status)
             SELECT '00000000-0000-4000-8000-00000000000b', 1000 + x, 'outbound', 'active'
             FROM generate_series(1, 10) x",
        )
        .execute(&mut c)
        .await
        .expect("new source rows");
        let third = from_original(&store, &opts).await.expect("import new rows");
        assert_eq!(third.calls, 10);
        check(&s, &raw, &apps).await;
        let active = CallFilter {
            statuses: Some(vec![CallStatus::Ringing, CallStatus::Active]),
            ..Default::default()
        };
        let p = s
            .list_calls(apps[1], &active, PageRequest::new(50, 0))
            .await
            .expect("list");
        // Imported `ringing` rows stay ringing; the 10 new `active` ones join them.
        let ringing_b = (1..=300).filter(|x| x % 4 == 0 && x % 5 == 0).count() as u64;
        assert_eq!(p.total, ringing_b + 10);
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA \"{source}\" CASCADE"))
            .execute(&mut c)
            .await;
    }
}
