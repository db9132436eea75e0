//! [`InboxStore`] on PostgreSQL: group-commit inserts, leased claims with per-call ordering,
//! completion (set-based, in `complete.rs`; algorithm in `crate::batch`) and the outbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::complete::{StateKeys, apply_held, plan_held, published, read_state};
use super::pipeline::{self, Overlay, Pipeline};
use super::rows::*;
use super::write::{self, Firsts, InboxRows, Written};
use crate::batch::{self, inline::Born};
use crate::common;

/// `TRUE` when the event (alias `e`) may be claimed at `$1`: pending/failed and due, or
/// processing with an expired lease.
macro_rules! due {
    ($e:literal) => {
        concat!(
            "(CASE WHEN ",
            $e,
            ".status = 'processing' THEN ",
            $e,
            ".locked_until < $1 WHEN ",
            $e,
            ".status IN ('pending', 'failed') THEN ",
            $e,
            ".next_attempt_at <= $1 ELSE false END)"
        )
    };
}

/// One claim statement; runs under the schema's claim lock, so the per-call checks see every
/// earlier claim. `$1` now, `$2` lease end, `$3` scan window, `$4` limit.
///
/// 1. `cand`: the oldest due events (window of `$3`), skipping calls that hold an unexpired
///    lease (a busy call never fills the window);
/// 2. `call_pick`: for each call in the window, its earliest due event by
///    `(event_timestamp NULLS LAST, received_at, arrival)` — which may lie outside the window;
/// 3. `pick`: call-less events plus one event per call, oldest first, at most `$4`;
/// 4. `locked`: `FOR UPDATE SKIP LOCKED` on exactly those rows, re-checking that they are still
///    due (a concurrent `inbox_complete` may have finished one since the snapshot);
/// 5. the `UPDATE` takes the lease.
const CLAIM_SQL: &str = concat!(
    "WITH cand AS (
        SELECT e.id, e.app_id, e.call_id, e.received_at, e.arrival
        FROM webhook_events e
        WHERE e.status IN ('pending', 'failed', 'processing') AND ",
    due!("e"),
    " AND (e.call_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM webhook_events b
                WHERE b.app_id = e.app_id AND b.call_id = e.call_id
                  AND b.status = 'processing' AND b.locked_until >= $1))
        ORDER BY e.received_at, e.arrival
        LIMIT $3
    ),
    grp AS (
        SELECT DISTINCT c.app_id, c.call_id FROM cand c WHERE c.call_id IS NOT NULL
    ),
    call_pick AS (
        SELECT f.id, f.received_at, f.arrival
        FROM grp g
        CROSS JOIN LATERAL (
            SELECT x.id, x.received_at, x.arrival
            FROM webhook_events x
            WHERE x.app_id = g.app_id AND x.call_id = g.call_id
              AND x.status IN ('pending', 'failed', 'processing') AND ",
    due!("x"),
    "
            ORDER BY x.event_timestamp NULLS LAST, x.received_at, x.arrival
            LIMIT 1
        ) f
    ),
    pick AS (
        SELECT id, received_at, arrival FROM (
            SELECT id, received_at, arrival FROM cand WHERE call_id IS NULL
            UNION ALL
            SELECT id, received_at, arrival FROM call_pick
        ) u
        ORDER BY received_at, arrival
        LIMIT $4
    ),
    locked AS (
        SELECT w.id FROM webhook_events w JOIN pick p ON p.id = w.id
        WHERE ",
    due!("w"),
    "
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE webhook_events w
    SET status = 'processing', locked_until = $2, attempts = w.attempts + 1
    FROM locked l
    WHERE w.id = l.id AND ",
    due!("w"),
    "
    RETURNING w.id, w.app_id, w.dedupe_key, w.event_type, w.call_id, w.state, w.event_timestamp,
        w.payload, w.status, w.attempts, w.last_error, w.next_attempt_at, w.locked_until,
        w.received_at, w.processed_at, w.arrival"
);

