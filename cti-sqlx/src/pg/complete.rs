//! Set-based `inbox_complete` on PostgreSQL: a claimed batch is finished in one transaction with
//! a constant number of statements, whatever its size (the algorithm is in `crate::batch`).
//!
//! The transaction first takes an advisory lock per app of the batch, in key order
//! ([`APP_LOCKS_SQL`]). Every transaction that applies events does so, which
//!
//! * serialises the appliers of one app, so the rows this transaction reads (calls, voicemails,
//!   messages, mappings, `apps.last_event_seq`) cannot change before it commits — later
//!   statements of a READ COMMITTED transaction see everything committed before the lock was
//!   granted — and the app's outbox sequence numbers are gap-free and commit in order;
//! * rules out deadlocks between batches (locks are taken in one global order, and nothing
//!   else locks these rows in another order).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::SubsecRound;
use cti_core::json::JsonText;
use cti_core::model::*;
use cti_core::normalize::apply::{call_key, target_user};
use cti_core::store::*;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::PgStore;
use super::rows::*;
use crate::batch::{self, Item, Key, Loaded, Plan, qualified};
use crate::common;

/// Transaction-scoped advisory locks on the apps of the given events, in key order.
const APP_LOCKS_SQL: &str = "SELECT count(pg_advisory_xact_lock(l.k)) FROM (
        SELECT DISTINCT hashtextextended('cti-app:' || app_id::text, 0) AS k
        FROM webhook_events WHERE id = ANY($1) ORDER BY 1
    ) l";

/// Lease check and status change of every item (`done` keeps the last error of earlier
/// attempts, `ignored` records its reason); returns the events this attempt still held.
const FINISH_SQL: &str = "UPDATE webhook_events w
    SET status = v.status, last_error = COALESCE(v.reason, w.last_error), processed_at = $5,
        locked_until = NULL
    FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[]) AS v(id, attempts, status, reason)
    WHERE w.id = v.id AND w.status = 'processing' AND w.attempts = v.attempts
    RETURNING w.id, w.app_id";

/// Rows per multi-row statement (the widest row, calls, has 24 parameters; PostgreSQL allows
/// 65,535 per statement).
const ROWS_PER_STATEMENT: usize = 1000;

static CALL_COLS_C: LazyLock<String> = LazyLock::new(|| qualified(CALL_COLS, "c"));
static VOICEMAIL_COLS_V: LazyLock<String> = LazyLock::new(|| qualified(VOICEMAIL_COLS, "v"));
static MESSAGE_COLS_M: LazyLock<String> = LazyLock::new(|| qualified(MESSAGE_COLS, "m"));

impl PgStore {
    /// Completes `items` in one transaction. The outer result fails (nothing was written) when
    /// a statement fails; otherwise each item's result is `Ok` with what it published, or
    /// [`StoreError::LeaseLost`] when this attempt no longer holds its event (such an item
    /// changes nothing).
    pub(super) async fn complete_set(
        &self,
        items: &[Completion],
        now: Timestamp,
    ) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(pg_err)?;
        let out = complete_in(&mut tx, items, now).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(out)
    }
}

/// [`PgStore::complete_set`] inside the caller's transaction (which commits it).
pub(super) async fn complete_in(
    tx: &mut PgConnection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // PostgreSQL keeps microseconds: publish exactly the times it stores.
    let now = now.round_subsecs(6);
    let applying_ids: Vec<Uuid> = items
        .iter()
        .filter(|c| matches!(c.result, EventResult::Apply(_)))
        .map(|c| c.event_id)
        .collect();
    if !applying_ids.is_empty() {
        sqlx::query(APP_LOCKS_SQL)
            .bind(&applying_ids)
            .execute(&mut *tx)
            .await
            .map_err(pg_err)?;
    }
    let held = finish(&mut *tx, items, now).await?;
    apply_held(tx, items, &held, now, None).await
}

