//! Storage traits, the in-memory implementation and the shared conformance suite.
//!
//! Every backend (memory, SQLite, PostgreSQL) implements the same traits and must pass the
//! `conformance` module (feature `testing`). Stores only do I/O and locking: the decisions —
//! how an event changes a call, which realtime messages it produces — are pure functions in
//! [`crate::normalize`] that every store calls inside its transaction ([`apply_event`]).

mod inbox_types;
mod memory;

#[cfg(feature = "testing")]
pub mod conformance;

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use inbox_types::*;
pub use memory::MemoryStore;

use crate::model::*;
use crate::normalize::Normalized;

/// Errors a store reports. Callers act differently only on these variants.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (HTTP answers 503 / webhook 5xx so Dialpad retries).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The referenced row (usually the app) does not exist.
    #[error("not found")]
    NotFound,
    /// The app exists but is inactive and the operation requires an active app.
    #[error("app is not active")]
    Inactive,
    /// A uniqueness rule was violated (e.g. a Dialpad company already linked to another app).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The worker's lease on an inbox event was lost (another worker reclaimed it).
    #[error("lease lost")]
    LeaseLost,
    /// Any other backend failure (bug, corrupt row, …).
    #[error("storage error: {0}")]
    Backend(String),
}

impl StoreError {
    /// `true` when retrying later may succeed (outage, timeout).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Data of a new app with its first key.
#[derive(Clone, Debug)]
pub struct NewApp {
    /// Id to create.
    pub id: AppId,
    /// Trimmed name.
    pub name: String,
    /// First key.
    pub key: NewKey,
    /// Creation time.
    pub now: Timestamp,
}

/// A freshly issued key as stored: lookup hash and hint, never the plaintext.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Hex HMAC-SHA256(pepper, key) — see [`crate::keys`].
    pub lookup: String,
    /// `HINT(key)`.
    pub hint: String,
}

/// Change to an app's API key, applied under a row lock with its audit row.
#[derive(Clone, Debug)]
pub enum KeyChange {
    /// Issue a new key (audit `created` if the app had none, `rotated` otherwise). Requires an
    /// active app. With `grace_until`, the previous key keeps authenticating until then.
    Issue {
        /// The new key.
        key: NewKey,
        /// Keep the previous key valid until this time.
        grace_until: Option<Timestamp>,
    },
    /// Remove the key (and any grace key). Allowed on inactive apps.
    Revoke,
}

/// Result of a [`KeyChange`].
#[derive(Clone, Debug)]
pub struct KeyChangeOutcome {
    /// The app after the change.
    pub app: App,
    /// The audit row written in the same transaction.
    pub audit: AuditEntry,
}

/// Partial update of an app.
#[derive(Clone, Debug, Default)]
pub struct AppPatch {
    /// New name (already trimmed and validated).
    pub name: Option<String>,
    /// Activate / deactivate.
    pub is_active: Option<bool>,
}

/// An app found by key lookup hash.
#[derive(Clone, Debug)]
pub struct KeyMatch {
    /// The app (may be inactive; the caller decides).
    pub app: App,
    /// `false` when the key is the previous one, still inside its grace period.
    pub current: bool,
}

/// A legacy (bcrypt) key that has no lookup hash yet.
#[derive(Clone, Debug)]
pub struct LegacyKey {
    /// The app.
    pub app: App,
    /// `$2a$/$2b$/$2y$` hash from the original server.
    pub bcrypt_hash: String,
}

