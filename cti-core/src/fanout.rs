//! Live delivery: the in-process [`Hub`] of subscribers and the cross-instance [`EventBus`].
//!
//! * [`Hub`] keeps subscriptions per app, optionally narrowed to one CRM user. Each subscriber
//!   has a bounded queue (default 1024). Publishing never waits: a subscriber whose queue is full
//!   is dropped and gets [`Delivery::Lagged`], so one slow client never delays the others.
//! * A subscriber costs one small allocation while idle: its queue is a `VecDeque` that only
//!   allocates when events are waiting and is released again once it has been drained, so the
//!   bound is a limit, not a reservation (a tokio `mpsc` channel would pre-allocate a block of
//!   slots and cache-padded state per subscriber).
//! * Every event is wrapped once in a [`LiveEvent`] shared by all its subscribers, which also
//!   caches the event's wire text: serialised once per event, not once per socket.
//! * Subscriptions may remember the lookup hash of the API key they were authenticated with
//!   ([`Hub::subscribe_keyed`]) so that exactly those can be closed when the key stops working
//!   ([`Hub::close_key`]).
//! * [`EventBus`] only *wakes* instances ("app X has events up to seq N"); events themselves live
//!   in the store's outbox and are read by sequence number (see [`crate::relay`]). [`LocalBus`] is
//!   the in-process bus; `cti_sqlx::PgBus` uses PostgreSQL `LISTEN/NOTIFY`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, broadcast};

use crate::model::AppId;
use crate::store::PublishedEvent;

/// Default per-subscriber queue length.
pub const DEFAULT_QUEUE: usize = 1024;

/// A drained queue whose buffer grew beyond this many slots gives the memory back.
const KEEP_CAPACITY: usize = 16;

/// A committed event as delivered to live subscribers: the stored event (reachable through
/// `Deref`) and its wire text, computed on first use and shared by every subscriber.
pub struct LiveEvent {
    event: Arc<PublishedEvent>,
    wire: OnceLock<Arc<str>>,
}

impl LiveEvent {
    /// Wraps a published event.
    pub fn new(event: Arc<PublishedEvent>) -> Self {
        Self {
            event,
            wire: OnceLock::new(),
        }
    }

    /// The published event.
    pub fn event(&self) -> &Arc<PublishedEvent> {
        &self.event
    }

    /// [`PublishedEvent::to_wire`] as JSON text, serialised once for all subscribers.
    pub fn wire_text(&self) -> &Arc<str> {
        self.wire
            .get_or_init(|| Arc::from(self.event.to_wire().to_string()))
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = PublishedEvent;
    fn deref(&self) -> &PublishedEvent {
        &self.event
    }
}

impl PartialEq for LiveEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event
    }
}

impl std::fmt::Debug for LiveEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.event.fmt(f)
    }
}

/// Why a subscription ended.
enum End {
    Lagged,
    Closed { code: u16, reason: String },
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Arc<LiveEvent>>,
    end: Option<End>,
}

/// One subscriber, shared by the hub (to publish) and its [`Subscription`] (to receive).
struct Slot {
    id: u64,
    crm_user: Option<Box<str>>,
    /// Lookup hash of the API key the subscriber authenticated with.
    key: Option<Box<str>>,
    capacity: usize,
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Slot {
    /// Ends the subscription unless it already ended; queued events are still delivered first.
    fn end(&self, end: End) {
        let mut q = self.queue.lock();
        if q.end.is_none() {
            q.end = Some(end);
        }
        drop(q);
        self.ready.notify_one();
    }

    fn wants(&self, event: &LiveEvent) -> bool {
        match (&self.crm_user, &event.target_crm_user) {
            (Some(want), Some(target)) => **want == **target,
            _ => true,
        }
    }
}

#[derive(Default)]
struct HubInner {
    apps: RwLock<HashMap<AppId, Vec<Arc<Slot>>>>,
    next_id: AtomicU64,
    /// Subscriptions registered in `apps`.
    total: AtomicU64,
    /// Live [`DrainGuard`]s.
    guards: AtomicU64,
    released: Notify,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        for slots in self.apps.get_mut().values() {
            for s in slots {
                s.end(End::Closed {
                    code: 1001,
                    reason: "hub closed".into(),
                });
            }
        }
    }
}

