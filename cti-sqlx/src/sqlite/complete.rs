//! Set-based `inbox_complete` on SQLite: a claimed batch is finished with a constant number of
//! statements, whatever its size.
//!
//! Every statement is a round trip to sqlx's database thread (a channel send and two thread
//! wake-ups), and the single writer connection is held — ingest waits — for the whole
//! transaction. So instead of the ~7 statements per event of the per-event algorithm in
//! `crate::common`, a batch of N events costs:
//!
//! 1. one `UPDATE … FROM (VALUES …) RETURNING` — the lease check and the status change of every
//!    item (an item it does not return lost its lease and is skipped);
//! 2. one read each of the batch's calls, voicemails, messages, user mappings and
//!    `apps.last_event_seq` (a join against a `VALUES` list);
//! 3. [`apply_event`] for every item in input order, in memory — a later item sees the record
//!    an earlier item of the batch produced, exactly as if they had been completed one by one;
//! 4. one multi-row upsert each of the changed calls, voicemails and messages (final state per
//!    record), one `UPDATE apps` per app that published, one multi-row outbox insert.
//!
//! The caller owns the transaction, so records, outbox and inbox statuses commit together.

use std::collections::HashMap;
use std::sync::LazyLock;

use cti_core::model::*;
use cti_core::normalize::apply::call_key;
use cti_core::store::*;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::rows::{self, CALL_COLS, MESSAGE_COLS, VOICEMAIL_COLS, ts};
use crate::common::{self, map_err};

/// Rows per multi-row statement: the widest row (calls) has 24 parameters, and SQLite allows
/// 32,766 per statement.
const ROWS_PER_STATEMENT: usize = 500;

