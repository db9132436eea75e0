//! Set-based `inbox_complete` on PostgreSQL: a claimed batch is finished in one transaction with
//! a constant number of statements, whatever its size (the algorithm is in `crate::batch`).
//!
//! The transaction first locks the rows of the batch's apps in id order and moves their apply
//! generations ([`APP_LOCKS_SQL`], see `super::write`). Every applier does so, which
//!
//! * serialises the appliers of one app, so the rows this transaction reads (calls, voicemails,
//!   messages, mappings, `apps.last_event_seq`) cannot change before it commits — later
//!   statements of a READ COMMITTED transaction see everything committed before the locks were
//!   granted — and the app's outbox sequence numbers are gap-free and commit in order;
//! * rules out deadlocks between batches (locks are taken in one global order before anything
//!   else is touched);
//! * makes an inline batch that read these apps before this transaction committed find a moved
//!   generation and run again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use chrono::SubsecRound;
use cti_core::model::*;
use cti_core::normalize::apply::{call_key, target_user};
use cti_core::store::*;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::pipeline::{self, Overlay};
use super::rows::*;
use super::write::{self, InboxRows, Written};
use crate::batch::{self, Item, Key, Loaded, Plan, qualified};
use crate::common;

/// Row locks (in id order) and new generations of the apps of the given events.
static APP_LOCKS_SQL: LazyLock<String> = LazyLock::new(|| {
    write::lock_apps_sql("a.id IN (SELECT w.app_id FROM webhook_events w WHERE w.id = ANY($1))")
});

/// Lease check and status change of every item (`done` keeps the last error of earlier
/// attempts, `ignored` records its reason); returns the events this attempt still held.
const FINISH_SQL: &str = "UPDATE webhook_events w
    SET status = v.status, last_error = COALESCE(v.reason, w.last_error), processed_at = $5,
        locked_until = NULL
    FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[]) AS v(id, attempts, status, reason)
    WHERE w.id = v.id AND w.status = 'processing' AND w.attempts = v.attempts
    RETURNING w.id, w.app_id";

