//! Set-based `inbox_complete` on SQLite: a claimed batch is finished with a constant number of
//! statements, whatever its size (the algorithm is in `crate::batch`).
//!
//! Every statement is a round trip to sqlx's database thread (a channel send and two thread
//! wake-ups), and the single writer connection is held — ingest waits — for the whole
//! transaction, so statements per batch, not per event, is what keeps the writer free.

use std::collections::HashMap;
use std::sync::LazyLock;

use cti_core::json::JsonText;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::rows::{self, CALL_COLS, MESSAGE_COLS, VOICEMAIL_COLS, ts};
use crate::batch::{self, Item, Key, Loaded, Plan, qualified};
use crate::common::{self, map_err};

/// Rows per multi-row statement: the widest row (calls) has 24 parameters, and SQLite allows
/// 32,766 per statement.
const ROWS_PER_STATEMENT: usize = 500;

static CALL_COLS_C: LazyLock<String> = LazyLock::new(|| qualified(CALL_COLS, "c"));
static VOICEMAIL_COLS_V: LazyLock<String> = LazyLock::new(|| qualified(VOICEMAIL_COLS, "v"));
static MESSAGE_COLS_M: LazyLock<String> = LazyLock::new(|| qualified(MESSAGE_COLS, "m"));

/// Finishes `items` inside the caller's transaction. The outer result fails (and the caller
/// must roll back) when a statement fails; otherwise each item's result is `Ok` with what it
/// published, or [`StoreError::LeaseLost`] when this attempt no longer holds its event (such
/// an item changes nothing).
pub(super) async fn complete_set(
    conn: &mut SqliteConnection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let held = finish(conn, items, now).await?;
    complete_held(conn, items, &held, now).await
}

/// [`complete_set`] after the lease check: `held` are the items whose events this transaction
/// holds and already carry their final status (with their apps).
pub(super) async fn complete_held(
    conn: &mut SqliteConnection,
    items: &[Completion],
    held: &HashMap<Uuid, AppId>,
    now: Timestamp,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    let (mut out, applying) = batch::split(items, held);
    if applying.is_empty() {
        return Ok(out);
    }
    let mut loaded = load(conn, &applying).await?;
    let plan = loop {
        match batch::plan(&applying, &loaded, now)? {
            Ok(plan) => break plan,
            Err(user) => {
                let crm = read_users(conn, &[user]).await?.remove(&user);
                loaded.crm_users.insert(user, crm.flatten());
            }
        }
    };
    write(conn, &plan, now).await?;
    for (index, published) in plan.published {
        out[index] = Ok(published);
    }
    Ok(out)
}

/// Step 1: lease check + status change of every item; returns the events still held, with
/// their app. `done` keeps the last error of earlier attempts; `ignored` records its reason.
async fn finish(
    conn: &mut SqliteConnection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<HashMap<Uuid, AppId>> {
    let mut held = HashMap::with_capacity(items.len());
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new("WITH v (id, attempts, status, reason) AS (");
        q.push_values(chunk, |mut row, c| {
            let (status, reason) = match &c.result {
                EventResult::Apply(_) => (EventStatus::Done, None),
                EventResult::Ignored(r) => (EventStatus::Ignored, Some(r.clone())),
            };
            row.push_bind(c.event_id.to_string())
                .push_bind(i64::from(c.attempt))
                .push_bind(status.as_str())
                .push_bind(reason);
        });
        q.push(
            ") UPDATE webhook_events SET status = v.status, \
             last_error = COALESCE(v.reason, webhook_events.last_error), processed_at = ",
        );
        q.push_bind(ts(&now));
        q.push(
            ", locked_until = NULL FROM v \
             WHERE webhook_events.id = v.id AND webhook_events.status = 'processing' \
               AND webhook_events.attempts = v.attempts \
             RETURNING webhook_events.id AS id, webhook_events.app_id AS app_id",
        );
        for r in q.build().fetch_all(&mut *conn).await.map_err(map_err)? {
            let id: String = r.try_get("id").map_err(map_err)?;
            let app: String = r.try_get("app_id").map_err(map_err)?;
            held.insert(
                common::uuid_from_text("id", &id)?,
                AppId(common::uuid_from_text("app_id", &app)?),
            );
        }
    }
    Ok(held)
}

