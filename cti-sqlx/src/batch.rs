//! The backend-independent middle of set-based batch completion (both backends): which records
//! a batch reads, and — given those rows — what it writes and publishes.
//!
//! A backend finishes a claimed batch in one transaction with a constant number of statements:
//!
//! 1. one `UPDATE … RETURNING` for the lease check and status change of every item (an item it
//!    does not return lost its lease and is skipped);
//! 2. one read each of the records named by [`Keys`] (calls, voicemails, messages,
//!    `apps.last_event_seq`) and of the user mappings of [`user_keys`];
//! 3. [`plan`]: [`apply_event`] for every item in input order, in memory — a later item sees the
//!    record an earlier item of the batch produced, exactly as if they had been completed one
//!    by one — and the outbox sequence numbers;
//! 4. one multi-row upsert each of the changed calls, voicemails and messages (final state per
//!    record), the new sequence heads and one multi-row outbox insert.

use std::collections::HashMap;

use cti_core::model::*;
use cti_core::normalize::Normalized;
use cti_core::normalize::apply::call_key;
use cti_core::store::*;
use uuid::Uuid;

/// A record key: `(app, Dialpad id)`.
pub(crate) type Key = (AppId, DialpadId);

/// One item to apply: its position in the batch, its app (from the lease check) and its event.
pub(crate) struct Item<'a> {
    pub index: usize,
    pub app: AppId,
    pub n: &'a Normalized,
}

/// The records a batch reads.
#[derive(Default)]
pub(crate) struct Keys {
    pub calls: Vec<Key>,
    pub voicemails: Vec<Key>,
    pub messages: Vec<Key>,
    pub apps: Vec<AppId>,
}

/// The rows read for a batch.
#[derive(Default)]
pub(crate) struct Loaded {
    pub calls: HashMap<Key, Call>,
    /// By `(app, dialpad_call_id)`.
    pub voicemails: HashMap<Key, Voicemail>,
    pub messages: HashMap<Key, Message>,
    /// `(app, Dialpad user)` → CRM user (`None`: read, no mapping).
    pub crm_users: HashMap<Key, Option<String>>,
    /// App → last assigned outbox sequence number.
    pub seqs: HashMap<AppId, i64>,
}

/// What a batch writes and publishes.
#[derive(Default)]
pub(crate) struct Plan {
    /// Final state of every changed call, voicemail and message (each record once).
    pub calls: Vec<Call>,
    pub voicemails: Vec<Voicemail>,
    pub messages: Vec<Message>,
    /// New `apps.last_event_seq` of every app that published.
    pub seqs: Vec<(AppId, i64)>,
    /// Outbox rows in sequence order per app.
    pub outbox: Vec<(AppId, i64, OutboxMessage)>,
    /// Published messages per batch index.
    pub published: Vec<(usize, Vec<PublishedEvent>)>,
}

impl Plan {
    /// `true` when the plan changes no row (nothing applied changed a record or published).
    pub(crate) fn writes_nothing(&self) -> bool {
        self.calls.is_empty()
            && self.voicemails.is_empty()
            && self.messages.is_empty()
            && self.seqs.is_empty()
            && self.outbox.is_empty()
    }
}

/// Drops repeated keys, keeping the first occurrence (linear, unlike `Vec::contains` per push).
fn dedup<K: std::hash::Hash + Eq + Copy>(v: &mut Vec<K>) {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    v.retain(|k| seen.insert(*k));
}