static CALL_COLS_C: LazyLock<String> = LazyLock::new(|| qualified(CALL_COLS, "c"));
/// The voicemail and message columns of [`STATE_SQL`], named `v_…` and `ms_…`.
static RECORD_COLS_STATE: LazyLock<String> = LazyLock::new(|| {
    let prefixed = |cols: &str, alias: &str| {
        cols.split(',')
            .map(|c| format!("{alias}.{0} AS {alias}_{0}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{}, {}",
        prefixed(VOICEMAIL_COLS, "v"),
        prefixed(MESSAGE_COLS, "ms")
    )
});

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
        sqlx::query(&APP_LOCKS_SQL)
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
/// what was already read under the app locks for (at least) these items ([`read_state`]:
/// their calls, records, users and apps); `None` reads it here.
pub(super) async fn apply_held(
    tx: &mut PgConnection,
    items: &[Completion],
    held: &HashMap<Uuid, AppId>,
    now: Timestamp,
    state: Option<State>,
) -> StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>> {
    let (out, plan, gens) = plan_held(&mut *tx, items, held, now, state, &[]).await?;
    if !plan.writes_nothing() {
        // Under the row locks the generations cannot have moved.
        let gens = pipeline::next_gens(&gens);
        if write::write(&mut *tx, &gens, InboxRows::default(), &plan, now).await? == Written::Stale
        {
            return Err(StoreError::Backend(
                "apply: an app's generation moved under its row lock".into(),
            ));
        }
    }
    Ok(published(out, plan.published))
}

/// Applies the `held` items in memory: their initial results (see [`batch::split`]), the plan
/// to write, and the generations of the apps it was planned from (to pass to [`write::write`]).
/// Reads the records the items touch beyond `state`, with `overlays` (the in-flight batches of
/// [`pipeline`], oldest first) laid over the voicemails and messages read.
pub(super) async fn plan_held(
    conn: &mut PgConnection,
    items: &[Completion],
    held: &HashMap<Uuid, AppId>,
    now: Timestamp,
    state: Option<State>,
    overlays: &[Arc<Overlay>],
) -> StoreResult<(
    Vec<StoreResult<Vec<PublishedEvent>>>,
    Plan,
    Vec<(AppId, i64)>,
)> {
    // PostgreSQL keeps microseconds: publish exactly the times it stores.
    let now = now.round_subsecs(6);
    let (out, applying) = batch::split(items, held);
    if applying.is_empty() {
        let gens = state.map(|s| s.gens).unwrap_or_default();
        return Ok((out, Plan::default(), gens));
    }
    let State {
        mut loaded, gens, ..
    } = match state {
        Some(state) => state,
        None => read_state(&mut *conn, &StateKeys::of_items(&applying), false).await?,
    };
    // The state read covered the voicemails and messages of (at least) these items.
    let keys = batch::keys(&applying);
    for o in overlays {
        o.apply_records(&mut loaded, &keys);
    }
    let plan = loop {
        match batch::plan(&applying, &loaded, now)? {
            Ok(plan) => break plan,
            Err(user) => {
                let crm = read_users(&mut *conn, &[user]).await?.remove(&user);
                loaded.crm_users.insert(user, crm);
            }
        }
    };
    Ok((out, plan, gens))
}

/// `out` with the messages a plan published (`Plan::published`: per item index) filled in.
pub(super) fn published(
    mut out: Vec<StoreResult<Vec<PublishedEvent>>>,
    by_item: Vec<(usize, Vec<PublishedEvent>)>,
) -> Vec<StoreResult<Vec<PublishedEvent>>> {
    for (index, published) in by_item {
        out[index] = Ok(published);
    }
    out
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

/// The keys of [`read_state`]: calls (with the mapping of their stored user and, on request,
/// whether they have unfinished inbox events), voicemails (by call) and messages, users named
/// by events, and apps.
#[derive(Default)]
pub(super) struct StateKeys {
    pub calls: Vec<Key>,
    pub voicemails: Vec<Key>,
    pub messages: Vec<Key>,
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
            voicemails: keys.voicemails,
            messages: keys.messages,
            users,
            apps: keys.apps,
        }
    }

    /// What an inline batch reads before its insert: every call its events name (for the
    /// per-call order check) or change, the voicemails and messages they change, the users
    /// they name, their apps. A superset of what the events that end up applied need
    /// (duplicates and held-back events drop out later).
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
                    if n.voicemail.is_some() {
                        k.voicemails.push((e.app_id, c));
                    }
                }
                if let Some(m) = n.message.as_ref().and_then(|m| m.dialpad_message_id) {
                    k.messages.push((e.app_id, m));
                }
                if let Some(u) = target_user(n, None) {
                    k.users.push((e.app_id, u));
                }
            }
        }
        for v in [
            &mut k.calls,
            &mut k.voicemails,
            &mut k.messages,
            &mut k.users,
        ] {
            v.sort_unstable_by_key(|(a, id)| (a.0, id.as_i64()));
            v.dedup();
        }
        k.apps.sort_unstable_by_key(|a| a.0);
        k.apps.dedup();
        k
    }
}

/// One statement for everything a batch reads (under its apps' row locks, or — an inline
/// batch — before taking them), a row per key: `c` rows (a call: its stored row if any, the CRM
/// user of its stored Dialpad user, and with `$5` whether it has unfinished inbox events), `v`
/// and `m` rows (a call's voicemail, a message: the stored row if any; the key's id in
/// `call_id`), `u` rows (the CRM user of a Dialpad user) and `a` rows (an app's last outbox
/// sequence number and apply generation). Several small statements would cost a round trip
/// each. Rows are looked up through `LATERAL` subqueries by their unique keys, which any plan —
/// the generic plan of a prepared statement among them — serves with index lookups.
static STATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT k.kind, k.app_id AS key_app, k.call_id AS key_call, k.user_id AS key_user,
            CASE WHEN $5 AND k.kind = 'c' THEN EXISTS (
                SELECT 1 FROM webhook_events w
                WHERE w.app_id = k.app_id AND w.call_id = k.call_id
                  AND w.status IN ('pending', 'failed', 'processing')) END AS blocked,
            ap.last_event_seq AS app_seq, ap.apply_gen AS app_gen,
            (SELECT m.crm_user_id FROM dialpad_user_mappings m
              WHERE m.app_id = k.app_id AND m.dialpad_user_id =
                    CASE WHEN k.kind = 'u' THEN k.user_id ELSE c.dialpad_user_id END) AS crm_user,
            {}, {}
         FROM UNNEST($1::text[], $2::uuid[], $3::int8[], $4::int8[])
              AS k(kind, app_id, call_id, user_id)
         LEFT JOIN LATERAL (SELECT * FROM calls c WHERE k.kind = 'c'
              AND c.app_id = k.app_id AND c.dialpad_call_id = k.call_id LIMIT 1) c ON true
         LEFT JOIN LATERAL (SELECT * FROM voicemails v WHERE k.kind = 'v'
              AND v.app_id = k.app_id AND v.dialpad_call_id = k.call_id LIMIT 1) v ON true
         LEFT JOIN LATERAL (SELECT * FROM messages ms WHERE k.kind = 'm'
              AND ms.app_id = k.app_id AND ms.dialpad_message_id = k.call_id LIMIT 1) ms ON true
         LEFT JOIN LATERAL (SELECT * FROM apps ap WHERE k.kind = 'a' AND ap.id = k.app_id
              LIMIT 1) ap ON true",
        *CALL_COLS_C, *RECORD_COLS_STATE
    )
});

