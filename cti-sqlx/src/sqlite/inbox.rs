//! [`InboxStore`] on SQLite: the durable webhook inbox (`webhook_events`) and the realtime
//! outbox (`cti_events`).
//!
//! Every write runs on the single writer connection, so a claim is trivially exclusive: no
//! other transaction can observe or change the rows between the selection and the update.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::complete::{complete_held, complete_set};
use super::rows::{self, EVENT_COLS, OUTBOX_COLS, int, ts};
use super::{SqliteStore, begin_immediate};
use crate::batch;
use crate::common::{self, map_err};
use sqlx::Connection;

/// "Due" condition, at `?1` (= now), of the row aliased `t`.
fn due(t: &str) -> String {
    format!(
        "(({t}.status IN ('pending', 'failed') AND {t}.next_attempt_at <= ?1) \
          OR ({t}.status = 'processing' AND {t}.locked_until < ?1))"
    )
}

/// Events per multi-row `INSERT` (10 parameters each; SQLite allows 32,766).
const INSERT_CHUNK: usize = 500;

/// Events per claim `UPDATE` (one parameter each).
const CLAIM_UPDATE_CHUNK: usize = 1000;

/// Rows read per step of the claim scan.
const SCAN_CHUNK: i64 = 256;

/// A claim candidate, ordered like the claim output: arrival time, then insertion order.
type Candidate = (i64, i64);