/// Adds up `(status, n, oldest)` rows into counters (`oldest` counts for unfinished statuses).
fn tally(rows: &[sqlx::postgres::PgRow]) -> StoreResult<InboxStats> {
    let mut s = InboxStats::default();
    for r in rows {
        let status: String = col(r, "status")?;
        let n = u64_of(col(r, "n")?)?;
        let oldest: Option<Timestamp> = col(r, "oldest")?;
        let status = common::event_status(&status)?;
        s.add(status, n);
        if matches!(
            status,
            EventStatus::Pending | EventStatus::Failed | EventStatus::Processing
        ) && let Some(o) = oldest
        {
            s.oldest_unprocessed_at = Some(s.oldest_unprocessed_at.map_or(o, |cur| cur.min(o)));
        }
    }
    Ok(s)
}

/// The inbox insert of [`insert_in`].
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| write::inbox_insert_sql(1, "true"));

/// Scan window of a claim: wide enough that a few calls with many queued events do not hide
/// other due events.
fn claim_window(limit: usize) -> i64 {
    i64_of_usize(limit.saturating_mul(4).saturating_add(64).min(20_000))
}

#[async_trait]
impl InboxStore for PgStore {
    async fn inbox_insert(&self, events: Vec<NewInboxEvent>) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(mut own) = self.own_connection().await? {
            let outcomes = insert_in(&mut own, &events, None).await?;
            own.keep();
            return Ok(outcomes);
        }
        let mut conn = self.pool.acquire().await.map_err(pg_err)?;
        insert_in(&mut conn, &events, None).await
    }

    fn processes_inline(&self) -> bool {
        true
    }

    /// A batch is a chain of round trips: each writer gets a thread, and a connection, of its
    /// own (module `pg/own.rs`).
    fn writer_threads(&self) -> bool {
        true
    }

    async fn inbox_insert_processed(
        &self,
        news: &[NewInboxEvent],
        results: Vec<Option<EventResult>>,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<InsertProcessed> {
        if batch::inline::is_empty(news, &results)? {
            return Ok(InsertProcessed::default());
        }
        let _ = lease; // The rows are born finished: the statement is the lease.
        // PostgreSQL keeps microseconds: store and publish the same processing time.
        let now = chrono::SubsecRound::round_subsecs(now, 6);
        if let Some(mut own) = self.own_connection().await? {
            let report = self
                .insert_processed_on(&mut own, news, results, now)
                .await?;
            own.keep();
            return Ok(report);
        }
        let mut conn = self.pool.acquire().await.map_err(pg_err)?;
        let report = self
            .insert_processed_on(&mut conn, news, results, now)
            .await;
        if report.is_err() {
            // It may have failed inside an opened transaction: never hand that connection to
            // anyone else.
            conn.close_on_drop();
        }
        report
    }

    async fn inbox_claim(
        &self,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InboxEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until = lease_until(now, lease);
        let mut tx = self.pool.begin().await.map_err(pg_err)?;
        // Claims of this schema run one at a time: the claim statement's snapshot then includes
        // every earlier claim, so the "one leased event per call" rule holds across workers.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(self.claim_lock)
            .execute(&mut *tx)
            .await
            .map_err(pg_err)?;
        // Not a cached prepared statement: PostgreSQL would switch it to a generic plan after a
        // few executions, and a generic plan of this query (LIMITs and times unknown) can scan
        // the whole queue. Planning it per call costs about a millisecond.
        let rows = sqlx::query(CLAIM_SQL)
            .persistent(false)
            .bind(now)
            .bind(until)
            .bind(claim_window(limit))
            .bind(i64_of_usize(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let arrival: i64 = col(r, "arrival")?;
            claimed.push((arrival, event_from_row(r)?));
        }
        claimed.sort_by(|a, b| a.1.received_at.cmp(&b.1.received_at).then(a.0.cmp(&b.0)));
        Ok(claimed.into_iter().map(|(_, e)| e).collect())
    }

    async fn inbox_complete(
        &self,
        event_id: Uuid,
        attempt: u32,
        result: EventResult,
        now: Timestamp,
    ) -> StoreResult<Vec<PublishedEvent>> {
        let item = Completion {
            event_id,
            attempt,
            result,
        };
        let mut out = self.complete_set(std::slice::from_ref(&item), now).await?;
        out.pop().unwrap_or(Err(StoreError::LeaseLost))
    }

    /// One transaction and a constant number of statements for the whole batch (see
    /// `complete.rs`): one commit — one WAL flush — and one hold of the app locks instead of
    /// one per event. If a statement fails, the transaction is rolled back and the items are
    /// completed one by one, so each gets exactly the result [`InboxStore::inbox_complete`]
    /// gives it.
    async fn inbox_complete_batch(
        &self,
        items: Vec<Completion>,
        now: Timestamp,
    ) -> Vec<StoreResult<Vec<PublishedEvent>>> {
        if items.len() <= 1 {
            return complete_each(self, items, now).await;
        }
        let batched = self.complete_set(&items, now).await;
        batch::or_each(self, items, now, batched).await
    }

    async fn inbox_fail(
        &self,
        event_id: Uuid,
        attempt: u32,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let attempt = i32::try_from(attempt).map_err(|_| StoreError::LeaseLost)?;
        let done = sqlx::query(
            "UPDATE webhook_events SET \
             status = CASE WHEN $4::timestamptz IS NULL THEN 'dead' ELSE 'failed' END, \
             next_attempt_at = COALESCE($4, next_attempt_at), \
             processed_at = CASE WHEN $4::timestamptz IS NULL THEN $5 ELSE processed_at END, \
             last_error = $3, locked_until = NULL \
             WHERE id = $1 AND status = 'processing' AND attempts = $2",
        )
        .bind(event_id)
        .bind(attempt)
        .bind(error)
        .bind(retry_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    async fn inbox_get(&self, app: Option<AppId>, id: Uuid) -> StoreResult<Option<InboxEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM webhook_events WHERE id = $1 AND ($2::uuid IS NULL OR app_id = $2)"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(app.map(|a| a.0))
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn inbox_redrive(
        &self,
        app: Option<AppId>,
        id: Uuid,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE webhook_events SET status = 'pending', attempts = 0, next_attempt_at = $3, \
             processed_at = NULL, locked_until = NULL \
             WHERE id = $1 AND ($2::uuid IS NULL OR app_id = $2) AND status IN ('dead', 'failed')",
        )
        .bind(id)
        .bind(app.map(|a| a.0))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n, min(received_at) AS oldest FROM webhook_events \
             GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        tally(&rows)
    }

    /// Reads the partial index of unfinished events and the `dead` range of the status index:
    /// a scrape costs what is waiting, not the retained history.
    async fn inbox_backlog(&self) -> StoreResult<InboxBacklog> {
        let mut tx = self.pool.begin().await.map_err(pg_err)?;
        // Never parallel: without fresh statistics (autovacuum off) the planner may launch
        // workers for these index scans — milliseconds of process start-up on every scrape,
        // taken from the cores that serve webhooks.
        sqlx::query("SELECT set_config('max_parallel_workers_per_gather', '0', true)")
            .execute(&mut *tx)
            .await
            .map_err(pg_err)?;
        let rows = sqlx::query(
            "SELECT status, count(*) AS n, min(received_at) AS oldest FROM webhook_events \
             WHERE status IN ('pending', 'failed', 'processing') GROUP BY status \
             UNION ALL \
             SELECT 'dead', count(*), NULL FROM webhook_events WHERE status = 'dead'",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        tally(&rows).map(InboxBacklog::from)
    }

    async fn inbox_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM webhook_events WHERE status IN ('done', 'ignored') AND received_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(done.rows_affected())
    }

    async fn events_since(
        &self,
        app: AppId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<PublishedEvent>> {
        let sql = format!(
            "SELECT {OUTBOX_COLS} FROM cti_events WHERE app_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(app.0)
            .bind(i64_of(after))
            .bind(i64_of_usize(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        all(&rows, published_from_row)
    }

    async fn event_heads(&self) -> StoreResult<Vec<(AppId, u64)>> {
        let rows = sqlx::query("SELECT id, last_event_seq FROM apps WHERE last_event_seq > 0")
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| Ok((AppId(col(r, "id")?), u64_of(col(r, "last_event_seq")?)?)))
            .collect()
    }

    async fn oldest_event_seq(&self, app: AppId) -> StoreResult<Option<u64>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT min(seq) FROM cti_events WHERE app_id = $1")
                .bind(app.0)
                .fetch_one(&self.pool)
                .await
                .map_err(pg_err)?;
        v.map(u64_of).transpose()
    }

    async fn events_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM cti_events WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(done.rows_affected())
    }
}

impl PgStore {
    /// [`InboxStore::inbox_insert_processed`] of a non-empty batch over `conn`: optimistic
    /// first (when enabled), under the apps' row locks if that finds its state stale. After an
    /// error `conn` may be inside a transaction: the caller closes it.
    async fn insert_processed_on(
        &self,
        conn: &mut PgConnection,
        news: &[NewInboxEvent],
        results: Vec<Option<EventResult>>,
        now: Timestamp,
    ) -> StoreResult<InsertProcessed> {
        // Held until the locked run below is over (see `pipeline`).
        let (results, _hold) = if self.optimistic_inline {
            match optimistic_batch(&self.pipeline, &mut *conn, news, results, now).await? {
                Ok(report) => return Ok(report),
                // Another applier got in between, or an event was stored already: again, under
                // the locks.
                Err(fallback) => (fallback.results, fallback.hold),
            }
        } else {
            (results, None)
        };
        // The apps' row locks first (as every applier takes them), sent with the `BEGIN` (one
        // round trip): the per-call check below then sees every event an earlier applier of
        // these apps committed.
        let mut apps: Vec<Uuid> = news.iter().map(|e| e.app_id.0).collect();
        apps.sort_unstable();
        apps.dedup();
        let mut tx = conn
            .begin_with(begin_locking(&apps))
            .await
            .map_err(pg_err)?;
        let report = locked_batch(&mut tx, news, results, now).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(report)
    }
}

/// An optimistic batch that must run under the locks: its results, and — when its write found
/// its state stale — the planning stage and its registration, held until that run is over so
/// that no batch plans on top of it meanwhile.
struct Fallback<'a> {
    results: Vec<Option<EventResult>>,
    hold: Option<(tokio::sync::MutexGuard<'a, ()>, pipeline::Registered<'a>)>,
}

/// [`InboxStore::inbox_insert_processed`] in two round trips, without a transaction: reads the
/// state of the batch's calls and apps ([`read_state`]) and lays the batches whose writes are
/// in flight over it ([`pipeline`]), applies the events in memory assuming each is new, and
/// writes everything in one statement that checks the apps' generations and that every event
/// was new ([`write::write`]). `Err` when that check failed (nothing was written), or when the
/// batches it planned on kept failing: run the batch under the locks.
async fn optimistic_batch<'a>(
    pipeline: &'a Pipeline,
    conn: &mut PgConnection,
    news: &[NewInboxEvent],
    mut results: Vec<Option<EventResult>>,
    now: Timestamp,
) -> StoreResult<Result<InsertProcessed, Fallback<'a>>> {
    let firsts = Firsts::of(news);
    let keys = StateKeys::of_batch(news, &results);
    for _ in 0..pipeline::REPLANS {
        // Stage 1, one batch at a time: read, lay the in-flight batches over it, plan,
        // register.
        let planning = pipeline.planning.lock().await;
        let overlays = pipeline.in_flight();
        let mut state = read_state(&mut *conn, &keys, true).await?;
        for o in &overlays {
            o.apply_state(&mut state, &keys);
        }
        let claim = batch::inline::claims(news, &results, &state.blocked);
        let rows = InboxRows::new(
            news,
            &firsts.firsts,
            Some((&batch::inline::born(&claim, &results), now)),
        );
        let outcomes = firsts.all_new(news);
        let (order, items) = batch::inline::completions(news, &mut results, &claim, &outcomes);
        let held = held_apps(news, &order);
        let (out, mut plan, gens) =
            plan_held(&mut *conn, &items, &held, now, Some(state), &overlays).await?;
        let gens = pipeline::next_gens(&gens);
        // The overlay shares the plan; the published messages go to the report.
        let published_by_item = std::mem::take(&mut plan.published);
        let plan = Arc::new(plan);
        let overlay = Overlay::of(
            plan.clone(),
            gens.iter().map(|&(app, _, next)| (app, next)),
            news,
            |i| firsts.of[i] == i && !claim[i],
        );
        let registered = pipeline.register(overlay);
        drop(planning);
        // Stage 2: once the batches planned on have finished, and only if they committed what
        // this plan assumed.
        let mut planned_on_committed = true;
        for o in &overlays {
            planned_on_committed &= o.committed().await;
        }
        if !planned_on_committed {
            drop(registered);
            restore(&mut results, &order, items);
            continue;
        }
        match write::write(&mut *conn, &gens, rows, &plan, now).await? {
            Written::Done => registered.committed(),
            Written::Stale => {
                pipeline.rerun();
                restore(&mut results, &order, items);
                let planning = pipeline.planning.lock().await;
                return Ok(Err(Fallback {
                    results,
                    hold: Some((planning, registered)),
                }));
            }
        }
        let mut failed = Vec::new();
        let report = batch::inline::report(
            outcomes,
            &order,
            &items,
            published(out, published_by_item),
            &mut failed,
        );
        mark_failed(conn, failed, now).await?;
        return Ok(Ok(report));
    }
    pipeline.rerun();
    Ok(Err(Fallback {
        results,
        hold: None,
    }))
}

