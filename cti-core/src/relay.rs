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

use tokio::sync::{Notify, broadcast};

use crate::fanout::{BusSignal, EventBus, Hub};
use crate::inbox::RelayHooks;
use crate::model::AppId;
use crate::store::{Store, StoreResult};

const PAGE: usize = 512;

struct Cursors {
    store: Arc<dyn Store>,
    hub: Hub,
    at: HashMap<AppId, u64>,
}

impl Cursors {
    /// Delivers every event of `app` after its cursor.
    async fn catch_up(&mut self, app: AppId) -> StoreResult<()> {
        let mut cursor = self.at.get(&app).copied().unwrap_or(0);
        loop {
            let batch = self.store.events_since(app, cursor, PAGE).await?;
            let n = batch.len();
            for e in batch {
                cursor = e.seq;
                self.hub.publish(Arc::new(e));
            }
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

/// Runs until `stop` is notified.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    hub: Hub,
    poll: Duration,
    hooks: RelayHooks,
    stop: Arc<Notify>,
    ready: tokio::sync::watch::Sender<bool>,
) {
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
            _ = stop.notified() => return,
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
