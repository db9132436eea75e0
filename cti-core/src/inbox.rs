//! The [`Cti`] facade: ingest (verify → resolve tenant → dedupe → durable insert), the
//! processor (claim → normalize → apply → publish after commit), API keys, and live
//! subscriptions.
//!
//! ```
//! use std::sync::Arc;
//! use cti_core::{Cti, CtiConfig};
//! use cti_core::inbox::{WebhookRequest, IngestOutcome};
//! use cti_core::store::MemoryStore;
//! use cti_core::secrets::Secret;
//! use cti_core::verify::sign_hmac_b64;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cti = Cti::builder()
//!     .store(Arc::new(MemoryStore::new()))
//!     .config(CtiConfig { webhook_secret: Some(Secret::new("W".into())), ..CtiConfig::default() })
//!     .build();
//! let running = cti.start();
//!
//! // A tenant and its API key (the plaintext key is returned once).
//! let (app, key) = cti.create_app("Tenant A", Default::default()).await.unwrap();
//! let mut live = cti.subscribe(app.id, None);
//!
//! // A signed webhook (JSON + HMAC header, the test-tooling path of the spec).
//! let body = br#"{"event_type":"call.ring","call_id":1001,"direction":"inbound","user_id":12345}"#;
//! let sig = sign_hmac_b64(body, b"W");
//! let out = cti.ingest(WebhookRequest {
//!     body,
//!     content_type: Some("application/json"),
//!     signature: Some(&sig),
//!     app_key: Some(key.expose()),
//!     ..Default::default()
//! }).await.unwrap();
//! assert!(matches!(out, IngestOutcome::Accepted { .. }));
//!
//! // The processor applies it and pushes one realtime message.
//! match live.recv().await {
//!     Some(cti_core::fanout::Delivery::Event(e)) => assert_eq!(e.event, "call.ring"),
//!     other => panic!("{other:?}"),
//! }
//! running.shutdown(std::time::Duration::from_secs(5)).await;
//! # });
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::fanout::{BusSignal, EventBus, Hub, LocalBus, Subscription};
use crate::json::JsonText;
use crate::keys::{self, KeyCache, KeyHasher};
use crate::model::*;
use crate::normalize::normalize_json;
use crate::secrets::{DataCipher, Secret};
use crate::store::*;
use crate::verify::{VerifyConfig, VerifyError, WebhookVerifier, is_jwt_media_type};

/// Processor tuning (`PROCESSOR_*` variables of the server).
#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    /// Events claimed per round (default 50). While claims come back full (a backlog), the
    /// background workers double their claim size each round, up to 8 × this, and return to
    /// it once a claim is not full.
    pub batch_size: usize,
    /// Fallback poll interval when not woken (default 1 s).
    pub poll_interval: Duration,
    /// Attempts before an event is dead-lettered (default 10).
    pub max_attempts: u32,
    /// Lease of a claimed event (default 30 s).
    pub lease: Duration,
    /// First retry delay; doubles per attempt (default 1 s).
    pub backoff_base: Duration,
    /// Retry delay cap (default 5 min).
    pub backoff_cap: Duration,
    /// Concurrent workers in this process (default 2).
    pub workers: usize,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            batch_size: 50,
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            workers: 2,
        }
    }
}

impl ProcessorConfig {
    /// Delay before retry number `attempts` (1-based): base × 2^(attempts−1), capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_cap)
    }
}

/// Settings of a [`Cti`].
#[derive(Clone, Debug)]
pub struct CtiConfig {
    /// Global webhook secret (`DIALPAD_WEBHOOK_SECRET`): the legacy route's secret and the
    /// fallback of apps without a stored per-app secret.
    pub webhook_secret: Option<Secret<String>>,
    /// Pepper of API key lookup hashes (`API_KEY_PEPPER`).
    pub api_key_pepper: Option<Secret<Vec<u8>>>,
    /// Encryption of stored webhook secrets and tokens (`DATA_ENCRYPTION_KEY`).
    pub data_cipher: Option<DataCipher>,
    /// JWT checks.
    pub verify: VerifyConfig,
    /// Processor tuning.
    pub processor: ProcessorConfig,
    /// Per-subscriber queue (default 1024).
    pub subscriber_queue: usize,
    /// Positive cache of API key and webhook secret lookups (default 60 s, max 60 s advised).
    pub auth_cache_ttl: Duration,
    /// Finished inbox rows are deleted after this long (default 30 days).
    pub inbox_retention: Duration,
    /// Realtime messages are kept this long for resume (default 24 h).
    pub realtime_window: Duration,
    /// Relay poll interval: how often the outbox heads are re-read without a wake-up
    /// (default 100 ms).
    pub relay_poll: Duration,
    /// How often the API keys of live keyed subscriptions ([`Cti::subscribe_with_key`]) are
    /// re-checked against the store (default 2 s). A subscription whose key no longer
    /// authenticates — changed by another process (CLI, another instance whose bus signal was
    /// lost), or a rotation grace period that ended — is closed with code 4001 within this
    /// interval. Changes made through this `Cti` close subscriptions immediately.
    pub key_recheck: Duration,
    /// Concurrent inbox write batches (group commit; default 4). Each writer is a task of the
    /// runtime that calls [`Cti::start`], or a thread of its own (`cti-writer-<n>`) when the
    /// store asks for that ([`InboxStore::writer_threads`]).
    pub ingest_writers: usize,
    /// Largest group-commit batch (default 256).
    pub ingest_batch: usize,
    /// Process accepted events in the group-commit transaction that inserts them
    /// ([`InboxStore::inbox_insert_processed`]) instead of leaving every event to the
    /// processor's claim + complete transactions (default `true`; stores without support only
    /// insert, and events of a call with older unfinished events always wait for the
    /// processor).
    pub inline_processing: bool,
}