#[async_trait]
impl InboxStore for SqliteStore {
    async fn inbox_insert(&self, events: Vec<NewInboxEvent>) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.write_conn().await;
        let pending = Pending::All;
        if events.len() <= INSERT_CHUNK {
            // One multi-row INSERT is atomic on its own: no BEGIN / COMMIT round trips.
            return insert_events(&mut w, &events, pending).await;
        }
        let mut tx = begin_immediate(&mut w).await?;
        let out = insert_events(&mut tx, &events, pending).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(out)
    }

    fn processes_inline(&self) -> bool {
        true
    }

    async fn inbox_insert_processed(
        &self,
        news: &[NewInboxEvent],
        mut results: Vec<Option<EventResult>>,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<InsertProcessed> {
        if batch::inline::is_empty(news, &results)? {
            return Ok(InsertProcessed::default());
        }
        let _ = lease; // The rows are born finished: no lease to hold.
        let now_us = ts(&now);
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        // Per-call order: a call with older unfinished events leaves its new ones to the
        // processor (which hands them out after the older ones).
        let blocked = calls_with_unfinished(&mut tx, news).await?;
        let claim = batch::inline::claims(news, &results, &blocked);
        // Processed events are inserted with their final status (attempt 1) straight away —
        // no `processing` row to finish with a second write; the transaction is the lease.
        let born: Vec<Option<Born>> = claim
            .iter()
            .zip(&results)
            .map(|(c, r)| match (c, r) {
                (true, Some(EventResult::Apply(_))) => Some((EventStatus::Done, None)),
                (true, Some(EventResult::Ignored(reason))) => {
                    Some((EventStatus::Ignored, Some(reason.clone())))
                }
                _ => None,
            })
            .collect();
        let outcomes = insert_events(&mut tx, news, Pending::Born(&born, now_us)).await?;
        let (order, items) = batch::inline::completions(news, &mut results, &claim, &outcomes);
        let held: HashMap<Uuid, AppId> = order
            .iter()
            .map(|&i| (news[i].id, news[i].app_id))
            .collect();
        let done = complete_held(&mut tx, &items, &held, now).await?;
        let mut failed = Vec::new();
        let report = batch::inline::report(outcomes, &order, &items, done, &mut failed);
        // The processor retries these (attempt 1 is spent, as after a failed claim).
        for (id, error) in failed {
            sqlx::query(
                "UPDATE webhook_events SET status = 'failed', last_error = ?1, \
                 next_attempt_at = ?2, processed_at = NULL, locked_until = NULL WHERE id = ?3",
            )
            .bind(error)
            .bind(now_us)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(report)
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
        let now_us = ts(&now);
        let until = now_us.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        let picked = select_claimable(&mut tx, limit, now_us).await?;
        if picked.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(picked.len());
        for chunk in picked.chunks(CLAIM_UPDATE_CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE webhook_events SET status = 'processing', attempts = attempts + 1, \
                 locked_until = ",
            );
            q.push_bind(until).push(" WHERE seq IN (");
            let mut ids = q.separated(", ");
            for (_, seq) in chunk {
                ids.push_bind(*seq);
            }
            q.push(format!(") RETURNING seq, {EVENT_COLS}"));
            rows.extend(q.build().fetch_all(&mut *tx).await.map_err(map_err)?);
        }
        tx.commit().await.map_err(map_err)?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq").map_err(map_err)?;
                Ok((seq, rows::event(r)?))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        claimed.sort_by(|(sa, a), (sb, b)| a.received_at.cmp(&b.received_at).then(sa.cmp(sb)));
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
        let mut w = self.write_conn().await;
        // The whole transaction (status change included) rolls back if applying fails.
        let mut tx = begin_immediate(&mut w).await?;
        let mut out = complete_set(&mut tx, std::slice::from_ref(&item), now).await?;
        let result = out.pop().unwrap_or(Err(StoreError::LeaseLost));
        if result.is_ok() {
            tx.commit().await.map_err(map_err)?;
        }
        result
    }

    /// One `BEGIN IMMEDIATE … COMMIT` and a constant number of statements for the whole
    /// batch (see `complete.rs`): one WAL append and a short hold of the writer instead of a
    /// transaction per event. If a statement fails, the transaction is rolled back and the
    /// items are completed one by one, so each gets exactly the result
    /// [`InboxStore::inbox_complete`] gives it.
    async fn inbox_complete_batch(
        &self,
        items: Vec<Completion>,
        now: Timestamp,
    ) -> Vec<StoreResult<Vec<PublishedEvent>>> {
        if items.len() <= 1 {
            return complete_each(self, items, now).await;
        }
        let batched = async {
            let mut w = self.write_conn().await;
            let mut tx = begin_immediate(&mut w).await?;
            let out = complete_set(&mut tx, &items, now).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(out)
        }
        .await;
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
        // One statement: the lease check is its WHERE clause.
        let q = match retry_at {
            Some(at) => sqlx::query(
                "UPDATE webhook_events SET status = 'failed', last_error = ?1,
                        next_attempt_at = ?2, locked_until = NULL
                 WHERE id = ?3 AND status = 'processing' AND attempts = ?4",
            )
            .bind(error)
            .bind(ts(&at)),
            None => sqlx::query(
                "UPDATE webhook_events SET status = 'dead', last_error = ?1,
                        processed_at = ?2, locked_until = NULL
                 WHERE id = ?3 AND status = 'processing' AND attempts = ?4",
            )
            .bind(error)
            .bind(ts(&now)),
        };
        let n = q
            .bind(event_id.to_string())
            .bind(i64::from(attempt))
            .execute(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    async fn inbox_get(&self, app: Option<AppId>, id: Uuid) -> StoreResult<Option<InboxEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM webhook_events WHERE id = ?1 AND (?2 IS NULL OR app_id = ?2)"
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(app.map(|a| a.0.to_string()))
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::event).transpose()
    }

    async fn inbox_redrive(
        &self,
        app: Option<AppId>,
        id: Uuid,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE webhook_events
                SET status = 'pending', attempts = 0, next_attempt_at = ?1, processed_at = NULL,
                    locked_until = NULL
              WHERE id = ?2 AND (?3 IS NULL OR app_id = ?3) AND status IN ('dead', 'failed')",
        )
        .bind(ts(&now))
        .bind(id.to_string())
        .bind(app.map(|a| a.0.to_string()))
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(done == 1)
    }

    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        let mut r = self.read_conn().await?;
        let mut tx = r.begin().await.map_err(map_err)?;
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM webhook_events GROUP BY status")
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut s = InboxStats::default();
        for r in &rows {
            let status: String = r.try_get("status").map_err(map_err)?;
            let n = rows::count(r.try_get("n").map_err(map_err)?);
            match common::event_status(&status)? {
                EventStatus::Pending => s.unprocessed += n,
                EventStatus::Failed => {
                    s.unprocessed += n;
                    s.failed += n;
                }
                EventStatus::Processing => s.processing += n,
                EventStatus::Done => s.done += n,
                EventStatus::Ignored => s.ignored += n,
                EventStatus::Dead => s.dead += n,
            }
        }
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(received_at) FROM webhook_events INDEXED BY webhook_events_unfinished
             WHERE status IN ('pending', 'failed', 'processing')",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        s.oldest_unprocessed_at = rows::from_opt_ts("received_at", oldest)?;
        Ok(s)
    }

    async fn inbox_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let n = sqlx::query(
            "DELETE FROM webhook_events INDEXED BY webhook_events_finished
             WHERE status IN ('done', 'ignored') AND received_at < ?1",
        )
        .bind(ts(&before))
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n)
    }

    async fn events_since(
        &self,
        app: AppId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<PublishedEvent>> {
        let sql = format!(
            "SELECT {OUTBOX_COLS} FROM cti_events WHERE app_id = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3"
        );
        sqlx::query(&sql)
            .bind(app.0.to_string())
            .bind(int(after))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::published)
            .collect()
    }

    async fn event_heads(&self) -> StoreResult<Vec<(AppId, u64)>> {
        sqlx::query("SELECT id, last_event_seq FROM apps WHERE last_event_seq > 0 ORDER BY id")
            .fetch_all(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?
            .iter()
            .map(|r| {
                let id: String = r.try_get("id").map_err(map_err)?;
                let seq: i64 = r.try_get("last_event_seq").map_err(map_err)?;
                Ok((AppId(common::uuid_from_text("id", &id)?), rows::count(seq)))
            })
            .collect()
    }

    async fn oldest_event_seq(&self, app: AppId) -> StoreResult<Option<u64>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MIN(seq) FROM cti_events WHERE app_id = ?1")
                .bind(app.0.to_string())
                .fetch_one(&mut *self.read_conn().await?)
                .await
                .map_err(map_err)?;
        Ok(v.map(rows::count))
    }

    async fn events_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let n = sqlx::query("DELETE FROM cti_events WHERE created_at < ?1")
            .bind(ts(&before))
            .execute(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n)
    }
}