/// [`complete_in`] after the app locks and the lease check: `held` are the items whose events
/// this transaction holds and already carry their final status (with their apps). `state`:
/// the calls, user mappings and sequence numbers already read under the app locks for (at
/// least) these items ([`read_state`]); `None` reads them here.
pub(super) async fn apply_held(
    tx: &mut PgConnection,
    items: &[Completion],
    held: &HashMap<Uuid, AppId>,
    now: Timestamp,
    state: Option<Loaded>,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    // PostgreSQL keeps microseconds: publish exactly the times it stores.
    let now = now.round_subsecs(6);
    let (mut out, applying) = batch::split(items, held);
    if !applying.is_empty() {
        let mut loaded = match state {
            Some(state) => state,
            None => {
                let keys = StateKeys::of_items(&applying);
                read_state(&mut *tx, &keys, false).await?.0
            }
        };
        load_records(&mut *tx, &applying, &mut loaded).await?;
        let plan = loop {
            match batch::plan(&applying, &loaded, now)? {
                Ok(plan) => break plan,
                Err(user) => {
                    let crm = read_users(&mut *tx, &[user]).await?.remove(&user);
                    loaded.crm_users.insert(user, crm);
                }
            }
        };
        write(&mut *tx, &plan, now).await?;
        for (index, published) in plan.published {
            out[index] = Ok(published);
        }
    }
    Ok(out)
}

async fn finish(
    conn: &mut PgConnection,
    items: &[Completion],
    now: Timestamp,
) -> StoreResult<HashMap<Uuid, AppId>> {
    let mut ids = Vec::with_capacity(items.len());
    let mut attempts = Vec::with_capacity(items.len());
    let mut statuses = Vec::with_capacity(items.len());
    let mut reasons: Vec<Option<String>> = Vec::with_capacity(items.len());
    for c in items {
        ids.push(c.event_id);
        // An attempt beyond i32 cannot match a stored row: the item reports LeaseLost.
        attempts.push(i32::try_from(c.attempt).unwrap_or(-1));
        match &c.result {
            EventResult::Apply(_) => {
                statuses.push(EventStatus::Done.as_str());
                reasons.push(None);
            }
            EventResult::Ignored(r) => {
                statuses.push(EventStatus::Ignored.as_str());
                reasons.push(Some(r.clone()));
            }
        }
    }
    let rows = sqlx::query(FINISH_SQL)
        .bind(ids)
        .bind(attempts)
        .bind(statuses)
        .bind(reasons)
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| Ok((col::<Uuid>(r, "id")?, AppId(col(r, "app_id")?))))
        .collect()
}

/// Rows of `table` (alias `t`) whose `(app_id, key_col)` is one of `keys`.
async fn by_keys(
    conn: &mut PgConnection,
    table_alias: &str,
    cols: &str,
    key_col: &str,
    keys: &[Key],
) -> StoreResult<Vec<PgRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let alias = table_alias.rsplit(' ').next().unwrap_or(table_alias);
    let apps: Vec<Uuid> = keys.iter().map(|(a, _)| a.0).collect();
    let ids: Vec<i64> = keys.iter().map(|(_, id)| id.as_i64()).collect();
    let sql = format!(
        "SELECT {cols} FROM {table_alias}
         JOIN UNNEST($1::uuid[], $2::int8[]) AS k(app_id, id)
           ON {alias}.app_id = k.app_id AND {alias}.{key_col} = k.id"
    );
    sqlx::query(&sql)
        .bind(apps)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err)
}

/// The keys of [`read_state`]: calls (with the mapping of their stored user and, on request,
/// whether they have unfinished inbox events), users named by events, and apps.
#[derive(Default)]
pub(super) struct StateKeys {
    pub calls: Vec<Key>,
    pub users: Vec<Key>,
    pub apps: Vec<AppId>,
}