impl Default for CtiConfig {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            api_key_pepper: None,
            data_cipher: None,
            verify: VerifyConfig::default(),
            processor: ProcessorConfig::default(),
            subscriber_queue: crate::fanout::DEFAULT_QUEUE,
            auth_cache_ttl: Duration::from_secs(60),
            inbox_retention: Duration::from_secs(30 * 86_400),
            realtime_window: Duration::from_secs(86_400),
            relay_poll: Duration::from_millis(100),
            key_recheck: Duration::from_secs(2),
            ingest_writers: 4,
            ingest_batch: 256,
            inline_processing: true,
        }
    }
}

/// A webhook as received over HTTP (framework-agnostic).
#[derive(Clone, Copy, Debug, Default)]
pub struct WebhookRequest<'a> {
    /// Raw body bytes.
    pub body: &'a [u8],
    /// `Content-Type` header.
    pub content_type: Option<&'a str>,
    /// `x-dialpad-signature` (or the configured header), else `x-signature`.
    pub signature: Option<&'a str>,
    /// `x-app-api-key` (tenant resolution fallback).
    pub app_key: Option<&'a str>,
    /// Raw `:app_id` segment of `/webhooks/dialpad/:app_id`.
    pub path_app: Option<&'a str>,
    /// `x-event-type` header.
    pub event_type_header: Option<&'a str>,
}

/// Result of a successful ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored durably; answer `200 {"received":true}`.
    Accepted {
        /// Inbox row.
        event_id: Uuid,
        /// Tenant.
        app_id: AppId,
    },
    /// Already stored; answer `200 {"received":true,"duplicate":true}`.
    Duplicate {
        /// The original inbox row.
        event_id: Uuid,
        /// Tenant.
        app_id: AppId,
    },
}

/// Why a webhook was not accepted. [`IngestError::status`] and [`IngestError::public_message`]
/// give the spec's HTTP answer; `Display` gives the detailed reason for logs.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Signature/JWT rejection.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// JSON path: the body is not valid JSON (`400`).
    #[error("malformed JSON body")]
    MalformedJson,
    /// JSON path: valid JSON but not an object (`400`).
    #[error("webhook payload is not a JSON object")]
    NotAnObject,
    /// No active tenant could be resolved (`401 Unknown or unauthorized app`).
    #[error("unknown or unauthorized app: {0}")]
    UnknownApp(&'static str),
    /// The database is unreachable (`503`, Dialpad retries).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Any other storage failure (`500`).
    #[error("storage failure: {0}")]
    Storage(String),
}

impl IngestError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            IngestError::Verify(v) => v.status(),
            IngestError::MalformedJson | IngestError::NotAnObject => 400,
            IngestError::UnknownApp(_) => 401,
            IngestError::Unavailable(_) => 503,
            IngestError::Storage(_) => 500,
        }
    }

    /// The `error` text of the JSON body.
    pub fn public_message(&self) -> &'static str {
        match self {
            IngestError::Verify(v) => v.public_message(),
            IngestError::MalformedJson => "Invalid JSON",
            IngestError::NotAnObject => "Invalid webhook payload",
            IngestError::UnknownApp(_) => "Unknown or unauthorized app",
            IngestError::Unavailable(_) | IngestError::Storage(_) => "Webhook persistence failed",
        }
    }

    /// `true` for rejections of the request itself (counted by the webhook rate limit), as
    /// opposed to internal failures.
    pub fn is_rejection(&self) -> bool {
        !matches!(self, IngestError::Unavailable(_) | IngestError::Storage(_))
    }
}

fn ingest_store_err(e: &StoreError) -> IngestError {
    match e {
        StoreError::Unavailable(m) => IngestError::Unavailable(m.clone()),
        other => IngestError::Storage(other.to_string()),
    }
}

/// Errors of key and app management.
#[derive(Debug, thiserror::Error)]
pub enum CtiError {
    /// The app does not exist.
    #[error("app not found")]
    AppNotFound,
    /// The app is inactive.
    #[error("app is not active")]
    AppInactive,
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CtiError {
    fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => CtiError::AppNotFound,
            StoreError::Inactive => CtiError::AppInactive,
            other => CtiError::Store(other),
        }
    }
}

/// A resume request that cannot be served from the retained window.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Events after `since` were already purged: the client must resync through the REST API.
    #[error(
        "events after seq {since} are no longer retained (oldest kept: {oldest}); resync through the REST API"
    )]
    TooOld {
        /// Requested position.
        since: u64,
        /// Oldest retained sequence number.
        oldest: u64,
    },
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A small TTL map used for positive authentication caches.
struct TtlMap<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }
    fn get(&self, k: &K) -> Option<V> {
        let m = self.map.lock();
        m.get(k)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }
    fn insert(&self, k: K, v: V) {
        let mut m = self.map.lock();
        if m.len() > 100_000 {
            m.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        m.insert(k, (v, Instant::now()));
    }
    fn remove(&self, k: &K) {
        self.map.lock().remove(k);
    }
}

type InsertReply = oneshot::Sender<Result<InsertOutcome, IngestError>>;

/// An event waiting for its group commit: the event, its normalised result when the batch
/// will process it inline (computed by the request's task, in parallel, not by the writer
/// that serialises the batches), and where to send the outcome.
type Queued = (NewInboxEvent, Option<EventResult>, InsertReply);

struct Inner {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    hub: Hub,
    config: CtiConfig,
    verifier: WebhookVerifier,
    hasher: KeyHasher,
    key_cache: KeyCache,
    apps: TtlMap<AppId, App>,
    secrets: TtlMap<AppId, Arc<Vec<Secret<String>>>>,
    wake: Notify,
    insert_tx: mpsc::Sender<Queued>,
    insert_rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Events this process committed, handed to its relay without a read of the outbox
    /// (bounded; when full, the relay reads them from the store after the bus wake-up).
    published_tx: mpsc::Sender<Vec<PublishedEvent>>,
    published_rx: Mutex<Option<mpsc::Receiver<Vec<PublishedEvent>>>>,
    /// Newest committed `seq` per app not yet announced on the bus. The writers and workers
    /// record heads here and go on; the `signaller` task sends them (coalesced), so a bus
    /// round trip is never part of a batch's serial path or of a webhook's response time.
    /// Before [`Cti::start`] (no relay, no signaller), heads are sent inline.
    heads: Mutex<HashMap<AppId, u64>>,
    heads_ready: Notify,
}