/// What [`read_state`] read.
pub(super) struct State {
    /// The calls, user mappings and sequence numbers a plan starts from.
    pub loaded: Loaded,
    /// The keyed calls with unfinished inbox events (when asked for).
    pub blocked: HashSet<Key>,
    /// Each keyed app's apply generation.
    pub gens: Vec<(AppId, i64)>,
}

/// Reads the calls, voicemails, messages, user mappings, sequence numbers and generations of
/// `keys` in one statement ([`STATE_SQL`]); with `blocking`, also the keyed calls that have
/// unfinished inbox events.
pub(super) async fn read_state(
    conn: &mut PgConnection,
    keys: &StateKeys,
    blocking: bool,
) -> StoreResult<State> {
    let n = keys.calls.len()
        + keys.voicemails.len()
        + keys.messages.len()
        + keys.users.len()
        + keys.apps.len();
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
        .chain(
            keys.voicemails
                .iter()
                .map(|&(a, c)| ("v", a, Some(c), None)),
        )
        .chain(keys.messages.iter().map(|&(a, m)| ("m", a, Some(m), None)))
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
    let mut gens = Vec::with_capacity(keys.apps.len());
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
            "v" => {
                if col::<Option<Uuid>>(r, "v_id")?.is_some() {
                    let call = did(col(r, "key_call")?)?;
                    loaded
                        .voicemails
                        .insert((app, call), voicemail_from_row_as(r, "v_")?);
                }
            }
            "m" => {
                if col::<Option<Uuid>>(r, "ms_id")?.is_some() {
                    let message = did(col(r, "key_call")?)?;
                    loaded
                        .messages
                        .insert((app, message), message_from_row_as(r, "ms_")?);
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
                if let Some(generation) = col::<Option<i64>>(r, "app_gen")? {
                    gens.push((app, generation));
                }
            }
        }
    }
    Ok(State {
        loaded,
        blocked,
        gens,
    })
}

/// The CRM users mapped to `users` (keys without a mapping are absent).
async fn read_users(conn: &mut PgConnection, users: &[Key]) -> StoreResult<HashMap<Key, String>> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT m.app_id, m.dialpad_user_id, m.crm_user_id
         FROM UNNEST($1::uuid[], $2::int8[]) AS k(app_id, id)
         CROSS JOIN LATERAL (SELECT * FROM dialpad_user_mappings m
           WHERE m.app_id = k.app_id AND m.dialpad_user_id = k.id LIMIT 1) m",
    )
    .bind(users.iter().map(|(a, _)| a.0).collect::<Vec<Uuid>>())
    .bind(users.iter().map(|(_, u)| u.as_i64()).collect::<Vec<i64>>())
    .fetch_all(&mut *conn)
    .await
    .map_err(pg_err)?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let user = common::dialpad_id("dialpad_user_id", col(r, "dialpad_user_id")?)?;
        out.insert((AppId(col(r, "app_id")?), user), col(r, "crm_user_id")?);
    }
    Ok(out)
}
