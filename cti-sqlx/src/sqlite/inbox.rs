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
use rusqlite::params;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::complete::{complete_held, complete_set};
use super::rows::{self, EVENT_COLS, OUTBOX_COLS, int, ts};
use super::{SqliteStore, begin_immediate, direct};
use crate::batch::{self, inline::Born};
use crate::common::{self, map_err};
use sqlx::Connection;

/// The predicate of the partial indexes of unfinished events (`webhook_events_unfinished`,
/// `webhook_events_call_unfinished`), for the row aliased `t` (`""` or `"w."`). A query uses
/// those indexes only with this exact term (migration 0006: an `IN` list of three constants
/// would cost a temporary b-tree per inserted row).
pub(crate) fn unfinished(t: &str) -> String {
    format!("({t}status = 'pending' OR {t}status = 'failed' OR {t}status = 'processing')")
}

/// "Due" condition, at `?1` (= now), of the row aliased `t`.
fn due(t: &str) -> String {
    format!(
        "(({t}.status IN ('pending', 'failed') AND {t}.next_attempt_at <= ?1) \
          OR ({t}.status = 'processing' AND {t}.locked_until < ?1))"
    )
}

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
        self.write_direct(|tx| insert_events(tx, &events, Pending::All))
            .await
    }

    fn processes_inline(&self) -> bool {
        true
    }

    /// The hot writes are direct rusqlite transactions (`direct.rs`): synchronous.
    fn writer_threads(&self) -> bool {
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
        self.write_direct(|tx| {
            // Per-call order: a call with older unfinished events leaves its new ones to the
            // processor (which hands them out after the older ones).
            let blocked = calls_with_unfinished(tx, news)?;
            let claim = batch::inline::claims(news, &results, &blocked);
            // Processed events are inserted finished; the transaction is the lease.
            let born = batch::inline::born(&claim, &results);
            let outcomes = insert_events(tx, news, Pending::Born(&born, now_us))?;
            let (order, items) = batch::inline::completions(news, &mut results, &claim, &outcomes);
            let held: HashMap<Uuid, AppId> = order
                .iter()
                .map(|&i| (news[i].id, news[i].app_id))
                .collect();
            let done = complete_held(tx, &items, &held, now)?;
            let mut failed = Vec::new();
            let report = batch::inline::report(outcomes, &order, &items, done, &mut failed);
            // The processor retries these (attempt 1 is spent, as after a failed claim).
            let mut stmt = direct::prepare(
                tx,
                "UPDATE webhook_events SET status = 'failed', last_error = ?1, \
                     next_attempt_at = ?2, processed_at = NULL, locked_until = NULL WHERE id = ?3",
            )?;
            for (id, error) in failed {
                stmt.execute(params![error, now_us, id.to_string()])
                    .map_err(direct::map_err)?;
            }
            Ok(report)
        })
        .await
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
        // The whole transaction (status change included) rolls back if applying fails.
        self.write_direct(|tx| {
            complete_set(tx, std::slice::from_ref(&item), now)?
                .pop()
                .unwrap_or(Err(StoreError::LeaseLost))
        })
        .await
    }

    /// One `BEGIN IMMEDIATE … COMMIT` for the whole batch, run in one go on the writer's
    /// handle (see `complete.rs`): one WAL append and a short hold of the writer instead of a
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
        let batched = self.write_direct(|tx| complete_set(tx, &items, now)).await;
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
        self.counts("SELECT status, COUNT(*) AS n FROM webhook_events GROUP BY status")
            .await
    }

    /// Reads the partial index of unfinished events and the `dead` range of the status index:
    /// a scrape costs what is waiting, not the retained history.
    async fn inbox_backlog(&self) -> StoreResult<InboxBacklog> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT status, COUNT(*) AS n FROM webhook_events INDEXED BY webhook_events_unfinished
                 WHERE {} GROUP BY status
                 UNION ALL
                 SELECT 'dead', COUNT(*) FROM webhook_events INDEXED BY webhook_events_status_next
                 WHERE status = 'dead'",
                unfinished("")
            )
        });
        self.counts(&SQL).await.map(InboxBacklog::from)
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

