//! Live delivery: the in-process [`Hub`] of subscribers and the cross-instance [`EventBus`].
//!
//! * [`Hub`] keeps subscriptions per app, optionally narrowed to one CRM user. Each subscriber
//!   has a bounded queue (default 1024). Publishing never waits: a subscriber whose queue is full
//!   is dropped and gets [`Delivery::Lagged`], so one slow client never delays the others.
//! * [`EventBus`] only *wakes* instances ("app X has events up to seq N"); events themselves live
//!   in the store's outbox and are read by sequence number (see [`crate::relay`]). [`LocalBus`] is
//!   the in-process bus; `cti_sqlx::PgBus` uses PostgreSQL `LISTEN/NOTIFY`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc};

use crate::model::AppId;
use crate::store::PublishedEvent;

/// Default per-subscriber queue length.
pub const DEFAULT_QUEUE: usize = 1024;

enum Item {
    Event(Arc<PublishedEvent>),
    Close { code: u16, reason: String },
}

struct Slot {
    id: u64,
    crm_user: Option<String>,
    tx: mpsc::Sender<Item>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct HubInner {
    apps: RwLock<HashMap<AppId, Vec<Arc<Slot>>>>,
    next_id: AtomicU64,
    total: AtomicU64,
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
    Event(Arc<PublishedEvent>),
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
    // Only the id and the lagged flag: the hub owns the only `Sender`, so removing the slot
    // ends the stream.
    id: u64,
    lagged: Arc<AtomicBool>,
    rx: mpsc::Receiver<Item>,
    hub: Weak<HubInner>,
    done: bool,
}

impl Subscription {
    /// The next delivery; `None` after `Lagged`/`Closed` has been returned.
    pub async fn recv(&mut self) -> Option<Delivery> {
        if self.done {
            return None;
        }
        match self.rx.recv().await {
            Some(Item::Event(e)) => Some(Delivery::Event(e)),
            Some(Item::Close { code, reason }) => {
                self.done = true;
                Some(Delivery::Closed { code, reason })
            }
            None => {
                self.done = true;
                if self.lagged.load(Ordering::Acquire) {
                    Some(Delivery::Lagged)
                } else {
                    Some(Delivery::Closed {
                        code: 1001,
                        reason: "hub closed".into(),
                    })
                }
            }
        }
    }

    /// The app this subscription belongs to.
    pub fn app_id(&self) -> AppId {
        self.app
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            Hub { inner: hub }.remove(self.app, &[self.id]);
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
        let (tx, rx) = mpsc::channel(queue.max(1));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let lagged = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(Slot {
            id,
            crm_user,
            tx,
            lagged: lagged.clone(),
        });
        self.inner.apps.write().entry(app).or_default().push(slot);
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        Subscription {
            app,
            id,
            lagged,
            rx,
            hub: Arc::downgrade(&self.inner),
            done: false,
        }
    }

    /// Delivers an event to every matching subscriber of its app without waiting; returns the
    /// number of subscribers it was queued for. Subscribers with a full queue are dropped
    /// (they receive [`Delivery::Lagged`]).
    pub fn publish(&self, event: Arc<PublishedEvent>) -> usize {
        let mut delivered = 0;
        let mut overflow = Vec::new();
        {
            let apps = self.inner.apps.read();
            let Some(slots) = apps.get(&event.app_id) else {
                return 0;
            };
            for s in slots {
                if let (Some(want), Some(target)) = (&s.crm_user, &event.target_crm_user)
                    && want != target
                {
                    continue;
                }
                match s.tx.try_send(Item::Event(event.clone())) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.lagged.store(true, Ordering::Release);
                        overflow.push(s.id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => overflow.push(s.id),
                }
            }
        }
        if !overflow.is_empty() {
            self.remove(event.app_id, &overflow);
        }
        delivered
    }

    /// Closes every subscription of an app with a WebSocket close code (4001 after a key
    /// rotation/revocation or deactivation, 1001 on shutdown).
    pub fn close_app(&self, app: AppId, code: u16, reason: &str) {
        let slots = self.inner.apps.write().remove(&app).unwrap_or_default();
        self.inner
            .total
            .fetch_sub(slots.len() as u64, Ordering::Relaxed);
        for s in slots {
            // Delivered after already-queued events; if the queue is full the sender is dropped
            // and the subscriber sees the end of the stream.
            let _ = s.tx.try_send(Item::Close {
                code,
                reason: reason.to_string(),
            });
        }
    }

    /// Closes every subscription of every app.
    pub fn close_all(&self, code: u16, reason: &str) {
        let apps: Vec<AppId> = self.inner.apps.read().keys().copied().collect();
        for a in apps {
            self.close_app(a, code, reason);
        }
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
        let seqs = |d: Option<Delivery>| match d {
            Some(Delivery::Event(e)) => e.seq,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(seqs(all_a.recv().await), 1);
        assert_eq!(seqs(all_a.recv().await), 2);
        assert_eq!(seqs(crm1.recv().await), 1);
        assert_eq!(seqs(crm1.recv().await), 2);
        assert_eq!(seqs(crm2.recv().await), 2);
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
        for seq in 1..=5 {
            hub.publish(ev(app, seq, None));
            match fast.recv().await {
                Some(Delivery::Event(e)) => assert_eq!(e.seq, seq),
                other => panic!("fast subscriber got {other:?}"),
            }
        }
        assert!(matches!(slow.recv().await, Some(Delivery::Event(_))));
        assert!(matches!(slow.recv().await, Some(Delivery::Event(_))));
        assert_eq!(slow.recv().await, Some(Delivery::Lagged));
        assert_eq!(slow.recv().await, None);
        assert_eq!(hub.connection_count(), 1);
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
}