/// Step 2: reads every record the batch may touch.
async fn load(conn: &mut SqliteConnection, items: &[Item<'_>]) -> StoreResult<Loaded> {
    let keys = batch::keys(items);
    let mut loaded = Loaded::default();
    for r in by_keys(
        conn,
        "calls",
        "c",
        &CALL_COLS_C,
        "dialpad_call_id",
        &keys.calls,
    )
    .await?
    {
        let c = rows::call(&r)?;
        loaded.calls.insert((c.app_id, c.dialpad_call_id), c);
    }
    let vms = by_keys(
        conn,
        "voicemails",
        "v",
        &VOICEMAIL_COLS_V,
        "dialpad_call_id",
        &keys.voicemails,
    )
    .await?;
    for r in vms {
        let v = rows::voicemail(&r)?;
        if let Some(k) = v.dialpad_call_id {
            loaded.voicemails.insert((v.app_id, k), v);
        }
    }
    let msgs = by_keys(
        conn,
        "messages",
        "m",
        &MESSAGE_COLS_M,
        "dialpad_message_id",
        &keys.messages,
    )
    .await?;
    for r in msgs {
        let m = rows::message(&r)?;
        loaded.messages.insert((m.app_id, m.dialpad_message_id), m);
    }
    let users = batch::user_keys(items, &loaded);
    let mut found = read_users(conn, &users).await?;
    for k in users {
        loaded.crm_users.insert(k, found.remove(&k).flatten());
    }
    let mut q = QueryBuilder::<Sqlite>::new("SELECT id, last_event_seq FROM apps WHERE id IN (");
    let mut ids = q.separated(", ");
    for a in &keys.apps {
        ids.push_bind(a.0.to_string());
    }
    q.push(")");
    for r in q.build().fetch_all(&mut *conn).await.map_err(map_err)? {
        let id: String = r.try_get("id").map_err(map_err)?;
        let seq: i64 = r.try_get("last_event_seq").map_err(map_err)?;
        loaded
            .seqs
            .insert(AppId(common::uuid_from_text("id", &id)?), seq);
    }
    Ok(loaded)
}

/// The CRM users mapped to `users` (keys without a mapping are absent).
async fn read_users(
    conn: &mut SqliteConnection,
    users: &[Key],
) -> StoreResult<HashMap<Key, Option<String>>> {
    let mut out = HashMap::new();
    let rows = by_keys(
        conn,
        "dialpad_user_mappings",
        "m",
        "m.app_id AS app_id, m.dialpad_user_id AS dialpad_user_id, m.crm_user_id AS crm_user_id",
        "dialpad_user_id",
        users,
    )
    .await?;
    for r in rows {
        let app: String = r.try_get("app_id").map_err(map_err)?;
        let user = common::dialpad_id(
            "dialpad_user_id",
            r.try_get("dialpad_user_id").map_err(map_err)?,
        )?;
        let crm: String = r.try_get("crm_user_id").map_err(map_err)?;
        out.insert(
            (AppId(common::uuid_from_text("app_id", &app)?), user),
            Some(crm),
        );
    }
    Ok(out)
}

/// Rows of `table` whose `(app_id, key_col)` is one of `keys`.
async fn by_keys(
    conn: &mut SqliteConnection,
    table: &str,
    alias: &str,
    cols: &str,
    key_col: &str,
    keys: &[Key],
) -> StoreResult<Vec<sqlx::sqlite::SqliteRow>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {cols} FROM ("));
        q.push_values(chunk, |mut row, (app, id)| {
            row.push_bind(app.0.to_string()).push_bind(id.as_i64());
        });
        q.push(format!(
            ") k JOIN {table} {alias} ON {alias}.app_id = k.column1 AND {alias}.{key_col} = k.column2"
        ));
        out.extend(q.build().fetch_all(&mut *conn).await.map_err(map_err)?);
    }
    Ok(out)
}