impl StateKeys {
    /// What applying `items` reads.
    fn of_items(items: &[Item<'_>]) -> Self {
        let keys = batch::keys(items);
        let mut users: Vec<Key> = items
            .iter()
            .filter_map(|it| target_user(it.n, None).map(|u| (it.app, u)))
            .collect();
        users.sort_unstable_by_key(|(a, u)| (a.0, u.as_i64()));
        users.dedup();
        StateKeys {
            calls: keys.calls,
            users,
            apps: keys.apps,
        }
    }

    /// What an inline batch reads before its insert: every call its events name (for the
    /// per-call order check) or change, the users they name, their apps. A superset of what
    /// the events that end up applied need (duplicates and held-back events drop out later).
    pub(super) fn of_batch(events: &[NewInboxEvent], results: &[Option<EventResult>]) -> Self {
        let mut k = StateKeys::default();
        for (e, r) in events.iter().zip(results) {
            k.apps.push(e.app_id);
            if let Some(c) = e.call_id {
                k.calls.push((e.app_id, c));
            }
            if let Some(EventResult::Apply(n)) = r {
                if let Some(c) = call_key(n) {
                    k.calls.push((e.app_id, c));
                }
                if let Some(u) = target_user(n, None) {
                    k.users.push((e.app_id, u));
                }
            }
        }
        for v in [&mut k.calls, &mut k.users] {
            v.sort_unstable_by_key(|(a, id)| (a.0, id.as_i64()));
            v.dedup();
        }
        k.apps.sort_unstable_by_key(|a| a.0);
        k.apps.dedup();
        k
    }
}

/// One statement for everything a batch reads under its app locks, a row per key:
/// `c` rows (a call: its stored row if any, the CRM user of its stored Dialpad user, and with
/// `$5` whether it has unfinished inbox events), `u` rows (the CRM user of a Dialpad user) and
/// `a` rows (an app's last outbox sequence number). Several small statements cost a round trip
/// each, inside the locks.
static STATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT k.kind, k.app_id AS key_app, k.call_id AS key_call, k.user_id AS key_user,
            CASE WHEN $5 AND k.kind = 'c' THEN EXISTS (
                SELECT 1 FROM webhook_events w
                WHERE w.app_id = k.app_id AND w.call_id = k.call_id
                  AND w.status IN ('pending', 'failed', 'processing')) END AS blocked,
            CASE WHEN k.kind = 'a' THEN (
                SELECT a.last_event_seq FROM apps a WHERE a.id = k.app_id) END AS app_seq,
            (SELECT m.crm_user_id FROM dialpad_user_mappings m
              WHERE m.app_id = k.app_id AND m.dialpad_user_id =
                    CASE WHEN k.kind = 'u' THEN k.user_id ELSE c.dialpad_user_id END) AS crm_user,
            {}
         FROM UNNEST($1::text[], $2::uuid[], $3::int8[], $4::int8[])
              AS k(kind, app_id, call_id, user_id)
         LEFT JOIN calls c
           ON k.kind = 'c' AND c.app_id = k.app_id AND c.dialpad_call_id = k.call_id",
        *CALL_COLS_C
    )
});

/// Reads the calls, user mappings and sequence numbers of `keys` in one statement
/// ([`STATE_SQL`]); with `blocking`, also the keyed calls that have unfinished inbox events.
pub(super) async fn read_state(
    conn: &mut PgConnection,
    keys: &StateKeys,
    blocking: bool,
) -> StoreResult<(Loaded, HashSet<Key>)> {
    let n = keys.calls.len() + keys.users.len() + keys.apps.len();
    let (mut kinds, mut apps, mut calls, mut users) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let rows = keys
        .calls
        .iter()
        .map(|&(a, c)| ("c", a, Some(c), None))
        .chain(keys.users.iter().map(|&(a, u)| ("u", a, None, Some(u))))
        .chain(keys.apps.iter().map(|&a| ("a", a, None, None)));
    for (kind, app, call, user) in rows {
        kinds.push(kind);
        apps.push(app.0);
        calls.push(call.map(DialpadId::as_i64));
        users.push(user.map(DialpadId::as_i64));
    }
    let rows = sqlx::query(&STATE_SQL)
        .bind(kinds)
        .bind(apps)
        .bind(calls)
        .bind(users)
        .bind(blocking)
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err)?;
    let mut loaded = Loaded::default();
    let mut blocked = HashSet::new();
    for r in &rows {
        let kind: &str = col(r, "kind")?;
        let app = AppId(col(r, "key_app")?);
        match kind {
            "c" => {
                let call = did(col(r, "key_call")?)?;
                if col::<Option<bool>>(r, "blocked")? == Some(true) {
                    blocked.insert((app, call));
                }
                if col::<Option<Uuid>>(r, "id")?.is_some() {
                    let c = call_from_row(r)?;
                    if let Some(u) = c.dialpad_user_id {
                        loaded.crm_users.insert((app, u), col(r, "crm_user")?);
                    }
                    loaded.calls.insert((app, call), c);
                }
            }
            "u" => {
                let user = did(col(r, "key_user")?)?;
                loaded.crm_users.insert((app, user), col(r, "crm_user")?);
            }
            _ => {
                if let Some(seq) = col::<Option<i64>>(r, "app_seq")? {
                    loaded.seqs.insert(app, seq);
                }
            }
        }
    }
    Ok((loaded, blocked))
}

