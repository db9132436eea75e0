//! Batch completion on SQLite, run synchronously inside one direct write transaction
//! (`super::direct`): the lease check and status change of every item, one read per record
//! the batch touches, the in-memory plan of `crate::batch`, then the upserts, sequence heads
//! and outbox rows.
//!
//! Every statement is a cached prepared single-row statement: executed on the writer's own
//! thread, a statement costs a few microseconds, so per-row statements are as cheap as
//! multi-row ones and keep one statement text (and one cached plan) per kind.

use std::collections::HashMap;
use std::sync::LazyLock;

use cti_core::json::JsonText;
use cti_core::model::*;
use cti_core::store::*;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use super::direct::{map_err, prepare};
use super::rows::{self, CALL_COLS, MESSAGE_COLS, VOICEMAIL_COLS, ts};
use crate::batch::{self, Item, Key, Loaded, Plan};
use crate::common;

/// `?1, ?2, … ?n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Number of columns of a column list.
fn width(cols: &str) -> usize {
    cols.split(',').count()
}

static SELECT_CALL: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {CALL_COLS} FROM calls WHERE app_id = ?1 AND dialpad_call_id = ?2")
});
static SELECT_VOICEMAILS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {VOICEMAIL_COLS} FROM voicemails WHERE app_id = ?1 AND dialpad_call_id = ?2")
});
static SELECT_MESSAGE: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {MESSAGE_COLS} FROM messages WHERE app_id = ?1 AND dialpad_message_id = ?2")
});
/// `INSERT INTO table (cols) VALUES (?1, …) ON CONFLICT (conflict) DO UPDATE` of every column
/// except `keep` (the row's identity and creation time) to the new row's value.
fn upsert(table: &str, cols: &str, conflict: &str, keep: &[&str]) -> String {
    let set = cols
        .split(',')
        .map(str::trim)
        .filter(|c| !keep.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({cols}) VALUES ({}) ON CONFLICT ({conflict}) DO UPDATE SET {set}",
        placeholders(width(cols))
    )
}

/// New calls (a stored call is changed by [`update_call`]).
static UPSERT_CALL: LazyLock<String> = LazyLock::new(|| {
    let keep = ["id", "app_id", "dialpad_call_id", "created_at"];
    upsert("calls", CALL_COLS, "app_id, dialpad_call_id", &keep)
});
static UPSERT_VOICEMAIL: LazyLock<String> = LazyLock::new(|| {
    upsert(
        "voicemails",
        VOICEMAIL_COLS,
        "id",
        &["id", "app_id", "created_at"],
    )
});
static UPSERT_MESSAGE: LazyLock<String> = LazyLock::new(|| {
    let keep = ["id", "app_id", "dialpad_message_id", "created_at"];
    upsert(
        "messages",
        MESSAGE_COLS,
        "app_id, dialpad_message_id",
        &keep,
    )
});

/// Finishes `items` inside the caller's transaction. The outer result fails (and the caller
/// must roll back) when a statement fails; otherwise each item's result is `Ok` with what it
/// published, or [`StoreError::LeaseLost`] when this attempt no longer holds its event (such
/// an item changes nothing).
pub(super) fn complete_set(
    tx: &Connection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let held = finish(tx, items, now)?;
    complete_held(tx, items, &held, now)
}

/// [`complete_set`] after the lease check: `held` are the items whose events this transaction
/// holds and already carry their final status (with their apps).
pub(super) fn complete_held(
    tx: &Connection,
    items: &[Completion],
    held: &HashMap<Uuid, AppId>,
    now: Timestamp,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    let (mut out, applying) = batch::split(items, held);
    if applying.is_empty() {
        return Ok(out);
    }
    let mut loaded = load(tx, &applying)?;
    let plan = loop {
        match batch::plan(&applying, &loaded, now)? {
            Ok(plan) => break plan,
            Err(user) => {
                let crm = read_user(tx, user)?;
                loaded.crm_users.insert(user, crm);
            }
        }
    };
    write(tx, &plan, &loaded, now)?;
    for (index, published) in plan.published {
        out[index] = Ok(published);
    }
    Ok(out)
}