impl Inner {
    /// Whether ingest batches are processed in their insert's transaction
    /// ([`CtiConfig::inline_processing`] and a store that supports it).
    fn processes_inline(&self) -> bool {
        self.config.inline_processing && self.store.processes_inline()
    }
}

/// Batches of committed events queued for this process's relay.
const LOCAL_PUBLISH_QUEUE: usize = 1024;

/// The embeddable CTI engine. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Cti {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cti")
            .field("store", &self.inner.store.backend())
            .finish()
    }
}

/// Builds a [`Cti`]: `Cti::builder().store(s).bus(b).clock(c).config(cfg).build()`.
#[derive(Default)]
pub struct CtiBuilder {
    store: Option<Arc<dyn Store>>,
    bus: Option<Arc<dyn EventBus>>,
    clock: Option<Arc<dyn Clock>>,
    config: CtiConfig,
}

impl CtiBuilder {
    /// Storage (required; [`MemoryStore`] when absent).
    pub fn store(mut self, s: Arc<dyn Store>) -> Self {
        self.store = Some(s);
        self
    }
    /// Cross-instance bus ([`LocalBus`] when absent).
    pub fn bus(mut self, b: Arc<dyn EventBus>) -> Self {
        self.bus = Some(b);
        self
    }
    /// Clock ([`SystemClock`] when absent).
    pub fn clock(mut self, c: Arc<dyn Clock>) -> Self {
        self.clock = Some(c);
        self
    }
    /// Settings.
    pub fn config(mut self, c: CtiConfig) -> Self {
        self.config = c;
        self
    }
    /// Builds the engine (no task is started until [`Cti::start`]).
    pub fn build(self) -> Cti {
        let config = self.config;
        let (tx, rx) = mpsc::channel(config.ingest_batch.max(1) * 64);
        let (published_tx, published_rx) = mpsc::channel(LOCAL_PUBLISH_QUEUE);
        let hasher = KeyHasher::new(
            config
                .api_key_pepper
                .as_ref()
                .map(|p| p.expose().as_slice()),
        );
        Cti {
            inner: Arc::new(Inner {
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                bus: self.bus.unwrap_or_else(|| Arc::new(LocalBus::new())),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                hub: Hub::new(),
                verifier: WebhookVerifier::new(config.verify.clone()),
                hasher,
                key_cache: KeyCache::new(config.auth_cache_ttl, 100_000),
                apps: TtlMap::new(config.auth_cache_ttl),
                secrets: TtlMap::new(config.auth_cache_ttl),
                wake: Notify::new(),
                insert_tx: tx,
                insert_rx: Mutex::new(Some(rx)),
                published_tx,
                published_rx: Mutex::new(Some(published_rx)),
                heads: Mutex::new(HashMap::new()),
                heads_ready: Notify::new(),
                config,
            }),
        }
    }
}

/// Event metadata read from a payload at ingest (stored as inbox columns).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventMeta {
    /// Explicit `event_type`/`type`, else the `x-event-type` header, else `state`.
    pub event_type: Option<String>,
    /// Call id (top-level `call_id`, or the legacy nested shapes).
    pub call_id: Option<DialpadId>,
    /// Dialpad state.
    pub state: Option<String>,
    /// `event_timestamp` (ms).
    pub event_timestamp: Option<i64>,
    /// Explicit `event_id` / `uuid`.
    pub event_id: Option<String>,
}

