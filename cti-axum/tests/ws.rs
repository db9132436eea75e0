//! `/ws` scenarios that need in-process control of the engine: a queue overflow (`lagged` →
//! 4008), a resume position older than the retained window (4002), a backlog longer than one
//! replay page, and keys changed behind the engine's back (another process, a grace period
//! that ends) with a short `key_recheck`.
//!
//! Everything observable from outside — handshakes, delivery, isolation, lifecycles, resume,
//! heartbeat, frame limits, 4001/1001 closes, stalled clients, several instances — runs against
//! the real server in `examples/cti-server/tests/realtime.rs`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cti_axum::HttpConfig;
use cti_core::inbox::{IngestOutcome, Running, WebhookRequest};
use cti_core::model::App;
use cti_core::secrets::Secret;
use cti_core::store::MemoryStore;
use cti_core::verify::sign_hmac_b64;
use cti_core::{Cti, CtiConfig};
use futures::StreamExt;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Env {
    cti: Cti,
    running: Option<Running>,
    addr: SocketAddr,
    a: App,
    ka: String,
}

impl Env {
    async fn new() -> Self {
        Self::with(CtiConfig::default(), HttpConfig::new("internal")).await
    }

    async fn with(cti_cfg: CtiConfig, http: HttpConfig) -> Self {
        Self::on(Arc::new(MemoryStore::new()), cti_cfg, http).await
    }