/// Inserts `events` with multi-row statements — one round trip to the database thread per
/// [`INSERT_CHUNK`] events, not per event (the round trip, not SQLite, is what an insert
/// costs) — and reports each event's outcome.
///
/// The rows one statement inserts get consecutive rowids ending at its `last_insert_rowid`
/// (nothing can interleave inside a statement), so an event is new exactly when the row of
/// its key carries its id and a rowid of one of these ranges.
async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[NewInboxEvent],
    pending: Pending<'_>,
) -> StoreResult<Vec<InsertOutcome>> {
    let mut fresh_ranges: Vec<(i64, i64)> = Vec::new();
    let mut inserted = 0usize;
    for (c, chunk) in events.chunks(INSERT_CHUNK).enumerate() {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO webhook_events (id, app_id, dedupe_key, event_type, call_id, state, \
             event_timestamp, payload, next_attempt_at, received_at, status, attempts, \
             processed_at, last_error) ",
        );
        q.push_values(chunk.iter().enumerate(), |mut row, (j, e)| {
            let received = ts(&e.received_at);
            let born = pending.born(c * INSERT_CHUNK + j);
            row.push_bind(e.id.to_string())
                .push_bind(e.app_id.0.to_string())
                .push_bind(e.dedupe_key.clone())
                .push_bind(e.event_type.clone())
                .push_bind(e.call_id.map(DialpadId::as_i64))
                .push_bind(e.state.clone())
                .push_bind(e.event_timestamp)
                .push_bind(e.payload.as_str())
                .push_bind(received)
                .push_bind(received)
                .push_bind(born.map_or("pending", |(status, ..)| status.as_str()))
                .push_bind(i64::from(born.is_some()))
                .push_bind(born.map(|(_, at, _)| at))
                .push_bind(born.and_then(|(_, _, reason)| reason.map(str::to_owned)));
        });
        // Rows are inserted in order, so a key repeated in the batch keeps its first event.
        q.push(" ON CONFLICT (app_id, dedupe_key) DO NOTHING");
        let done = q.build().execute(&mut *conn).await.map_err(map_err)?;
        let n = done.rows_affected();
        if n > 0 {
            let last = done.last_insert_rowid();
            fresh_ranges.push((last - i64::try_from(n).unwrap_or(i64::MAX), last));
        }
        inserted += usize::try_from(n).unwrap_or(usize::MAX);
    }
    if inserted == events.len() {
        return Ok(events
            .iter()
            .map(|e| InsertOutcome::Inserted(e.id))
            .collect());
    }
    // Some keys existed: read the row of every key of the batch.
    let mut stored: HashMap<(String, String), (Uuid, bool)> = HashMap::new();
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT w.app_id, w.dedupe_key, w.id, w.seq FROM (");
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.app_id.0.to_string())
                .push_bind(e.dedupe_key.clone());
        });
        q.push(") v JOIN webhook_events w ON w.app_id = v.column1 AND w.dedupe_key = v.column2");
        for r in q.build().fetch_all(&mut *conn).await.map_err(map_err)? {
            let app: String = r.try_get("app_id").map_err(map_err)?;
            let key: String = r.try_get("dedupe_key").map_err(map_err)?;
            let id: String = r.try_get("id").map_err(map_err)?;
            let seq: i64 = r.try_get("seq").map_err(map_err)?;
            let fresh = fresh_ranges.iter().any(|(lo, hi)| seq > *lo && seq <= *hi);
            stored.insert((app, key), (common::uuid_from_text("id", &id)?, fresh));
        }
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let key = (e.app_id.0.to_string(), e.dedupe_key.clone());
        let outcome = match stored.get_mut(&key) {
            // Clear the flag: a second occurrence in the batch is a duplicate of the first.
            Some((id, fresh)) if *fresh && *id == e.id => {
                *fresh = false;
                InsertOutcome::Inserted(e.id)
            }
            Some((id, _)) => InsertOutcome::Duplicate(*id),
            // Only possible outside a transaction: the older duplicate was purged between the
            // two statements. Nothing of this event was stored; the caller retries.
            None => {
                return Err(StoreError::Unavailable(
                    "a duplicate event was purged during the insert; retry".into(),
                ));
            }
        };
        out.push(outcome);
    }
    Ok(out)
}