impl EventMeta {
    /// Reads the metadata of a payload.
    pub fn from_payload(p: &Value, type_header: Option<&str>) -> Self {
        let s = |v: &Value| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let state = p.get("state").and_then(s);
        let event_type = p
            .get("event_type")
            .and_then(s)
            .or_else(|| p.get("type").and_then(s))
            .or_else(|| type_header.filter(|h| !h.is_empty()).map(str::to_string))
            .or_else(|| state.clone());
        let call_id = ["call_id"]
            .iter()
            .filter_map(|k| p.get(*k))
            .chain(
                ["call", "recording", "voicemail"]
                    .iter()
                    .filter_map(|k| p.get(*k))
                    .flat_map(|o| [o.get("call_id"), o.get("id")])
                    .flatten(),
            )
            .find_map(DialpadId::from_json);
        let event_timestamp = p
            .get("event_timestamp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
        let event_id = p
            .get("event_id")
            .and_then(s)
            .or_else(|| p.get("uuid").and_then(s));
        Self {
            event_type,
            call_id,
            state,
            event_timestamp,
            event_id,
        }
    }
}

/// Every top-level member [`EventMeta::from_payload`] and `org_id` read.
const INGEST_MEMBERS: [&str; 14] = [
    "state",
    "event_type",
    "type",
    "call_id",
    "call",
    "recording",
    "voicemail",
    "event_timestamp",
    "event_id",
    "uuid",
    "organization_id",
    "org_id",
    "company",
    "company_id",
];

fn org_id(p: &Value) -> Option<DialpadId> {
    p.get("organization_id")
        .or_else(|| p.get("org_id"))
        .or_else(|| p.get("company").and_then(|c| c.get("id")))
        .or_else(|| p.get("company_id"))
        .and_then(DialpadId::from_json)
}

fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl Cti {
    /// A builder.
    pub fn builder() -> CtiBuilder {
        CtiBuilder::default()
    }

    /// The store (for reads: calls, messages, voicemails, mappings…).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The in-process subscriber hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The settings.
    pub fn config(&self) -> &CtiConfig {
        &self.inner.config
    }

    /// Current time of the configured clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Verifies, resolves the tenant, deduplicates and durably stores one webhook.
    /// Returns only after the commit (or a duplicate decision).
    pub async fn ingest(&self, req: WebhookRequest<'_>) -> Result<IngestOutcome, IngestError> {
        let inner = &self.inner;
        let now = inner.clock.now();

        // 1. Path tenant (per-app URL) decides which secrets apply.
        let path_app = match req.path_app {
            Some(raw) => {
                let id: AppId = raw
                    .parse()
                    .map_err(|_| IngestError::UnknownApp("path app id is not a UUID"))?;
                let app = self
                    .app_cached(id)
                    .await
                    .map_err(|e| ingest_store_err(&e))?;
                match app {
                    Some(a) if a.is_active => Some(a),
                    _ => return Err(IngestError::UnknownApp("path app unknown or inactive")),
                }
            }
            None => None,
        };
        let secrets = match &path_app {
            Some(a) => self
                .webhook_secrets(a.id)
                .await
                .map_err(|e| ingest_store_err(&e))?,
            None => Arc::new(inner.config.webhook_secret.iter().cloned().collect()),
        };
        let secret_bytes: Vec<&[u8]> = secrets.iter().map(|s| s.expose().as_bytes()).collect();

        // 2. Verify.
        let jwt = req.content_type.is_some_and(is_jwt_media_type);
        let payload = if jwt {
            inner
                .verifier
                .verify_jwt_text(req.body, &secret_bytes, now)?
        } else {
            if !req.content_type.is_some_and(is_json_media_type) {
                return Err(VerifyError::InvalidSignature("unsupported_media_type".into()).into());
            }
            let payload = if req.body.iter().all(u8::is_ascii_whitespace) {
                JsonText::assume_valid("{}")
            } else {
                std::str::from_utf8(req.body)
                    .ok()
                    .and_then(|text| JsonText::parse(text).ok())
                    .ok_or(IngestError::MalformedJson)?
            };
            inner
                .verifier
                .verify_hmac(req.body, req.signature, &secret_bytes)?;
            if !payload.as_str().trim_start().starts_with('{') {
                return Err(IngestError::NotAnObject);
            }
            payload
        };

        // The members ingest reads (tenant, dedupe key, inbox columns), decoded without
        // building the rest of the payload.
        let members = payload
            .select(&INGEST_MEMBERS)
            .ok_or(IngestError::NotAnObject)?;

        // 3. Tenant.
        let app_id = match path_app {
            Some(a) => a.id,
            None => {
                let by_key = match req.app_key {
                    Some(k) => self
                        .authenticate(k)
                        .await
                        .map_err(|e| ingest_store_err(&e))?
                        .map(|a| a.id),
                    None => None,
                };
                match by_key {
                    Some(a) => a,
                    None => match org_id(&members) {
                        Some(org) => inner
                            .store
                            .find_app_by_org(org)
                            .await
                            .map_err(|e| ingest_store_err(&e))?
                            .ok_or(IngestError::UnknownApp(
                                "org id not linked to an active app",
                            ))?,
                        None => {
                            return Err(IngestError::UnknownApp(
                                "no path app, valid key or org id",
                            ));
                        }
                    },
                }
            }
        };

        // 4. Dedupe key and durable insert (group commit).
        let meta = EventMeta::from_payload(&members, req.event_type_header);
        let dedupe_key = match &meta.event_id {
            Some(id) => format!("id:{id}"),
            None => hex::encode(crate::digest::sha256(req.body.trim_ascii())),
        };
        let ev = NewInboxEvent {
            id: Uuid::now_v7(),
            app_id,
            dedupe_key,
            event_type: meta.event_type,
            call_id: meta.call_id,
            state: meta.state,
            event_timestamp: meta.event_timestamp,
            payload,
            received_at: now,
        };
        let result = inner
            .processes_inline()
            .then(|| event_result(normalize_json(&ev.payload, ev.received_at)));
        let (tx, rx) = oneshot::channel();
        inner
            .insert_tx
            .send((ev, result, tx))
            .await
            .map_err(|_| IngestError::Unavailable("ingest writer stopped".into()))?;
        let outcome = rx
            .await
            .map_err(|_| IngestError::Unavailable("ingest writer stopped".into()))??;
        Ok(match outcome {
            // The writer woke the processor if the event was left for it.
            InsertOutcome::Inserted(event_id) => IngestOutcome::Accepted { event_id, app_id },
            InsertOutcome::Duplicate(event_id) => IngestOutcome::Duplicate { event_id, app_id },
        })
    }

    async fn app_cached(&self, id: AppId) -> StoreResult<Option<App>> {
        if let Some(a) = self.inner.apps.get(&id) {
            return Ok(Some(a));
        }
        let a = self.inner.store.get_app(id).await?;
        if let Some(a) = &a {
            self.inner.apps.insert(id, a.clone());
        }
        Ok(a)
    }

    /// Secrets that verify webhooks of `app`: its stored (decrypted) webhook secrets, else the
    /// global secret.
    async fn webhook_secrets(&self, app: AppId) -> StoreResult<Arc<Vec<Secret<String>>>> {
        if let Some(s) = self.inner.secrets.get(&app) {
            return Ok(s);
        }
        let hooks = self.inner.store.list_webhooks(app).await?;
        let mut out: Vec<Secret<String>> = Vec::new();
        if let Some(cipher) = &self.inner.config.data_cipher {
            for h in hooks.iter().filter_map(|h| h.secret_enc.as_deref()) {
                match cipher.decrypt(h) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        tracing::warn!(%app, error = %e, "cannot decrypt a stored webhook secret")
                    }
                }
            }
        }
        if out.is_empty() {
            out.extend(self.inner.config.webhook_secret.iter().cloned());
        }
        let out = Arc::new(out);
        self.inner.secrets.insert(app, out.clone());
        Ok(out)
    }

    /// Authenticates an API key: the active app it belongs to, or `None`. One HMAC and one
    /// indexed lookup, cached for `auth_cache_ttl`; legacy bcrypt keys (feature
    /// `legacy-bcrypt`) are verified on a miss and then backfilled.
    pub async fn authenticate(&self, key: &str) -> StoreResult<Option<App>> {
        let inner = &self.inner;
        let lookup = inner.hasher.lookup(key);
        if let Some(id) = inner.key_cache.get(&lookup)
            && let Some(app) = self.app_cached(id).await?
        {
            return Ok(app.is_active.then_some(app));
        }
        let now = inner.clock.now();
        if let Some(m) = inner.store.find_app_by_key(&lookup, now).await? {
            if !m.app.is_active {
                return Ok(None);
            }
            if m.current {
                inner.key_cache.insert(lookup, m.app.id);
                inner.apps.insert(m.app.id, m.app.clone());
            }
            return Ok(Some(m.app));
        }
        self.authenticate_legacy(key).await
    }

    #[cfg(feature = "legacy-bcrypt")]
    async fn authenticate_legacy(&self, key: &str) -> StoreResult<Option<App>> {
        if !keys::is_well_formed(key) && !key.starts_with("test_key_") {
            return Ok(None);
        }
        for legacy in self.inner.store.legacy_keys().await? {
            let (k, h) = (key.to_string(), legacy.bcrypt_hash.clone());
            let ok = tokio::task::spawn_blocking(move || keys::verify_legacy_bcrypt(&k, &h))
                .await
                .unwrap_or(false);
            if ok {
                let new = NewKey {
                    lookup: self.inner.hasher.lookup(key),
                    hint: keys::hint(key),
                };
                self.inner
                    .store
                    .backfill_key(legacy.app.id, &legacy.bcrypt_hash, new)
                    .await?;
                return Ok(Some(legacy.app));
            }
        }
        Ok(None)
    }

    #[cfg(not(feature = "legacy-bcrypt"))]
    async fn authenticate_legacy(&self, _key: &str) -> StoreResult<Option<App>> {
        Ok(None)
    }

    fn new_key(&self) -> (NewKey, Secret<String>) {
        let plain = keys::generate_key();
        let nk = NewKey {
            lookup: self.inner.hasher.lookup(plain.expose()),
            hint: keys::hint(plain.expose()),
        };
        (nk, plain)
    }

    /// Creates an app with its first key; returns the app and the plaintext key (shown once).
    pub async fn create_app(
        &self,
        name: &str,
        ctx: AuditContext,
    ) -> Result<(App, Secret<String>), CtiError> {
        let (nk, plain) = self.new_key();
        let app = self
            .inner
            .store
            .create_app(
                NewApp {
                    id: AppId::new(),
                    name: name.trim().to_string(),
                    key: nk,
                    now: self.now(),
                },
                ctx,
            )
            .await
            .map_err(CtiError::from_store)?;
        Ok((app, plain))
    }

    /// Issues a new key (rotation when the app has one). With `grace`, the previous key keeps
    /// working for that long. Live subscriptions authenticated with the old key are closed
    /// with code 4001 on every instance.
    pub async fn issue_key(
        &self,
        app: AppId,
        grace: Option<Duration>,
        ctx: AuditContext,
    ) -> Result<(KeyChangeOutcome, Secret<String>), CtiError> {
        let (nk, plain) = self.new_key();
        let now = self.now();
        let grace_until = grace
            .and_then(|g| chrono::Duration::from_std(g).ok())
            .map(|g| now + g);
        let out = self
            .inner
            .store
            .change_key(
                app,
                KeyChange::Issue {
                    key: nk,
                    grace_until,
                },
                ctx,
                now,
            )
            .await
            .map_err(CtiError::from_store)?;
        if grace.is_none() {
            self.app_changed(app).await;
        } else {
            self.invalidate(app);
        }
        Ok((out, plain))
    }

    /// Revokes the app's key; its live subscriptions are closed with code 4001.
    pub async fn revoke_key(
        &self,
        app: AppId,
        ctx: AuditContext,
    ) -> Result<KeyChangeOutcome, CtiError> {
        let out = self
            .inner
            .store
            .change_key(app, KeyChange::Revoke, ctx, self.now())
            .await
            .map_err(CtiError::from_store)?;
        self.app_changed(app).await;
        Ok(out)
    }

    /// Renames / (de)activates an app; deactivation closes its live subscriptions (4001).
    pub async fn update_app(&self, app: AppId, patch: AppPatch) -> Result<App, CtiError> {
        let deactivate = patch.is_active == Some(false);
        let out = self
            .inner
            .store
            .update_app(app, patch, self.now())
            .await
            .map_err(CtiError::from_store)?
            .ok_or(CtiError::AppNotFound)?;
        if deactivate {
            self.app_changed(app).await;
        } else {
            self.invalidate(app);
        }
        Ok(out)
    }

    /// Forgets cached authentication state of an app (call after changing webhook secrets).
    pub fn invalidate(&self, app: AppId) {
        self.inner.key_cache.invalidate_app(app);
        self.inner.apps.remove(&app);
        self.inner.secrets.remove(&app);
    }

    async fn app_changed(&self, app: AppId) {
        self.invalidate(app);
        self.inner.hub.close_app(app, 4001, APP_CHANGED_REASON);
        if let Err(e) = self
            .inner
            .bus
            .notify(BusSignal::AppChanged { app_id: app })
            .await
        {
            tracing::warn!(%app, error = %e, "could not notify other instances of an app change");
        }
    }

    /// Subscribes to an app's live events (optionally one CRM user's channel).
    pub fn subscribe(&self, app: AppId, crm_user: Option<String>) -> Subscription {
        self.inner
            .hub
            .subscribe(app, crm_user, self.inner.config.subscriber_queue)
    }

    /// Like [`Cti::subscribe`] for a subscriber that authenticated with `api_key`: the
    /// subscription is also closed (code 4001) as soon as that key stops authenticating, even
    /// when the change was made by another process on the same database (checked every
    /// [`CtiConfig::key_recheck`] while [`Cti::start`]'s tasks run).
    pub fn subscribe_with_key(
        &self,
        app: AppId,
        crm_user: Option<String>,
        api_key: &str,
    ) -> Subscription {
        self.inner.hub.subscribe_keyed(
            app,
            crm_user,
            Some(self.inner.hasher.lookup(api_key)),
            self.inner.config.subscriber_queue,
        )
    }

    /// Re-checks the keys of live keyed subscriptions; closes (4001) those whose key no longer
    /// authenticates for their app. Returns how many subscriptions were closed.
    pub async fn recheck_subscription_keys(&self) -> usize {
        let inner = &self.inner;
        let mut closed = 0;
        for (app, lookup) in inner.hub.keys() {
            let valid = match inner
                .store
                .find_app_by_key(&lookup, inner.clock.now())
                .await
            {
                Ok(found) => found.is_some_and(|m| m.app.id == app && m.app.is_active),
                Err(e) => {
                    tracing::warn!(%app, error = %e, "cannot re-check subscription keys");
                    continue;
                }
            };
            if !valid {
                self.invalidate(app);
                let n = inner.hub.close_key(app, &lookup, 4001, APP_CHANGED_REASON);
                tracing::info!(%app, closed = n, "api key no longer valid; subscriptions closed");
                closed += n;
            }
        }
        closed
    }

    /// Events of `app` after `since`, for a reconnecting client, in order. Subscribe first,
    /// then call this, then skip live events with `seq <=` the last returned one: no gap, no
    /// duplicate.
    pub async fn events_since(
        &self,
        app: AppId,
        since: u64,
    ) -> Result<Vec<PublishedEvent>, ResumeError> {
        let store = &self.inner.store;
        let mut out = Vec::new();
        let mut cursor = since;
        loop {
            let batch = store.events_since(app, cursor, 1000).await?;
            if out.is_empty()
                && let Some(first) = batch.first()
                && first.seq > cursor + 1
            {
                return Err(ResumeError::TooOld {
                    since,
                    oldest: first.seq,
                });
            }
            let done = batch.len() < 1000;
            if let Some(last) = batch.last() {
                cursor = last.seq;
            }
            out.extend(batch);
            if done {
                return Ok(out);
            }
            if out.len() > 100_000 {
                let oldest = store.oldest_event_seq(app).await?.unwrap_or(since);
                return Err(ResumeError::TooOld { since, oldest });
            }
        }
    }

    /// Claims and processes one batch; returns how many events were handled. The background
    /// processor ([`Cti::start`]) calls this in a loop; tools and tests may call it directly.
    ///
    /// The claimed events are normalized and then finished together with
    /// [`InboxStore::inbox_complete_batch`]
    /// (one transaction per batch on the SQL stores); the bus is told once per app about the
    /// last sequence number the batch published.
    pub async fn process_once(&self) -> Result<usize, StoreError> {
        self.process_batch(self.inner.config.processor.batch_size)
            .await
    }

    /// [`process_once`](Self::process_once) with a claim of up to `limit` events.
    async fn process_batch(&self, limit: usize) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let cfg = &inner.config.processor;
        let claimed = inner
            .store
            .inbox_claim(limit.max(1), cfg.lease, inner.clock.now())
            .await?;
        let n = claimed.len();
        if n == 0 {
            return Ok(0);
        }
        let items = claimed
            .iter()
            .map(|e| Completion {
                event_id: e.id,
                attempt: e.attempts,
                result: event_result(normalize_json(&e.payload, e.received_at)),
            })
            .collect();
        let now = inner.clock.now();
        let results = inner.store.inbox_complete_batch(items, now).await;
        let mut all = Vec::new();
        for (e, result) in claimed.iter().zip(results) {
            match result {
                Ok(published) => {
                    tracing::debug!(event_id = %e.id, app_id = %e.app_id, published = published.len(), "event processed");
                    all.extend(published);
                }
                Err(StoreError::LeaseLost) => {
                    tracing::warn!(event_id = %e.id, "lease lost; another worker owns the event");
                }
                Err(err) => self.record_failure(e, &err, now).await,
            }
        }
        self.announce(all).await;
        Ok(n)
    }

    /// Hands committed events to this process's relay (no outbox read) and tells every
    /// instance's relay, over the bus, the newest sequence number of each app.
    async fn announce(&self, mut published: Vec<PublishedEvent>) {
        if published.is_empty() {
            return;
        }
        published.sort_by_key(|p| (p.app_id.0, p.seq));
        let mut heads: Vec<(AppId, u64)> = Vec::new();
        for p in &published {
            match heads.last_mut() {
                Some((app, seq)) if *app == p.app_id => *seq = p.seq,
                _ => heads.push((p.app_id, p.seq)),
            }
        }
        // Before the bus signal, so the relay finds the events before it would read them.
        // A full queue only costs the relay a read. Without `start` (the relay's receiver not
        // taken) nothing is queued and the heads go out here, as no signaller runs either.
        let started = self.inner.published_rx.lock().is_none();
        if started {
            let _ = self.inner.published_tx.try_send(published);
            let mut pending = self.inner.heads.lock();
            for (app, seq) in heads {
                let head = pending.entry(app).or_insert(seq);
                *head = (*head).max(seq);
            }
            drop(pending);
            self.inner.heads_ready.notify_one();
        } else {
            self.signal_heads(heads).await;
        }
    }

    /// Sends `Events` bus signals for `heads` (newest `seq` per app).
    async fn signal_heads(&self, heads: impl IntoIterator<Item = (AppId, u64)>) {
        for (app_id, seq) in heads {
            if let Err(err) = self
                .inner
                .bus
                .notify(BusSignal::Events { app_id, seq })
                .await
            {
                tracing::warn!(error = %err, "bus notify failed; relays will catch up by polling");
            }
        }
    }

    /// Sends the heads recorded by [`Cti::announce`] since the last call.
    async fn flush_heads(&self) {
        let heads = std::mem::take(&mut *self.inner.heads.lock());
        self.signal_heads(heads).await;
    }

    /// Marks a failed attempt `failed` (with backoff) or `dead` after the last attempt.
    async fn record_failure(&self, e: &InboxEvent, err: &StoreError, now: Timestamp) {
        let cfg = &self.inner.config.processor;
        let retry_at = (e.attempts < cfg.max_attempts).then(|| {
            now + chrono::Duration::from_std(cfg.backoff(e.attempts))
                .unwrap_or(chrono::Duration::seconds(1))
        });
        tracing::warn!(event_id = %e.id, attempts = e.attempts, dead = retry_at.is_none(), error = %err, "event processing failed");
        if let Err(err2) = self
            .inner
            .store
            .inbox_fail(e.id, e.attempts, &err.to_string(), retry_at, now)
            .await
        {
            tracing::warn!(event_id = %e.id, error = %err2, "could not record the failure; the lease will expire");
        }
    }

    /// Starts the background tasks: ingest writers (group commit), processor workers, the
    /// outbox → hub relay and retention. Stop them with [`Running::shutdown`].
    pub fn start(&self) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_notify = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        // Writers (which process inline) and workers wait until the relay has read the outbox
        // heads, so nothing committed after start-up can be mistaken for "already delivered".
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        if let Some(rx) = self.inner.insert_rx.lock().take() {
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let own_threads = self.inner.store.writer_threads();
            for n in 0..self.inner.config.ingest_writers.max(1) {
                let writer = || insert_writer(self.clone(), rx.clone(), ready_rx.clone());
                if own_threads {
                    match spawn_writer_thread(n, writer()) {
                        Ok(stop) => {
                            tasks.push(stop);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start an ingest writer thread; running the writer as a task");
                        }
                    }
                }
                tasks.push(tokio::spawn(writer()));
            }
        }
        let mut workers = Vec::new();
        for _ in 0..self.inner.config.processor.workers.max(1) {
            workers.push(tokio::spawn(worker(
                self.clone(),
                stop.clone(),
                ready_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::relay::run(
            crate::relay::RelayParts {
                store: self.inner.store.clone(),
                bus: self.inner.bus.clone(),
                hub: self.inner.hub.clone(),
                poll: self.inner.config.relay_poll,
            },
            RelayHooks { cti: self.clone() },
            self.inner.published_rx.lock().take(),
            stop_notify.clone(),
            ready_tx,
        )));
        tasks.push(tokio::spawn(retention(self.clone(), stop_notify.clone())));
        tasks.push(tokio::spawn(key_watch(self.clone(), stop_notify.clone())));
        tasks.push(tokio::spawn(signaller(self.clone(), stop_notify.clone())));
        Running {
            cti: self.clone(),
            stop,
            stop_notify,
            workers,
            tasks,
        }
    }
}

