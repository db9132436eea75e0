//! [`InboxStore`] on SQLite: the durable webhook inbox (`webhook_events`) and the realtime
//! outbox (`cti_events`).
//!
//! Every write runs on the single writer connection, so a claim is trivially exclusive: no
//! other transaction can observe or change the rows between the selection and the update.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::normalize::Normalized;
use cti_core::normalize::apply::call_key;
use cti_core::store::*;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{
    self, CALL_COLS, EVENT_COLS, MESSAGE_COLS, OUTBOX_COLS, VOICEMAIL_COLS, int, ts,
};
use crate::common::{self, map_err};

/// "Due" condition of an event at `?1` (= now).
const DUE: &str = "((status IN ('pending', 'failed') AND next_attempt_at <= ?1) \
                    OR (status = 'processing' AND locked_until < ?1))";

/// [`DUE`] for the alias `p`.
const DUE_P: &str = "((p.status IN ('pending', 'failed') AND p.next_attempt_at <= ?1) \
                      OR (p.status = 'processing' AND p.locked_until < ?1))";

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
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(events.len());
        for e in &events {
            let inserted = sqlx::query(
                "INSERT INTO webhook_events
                    (id, app_id, dedupe_key, event_type, call_id, state, event_timestamp, payload,
                     status, attempts, next_attempt_at, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?9)
                 ON CONFLICT (app_id, dedupe_key) DO NOTHING",
            )
            .bind(e.id.to_string())
            .bind(e.app_id.0.to_string())
            .bind(&e.dedupe_key)
            .bind(e.event_type.as_deref())
            .bind(e.call_id.map(DialpadId::as_i64))
            .bind(e.state.as_deref())
            .bind(e.event_timestamp)
            .bind(common::json_to_text(&e.payload))
            .bind(ts(&e.received_at))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            if inserted == 1 {
                out.push(InsertOutcome::Inserted(e.id));
                continue;
            }
            // A key already present — stored earlier or earlier in this batch.
            let existing: String = sqlx::query_scalar(
                "SELECT id FROM webhook_events WHERE app_id = ?1 AND dedupe_key = ?2",
            )
            .bind(e.app_id.0.to_string())
            .bind(&e.dedupe_key)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            out.push(InsertOutcome::Duplicate(common::uuid_from_text(
                "id", &existing,
            )?));
        }
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
        let mut tx = self.write_tx().await?;
        let picked = select_claimable(&mut tx, limit, now_us).await?;
        if picked.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; picked.len()].join(", ");
        let sql = format!(
            "UPDATE webhook_events
                SET status = 'processing', locked_until = {until}, attempts = attempts + 1
              WHERE seq IN ({placeholders})
             RETURNING seq, {EVENT_COLS}"
        );
        let mut q = sqlx::query(&sql);
        for (_, seq) in &picked {
            q = q.bind(*seq);
        }
        let rows = q.fetch_all(&mut *tx).await.map_err(map_err)?;
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
        let mut tx = self.write_tx().await?;
        let app = check_lease(&mut tx, event_id, attempt).await?;
        let now_us = ts(&now);
        let published = match result {
            EventResult::Ignored(reason) => {
                sqlx::query(
                    "UPDATE webhook_events SET status = 'ignored', last_error = ?1,
                            processed_at = ?2, locked_until = NULL
                     WHERE id = ?3",
                )
                .bind(reason)
                .bind(now_us)
                .bind(event_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                Vec::new()
            }
            EventResult::Apply(n) => {
                let published = apply(&mut tx, app, &n, now).await?;
                sqlx::query(
                    "UPDATE webhook_events SET status = 'done', processed_at = ?1,
                            locked_until = NULL
                     WHERE id = ?2",
                )
                .bind(now_us)
                .bind(event_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                published
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(published)
    }

    async fn inbox_fail(
        &self,
        event_id: Uuid,
        attempt: u32,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        check_lease(&mut tx, event_id, attempt).await?;
        let q = match retry_at {
            Some(at) => sqlx::query(
                "UPDATE webhook_events SET status = 'failed', last_error = ?1,
                        next_attempt_at = ?2, locked_until = NULL
                 WHERE id = ?3",
            )
            .bind(error)
            .bind(ts(&at)),
            None => sqlx::query(
                "UPDATE webhook_events SET status = 'dead', last_error = ?1,
                        processed_at = ?2, locked_until = NULL
                 WHERE id = ?3",
            )
            .bind(error)
            .bind(ts(&now)),
        };
        q.bind(event_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    async fn inbox_get(&self, app: Option<AppId>, id: Uuid) -> StoreResult<Option<InboxEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM webhook_events WHERE id = ?1 AND (?2 IS NULL OR app_id = ?2)"
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(app.map(|a| a.0.to_string()))
            .fetch_optional(&self.reader)
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
        .execute(&self.writer)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(done == 1)
    }

    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        let mut tx = self.read_tx().await?;
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
            "SELECT MIN(received_at) FROM webhook_events
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
            "DELETE FROM webhook_events WHERE status IN ('done', 'ignored') AND received_at < ?1",
        )
        .bind(ts(&before))
        .execute(&self.writer)
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
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::published)
            .collect()
    }

    async fn event_heads(&self) -> StoreResult<Vec<(AppId, u64)>> {
        sqlx::query("SELECT id, last_event_seq FROM apps WHERE last_event_seq > 0 ORDER BY id")
            .fetch_all(&self.reader)
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
                .fetch_one(&self.reader)
                .await
                .map_err(map_err)?;
        Ok(v.map(rows::count))
    }

    async fn events_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let n = sqlx::query("DELETE FROM cti_events WHERE created_at < ?1")
            .bind(ts(&before))
            .execute(&self.writer)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n)
    }
}

