//! The `/ws` WebSocket endpoint (spec §4.5).
//!
//! * Authentication happens **before** the upgrade: the key comes from the `api_key` query
//!   parameter or the `x-app-api-key` header; a missing key answers `401 {"error":"Unauthorized"}`,
//!   an unknown/revoked key or an inactive app `403 {"error":"Forbidden"}`.
//! * `crm_user_id` narrows the socket to one CRM user's channel; `since=<seq>` resumes after a
//!   disconnect without gaps or duplicates (the hub is subscribed before the backlog is read,
//!   live events at or below the last sequence number sent are skipped).
//! * Every event is sent as one text frame holding [`PublishedEvent::to_wire`].
//! * One task per socket multiplexes the subscription, inbound frames and the heartbeat with
//!   `tokio::select!`. Buffers are sized deliberately and writes are boxed so an idle socket
//!   costs about 2.5 kB of server memory (see `benches/ws_idle.rs`).
//!
//! Close codes: `4001` key rotated/revoked or app deactivated (also when changed by another
//! process: the subscription remembers its key, see [`Cti::subscribe_with_key`]), `4002` resume
//! position no longer retained (after a `resync_required` message), `4008` client too slow
//! (after a `lagged` message), `1001` server shutting down, `1011` store unavailable while
//! replaying a resume backlog.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cti_core::Cti;
use cti_core::fanout::{Delivery, DrainGuard, LiveEvent, Subscription};
use cti_core::model::AppId;
use cti_core::store::PublishedEvent;
use futures::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Shared;

/// Read buffer of a socket. Inbound traffic is tiny (pongs, optional JSON pings) and this
/// buffer is allocated — and zero-filled on the first read — for every socket, so it is kept
/// small; a larger frame (up to `ws_max_frame`) grows it on demand.
const READ_BUFFER: usize = 256;
/// Outbound bytes gathered before they are written to the stream. Every message is flushed
/// right away, so this is only a threshold; nothing is allocated up front.
const WRITE_BUFFER: usize = 4 * 1024;
/// Cap of the outbound buffer. A limit, not an allocation: it must exceed the largest event
/// (a transcript can approach the 1 MiB webhook body limit), otherwise that event could never
/// be sent and a resuming client would be dropped on it again and again.
const MAX_WRITE_BUFFER: usize = WRITE_BUFFER + 16 * 1024 * 1024;
/// Longest accepted `crm_user_id`.
const MAX_CRM_USER_LEN: usize = 255;
/// Live events written before one flush (a burst already queued for the socket).
const LIVE_BATCH: usize = 64;
/// Resume backlog read from the store per page (bounds the memory of a resuming socket).
const REPLAY_PAGE: usize = 256;
/// A resume further behind than this many events is refused with `resync_required`.
const MAX_REPLAY: usize = 100_000;
/// How long a closing socket waits for the peer's close frame (at most one heartbeat).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Close code: key rotated/revoked or app deactivated.
pub const CLOSE_KEY_CHANGED: u16 = 4001;
/// Close code: the resume position is older than the retained window.
pub const CLOSE_RESYNC: u16 = 4002;
/// Close code: the client could not keep up and its subscription was dropped.
pub const CLOSE_LAGGED: u16 = 4008;
/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Routes: exactly `GET /ws`.
pub fn routes(state: impl Into<Shared>) -> Router {
    let state: Shared = state.into();
    Router::new().route("/ws", get(upgrade)).with_state(state)
}

