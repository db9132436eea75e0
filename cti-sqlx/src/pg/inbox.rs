//! [`InboxStore`] on PostgreSQL: group-commit inserts, leased claims with per-call ordering,
//! the `inbox_complete` transaction (see `crate::common` for the algorithm) and the outbox.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::normalize::Normalized;
use cti_core::normalize::apply::call_key;
use cti_core::store::*;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::rows::*;
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

/// Scan window of a claim: wide enough that a few calls with many queued events do not hide
/// other due events.
fn claim_window(limit: usize) -> i64 {
    i64_of_usize(limit.saturating_mul(4).saturating_add(64).min(20_000))
}

/// Transaction-scoped advisory locks on the apps of the given events, in key order. Every
/// transaction that applies events takes them first, so two of them never wait on each other's
/// rows of one app (call and message rows, list counters, `apps.last_event_seq`) in opposite
/// orders: applying is serialised per app, and an app's publishers commit in sequence order.
const APP_LOCKS_SQL: &str = "SELECT count(pg_advisory_xact_lock(l.k)) FROM (
        SELECT DISTINCT hashtextextended('cti-app:' || app_id::text, 0) AS k
        FROM webhook_events WHERE id = ANY($1) ORDER BY 1
    ) l";

impl PgStore {
    /// Completes every item in one transaction; any error rolls all of them back.
    async fn complete_all(
        &self,
        items: &[Completion],
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<PublishedEvent>>> {
        let mut tx = self.pool.begin().await.map_err(pg_err)?;
        let applying: Vec<Uuid> = items
            .iter()
            .filter(|c| matches!(c.result, EventResult::Apply(_)))
            .map(|c| c.event_id)
            .collect();
        if !applying.is_empty() {
            sqlx::query(APP_LOCKS_SQL)
                .bind(&applying)
                .execute(&mut *tx)
                .await
                .map_err(pg_err)?;
        }
        let mut out = Vec::with_capacity(items.len());
        for c in items {
            out.push(complete_one(&mut tx, c, now).await?);
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(out)
    }
}

/// Finishes one claimed event inside the caller's transaction (the algorithm in
/// `crate::common`).
async fn complete_one(
    conn: &mut PgConnection,
    c: &Completion,
    now: Timestamp,
) -> StoreResult<Vec<PublishedEvent>> {
    let attempt = i32::try_from(c.attempt).map_err(|_| StoreError::LeaseLost)?;
    let n = match &c.result {
        EventResult::Ignored(reason) => {
            let done = sqlx::query(IGNORE_SQL)
                .bind(c.event_id)
                .bind(attempt)
                .bind(reason)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(pg_err)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::LeaseLost);
            }
            return Ok(Vec::new());
        }
        EventResult::Apply(n) => n,
    };
    let row = sqlx::query(LEASE_AND_LOCK_SQL)
        .bind(c.event_id)
        .bind(attempt)
        .bind(now)
        .bind(lock_names(n))
        .fetch_optional(&mut *conn)
        .await
        .map_err(pg_err)?;
    let Some(row) = row else {
        return Err(StoreError::LeaseLost);
    };
    let app = AppId(col(&row, "app_id")?);
    let existing = load_existing(conn, app, n).await?;
    let applied = apply_event(app, n, existing, now);
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
        Ok(Vec::new())
    } else {
        append_outbox(conn, app, applied.outbox, now).await
    }
}

/// Marks an event `ignored` if this attempt still holds it.
const IGNORE_SQL: &str = "UPDATE webhook_events SET status = 'ignored', last_error = $3, \
    processed_at = $4, locked_until = NULL WHERE id = $1 AND status = 'processing' AND attempts = $2";

