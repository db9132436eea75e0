//! The `/ws` WebSocket endpoint (spec §4.5).
//!
//! * Authentication happens **before** the upgrade: the key comes from the `api_key` query
//!   parameter or the `x-app-api-key` header; a missing key answers `401 {"error":"Unauthorized"}`,
//!   an unknown/revoked key or an inactive app `403 {"error":"Forbidden"}`.
//! * `crm_user_id` narrows the socket to one CRM user's channel; `since=<seq>` resumes after a
//!   disconnect without gaps or duplicates (the hub is subscribed before the backlog is read).
//! * Every event is sent as one text frame holding [`PublishedEvent::to_wire`].
//! * One task per socket multiplexes the subscription, inbound frames and the heartbeat with
//!   `tokio::select!`; buffers are sized small so idle sockets stay cheap.
//!
//! Application close codes: `4001` key rotated/revoked or app deactivated, `4002` resume position
//! no longer retained (after a `resync_required` message), `4008` client too slow (after a
//! `lagged` message), `1001` server shutting down.

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
use cti_core::fanout::{Delivery, Subscription};
use cti_core::inbox::ResumeError;
use cti_core::model::App;
use cti_core::store::PublishedEvent;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::AppState;

/// Read buffer of a socket: inbound traffic is tiny (pongs, optional JSON pings).
const READ_BUFFER: usize = 4 * 1024;
/// Outbound bytes buffered before they are written to the stream.
const WRITE_BUFFER: usize = 4 * 1024;
/// Cap of the outbound buffer: one message at a time is written and flushed, so this only has to
/// hold the largest event (a voicemail with a long transcript). It is a limit, not an allocation.
const MAX_WRITE_BUFFER: usize = WRITE_BUFFER + 256 * 1024;
/// Longest accepted `crm_user_id`.
const MAX_CRM_USER_LEN: usize = 255;
/// Close code: the resume position is older than the retained window.
pub const CLOSE_RESYNC: u16 = 4002;
/// Close code: the client could not keep up and its subscription was dropped.
pub const CLOSE_LAGGED: u16 = 4008;

