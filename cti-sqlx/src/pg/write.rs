//! What an applying transaction writes on PostgreSQL, in one statement ([`write_sql`]), and the
//! apps' row locks every applier takes ([`lock_apps_sql`]).
//!
//! # Apply generations
//!
//! Every transaction that applies events of an app holds the app's row lock (`FOR NO KEY
//! UPDATE`, taken in app id order) until it commits, and adds one to `apps.apply_gen`. So:
//!
//! * appliers of one app run one at a time, and the app's outbox sequence numbers are gap-free
//!   and commit in order;
//! * a reader that saw generation `g` of every app it depends on, and later finds the same
//!   generations under the apps' row locks, knows that no applier committed in between: what
//!   it read is still current (optimistic writes set a random 64-bit generation, locked
//!   transactions add one: short of a 64-bit coincidence, a generation a reader saw does not
//!   come back);
//! * no two appliers deadlock: each takes its apps' row locks first, in one global order, and
//!   only then touches the apps' events, calls and records.
//!
//! A locked transaction (a processor's completion, or an inline batch after a conflict) takes
//! the locks first ([`lock_apps_sql`]) and reads under them. An inline batch reads first,
//! without a transaction, and sends [`write_sql`] with the generations it read: the statement
//! takes the locks, checks the generations, and writes only if they still match. The statement
//! runs on its own (autocommit), so a batch costs two round trips: its read and its write.

use std::sync::OnceLock;

use cti_core::json::JsonText;
use cti_core::model::*;
use cti_core::store::{InsertOutcome, NewInboxEvent, StoreResult};
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::query::Query;
use uuid::Uuid;

use super::rows::*;
use crate::batch::{Plan, inline::Born};
use crate::common;

/// SQLSTATE raised by `cti_stale_batch()` (migration 0007) when [`write_sql`] finds an app's
/// generation moved or an event already stored.
const STALE_BATCH: &str = "CT001";

/// Locks the rows of the apps matching `predicate` (over `apps a`) in id order and moves their
/// generations: the first statement of every locked applying transaction.
pub(super) fn lock_apps_sql(predicate: &str) -> String {
    format!(
        "WITH l AS MATERIALIZED (SELECT a.id FROM apps a WHERE {predicate} ORDER BY a.id \
         FOR NO KEY UPDATE OF a) \
         UPDATE apps a SET apply_gen = a.apply_gen + 1 FROM l WHERE a.id = l.id"
    )
}

/// `UNNEST($first::t0, $first+1::t1, …)` for the comma-separated types `types`.
fn unnest(first: usize, types: &str) -> String {
    let args: Vec<String> = types
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", first + i))
        .collect();
    format!("UNNEST({})", args.join(", "))
}

/// The number of comma-separated items of `list`.
const fn count(list: &str) -> usize {
    let bytes = list.as_bytes();
    let mut n = 1;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Column types of [`InboxRows`], in bind order.
const INBOX_TYPES: &str = "uuid[], uuid[], text[], text[], int8[], text[], int8[], \
    text[], timestamptz[], text[], int4[], timestamptz[], text[]";

/// Inserts the inbox rows bound at `$first…` (see [`InboxRows`]) if absent on
/// `(app_id, dedupe_at, dedupe_key)`, in batch order (`arrival`), only when `guard` holds;
/// returns the inserted ids.
pub(super) fn inbox_insert_sql(first: usize, guard: &str) -> String {
    format!(
        "INSERT INTO webhook_events (id, app_id, dedupe_key, event_type, call_id, state, \
         event_timestamp, payload, status, attempts, next_attempt_at, received_at, \
         processed_at, last_error) \
         SELECT u.id, u.app_id, u.dedupe_key, u.event_type, u.call_id, u.state, u.event_timestamp, \
         u.payload, u.status, u.attempts, u.received_at, u.received_at, u.processed_at, \
         u.last_error \
         FROM {} WITH ORDINALITY \
         AS u(id, app_id, dedupe_key, event_type, call_id, state, event_timestamp, payload, \
         received_at, status, attempts, processed_at, last_error, ord) \
         WHERE {guard} \
         ORDER BY u.ord \
         ON CONFLICT (app_id, dedupe_at, dedupe_key) DO NOTHING RETURNING id",
        unnest(first, INBOX_TYPES)
    )
}

/// The first occurrence of each `(app, dedupe_key)` of a batch: later ones are duplicates of
/// it.
pub(super) struct Firsts {
    /// Positions of the first occurrences, in batch order.
    pub firsts: Vec<usize>,
    /// For every event, the position of its key's first occurrence.
    pub of: Vec<usize>,
}

impl Firsts {
    pub(super) fn of(events: &[NewInboxEvent]) -> Self {
        let mut first: std::collections::HashMap<(AppId, &str), usize> =
            std::collections::HashMap::with_capacity(events.len());
        let mut firsts = Vec::with_capacity(events.len());
        let mut of = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let idx = *first
                .entry((e.app_id, e.dedupe_key.as_str()))
                .or_insert_with(|| {
                    firsts.push(i);
                    i
                });
            of.push(idx);
        }
        Firsts { firsts, of }
    }

    /// The outcomes if every first occurrence is new (what an inline batch assumes and
    /// [`write_sql`] verifies).
    pub(super) fn all_new(&self, events: &[NewInboxEvent]) -> Vec<InsertOutcome> {
        self.of
            .iter()
            .enumerate()
            .map(|(i, &src)| {
                if src == i {
                    InsertOutcome::Inserted(events[i].id)
                } else {
                    InsertOutcome::Duplicate(events[src].id)
                }
            })
            .collect()
    }
}