/// Names of the records an event merges into (`call:<id>`, `message:<id>`); each becomes a
/// transaction-scoped advisory lock on `hashtextextended('cti:<app>:<name>')`.
fn lock_names(n: &Normalized) -> Vec<String> {
    let mut names = Vec::with_capacity(3);
    if let Some(k) = call_key(n) {
        names.push(format!("call:{k}"));
    }
    if let Some(k) = n.voicemail.as_ref().and_then(|v| v.dialpad_call_id) {
        names.push(format!("call:{k}"));
    }
    if let Some(k) = n.message.as_ref().and_then(|m| m.dialpad_message_id) {
        names.push(format!("message:{k}"));
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// Lease check + status change + record locks, in one statement: the event row is updated
/// (and row-locked) only if it is still `processing` with this attempt, then the advisory locks
/// of its records are taken in key order (no deadlocks between completes). The reads that
/// follow are later statements, so their snapshots include every transaction that held those
/// locks before (READ COMMITTED snapshots are per statement). Returns the event's app, `None`
/// when the lease is lost.
const LEASE_AND_LOCK_SQL: &str = "WITH ev AS (
        UPDATE webhook_events SET status = 'done', processed_at = $3, locked_until = NULL,
            last_error = NULL
        WHERE id = $1 AND status = 'processing' AND attempts = $2
        RETURNING app_id
    )
    SELECT ev.app_id,
        (SELECT count(pg_advisory_xact_lock(l.k)) FROM (
            SELECT DISTINCT hashtextextended('cti:' || ev.app_id::text || ':' || x, 0) AS k
            FROM unnest($4::text[]) AS x ORDER BY 1) l) AS locks
    FROM ev";

/// The call of the event (if any) and the CRM user mapped to the targeted Dialpad user: the
/// user named by the event (`$3`), else the call's (`cti_core::store::target_user`).
fn call_and_mapping_sql() -> String {
    format!(
        "SELECT {CALL_COLS}, (SELECT m.crm_user_id FROM dialpad_user_mappings m
            WHERE m.app_id = $1 AND m.dialpad_user_id = COALESCE($3::bigint, c.dialpad_user_id))
            AS crm_user
         FROM (SELECT 1) AS one
         LEFT JOIN calls c ON c.app_id = $1 AND c.dialpad_call_id = $2::bigint"
    )
}

async fn load_existing(
    conn: &mut PgConnection,
    app: AppId,
    n: &Normalized,
) -> StoreResult<Existing> {
    let key = call_key(n);
    let event_user = target_user(n, None);
    let (call, crm_user) = if key.is_some() || event_user.is_some() {
        let row = sqlx::query(&call_and_mapping_sql())
            .bind(app.0)
            .bind(key.map(DialpadId::as_i64))
            .bind(event_user.map(DialpadId::as_i64))
            .fetch_one(&mut *conn)
            .await
            .map_err(pg_err)?;
        let found: Option<uuid::Uuid> = col(&row, "id")?;
        let call = match found {
            Some(_) => Some(call_from_row(&row)?),
            None => None,
        };
        (call, col::<Option<String>>(&row, "crm_user")?)
    } else {
        (None, None)
    };
    let voicemail = match (&n.voicemail, key) {
        (Some(_), Some(k)) => {
            let sql = format!(
                "SELECT {VOICEMAIL_COLS} FROM voicemails WHERE app_id = $1 AND dialpad_call_id = $2"
            );
            let row = sqlx::query(&sql)
                .bind(app.0)
                .bind(k.as_i64())
                .fetch_optional(&mut *conn)
                .await
                .map_err(pg_err)?;
            row.as_ref().map(voicemail_from_row).transpose()?
        }
        _ => None,
    };
    let message = match n.message.as_ref().and_then(|m| m.dialpad_message_id) {
        Some(mid) => {
            let sql = format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE app_id = $1 AND dialpad_message_id = $2"
            );
            let row = sqlx::query(&sql)
                .bind(app.0)
                .bind(mid.as_i64())
                .fetch_optional(&mut *conn)
                .await
                .map_err(pg_err)?;
            row.as_ref().map(message_from_row).transpose()?
        }
        None => None,
    };
    Ok(Existing {
        call,
        voicemail,
        message,
        crm_user,
    })
}