/// Tenants and their API keys.
#[async_trait]
pub trait AppStore: Send + Sync {
    /// Creates an app with its first key and the `created` audit row, atomically.
    async fn create_app(&self, app: NewApp, ctx: AuditContext) -> StoreResult<App>;
    /// Reads an app.
    async fn get_app(&self, id: AppId) -> StoreResult<Option<App>>;
    /// Lists apps, newest first.
    async fn list_apps(&self, page: PageRequest) -> StoreResult<Page<App>>;
    /// Updates name / active flag; `None` when the app does not exist.
    async fn update_app(
        &self,
        id: AppId,
        patch: AppPatch,
        now: Timestamp,
    ) -> StoreResult<Option<App>>;
    /// Finds the app whose current key — or previous key within its grace period at `now` —
    /// has this lookup hash.
    async fn find_app_by_key(&self, lookup: &str, now: Timestamp) -> StoreResult<Option<KeyMatch>>;
    /// Active apps that still only have a legacy bcrypt hash (no lookup hash).
    async fn legacy_keys(&self) -> StoreResult<Vec<LegacyKey>>;
    /// Records the lookup hash and hint of a legacy key after a successful bcrypt verification,
    /// provided the stored bcrypt hash is still `bcrypt_hash` (no-op otherwise).
    async fn backfill_key(&self, id: AppId, bcrypt_hash: &str, key: NewKey) -> StoreResult<()>;
    /// Issues or revokes a key under a row lock, writing the audit row in the same transaction.
    /// Concurrent calls serialise: each audit row's `old_key_hint` is the previous row's
    /// `new_key_hint`. Errors: [`StoreError::NotFound`], [`StoreError::Inactive`] (issue only).
    async fn change_key(
        &self,
        id: AppId,
        change: KeyChange,
        ctx: AuditContext,
        now: Timestamp,
    ) -> StoreResult<KeyChangeOutcome>;
    /// Audit rows of an app, newest first (ties broken by insertion order, newest first).
    async fn list_audit(&self, id: AppId, page: PageRequest) -> StoreResult<Page<AuditEntry>>;
}