/// `cols` as `alias.col AS col`, so a join returns the columns under their table names.
fn qualified(cols: &str, alias: &str) -> String {
    cols.split(',')
        .map(|c| format!("{alias}.{0} AS {0}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

static CALL_COLS_C: LazyLock<String> = LazyLock::new(|| qualified(CALL_COLS, "c"));
static VOICEMAIL_COLS_V: LazyLock<String> = LazyLock::new(|| qualified(VOICEMAIL_COLS, "v"));
static MESSAGE_COLS_M: LazyLock<String> = LazyLock::new(|| qualified(MESSAGE_COLS, "m"));

/// A record key: `(app, Dialpad id)`.
type Key = (AppId, DialpadId);

/// The rows a batch reads and writes, kept in memory while it is applied.
#[derive(Default)]
struct Working {
    calls: HashMap<Key, Call>,
    voicemails: HashMap<Key, Voicemail>,
    messages: HashMap<Key, Message>,
    /// `(app, Dialpad user)` → CRM user (`None`: no mapping).
    crm_users: HashMap<Key, Option<String>>,
    /// App → last assigned outbox sequence number.
    seqs: HashMap<AppId, i64>,
    /// Voicemails without a call id (written as they are).
    keyless_voicemails: Vec<Voicemail>,
    /// Records to write, in first-change order (each key once).
    dirty_calls: Vec<Key>,
    dirty_voicemails: Vec<Key>,
    dirty_messages: Vec<Key>,
    /// Apps whose sequence moved.
    dirty_seqs: Vec<AppId>,
}

fn mark<K: PartialEq + Copy>(dirty: &mut Vec<K>, k: K) {
    if !dirty.contains(&k) {
        dirty.push(k);
    }
}

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
    // The items to apply, with their app.
    let applying: Vec<(usize, AppId, &cti_core::normalize::Normalized)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match (&c.result, held.get(&c.event_id)) {
            (EventResult::Apply(n), Some(app)) => Some((i, *app, n.as_ref())),
            _ => None,
        })
        .collect();
    let mut out: Vec<StoreResult<Vec<PublishedEvent>>> = items
        .iter()
        .map(|c| {
            if held.contains_key(&c.event_id) {
                Ok(Vec::new())
            } else {
                Err(StoreError::LeaseLost)
            }
        })
        .collect();
    if applying.is_empty() {
        return Ok(out);
    }

    let mut w = load(conn, &applying).await?;
    let mut outbox_rows: Vec<(AppId, i64, OutboxMessage)> = Vec::new();
    for (i, app, n) in applying {
        let key = call_key(n);
        let call = key.and_then(|k| w.calls.get(&(app, k)).cloned());
        let crm_user = match target_user(n, call.as_ref()) {
            Some(user) => crm_user(conn, &mut w, app, user).await?,
            None => None,
        };
        let voicemail = match (&n.voicemail, key) {
            (Some(_), Some(k)) => w.voicemails.get(&(app, k)).cloned(),
            _ => None,
        };
        let message_key = n
            .message
            .as_ref()
            .and_then(|m| m.dialpad_message_id)
            .map(|m| (app, m));
        let message = message_key.and_then(|k| w.messages.get(&k).cloned());
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
        if let Some(c) = applied.call {
            let k = (app, c.dialpad_call_id);
            mark(&mut w.dirty_calls, k);
            w.calls.insert(k, c);
        }
        if let Some(v) = applied.voicemail {
            if let Some(k) = key {
                mark(&mut w.dirty_voicemails, (app, k));
                w.voicemails.insert((app, k), v);
            } else {
                // No call id: nothing else in the batch can refer to it.
                w.keyless_voicemails.push(v);
            }
        }
        if let Some(m) = applied.message {
            let k = (app, m.dialpad_message_id);
            mark(&mut w.dirty_messages, k);
            w.messages.insert(k, m);
        }
        if !applied.outbox.is_empty() {
            let seq = w.seqs.get_mut(&app).ok_or(StoreError::NotFound)?;
            mark(&mut w.dirty_seqs, app);
            let mut published = Vec::with_capacity(applied.outbox.len());
            for m in applied.outbox {
                *seq += 1;
                published.push(PublishedEvent {
                    app_id: app,
                    seq: rows::count(*seq),
                    event: m.event.clone(),
                    payload: m.payload.clone(),
                    target_crm_user: m.target_crm_user.clone(),
                    created_at: now,
                });
                outbox_rows.push((app, *seq, m));
            }
            out[i] = Ok(published);
        }
    }
    write(conn, &w, &outbox_rows, now).await?;
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
async fn load(
    conn: &mut SqliteConnection,
    applying: &[(usize, AppId, &cti_core::normalize::Normalized)],
) -> StoreResult<Working> {
    let mut w = Working::default();
    let mut call_keys: Vec<Key> = Vec::new();
    let mut voicemail_keys: Vec<Key> = Vec::new();
    let mut message_keys: Vec<Key> = Vec::new();
    let mut apps: Vec<AppId> = Vec::new();
    for (_, app, n) in applying {
        if let Some(k) = call_key(n) {
            mark(&mut call_keys, (*app, k));
            if n.voicemail.is_some() {
                mark(&mut voicemail_keys, (*app, k));
            }
        }
        if let Some(m) = n.message.as_ref().and_then(|m| m.dialpad_message_id) {
            mark(&mut message_keys, (*app, m));
        }
        mark(&mut apps, *app);
    }
    for r in by_keys(
        conn,
        "calls",
        "c",
        &CALL_COLS_C,
        "dialpad_call_id",
        &call_keys,
    )
    .await?
    {
        let c = rows::call(&r)?;
        w.calls.insert((c.app_id, c.dialpad_call_id), c);
    }
    for r in by_keys(
        conn,
        "voicemails",
        "v",
        &VOICEMAIL_COLS_V,
        "dialpad_call_id",
        &voicemail_keys,
    )
    .await?
    {
        let v = rows::voicemail(&r)?;
        if let Some(k) = v.dialpad_call_id {
            w.voicemails.insert((v.app_id, k), v);
        }
    }
    for r in by_keys(
        conn,
        "messages",
        "m",
        &MESSAGE_COLS_M,
        "dialpad_message_id",
        &message_keys,
    )
    .await?
    {
        let m = rows::message(&r)?;
        w.messages.insert((m.app_id, m.dialpad_message_id), m);
    }
    // The CRM users of every Dialpad user the events or their stored calls name; a user that
    // only appears once the batch changed a call is looked up on demand (`crm_user`).
    let mut users: Vec<Key> = Vec::new();
    for (_, app, n) in applying {
        let call = call_key(n).and_then(|k| w.calls.get(&(*app, k)));
        if let Some(u) = target_user(n, call) {
            mark(&mut users, (*app, u));
        }
    }
    for r in by_keys(
        conn,
        "dialpad_user_mappings",
        "m",
        "m.app_id AS app_id, m.dialpad_user_id AS dialpad_user_id, m.crm_user_id AS crm_user_id",
        "dialpad_user_id",
        &users,
    )
    .await?
    {
        let app: String = r.try_get("app_id").map_err(map_err)?;
        let user = common::dialpad_id(
            "dialpad_user_id",
            r.try_get("dialpad_user_id").map_err(map_err)?,
        )?;
        let crm: String = r.try_get("crm_user_id").map_err(map_err)?;
        w.crm_users.insert(
            (AppId(common::uuid_from_text("app_id", &app)?), user),
            Some(crm),
        );
    }
    for k in users {
        w.crm_users.entry(k).or_insert(None);
    }
    let mut q = QueryBuilder::<Sqlite>::new("SELECT id, last_event_seq FROM apps WHERE id IN (");
    let mut ids = q.separated(", ");
    for a in &apps {
        ids.push_bind(a.0.to_string());
    }
    q.push(")");
    for r in q.build().fetch_all(&mut *conn).await.map_err(map_err)? {
        let id: String = r.try_get("id").map_err(map_err)?;
        let seq: i64 = r.try_get("last_event_seq").map_err(map_err)?;
        w.seqs
            .insert(AppId(common::uuid_from_text("id", &id)?), seq);
    }
    Ok(w)
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

/// The CRM user mapped to `(app, user)`, from the batch's reads or, if the batch did not read
/// it, from the database.
async fn crm_user(
    conn: &mut SqliteConnection,
    w: &mut Working,
    app: AppId,
    user: DialpadId,
) -> StoreResult<Option<String>> {
    if let Some(c) = w.crm_users.get(&(app, user)) {
        return Ok(c.clone());
    }
    let crm: Option<String> = sqlx::query_scalar(
        "SELECT crm_user_id FROM dialpad_user_mappings WHERE app_id = ?1 AND dialpad_user_id = ?2",
    )
    .bind(app.0.to_string())
    .bind(user.as_i64())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    w.crm_users.insert((app, user), crm.clone());
    Ok(crm)
}

/// Step 4: writes the changed records, the new sequence heads and the outbox.
async fn write(
    conn: &mut SqliteConnection,
    w: &Working,
    outbox: &[(AppId, i64, OutboxMessage)],
    now: Timestamp,
) -> StoreResult<()> {
    let calls: Vec<&Call> = w
        .dirty_calls
        .iter()
        .filter_map(|k| w.calls.get(k))
        .collect();
    upsert_calls(conn, &calls).await?;
    let voicemails: Vec<&Voicemail> = w
        .dirty_voicemails
        .iter()
        .filter_map(|k| w.voicemails.get(k))
        .chain(&w.keyless_voicemails)
        .collect();
    upsert_voicemails(conn, &voicemails).await?;
    let messages: Vec<&Message> = w
        .dirty_messages
        .iter()
        .filter_map(|k| w.messages.get(k))
        .collect();
    upsert_messages(conn, &messages).await?;
    // The single writer holds the database lock: nobody else moves the apps' sequences.
    for app in &w.dirty_seqs {
        let seq = w.seqs.get(app).copied().ok_or(StoreError::NotFound)?;
        sqlx::query("UPDATE apps SET last_event_seq = ?1 WHERE id = ?2")
            .bind(seq)
            .bind(app.0.to_string())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    let now_us = ts(&now);
    for chunk in outbox.chunks(ROWS_PER_STATEMENT) {
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

async fn upsert_calls(conn: &mut SqliteConnection, calls: &[&Call]) -> StoreResult<()> {
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
                .push_bind(c.raw_payload.as_ref().map(common::json_to_text))
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

async fn upsert_voicemails(conn: &mut SqliteConnection, vms: &[&Voicemail]) -> StoreResult<()> {
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

async fn upsert_messages(conn: &mut SqliteConnection, msgs: &[&Message]) -> StoreResult<()> {
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