/// Step 4: writes the changed records, the new sequence heads and the outbox.
async fn write(conn: &mut SqliteConnection, plan: &Plan, now: Timestamp) -> StoreResult<()> {
    upsert_calls(conn, &plan.calls).await?;
    upsert_voicemails(conn, &plan.voicemails).await?;
    upsert_messages(conn, &plan.messages).await?;
    // The single writer holds the database lock: nobody else moves the apps' sequences.
    for (app, seq) in &plan.seqs {
        sqlx::query("UPDATE apps SET last_event_seq = ?1 WHERE id = ?2")
            .bind(*seq)
            .bind(app.0.to_string())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    let now_us = ts(&now);
    for chunk in plan.outbox.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, created_at) ",
        );
        q.push_values(chunk, |mut row, (app, seq, m)| {
            row.push_bind(app.0.to_string())
                .push_bind(*seq)
                .push_bind(m.event.clone())
                .push_bind(common::json_to_text(&m.payload))
                .push_bind(m.target_crm_user.clone())
                .push_bind(now_us);
        });
        q.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn upsert_calls(conn: &mut SqliteConnection, calls: &[Call]) -> StoreResult<()> {
    for chunk in calls.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO calls ({CALL_COLS}) "));
        let mut failed = None;
        q.push_values(chunk, |mut row, c| {
            let merge_log = match common::merge_log_to_json(&c.merge_log) {
                Ok(m) => m,
                Err(e) => {
                    failed = Some(e);
                    String::new()
                }
            };
            row.push_bind(c.id.to_string())
                .push_bind(c.app_id.0.to_string())
                .push_bind(c.dialpad_call_id.as_i64())
                .push_bind(c.direction.map(Direction::as_str))
                .push_bind(c.from_number.clone())
                .push_bind(c.to_number.clone())
                .push_bind(c.status.as_str())
                .push_bind(c.dialpad_user_id.map(DialpadId::as_i64))
                .push_bind(c.target_type.clone())
                .push_bind(c.target_id.map(DialpadId::as_i64))
                .push_bind(rows::opt_ts(c.started_at.as_ref()))
                .push_bind(rows::opt_ts(c.answered_at.as_ref()))
                .push_bind(rows::opt_ts(c.ended_at.as_ref()))
                .push_bind(c.duration_seconds)
                .push_bind(c.recording_url.clone())
                .push_bind(i64::from(c.is_voicemail))
                .push_bind(c.voicemail_audio_url.clone())
                .push_bind(c.transcript.clone())
                .push_bind(i64::from(c.held))
                .push_bind(merge_log)
                .push_bind(c.last_event_ms)
                .push_bind(c.raw_payload.as_ref().map(JsonText::as_str))
                .push_bind(ts(&c.created_at))
                .push_bind(ts(&c.updated_at));
        });
        if let Some(e) = failed {
            return Err(e);
        }
        q.push(
            " ON CONFLICT (app_id, dialpad_call_id) DO UPDATE SET
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
        );
        q.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn upsert_voicemails(conn: &mut SqliteConnection, vms: &[Voicemail]) -> StoreResult<()> {
    for chunk in vms.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO voicemails ({VOICEMAIL_COLS}) "));
        q.push_values(chunk, |mut row, v| {
            row.push_bind(v.id.to_string())
                .push_bind(v.app_id.0.to_string())
                .push_bind(v.dialpad_call_id.map(DialpadId::as_i64))
                .push_bind(v.dialpad_user_id.map(DialpadId::as_i64))
                .push_bind(v.from_number.clone())
                .push_bind(v.to_number.clone())
                .push_bind(v.recording_url.clone())
                .push_bind(v.transcript.clone())
                .push_bind(v.duration_seconds)
                .push_bind(ts(&v.created_at))
                .push_bind(ts(&v.updated_at));
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET
            dialpad_call_id = excluded.dialpad_call_id, dialpad_user_id = excluded.dialpad_user_id,
            from_number = excluded.from_number, to_number = excluded.to_number,
            recording_url = excluded.recording_url, transcript = excluded.transcript,
            duration_seconds = excluded.duration_seconds, updated_at = excluded.updated_at",
        );
        q.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn upsert_messages(conn: &mut SqliteConnection, msgs: &[Message]) -> StoreResult<()> {
    for chunk in msgs.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO messages ({MESSAGE_COLS}) "));
        let mut failed = None;
        q.push_values(chunk, |mut row, m| {
            let to_numbers = match common::to_numbers_to_json(&m.to_numbers) {
                Ok(t) => t,
                Err(e) => {
                    failed = Some(e);
                    String::new()
                }
            };
            row.push_bind(m.id.to_string())
                .push_bind(m.app_id.0.to_string())
                .push_bind(m.dialpad_message_id.as_i64())
                .push_bind(m.direction.map(Direction::as_str))
                .push_bind(m.from_number.clone())
                .push_bind(m.to_number.clone())
                .push_bind(to_numbers)
                .push_bind(m.text.clone())
                .push_bind(m.dialpad_user_id.map(DialpadId::as_i64))
                .push_bind(rows::opt_ts(m.sent_at.as_ref()))
                .push_bind(m.message_status.clone())
                .push_bind(ts(&m.created_at))
                .push_bind(ts(&m.updated_at));
        });
        if let Some(e) = failed {
            return Err(e);
        }
        q.push(
            " ON CONFLICT (app_id, dialpad_message_id) DO UPDATE SET
            direction = excluded.direction, from_number = excluded.from_number,
            to_number = excluded.to_number, to_numbers = excluded.to_numbers,
            text = excluded.text, dialpad_user_id = excluded.dialpad_user_id,
            sent_at = excluded.sent_at, message_status = excluded.message_status,
            updated_at = excluded.updated_at",
        );
        q.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}