    /// An engine and router over `store` (shared with other engines to simulate processes).
    async fn on(store: Arc<MemoryStore>, cti_cfg: CtiConfig, http: HttpConfig) -> Self {
        let cti = Cti::builder()
            .store(store)
            .config(CtiConfig {
                webhook_secret: Some(Secret::new("W".into())),
                ..cti_cfg
            })
            .build();
        let running = cti.start();
        let (a, ka) = cti
            .create_app("Tenant A", Default::default())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = cti_axum::router(cti.clone(), http);
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Env {
            cti,
            running: Some(running),
            addr,
            a,
            ka: ka.expose().clone(),
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    async fn connect(&self, query: &str) -> Client {
        let (ws, resp) = tokio_tungstenite::connect_async(self.url(&format!("/ws?{query}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        ws
    }

    async fn hook(&self, key: &str, body: &str) {
        let sig = sign_hmac_b64(body.as_bytes(), b"W");
        let req = WebhookRequest {
            body: body.as_bytes(),
            content_type: Some("application/json"),
            signature: Some(&sig),
            app_key: Some(key),
            ..Default::default()
        };
        assert!(matches!(
            self.cti.ingest(req).await.unwrap(),
            IngestOutcome::Accepted { .. }
        ));
    }

    async fn ring(&self, call_id: u64) {
        self.hook(
            &self.ka,
            &format!(r#"{{"event_type":"call.ring","call_id":{call_id},"direction":"inbound"}}"#),
        )
        .await;
    }

    /// Waits until the app's outbox holds `n` events.
    async fn wait_events(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.cti.events_since(self.a.id, 0).await.unwrap().len();
            if got >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {got} of {n} events committed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// Status and body of a refused handshake.
async fn refused(req: impl IntoClientRequest + Unpin) -> (u16, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade unexpectedly accepted"),
    }
}

/// Next JSON text message within `wait` (control frames skipped); `None` on timeout.
async fn next_json(ws: &mut Client, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code.
async fn close_code(ws: &mut Client, wait: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no close within the deadline")
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn resume_past_the_retained_window_requires_resync() {
    let env = Env::new().await;
    env.ring(6001).await;
    env.ring(6002).await;
    env.wait_events(2).await;
    env.cti
        .store()
        .events_purge(env.cti.now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    env.ring(6003).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while env
        .cti
        .store()
        .oldest_event_seq(env.a.id)
        .await
        .unwrap()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = env.connect(&format!("api_key={}&since=0", env.ka)).await;
    let m = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(m["type"], "resync_required");
    assert_eq!(m["oldest_seq"], 3);
    assert!(m["reason"].is_string());
    assert_eq!(close_code(&mut ws, Duration::from_secs(2)).await, 4002);
    env.stop().await;
}

#[tokio::test]
async fn lagging_socket_gets_lagged_then_4008() {
    let env = Env::with(
        CtiConfig {
            subscriber_queue: 4,
            ..CtiConfig::default()
        },
        HttpConfig::new("internal"),
    )
    .await;
    let mut ws = env.connect(&format!("api_key={}", env.ka)).await;
    // A burst far larger than the queue, published without yielding.
    for seq in 1..=200u64 {
        env.cti
            .hub()
            .publish(Arc::new(cti_core::store::PublishedEvent {
                app_id: env.a.id,
                seq,
                event: "call.ring".into(),
                payload: serde_json::json!({"event": "call.ring", "call_id": seq.to_string()}),
                target_crm_user: None,
                created_at: env.cti.now(),
            }));
    }
    let mut last = 0;
    let lagged = loop {
        let m = next_json(&mut ws, Duration::from_secs(2))
            .await
            .expect("lagged notice");
        if m["type"] == "lagged" {
            break m;
        }
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "in order, no gap before the lag");
        last = seq;
    };
    assert!(last < 200);
    assert_eq!(lagged["last_seq"], last);
    assert_eq!(
        lagged["reason"],
        format!("client too slow; reconnect with since={last}")
    );
    assert_eq!(close_code(&mut ws, Duration::from_secs(2)).await, 4008);
    env.stop().await;
}

#[tokio::test]
async fn resume_replays_a_backlog_longer_than_one_page() {
    let env = Env::new().await;
    const N: u64 = 600; // more than two replay pages of 256
    for i in 0..N {
        env.ring(8000 + i).await;
    }
    env.wait_events(N as usize).await;
    let mut ws = env.connect(&format!("api_key={}&since=0", env.ka)).await;
    for seq in 1..=N {
        let m = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
        assert_eq!(m["seq"], seq);
    }
    env.ring(9999).await;
    let m = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        (m["seq"].as_u64(), m["call_id"].as_str()),
        (Some(N + 1), Some("9999"))
    );
    assert_eq!(next_json(&mut ws, Duration::from_millis(300)).await, None);
    env.stop().await;
}

#[tokio::test]
async fn key_changed_by_another_process_closes_within_the_recheck() {
    let store = Arc::new(MemoryStore::new());
    let cfg = CtiConfig {
        key_recheck: Duration::from_millis(100),
        ..CtiConfig::default()
    };
    let env = Env::on(store.clone(), cfg, HttpConfig::new("internal")).await;
    let mut ws = env.connect(&format!("api_key={}", env.ka)).await;
    let mut user = env
        .connect(&format!("api_key={}&crm_user_id=crm_1", env.ka))
        .await;
    // Another engine on the same store (like the admin CLI) with no bus to this one.
    let other = Cti::builder().store(store).build();
    other
        .revoke_key(env.a.id, Default::default())
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws, Duration::from_secs(3)).await, 4001);
    assert_eq!(close_code(&mut user, Duration::from_secs(3)).await, 4001);
    assert_eq!(
        refused(env.url(&format!("/ws?api_key={}", env.ka))).await.0,
        403
    );
    env.stop().await;
}

#[tokio::test]
async fn rotation_with_grace_closes_old_key_sockets_when_the_grace_ends() {
    let cfg = CtiConfig {
        key_recheck: Duration::from_millis(100),
        ..CtiConfig::default()
    };
    let env = Env::with(cfg, HttpConfig::new("internal")).await;
    let mut old = env.connect(&format!("api_key={}", env.ka)).await;
    let (_, new_key) = env
        .cti
        .issue_key(env.a.id, Some(Duration::from_secs(1)), Default::default())
        .await
        .unwrap();
    let mut new = env.connect(&format!("api_key={}", new_key.expose())).await;
    // Within the grace period the old key still works: its socket stays open.
    assert_eq!(next_json(&mut old, Duration::from_millis(500)).await, None);
    assert_eq!(close_code(&mut old, Duration::from_secs(3)).await, 4001);
    // The new key's socket is unaffected and still receives events.
    env.hook(
        new_key.expose(),
        r#"{"event_type":"call.ring","call_id":4242,"direction":"inbound"}"#,
    )
    .await;
    let m = next_json(&mut new, Duration::from_secs(2)).await.unwrap();
    assert_eq!(m["call_id"], "4242");
    env.stop().await;
}