/// Hands the results the completions `items` (at batch positions `order`) took back.
fn restore(results: &mut [Option<EventResult>], order: &[usize], items: Vec<Completion>) {
    for (&i, item) in order.iter().zip(items) {
        results[i] = Some(item.result);
    }
}

/// [`InboxStore::inbox_insert_processed`] inside the transaction that holds the apps' row locks.
async fn locked_batch(
    tx: &mut PgConnection,
    news: &[NewInboxEvent],
    mut results: Vec<Option<EventResult>>,
    now: Timestamp,
) -> StoreResult<InsertProcessed> {
    // Under the locks, one statement reads what the batch needs: the per-call order check
    // and the calls, mappings and sequence numbers the processed events will change.
    let state = read_state(&mut *tx, &StateKeys::of_batch(news, &results), true).await?;
    let claim = batch::inline::claims(news, &results, &state.blocked);
    // Processed events are inserted finished; the transaction is the lease.
    let born = batch::inline::born(&claim, &results);
    let outcomes = insert_in(&mut *tx, news, Some((&born, now))).await?;
    let (order, items) = batch::inline::completions(news, &mut results, &claim, &outcomes);
    let held = held_apps(news, &order);
    let done = apply_held(&mut *tx, &items, &held, now, Some(state)).await?;
    let mut failed = Vec::new();
    let report = batch::inline::report(outcomes, &order, &items, done, &mut failed);
    mark_failed(tx, failed, now).await?;
    Ok(report)
}