/// The final status (and `ignored` reason) of an event processed in its insert's transaction.
type Born = (EventStatus, Option<String>);

/// Which events [`insert_events`] stores already finished.
#[derive(Clone, Copy)]
enum Pending<'a> {
    /// None: every event is `pending`.
    All,
    /// Those with a status are stored finished (attempt 1, processed at this time, µs); the
    /// others are `pending`.
    Born(&'a [Option<Born>], i64),
}

impl<'a> Pending<'a> {
    /// Status, processing time and reason of event `i` if it is stored finished.
    fn born(self, i: usize) -> Option<(EventStatus, i64, Option<&'a str>)> {
        match self {
            Pending::All => None,
            Pending::Born(born, at) => born
                .get(i)
                .and_then(Option::as_ref)
                .map(|(status, reason)| (*status, at, reason.as_deref())),
        }
    }
}

/// The `(app_id, call_id)` pairs of `events` that have an unfinished event in the inbox.
async fn calls_with_unfinished(
    conn: &mut SqliteConnection,
    events: &[NewInboxEvent],
) -> StoreResult<std::collections::HashSet<batch::Key>> {
    let keys: BTreeSet<(AppId, DialpadId)> = events
        .iter()
        .filter_map(|e| e.call_id.map(|c| (e.app_id, c)))
        .collect();
    let mut out = std::collections::HashSet::new();
    let keys: Vec<_> = keys.into_iter().collect();
    for chunk in keys.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT DISTINCT w.app_id, w.call_id FROM (");
        q.push_values(chunk, |mut row, (app, call)| {
            row.push_bind(app.0.to_string()).push_bind(call.as_i64());
        });
        q.push(
            ") v JOIN webhook_events w INDEXED BY webhook_events_call_unfinished \
             ON w.app_id = v.column1 AND w.call_id = v.column2 \
             WHERE w.status IN ('pending', 'failed', 'processing')",
        );
        for r in q.build().fetch_all(&mut *conn).await.map_err(map_err)? {
            let app: String = r.try_get("app_id").map_err(map_err)?;
            let call: i64 = r.try_get("call_id").map_err(map_err)?;
            out.insert((
                AppId(common::uuid_from_text("app_id", &app)?),
                common::dialpad_id("call_id", call)?,
            ));
        }
    }
    Ok(out)
}

