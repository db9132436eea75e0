//! [`PgBus`]: cross-instance wake-ups over PostgreSQL `LISTEN/NOTIFY`.
//!
//! Notifications only *wake* instances; they never carry events (NOTIFY drops messages for
//! disconnected listeners and takes a global lock at commit). Each payload is a few dozen bytes:
//!
//! | signal | payload |
//! |---|---|
//! | [`BusSignal::Events`] | `e:<app uuid>:<seq>` |
//! | [`BusSignal::Inbox`] | `i` |
//! | [`BusSignal::Resync`] | `r` |
//! | [`BusSignal::AppChanged`] | `a:<app uuid>` |
//!
//! A background task owns a dedicated listener connection (`application_name` =
//! `cti-bus <channel>` unless configured) and re-broadcasts parsed signals to
//! [`EventBus::subscribe`] receivers. When that connection is lost the task reconnects with
//! exponential backoff and then emits [`BusSignal::Resync`], so relays re-read the durable
//! outbox heads and nothing is lost. Dropping the last [`PgBus`] clone stops the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cti_core::fanout::{BusError, BusSignal, EventBus};
use cti_core::model::AppId;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

/// Options of [`PgBus::connect_with`].
#[derive(Clone, Debug)]
pub struct PgBusOptions {
    /// `application_name` of the listener connection (default `cti-bus <channel>`), handy to
    /// find it in `pg_stat_activity`.
    pub application_name: Option<String>,
    /// First reconnect delay (default 100 ms), doubled after each failure.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (default 5 s).
    pub reconnect_max: Duration,
    /// Signals buffered per receiver before it lags (default 4096; a lagging receiver resyncs).
    pub capacity: usize,
    /// How long connecting may take before failing (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for PgBusOptions {
    fn default() -> Self {
        Self {
            application_name: None,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            capacity: 4096,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Encodes a signal as a NOTIFY payload (always far below the 8000-byte limit).
pub fn encode_signal(signal: &BusSignal) -> String {
    match signal {
        BusSignal::Events { app_id, seq } => format!("e:{app_id}:{seq}"),
        BusSignal::Inbox => "i".into(),
        BusSignal::Resync => "r".into(),
        BusSignal::AppChanged { app_id } => format!("a:{app_id}"),
    }
}

/// Parses a NOTIFY payload; `None` for anything unknown (ignored, e.g. from a newer release).
pub fn decode_signal(payload: &str) -> Option<BusSignal> {
    match payload {
        "i" => Some(BusSignal::Inbox),
        "r" => Some(BusSignal::Resync),
        p if p.starts_with("a:") => Some(BusSignal::AppChanged {
            app_id: p[2..].parse::<AppId>().ok()?,
        }),
        p => {
            let rest = p.strip_prefix("e:")?;
            let (app, seq) = rest.split_once(':')?;
            Some(BusSignal::Events {
                app_id: app.parse::<AppId>().ok()?,
                seq: seq.parse().ok()?,
            })
        }
    }
}

fn validate_channel(channel: &str) -> Result<(), BusError> {
    let ok = !channel.is_empty()
        && channel.len() <= 63
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BusError(format!(
            "invalid channel name {channel:?} (use [A-Za-z0-9_], ≤ 63 bytes)"
        )))
    }
}

struct Inner {
    channel: String,
    notify_pool: PgPool,
    tx: broadcast::Sender<BusSignal>,
    task: AbortHandle,
    listener_pid: Arc<AtomicU32>,
    application_name: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// [`EventBus`] over PostgreSQL `LISTEN/NOTIFY`. Cheap to clone; the listener task stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct PgBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus")
            .field("channel", &self.inner.channel)
            .field("listener_pid", &self.listener_pid())
            .finish_non_exhaustive()
    }
}

struct ListenerConfig {
    connect: PgConnectOptions,
    channel: String,
    timeout: Duration,
}

impl ListenerConfig {
    /// A fresh dedicated connection listening on the channel, and its backend pid.
    async fn listen(&self) -> Result<(PgListener, u32), sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(self.timeout)
            .connect_with(self.connect.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        listener.listen(&self.channel).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut listener)
            .await?;
        Ok((listener, u32::try_from(pid).unwrap_or(0)))
    }
}