/// Announces committed heads on the bus (see `Inner::heads`): one signal per app for
/// everything committed while the previous signals were being sent.
async fn signaller(cti: Cti, stop: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = cti.inner.heads_ready.notified() => cti.flush_heads().await,
            _ = stop.notified() => return,
        }
    }
}

/// Close reason of subscriptions whose key or app changed (code 4001).
const APP_CHANGED_REASON: &str = "api key rotated or revoked, or app deactivated";

/// Periodically closes keyed subscriptions whose key stopped authenticating.
async fn key_watch(cti: Cti, stop: Arc<Notify>) {
    let every = cti.inner.config.key_recheck.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                cti.recheck_subscription_keys().await;
            }
            _ = stop.notified() => return,
        }
    }
}

/// Callback of the relay for non-event signals.
pub(crate) struct RelayHooks {
    cti: Cti,
}

impl RelayHooks {
    #[cfg(test)]
    pub(crate) fn new(cti: Cti) -> Self {
        Self { cti }
    }
    pub(crate) fn app_changed(&self, app: AppId) {
        self.cti.invalidate(app);
        self.cti.inner.hub.close_app(app, 4001, APP_CHANGED_REASON);
    }
    pub(crate) fn inbox(&self) {
        self.cti.inner.wake.notify_one();
    }
}