/// Adds the voicemails and messages `items` touch to `loaded` (one statement per kind, only
/// when some item has one).
async fn load_records(
    conn: &mut PgConnection,
    items: &[Item<'_>],
    loaded: &mut Loaded,
) -> StoreResult<()> {
    let keys = batch::keys(items);
    let vms = by_keys(
        conn,
        "voicemails v",
        &VOICEMAIL_COLS_V,
        "dialpad_call_id",
        &keys.voicemails,
    )
    .await?;
    for r in vms {
        let v = voicemail_from_row(&r)?;
        if let Some(k) = v.dialpad_call_id {
            loaded.voicemails.insert((v.app_id, k), v);
        }
    }
    let msgs = by_keys(
        conn,
        "messages m",
        &MESSAGE_COLS_M,
        "dialpad_message_id",
        &keys.messages,
    )
    .await?;
    for r in msgs {
        let m = message_from_row(&r)?;
        loaded.messages.insert((m.app_id, m.dialpad_message_id), m);
    }
    Ok(())
}

/// The CRM users mapped to `users` (keys without a mapping are absent).
async fn read_users(conn: &mut PgConnection, users: &[Key]) -> StoreResult<HashMap<Key, String>> {
    let rows = by_keys(
        conn,
        "dialpad_user_mappings m",
        "m.app_id, m.dialpad_user_id, m.crm_user_id",
        "dialpad_user_id",
        users,
    )
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let user = common::dialpad_id("dialpad_user_id", col(r, "dialpad_user_id")?)?;
        out.insert((AppId(col(r, "app_id")?), user), col(r, "crm_user_id")?);
    }
    Ok(out)
}

async fn write(conn: &mut PgConnection, plan: &Plan, now: Timestamp) -> StoreResult<()> {
    if !(plan.calls.is_empty() && plan.seqs.is_empty() && plan.outbox.is_empty()) {
        write_calls_and_outbox(conn, plan, now).await?;
    }
    upsert_voicemails(conn, &plan.voicemails).await?;
    upsert_messages(conn, &plan.messages).await?;
    Ok(())
}

/// Upserts calls with column arrays: the same SQL text (one prepared statement) whatever the
/// number of rows — a `VALUES` list would be a new statement to parse and plan for every batch
/// size. Part of [`WRITE_SQL`].
const UPSERT_CALLS_SQL: &str = "INSERT INTO calls (id, app_id, dialpad_call_id, direction, \
    from_number, to_number, status, dialpad_user_id, target_type, target_id, started_at, \
    answered_at, ended_at, duration_seconds, recording_url, is_voicemail, voicemail_audio_url, \
    transcript, held, merge_log, last_event_ms, raw_payload, created_at, updated_at)
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::int8[], $9::text[], $10::int8[], $11::timestamptz[], $12::timestamptz[],
        $13::timestamptz[], $14::int8[], $15::text[], $16::bool[], $17::text[], $18::text[],
        $19::bool[], $20::jsonb[], $21::int8[], $22::text[]::json[], $23::timestamptz[],
        $24::timestamptz[])
    ON CONFLICT (app_id, dialpad_call_id) DO UPDATE SET direction = EXCLUDED.direction, \
    from_number = EXCLUDED.from_number, to_number = EXCLUDED.to_number, \
    status = EXCLUDED.status, dialpad_user_id = EXCLUDED.dialpad_user_id, \
    target_type = EXCLUDED.target_type, target_id = EXCLUDED.target_id, \
    started_at = EXCLUDED.started_at, answered_at = EXCLUDED.answered_at, \
    ended_at = EXCLUDED.ended_at, duration_seconds = EXCLUDED.duration_seconds, \
    recording_url = EXCLUDED.recording_url, is_voicemail = EXCLUDED.is_voicemail, \
    voicemail_audio_url = EXCLUDED.voicemail_audio_url, transcript = EXCLUDED.transcript, \
    held = EXCLUDED.held, merge_log = EXCLUDED.merge_log, \
    last_event_ms = EXCLUDED.last_event_ms, raw_payload = EXCLUDED.raw_payload, \
    updated_at = EXCLUDED.updated_at";