thread_local! {
    static WRITER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `true` on a thread that [`Cti::start`](crate::Cti::start) runs an ingest writer on (see
/// [`InboxStore::writer_threads`]): a store may keep per-thread resources there — a database
/// connection driven by that thread's runtime, say — for the writer's batches. Such a thread
/// runs nothing but its writer, and its resources go with it when
/// [`Running::shutdown`](crate::inbox::Running::shutdown) ends it.
pub fn on_writer_thread() -> bool {
    WRITER_THREAD.with(std::cell::Cell::get)
}

/// Marks the current thread as an ingest writer's thread (see [`on_writer_thread`]).
pub(crate) fn mark_writer_thread() {
    WRITER_THREAD.with(|w| w.set(true));
}

/// The durable webhook inbox and the realtime outbox.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Inserts events if absent on `(app_id, dedupe_key)`, all in one transaction (group
    /// commit). Outcomes are in input order; a key repeated inside the batch is a duplicate of
    /// its first occurrence. A store may rely on a body-hash key implying its event time (see
    /// [`NewInboxEvent::dedupe_key`]).
    async fn inbox_insert(&self, events: Vec<NewInboxEvent>) -> StoreResult<Vec<InsertOutcome>>;

    /// [`InboxStore::inbox_insert`] that may also process the new events in the same
    /// transaction ("inline processing"): an inserted event whose `results[i]` is given is
    /// completed as if it had been claimed (attempt 1) and passed to
    /// [`InboxStore::inbox_complete`], in `(event_timestamp, arrival)` order — unless its call
    /// still has an older unfinished event, in which case it stays `pending` for the processor
    /// (per-call order). Saves the claim and completion transactions of the common case.
    ///
    /// The default only inserts (every new event stays `pending`); a store overrides it (and
    /// [`InboxStore::processes_inline`]) when it can do both in one transaction. If the
    /// override fails, the caller falls back to [`InboxStore::inbox_insert`], so an event is
    /// never lost to a processing problem.
    /// `events` stay the caller's (for its fallback); `results` has one entry per event.
    async fn inbox_insert_processed(
        &self,
        events: &[NewInboxEvent],
        results: Vec<Option<EventResult>>,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<InsertProcessed> {
        let _ = (results, lease, now);
        let outcomes = self.inbox_insert(events.to_vec()).await?;
        let processed = vec![false; outcomes.len()];
        Ok(InsertProcessed {
            outcomes,
            processed,
            published: Vec::new(),
        })
    }

    /// `true` when [`InboxStore::inbox_insert_processed`] processes events (callers skip
    /// normalising at ingest otherwise). Default `false`.
    fn processes_inline(&self) -> bool {
        false
    }

    /// `true` when [`Cti::start`](crate::Cti::start) should run each ingest writer on a thread
    /// of its own (`cti-writer-<n>`, a current-thread runtime) instead of as a task of the
    /// caller's runtime. Two kinds of store want that:
    ///
    /// * stores whose inbox writes run synchronously, holding the calling thread for the whole
    ///   transaction (SQLite's direct transactions): on a runtime worker a write would hold
    ///   the worker;
    /// * stores whose batch is a chain of round trips to a database server (PostgreSQL): as a
    ///   task, the writer waits behind the runtime's queue of requests at every reply — the
    ///   requests its own last batch just answered among them — while the database stands
    ///   idle. On its own thread it is woken the moment a reply arrives. Such a store may keep
    ///   a connection of its own per writer thread ([`on_writer_thread`] tells it where it
    ///   runs), so that the connection's socket is driven by that thread's runtime too.
    ///
    /// Default `false`.
    fn writer_threads(&self) -> bool {
        false
    }

    /// Claims up to `limit` due events (`pending`, or `failed` with `next_attempt_at <= now`,
    /// or `processing` with an expired lease), oldest first, setting `status = processing`,
    /// `locked_until = now + lease` and incrementing `attempts`. Never returns an event whose
    /// call (`app_id`, `call_id`) has another event under an unexpired lease, and returns at most
    /// one event per call per claim, the earliest by `(event_timestamp, received_at)`. Safe to
    /// call concurrently from many workers and instances: an event is never handed to two
    /// workers at once.
    async fn inbox_claim(
        &self,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InboxEvent>>;

    /// Finishes a claimed event in one transaction: applies `result` to the records (see
    /// [`apply_event`]), appends the realtime messages to the outbox with the app's next
    /// sequence numbers, and marks the event `done` (or `ignored`). Fails with
    /// [`StoreError::LeaseLost`] when the event is no longer held with this `attempt`.
    async fn inbox_complete(
        &self,
        event_id: Uuid,
        attempt: u32,
        result: EventResult,
        now: Timestamp,
    ) -> StoreResult<Vec<PublishedEvent>>;

    /// Finishes several claimed events; the result of each, in input order, is what
    /// [`InboxStore::inbox_complete`] would have returned for it.
    ///
    /// The default completes them one after another. Backends override it to finish the whole
    /// batch in one transaction (one commit, one disk flush, instead of one per event); a
    /// failure inside that transaction must not change the outcome of the other items (the
    /// SQL stores then roll back and complete the items one by one). Events of the same call
    /// never appear twice in one batch (a claim hands out one event per call).
    async fn inbox_complete_batch(
        &self,
        items: Vec<Completion>,
        now: Timestamp,
    ) -> Vec<StoreResult<Vec<PublishedEvent>>> {
        complete_each(self, items, now).await
    }

    /// Records a failed attempt: `failed` with `next_attempt_at = retry_at`, or `dead` when
    /// `retry_at` is `None`. Fails with [`StoreError::LeaseLost`] like `inbox_complete`.
    async fn inbox_fail(
        &self,
        event_id: Uuid,
        attempt: u32,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()>;

    /// Reads one event; with `app` the event must belong to it.
    async fn inbox_get(&self, app: Option<AppId>, id: Uuid) -> StoreResult<Option<InboxEvent>>;

    /// Puts a `dead` or `failed` event back to `pending` with `attempts = 0`, due now.
    /// Returns `false` when the event does not exist (or belongs to another app) or is not
    /// dead/failed.
    async fn inbox_redrive(
        &self,
        app: Option<AppId>,
        id: Uuid,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// Every counter over the inbox, `done` and `ignored` included (reads the retained
    /// history: for an operator's request, not for a scraped gauge).
    async fn inbox_stats(&self) -> StoreResult<InboxStats>;

    /// The backlog gauges (`unprocessed`, `processing`, `failed`, `dead`, oldest unprocessed).
    /// Polled by `/metrics`, so an implementation should not count finished events: the SQL
    /// stores read only their partial indexes of unfinished and dead-lettered events. The
    /// default derives it from [`InboxStore::inbox_stats`].
    async fn inbox_backlog(&self) -> StoreResult<InboxBacklog> {
        self.inbox_stats().await.map(InboxBacklog::from)
    }

    /// Deletes `done`/`ignored` events received before `before`; returns the count.
    async fn inbox_purge(&self, before: Timestamp) -> StoreResult<u64>;

    /// Outbox messages of `app` with `seq > after`, ascending, at most `limit`.
    async fn events_since(
        &self,
        app: AppId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<PublishedEvent>>;

    /// The last assigned sequence number of every app that has published events.
    async fn event_heads(&self) -> StoreResult<Vec<(AppId, u64)>>;

    /// The lowest sequence number of `app` still kept in the outbox (`None` when empty).
    async fn oldest_event_seq(&self, app: AppId) -> StoreResult<Option<u64>>;

    /// Deletes outbox messages created before `before`; returns the count.
    async fn events_purge(&self, before: Timestamp) -> StoreResult<u64>;
}

/// Filters of `GET /api/calls`.
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
    /// Restrict to these statuses (`/api/calls/active` passes `ringing` + `active`).
    pub statuses: Option<Vec<CallStatus>>,
    /// Direction.
    pub direction: Option<Direction>,
    /// Exact `from_number`.
    pub from: Option<String>,
    /// Exact `to_number`.
    pub to: Option<String>,
}

/// Filters of `GET /api/messages`.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    /// Direction.
    pub direction: Option<Direction>,
    /// Exact `from_number`.
    pub from: Option<String>,
    /// Exact `to_number`.
    pub to: Option<String>,
    /// Dialpad user.
    pub dialpad_user_id: Option<DialpadId>,
}

/// Filters of voicemail lists.
#[derive(Clone, Debug, Default)]
pub struct VoicemailFilter {
    /// Dialpad user.
    pub dialpad_user_id: Option<DialpadId>,
}

/// Calls, voicemails and messages (written only through [`InboxStore::inbox_complete`]).
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Calls of an app ordered `started_at DESC NULLS LAST, created_at DESC, id`.
    async fn list_calls(
        &self,
        app: AppId,
        filter: &CallFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Call>>;
    /// One call by internal id, scoped to the app.
    async fn get_call(&self, app: AppId, id: Uuid) -> StoreResult<Option<Call>>;
    /// One call by Dialpad id, scoped to the app.
    async fn get_call_by_dialpad_id(
        &self,
        app: AppId,
        call_id: DialpadId,
    ) -> StoreResult<Option<Call>>;
    /// Messages ordered `sent_at DESC NULLS LAST, created_at DESC, id`.
    async fn list_messages(
        &self,
        app: AppId,
        filter: &MessageFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Message>>;
    /// One message, scoped to the app.
    async fn get_message(&self, app: AppId, id: Uuid) -> StoreResult<Option<Message>>;
    /// Voicemails ordered `created_at DESC, id`.
    async fn list_voicemails(
        &self,
        app: AppId,
        filter: &VoicemailFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Voicemail>>;
    /// One voicemail, scoped to the app.
    async fn get_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<Option<Voicemail>>;
    /// Hard-deletes a voicemail; `false` when absent.
    async fn delete_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<bool>;
}

/// Dialpad user → CRM user mappings.
#[async_trait]
pub trait MappingStore: Send + Sync {
    /// Inserts or updates `(app, dialpad_user_id)` atomically; keeps the row id on update.
    /// [`StoreError::NotFound`] when the app does not exist.
    async fn upsert_mapping(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
        crm_user_id: &str,
        now: Timestamp,
    ) -> StoreResult<UserMapping>;
    /// Upserts all pairs in one transaction (all or nothing); returns the count.
    async fn upsert_mappings(
        &self,
        app: AppId,
        pairs: &[(DialpadId, String)],
        now: Timestamp,
    ) -> StoreResult<usize>;
    /// Mapping of a Dialpad user.
    async fn get_mapping_by_dialpad(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
    ) -> StoreResult<Option<UserMapping>>;
    /// Oldest mapping of a CRM user.
    async fn get_mapping_by_crm(
        &self,
        app: AppId,
        crm_user_id: &str,
    ) -> StoreResult<Option<UserMapping>>;
    /// Mappings ordered `created_at DESC, id`.
    async fn list_mappings(&self, app: AppId, page: PageRequest) -> StoreResult<Page<UserMapping>>;
    /// Deletes by row id; `false` when absent.
    async fn delete_mapping(&self, app: AppId, id: Uuid) -> StoreResult<bool>;
    /// Deletes by Dialpad user; `false` when absent.
    async fn delete_mapping_by_dialpad(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
    ) -> StoreResult<bool>;
}

/// Dialpad connections, webhooks and subscriptions of tenants.
#[async_trait]
pub trait DialpadStore: Send + Sync {
    /// Inserts or replaces the app's connection (one per app). [`StoreError::Conflict`] when
    /// the org id is already linked to another app; [`StoreError::NotFound`] for an unknown app.
    async fn upsert_connection(&self, conn: DialpadConnection) -> StoreResult<DialpadConnection>;
    /// The app's connection.
    async fn get_connection(&self, app: AppId) -> StoreResult<Option<DialpadConnection>>;
    /// The active app linked to a Dialpad company id.
    async fn find_app_by_org(&self, org: DialpadId) -> StoreResult<Option<AppId>>;
    /// Deletes the app's connection; `false` when absent.
    async fn delete_connection(&self, app: AppId) -> StoreResult<bool>;
    /// Inserts or replaces a webhook by `(app_id, webhook_id)`.
    async fn upsert_webhook(&self, hook: DialpadWebhook) -> StoreResult<DialpadWebhook>;
    /// Webhooks of an app, newest first.
    async fn list_webhooks(&self, app: AppId) -> StoreResult<Vec<DialpadWebhook>>;
    /// A webhook by Dialpad id (any app).
    async fn get_webhook(&self, webhook_id: DialpadId) -> StoreResult<Option<DialpadWebhook>>;
    /// Deletes a webhook by Dialpad id; `false` when absent.
    async fn delete_webhook(&self, webhook_id: DialpadId) -> StoreResult<bool>;
    /// Records a subscription.
    async fn insert_subscription(
        &self,
        sub: DialpadSubscription,
    ) -> StoreResult<DialpadSubscription>;
    /// Subscriptions of an app, newest first.
    async fn list_subscriptions(&self, app: AppId) -> StoreResult<Vec<DialpadSubscription>>;
}

/// Everything the [`crate::Cti`] facade needs from storage.
#[async_trait]
pub trait Store:
    AppStore + InboxStore + RecordStore + MappingStore + DialpadStore + Send + Sync + 'static
{
    /// Cheap connectivity check (`SELECT 1`); [`StoreError::Unavailable`] when down.
    async fn ping(&self) -> StoreResult<()>;
    /// Short backend name for logs and metrics (`memory`, `sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
}

/// Completes `items` one after another with [`InboxStore::inbox_complete`]: the default
/// [`InboxStore::inbox_complete_batch`], and the fallback of stores that batch.
pub async fn complete_each<S: InboxStore + ?Sized>(
    store: &S,
    items: Vec<Completion>,
    now: Timestamp,
) -> Vec<StoreResult<Vec<PublishedEvent>>> {
    let mut out = Vec::with_capacity(items.len());
    for c in items {
        out.push(
            store
                .inbox_complete(c.event_id, c.attempt, c.result, now)
                .await,
        );
    }
    out
}

/// One item of [`InboxStore::inbox_complete_batch`]: the arguments of
/// [`InboxStore::inbox_complete`] for one claimed event.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The claimed event.
    pub event_id: Uuid,
    /// The claim's attempt number (the lease token).
    pub attempt: u32,
    /// What to do with it.
    pub result: EventResult,
}

/// What [`InboxStore::inbox_insert_processed`] did with a batch.
#[derive(Clone, Debug, Default)]
pub struct InsertProcessed {
    /// Insert outcome of each event, in input order.
    pub outcomes: Vec<InsertOutcome>,
    /// Whether each event was inserted *and* finished in the same transaction (`false`: a
    /// duplicate, or left `pending` for the processor).
    pub processed: Vec<bool>,
    /// The realtime messages the processed events appended to the outbox, in sequence order
    /// per app (publish them after the call returns: the transaction is committed).
    pub published: Vec<PublishedEvent>,
}

/// What a processed event does, decided by [`crate::normalize`].
#[derive(Clone, Debug)]
pub enum EventResult {
    /// Apply these record changes.
    Apply(Box<Normalized>),
    /// Nothing to apply; mark `ignored` with this reason.
    Ignored(String),
}

/// The rows an event touches, loaded (and locked) by the store before [`apply_event`].
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// The call of `normalized.call` (or of the voicemail's call id).
    pub call: Option<Call>,
    /// The voicemail with the same `(app, dialpad_call_id)`.
    pub voicemail: Option<Voicemail>,
    /// The message with the same `(app, dialpad_message_id)`.
    pub message: Option<Message>,
    /// CRM user mapped to the Dialpad user the event targets (see [`target_user`]).
    pub crm_user: Option<String>,
}

/// Rows to write and messages to append, computed by [`apply_event`].
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Call to insert or update (by `(app_id, dialpad_call_id)`).
    pub call: Option<Call>,
    /// Voicemail to insert or update (by id).
    pub voicemail: Option<Voicemail>,
    /// Message to insert or update (by `(app_id, dialpad_message_id)`).
    pub message: Option<Message>,
    /// Realtime messages for the outbox, in order.
    pub outbox: Vec<OutboxMessage>,
}

pub use crate::normalize::apply::{apply_event, target_user};
