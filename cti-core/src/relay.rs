//! The relay: turns bus wake-ups into ordered reads of the durable outbox and hands the events
//! to the local [`Hub`].
//!
//! It keeps one cursor per app (the last `seq` delivered on this instance). Per-app sequence
//! numbers are assigned under the app's row lock and committed in order, so reading
//! `seq > cursor` is gap-free: every committed event is delivered exactly once per instance, in
//! order, whether the wake-up came from this instance, from another one over `PgBus`, or from
//! the fallback poll after a lost notification.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc};

use crate::fanout::{BusSignal, EventBus, Hub};
use crate::inbox::RelayHooks;
use crate::model::AppId;
use crate::store::{PublishedEvent, Store, StoreResult};

const PAGE: usize = 512;

struct Cursors {
    store: Arc<dyn Store>,
    hub: Hub,
    at: HashMap<AppId, u64>,
}

impl Cursors {
    /// Delivers a batch this process committed (sorted by app, then `seq`): the events that
    /// directly follow an app's cursor go to the hub as they are; an app whose batch does not
    /// start right after its cursor (another writer's or instance's events came first and are
    /// not delivered yet) is caught up from the store instead.
    async fn deliver(&mut self, batch: Vec<PublishedEvent>) -> StoreResult<()> {
        let mut rest = batch.into_iter().peekable();
        while let Some(first) = rest.next() {
            let app = first.app_id;
            let mut events = vec![first];
            while let Some(e) = rest.next_if(|e| e.app_id == app) {
                events.push(e);
            }
            let cursor = self.at.get(&app).copied().unwrap_or(0);
            events.retain(|e| e.seq > cursor);
            let contiguous = events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == cursor + 1 + i as u64);
            if !contiguous {
                self.catch_up(app).await?;
                continue;
            }
            if let Some(last) = events.last() {
                self.at.insert(app, last.seq);
            }
            self.hub.publish_all(events.into_iter().map(Arc::new));
        }
        Ok(())
    }

    /// Delivers every event of `app` after its cursor.
    async fn catch_up(&mut self, app: AppId) -> StoreResult<()> {
        let mut cursor = self.at.get(&app).copied().unwrap_or(0);
        loop {
            let batch = self.store.events_since(app, cursor, PAGE).await?;
            let n = batch.len();
            if let Some(last) = batch.last() {
                cursor = last.seq;
            }
            self.hub.publish_all(batch.into_iter().map(Arc::new));
            self.at.insert(app, cursor);
            if n < PAGE {
                return Ok(());
            }
        }
    }

    async fn resync(&mut self) -> StoreResult<()> {
        for (app, head) in self.store.event_heads().await? {
            if head > self.at.get(&app).copied().unwrap_or(0) {
                self.catch_up(app).await?;
            }
        }
        Ok(())
    }
}

/// What a relay reads from and delivers to.
pub(crate) struct RelayParts {
    /// The outbox.
    pub(crate) store: Arc<dyn Store>,
    /// Wake-ups from every instance.
    pub(crate) bus: Arc<dyn EventBus>,
    /// Local subscribers.
    pub(crate) hub: Hub,
    /// Fallback poll interval.
    pub(crate) poll: Duration,
}

/// Runs until `stop` is notified.
pub(crate) async fn run(
    parts: RelayParts,
    hooks: RelayHooks,
    mut local: Option<mpsc::Receiver<Vec<PublishedEvent>>>,
    stop: Arc<Notify>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let RelayParts {
        store,
        bus,
        hub,
        poll,
    } = parts;
    let mut rx = bus.subscribe();
    // Start from the current heads: only events committed from now on are live.
    let mut cursors = Cursors {
        store: store.clone(),
        hub,
        at: HashMap::new(),
    };
    loop {
        match store.event_heads().await {
            Ok(heads) => {
                cursors.at = heads.into_iter().collect();
                let _ = ready.send(true);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot read outbox heads; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.notified() => return,
                }
            }
        }
    }
    let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let res = tokio::select! {
            // Local batches first: they were queued before their bus signal.
            biased;
            _ = stop.notified() => return,
            Some(batch) = recv_local(&mut local) => {
                // Everything committed meanwhile goes out with it, as one batch (one wake-up
                // per subscriber), in the order `deliver` expects (a stable sort of an already
                // sorted batch is one linear pass).
                let mut batch = batch;
                while let Some(more) = try_recv_local(&mut local) {
                    batch.extend(more);
                }
                batch.sort_by_key(|p| (p.app_id, p.seq));
                cursors.deliver(batch).await
            }
            _ = ticker.tick() => cursors.resync().await,
            sig = rx.recv() => match sig {
                Ok(BusSignal::Events { app_id, seq }) => {
                    if seq > cursors.at.get(&app_id).copied().unwrap_or(0) {
                        cursors.catch_up(app_id).await
                    } else {
                        Ok(())
                    }
                }
                Ok(BusSignal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => cursors.resync().await,
                Ok(BusSignal::AppChanged { app_id }) => {
                    hooks.app_changed(app_id);
                    Ok(())
                }
                Ok(BusSignal::Inbox) => {
                    hooks.inbox();
                    Ok(())
                }
                Err(broadcast::error::RecvError::Closed) => {
                    tracing::warn!("event bus closed; relay continues by polling");
                    rx = bus.subscribe();
                    tokio::time::sleep(poll).await;
                    Ok(())
                }
            },
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "relay read failed; will retry");
        }
    }
}