/// The column arrays of the inbox rows of a batch: its first occurrences, `pending` or — with
/// a [`Born`] status — finished at attempt 1 at the given time.
#[derive(Default)]
pub(super) struct InboxRows<'a> {
    ids: Vec<Uuid>,
    apps: Vec<Uuid>,
    keys: Vec<&'a str>,
    types: Vec<Option<&'a str>>,
    calls: Vec<Option<i64>>,
    states: Vec<Option<&'a str>>,
    stamps: Vec<Option<i64>>,
    payloads: Vec<&'a str>,
    received: Vec<Timestamp>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    processed: Vec<Option<Timestamp>>,
    /// Owned: the reasons live in the batch's results, which the batch's completions take.
    reasons: Vec<Option<String>>,
}

impl<'a> InboxRows<'a> {
    pub(super) fn new(
        events: &'a [NewInboxEvent],
        firsts: &[usize],
        born: Option<(&[Option<Born<'_>>], Timestamp)>,
    ) -> Self {
        let k = firsts.len();
        let mut r = InboxRows {
            ids: Vec::with_capacity(k),
            apps: Vec::with_capacity(k),
            keys: Vec::with_capacity(k),
            types: Vec::with_capacity(k),
            calls: Vec::with_capacity(k),
            states: Vec::with_capacity(k),
            stamps: Vec::with_capacity(k),
            payloads: Vec::with_capacity(k),
            received: Vec::with_capacity(k),
            statuses: Vec::with_capacity(k),
            attempts: Vec::with_capacity(k),
            processed: Vec::with_capacity(k),
            reasons: Vec::with_capacity(k),
        };
        for &i in firsts {
            let e = &events[i];
            r.ids.push(e.id);
            r.apps.push(e.app_id.0);
            r.keys.push(e.dedupe_key.as_str());
            r.types.push(e.event_type.as_deref());
            r.calls.push(e.call_id.map(DialpadId::as_i64));
            r.states.push(e.state.as_deref());
            r.stamps.push(e.event_timestamp);
            r.payloads.push(e.payload.as_str());
            r.received.push(e.received_at);
            let finished = born.and_then(|(b, at)| b.get(i).copied().flatten().map(|b| (b, at)));
            r.statuses
                .push(finished.map_or("pending", |((status, _), _)| status.as_str()));
            r.attempts.push(i32::from(finished.is_some()));
            r.processed.push(finished.map(|(_, at)| at));
            r.reasons
                .push(finished.and_then(|((_, reason), _)| reason.map(str::to_owned)));
        }
        r
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Binds the arrays in [`INBOX_TYPES`] order.
    pub(super) fn bind(
        self,
        q: Query<'a, Postgres, PgArguments>,
    ) -> Query<'a, Postgres, PgArguments> {
        q.bind(self.ids)
            .bind(self.apps)
            .bind(self.keys)
            .bind(self.types)
            .bind(self.calls)
            .bind(self.states)
            .bind(self.stamps)
            .bind(self.payloads)
            .bind(self.received)
            .bind(self.statuses)
            .bind(self.attempts)
            .bind(self.processed)
            .bind(self.reasons)
    }
}

/// Column types of the calls upsert, in bind order.
const CALL_TYPES: &str = "uuid[], uuid[], int8[], text[], text[], text[], text[], int8[], \
    text[], int8[], timestamptz[], timestamptz[], timestamptz[], int8[], text[], bool[], \
    text[], text[], bool[], text[], int8[], text[], timestamptz[], timestamptz[]";

/// Column types of the outbox insert, voicemails and messages, in bind order.
const OUTBOX_TYPES: &str = "uuid[], int8[], text[], text[], text[]";
const VOICEMAIL_TYPES: &str = "uuid[], uuid[], int8[], int8[], text[], text[], text[], text[], \
    int8[], timestamptz[], timestamptz[]";
const MESSAGE_TYPES: &str = "uuid[], uuid[], int8[], text[], text[], text[], text[]::jsonb[], \
    text[], int8[], timestamptz[], text[], timestamptz[], timestamptz[]";

/// An optional part of a write statement: the rows of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Calls,
    Voicemails,
    Messages,
    Outbox,
}

/// The optional parts, in the order both the statement ([`write_sql`]) and the binding
/// ([`write`]) follow.
const PARTS: [Part; 4] = [Part::Calls, Part::Voicemails, Part::Messages, Part::Outbox];

impl Part {
    /// Whether `plan` has rows for this part.
    fn in_plan(self, plan: &Plan) -> bool {
        match self {
            Part::Calls => !plan.calls.is_empty(),
            Part::Voicemails => !plan.voicemails.is_empty(),
            Part::Messages => !plan.messages.is_empty(),
            Part::Outbox => !plan.outbox.is_empty(),
        }
    }