#[derive(Debug, Default, Deserialize)]
struct WsQuery {
    api_key: Option<String>,
    crm_user_id: Option<String>,
    since: Option<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Where the socket starts: live only, a backlog to replay first (its first page), or a
/// resume that cannot be served.
enum Start {
    Live,
    Backlog(Vec<PublishedEvent>),
    TooOld { oldest: u64 },
}

async fn upgrade(
    State(state): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if state.shutting_down.load(Ordering::Acquire) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "Invalid query string");
    };
    let key = query
        .api_key
        .as_deref()
        .filter(|k| !k.is_empty())
        .or_else(|| {
            headers
                .get("x-app-api-key")
                .and_then(|v| v.to_str().ok())
                .filter(|k| !k.is_empty())
        });
    let Some(key) = key else {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let cti = &state.cti;
    let app = match cti.authenticate(key).await {
        Ok(Some(app)) => app.id,
        Ok(None) => return error(StatusCode::FORBIDDEN, "Forbidden"),
        Err(e) => return unavailable("authentication", &e),
    };
    let crm_user = query.crm_user_id.filter(|c| !c.is_empty());
    if crm_user
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CRM_USER_LEN)
    {
        return error(StatusCode::BAD_REQUEST, "Invalid crm_user_id");
    }
    let since = match query.since.as_deref() {
        None | Some("") => None,
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, "Invalid since"),
        },
        Some(_) => return error(StatusCode::BAD_REQUEST, "Invalid since"),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };

    // Subscribe before answering `101` so nothing committed after the handshake is missed, and
    // before reading the backlog so the two overlap instead of leaving a gap. The subscription
    // remembers the key: it is closed with 4001 when the key stops working.
    let guard = cti.hub().drain_guard();
    let subscription = cti.subscribe_with_key(app, crm_user.clone(), key);
    // A rotation/revocation that committed between the check above and the subscription
    // could not close it: check once more now that it is registered.
    match cti.authenticate(key).await {
        Ok(Some(again)) if again.id == app => {}
        Ok(_) => return error(StatusCode::FORBIDDEN, "Forbidden"),
        Err(e) => return unavailable("authentication", &e),
    }
    let start = match since {
        None => Start::Live,
        Some(since) => match cti.store().events_since(app, since, REPLAY_PAGE).await {
            Ok(page) => match page.first() {
                Some(first) if first.seq > since.saturating_add(1) => {
                    Start::TooOld { oldest: first.seq }
                }
                _ => Start::Backlog(page),
            },
            Err(e) => return unavailable("resume", &e),
        },
    };

    let session = Session {
        cti: cti.clone(),
        app,
        crm_user,
        last_sent: since.unwrap_or(0),
        heartbeat: state.config.ws_heartbeat.max(Duration::from_millis(10)),
    };
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(state.config.ws_max_frame)
        .max_frame_size(state.config.ws_max_frame)
        .on_failed_upgrade(move |e| tracing::debug!(%app, error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| session.run(socket, subscription, start, guard))
}

fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "websocket {what} failed: store unavailable");
    error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable")
}

/// State of one connected socket. Kept small: one of these lives in every idle socket's task.
struct Session {
    cti: Cti,
    app: AppId,
    crm_user: Option<String>,
    /// Highest sequence number sent (or the resume position): live events at or below it are
    /// duplicates of the backlog and skipped.
    last_sent: u64,
    heartbeat: Duration,
}

/// Why the socket loop ended.
enum End {
    /// Close with this code and reason (handshake attempted).
    Close(u16, String),
    /// The peer closed: flush the queued close reply, then drop.
    Flush,
    /// Drop the connection without a closing handshake (peer gone, write stalled, error).
    Drop,
}

