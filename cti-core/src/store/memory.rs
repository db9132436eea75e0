//! [`MemoryStore`]: the reference implementation of every store trait, for tests and embedding.
//!
//! One mutex guards all tables, so every operation is trivially atomic and serialised.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use uuid::Uuid;

use super::*;
use crate::normalize::apply::call_key;

#[derive(Clone)]
struct AppRow {
    app: App,
    lookup: Option<String>,
    legacy_hash: Option<String>,
    prev_lookup: Option<(String, Timestamp)>,
    last_seq: u64,
}

#[derive(Default)]
struct Tables {
    apps: HashMap<AppId, AppRow>,
    audit: Vec<AuditEntry>,
    calls: HashMap<(AppId, DialpadId), Call>,
    voicemails: HashMap<Uuid, Voicemail>,
    messages: HashMap<(AppId, DialpadId), Message>,
    mappings: HashMap<(AppId, DialpadId), UserMapping>,
    inbox: HashMap<Uuid, InboxEvent>,
    inbox_keys: HashMap<(AppId, String), Uuid>,
    /// Unfinished (pending/failed/processing) events in arrival order; finished events leave
    /// it, so claims only scan live work.
    inbox_order: BTreeMap<(Timestamp, u64), Uuid>,
    order_key: HashMap<Uuid, (Timestamp, u64)>,
    inbox_seq: u64,
    outbox: HashMap<AppId, BTreeMap<u64, PublishedEvent>>,
    connections: HashMap<AppId, DialpadConnection>,
    webhooks: Vec<DialpadWebhook>,
    subscriptions: Vec<DialpadSubscription>,
}

/// Thread-safe in-memory store. Nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    t: Mutex<Tables>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn page<T: Clone>(mut items: Vec<T>, req: PageRequest) -> Page<T> {
    let total = items.len() as u64;
    let start = (req.offset.min(total)) as usize;
    let end = (start + req.limit as usize).min(items.len());
    let items = items.drain(start..end).collect();
    Page { items, total }
}

/// `a DESC NULLS LAST` comparison.
fn desc_nulls_last<T: Ord>(a: &Option<T>, b: &Option<T>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Some(x), Some(y)) => y.cmp(x),
        (Some(_), None) => Less,
        (None, Some(_)) => Greater,
        (None, None) => Equal,
    }
}

#[async_trait]
impl AppStore for MemoryStore {
    async fn create_app(&self, new: NewApp, ctx: AuditContext) -> StoreResult<App> {
        let mut t = self.t.lock();
        if t.apps.contains_key(&new.id) {
            return Err(StoreError::Conflict("app id exists".into()));
        }
        if t.apps
            .values()
            .any(|r| r.lookup.as_deref() == Some(&new.key.lookup))
        {
            return Err(StoreError::Conflict("api key exists".into()));
        }
        let app = App {
            id: new.id,
            name: new.name,
            is_active: true,
            api_key_hint: Some(new.key.hint.clone()),
            api_key_issued_at: Some(new.now),
            has_key: true,
            created_at: new.now,
            updated_at: new.now,
        };
        t.apps.insert(
            app.id,
            AppRow {
                app: app.clone(),
                lookup: Some(new.key.lookup),
                legacy_hash: None,
                prev_lookup: None,
                last_seq: 0,
            },
        );
        t.audit.push(AuditEntry {
            id: Uuid::new_v4(),
            app_id: app.id,
            action: AuditAction::Created,
            old_key_hint: None,
            new_key_hint: Some(new.key.hint),
            context: ctx,
            created_at: new.now,
        });
        Ok(app)
    }

    async fn get_app(&self, id: AppId) -> StoreResult<Option<App>> {
        Ok(self.t.lock().apps.get(&id).map(|r| r.app.clone()))
    }

    async fn list_apps(&self, req: PageRequest) -> StoreResult<Page<App>> {
        let t = self.t.lock();
        let mut apps: Vec<App> = t.apps.values().map(|r| r.app.clone()).collect();
        apps.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(page(apps, req))
    }