/// A local batch that is already queued, without waiting.
fn try_recv_local(
    local: &mut Option<mpsc::Receiver<Vec<PublishedEvent>>>,
) -> Option<Vec<PublishedEvent>> {
    local.as_mut()?.try_recv().ok()
}

/// The next local batch; never ready without a local queue (or once it is closed).
async fn recv_local(
    local: &mut Option<mpsc::Receiver<Vec<PublishedEvent>>>,
) -> Option<Vec<PublishedEvent>> {
    match local {
        Some(rx) => match rx.recv().await {
            Some(batch) => Some(batch),
            None => {
                *local = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Delivery;
    use crate::model::{AuditContext, CallStatus, DialpadId};
    use crate::normalize::{CallUpdate, CtiEvent, Normalized};
    use crate::store::{
        AppStore, Completion, EventResult, InboxStore, MemoryStore, NewApp, NewInboxEvent, NewKey,
    };

    /// Three committed events of one app (seq 1, 2, 3) and the store holding them.
    async fn three_events() -> (Arc<MemoryStore>, AppId, Vec<PublishedEvent>) {
        let store = Arc::new(MemoryStore::new());
        let now = chrono::Utc::now();
        let app = AppId::new();
        store
            .create_app(
                NewApp {
                    id: app,
                    name: "relay".into(),
                    key: NewKey {
                        lookup: "0".repeat(64),
                        hint: "raw_0...0".into(),
                    },
                    now,
                },
                AuditContext::default(),
            )
            .await
            .unwrap();
        let mut published = Vec::new();
        for call in 1..=3u64 {
            let e = NewInboxEvent {
                id: uuid::Uuid::now_v7(),
                app_id: app,
                dedupe_key: format!("k{call}"),
                event_type: None,
                call_id: Some(DialpadId(call)),
                state: None,
                event_timestamp: None,
                payload: crate::json::JsonText::assume_valid("{}"),
                received_at: now,
            };
            store.inbox_insert(vec![e]).await.unwrap();
            let claimed = store
                .inbox_claim(1, Duration::from_secs(30), now)
                .await
                .unwrap();
            let n = Normalized {
                event: CtiEvent::CallRinging,
                call: Some(CallUpdate {
                    dialpad_call_id: Some(DialpadId(call)),
                    status: Some(CallStatus::Ringing),
                    event_ms: 1,
                    ..Default::default()
                }),
                voicemail: None,
                message: None,
            };
            let item = Completion {
                event_id: claimed[0].id,
                attempt: claimed[0].attempts,
                result: EventResult::Apply(Box::new(n)),
            };
            let mut out = store.inbox_complete_batch(vec![item], now).await;
            published.extend(out.remove(0).unwrap());
        }
        assert_eq!(
            published.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        (store, app, published)
    }

    async fn seqs(sub: &mut crate::fanout::Subscription, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(1), sub.recv()).await {
                Ok(Some(Delivery::Event(e))) => out.push(e.seq),
                other => panic!("expected an event, got {other:?}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn local_batches_are_delivered_in_order_and_gaps_read_from_the_store() {
        let (store, app, published) = three_events().await;
        let hub = Hub::new();
        let mut sub = hub.subscribe(app, None, 16);
        let mut cursors = Cursors {
            store,
            hub: hub.clone(),
            at: HashMap::new(),
        };
        // Seq 3 alone: 1 and 2 were not delivered yet, so the relay reads them.
        cursors.deliver(vec![published[2].clone()]).await.unwrap();
        assert_eq!(seqs(&mut sub, 3).await, [1, 2, 3]);
        // Already delivered: nothing again.
        cursors.deliver(published.clone()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), sub.recv())
                .await
                .is_err()
        );
        assert_eq!(cursors.at.get(&app), Some(&3));
        // A batch that follows the cursor is published as it is (seq 4 is not in the store:
        // only the batch itself can have delivered it).
        let mut next = published[2].clone();
        next.seq = 4;
        cursors.deliver(vec![next]).await.unwrap();
        assert_eq!(seqs(&mut sub, 1).await, [4]);
    }

    /// Batches queued while the relay was busy are merged and ordered before delivery: seq 5
    /// queued before seq 4 (two writers finishing out of order) is delivered as 4, 5 without a
    /// store read (neither is in the store here, so a read could not have produced them).
    #[tokio::test]
    async fn queued_batches_are_merged_in_seq_order() {
        let (store, app, published) = three_events().await;
        let hub = Hub::new();
        let mut sub = hub.subscribe(app, None, 16);
        let cti = crate::Cti::builder().store(store.clone()).build();
        let (tx, rx) = mpsc::channel(8);
        let at = |seq| {
            let mut e = published[2].clone();
            e.seq = seq;
            e
        };
        tx.send(vec![at(5)]).await.unwrap();
        tx.send(vec![at(4)]).await.unwrap();
        let stop = Arc::new(Notify::new());
        let (ready, _ready_rx) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(run(
            RelayParts {
                store,
                bus: Arc::new(crate::fanout::LocalBus::new()),
                hub: hub.clone(),
                poll: Duration::from_secs(60),
            },
            RelayHooks::new(cti),
            Some(rx),
            stop.clone(),
            ready,
        ));
        assert_eq!(seqs(&mut sub, 2).await, [4, 5]);
        stop.notify_one();
        relay.await.unwrap();
    }
}