impl Session {
    /// The socket's task. An `async move` block rather than an `async fn`: the latter would
    /// copy its by-value arguments (the `WebSocket` is ~370 bytes) into a second slot of the
    /// future. Only the live loop is inline; everything that runs briefly (replay, resync,
    /// closing) is boxed so it does not enlarge every idle socket.
    #[allow(clippy::manual_async_fn)] // deliberate, see above
    fn run(
        mut self,
        mut socket: WebSocket,
        mut subscription: Subscription,
        start: Start,
        guard: DrainGuard,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            tracing::debug!(app = %self.app, crm_user = self.crm_user.is_some(), "websocket connected");
            let end = match start {
                Start::TooOld { oldest } => Box::pin(self.resync(&mut socket, oldest)).await,
                Start::Backlog(first) => match Box::pin(self.replay(&mut socket, first)).await {
                    None => self.pump(&mut socket, &mut subscription).await,
                    Some(end) => end,
                },
                Start::Live => self.pump(&mut socket, &mut subscription).await,
            };
            drop(subscription);
            Box::pin(self.finish(socket, end, guard)).await;
            tracing::debug!(app = %self.app, "websocket closed");
        }
    }

    /// Ends the connection as `end` says.
    async fn finish(&self, mut socket: WebSocket, end: End, guard: DrainGuard) {
        match end {
            End::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: truncate(&reason, 123).into(),
                };
                let sent = self.send(&mut socket, Message::Close(Some(frame))).await;
                // The close frame is out: a shutdown waiting for this socket may proceed.
                drop(guard);
                if sent {
                    self.await_close_reply(&mut socket).await;
                }
            }
            End::Flush => {
                let wait = self.heartbeat.min(CLOSE_WAIT);
                let _ = tokio::time::timeout(wait, futures::SinkExt::flush(&mut socket)).await;
            }
            End::Drop => {}
        }
    }

    /// Tells the client its resume position is gone (`resync_required`), then closes 4002.
    async fn resync(&mut self, socket: &mut WebSocket, oldest: u64) -> End {
        let msg = json!({
            "type": "resync_required",
            "reason": "the requested position is no longer retained; reload state through the REST API, then reconnect without since",
            "oldest_seq": oldest,
        });
        if self.send(socket, Message::text(msg.to_string())).await {
            End::Close(
                CLOSE_RESYNC,
                "resync required: reload state through the REST API".into(),
            )
        } else {
            End::Drop
        }
    }

    /// Sends the resume backlog in order (filtered to this socket's channel), page by page;
    /// `None` when caught up.
    async fn replay(&mut self, socket: &mut WebSocket, first: Vec<PublishedEvent>) -> Option<End> {
        let mut page = first;
        let mut replayed = 0usize;
        loop {
            let last = page.last().map(|e| e.seq)?;
            let full = page.len() >= REPLAY_PAGE;
            if !self.send_page(socket, &page).await {
                return Some(End::Drop);
            }
            replayed += page.len();
            if !full {
                return None;
            }
            if replayed >= MAX_REPLAY {
                return Some(self.resync(socket, last + 1).await);
            }
            page = match self
                .cti
                .store()
                .events_since(self.app, last, REPLAY_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(app = %self.app, error = %e, "websocket resume failed: store unavailable");
                    return Some(End::Close(
                        1011,
                        "store unavailable; reconnect with since".into(),
                    ));
                }
            };
            // Retention removed the next events while we were replaying.
            if let Some(next) = page.first()
                && next.seq > last + 1
            {
                return Some(self.resync(socket, next.seq).await);
            }
        }
    }

    /// The live loop: subscription, inbound frames and heartbeat in one task.
    async fn pump(&mut self, socket: &mut WebSocket, subscription: &mut Subscription) -> End {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = true;
        loop {
            tokio::select! {
                delivery = subscription.recv() => match delivery {
                    Some(Delivery::Event(event)) => {
                        if !Box::pin(self.send_live(socket, subscription, event)).await {
                            return End::Drop;
                        }
                    }
                    Some(Delivery::Lagged) => return Box::pin(self.lagged(socket)).await,
                    Some(Delivery::Closed { code, reason }) => return End::Close(code, reason),
                    None => return End::Close(CLOSE_GOING_AWAY, "subscription ended".into()),
                },
                inbound = socket.recv() => match inbound {
                    Some(Ok(message)) => {
                        heard = true;
                        match message {
                            Message::Text(text) => {
                                if is_client_ping(text.as_str()) && !Box::pin(self.send_pong(socket)).await {
                                    return End::Drop;
                                }
                            }
                            // The peer started the closing handshake; tungstenite queued the reply.
                            Message::Close(_) => return End::Flush,
                            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
                        }
                    }
                    // Protocol error, oversized frame or the peer went away.
                    Some(Err(e)) => {
                        tracing::debug!(app = %self.app, error = %e, "websocket read failed");
                        return End::Drop;
                    }
                    None => return End::Drop,
                },
                _ = ticker.tick() => {
                    if !heard {
                        tracing::debug!(app = %self.app, "websocket peer missed a heartbeat; dropping");
                        return End::Drop;
                    }
                    heard = false;
                    if !self.send(socket, Message::Ping(Bytes::new())).await {
                        return End::Drop;
                    }
                }
            }
        }
    }

    /// Tells a client that fell too far behind where to resume; closes 4008.
    async fn lagged(&self, socket: &mut WebSocket) -> End {
        let reason = format!("client too slow; reconnect with since={}", self.last_sent);
        let msg = json!({ "type": "lagged", "reason": reason, "last_seq": self.last_sent });
        if self.send(socket, Message::text(msg.to_string())).await {
            End::Close(CLOSE_LAGGED, reason)
        } else {
            End::Drop
        }
    }

    /// `true` when this socket should get `event`: not already sent (replayed), and in its
    /// channel.
    fn wants(&self, event: &PublishedEvent) -> bool {
        if event.seq <= self.last_sent {
            return false;
        }
        match (&self.crm_user, &event.target_crm_user) {
            (Some(want), Some(target)) => want == target,
            _ => true,
        }
    }

    /// Writes `first` and every event already queued behind it (up to [`LIVE_BATCH`]), then
    /// flushes once: a burst costs one write instead of one per event. The text of each event
    /// was serialised once for all sockets ([`LiveEvent::wire_text`]).
    async fn send_live(
        &mut self,
        socket: &mut WebSocket,
        subscription: &mut Subscription,
        first: Arc<LiveEvent>,
    ) -> bool {
        let heartbeat = self.heartbeat;
        let write = async {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(event) = next.take() {
                if self.wants(&event) {
                    socket
                        .feed(Message::text(String::from(&**event.wire_text())))
                        .await?;
                    self.last_sent = event.seq;
                }
                taken += 1;
                if taken < LIVE_BATCH {
                    next = subscription.try_next_event();
                }
            }
            socket.flush().await
        };
        matches!(tokio::time::timeout(heartbeat, write).await, Ok(Ok(())))
    }

    /// Writes the wanted events of one backlog page and flushes once.
    async fn send_page(&mut self, socket: &mut WebSocket, page: &[PublishedEvent]) -> bool {
        let heartbeat = self.heartbeat;
        let write = async {
            for event in page {
                if self.wants(event) {
                    socket
                        .feed(Message::text(event.to_wire().to_string()))
                        .await?;
                    self.last_sent = event.seq;
                }
            }
            socket.flush().await
        };
        matches!(
            Box::pin(tokio::time::timeout(heartbeat, write)).await,
            Ok(Ok(()))
        )
    }

    async fn send_pong(&self, socket: &mut WebSocket) -> bool {
        let timestamp = self
            .cti
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let msg = json!({ "type": "pong", "timestamp": timestamp });
        self.send(socket, Message::text(msg.to_string())).await
    }

    /// Writes and flushes one frame; a peer that does not take it within one heartbeat interval
    /// is considered stalled. The write future (with its timer) is boxed so that it takes
    /// memory only while a write is in progress, not in every idle socket's task.
    async fn send(&self, socket: &mut WebSocket, message: Message) -> bool {
        let write = Box::pin(tokio::time::timeout(self.heartbeat, socket.send(message)));
        matches!(write.await, Ok(Ok(())))
    }

    /// After our close frame: reads (bounded) until the peer's close reply.
    async fn await_close_reply(&self, socket: &mut WebSocket) {
        let wait = self.heartbeat.min(CLOSE_WAIT);
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(message)) = socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// `true` for the JSON client ping `{"type":"ping"}`.
fn is_client_ping(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Probe<'_>>(text).is_ok_and(|p| p.kind.as_deref() == Some("ping"))
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary (close
/// reasons are limited to 123 bytes).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ping_detection() {
        assert!(is_client_ping(r#"{"type":"ping"}"#));
        assert!(is_client_ping(r#"{"type":"ping","x":1}"#));
        assert!(!is_client_ping(r#"{"type":"pong"}"#));
        assert!(!is_client_ping("ping"));
        assert!(!is_client_ping("[]"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 123), "abc");
        assert_eq!(truncate("ééé", 3), "é");
    }
}