/// Routes: exactly `GET /ws`.
pub fn routes(state: AppState) -> Router {
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

/// Where the socket starts: live only, a backlog to replay first, or a resume that cannot be
/// served.
enum Start {
    Live,
    Backlog(Vec<PublishedEvent>),
    TooOld { oldest: u64 },
}

async fn upgrade(
    State(state): State<AppState>,
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
    let app = match state.cti.authenticate(key).await {
        Ok(Some(app)) => app,
        Ok(None) => return error(StatusCode::FORBIDDEN, "Forbidden"),
        Err(e) => {
            tracing::warn!(error = %e, "websocket authentication failed: store unavailable");
            return error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
        }
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
    // before reading the backlog so the two overlap instead of leaving a gap.
    let subscription = state.cti.subscribe(app.id, crm_user.clone());
    let start = match since {
        None => Start::Live,
        Some(since) => match state.cti.events_since(app.id, since).await {
            Ok(events) => Start::Backlog(events),
            Err(ResumeError::TooOld { oldest, .. }) => Start::TooOld { oldest },
            Err(ResumeError::Store(e)) => {
                tracing::warn!(app = %app.id, error = %e, "websocket resume failed: store unavailable");
                return error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
            }
        },
    };

    let session = Session {
        cti: state.cti.clone(),
        app,
        crm_user,
        last_sent: since.unwrap_or(0),
        heartbeat: state.config.ws_heartbeat.max(Duration::from_millis(10)),
    };
    let app_id = session.app.id;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(state.config.ws_max_frame)
        .max_frame_size(state.config.ws_max_frame)
        .on_failed_upgrade(
            move |e| tracing::debug!(app = %app_id, error = %e, "websocket upgrade failed"),
        )
        .on_upgrade(move |socket| session.run(socket, subscription, start))
}

/// State of one connected socket.
struct Session {
    cti: Cti,
    app: App,
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
    async fn run(mut self, mut socket: WebSocket, mut subscription: Subscription, start: Start) {
        tracing::debug!(app = %self.app.id, crm_user = self.crm_user.is_some(), "websocket connected");
        let end = match start {
            Start::TooOld { oldest } => {
                let msg = json!({
                    "type": "resync_required",
                    "reason": "the requested position is no longer retained; resync through the REST API",
                    "oldest_seq": oldest,
                });
                if self.send(&mut socket, Message::text(msg.to_string())).await {
                    End::Close(CLOSE_RESYNC, "resync required".into())
                } else {
                    End::Drop
                }
            }
            Start::Backlog(events) => match self.replay(&mut socket, events).await {
                true => self.pump(&mut socket, &mut subscription).await,
                false => End::Drop,
            },
            Start::Live => self.pump(&mut socket, &mut subscription).await,
        };
        drop(subscription);
        match end {
            End::Close(code, reason) => self.close(socket, code, &reason).await,
            End::Flush => {
                let mut socket = socket;
                let _ = tokio::time::timeout(self.heartbeat, futures::SinkExt::flush(&mut socket))
                    .await;
            }
            End::Drop => drop(socket),
        }
        tracing::debug!(app = %self.app.id, "websocket closed");
    }

    /// Sends the resume backlog in order (filtered to this socket's channel).
    async fn replay(&mut self, socket: &mut WebSocket, events: Vec<PublishedEvent>) -> bool {
        for event in events {
            if !self.send_event(socket, &event).await {
                return false;
            }
        }
        true
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
                        if !self.send_event(socket, &event).await {
                            return End::Drop;
                        }
                    }
                    Some(Delivery::Lagged) => {
                        let msg = json!({
                            "type": "lagged",
                            "reason": format!("client too slow; reconnect with since={}", self.last_sent),
                            "last_seq": self.last_sent,
                        });
                        if !self.send(socket, Message::text(msg.to_string())).await {
                            return End::Drop;
                        }
                        return End::Close(CLOSE_LAGGED, "lagged".into());
                    }
                    Some(Delivery::Closed { code, reason }) => return End::Close(code, reason),
                    None => return End::Close(1001, "subscription ended".into()),
                },
                inbound = socket.recv() => match inbound {
                    Some(Ok(message)) => {
                        heard = true;
                        match message {
                            Message::Text(text) => {
                                if is_client_ping(text.as_str()) && !self.send_pong(socket).await {
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
                        tracing::debug!(app = %self.app.id, error = %e, "websocket read failed");
                        return End::Drop;
                    }
                    None => return End::Drop,
                },
                _ = ticker.tick() => {
                    if !heard {
                        tracing::debug!(app = %self.app.id, "websocket peer missed a heartbeat; dropping");
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

    /// Sends one event unless it is a duplicate or belongs to another CRM user's channel.
    async fn send_event(&mut self, socket: &mut WebSocket, event: &PublishedEvent) -> bool {
        if event.seq <= self.last_sent {
            return true;
        }
        if let (Some(want), Some(target)) = (&self.crm_user, &event.target_crm_user)
            && want != target
        {
            return true;
        }
        let text = event.to_wire().to_string();
        if !self.send(socket, Message::text(text)).await {
            return false;
        }
        self.last_sent = event.seq;
        true
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
    /// is considered stalled.
    async fn send(&self, socket: &mut WebSocket, message: Message) -> bool {
        matches!(
            tokio::time::timeout(self.heartbeat, socket.send(message)).await,
            Ok(Ok(()))
        )
    }

    /// Sends a close frame and waits (bounded) for the peer's close reply.
    async fn close(&self, mut socket: WebSocket, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: truncate(reason, 123).into(),
        };
        if !self.send(&mut socket, Message::Close(Some(frame))).await {
            return;
        }
        let _ = tokio::time::timeout(self.heartbeat, async {
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