    async fn update_app(
        &self,
        id: AppId,
        patch: AppPatch,
        now: Timestamp,
    ) -> StoreResult<Option<App>> {
        let mut t = self.t.lock();
        let Some(row) = t.apps.get_mut(&id) else {
            return Ok(None);
        };
        if let Some(n) = patch.name {
            row.app.name = n;
        }
        if let Some(a) = patch.is_active {
            row.app.is_active = a;
        }
        row.app.updated_at = now;
        Ok(Some(row.app.clone()))
    }

    async fn find_app_by_key(&self, lookup: &str, now: Timestamp) -> StoreResult<Option<KeyMatch>> {
        let t = self.t.lock();
        for r in t.apps.values() {
            if r.lookup.as_deref() == Some(lookup) {
                return Ok(Some(KeyMatch {
                    app: r.app.clone(),
                    current: true,
                }));
            }
            if let Some((l, until)) = &r.prev_lookup
                && l == lookup
                && *until > now
            {
                return Ok(Some(KeyMatch {
                    app: r.app.clone(),
                    current: false,
                }));
            }
        }
        Ok(None)
    }

    async fn legacy_keys(&self) -> StoreResult<Vec<LegacyKey>> {
        let t = self.t.lock();
        Ok(t.apps
            .values()
            .filter(|r| r.app.is_active && r.lookup.is_none())
            .filter_map(|r| {
                r.legacy_hash.clone().map(|h| LegacyKey {
                    app: r.app.clone(),
                    bcrypt_hash: h,
                })
            })
            .collect())
    }

    async fn backfill_key(&self, id: AppId, bcrypt_hash: &str, key: NewKey) -> StoreResult<()> {
        let mut t = self.t.lock();
        if let Some(r) = t.apps.get_mut(&id)
            && r.legacy_hash.as_deref() == Some(bcrypt_hash)
            && r.lookup.is_none()
        {
            r.lookup = Some(key.lookup);
            r.app.api_key_hint = Some(key.hint);
        }
        Ok(())
    }

    async fn change_key(
        &self,
        id: AppId,
        change: KeyChange,
        ctx: AuditContext,
        now: Timestamp,
    ) -> StoreResult<KeyChangeOutcome> {
        let mut t = self.t.lock();
        let row = t.apps.get_mut(&id).ok_or(StoreError::NotFound)?;
        let had_key = row.lookup.is_some() || row.legacy_hash.is_some();
        let old_hint = row.app.api_key_hint.clone();
        let (action, new_hint) = match change {
            KeyChange::Issue { key, grace_until } => {
                if !row.app.is_active {
                    return Err(StoreError::Inactive);
                }
                row.prev_lookup = match (grace_until, row.lookup.take()) {
                    (Some(until), Some(prev)) => Some((prev, until)),
                    _ => None,
                };
                row.lookup = Some(key.lookup);
                row.legacy_hash = None;
                row.app.api_key_hint = Some(key.hint.clone());
                row.app.api_key_issued_at = Some(now);
                row.app.has_key = true;
                (
                    if had_key {
                        AuditAction::Rotated
                    } else {
                        AuditAction::Created
                    },
                    Some(key.hint),
                )
            }
            KeyChange::Revoke => {
                row.lookup = None;
                row.legacy_hash = None;
                row.prev_lookup = None;
                row.app.api_key_hint = None;
                row.app.api_key_issued_at = None;
                row.app.has_key = false;
                (AuditAction::Revoked, None)
            }
        };
        row.app.updated_at = now;
        let app = row.app.clone();
        let audit = AuditEntry {
            id: Uuid::new_v4(),
            app_id: id,
            action,
            old_key_hint: old_hint,
            new_key_hint: new_hint,
            context: ctx,
            created_at: now,
        };
        t.audit.push(audit.clone());
        Ok(KeyChangeOutcome { app, audit })
    }

    async fn list_audit(&self, id: AppId, req: PageRequest) -> StoreResult<Page<AuditEntry>> {
        let t = self.t.lock();
        // `audit` is in insertion order: newest first = reverse.
        let rows: Vec<AuditEntry> = t
            .audit
            .iter()
            .rev()
            .filter(|a| a.app_id == id)
            .cloned()
            .collect();
        Ok(page(rows, req))
    }
}