/// The claim scan query (see [`select_claimable`]): `?1` now, `?2`/`?3` the cursor
/// `(received_at, seq)`, `?4` the chunk size.
static SCAN_SQL: LazyLock<String> = LazyLock::new(|| {
    const UNFINISHED: &str = "('pending', 'failed', 'processing')";
    let same_call = |t: &str| {
        format!("{t}.app_id = w.app_id AND {t}.call_id = w.call_id AND {t}.status IN {UNFINISHED}")
    };
    let pick = |col: &str| {
        format!(
            "CASE WHEN w.call_id IS NULL THEN w.{col} ELSE (
                SELECT e.{col} FROM webhook_events e INDEXED BY webhook_events_call_unfinished
                 WHERE {same} AND {due_e}
                 ORDER BY e.event_timestamp IS NULL, e.event_timestamp, e.received_at, e.seq
                 LIMIT 1) END",
            same = same_call("e"),
            due_e = due("e"),
        )
    };
    format!(
        "SELECT w.seq, w.received_at,
                CASE WHEN w.call_id IS NULL THEN 0 ELSE EXISTS (
                    SELECT 1 FROM webhook_events b INDEXED BY webhook_events_call_unfinished
                     WHERE {same_b} AND b.status = 'processing' AND b.locked_until >= ?1) END
                  AS busy,
                {pick_seq} AS pick_seq,
                {pick_received} AS pick_received
           FROM webhook_events w INDEXED BY webhook_events_unfinished
          WHERE w.status IN {UNFINISHED}
            AND (w.received_at > ?2 OR (w.received_at = ?2 AND w.seq > ?3))
            AND {due_w}
            AND (w.call_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM webhook_events p INDEXED BY webhook_events_call_unfinished
                    WHERE {same_p}
                      AND (p.received_at < w.received_at
                           OR (p.received_at = w.received_at AND p.seq < w.seq))
                      AND {due_p}))
          ORDER BY w.received_at, w.seq
          LIMIT ?4",
        same_b = same_call("b"),
        same_p = same_call("p"),
        due_w = due("w"),
        due_p = due("p"),
        pick_seq = pick("seq"),
        pick_received = pick("received_at"),
    )
});

/// Selects the events a claim takes, in output order.
///
/// One query per chunk of the scan, all decisions in SQL:
/// * scan unfinished events in arrival order (partial index `webhook_events_unfinished`),
///   keeping only due events that are the first due arrival of their call (so a call with a
///   long backlog costs one row) and events without a call id;
/// * for such a call: `busy` when another of its events holds an unexpired lease; otherwise
///   the call's event to hand out is its earliest due event by
///   `(event_timestamp NULLS LAST, received_at, seq)` (partial index
///   `webhook_events_call_unfinished`), which may have arrived later than the scanned row;
/// * the output is the `limit` smallest picks by `(received_at, seq)`, so the scan continues
///   until no unseen row can sort before the `limit`-th pick.
async fn select_claimable(
    conn: &mut SqliteConnection,
    limit: usize,
    now_us: i64,
) -> StoreResult<Vec<Candidate>> {
    let scan_sql = SCAN_SQL.as_str();
    let mut picked: BTreeSet<Candidate> = BTreeSet::new();
    let mut cursor: Candidate = (i64::MIN, i64::MIN);
    'scan: loop {
        let chunk = sqlx::query(scan_sql)
            .bind(now_us)
            .bind(cursor.0)
            .bind(cursor.1)
            .bind(SCAN_CHUNK)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let exhausted = (chunk.len() as i64) < SCAN_CHUNK;
        for r in &chunk {
            cursor = (
                r.try_get("received_at").map_err(map_err)?,
                r.try_get("seq").map_err(map_err)?,
            );
            if picked.len() >= limit && picked.last().is_some_and(|last| cursor > *last) {
                break 'scan;
            }
            if r.try_get::<bool, _>("busy").map_err(map_err)? {
                continue;
            }
            let pick_received: Option<i64> = r.try_get("pick_received").map_err(map_err)?;
            let pick_seq: Option<i64> = r.try_get("pick_seq").map_err(map_err)?;
            if let (Some(received), Some(seq)) = (pick_received, pick_seq) {
                picked.insert((received, seq));
                if picked.len() > limit {
                    picked.pop_last();
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(picked.into_iter().collect())
}