/// Step 1: lease check + status change of every item; returns the events still held, with
/// their app. `done` keeps the last error of earlier attempts; `ignored` records its reason.
fn finish(
    tx: &Connection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<HashMap<Uuid, AppId>> {
    let mut held = HashMap::with_capacity(items.len());
    // No `RETURNING`: SQLite buffers its rows in a temporary b-tree per execution. The row
    // was just written, so reading its app back is a lookup in a cached page.
    let mut update = prepare(
        tx,
        "UPDATE webhook_events SET status = ?3, last_error = COALESCE(?4, last_error), \
             processed_at = ?5, locked_until = NULL \
             WHERE id = ?1 AND status = 'processing' AND attempts = ?2",
    )?;
    let mut app_of = prepare(tx, "SELECT app_id FROM webhook_events WHERE id = ?1")?;
    let now_us = ts(&now);
    for c in items {
        let (status, reason) = match &c.result {
            EventResult::Apply(_) => (EventStatus::Done, None),
            EventResult::Ignored(r) => (EventStatus::Ignored, Some(r.as_str())),
        };
        let id = c.event_id.to_string();
        let changed = update
            .execute(params![
                id,
                i64::from(c.attempt),
                status.as_str(),
                reason,
                now_us
            ])
            .map_err(map_err)?;
        if changed == 1 {
            let app: String = app_of
                .query_row(params![id], |r| r.get(0))
                .map_err(map_err)?;
            held.insert(c.event_id, AppId(common::uuid_from_text("app_id", &app)?));
        }
    }
    Ok(held)
}

/// Step 2: reads every record the batch may touch.
fn load(tx: &Connection, items: &[Item<'_>]) -> StoreResult<Loaded> {
    let keys = batch::keys(items);
    let mut loaded = Loaded::default();
    for c in by_key(tx, &SELECT_CALL, &keys.calls, |r| rows::call(r))? {
        loaded.calls.insert((c.app_id, c.dialpad_call_id), c);
    }
    for v in by_key(tx, &SELECT_VOICEMAILS, &keys.voicemails, |r| {
        rows::voicemail(r)
    })? {
        if let Some(k) = v.dialpad_call_id {
            loaded.voicemails.insert((v.app_id, k), v);
        }
    }
    for m in by_key(tx, &SELECT_MESSAGE, &keys.messages, |r| rows::message(r))? {
        loaded.messages.insert((m.app_id, m.dialpad_message_id), m);
    }
    for user in batch::user_keys(items, &loaded) {
        let crm = read_user(tx, user)?;
        loaded.crm_users.insert(user, crm);
    }
    let mut stmt = prepare(tx, "SELECT last_event_seq FROM apps WHERE id = ?1")?;
    for app in &keys.apps {
        let seq: Option<i64> = stmt
            .query_row(params![app.0.to_string()], |r| r.get(0))
            .optional()
            .map_err(map_err)?;
        if let Some(seq) = seq {
            loaded.seqs.insert(*app, seq);
        }
    }
    Ok(loaded)
}

/// The rows `sql` (parameters `?1` app, `?2` Dialpad id) returns for each of `keys`, decoded.
fn by_key<T>(
    tx: &Connection,
    sql: &str,
    keys: &[Key],
    decode: impl Fn(&rusqlite::Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = prepare(tx, sql)?;
    let mut out = Vec::with_capacity(keys.len());
    for (app, id) in keys {
        let mut rows = stmt
            .query(params![app.0.to_string(), id.as_i64()])
            .map_err(map_err)?;
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push(decode(r)?);
        }
    }
    Ok(out)
}

/// The CRM user mapped to a Dialpad user (`None`: no mapping).
fn read_user(tx: &Connection, (app, user): Key) -> StoreResult<Option<String>> {
    prepare(
        tx,
        "SELECT crm_user_id FROM dialpad_user_mappings WHERE app_id = ?1 AND dialpad_user_id = ?2",
    )?
    .query_row(params![app.0.to_string(), user.as_i64()], |r| r.get(0))
    .optional()
    .map_err(map_err)
}

/// Columns of `calls` that the list indexes use besides the status (rarely change).
const CALL_LISTED: &[&str] = &[
    "direction",
    "from_number",
    "to_number",
    "started_at",
    "created_at",
];

/// The three partial updates of a stored call: `(statement, positions in CALL_COLS of its
/// parameters)` — the details (every column but the identity, the status and
/// [`CALL_LISTED`]; always written), the status, the listed columns.
static CALL_UPDATES: LazyLock<[(String, Vec<usize>); 3]> = LazyLock::new(|| {
    let cols: Vec<&str> = CALL_COLS.split(',').map(str::trim).collect();
    let update = |set: Vec<&str>| {
        let assignments: Vec<String> = (2..)
            .zip(&set)
            .map(|(i, c)| format!("{c} = ?{i}"))
            .collect();
        let sql = format!("UPDATE calls SET {} WHERE id = ?1", assignments.join(", "));
        let positions = std::iter::once("id")
            .chain(set.iter().copied())
            .filter_map(|c| cols.iter().position(|x| *x == c))
            .collect();
        (sql, positions)
    };
    let details = cols
        .iter()
        .copied()
        .filter(|c| !["id", "app_id", "dialpad_call_id", "status"].contains(c))
        .filter(|c| !CALL_LISTED.contains(c))
        .collect();
    [
        update(details),
        update(vec!["status"]),
        update(CALL_LISTED.to_vec()),
    ]
});

/// A call's column values in [`CALL_COLS`] order (text borrowed from the call), for the insert
/// and the partial updates alike.
fn call_values(c: &Call) -> StoreResult<Vec<ToSqlOutput<'_>>> {
    fn text(s: Option<&str>) -> ToSqlOutput<'_> {
        s.map_or(ToSqlOutput::Owned(Value::Null), |s| {
            ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
        })
    }
    fn int(v: Option<i64>) -> ToSqlOutput<'static> {
        ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer))
    }
    Ok(vec![
        ToSqlOutput::Owned(Value::Text(c.id.to_string())),
        ToSqlOutput::Owned(Value::Text(c.app_id.0.to_string())),
        int(Some(c.dialpad_call_id.as_i64())),
        text(c.direction.map(Direction::as_str)),
        text(c.from_number.as_deref()),
        text(c.to_number.as_deref()),
        text(Some(c.status.as_str())),
        int(c.dialpad_user_id.map(DialpadId::as_i64)),
        text(c.target_type.as_deref()),
        int(c.target_id.map(DialpadId::as_i64)),
        int(rows::opt_ts(c.started_at.as_ref())),
        int(rows::opt_ts(c.answered_at.as_ref())),
        int(rows::opt_ts(c.ended_at.as_ref())),
        int(c.duration_seconds),
        text(c.recording_url.as_deref()),
        int(Some(i64::from(c.is_voicemail))),
        text(c.voicemail_audio_url.as_deref()),
        text(c.transcript.as_deref()),
        int(Some(i64::from(c.held))),
        ToSqlOutput::Owned(Value::Text(common::merge_log_to_json(&c.merge_log)?)),
        int(Some(c.last_event_ms)),
        text(c.raw_payload.as_ref().map(JsonText::as_str)),
        int(Some(ts(&c.created_at))),
        int(Some(ts(&c.updated_at))),
    ])
}