    /// Its bit in a [`Shape`].
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Which optional parts a write statement holds: a batch without calls, voicemails, messages
/// or outbox rows sends a statement without them. An absent part costs PostgreSQL nothing,
/// where an empty one still costs its table's executor set-up and its statement-level count
/// trigger (migration 0002) on every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape(u8);

/// The number of shapes: every subset of [`PARTS`].
const SHAPES: usize = 1 << PARTS.len();

impl Shape {
    fn of(plan: &Plan) -> Self {
        Shape(
            PARTS
                .iter()
                .filter(|p| p.in_plan(plan))
                .map(|p| p.bit())
                .sum(),
        )
    }

    fn has(self, part: Part) -> bool {
        self.0 & part.bit() != 0
    }

    /// The statement of this shape, built once per process.
    fn sql(self) -> &'static str {
        static SQL: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
        SQL[usize::from(self.0)].get_or_init(|| write_sql(self))
    }
}

/// Whether every app's generation is still the one read (the `fresh` part of [`write_sql`]):
/// every write of the statement is gated on it.
const FRESH: &str = "(SELECT ok FROM fresh)";

/// `INSERT INTO table (cols) SELECT * FROM rows`, gated on the batch being fresh, that on a
/// conflict over `key` sets every column but the row's identity (`id`, `app_id`, `key`) and
/// `created_at` to the new row's value.
fn upsert(table: &str, cols: &str, rows: &str, key: &str) -> String {
    let keep = |c: &&str| {
        !["id", "app_id", "created_at"].contains(c) && !key.split(',').any(|k| k.trim() == *c)
    };
    let set: Vec<String> = cols
        .split(',')
        .map(str::trim)
        .filter(keep)
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({cols}) SELECT * FROM {rows} WHERE {FRESH} \
         ON CONFLICT ({key}) DO UPDATE SET {}",
        set.join(", ")
    )
}

