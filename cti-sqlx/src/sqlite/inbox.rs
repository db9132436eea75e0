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
use cti_core::normalize::Normalized;
use cti_core::normalize::apply::call_key;
use cti_core::store::*;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::rows::{
    self, CALL_COLS, EVENT_COLS, MESSAGE_COLS, OUTBOX_COLS, VOICEMAIL_COLS, int, ts,
};
use super::{SqliteStore, begin_immediate};
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
        if events.len() <= INSERT_CHUNK {
            // One multi-row INSERT is atomic on its own: no BEGIN / COMMIT round trips.
            return insert_events(&mut w, &events).await;
        }
        let mut tx = begin_immediate(&mut w).await?;
        let out = insert_events(&mut tx, &events).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(out)
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
        let mut w = self.write_conn().await;
        if let EventResult::Ignored(_) = &result {
            // A single statement: atomic without a transaction.
            return complete_one(&mut w, event_id, attempt, &result, now).await;
        }
        // The whole transaction (status change included) rolls back if applying fails.
        let mut tx = begin_immediate(&mut w).await?;
        let published = complete_one(&mut tx, event_id, attempt, &result, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(published)
    }

    /// One `BEGIN IMMEDIATE … COMMIT` for the whole batch: one WAL append and one writer
    /// hand-over instead of one per event. If any item fails, the transaction is rolled back
    /// and the items are completed one by one, so each gets exactly the result
    /// [`InboxStore::inbox_complete`] gives it.
    async fn inbox_complete_batch(
        &self,
        items: Vec<Completion>,
        now: Timestamp,
    ) -> Vec<StoreResult<Vec<PublishedEvent>>> {
        if items.len() > 1 {
            let mut w = self.write_conn().await;
            match complete_all(&mut w, &items, now).await {
                Ok(out) => return out.into_iter().map(Ok).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, items = items.len(), "batch completion rolled back; completing one by one");
                }
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for c in items {
            out.push(
                self.inbox_complete(c.event_id, c.attempt, c.result, now)
                    .await,
            );
        }
        out
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

/// Lease check and status change in one statement; `done` keeps the last error of earlier
/// attempts. Returns the event's app when this attempt still holds it.
const FINISH_SQL: &str = "UPDATE webhook_events
        SET status = ?1, last_error = COALESCE(?2, last_error), processed_at = ?3,
            locked_until = NULL
      WHERE id = ?4 AND status = 'processing' AND attempts = ?5
     RETURNING app_id";

/// Finishes one claimed event on `conn` (the algorithm in `crate::common`); the caller owns
/// the transaction.
async fn complete_one(
    conn: &mut SqliteConnection,
    event_id: Uuid,
    attempt: u32,
    result: &EventResult,
    now: Timestamp,
) -> StoreResult<Vec<PublishedEvent>> {
    let (status, reason) = match result {
        EventResult::Ignored(reason) => (EventStatus::Ignored, Some(reason.as_str())),
        EventResult::Apply(_) => (EventStatus::Done, None),
    };
    let app: String = sqlx::query_scalar(FINISH_SQL)
        .bind(status.as_str())
        .bind(reason)
        .bind(ts(&now))
        .bind(event_id.to_string())
        .bind(i64::from(attempt))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or(StoreError::LeaseLost)?;
    match result {
        EventResult::Ignored(_) => Ok(Vec::new()),
        EventResult::Apply(n) => {
            let app = AppId(common::uuid_from_text("app_id", &app)?);
            apply(conn, app, n, now).await
        }
    }
}

/// Completes every item in one transaction; any error rolls all of them back.
async fn complete_all(
    conn: &mut SqliteConnection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<Vec<Vec<PublishedEvent>>> {
    let mut tx = begin_immediate(conn).await?;
    let mut out = Vec::with_capacity(items.len());
    for c in items {
        out.push(complete_one(&mut tx, c.event_id, c.attempt, &c.result, now).await?);
    }
    tx.commit().await.map_err(map_err)?;
    Ok(out)
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
) -> StoreResult<Vec<InsertOutcome>> {
    let mut fresh_ranges: Vec<(i64, i64)> = Vec::new();
    let mut inserted = 0usize;
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO webhook_events (id, app_id, dedupe_key, event_type, call_id, state, \
             event_timestamp, payload, next_attempt_at, received_at) ",
        );
        q.push_values(chunk, |mut row, e| {
            let received = ts(&e.received_at);
            row.push_bind(e.id.to_string())
                .push_bind(e.app_id.0.to_string())
                .push_bind(e.dedupe_key.clone())
                .push_bind(e.event_type.clone())
                .push_bind(e.call_id.map(DialpadId::as_i64))
                .push_bind(e.state.clone())
                .push_bind(e.event_timestamp)
                .push_bind(common::json_to_text(&e.payload))
                .push_bind(received)
                .push_bind(received);
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

/// `CALL_COLS` of the alias `c`, named as in `calls`.
static CALL_COLS_C: LazyLock<String> = LazyLock::new(|| {
    CALL_COLS
        .split(',')
        .map(|c| format!("c.{0} AS {0}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
});

/// Applies a normalised event inside the transaction (the algorithm documented in
/// `crate::common`), with as few statements as possible: the call, the CRM user of the
/// targeted Dialpad user and the app's last sequence number come in one query.
async fn apply(
    conn: &mut SqliteConnection,
    app: AppId,
    n: &Normalized,
    now: Timestamp,
) -> StoreResult<Vec<PublishedEvent>> {
    let app_s = app.0.to_string();
    let key = call_key(n);
    // `target_user(n, call)` = the event's user, else the stored call's: the COALESCE.
    let event_user = target_user(n, None);
    let sql = format!(
        "SELECT a.last_event_seq AS app_seq, m.crm_user_id AS crm_user, {cols}
           FROM apps a
           LEFT JOIN calls c ON c.app_id = a.id AND c.dialpad_call_id = ?2
           LEFT JOIN dialpad_user_mappings m
                  ON m.app_id = a.id AND m.dialpad_user_id = COALESCE(?3, c.dialpad_user_id)
          WHERE a.id = ?1",
        cols = CALL_COLS_C.as_str()
    );
    let row = sqlx::query(&sql)
        .bind(&app_s)
        .bind(key.map(DialpadId::as_i64))
        .bind(event_user.map(DialpadId::as_i64))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    let (app_seq, crm_user, call) = match &row {
        Some(r) => {
            let app_seq: i64 = r.try_get("app_seq").map_err(map_err)?;
            let crm_user: Option<String> = r.try_get("crm_user").map_err(map_err)?;
            let call_id: Option<String> = r.try_get("id").map_err(map_err)?;
            let call = if call_id.is_some() {
                Some(rows::call(r)?)
            } else {
                None
            };
            (Some(app_seq), crm_user, call)
        }
        None => (None, None, None),
    };
    let voicemail = match (&n.voicemail, key) {
        (Some(_), Some(k)) => {
            let sql = format!(
                "SELECT {VOICEMAIL_COLS} FROM voicemails WHERE app_id = ?1 AND dialpad_call_id = ?2"
            );
            let row = sqlx::query(&sql)
                .bind(&app_s)
                .bind(k.as_i64())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(rows::voicemail).transpose()?
        }
        _ => None,
    };
    let message = match n.message.as_ref().and_then(|m| m.dialpad_message_id) {
        Some(mid) => {
            let sql = format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE app_id = ?1 AND dialpad_message_id = ?2"
            );
            let row = sqlx::query(&sql)
                .bind(&app_s)
                .bind(mid.as_i64())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(rows::message).transpose()?
        }
        None => None,
    };
    let applied = apply_event(
        app,
        n,
        Existing {
            call,
            voicemail,
            message,
            crm_user,
        },
        now,
    );
    if let Some(c) = &applied.call {
        upsert_call(conn, c).await?;
    }
    if let Some(v) = &applied.voicemail {
        upsert_voicemail(conn, v).await?;
    }
    if let Some(m) = &applied.message {
        upsert_message(conn, m).await?;
    }
    if applied.outbox.is_empty() {
        return Ok(Vec::new());
    }
    // The single writer holds the database lock: nobody else moves the app's sequence.
    let first = app_seq.ok_or(StoreError::NotFound)? + 1;
    let last = first + applied.outbox.len() as i64 - 1;
    sqlx::query("UPDATE apps SET last_event_seq = ?1 WHERE id = ?2")
        .bind(last)
        .bind(&app_s)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let now_us = ts(&now);
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, created_at) ",
    );
    q.push_values(applied.outbox.iter().enumerate(), |mut row, (i, m)| {
        row.push_bind(app_s.clone())
            .push_bind(first + i as i64)
            .push_bind(m.event.clone())
            .push_bind(common::json_to_text(&m.payload))
            .push_bind(m.target_crm_user.clone())
            .push_bind(now_us);
    });
    q.build().execute(&mut *conn).await.map_err(map_err)?;
    Ok(applied
        .outbox
        .into_iter()
        .enumerate()
        .map(|(i, m)| PublishedEvent {
            app_id: app,
            seq: rows::count(first + i as i64),
            event: m.event,
            payload: m.payload,
            target_crm_user: m.target_crm_user,
            created_at: now,
        })
        .collect())
}

async fn upsert_call(conn: &mut SqliteConnection, c: &Call) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number, status,
                           dialpad_user_id, target_type, target_id, started_at, answered_at,
                           ended_at, duration_seconds, recording_url, is_voicemail,
                           voicemail_audio_url, transcript, held, merge_log, last_event_ms,
                           raw_payload, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20, ?21, ?22, ?23, ?24)
         ON CONFLICT (app_id, dialpad_call_id) DO UPDATE SET
            direction = excluded.direction, from_number = excluded.from_number,
            to_number = excluded.to_number, status = excluded.status,
            dialpad_user_id = excluded.dialpad_user_id, target_type = excluded.target_type,
            target_id = excluded.target_id, started_at = excluded.started_at,
            answered_at = excluded.answered_at, ended_at = excluded.ended_at,
            duration_seconds = excluded.duration_seconds, recording_url = excluded.recording_url,
            is_voicemail = excluded.is_voicemail,
            voicemail_audio_url = excluded.voicemail_audio_url, transcript = excluded.transcript,
            held = excluded.held, merge_log = excluded.merge_log,
            last_event_ms = excluded.last_event_ms, raw_payload = excluded.raw_payload,
            updated_at = excluded.updated_at",
    )
    .bind(c.id.to_string())
    .bind(c.app_id.0.to_string())
    .bind(c.dialpad_call_id.as_i64())
    .bind(c.direction.map(Direction::as_str))
    .bind(c.from_number.as_deref())
    .bind(c.to_number.as_deref())
    .bind(c.status.as_str())
    .bind(c.dialpad_user_id.map(DialpadId::as_i64))
    .bind(c.target_type.as_deref())
    .bind(c.target_id.map(DialpadId::as_i64))
    .bind(rows::opt_ts(c.started_at.as_ref()))
    .bind(rows::opt_ts(c.answered_at.as_ref()))
    .bind(rows::opt_ts(c.ended_at.as_ref()))
    .bind(c.duration_seconds)
    .bind(c.recording_url.as_deref())
    .bind(i64::from(c.is_voicemail))
    .bind(c.voicemail_audio_url.as_deref())
    .bind(c.transcript.as_deref())
    .bind(i64::from(c.held))
    .bind(common::merge_log_to_json(&c.merge_log)?)
    .bind(c.last_event_ms)
    .bind(c.raw_payload.as_ref().map(common::json_to_text))
    .bind(ts(&c.created_at))
    .bind(ts(&c.updated_at))
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn upsert_voicemail(conn: &mut SqliteConnection, v: &Voicemail) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO voicemails (id, app_id, dialpad_call_id, dialpad_user_id, from_number,
                                to_number, recording_url, transcript, duration_seconds,
                                created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (id) DO UPDATE SET
            dialpad_call_id = excluded.dialpad_call_id, dialpad_user_id = excluded.dialpad_user_id,
            from_number = excluded.from_number, to_number = excluded.to_number,
            recording_url = excluded.recording_url, transcript = excluded.transcript,
            duration_seconds = excluded.duration_seconds, updated_at = excluded.updated_at",
    )
    .bind(v.id.to_string())
    .bind(v.app_id.0.to_string())
    .bind(v.dialpad_call_id.map(DialpadId::as_i64))
    .bind(v.dialpad_user_id.map(DialpadId::as_i64))
    .bind(v.from_number.as_deref())
    .bind(v.to_number.as_deref())
    .bind(v.recording_url.as_deref())
    .bind(v.transcript.as_deref())
    .bind(v.duration_seconds)
    .bind(ts(&v.created_at))
    .bind(ts(&v.updated_at))
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn upsert_message(conn: &mut SqliteConnection, m: &Message) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO messages (id, app_id, dialpad_message_id, direction, from_number, to_number,
                              to_numbers, text, dialpad_user_id, sent_at, message_status,
                              created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (app_id, dialpad_message_id) DO UPDATE SET
            direction = excluded.direction, from_number = excluded.from_number,
            to_number = excluded.to_number, to_numbers = excluded.to_numbers,
            text = excluded.text, dialpad_user_id = excluded.dialpad_user_id,
            sent_at = excluded.sent_at, message_status = excluded.message_status,
            updated_at = excluded.updated_at",
    )
    .bind(m.id.to_string())
    .bind(m.app_id.0.to_string())
    .bind(m.dialpad_message_id.as_i64())
    .bind(m.direction.map(Direction::as_str))
    .bind(m.from_number.as_deref())
    .bind(m.to_number.as_deref())
    .bind(common::to_numbers_to_json(&m.to_numbers)?)
    .bind(m.text.as_deref())
    .bind(m.dialpad_user_id.map(DialpadId::as_i64))
    .bind(rows::opt_ts(m.sent_at.as_ref()))
    .bind(m.message_status.as_deref())
    .bind(ts(&m.created_at))
    .bind(ts(&m.updated_at))
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}