/// Updates a stored call to `new`, writing the status and the [`CALL_LISTED`] columns only
/// when they changed.
///
/// An `UPDATE` rewrites the entries of every index on a column its `SET` names — whether the
/// value changed or not — and `calls` has eight list indexes, two of them keyed by phone
/// number (a random page each). So the columns the list indexes use go in separate statements
/// that run only when their values changed: on a typical event only the status moves.
fn update_call(tx: &Connection, old: &Call, new: &Call) -> StoreResult<()> {
    let values = call_values(new)?;
    let [details, status, listed] = &*CALL_UPDATES;
    let status_moved = new.status != old.status;
    let listed_moved = new.direction != old.direction
        || new.from_number != old.from_number
        || new.to_number != old.to_number
        || new.started_at != old.started_at
        || new.created_at != old.created_at;
    for ((sql, positions), run) in [
        (details, true),
        (status, status_moved),
        (listed, listed_moved),
    ] {
        if run {
            prepare(tx, sql)?
                .execute(params_from_iter(positions.iter().map(|&i| &values[i])))
                .map_err(map_err)?;
        }
    }
    Ok(())
}

/// Step 4: writes the changed records, the new sequence heads and the outbox.
fn write(tx: &Connection, plan: &Plan, loaded: &Loaded, now: Timestamp) -> StoreResult<()> {
    let mut stmt = prepare(tx, &UPSERT_CALL)?;
    for c in &plan.calls {
        if let Some(old) = loaded.calls.get(&(c.app_id, c.dialpad_call_id)) {
            update_call(tx, old, c)?;
            continue;
        }
        stmt.execute(params_from_iter(call_values(c)?))
            .map_err(map_err)?;
    }
    let mut stmt = prepare(tx, &UPSERT_VOICEMAIL)?;
    for v in &plan.voicemails {
        stmt.execute(params![
            v.id.to_string(),
            v.app_id.0.to_string(),
            v.dialpad_call_id.map(DialpadId::as_i64),
            v.dialpad_user_id.map(DialpadId::as_i64),
            v.from_number,
            v.to_number,
            v.recording_url,
            v.transcript,
            v.duration_seconds,
            ts(&v.created_at),
            ts(&v.updated_at),
        ])
        .map_err(map_err)?;
    }
    let mut stmt = prepare(tx, &UPSERT_MESSAGE)?;
    for m in &plan.messages {
        let to_numbers = common::to_numbers_to_json(&m.to_numbers)?;
        stmt.execute(params![
            m.id.to_string(),
            m.app_id.0.to_string(),
            m.dialpad_message_id.as_i64(),
            m.direction.map(Direction::as_str),
            m.from_number,
            m.to_number,
            to_numbers,
            m.text,
            m.dialpad_user_id.map(DialpadId::as_i64),
            rows::opt_ts(m.sent_at.as_ref()),
            m.message_status,
            ts(&m.created_at),
            ts(&m.updated_at),
        ])
        .map_err(map_err)?;
    }
    // The single writer holds the database lock: nobody else moves the apps' sequences.
    let mut stmt = prepare(tx, "UPDATE apps SET last_event_seq = ?1 WHERE id = ?2")?;
    for (app, seq) in &plan.seqs {
        stmt.execute(params![*seq, app.0.to_string()])
            .map_err(map_err)?;
    }
    let now_us = ts(&now);
    let mut stmt = prepare(
        tx,
        "INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (app, seq, m) in &plan.outbox {
        stmt.execute(params![
            app.0.to_string(),
            *seq,
            m.event,
            common::json_to_text(&m.payload),
            m.target_crm_user,
            now_us,
        ])
        .map_err(map_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_set_every_column_but_the_identity() {
        let sql = upsert(
            "t",
            "id, app_id, a, b, created_at",
            "app_id, a",
            &["id", "app_id", "created_at"],
        );
        assert_eq!(
            sql,
            "INSERT INTO t (id, app_id, a, b, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (app_id, a) DO UPDATE SET a = excluded.a, b = excluded.b"
        );
        assert!(UPSERT_CALL.contains("raw_payload = excluded.raw_payload"));
        assert!(!UPSERT_CALL.contains("created_at = excluded"));
        assert!(UPSERT_MESSAGE.contains("to_numbers = excluded.to_numbers"));
        assert!(UPSERT_VOICEMAIL.contains("dialpad_call_id = excluded.dialpad_call_id"));
    }

    #[test]
    fn call_updates_cover_every_mutable_column_once() {
        let [details, status, listed] = &*CALL_UPDATES;
        assert_eq!(status.0, "UPDATE calls SET status = ?2 WHERE id = ?1");
        assert_eq!(status.1, vec![0, 6], "id and status positions in CALL_COLS");
        let mut set: Vec<usize> = [details, status, listed]
            .iter()
            .flat_map(|(_, p)| p[1..].to_vec())
            .collect();
        set.sort_unstable();
        // Every column but id, app_id and dialpad_call_id, each in exactly one statement.
        assert_eq!(set, (3..width(CALL_COLS)).collect::<Vec<_>>());
        assert!(details.0.contains("raw_payload = ?") && !details.0.contains("from_number"));
        assert_eq!(listed.1.len(), CALL_LISTED.len() + 1);
    }
}