async fn insert_writer(
    cti: Cti,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    mut ready: tokio::sync::watch::Receiver<bool>,
) {
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let max = cti.inner.config.ingest_batch.max(1);
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (e, r, reply) in batch {
            events.push(e);
            results.push(r);
            replies.push(reply);
        }
        match write_batch(&cti, events, results).await {
            Ok(outcomes) => {
                for (r, o) in replies.into_iter().zip(outcomes) {
                    let _ = r.send(Ok(o));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox insert failed");
                for r in replies {
                    let _ = r.send(Err(ingest_store_err(&e)));
                }
            }
        }
    }
}

/// Runs an ingest `writer` on a thread of its own (named `cti-writer-<n>`, marked for
/// [`crate::store::on_writer_thread`]), in a current-thread runtime, for stores that ask for it
/// ([`InboxStore::writer_threads`]). As a task of the server's runtime, a SQLite writer held a
/// worker for each transaction (`block_in_place` hands the worker's other tasks over), and
/// every writer, between two batches or two round trips of one, waited for its turn behind
/// the requests its last batch had just answered — the database stood idle meanwhile
/// (docs/performance.md, 2026-11-30 g and 2026-12-01 m).
///
/// The returned task only holds the thread's stop signal: aborting it (as
/// [`Running::shutdown`] does with every task) or dropping it with its runtime stops the
/// writer at its next await, as aborting the writer's task would.
fn spawn_writer_thread(
    n: usize,
    writer: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("cti-writer-{n}"))
        .spawn(move || {
            crate::store::mark_writer_thread();
            rt.block_on(async move {
                tokio::select! {
                    () = writer => {}
                    _ = stop_rx => {}
                }
            });
        })?;
    Ok(tokio::spawn(async move {
        let _stop = stop_tx;
        std::future::pending::<()>().await
    }))
}