/// Selects the events a claim takes, in output order.
///
/// Scans unfinished events in arrival order (partial index `webhook_events_unfinished`),
/// skipping in SQL every event of a call that is not the call's first due arrival (so a call
/// with a long backlog costs one row, not one per event). An event without a call id is
/// taken as is. For the first due event of each call, the call
/// is skipped when another of its events holds an unexpired lease; otherwise the call's
/// earliest due event by `(event_timestamp NULLS LAST, received_at, seq)` is taken — which
/// may have arrived later than the scanned row, so the scan continues until no unseen row
/// can sort before the `limit`-th candidate.
async fn select_claimable(
    conn: &mut SqliteConnection,
    limit: usize,
    now_us: i64,
) -> StoreResult<Vec<Candidate>> {
    let scan_sql = format!(
        "SELECT seq, app_id, call_id, received_at
           FROM webhook_events INDEXED BY webhook_events_unfinished
          WHERE status IN ('pending', 'failed', 'processing')
            AND (received_at > ?2 OR (received_at = ?2 AND seq > ?3))
            AND {DUE}
            AND (call_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM webhook_events p INDEXED BY webhook_events_call_unfinished
                    WHERE p.app_id = webhook_events.app_id AND p.call_id = webhook_events.call_id
                      AND p.status IN ('pending', 'failed', 'processing')
                      AND (p.received_at < webhook_events.received_at
                           OR (p.received_at = webhook_events.received_at
                               AND p.seq < webhook_events.seq))
                      AND {DUE_P}))
          ORDER BY received_at, seq
          LIMIT ?4"
    );
    let call_sql = format!(
        "SELECT seq, received_at,
                EXISTS (SELECT 1 FROM webhook_events b
                         WHERE b.app_id = ?2 AND b.call_id = ?3 AND b.status = 'processing'
                           AND b.locked_until >= ?1) AS busy
           FROM webhook_events
          WHERE app_id = ?2 AND call_id = ?3 AND {DUE}
          ORDER BY event_timestamp IS NULL, event_timestamp, received_at, seq
          LIMIT 1"
    );
    let mut picked: BTreeSet<Candidate> = BTreeSet::new();
    let mut seen_calls: HashSet<(String, i64)> = HashSet::new();
    let mut cursor: Candidate = (i64::MIN, i64::MIN);
    'scan: loop {
        let chunk = sqlx::query(&scan_sql)
            .bind(now_us)
            .bind(cursor.0)
            .bind(cursor.1)
            .bind(SCAN_CHUNK)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let exhausted = (chunk.len() as i64) < SCAN_CHUNK;
        for r in &chunk {
            let seq: i64 = r.try_get("seq").map_err(map_err)?;
            let received: i64 = r.try_get("received_at").map_err(map_err)?;
            cursor = (received, seq);
            if picked.len() >= limit && picked.last().is_some_and(|last| cursor > *last) {
                break 'scan;
            }
            let call: Option<i64> = r.try_get("call_id").map_err(map_err)?;
            let candidate = match call {
                None => Some(cursor),
                Some(call) => {
                    let app: String = r.try_get("app_id").map_err(map_err)?;
                    if !seen_calls.insert((app.clone(), call)) {
                        continue;
                    }
                    let first = sqlx::query(&call_sql)
                        .bind(now_us)
                        .bind(app)
                        .bind(call)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(map_err)?;
                    match first {
                        Some(f) if f.try_get::<i64, _>("busy").map_err(map_err)? == 0 => Some((
                            f.try_get("received_at").map_err(map_err)?,
                            f.try_get("seq").map_err(map_err)?,
                        )),
                        _ => None,
                    }
                }
            };
            if let Some(c) = candidate {
                picked.insert(c);
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

/// Verifies the event is held with this attempt; returns its app.
async fn check_lease(conn: &mut SqliteConnection, id: Uuid, attempt: u32) -> StoreResult<AppId> {
    let row = sqlx::query("SELECT app_id, status, attempts FROM webhook_events WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or(StoreError::LeaseLost)?;
    let status: String = row.try_get("status").map_err(map_err)?;
    let attempts: i64 = row.try_get("attempts").map_err(map_err)?;
    if status != EventStatus::Processing.as_str() || attempts != i64::from(attempt) {
        return Err(StoreError::LeaseLost);
    }
    let app: String = row.try_get("app_id").map_err(map_err)?;
    Ok(AppId(common::uuid_from_text("app_id", &app)?))
}

/// Applies a normalised event inside the transaction (see the algorithm in `common`).
async fn apply(
    conn: &mut SqliteConnection,
    app: AppId,
    n: &Normalized,
    now: Timestamp,
) -> StoreResult<Vec<PublishedEvent>> {
    let app_s = app.0.to_string();
    let key = call_key(n);
    let call = match key {
        Some(k) => {
            let sql =
                format!("SELECT {CALL_COLS} FROM calls WHERE app_id = ?1 AND dialpad_call_id = ?2");
            let row = sqlx::query(&sql)
                .bind(&app_s)
                .bind(k.as_i64())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(rows::call).transpose()?
        }
        None => None,
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
    let crm_user: Option<String> = match target_user(n, call.as_ref()) {
        Some(user) => sqlx::query_scalar(
            "SELECT crm_user_id FROM dialpad_user_mappings WHERE app_id = ?1 AND dialpad_user_id = ?2",
        )
        .bind(&app_s)
        .bind(user.as_i64())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?,
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
    let len = applied.outbox.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "UPDATE apps SET last_event_seq = last_event_seq + ?1 WHERE id = ?2 RETURNING last_event_seq",
    )
    .bind(len)
    .bind(&app_s)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?
    .ok_or(StoreError::NotFound)?;
    let now_us = ts(&now);
    let mut published = Vec::with_capacity(applied.outbox.len());
    for (i, m) in applied.outbox.into_iter().enumerate() {
        let seq = last - len + 1 + i as i64;
        sqlx::query(
            "INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&app_s)
        .bind(seq)
        .bind(&m.event)
        .bind(common::json_to_text(&m.payload))
        .bind(m.target_crm_user.as_deref())
        .bind(now_us)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        published.push(PublishedEvent {
            app_id: app,
            seq: rows::count(seq),
            event: m.event,
            payload: m.payload,
            target_crm_user: m.target_crm_user,
            created_at: now,
        });
    }
    Ok(published)
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