/// The records `items` may touch.
pub(crate) fn keys(items: &[Item<'_>]) -> Keys {
    let mut k = Keys::default();
    for it in items {
        if let Some(c) = call_key(it.n) {
            k.calls.push((it.app, c));
            if it.n.voicemail.is_some() {
                k.voicemails.push((it.app, c));
            }
        }
        if let Some(m) = it.n.message.as_ref().and_then(|m| m.dialpad_message_id) {
            k.messages.push((it.app, m));
        }
        k.apps.push(it.app);
    }
    dedup(&mut k.calls);
    dedup(&mut k.voicemails);
    dedup(&mut k.messages);
    dedup(&mut k.apps);
    k
}

/// The user mappings `items` need given the stored calls (`target_user` of each event).
pub(crate) fn user_keys(items: &[Item<'_>], loaded: &Loaded) -> Vec<Key> {
    let mut users = Vec::new();
    for it in items {
        let call = call_key(it.n).and_then(|k| loaded.calls.get(&(it.app, k)));
        if let Some(u) = target_user(it.n, call) {
            users.push((it.app, u));
        }
    }
    dedup(&mut users);
    users
}

/// Applies `items` in order over `loaded`. The inner `Err` names a user mapping that was not
/// read (possible only when a call changed earlier in the batch names another user): read it
/// into `loaded.crm_users` (`None` when absent) and call again.
pub(crate) fn plan(
    items: &[Item<'_>],
    loaded: &Loaded,
    now: Timestamp,
) -> StoreResult<Result<Plan, Key>> {
    let mut calls: HashMap<Key, Call> = HashMap::new();
    let mut voicemails: HashMap<Key, Voicemail> = HashMap::new();
    let mut messages: HashMap<Key, Message> = HashMap::new();
    let mut seqs: HashMap<AppId, i64> = HashMap::new();
    let (mut call_order, mut vm_order, mut msg_order, mut seq_order) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut keyless_voicemails = Vec::new();
    let mut out = Plan::default();
    for it in items {
        let app = it.app;
        let key = call_key(it.n);
        let call = key.and_then(|k| {
            calls
                .get(&(app, k))
                .or_else(|| loaded.calls.get(&(app, k)))
                .cloned()
        });
        let crm_user = match target_user(it.n, call.as_ref()) {
            Some(u) => match loaded.crm_users.get(&(app, u)) {
                Some(c) => c.clone(),
                None => return Ok(Err((app, u))),
            },
            None => None,
        };
        let voicemail = match (&it.n.voicemail, key) {
            (Some(_), Some(k)) => voicemails
                .get(&(app, k))
                .or_else(|| loaded.voicemails.get(&(app, k)))
                .cloned(),
            _ => None,
        };
        let message_key =
            it.n.message
                .as_ref()
                .and_then(|m| m.dialpad_message_id)
                .map(|m| (app, m));
        let message = message_key.and_then(|k| {
            messages
                .get(&k)
                .or_else(|| loaded.messages.get(&k))
                .cloned()
        });
        let applied = apply_event(
            app,
            it.n,
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
            if calls.insert(k, c).is_none() {
                call_order.push(k);
            }
        }
        if let Some(v) = applied.voicemail {
            match key {
                Some(k) => {
                    if voicemails.insert((app, k), v).is_none() {
                        vm_order.push((app, k));
                    }
                }
                // No call id: nothing else in the batch can refer to it.
                None => keyless_voicemails.push(v),
            }
        }
        if let Some(m) = applied.message {
            let k = (app, m.dialpad_message_id);
            if messages.insert(k, m).is_none() {
                msg_order.push(k);
            }
        }
        if !applied.outbox.is_empty() {
            let seq = match seqs.get_mut(&app) {
                Some(s) => s,
                None => {
                    let head = *loaded.seqs.get(&app).ok_or(StoreError::NotFound)?;
                    seq_order.push(app);
                    seqs.entry(app).or_insert(head)
                }
            };
            let mut published = Vec::with_capacity(applied.outbox.len());
            for m in applied.outbox {
                *seq += 1;
                published.push(PublishedEvent {
                    app_id: app,
                    seq: u64::try_from(*seq).unwrap_or_default(),
                    event: m.event.clone(),
                    payload: m.payload.clone(),
                    target_crm_user: m.target_crm_user.clone(),
                    created_at: now,
                });
                out.outbox.push((app, *seq, m));
            }
            out.published.push((it.index, published));
        }
    }
    out.calls = call_order.iter().filter_map(|k| calls.remove(k)).collect();
    out.voicemails = vm_order
        .iter()
        .filter_map(|k| voicemails.remove(k))
        .chain(keyless_voicemails)
        .collect();
    out.messages = msg_order
        .iter()
        .filter_map(|k| messages.remove(k))
        .collect();
    out.seqs = seq_order
        .iter()
        .filter_map(|a| seqs.get(a).map(|s| (*a, *s)))
        .collect();
    Ok(Ok(out))
}

/// Splits a batch after the lease check (`held`: event → app of the events this attempt still
/// holds): the initial per-item results (`Ok(no messages)`, or `LeaseLost`) and the items to
/// apply.
pub(crate) fn split<'a>(
    items: &'a [Completion],
    held: &HashMap<uuid::Uuid, AppId>,
) -> (Vec<StoreResult<Vec<PublishedEvent>>>, Vec<Item<'a>>) {
    let out = items
        .iter()
        .map(|c| {
            if held.contains_key(&c.event_id) {
                Ok(Vec::new())
            } else {
                Err(StoreError::LeaseLost)
            }
        })
        .collect();
    let applying = items
        .iter()
        .enumerate()
        .filter_map(|(index, c)| match (&c.result, held.get(&c.event_id)) {
            (EventResult::Apply(n), Some(app)) => Some(Item {
                index,
                app: *app,
                n: n.as_ref(),
            }),
            _ => None,
        })
        .collect();
    (out, applying)
}

/// The result of a batch transaction, or — if it failed and rolled back — the items completed
/// one by one, so each gets exactly the result `inbox_complete` gives it.
pub(crate) async fn or_each<S: InboxStore + ?Sized>(
    store: &S,
    items: Vec<Completion>,
    now: Timestamp,
    batched: StoreResult<Vec<StoreResult<Vec<PublishedEvent>>>>,
) -> Vec<StoreResult<Vec<PublishedEvent>>> {
    match batched {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!(error = %e, items = items.len(), "batch completion rolled back; completing one by one");
            complete_each(store, items, now).await
        }
    }
}

/// `cols` (a comma-separated column list) as `alias.col AS col`, so a join returns the columns
/// under their table names.
pub(crate) fn qualified(cols: &str, alias: &str) -> String {
    cols.split(',')
        .map(|c| format!("{alias}.{0} AS {0}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bookkeeping of inline processing (`inbox_insert_processed`) shared by both backends:
/// which events to store claimed, the completions to run, and the final report.
pub(crate) mod inline {
    use std::collections::HashSet;

    use super::*;

    /// `true` for an empty batch (nothing to do); an error unless there is one result per
    /// event.
    pub(crate) fn is_empty(
        events: &[NewInboxEvent],
        results: &[Option<EventResult>],
    ) -> StoreResult<bool> {
        if results.len() != events.len() {
            return Err(StoreError::Backend(
                "inbox_insert_processed: one result per event".into(),
            ));
        }
        Ok(events.is_empty())
    }

    /// Events to store claimed (`processing`, attempt 1): those with a result whose call has no
    /// unfinished event in the inbox (`blocked`).
    pub(crate) fn claims(
        events: &[NewInboxEvent],
        results: &[Option<EventResult>],
        blocked: &HashSet<Key>,
    ) -> Vec<bool> {
        events
            .iter()
            .zip(results)
            .map(|(e, r)| {
                r.is_some() && e.call_id.is_none_or(|c| !blocked.contains(&(e.app_id, c)))
            })
            .collect()
    }

    /// The final status (and `ignored` reason) of an event processed in its insert's
    /// transaction: stored finished straight away (attempt 1), no `processing` row to finish
    /// with a second write.
    pub(crate) type Born<'a> = (EventStatus, Option<&'a str>);

    /// The final status of each event of `claims` (`None`: stored `pending`).
    pub(crate) fn born<'a>(
        claim: &[bool],
        results: &'a [Option<EventResult>],
    ) -> Vec<Option<Born<'a>>> {
        claim
            .iter()
            .zip(results)
            .map(|(c, r)| match (c, r) {
                (true, Some(EventResult::Apply(_))) => Some((EventStatus::Done, None)),
                (true, Some(EventResult::Ignored(reason))) => {
                    Some((EventStatus::Ignored, Some(reason.as_str())))
                }
                _ => None,
            })
            .collect()
    }

    /// The completions of the events stored claimed and new, in event-time order (the order a
    /// claim would hand them out in), with their positions in the batch.
    pub(crate) fn completions(
        events: &[NewInboxEvent],
        results: &mut [Option<EventResult>],
        claim: &[bool],
        outcomes: &[InsertOutcome],
    ) -> (Vec<usize>, Vec<Completion>) {
        let mut order: Vec<usize> = (0..events.len())
            .filter(|&i| claim[i] && outcomes[i] == InsertOutcome::Inserted(events[i].id))
            .collect();
        order.sort_by_key(|&i| {
            let e = &events[i];
            let at = e
                .event_timestamp
                .unwrap_or_else(|| e.received_at.timestamp_millis());
            (at, i)
        });
        order.retain(|&i| results[i].is_some());
        let items = order
            .iter()
            .filter_map(|&i| {
                results[i].take().map(|result| Completion {
                    event_id: events[i].id,
                    attempt: 1,
                    result,
                })
            })
            .collect();
        (order, items)
    }

    /// The report: what was processed and published; `failed` gets the items whose completion
    /// failed (the caller marks them `failed` for the processor to retry).
    pub(crate) fn report(
        outcomes: Vec<InsertOutcome>,
        order: &[usize],
        items: &[Completion],
        done: Vec<StoreResult<Vec<PublishedEvent>>>,
        failed: &mut Vec<(Uuid, String)>,
    ) -> InsertProcessed {
        let mut processed = vec![false; outcomes.len()];
        let mut published = Vec::new();
        for ((&i, item), result) in order.iter().zip(items).zip(done) {
            match result {
                Ok(p) => {
                    processed[i] = true;
                    published.extend(p);
                }
                Err(e) => failed.push((item.event_id, e.to_string())),
            }
        }
        published.sort_by_key(|p| (p.app_id.0, p.seq));
        InsertProcessed {
            outcomes,
            processed,
            published,
        }
    }
}