/// Inserts one group-commit batch — processing it in the same transaction when
/// [`CtiConfig::inline_processing`] is on — publishes what it produced, and wakes the
/// processor for what is left pending.
async fn write_batch(
    cti: &Cti,
    events: Vec<NewInboxEvent>,
    results: Vec<Option<EventResult>>,
) -> StoreResult<Vec<InsertOutcome>> {
    let inner = &cti.inner;
    if !inner.processes_inline() {
        let outcomes = inner.store.inbox_insert(events).await?;
        if outcomes.iter().any(|o| !o.is_duplicate()) {
            inner.wake.notify_one();
        }
        return Ok(outcomes);
    }
    // Normalised by the requests' tasks (`ingest`); the same pure function otherwise.
    let results = events
        .iter()
        .zip(results)
        .map(|(e, r)| {
            Some(r.unwrap_or_else(|| event_result(normalize_json(&e.payload, e.received_at))))
        })
        .collect();
    let done = match inner
        .store
        .inbox_insert_processed(
            &events,
            results,
            inner.config.processor.lease,
            inner.clock.now(),
        )
        .await
    {
        Ok(done) => done,
        Err(e) => {
            // Never lose an event to a processing problem: store it for the processor.
            tracing::warn!(error = %e, "inline processing failed; inserting for the processor");
            let outcomes = inner.store.inbox_insert(events).await?;
            inner.wake.notify_one();
            return Ok(outcomes);
        }
    };
    let left = done
        .outcomes
        .iter()
        .zip(&done.processed)
        .any(|(o, p)| !o.is_duplicate() && !p);
    if left {
        inner.wake.notify_one();
    }
    cti.announce(done.published).await;
    Ok(done.outcomes)
}