/// A batch's calls, its apps' new sequence numbers and its outbox rows in one statement (one
/// round trip inside the app locks): `$1`–`$24` the calls ([`UPSERT_CALLS_SQL`]), `$25`–`$26`
/// the sequence numbers, `$27`–`$32` the outbox.
static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH upserted AS ({UPSERT_CALLS_SQL} RETURNING 1),
         seqs AS (
            UPDATE apps a SET last_event_seq = v.seq
            FROM UNNEST($25::uuid[], $26::int8[]) AS v(id, seq) WHERE a.id = v.id
            RETURNING 1),
         outbox AS (
            INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, created_at)
            SELECT o.app_id, o.seq, o.event, o.payload, o.target, $32
            FROM UNNEST($27::uuid[], $28::int8[], $29::text[], $30::text[]::json[], $31::text[])
                 AS o(app_id, seq, event, payload, target)
            RETURNING 1)
         SELECT (SELECT count(*) FROM upserted) AS calls, (SELECT count(*) FROM seqs) AS seqs,
                (SELECT count(*) FROM outbox) AS outbox"
    )
});

async fn write_calls_and_outbox(
    conn: &mut PgConnection,
    plan: &Plan,
    now: Timestamp,
) -> StoreResult<()> {
    let calls = &plan.calls;
    let logs = calls
        .iter()
        .map(|c| common::merge_log_to_value(&c.merge_log))
        .collect::<StoreResult<Vec<_>>>()?;
    let col = |f: fn(&Call) -> Option<&str>| calls.iter().map(f).collect::<Vec<_>>();
    let ids = |f: fn(&Call) -> Option<DialpadId>| {
        calls
            .iter()
            .map(|c| f(c).map(DialpadId::as_i64))
            .collect::<Vec<_>>()
    };
    let times = |f: fn(&Call) -> Option<Timestamp>| calls.iter().map(f).collect::<Vec<_>>();
    let n = plan.outbox.len();
    let mut outbox_apps = Vec::with_capacity(n);
    let mut outbox_seqs = Vec::with_capacity(n);
    let mut outbox_events = Vec::with_capacity(n);
    let mut outbox_payloads = Vec::with_capacity(n);
    let mut outbox_targets = Vec::with_capacity(n);
    for (app, seq, m) in &plan.outbox {
        outbox_apps.push(app.0);
        outbox_seqs.push(*seq);
        outbox_events.push(m.event.as_str());
        outbox_payloads.push(m.payload.to_string());
        outbox_targets.push(m.target_crm_user.as_deref());
    }
    sqlx::query(&WRITE_SQL)
        .bind(calls.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(calls.iter().map(|c| c.app_id.0).collect::<Vec<_>>())
        .bind(ids(|c| Some(c.dialpad_call_id)))
        .bind(col(|c| c.direction.map(Direction::as_str)))
        .bind(col(|c| c.from_number.as_deref()))
        .bind(col(|c| c.to_number.as_deref()))
        .bind(col(|c| Some(c.status.as_str())))
        .bind(ids(|c| c.dialpad_user_id))
        .bind(col(|c| c.target_type.as_deref()))
        .bind(ids(|c| c.target_id))
        .bind(times(|c| c.started_at))
        .bind(times(|c| c.answered_at))
        .bind(times(|c| c.ended_at))
        .bind(calls.iter().map(|c| c.duration_seconds).collect::<Vec<_>>())
        .bind(col(|c| c.recording_url.as_deref()))
        .bind(calls.iter().map(|c| c.is_voicemail).collect::<Vec<_>>())
        .bind(col(|c| c.voicemail_audio_url.as_deref()))
        .bind(col(|c| c.transcript.as_deref()))
        .bind(calls.iter().map(|c| c.held).collect::<Vec<_>>())
        .bind(logs)
        .bind(calls.iter().map(|c| c.last_event_ms).collect::<Vec<_>>())
        .bind(
            calls
                .iter()
                .map(|c| c.raw_payload.as_ref().map(JsonText::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(times(|c| Some(c.created_at)))
        .bind(times(|c| Some(c.updated_at)))
        .bind(plan.seqs.iter().map(|(a, _)| a.0).collect::<Vec<_>>())
        .bind(plan.seqs.iter().map(|(_, s)| *s).collect::<Vec<_>>())
        .bind(outbox_apps)
        .bind(outbox_seqs)
        .bind(outbox_events)
        .bind(outbox_payloads)
        .bind(outbox_targets)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(pg_err)?;
    Ok(())
}

async fn upsert_voicemails(conn: &mut PgConnection, vms: &[Voicemail]) -> StoreResult<()> {
    for chunk in vms.chunks(ROWS_PER_STATEMENT / 11) {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("INSERT INTO voicemails ({VOICEMAIL_COLS}) "));
        q.push_values(chunk, |mut row, v| {
            row.push_bind(v.id)
                .push_bind(v.app_id.0)
                .push_bind(v.dialpad_call_id.map(DialpadId::as_i64))
                .push_bind(v.dialpad_user_id.map(DialpadId::as_i64))
                .push_bind(v.from_number.as_deref())
                .push_bind(v.to_number.as_deref())
                .push_bind(v.recording_url.as_deref())
                .push_bind(v.transcript.as_deref())
                .push_bind(v.duration_seconds)
                .push_bind(v.created_at)
                .push_bind(v.updated_at);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET dialpad_call_id = EXCLUDED.dialpad_call_id, \
             dialpad_user_id = EXCLUDED.dialpad_user_id, from_number = EXCLUDED.from_number, \
             to_number = EXCLUDED.to_number, recording_url = EXCLUDED.recording_url, \
             transcript = EXCLUDED.transcript, duration_seconds = EXCLUDED.duration_seconds, \
             updated_at = EXCLUDED.updated_at",
        );
        q.build().execute(&mut *conn).await.map_err(pg_err)?;
    }
    Ok(())
}

async fn upsert_messages(conn: &mut PgConnection, msgs: &[Message]) -> StoreResult<()> {
    for chunk in msgs.chunks(ROWS_PER_STATEMENT / 13) {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("INSERT INTO messages ({MESSAGE_COLS}) "));
        q.push_values(chunk, |mut row, m| {
            row.push_bind(m.id)
                .push_bind(m.app_id.0)
                .push_bind(m.dialpad_message_id.as_i64())
                .push_bind(m.direction.map(Direction::as_str))
                .push_bind(m.from_number.as_deref())
                .push_bind(m.to_number.as_deref())
                .push_bind(serde_json::Value::from(m.to_numbers.clone()))
                .push_bind(m.text.as_deref())
                .push_bind(m.dialpad_user_id.map(DialpadId::as_i64))
                .push_bind(m.sent_at)
                .push_bind(m.message_status.as_deref())
                .push_bind(m.created_at)
                .push_bind(m.updated_at);
        });
        q.push(
            " ON CONFLICT (app_id, dialpad_message_id) DO UPDATE SET \
             direction = EXCLUDED.direction, from_number = EXCLUDED.from_number, \
             to_number = EXCLUDED.to_number, to_numbers = EXCLUDED.to_numbers, \
             text = EXCLUDED.text, dialpad_user_id = EXCLUDED.dialpad_user_id, \
             sent_at = EXCLUDED.sent_at, message_status = EXCLUDED.message_status, \
             updated_at = EXCLUDED.updated_at",
        );
        q.build().execute(&mut *conn).await.map_err(pg_err)?;
    }
    Ok(())
}