/// In-process registry of live subscribers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connection_count())
            .finish()
    }
}

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A committed event.
    Event(Arc<LiveEvent>),
    /// The queue overflowed; the subscription is over (resume with `since`).
    Lagged,
    /// The hub closed the subscription (e.g. code 4001 after a key rotation).
    Closed {
        /// WebSocket close code to use.
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    app: AppId,
    slot: Arc<Slot>,
    hub: Weak<HubInner>,
    done: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("app", &self.app)
            .field("id", &self.slot.id)
            .field("done", &self.done)
            .finish()
    }
}

impl Subscription {
    /// The next delivery; `None` after `Lagged`/`Closed` has been returned. Cancel-safe:
    /// nothing is lost when the future is dropped before it completes.
    pub async fn recv(&mut self) -> Option<Delivery> {
        if self.done {
            return None;
        }
        loop {
            {
                let mut q = self.slot.queue.lock();
                if let Some(event) = q.items.pop_front() {
                    if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
                        q.items = VecDeque::new();
                    }
                    return Some(Delivery::Event(event));
                }
                if let Some(end) = q.end.take() {
                    self.done = true;
                    return Some(match end {
                        End::Lagged => Delivery::Lagged,
                        End::Closed { code, reason } => Delivery::Closed { code, reason },
                    });
                }
            }
            // A notification sent between the check above and this wait is kept as a permit.
            self.slot.ready.notified().await;
        }
    }

    /// The next queued event if one is waiting right now; never waits, and leaves the end of
    /// the subscription (lagged/closed) to [`Subscription::recv`]. Lets a consumer write a burst
    /// of events with one flush.
    pub fn try_next_event(&mut self) -> Option<Arc<LiveEvent>> {
        if self.done {
            return None;
        }
        let mut q = self.slot.queue.lock();
        let event = q.items.pop_front()?;
        if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
            q.items = VecDeque::new();
        }
        Some(event)
    }

    /// The app this subscription belongs to.
    pub fn app_id(&self) -> AppId {
        self.app
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            Hub { inner: hub }.remove(self.app, &[self.slot.id]);
        }
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to an app's events. With `crm_user`, only events targeted at that CRM user
    /// and events without a target are delivered; without it, every event of the app.
    pub fn subscribe(&self, app: AppId, crm_user: Option<String>, queue: usize) -> Subscription {
        self.subscribe_keyed(app, crm_user, None, queue)
    }

    /// Like [`Hub::subscribe`], remembering the lookup hash of the API key the subscriber
    /// authenticated with (see [`Hub::keys`] and [`Hub::close_key`]).
    pub fn subscribe_keyed(
        &self,
        app: AppId,
        crm_user: Option<String>,
        key_lookup: Option<String>,
        queue: usize,
    ) -> Subscription {
        let slot = Arc::new(Slot {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            crm_user: crm_user.map(String::into_boxed_str),
            key: key_lookup.map(String::into_boxed_str),
            capacity: queue.max(1),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        self.inner
            .apps
            .write()
            .entry(app)
            .or_default()
            .push(slot.clone());
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        Subscription {
            app,
            slot,
            hub: Arc::downgrade(&self.inner),
            done: false,
        }
    }

    /// Delivers an event to every matching subscriber of its app without waiting; returns the
    /// number of subscribers it was queued for. Subscribers with a full queue are dropped
    /// (they receive [`Delivery::Lagged`] after the events already queued).
    pub fn publish(&self, event: Arc<PublishedEvent>) -> usize {
        self.publish_run(&[Arc::new(LiveEvent::new(event))])
    }

    /// Delivers events like [`Hub::publish`], in order, taking each subscriber's queue lock and
    /// waking each subscriber once per run of consecutive events of one app rather than once
    /// per event: a subscriber that writes to a socket gets the run in one write. Returns the
    /// number of (event, subscriber) deliveries.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Arc<PublishedEvent>>) -> usize {
        let events: Vec<Arc<LiveEvent>> = events
            .into_iter()
            .map(|e| Arc::new(LiveEvent::new(e)))
            .collect();
        events
            .chunk_by(|a, b| a.app_id == b.app_id)
            .map(|run| self.publish_run(run))
            .sum()
    }

    /// [`Hub::publish_all`] for a non-empty run of events of one app.
    fn publish_run(&self, events: &[Arc<LiveEvent>]) -> usize {
        let app = events[0].app_id;
        let mut delivered = 0;
        let mut overflow = Vec::new();
        {
            let apps = self.inner.apps.read();
            let Some(slots) = apps.get(&app) else {
                return 0;
            };
            for s in slots.iter() {
                let mut queued = false;
                let mut q = s.queue.lock();
                for event in events.iter().filter(|e| s.wants(e)) {
                    if q.end.is_some() {
                        break;
                    }
                    if q.items.len() >= s.capacity {
                        q.end = Some(End::Lagged);
                        overflow.push(s.id);
                    } else {
                        q.items.push_back(event.clone());
                        delivered += 1;
                    }
                    queued = true;
                }
                drop(q);
                if queued {
                    s.ready.notify_one();
                }
            }
        }
        if !overflow.is_empty() {
            self.remove(app, &overflow);
        }
        delivered
    }

    /// Closes every subscription of an app with a WebSocket close code (4001 after a key
    /// rotation/revocation or deactivation, 1001 on shutdown). Events already queued are
    /// delivered first.
    pub fn close_app(&self, app: AppId, code: u16, reason: &str) {
        let slots = self.inner.apps.write().remove(&app).unwrap_or_default();
        self.inner
            .total
            .fetch_sub(slots.len() as u64, Ordering::Relaxed);
        for s in slots {
            s.end(End::Closed {
                code,
                reason: reason.to_string(),
            });
        }
    }

    /// Closes the subscriptions of `app` that were authenticated with the key whose lookup
    /// hash is `key_lookup`; returns how many.
    pub fn close_key(&self, app: AppId, key_lookup: &str, code: u16, reason: &str) -> usize {
        let closed: Vec<Arc<Slot>> = {
            let mut apps = self.inner.apps.write();
            let Some(slots) = apps.get_mut(&app) else {
                return 0;
            };
            let (closed, kept) = std::mem::take(slots)
                .into_iter()
                .partition(|s| s.key.as_deref() == Some(key_lookup));
            *slots = kept;
            if slots.is_empty() {
                apps.remove(&app);
            }
            closed
        };
        self.inner
            .total
            .fetch_sub(closed.len() as u64, Ordering::Relaxed);
        for s in &closed {
            s.end(End::Closed {
                code,
                reason: reason.to_string(),
            });
        }
        closed.len()
    }

    /// The distinct `(app, key lookup hash)` pairs of the live keyed subscriptions.
    pub fn keys(&self) -> Vec<(AppId, String)> {
        let apps = self.inner.apps.read();
        let mut seen = HashSet::new();
        for (app, slots) in apps.iter() {
            for s in slots {
                if let Some(k) = &s.key {
                    seen.insert((*app, k.as_ref()));
                }
            }
        }
        seen.into_iter().map(|(a, k)| (a, k.to_string())).collect()
    }

    /// Closes every subscription of every app.
    pub fn close_all(&self, code: u16, reason: &str) {
        let apps: Vec<AppId> = self.inner.apps.read().keys().copied().collect();
        for a in apps {
            self.close_app(a, code, reason);
        }
    }

    /// A guard a connection (e.g. a WebSocket) holds while it delivers events, so that a
    /// shutdown can wait for it to finish closing (see [`Hub::wait_drained`]).
    pub fn drain_guard(&self) -> DrainGuard {
        self.inner.guards.fetch_add(1, Ordering::AcqRel);
        DrainGuard {
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// Waits until every [`DrainGuard`] has been dropped (after [`Hub::close_all`]: until every
    /// socket has written its close frame), at most `limit`. Returns `true` when none is left.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let released = self.inner.released.notified();
                if self.inner.guards.load(Ordering::Acquire) == 0 {
                    return;
                }
                released.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Number of live subscriptions.
    pub fn connection_count(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Number of apps with at least one subscription.
    pub fn app_count(&self) -> usize {
        self.inner.apps.read().len()
    }

    fn remove(&self, app: AppId, ids: &[u64]) {
        let mut apps = self.inner.apps.write();
        if let Some(slots) = apps.get_mut(&app) {
            let before = slots.len();
            slots.retain(|s| !ids.contains(&s.id));
            let removed = before - slots.len();
            self.inner
                .total
                .fetch_sub(removed as u64, Ordering::Relaxed);
            if slots.is_empty() {
                apps.remove(&app);
            }
        }
    }
}

/// Held by a connection while it delivers; see [`Hub::drain_guard`].
pub struct DrainGuard {
    hub: Weak<HubInner>,
}

impl std::fmt::Debug for DrainGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrainGuard")
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade()
            && hub.guards.fetch_sub(1, Ordering::AcqRel) == 1
        {
            hub.released.notify_waiters();
        }
    }
}

/// A wake-up signal carried by an [`EventBus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusSignal {
    /// `app` has committed outbox events up to `seq`.
    Events {
        /// App.
        app_id: AppId,
        /// Highest committed sequence number.
        seq: u64,
    },
    /// New inbox events are waiting for a worker.
    Inbox,
    /// Signals may have been missed (reconnect, lag): re-read the heads of every app.
    Resync,
    /// An app's keys or active state changed: drop cached authentications and close its live
    /// subscriptions with code 4001 (key rotated/revoked, app deactivated).
    AppChanged {
        /// App.
        app_id: AppId,
    },
}