/// Everything an applying transaction writes, in one statement of the parts `shape` holds.
///
/// Parameters: `$1`–`$3` the apps (ids, generations read, new sequence heads), `$4` the apps'
/// new generations, `$5` the number of inbox rows that must be new, then the column arrays of
/// the inbox rows ([`INBOX_TYPES`]) and of the parts present, in the order calls
/// ([`CALL_TYPES`]), voicemails ([`VOICEMAIL_TYPES`]), messages ([`MESSAGE_TYPES`]), outbox
/// ([`OUTBOX_TYPES`], then the outbox rows' time).
///
/// 1. `lk`, `fresh`: the apps' row locks in id order, and whether every app's generation is
///    still the one read (`$2`);
/// 2. only if so (every write below is gated on `fresh`, which also makes the locks come
///    first): the apps' new generations and sequence heads, the inbox rows, the calls, the
///    voicemails, the messages and the outbox rows;
/// 3. the check: a moved generation, or fewer new inbox rows than `$5` (an event was already
///    stored), raises `CT001` — the statement leaves nothing behind.
///
/// Column arrays keep the text (one prepared statement per shape) whatever the batch size.
fn write_sql(shape: Shape) -> String {
    // The first parameter of the next column arrays of `types`, and the one after them.
    let mut next = 6;
    let mut take = |types: &str| {
        let first = next;
        next += count(types);
        first
    };
    let inbox = inbox_insert_sql(take(INBOX_TYPES), FRESH);
    let mut parts = vec![format!("inserted AS ({inbox})")];
    let mut counted = vec!["(SELECT count(*) FROM bumped)".to_owned()];
    let mut part_sql = |name: &str, body: String| {
        parts.push(format!("{name} AS ({body} RETURNING 1)"));
        counted.push(format!("(SELECT count(*) FROM {name})"));
    };
    for part in PARTS.into_iter().filter(|&p| shape.has(p)) {
        let mut record = |table: &str, cols: &str, types: &str, key: &str| {
            upsert(table, cols, &unnest(take(types), types), key)
        };
        let (name, body) = match part {
            Part::Calls => (
                "calls",
                record("calls", CALL_COLS, CALL_TYPES, "app_id, dialpad_call_id"),
            ),
            Part::Voicemails => (
                "voicemails",
                record("voicemails", VOICEMAIL_COLS, VOICEMAIL_TYPES, "id"),
            ),
            Part::Messages => (
                "messages",
                record(
                    "messages",
                    MESSAGE_COLS,
                    MESSAGE_TYPES,
                    "app_id, dialpad_message_id",
                ),
            ),
            Part::Outbox => (
                "outbox",
                format!(
                    "INSERT INTO cti_events (app_id, seq, event, payload, target_crm_user, \
                     created_at) SELECT o.app_id, o.seq, o.event, o.payload, o.target, \
                     ${now}::timestamptz FROM {rows} AS o(app_id, seq, event, payload, target) \
                     WHERE {FRESH}",
                    rows = unnest(take(OUTBOX_TYPES), OUTBOX_TYPES),
                    now = take("timestamptz"),
                ),
            ),
        };
        part_sql(name, body);
    }
    format!(
        "WITH lk AS MATERIALIZED (
            SELECT a.id, a.apply_gen FROM apps a WHERE a.id = ANY($1::uuid[])
            ORDER BY a.id FOR NO KEY UPDATE OF a),
         fresh AS (
            SELECT count(*) = cardinality($1::uuid[]) AS ok
            FROM lk JOIN UNNEST($1::uuid[], $2::int8[]) AS v(id, gen)
              ON v.id = lk.id AND v.gen = lk.apply_gen),
         bumped AS (
            UPDATE apps a SET apply_gen = v.next,
                last_event_seq = COALESCE(v.seq, a.last_event_seq)
            FROM UNNEST($1::uuid[], $3::int8[], $4::int8[]) AS v(id, seq, next)
            WHERE a.id = v.id AND {FRESH}
            RETURNING 1),
         {parts}
         SELECT CASE WHEN {FRESH} AND (SELECT count(*) FROM inserted) = $5::int4
            THEN {counted}
            ELSE cti_stale_batch() END AS written",
        parts = parts.join(",\n         "),
        counted = counted.join(" + "),
    )
}

/// What [`write`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// Everything was written.
    Done,
    /// An app's generation moved since it was read, or an inbox row already existed: nothing
    /// was written.
    Stale,
}