/// Event → app of the batch positions in `order`.
fn held_apps(news: &[NewInboxEvent], order: &[usize]) -> HashMap<Uuid, AppId> {
    order
        .iter()
        .map(|&i| (news[i].id, news[i].app_id))
        .collect()
}

/// Marks events whose completion failed `failed`: the processor retries them (attempt 1 is
/// spent, as after a failed claim).
async fn mark_failed(
    conn: &mut PgConnection,
    failed: Vec<(Uuid, String)>,
    now: Timestamp,
) -> StoreResult<()> {
    for (id, error) in failed {
        sqlx::query(
            "UPDATE webhook_events SET status = 'failed', last_error = $1, \
             next_attempt_at = $2, processed_at = NULL, locked_until = NULL WHERE id = $3",
        )
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

/// `BEGIN` and the row locks (in id order) and new generations of `apps`, as one simple query.
/// The ids are formatted UUIDs, so the literal is safe.
fn begin_locking(apps: &[Uuid]) -> String {
    let list: Vec<String> = apps.iter().map(Uuid::to_string).collect();
    format!(
        "BEGIN; {}",
        write::lock_apps_sql(&format!("a.id = ANY('{{{}}}'::uuid[])", list.join(",")))
    )
}

/// Inserts `events` (a key repeated in the batch keeps its first event) and reports each
/// event's outcome. With `born`, the events that have a status are stored finished (attempt
/// 1, processed at the given time); the others are `pending`.
async fn insert_in(
    conn: &mut PgConnection,
    events: &[NewInboxEvent],
    born: Option<(&[Option<Born<'_>>], Timestamp)>,
) -> StoreResult<Vec<InsertOutcome>> {
    let Firsts { firsts, of } = Firsts::of(events);
    let k = firsts.len();
    // One statement for the whole batch (one commit), in batch order (`arrival`).
    let rows = InboxRows::new(events, &firsts, born)
        .bind(sqlx::query(&INSERT_SQL))
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err)?;
    let inserted = rows
        .iter()
        .map(|r| col::<Uuid>(r, "id"))
        .collect::<StoreResult<HashSet<Uuid>>>()?;

    // Resolve the ids of rows that already existed.
    let mut resolved: HashMap<usize, Uuid> = HashMap::with_capacity(k);
    let (mut dup_apps, mut dup_keys, mut dup_stamps, mut dup_idx) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &i in &firsts {
        let e = &events[i];
        if inserted.contains(&e.id) {
            resolved.insert(i, e.id);
        } else {
            dup_apps.push(e.app_id.0);
            dup_keys.push(e.dedupe_key.clone());
            dup_stamps.push(e.event_timestamp);
            dup_idx.push(i);
        }
    }
    if !dup_idx.is_empty() {
        // `dedupe_at` (migration 0005) is 0 or the event's timestamp, whichever the key's
        // form selects: both candidates, so the lookup stays on the unique index.
        let rows = sqlx::query(
            "SELECT w.id, w.app_id, w.dedupe_key FROM webhook_events w \
             JOIN UNNEST($1::uuid[], $2::text[], $3::int8[]) AS u(app_id, dedupe_key, ts) \
             ON w.app_id = u.app_id AND w.dedupe_at IN (0, COALESCE(u.ts, 0)) \
             AND w.dedupe_key = u.dedupe_key",
        )
        .bind(&dup_apps)
        .bind(&dup_keys)
        .bind(&dup_stamps)
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err)?;
        let mut existing: HashMap<(Uuid, String), Uuid> = HashMap::with_capacity(rows.len());
        for r in &rows {
            existing.insert((col(r, "app_id")?, col(r, "dedupe_key")?), col(r, "id")?);
        }
        for (j, &i) in dup_idx.iter().enumerate() {
            let id = existing
                .get(&(dup_apps[j], dup_keys[j].clone()))
                .copied()
                .ok_or_else(|| {
                    // The conflicting row was purged between the two statements: let the
                    // caller retry (Dialpad redelivers on a 5xx).
                    StoreError::Unavailable("inbox row vanished during dedupe, retry".into())
                })?;
            resolved.insert(i, id);
        }
    }

    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let src = of[i];
        let id = resolved
            .get(&src)
            .copied()
            .ok_or_else(|| StoreError::Backend("inbox insert: unresolved".into()))?;
        if src == i && inserted.contains(&e.id) {
            out.push(InsertOutcome::Inserted(id));
        } else {
            out.push(InsertOutcome::Duplicate(id));
        }
    }
    Ok(out)
}