/// Error of a bus operation.
#[derive(Debug, thiserror::Error)]
#[error("event bus: {0}")]
pub struct BusError(pub String);

/// Cross-instance wake-ups. Implementations never carry event bodies.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Sends a signal to every instance (including this one).
    async fn notify(&self, signal: BusSignal) -> Result<(), BusError>;
    /// Receives signals from every instance.
    fn subscribe(&self) -> broadcast::Receiver<BusSignal>;
}

/// The in-process bus (single instance).
#[derive(Clone, Debug)]
pub struct LocalBus {
    tx: broadcast::Sender<BusSignal>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    /// A bus with room for 4096 pending signals per receiver (a lagging receiver resyncs).
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
        }
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn notify(&self, signal: BusSignal) -> Result<(), BusError> {
        let _ = self.tx.send(signal);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusSignal> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AppId;

    fn ev(app: AppId, seq: u64, target: Option<&str>) -> Arc<PublishedEvent> {
        Arc::new(PublishedEvent {
            app_id: app,
            seq,
            event: "call.ring".into(),
            payload: serde_json::json!({"event": "call.ring"}),
            target_crm_user: target.map(str::to_string),
            created_at: chrono::Utc::now(),
        })
    }

    fn seq(d: Option<Delivery>) -> u64 {
        match d {
            Some(Delivery::Event(e)) => e.seq,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn routes_by_app_and_crm_user() {
        let hub = Hub::new();
        let (a, b) = (AppId::new(), AppId::new());
        let mut all_a = hub.subscribe(a, None, 8);
        let mut crm1 = hub.subscribe(a, Some("crm_1".into()), 8);
        let mut crm2 = hub.subscribe(a, Some("crm_2".into()), 8);
        let mut all_b = hub.subscribe(b, None, 8);
        assert_eq!(hub.publish(ev(a, 1, Some("crm_1"))), 2);
        assert_eq!(hub.publish(ev(a, 2, None)), 3);
        assert_eq!(seq(all_a.recv().await), 1);
        assert_eq!(seq(all_a.recv().await), 2);
        assert_eq!(seq(crm1.recv().await), 1);
        assert_eq!(seq(crm1.recv().await), 2);
        assert_eq!(seq(crm2.recv().await), 2);
        hub.close_app(b, 4001, "key revoked");
        assert_eq!(
            all_b.recv().await,
            Some(Delivery::Closed {
                code: 4001,
                reason: "key revoked".into()
            })
        );
        assert_eq!(hub.connection_count(), 3);
    }

    #[tokio::test]
    async fn slow_subscriber_is_dropped_with_lagged_and_others_continue() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut slow = hub.subscribe(app, None, 2);
        let mut fast = hub.subscribe(app, None, 16);
        for s in 1..=5 {
            hub.publish(ev(app, s, None));
            assert_eq!(seq(fast.recv().await), s);
        }
        assert_eq!(seq(slow.recv().await), 1);
        assert_eq!(seq(slow.recv().await), 2);
        assert_eq!(slow.recv().await, Some(Delivery::Lagged));
        assert_eq!(slow.recv().await, None);
        assert_eq!(hub.connection_count(), 1);
    }

    #[tokio::test]
    async fn close_after_queued_events_keeps_its_code_even_when_the_queue_is_full() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut sub = hub.subscribe(app, None, 2);
        hub.publish(ev(app, 1, None));
        hub.publish(ev(app, 2, None));
        hub.close_app(app, 4001, "revoked");
        assert_eq!(seq(sub.recv().await), 1);
        assert_eq!(seq(sub.recv().await), 2);
        assert_eq!(
            sub.recv().await,
            Some(Delivery::Closed {
                code: 4001,
                reason: "revoked".into()
            })
        );
    }

    #[tokio::test]
    async fn recv_wakes_up_for_later_events_and_is_cancel_safe() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut sub = hub.subscribe(app, None, 4);
        // A cancelled wait loses nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), sub.recv())
                .await
                .is_err()
        );
        let h = hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            h.publish(ev(app, 1, None));
        });
        assert_eq!(seq(sub.recv().await), 1);
    }

    #[tokio::test]
    async fn events_are_shared_and_serialised_once() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut a = hub.subscribe(app, None, 4);
        let mut b = hub.subscribe(app, None, 4);
        hub.publish(ev(app, 7, None));
        let (Some(Delivery::Event(x)), Some(Delivery::Event(y))) = (a.recv().await, b.recv().await)
        else {
            panic!("no event");
        };
        assert!(Arc::ptr_eq(&x, &y));
        assert!(Arc::ptr_eq(x.wire_text(), y.wire_text()));
        let wire: serde_json::Value = serde_json::from_str(x.wire_text()).unwrap();
        assert_eq!(wire["seq"], 7);
        assert_eq!(wire["event"], "call.ring");
    }

    #[tokio::test]
    async fn try_next_event_takes_queued_events_but_not_the_end() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut sub = hub.subscribe(app, None, 8);
        assert!(sub.try_next_event().is_none());
        hub.publish(ev(app, 1, None));
        hub.publish(ev(app, 2, None));
        hub.close_app(app, 4001, "revoked");
        assert_eq!(sub.try_next_event().map(|e| e.seq), Some(1));
        assert_eq!(sub.try_next_event().map(|e| e.seq), Some(2));
        assert!(sub.try_next_event().is_none());
        assert!(matches!(
            sub.recv().await,
            Some(Delivery::Closed { code: 4001, .. })
        ));
    }

    #[tokio::test]
    async fn drained_queue_releases_its_buffer() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut sub = hub.subscribe(app, None, 1024);
        for s in 1..=100 {
            hub.publish(ev(app, s, None));
        }
        for s in 1..=100 {
            assert_eq!(seq(sub.recv().await), s);
        }
        assert_eq!(sub.slot.queue.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn close_key_closes_only_that_keys_subscriptions() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut old = hub.subscribe_keyed(app, None, Some("k1".into()), 4);
        let mut new = hub.subscribe_keyed(app, None, Some("k2".into()), 4);
        let mut keys = hub.keys();
        keys.sort();
        assert_eq!(keys, vec![(app, "k1".to_string()), (app, "k2".to_string())]);
        assert_eq!(hub.close_key(app, "k1", 4001, "rotated"), 1);
        assert!(matches!(
            old.recv().await,
            Some(Delivery::Closed { code: 4001, .. })
        ));
        hub.publish(ev(app, 1, None));
        assert_eq!(seq(new.recv().await), 1);
        assert_eq!(hub.keys(), vec![(app, "k2".to_string())]);
    }

    #[tokio::test]
    async fn wait_drained_waits_for_the_guards() {
        let hub = Hub::new();
        let _plain = hub.subscribe(AppId::new(), None, 4);
        assert!(hub.wait_drained(Duration::ZERO).await, "no guard, no wait");
        let guard = hub.drain_guard();
        hub.close_all(1001, "bye");
        assert_eq!(hub.connection_count(), 0);
        assert!(!hub.wait_drained(Duration::from_millis(20)).await);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(guard);
        });
        assert!(hub.wait_drained(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new();
        let app = AppId::new();
        let s = hub.subscribe(app, None, 4);
        assert_eq!(hub.connection_count(), 1);
        drop(s);
        assert_eq!(hub.connection_count(), 0);
        assert_eq!(hub.app_count(), 0);
        assert_eq!(hub.publish(ev(app, 1, None)), 0);
    }

    #[tokio::test]
    async fn dropping_the_hub_ends_subscriptions() {
        let hub = Hub::new();
        let mut sub = hub.subscribe(AppId::new(), None, 4);
        drop(hub);
        assert!(matches!(
            sub.recv().await,
            Some(Delivery::Closed { code: 1001, .. })
        ));
    }

    #[tokio::test]
    async fn publish_all_queues_runs_per_app_filtered_and_in_order() {
        let hub = Hub::new();
        let (a, b) = (AppId::new(), AppId::new());
        let mut all_a = hub.subscribe(a, None, 8);
        let mut alice = hub.subscribe(a, Some("alice".into()), 8);
        let mut all_b = hub.subscribe(b, None, 8);
        let n = hub.publish_all([
            ev(a, 1, None),
            ev(a, 2, Some("bob")),
            ev(b, 1, None),
            ev(a, 3, Some("alice")),
        ]);
        // a1 → 2 subscribers, a2 → 1, b1 → 1, a3 → 2.
        assert_eq!(n, 6);
        for want in [1, 2, 3] {
            assert_eq!(seq(all_a.recv().await), want);
        }
        assert_eq!(seq(alice.recv().await), 1);
        assert_eq!(seq(alice.recv().await), 3);
        assert_eq!(seq(all_b.recv().await), 1);
        for sub in [&mut all_a, &mut alice, &mut all_b] {
            assert!(sub.try_next_event().is_none());
        }
        assert_eq!(hub.publish_all([]), 0);
    }

    #[tokio::test]
    async fn publish_all_overflowing_mid_batch_lags_after_what_fitted() {
        let hub = Hub::new();
        let app = AppId::new();
        let mut small = hub.subscribe(app, None, 2);
        let mut big = hub.subscribe(app, None, 8);
        let n = hub.publish_all((1..=4).map(|i| ev(app, i, None)));
        assert_eq!(n, 2 + 4);
        assert_eq!(seq(small.recv().await), 1);
        assert_eq!(seq(small.recv().await), 2);
        assert_eq!(small.recv().await, Some(Delivery::Lagged));
        assert_eq!(hub.connection_count(), 1);
        for want in 1..=4 {
            assert_eq!(seq(big.recv().await), want);
        }
    }
}