impl PgBus {
    /// Connects with default options; `LISTEN` is active when this returns.
    pub async fn connect(url: &str, channel: &str) -> Result<Self, BusError> {
        Self::connect_with(url, channel, PgBusOptions::default()).await
    }

    /// Connects: a small pool for `NOTIFY` and a dedicated listener connection.
    pub async fn connect_with(
        url: &str,
        channel: &str,
        opts: PgBusOptions,
    ) -> Result<Self, BusError> {
        validate_channel(channel)?;
        let base: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| BusError(format!("invalid url: {e}")))?;
        let application_name = opts
            .application_name
            .clone()
            .unwrap_or_else(|| format!("cti-bus {channel}"));
        let notify_pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(opts.connect_timeout)
            .connect_lazy_with(base.clone().application_name("cti-bus-notify"));
        let cfg = ListenerConfig {
            connect: base.application_name(&application_name),
            channel: channel.to_string(),
            timeout: opts.connect_timeout,
        };
        let (listener, pid) = cfg
            .listen()
            .await
            .map_err(|e| BusError(format!("listen: {e}")))?;
        let listener_pid = Arc::new(AtomicU32::new(pid));
        let (tx, _) = broadcast::channel(opts.capacity.max(16));
        let task = tokio::spawn(run_listener(
            listener,
            cfg,
            tx.clone(),
            listener_pid.clone(),
            opts,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                channel: channel.to_string(),
                notify_pool,
                tx,
                task: task.abort_handle(),
                listener_pid,
                application_name,
            }),
        })
    }

    /// Backend pid of the listener connection (`None` while reconnecting).
    pub fn listener_pid(&self) -> Option<u32> {
        match self.inner.listener_pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// `application_name` of the listener connection.
    pub fn application_name(&self) -> &str {
        &self.inner.application_name
    }

    /// The NOTIFY channel.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }
}

async fn run_listener(
    mut listener: PgListener,
    cfg: ListenerConfig,
    tx: broadcast::Sender<BusSignal>,
    pid: Arc<AtomicU32>,
    opts: PgBusOptions,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => match decode_signal(n.payload()) {
                Some(signal) => {
                    let _ = tx.send(signal);
                }
                None => tracing::debug!(payload = n.payload(), "pg bus: ignoring unknown payload"),
            },
            Ok(None) | Err(_) => {
                pid.store(0, Ordering::Release);
                tracing::warn!(channel = %cfg.channel, "pg bus: listener connection lost, reconnecting");
                drop(listener);
                let mut delay = opts.reconnect_min;
                listener = loop {
                    match cfg.listen().await {
                        Ok((l, p)) => {
                            pid.store(p, Ordering::Release);
                            break l;
                        }
                        Err(e) => {
                            tracing::warn!(channel = %cfg.channel, error = %e, retry_in = ?delay, "pg bus: reconnect failed");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(opts.reconnect_max);
                        }
                    }
                };
                tracing::info!(channel = %cfg.channel, "pg bus: listener reconnected, resync");
                // Signals sent while we were away are gone: relays re-read the outbox heads.
                let _ = tx.send(BusSignal::Resync);
            }
        }
    }
}

#[async_trait]
impl EventBus for PgBus {
    async fn notify(&self, signal: BusSignal) -> Result<(), BusError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.inner.channel)
            .bind(encode_signal(&signal))
            .execute(&self.inner.notify_pool)
            .await
            .map_err(|e| BusError(format!("notify: {e}")))?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusSignal> {
        self.inner.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip() {
        let app = AppId::new();
        for s in [
            BusSignal::Events {
                app_id: app,
                seq: u64::MAX,
            },
            BusSignal::Inbox,
            BusSignal::Resync,
            BusSignal::AppChanged { app_id: app },
        ] {
            let p = encode_signal(&s);
            assert!(p.len() < 100);
            assert_eq!(decode_signal(&p), Some(s));
        }
        assert_eq!(decode_signal("e:not-a-uuid:1"), None);
        assert_eq!(decode_signal("x"), None);
        assert_eq!(decode_signal(&format!("e:{app}:-1")), None);
    }

    #[test]
    fn channel_names() {
        assert!(validate_channel("cti_events").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("a;b").is_err());
        assert!(validate_channel(&"x".repeat(64)).is_err());
    }
}