impl MemoryStore {
    /// Inserts an app that only has a legacy bcrypt key, as imported from the original server.
    /// For tests of the legacy path.
    pub fn insert_legacy_app(&self, id: AppId, name: &str, bcrypt_hash: &str, now: Timestamp) {
        let app = App {
            id,
            name: name.into(),
            is_active: true,
            api_key_hint: None,
            api_key_issued_at: None,
            has_key: true,
            created_at: now,
            updated_at: now,
        };
        self.t.lock().apps.insert(
            id,
            AppRow {
                app,
                lookup: None,
                legacy_hash: Some(bcrypt_hash.into()),
                prev_lookup: None,
                last_seq: 0,
            },
        );
    }
}

impl Tables {
    fn finished(&mut self, id: Uuid) {
        if let Some(k) = self.order_key.remove(&id) {
            self.inbox_order.remove(&k);
        }
    }

    fn unfinished(&mut self, id: Uuid) {
        if let Some(e) = self.inbox.get(&id) {
            self.inbox_seq += 1;
            let k = (e.received_at, self.inbox_seq);
            self.inbox_order.insert(k, id);
            self.order_key.insert(id, k);
        }
    }
}

fn is_due(e: &InboxEvent, now: Timestamp) -> bool {
    match e.status {
        EventStatus::Pending | EventStatus::Failed => e.next_attempt_at <= now,
        EventStatus::Processing => e.locked_until.is_some_and(|l| l < now),
        _ => false,
    }
}

fn held_lease(e: &InboxEvent, now: Timestamp) -> bool {
    e.status == EventStatus::Processing && e.locked_until.is_some_and(|l| l >= now)
}