async fn upsert_call(conn: &mut PgConnection, c: &Call) -> StoreResult<()> {
    let log = common::merge_log_to_value(&c.merge_log)?;
    sqlx::query(
        "INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number, status, \
         dialpad_user_id, target_type, target_id, started_at, answered_at, ended_at, duration_seconds, \
         recording_url, is_voicemail, voicemail_audio_url, transcript, held, merge_log, last_event_ms, \
         raw_payload, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
         $20, $21, $22, $23, $24) \
         ON CONFLICT (app_id, dialpad_call_id) DO UPDATE SET direction = EXCLUDED.direction, \
         from_number = EXCLUDED.from_number, to_number = EXCLUDED.to_number, status = EXCLUDED.status, \
         dialpad_user_id = EXCLUDED.dialpad_user_id, target_type = EXCLUDED.target_type, \
         target_id = EXCLUDED.target_id, started_at = EXCLUDED.started_at, \
         answered_at = EXCLUDED.answered_at, ended_at = EXCLUDED.ended_at, \
         duration_seconds = EXCLUDED.duration_seconds, recording_url = EXCLUDED.recording_url, \
         is_voicemail = EXCLUDED.is_voicemail, voicemail_audio_url = EXCLUDED.voicemail_audio_url, \
         transcript = EXCLUDED.transcript, held = EXCLUDED.held, merge_log = EXCLUDED.merge_log, \
         last_event_ms = EXCLUDED.last_event_ms, raw_payload = EXCLUDED.raw_payload, \
         updated_at = EXCLUDED.updated_at",
    )
    .bind(c.id)
    .bind(c.app_id.0)
    .bind(c.dialpad_call_id.as_i64())
    .bind(c.direction.map(Direction::as_str))
    .bind(c.from_number.as_deref())
    .bind(c.to_number.as_deref())
    .bind(c.status.as_str())
    .bind(c.dialpad_user_id.map(DialpadId::as_i64))
    .bind(c.target_type.as_deref())
    .bind(c.target_id.map(DialpadId::as_i64))
    .bind(c.started_at)
    .bind(c.answered_at)
    .bind(c.ended_at)
    .bind(c.duration_seconds)
    .bind(c.recording_url.as_deref())
    .bind(c.is_voicemail)
    .bind(c.voicemail_audio_url.as_deref())
    .bind(c.transcript.as_deref())
    .bind(c.held)
    .bind(log)
    .bind(c.last_event_ms)
    .bind(c.raw_payload.as_ref())
    .bind(c.created_at)
    .bind(c.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn upsert_voicemail(conn: &mut PgConnection, v: &Voicemail) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO voicemails (id, app_id, dialpad_call_id, dialpad_user_id, from_number, to_number, \
         recording_url, transcript, duration_seconds, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET dialpad_call_id = EXCLUDED.dialpad_call_id, \
         dialpad_user_id = EXCLUDED.dialpad_user_id, from_number = EXCLUDED.from_number, \
         to_number = EXCLUDED.to_number, recording_url = EXCLUDED.recording_url, \
         transcript = EXCLUDED.transcript, duration_seconds = EXCLUDED.duration_seconds, \
         updated_at = EXCLUDED.updated_at",
    )
    .bind(v.id)
    .bind(v.app_id.0)
    .bind(v.dialpad_call_id.map(DialpadId::as_i64))
    .bind(v.dialpad_user_id.map(DialpadId::as_i64))
    .bind(v.from_number.as_deref())
    .bind(v.to_number.as_deref())
    .bind(v.recording_url.as_deref())
    .bind(v.transcript.as_deref())
    .bind(v.duration_seconds)
    .bind(v.created_at)
    .bind(v.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn upsert_message(conn: &mut PgConnection, m: &Message) -> StoreResult<()> {
    let to_numbers = serde_json::Value::from(m.to_numbers.clone());
    sqlx::query(
        "INSERT INTO messages (id, app_id, dialpad_message_id, direction, from_number, to_number, \
         to_numbers, text, dialpad_user_id, sent_at, message_status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (app_id, dialpad_message_id) DO UPDATE SET direction = EXCLUDED.direction, \
         from_number = EXCLUDED.from_number, to_number = EXCLUDED.to_number, \
         to_numbers = EXCLUDED.to_numbers, text = EXCLUDED.text, \
         dialpad_user_id = EXCLUDED.dialpad_user_id, sent_at = EXCLUDED.sent_at, \
         message_status = EXCLUDED.message_status, updated_at = EXCLUDED.updated_at",
    )
    .bind(m.id)
    .bind(m.app_id.0)
    .bind(m.dialpad_message_id.as_i64())
    .bind(m.direction.map(Direction::as_str))
    .bind(m.from_number.as_deref())
    .bind(m.to_number.as_deref())
    .bind(to_numbers)
    .bind(m.text.as_deref())
    .bind(m.dialpad_user_id.map(DialpadId::as_i64))
    .bind(m.sent_at)
    .bind(m.message_status.as_deref())
    .bind(m.created_at)
    .bind(m.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Numbers the messages with the app's next sequence numbers and appends them to the outbox.
/// The `UPDATE apps` row lock is held until commit: the app's publishers serialise here, so
/// numbers are gap-free and become visible in order.
async fn append_outbox(
    conn: &mut PgConnection,
    app: AppId,
    outbox: Vec<OutboxMessage>,
    now: Timestamp,
) -> StoreResult<Vec<PublishedEvent>> {
    let n = i64_of_usize(outbox.len());
    let mut events = Vec::with_capacity(outbox.len());
    let mut payloads = Vec::with_capacity(outbox.len());
    let mut targets = Vec::with_capacity(outbox.len());
    for m in &outbox {
        events.push(m.event.clone());
        payloads.push(m.payload.clone());
        targets.push(m.target_crm_user.clone());
    }
    let rows = sqlx::query(
        "WITH s AS (
            UPDATE apps SET last_event_seq = last_event_seq + $2 WHERE id = $1 RETURNING last_event_seq
        )
        INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, created_at)
        SELECT $1, s.last_event_seq - $2 + o.ord, o.event, o.payload, o.target, $6
        FROM s, UNNEST($3::text[], $4::jsonb[], $5::text[]) WITH ORDINALITY AS o(event, payload, target, ord)
        RETURNING seq, created_at",
    )
    .bind(app.0)
    .bind(n)
    .bind(events)
    .bind(payloads)
    .bind(targets)
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(pg_err)?;
    if rows.len() != outbox.len() {
        // Only possible if the app row vanished under us (it cascades to the inbox row too).
        return Err(StoreError::NotFound);
    }
    let mut numbered: Vec<(u64, Timestamp)> = Vec::with_capacity(rows.len());
    for r in &rows {
        numbered.push((u64_of(col(r, "seq")?)?, col(r, "created_at")?));
    }
    numbered.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(outbox
        .into_iter()
        .zip(numbered)
        .map(|(m, (seq, created_at))| PublishedEvent {
            app_id: app,
            seq,
            event: m.event,
            payload: m.payload,
            target_crm_user: m.target_crm_user,
            created_at,
        })
        .collect())
}

#[async_trait]
impl InboxStore for PgStore {
    async fn inbox_insert(&self, events: Vec<NewInboxEvent>) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // First occurrence of each (app, dedupe_key) in the batch; later ones are duplicates of it.
        let mut first: HashMap<(AppId, &str), usize> = HashMap::with_capacity(events.len());
        let mut firsts: Vec<usize> = Vec::with_capacity(events.len());
        let mut of: Vec<usize> = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let idx = *first
                .entry((e.app_id, e.dedupe_key.as_str()))
                .or_insert_with(|| {
                    firsts.push(i);
                    i
                });
            of.push(idx);
        }
        let k = firsts.len();
        let (
            mut ids,
            mut apps,
            mut keys,
            mut types,
            mut calls,
            mut states,
            mut stamps,
            mut payloads,
            mut received,
        ) = (
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
        );
        for &i in &firsts {
            let e = &events[i];
            ids.push(e.id);
            apps.push(e.app_id.0);
            keys.push(e.dedupe_key.clone());
            types.push(e.event_type.clone());
            calls.push(e.call_id.map(DialpadId::as_i64));
            states.push(e.state.clone());
            stamps.push(e.event_timestamp);
            payloads.push(e.payload.clone());
            received.push(e.received_at);
        }
        // One statement for the whole batch (one commit). WITH ORDINALITY keeps the batch order
        // for `arrival`.
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO webhook_events (id, app_id, dedupe_key, event_type, call_id, state, \
             event_timestamp, payload, status, attempts, next_attempt_at, received_at) \
             SELECT u.id, u.app_id, u.dedupe_key, u.event_type, u.call_id, u.state, u.event_timestamp, \
             u.payload, 'pending', 0, u.received_at, u.received_at \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[], \
             $7::int8[], $8::jsonb[], $9::timestamptz[]) WITH ORDINALITY \
             AS u(id, app_id, dedupe_key, event_type, call_id, state, event_timestamp, payload, received_at, ord) \
             ORDER BY u.ord \
             ON CONFLICT (app_id, dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(&ids)
        .bind(&apps)
        .bind(&keys)
        .bind(&types)
        .bind(&calls)
        .bind(&states)
        .bind(&stamps)
        .bind(&payloads)
        .bind(&received)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        let inserted: HashSet<Uuid> = inserted.into_iter().collect();

        // Resolve the ids of rows that already existed.
        let mut resolved: HashMap<usize, Uuid> = HashMap::with_capacity(k);
        let (mut dup_apps, mut dup_keys, mut dup_idx) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &firsts {
            let e = &events[i];
            if inserted.contains(&e.id) {
                resolved.insert(i, e.id);
            } else {
                dup_apps.push(e.app_id.0);
                dup_keys.push(e.dedupe_key.clone());
                dup_idx.push(i);
            }
        }
        if !dup_idx.is_empty() {
            let rows = sqlx::query(
                "SELECT w.id, w.app_id, w.dedupe_key FROM webhook_events w \
                 JOIN UNNEST($1::uuid[], $2::text[]) AS u(app_id, dedupe_key) \
                 ON w.app_id = u.app_id AND w.dedupe_key = u.dedupe_key",
            )
            .bind(&dup_apps)
            .bind(&dup_keys)
            .fetch_all(&self.pool)
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
        let c = Completion {
            event_id,
            attempt,
            result,
        };
        if matches!(c.result, EventResult::Ignored(_)) {
            // One statement: the lease check and the status change are atomic.
            let mut conn = self.pool.acquire().await.map_err(pg_err)?;
            return complete_one(&mut conn, &c, now).await;
        }
        let mut out = self.complete_all(std::slice::from_ref(&c), now).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// One transaction for the whole batch: one commit (one WAL flush) instead of one per
    /// event. If any item fails, the transaction is rolled back and the items are completed one
    /// by one, so each gets exactly the result [`InboxStore::inbox_complete`] gives it.
    async fn inbox_complete_batch(
        &self,
        items: Vec<Completion>,
        now: Timestamp,
    ) -> Vec<StoreResult<Vec<PublishedEvent>>> {
        if items.len() > 1 {
            match self.complete_all(&items, now).await {
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
        let rows = sqlx::query("SELECT status, count(*) AS n, min(received_at) AS oldest FROM webhook_events GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        let mut s = InboxStats::default();
        for r in &rows {
            let status: String = col(r, "status")?;
            let n = u64_of(col(r, "n")?)?;
            let oldest: Option<Timestamp> = col(r, "oldest")?;
            let status = common::event_status(&status)?;
            match status {
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