/// Writes `inbox` (all of whose rows must be new) and `plan` for the apps of `gens` — `(app,
/// generation read, generation to set)` for every app whose state the plan depends on, and
/// every app of `plan.seqs` — in one statement ([`write_sql`]). Outside a transaction the
/// statement commits on its own.
pub(super) async fn write(
    conn: &mut PgConnection,
    gens: &[(AppId, i64, i64)],
    inbox: InboxRows<'_>,
    plan: &Plan,
    now: Timestamp,
) -> StoreResult<Written> {
    let mut apps: Vec<(AppId, i64, i64)> = gens.to_vec();
    apps.sort_unstable_by_key(|(a, _, _)| a.0);
    apps.dedup_by_key(|(a, _, _)| *a);
    let seq_of = |app: AppId| plan.seqs.iter().find_map(|&(a, s)| (a == app).then_some(s));
    let seqs: Vec<Option<i64>> = apps.iter().map(|&(a, _, _)| seq_of(a)).collect();
    if let Some(&(missing, _)) = plan
        .seqs
        .iter()
        .find(|(a, _)| !apps.iter().any(|(b, _, _)| b == a))
    {
        return Err(cti_core::store::StoreError::Backend(format!(
            "apply: no generation read for app {}",
            missing.0
        )));
    }
    let new_rows = i32::try_from(inbox.len()).unwrap_or(i32::MAX);
    let shape = Shape::of(plan);
    let q = sqlx::query(shape.sql())
        .bind(apps.iter().map(|(a, _, _)| a.0).collect::<Vec<_>>())
        .bind(apps.iter().map(|&(_, read, _)| read).collect::<Vec<_>>())
        .bind(seqs)
        .bind(apps.iter().map(|&(_, _, next)| next).collect::<Vec<_>>())
        .bind(new_rows);
    let mut q = inbox.bind(q);
    for part in PARTS.into_iter().filter(|&p| shape.has(p)) {
        q = match part {
            Part::Calls => bind_calls(q, &plan.calls)?,
            Part::Voicemails => bind_voicemails(q, &plan.voicemails),
            Part::Messages => bind_messages(q, &plan.messages)?,
            Part::Outbox => bind_outbox(q, plan).bind(now),
        };
    }
    match q.execute(conn).await {
        Ok(_) => Ok(Written::Done),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(STALE_BATCH) => {
            Ok(Written::Stale)
        }
        Err(e) => Err(pg_err(e)),
    }
}

type Q<'a> = Query<'a, Postgres, PgArguments>;