#[async_trait]
impl InboxStore for MemoryStore {
    async fn inbox_insert(&self, events: Vec<NewInboxEvent>) -> StoreResult<Vec<InsertOutcome>> {
        let mut t = self.t.lock();
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let key = (e.app_id, e.dedupe_key.clone());
            if let Some(id) = t.inbox_keys.get(&key) {
                out.push(InsertOutcome::Duplicate(*id));
                continue;
            }
            t.inbox_keys.insert(key, e.id);
            t.inbox_seq += 1;
            let seq = t.inbox_seq;
            t.inbox_order.insert((e.received_at, seq), e.id);
            t.order_key.insert(e.id, (e.received_at, seq));
            t.inbox.insert(
                e.id,
                InboxEvent {
                    id: e.id,
                    app_id: e.app_id,
                    dedupe_key: e.dedupe_key,
                    event_type: e.event_type,
                    call_id: e.call_id,
                    state: e.state,
                    event_timestamp: e.event_timestamp,
                    payload: e.payload,
                    status: EventStatus::Pending,
                    attempts: 0,
                    last_error: None,
                    next_attempt_at: e.received_at,
                    locked_until: None,
                    received_at: e.received_at,
                    processed_at: None,
                },
            );
            out.push(InsertOutcome::Inserted(e.id));
        }
        Ok(out)
    }

    async fn inbox_claim(
        &self,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InboxEvent>> {
        let mut t = self.t.lock();
        let busy: std::collections::HashSet<(AppId, DialpadId)> = t
            .inbox_order
            .values()
            .filter_map(|id| t.inbox.get(id))
            .filter(|e| held_lease(e, now))
            .filter_map(|e| e.call_id.map(|c| (e.app_id, c)))
            .collect();
        // Earliest due event per call, by (event_timestamp, received_at).
        let mut per_call: HashMap<(AppId, DialpadId), (Option<i64>, Timestamp, u64, Uuid)> =
            HashMap::new();
        let mut picked: Vec<(Timestamp, u64, Uuid)> = Vec::new();
        for (&(received, seq), id) in t.inbox_order.iter() {
            let e = &t.inbox[id];
            if !is_due(e, now) {
                continue;
            }
            match e.call_id {
                None => picked.push((received, seq, *id)),
                Some(c) => {
                    let k = (e.app_id, c);
                    if busy.contains(&k) {
                        continue;
                    }
                    let cand = (e.event_timestamp, received, seq, *id);
                    per_call
                        .entry(k)
                        .and_modify(|cur| {
                            if (cand.0.unwrap_or(i64::MAX), cand.1, cand.2)
                                < (cur.0.unwrap_or(i64::MAX), cur.1, cur.2)
                            {
                                *cur = cand;
                            }
                        })
                        .or_insert(cand);
                }
            }
        }
        picked.extend(per_call.into_values().map(|(_, r, s, id)| (r, s, id)));
        picked.sort();
        picked.truncate(limit);
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        let mut out = Vec::with_capacity(picked.len());
        for (_, _, id) in picked {
            if let Some(e) = t.inbox.get_mut(&id) {
                e.status = EventStatus::Processing;
                e.locked_until = Some(now + lease);
                e.attempts += 1;
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    async fn inbox_complete(
        &self,
        event_id: Uuid,
        attempt: u32,
        result: EventResult,
        now: Timestamp,
    ) -> StoreResult<Vec<PublishedEvent>> {
        let mut t = self.t.lock();
        let e = t.inbox.get(&event_id).ok_or(StoreError::LeaseLost)?;
        if e.status != EventStatus::Processing || e.attempts != attempt {
            return Err(StoreError::LeaseLost);
        }
        let app = e.app_id;
        let n = match result {
            EventResult::Ignored(reason) => {
                let e = t.inbox.get_mut(&event_id).ok_or(StoreError::LeaseLost)?;
                e.status = EventStatus::Ignored;
                e.last_error = Some(reason);
                e.processed_at = Some(now);
                e.locked_until = None;
                t.finished(event_id);
                return Ok(vec![]);
            }
            EventResult::Apply(n) => n,
        };
        let key = call_key(&n);
        let call = key.and_then(|k| t.calls.get(&(app, k)).cloned());
        let voicemail = match (&n.voicemail, key) {
            (Some(_), Some(k)) => t
                .voicemails
                .values()
                .find(|v| v.app_id == app && v.dialpad_call_id == Some(k))
                .cloned(),
            _ => None,
        };
        let message = n
            .message
            .as_ref()
            .and_then(|m| m.dialpad_message_id)
            .and_then(|mid| t.messages.get(&(app, mid)).cloned());
        let crm_user = target_user(&n, call.as_ref())
            .and_then(|u| t.mappings.get(&(app, u)).map(|m| m.crm_user_id.clone()));
        let applied = apply_event(
            app,
            &n,
            Existing {
                call,
                voicemail,
                message,
                crm_user,
            },
            now,
        );
        if let Some(c) = applied.call {
            t.calls.insert((app, c.dialpad_call_id), c);
        }
        if let Some(v) = applied.voicemail {
            t.voicemails.insert(v.id, v);
        }
        if let Some(m) = applied.message {
            t.messages.insert((app, m.dialpad_message_id), m);
        }
        let mut published = Vec::with_capacity(applied.outbox.len());
        if !applied.outbox.is_empty() {
            let row = t.apps.get_mut(&app).ok_or(StoreError::NotFound)?;
            let mut seq = row.last_seq;
            for m in applied.outbox {
                seq += 1;
                published.push(PublishedEvent {
                    app_id: app,
                    seq,
                    event: m.event,
                    payload: m.payload,
                    target_crm_user: m.target_crm_user,
                    created_at: now,
                });
            }
            row.last_seq = seq;
            let ob = t.outbox.entry(app).or_default();
            for p in &published {
                ob.insert(p.seq, p.clone());
            }
        }
        if let Some(e) = t.inbox.get_mut(&event_id) {
            e.status = EventStatus::Done;
            e.processed_at = Some(now);
            e.locked_until = None;
        }
        t.finished(event_id);
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
        let mut t = self.t.lock();
        let e = t.inbox.get_mut(&event_id).ok_or(StoreError::LeaseLost)?;
        if e.status != EventStatus::Processing || e.attempts != attempt {
            return Err(StoreError::LeaseLost);
        }
        e.last_error = Some(error.to_string());
        e.locked_until = None;
        match retry_at {
            Some(at) => {
                e.status = EventStatus::Failed;
                e.next_attempt_at = at;
            }
            None => {
                e.status = EventStatus::Dead;
                e.processed_at = Some(now);
                t.finished(event_id);
            }
        }
        Ok(())
    }

    async fn inbox_get(&self, app: Option<AppId>, id: Uuid) -> StoreResult<Option<InboxEvent>> {
        let t = self.t.lock();
        Ok(t.inbox
            .get(&id)
            .filter(|e| app.is_none_or(|a| a == e.app_id))
            .cloned())
    }

    async fn inbox_redrive(
        &self,
        app: Option<AppId>,
        id: Uuid,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut t = self.t.lock();
        match t.inbox.get_mut(&id) {
            Some(e)
                if app.is_none_or(|a| a == e.app_id)
                    && matches!(e.status, EventStatus::Dead | EventStatus::Failed) =>
            {
                e.status = EventStatus::Pending;
                e.attempts = 0;
                e.next_attempt_at = now;
                e.processed_at = None;
                if !t.order_key.contains_key(&id) {
                    t.unfinished(id);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        let t = self.t.lock();
        let mut s = InboxStats::default();
        for e in t.inbox.values() {
            s.add(e.status, 1);
            if matches!(
                e.status,
                EventStatus::Pending | EventStatus::Failed | EventStatus::Processing
            ) {
                s.oldest_unprocessed_at = Some(
                    s.oldest_unprocessed_at
                        .map_or(e.received_at, |o: Timestamp| o.min(e.received_at)),
                );
            }
        }
        Ok(s)
    }

    async fn inbox_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let mut t = self.t.lock();
        let gone: Vec<Uuid> = t
            .inbox
            .values()
            .filter(|e| {
                matches!(e.status, EventStatus::Done | EventStatus::Ignored)
                    && e.received_at < before
            })
            .map(|e| e.id)
            .collect();
        for id in &gone {
            if let Some(e) = t.inbox.remove(id) {
                t.inbox_keys.remove(&(e.app_id, e.dedupe_key));
            }
        }
        for id in &gone {
            t.finished(*id);
        }
        Ok(gone.len() as u64)
    }

    async fn events_since(
        &self,
        app: AppId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<PublishedEvent>> {
        let t = self.t.lock();
        Ok(t.outbox
            .get(&app)
            .map(|m| {
                m.range(after + 1..)
                    .take(limit)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn event_heads(&self) -> StoreResult<Vec<(AppId, u64)>> {
        let t = self.t.lock();
        Ok(t.apps
            .values()
            .filter(|r| r.last_seq > 0)
            .map(|r| (r.app.id, r.last_seq))
            .collect())
    }

    async fn oldest_event_seq(&self, app: AppId) -> StoreResult<Option<u64>> {
        Ok(self
            .t
            .lock()
            .outbox
            .get(&app)
            .and_then(|m| m.keys().next().copied()))
    }

    async fn events_purge(&self, before: Timestamp) -> StoreResult<u64> {
        let mut t = self.t.lock();
        let mut n = 0;
        for m in t.outbox.values_mut() {
            let before_len = m.len();
            m.retain(|_, e| e.created_at >= before);
            n += (before_len - m.len()) as u64;
        }
        Ok(n)
    }
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn list_calls(
        &self,
        app: AppId,
        f: &CallFilter,
        req: PageRequest,
    ) -> StoreResult<Page<Call>> {
        let t = self.t.lock();
        let mut v: Vec<Call> = t
            .calls
            .values()
            .filter(|c| c.app_id == app)
            .filter(|c| f.statuses.as_ref().is_none_or(|s| s.contains(&c.status)))
            .filter(|c| f.direction.is_none_or(|d| c.direction == Some(d)))
            .filter(|c| {
                f.from
                    .as_ref()
                    .is_none_or(|x| c.from_number.as_ref() == Some(x))
            })
            .filter(|c| {
                f.to.as_ref()
                    .is_none_or(|x| c.to_number.as_ref() == Some(x))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            desc_nulls_last(&a.started_at, &b.started_at)
                .then(b.created_at.cmp(&a.created_at))
                .then(a.id.cmp(&b.id))
        });
        Ok(page(v, req))
    }

    async fn get_call(&self, app: AppId, id: Uuid) -> StoreResult<Option<Call>> {
        Ok(self
            .t
            .lock()
            .calls
            .values()
            .find(|c| c.app_id == app && c.id == id)
            .cloned())
    }

    async fn get_call_by_dialpad_id(
        &self,
        app: AppId,
        call_id: DialpadId,
    ) -> StoreResult<Option<Call>> {
        Ok(self.t.lock().calls.get(&(app, call_id)).cloned())
    }

    async fn list_messages(
        &self,
        app: AppId,
        f: &MessageFilter,
        req: PageRequest,
    ) -> StoreResult<Page<Message>> {
        let t = self.t.lock();
        let mut v: Vec<Message> = t
            .messages
            .values()
            .filter(|m| m.app_id == app)
            .filter(|m| f.direction.is_none_or(|d| m.direction == Some(d)))
            .filter(|m| {
                f.from
                    .as_ref()
                    .is_none_or(|x| m.from_number.as_ref() == Some(x))
            })
            .filter(|m| {
                f.to.as_ref()
                    .is_none_or(|x| m.to_number.as_ref() == Some(x))
            })
            .filter(|m| {
                f.dialpad_user_id
                    .is_none_or(|u| m.dialpad_user_id == Some(u))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            desc_nulls_last(&a.sent_at, &b.sent_at)
                .then(b.created_at.cmp(&a.created_at))
                .then(a.id.cmp(&b.id))
        });
        Ok(page(v, req))
    }

    async fn get_message(&self, app: AppId, id: Uuid) -> StoreResult<Option<Message>> {
        Ok(self
            .t
            .lock()
            .messages
            .values()
            .find(|m| m.app_id == app && m.id == id)
            .cloned())
    }

    async fn list_voicemails(
        &self,
        app: AppId,
        f: &VoicemailFilter,
        req: PageRequest,
    ) -> StoreResult<Page<Voicemail>> {
        let t = self.t.lock();
        let mut v: Vec<Voicemail> = t
            .voicemails
            .values()
            .filter(|v| v.app_id == app)
            .filter(|v| {
                f.dialpad_user_id
                    .is_none_or(|u| v.dialpad_user_id == Some(u))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(page(v, req))
    }

    async fn get_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<Option<Voicemail>> {
        Ok(self
            .t
            .lock()
            .voicemails
            .get(&id)
            .filter(|v| v.app_id == app)
            .cloned())
    }

    async fn delete_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<bool> {
        let mut t = self.t.lock();
        if t.voicemails.get(&id).is_some_and(|v| v.app_id == app) {
            t.voicemails.remove(&id);
            return Ok(true);
        }
        Ok(false)
    }
}

#[async_trait]
impl MappingStore for MemoryStore {
    async fn upsert_mapping(
        &self,
        app: AppId,
        user: DialpadId,
        crm: &str,
        now: Timestamp,
    ) -> StoreResult<UserMapping> {
        let mut t = self.t.lock();
        if !t.apps.contains_key(&app) {
            return Err(StoreError::NotFound);
        }
        let m = t
            .mappings
            .entry((app, user))
            .and_modify(|m| {
                m.crm_user_id = crm.to_string();
                m.updated_at = now;
            })
            .or_insert_with(|| UserMapping {
                id: Uuid::new_v4(),
                app_id: app,
                dialpad_user_id: user,
                crm_user_id: crm.to_string(),
                created_at: now,
                updated_at: now,
            });
        Ok(m.clone())
    }

    async fn upsert_mappings(
        &self,
        app: AppId,
        pairs: &[(DialpadId, String)],
        now: Timestamp,
    ) -> StoreResult<usize> {
        if !self.t.lock().apps.contains_key(&app) {
            return Err(StoreError::NotFound);
        }
        for (u, c) in pairs {
            self.upsert_mapping(app, *u, c, now).await?;
        }
        Ok(pairs.len())
    }

    async fn get_mapping_by_dialpad(
        &self,
        app: AppId,
        user: DialpadId,
    ) -> StoreResult<Option<UserMapping>> {
        Ok(self.t.lock().mappings.get(&(app, user)).cloned())
    }

    async fn get_mapping_by_crm(&self, app: AppId, crm: &str) -> StoreResult<Option<UserMapping>> {
        let t = self.t.lock();
        Ok(t.mappings
            .values()
            .filter(|m| m.app_id == app && m.crm_user_id == crm)
            .min_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)))
            .cloned())
    }

    async fn list_mappings(&self, app: AppId, req: PageRequest) -> StoreResult<Page<UserMapping>> {
        let t = self.t.lock();
        let mut v: Vec<UserMapping> = t
            .mappings
            .values()
            .filter(|m| m.app_id == app)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(page(v, req))
    }

    async fn delete_mapping(&self, app: AppId, id: Uuid) -> StoreResult<bool> {
        let mut t = self.t.lock();
        let key = t
            .mappings
            .iter()
            .find(|(_, m)| m.app_id == app && m.id == id)
            .map(|(k, _)| *k);
        Ok(key.and_then(|k| t.mappings.remove(&k)).is_some())
    }

    async fn delete_mapping_by_dialpad(&self, app: AppId, user: DialpadId) -> StoreResult<bool> {
        Ok(self.t.lock().mappings.remove(&(app, user)).is_some())
    }
}

#[async_trait]
impl DialpadStore for MemoryStore {
    async fn upsert_connection(&self, conn: DialpadConnection) -> StoreResult<DialpadConnection> {
        let mut t = self.t.lock();
        if !t.apps.contains_key(&conn.app_id) {
            return Err(StoreError::NotFound);
        }
        if let Some(org) = conn.dialpad_org_id
            && t.connections
                .values()
                .any(|c| c.app_id != conn.app_id && c.dialpad_org_id == Some(org))
        {
            return Err(StoreError::Conflict(
                "dialpad org already linked to another app".into(),
            ));
        }
        t.connections.insert(conn.app_id, conn.clone());
        Ok(conn)
    }

    async fn get_connection(&self, app: AppId) -> StoreResult<Option<DialpadConnection>> {
        Ok(self.t.lock().connections.get(&app).cloned())
    }

    async fn find_app_by_org(&self, org: DialpadId) -> StoreResult<Option<AppId>> {
        let t = self.t.lock();
        Ok(t.connections
            .values()
            .find(|c| c.dialpad_org_id == Some(org))
            .map(|c| c.app_id)
            .filter(|a| t.apps.get(a).is_some_and(|r| r.app.is_active)))
    }

    async fn delete_connection(&self, app: AppId) -> StoreResult<bool> {
        Ok(self.t.lock().connections.remove(&app).is_some())
    }

    async fn upsert_webhook(&self, hook: DialpadWebhook) -> StoreResult<DialpadWebhook> {
        let mut t = self.t.lock();
        if !t.apps.contains_key(&hook.app_id) {
            return Err(StoreError::NotFound);
        }
        t.webhooks
            .retain(|w| !(w.app_id == hook.app_id && w.webhook_id == hook.webhook_id));
        t.webhooks.push(hook.clone());
        Ok(hook)
    }

    async fn list_webhooks(&self, app: AppId) -> StoreResult<Vec<DialpadWebhook>> {
        let t = self.t.lock();
        let mut v: Vec<DialpadWebhook> = t
            .webhooks
            .iter()
            .filter(|w| w.app_id == app)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    async fn get_webhook(&self, webhook_id: DialpadId) -> StoreResult<Option<DialpadWebhook>> {
        Ok(self
            .t
            .lock()
            .webhooks
            .iter()
            .find(|w| w.webhook_id == webhook_id)
            .cloned())
    }

    async fn delete_webhook(&self, webhook_id: DialpadId) -> StoreResult<bool> {
        let mut t = self.t.lock();
        let before = t.webhooks.len();
        t.webhooks.retain(|w| w.webhook_id != webhook_id);
        Ok(t.webhooks.len() != before)
    }

    async fn insert_subscription(
        &self,
        sub: DialpadSubscription,
    ) -> StoreResult<DialpadSubscription> {
        let mut t = self.t.lock();
        if !t.apps.contains_key(&sub.app_id) {
            return Err(StoreError::NotFound);
        }
        t.subscriptions.push(sub.clone());
        Ok(sub)
    }

    async fn list_subscriptions(&self, app: AppId) -> StoreResult<Vec<DialpadSubscription>> {
        let t = self.t.lock();
        let mut v: Vec<DialpadSubscription> = t
            .subscriptions
            .iter()
            .filter(|s| s.app_id == app)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