/// What the stores do with a normalised event.
fn event_result(n: crate::normalize::Normalized) -> EventResult {
    match &n.event {
        crate::normalize::CtiEvent::Ignored { state } => {
            EventResult::Ignored(format!("ignored: {state}"))
        }
        _ => EventResult::Apply(Box::new(n)),
    }
}

/// How far a worker grows its claims while every claim comes back full (× `batch_size`).
const BACKLOG_BATCH_FACTOR: usize = 8;

async fn worker(cti: Cti, stop: Arc<AtomicBool>, mut ready: tokio::sync::watch::Receiver<bool>) {
    let poll = cti.inner.config.processor.poll_interval;
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let base = cti.inner.config.processor.batch_size.max(1);
    let max = base.saturating_mul(BACKLOG_BATCH_FACTOR);
    let mut limit = base;
    while !stop.load(Ordering::Acquire) {
        match cti.process_batch(limit).await {
            Ok(n) if n > 0 => {
                // A full claim means a backlog: claim more per transaction until it drains
                // (fewer commits and claim scans per event); back to the configured size after.
                limit = if n >= limit {
                    limit.saturating_mul(2).min(max)
                } else {
                    base
                };
                continue;
            }
            Ok(_) => limit = base,
            Err(e) => {
                limit = base;
                tracing::warn!(error = %e, "claiming events failed");
            }
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        let _ = tokio::time::timeout(poll, cti.inner.wake.notified()).await;
    }
}

async fn retention(cti: Cti, stop: Arc<Notify>) {
    loop {
        let now = cti.now();
        let cfg = &cti.inner.config;
        let inbox_before = now
            - chrono::Duration::from_std(cfg.inbox_retention).unwrap_or(chrono::Duration::days(30));
        let events_before = now
            - chrono::Duration::from_std(cfg.realtime_window).unwrap_or(chrono::Duration::days(1));
        match cti.inner.store.inbox_purge(inbox_before).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "inbox retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inbox retention failed"),
        }
        if let Err(e) = cti.inner.store.events_purge(events_before).await {
            tracing::warn!(error = %e, "realtime window purge failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.notified() => return,
        }
    }
}

/// Handle of the background tasks started by [`Cti::start`].
pub struct Running {
    cti: Cti,
    stop: Arc<AtomicBool>,
    stop_notify: Arc<Notify>,
    workers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops claiming new events, lets in-flight events finish (bounded by `drain`), closes
    /// live subscriptions with code 1001, waits (within `drain`, at most 5 s) until every
    /// [`crate::fanout::DrainGuard`] is dropped — a WebSocket drops its guard once its close
    /// frame is written — and stops every task.
    pub async fn shutdown(self, drain: Duration) {
        self.stop.store(true, Ordering::Release);
        self.cti.inner.wake.notify_waiters();
        let deadline = tokio::time::Instant::now() + drain;
        for w in self.workers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let abort = w.abort_handle();
            if tokio::time::timeout(left, w).await.is_err() {
                abort.abort();
            }
        }
        // Let the relays deliver what the workers just committed.
        self.cti.flush_heads().await;
        let _ = self.cti.inner.bus.notify(BusSignal::Resync).await;
        tokio::time::sleep(Duration::from_millis(50).min(drain)).await;
        self.cti.inner.hub.close_all(1001, "server shutting down");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.cti
            .inner
            .hub
            .wait_drained(left.min(Duration::from_secs(5)))
            .await;
        self.stop_notify.notify_waiters();
        for t in self.tasks {
            t.abort();
        }
    }
}