fn bind_calls<'a>(q: Q<'a>, calls: &'a [Call]) -> StoreResult<Q<'a>> {
    let logs = calls
        .iter()
        .map(|c| common::merge_log_to_json(&c.merge_log))
        .collect::<StoreResult<Vec<_>>>()?;
    let text = |f: fn(&Call) -> Option<&str>| calls.iter().map(f).collect::<Vec<_>>();
    let ids = |f: fn(&Call) -> Option<DialpadId>| {
        calls
            .iter()
            .map(|c| f(c).map(DialpadId::as_i64))
            .collect::<Vec<_>>()
    };
    let times = |f: fn(&Call) -> Option<Timestamp>| calls.iter().map(f).collect::<Vec<_>>();
    Ok(q.bind(calls.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(calls.iter().map(|c| c.app_id.0).collect::<Vec<_>>())
        .bind(ids(|c| Some(c.dialpad_call_id)))
        .bind(text(|c| c.direction.map(Direction::as_str)))
        .bind(text(|c| c.from_number.as_deref()))
        .bind(text(|c| c.to_number.as_deref()))
        .bind(text(|c| Some(c.status.as_str())))
        .bind(ids(|c| c.dialpad_user_id))
        .bind(text(|c| c.target_type.as_deref()))
        .bind(ids(|c| c.target_id))
        .bind(times(|c| c.started_at))
        .bind(times(|c| c.answered_at))
        .bind(times(|c| c.ended_at))
        .bind(calls.iter().map(|c| c.duration_seconds).collect::<Vec<_>>())
        .bind(text(|c| c.recording_url.as_deref()))
        .bind(calls.iter().map(|c| c.is_voicemail).collect::<Vec<_>>())
        .bind(text(|c| c.voicemail_audio_url.as_deref()))
        .bind(text(|c| c.transcript.as_deref()))
        .bind(calls.iter().map(|c| c.held).collect::<Vec<_>>())
        .bind(logs)
        .bind(calls.iter().map(|c| c.last_event_ms).collect::<Vec<_>>())
        .bind(text(|c| c.raw_payload.as_ref().map(JsonText::as_str)))
        .bind(times(|c| Some(c.created_at)))
        .bind(times(|c| Some(c.updated_at))))
}

fn bind_outbox<'a>(q: Q<'a>, plan: &'a Plan) -> Q<'a> {
    let n = plan.outbox.len();
    let mut apps = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    for (app, seq, m) in &plan.outbox {
        apps.push(app.0);
        seqs.push(*seq);
        events.push(m.event.as_str());
        payloads.push(m.payload.to_string());
        targets.push(m.target_crm_user.as_deref());
    }
    q.bind(apps)
        .bind(seqs)
        .bind(events)
        .bind(payloads)
        .bind(targets)
}

fn bind_voicemails<'a>(q: Q<'a>, vms: &'a [Voicemail]) -> Q<'a> {
    let text = |f: fn(&Voicemail) -> Option<&str>| vms.iter().map(f).collect::<Vec<_>>();
    let ids = |f: fn(&Voicemail) -> Option<DialpadId>| {
        vms.iter()
            .map(|v| f(v).map(DialpadId::as_i64))
            .collect::<Vec<_>>()
    };
    q.bind(vms.iter().map(|v| v.id).collect::<Vec<_>>())
        .bind(vms.iter().map(|v| v.app_id.0).collect::<Vec<_>>())
        .bind(ids(|v| v.dialpad_call_id))
        .bind(ids(|v| v.dialpad_user_id))
        .bind(text(|v| v.from_number.as_deref()))
        .bind(text(|v| v.to_number.as_deref()))
        .bind(text(|v| v.recording_url.as_deref()))
        .bind(text(|v| v.transcript.as_deref()))
        .bind(vms.iter().map(|v| v.duration_seconds).collect::<Vec<_>>())
        .bind(vms.iter().map(|v| v.created_at).collect::<Vec<_>>())
        .bind(vms.iter().map(|v| v.updated_at).collect::<Vec<_>>())
}

fn bind_messages<'a>(q: Q<'a>, msgs: &'a [Message]) -> StoreResult<Q<'a>> {
    let text = |f: fn(&Message) -> Option<&str>| msgs.iter().map(f).collect::<Vec<_>>();
    let to_numbers = msgs
        .iter()
        .map(|m| {
            serde_json::to_string(&m.to_numbers).map_err(|e| {
                cti_core::store::StoreError::Backend(format!("encoding to_numbers: {e}"))
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(q.bind(msgs.iter().map(|m| m.id).collect::<Vec<_>>())
        .bind(msgs.iter().map(|m| m.app_id.0).collect::<Vec<_>>())
        .bind(
            msgs.iter()
                .map(|m| m.dialpad_message_id.as_i64())
                .collect::<Vec<_>>(),
        )
        .bind(text(|m| m.direction.map(Direction::as_str)))
        .bind(text(|m| m.from_number.as_deref()))
        .bind(text(|m| m.to_number.as_deref()))
        .bind(to_numbers)
        .bind(text(|m| m.text.as_deref()))
        .bind(
            msgs.iter()
                .map(|m| m.dialpad_user_id.map(DialpadId::as_i64))
                .collect::<Vec<_>>(),
        )
        .bind(msgs.iter().map(|m| m.sent_at).collect::<Vec<_>>())
        .bind(text(|m| m.message_status.as_deref()))
        .bind(msgs.iter().map(|m| m.created_at).collect::<Vec<_>>())
        .bind(msgs.iter().map(|m| m.updated_at).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upsert_sets_everything_but_the_rows_identity() {
        let sql = upsert("calls", CALL_COLS, "UNNEST(…)", "app_id, dialpad_call_id");
        let set = sql.split("DO UPDATE SET ").nth(1).expect("a SET list");
        let set: Vec<&str> = set.split(", ").collect();
        assert_eq!(set.len(), count(CALL_COLS) - 4, "{set:?}");
        for c in [
            "status = EXCLUDED.status",
            "raw_payload = EXCLUDED.raw_payload",
        ] {
            assert!(set.contains(&c), "{c} in {set:?}");
        }
        for c in ["id", "app_id", "dialpad_call_id", "created_at"] {
            assert!(!set.iter().any(|s| s.starts_with(&format!("{c} "))), "{c}");
        }
    }

    #[test]
    fn each_shape_numbers_its_parameters_without_a_gap() {
        for bits in 0..SHAPES as u8 {
            let shape = Shape(bits);
            let sql = write_sql(shape);
            let mut expected = 5 + count(INBOX_TYPES);
            for part in PARTS.into_iter().filter(|&p| shape.has(p)) {
                expected += match part {
                    Part::Calls => count(CALL_TYPES),
                    Part::Voicemails => count(VOICEMAIL_TYPES),
                    Part::Messages => count(MESSAGE_TYPES),
                    Part::Outbox => count(OUTBOX_TYPES) + 1,
                };
            }
            for n in 1..=expected {
                assert!(
                    sql.contains(&format!("${n}::")),
                    "shape {bits}: ${n} missing"
                );
            }
            assert!(
                !sql.contains(&format!("${}::", expected + 1)),
                "shape {bits}"
            );
        }
    }
}