/// Inserts `events` in order inside the caller's transaction (one cached single-row statement,
/// run on the writer's thread) and reports each event's outcome: a key already stored — or
/// earlier in the batch, whose first occurrence wins — is a duplicate of the stored event.
fn insert_events(
    tx: &rusqlite::Connection,
    events: &[NewInboxEvent],
    pending: Pending<'_>,
) -> StoreResult<Vec<InsertOutcome>> {
    let mut insert = direct::prepare(
        tx,
        "INSERT INTO webhook_events (id, app_id, dedupe_key, event_type, call_id, state, \
             event_timestamp, payload, next_attempt_at, received_at, status, attempts, \
             processed_at, last_error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT (app_id, dedupe_at, dedupe_key) DO NOTHING",
    )?;
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let born = pending.born(i);
        let app = e.app_id.0.to_string();
        let n = insert
            .execute(params![
                e.id.to_string(),
                app,
                e.dedupe_key,
                e.event_type,
                e.call_id.map(DialpadId::as_i64),
                e.state,
                e.event_timestamp,
                e.payload.as_str(),
                ts(&e.received_at),
                born.map_or("pending", |(status, ..)| status.as_str()),
                i64::from(born.is_some()),
                born.map(|(_, at, _)| at),
                born.and_then(|(_, _, reason)| reason),
            ])
            .map_err(direct::map_err)?;
        if n == 1 {
            out.push(InsertOutcome::Inserted(e.id));
            continue;
        }
        // The key exists (stored earlier, or earlier in this batch: the first occurrence wins).
        // `dedupe_at` (migration 0005) is 0 or the event's timestamp, whichever the key's form
        // selects: both candidates, each a point lookup on the unique index (`IN (0, …)` would
        // build a temporary b-tree of the two values).
        let id: String = direct::prepare(
            tx,
            "SELECT id FROM webhook_events WHERE app_id = ?1 AND dedupe_at = 0 AND dedupe_key = ?2 \
             UNION ALL \
             SELECT id FROM webhook_events \
              WHERE app_id = ?1 AND dedupe_at = coalesce(?3, 0) AND dedupe_key = ?2 \
             LIMIT 1",
        )?
        .query_row(params![app, e.dedupe_key, e.event_timestamp], |r| r.get(0))
        .map_err(direct::map_err)?;
        out.push(InsertOutcome::Duplicate(common::uuid_from_text("id", &id)?));
    }
    Ok(out)
}

/// Which events [`insert_events`] stores already finished.
#[derive(Clone, Copy)]
enum Pending<'a> {
    /// None: every event is `pending`.
    All,
    /// Those with a status are stored finished (attempt 1, processed at this time, µs); the
    /// others are `pending`.
    Born(&'a [Option<Born<'a>>], i64),
}

impl<'a> Pending<'a> {
    /// Status, processing time and reason of event `i` if it is stored finished.
    fn born(self, i: usize) -> Option<(EventStatus, i64, Option<&'a str>)> {
        match self {
            Pending::All => None,
            Pending::Born(born, at) => born
                .get(i)
                .copied()
                .flatten()
                .map(|(status, reason)| (status, at, reason)),
        }
    }
}

/// The `(app_id, call_id)` pairs of `events` that have an unfinished event in the inbox.
fn calls_with_unfinished(
    tx: &rusqlite::Connection,
    events: &[NewInboxEvent],
) -> StoreResult<std::collections::HashSet<batch::Key>> {
    let keys: BTreeSet<(AppId, DialpadId)> = events
        .iter()
        .filter_map(|e| e.call_id.map(|c| (e.app_id, c)))
        .collect();
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT EXISTS (SELECT 1 FROM webhook_events INDEXED BY webhook_events_call_unfinished \
             WHERE app_id = ?1 AND call_id = ?2 AND {})",
            unfinished("")
        )
    });
    let mut stmt = direct::prepare(tx, &SQL)?;
    let mut out = std::collections::HashSet::new();
    for (app, call) in keys {
        let unfinished: bool = stmt
            .query_row(params![app.0.to_string(), call.as_i64()], |r| r.get(0))
            .map_err(direct::map_err)?;
        if unfinished {
            out.insert((app, call));
        }
    }
    Ok(out)
}

/// The claim scan query (see [`select_claimable`]): `?1` now, `?2`/`?3` the cursor
/// `(received_at, seq)`, `?4` the chunk size.
static SCAN_SQL: LazyLock<String> = LazyLock::new(|| {
    let same_call = |t: &str| {
        format!(
            "{t}.app_id = w.app_id AND {t}.call_id = w.call_id AND {}",
            unfinished(&format!("{t}."))
        )
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
          WHERE {unfinished_w}
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
        unfinished_w = unfinished("w."),
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

impl SqliteStore {
    /// The counters of `sql` (`(status, n)` rows) and the oldest unfinished event, read in one
    /// transaction.
    async fn counts(&self, sql: &str) -> StoreResult<InboxStats> {
        let mut r = self.read_conn().await?;
        let mut tx = r.begin().await.map_err(map_err)?;
        let rows = sqlx::query(sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        static OLDEST: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT MIN(received_at) FROM webhook_events INDEXED BY webhook_events_unfinished
                 WHERE {}",
                unfinished("")
            )
        });
        let oldest: Option<i64> = sqlx::query_scalar(&OLDEST)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let mut s = InboxStats::default();
        for r in &rows {
            let status: String = r.try_get("status").map_err(map_err)?;
            s.add(
                common::event_status(&status)?,
                rows::count(r.try_get("n").map_err(map_err)?),
            );
        }
        s.oldest_unprocessed_at = rows::from_opt_ts("received_at", oldest)?;
        Ok(s)
    }
}
