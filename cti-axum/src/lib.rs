//! axum adapter for [`cti_core`]: the CTI HTTP API, Dialpad webhooks, the `/ws` WebSocket,
//! rate limits, health, metrics and the OpenAPI document.
//!
//! [`router`] (or [`router_with_state`]) returns a plain [`axum::Router`] that an application
//! serves directly or nests inside its own router:
//!
//! | routes | authentication | module |
//! |---|---|---|
//! | `GET /`, `/health`, `/metrics`, `/metrics/prometheus`, `/openapi.json` | none (`/metrics*`: bearer with [`HttpConfig::metrics_require_auth`]) | [`rest`], [`openapi`] |
//! | `POST /webhooks/dialpad`, `/webhooks/dialpad/{app_id}` | Dialpad signature (JWT or HMAC) | [`rest`] |
//! | `GET /api/calls…`, `/api/messages…`, `/api/voicemails…` | `x-app-api-key` | [`rest`] |
//! | `/internal/*` (apps, keys, voicemails, user mappings, webhooks, events) | `Authorization: Bearer <internal secret>` | [`rest`] |
//! | `GET /ws` (WebSocket upgrade) | `x-app-api-key` or `?api_key=` | [`ws`] |
//!
//! Every error body is JSON ([`error`]), every response echoes `x-request-id`, and the four
//! rate-limit buckets of [`RateLimits`] answer `429` with `Retry-After` ([`ratelimit`]).
//! `GET /openapi.json` describes all of it ([`openapi::openapi`]); `docs/api.md` is the prose
//! reference.
//!
//! # Embedding
//!
//! Build a [`Cti`] on a store, start its processor, nest the router, and on shutdown call
//! [`AppState::begin_shutdown`] then [`Running::shutdown`](cti_core::inbox::Running::shutdown).
//! The guide `docs/embedding.md` and the runnable example `examples/embed.rs`
//! (`cargo run -p cti-axum --example embed`) show a complete application with its own routes,
//! state and authentication.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use axum::Router;
//! use axum::routing::get;
//! use cti_axum::{AppState, HttpConfig};
//! use cti_core::Cti;
//! use cti_core::store::MemoryStore;
//!
//! # async fn run() -> std::io::Result<()> {
//! let cti = Cti::builder().store(Arc::new(MemoryStore::new())).build();
//! let running = cti.start();
//! let state = AppState::new(cti, HttpConfig::new("an-internal-secret-of-32-characters!"));
//! let app = Router::new()
//!     .route("/", get(|| async { "my application" }))
//!     .nest("/cti", cti_axum::router_with_state(state.clone()));
//! // TCP_NODELAY: live WebSocket events must not wait for the client's delayed ACKs.
//! let listener = cti_axum::no_delay(tokio::net::TcpListener::bind("127.0.0.1:3000").await?);
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         state.begin_shutdown();
//!         running.shutdown(Duration::from_secs(5)).await;
//!     })
//!     .await
//! # }
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cti_core::Cti;
use cti_core::secrets::Secret;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub mod error;
pub mod openapi;
pub mod ratelimit;
pub mod rest;
pub mod ws;

/// Requests per window of the four rate-limit buckets (spec §0.5).
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// `/webhooks/*`: rejected requests per 60 s (default 1000).
    pub webhook_per_min: u32,
    /// `/api/*` per 60 s (default 300).
    pub api_per_min: u32,
    /// `/internal/*` per 60 s, counted before authentication (default 100).
    pub internal_per_min: u32,
    /// `/auth/dialpad/*` failures per 15 min (default 10).
    pub auth_per_15min: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            webhook_per_min: 1000,
            api_per_min: 300,
            internal_per_min: 100,
            auth_per_15min: 10,
        }
    }
}

/// HTTP settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Bearer secret of `/internal/*` (`INTERNAL_API_SECRET`).
    pub internal_secret: Secret<String>,
    /// `NODE_ENV` as reported by `/health` (`"sandbox"` when unset).
    pub environment: String,
    /// Port reported by `/health`.
    pub port: u16,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// Number of trusted reverse-proxy hops (`TRUST_PROXY`): the client address is taken from
    /// `X-Forwarded-For` that many hops from the right.
    pub trust_proxy: usize,
    /// Max webhook body (`WEBHOOK_BODY_LIMIT`, default 1 MiB).
    pub webhook_body_limit: usize,
    /// Max body of other routes (default 100 KiB).
    pub api_body_limit: usize,
    /// Header carrying the HMAC signature on the JSON path (default `x-dialpad-signature`).
    pub signature_header: String,
    /// WebSocket ping interval (`WS_HEARTBEAT_MS`, default 30 s).
    pub ws_heartbeat: Duration,
    /// Max inbound WebSocket frame (`WS_MAX_FRAME_BYTES`, default 64 KiB).
    pub ws_max_frame: usize,
    /// Protect `/metrics` with the internal secret (`METRICS_REQUIRE_AUTH`).
    pub metrics_require_auth: bool,
    /// Production mode: HTTPS redirect / HSTS using `public_base_url`.
    pub production: bool,
    /// External origin (`PUBLIC_BASE_URL`), e.g. `https://cti.example.com`.
    pub public_base_url: Option<String>,
}

impl HttpConfig {
    /// Defaults with the given internal secret.
    pub fn new(internal_secret: impl Into<String>) -> Self {
        Self {
            internal_secret: Secret::new(internal_secret.into()),
            environment: "sandbox".into(),
            port: 4000,
            rate_limits: RateLimits::default(),
            trust_proxy: 0,
            webhook_body_limit: 1024 * 1024,
            api_body_limit: 100 * 1024,
            signature_header: "x-dialpad-signature".into(),
            ws_heartbeat: Duration::from_secs(30),
            ws_max_frame: 64 * 1024,
            metrics_require_auth: false,
            production: false,
            public_base_url: None,
        }
    }
}

/// The state the routers hold: one [`AppState`] behind one reference count. Every request
/// clones the state several times (middleware, extractor); an `Arc` clone is one atomic
/// increment where an `AppState` clone is four, on counters both cores keep touching.
pub type Shared = Arc<AppState>;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub cti: Cti,
    /// Settings.
    pub config: Arc<HttpConfig>,
    /// Rate limiter buckets.
    pub limits: Arc<ratelimit::Limiter>,
    /// Process start (for `uptime`).
    pub started: Instant,
    /// Set when shutting down (health answers 503, WebSockets close with 1001).
    pub shutting_down: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// State for `cti` with `config`: fresh rate-limit buckets, uptime counted from now, not
    /// shutting down.
    pub fn new(cti: Cti, config: HttpConfig) -> Self {
        Self {
            limits: Arc::new(ratelimit::Limiter::new(&config.rate_limits)),
            cti,
            config: Arc::new(config),
            started: Instant::now(),
            shutting_down: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Marks the server as shutting down: `/health` answers 503 (load balancers stop sending
    /// traffic) and new `/ws` upgrades are refused. Call it when the shutdown signal arrives,
    /// before [`cti_core::inbox::Running::shutdown`] closes the live sockets.
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Builds the complete router (REST + webhooks + WebSocket), ready to serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` (the client address feeds the rate
/// limits; without `ConnectInfo` the limits key on `X-Forwarded-For`/a shared bucket).
pub fn router(cti: Cti, config: HttpConfig) -> axum::Router {
    router_with_state(AppState::new(cti, config))
}

/// Like [`router`] with a prepared state: keep a clone to call [`AppState::begin_shutdown`].
pub fn router_with_state(state: AppState) -> axum::Router {
    let state: Shared = Arc::new(state);
    // `/ws` gets the layers of the REST routes that apply to an upgrade request: JSON error
    // bodies (e.g. a 405) and the `x-request-id` echo.
    let ws = ws::routes(state.clone())
        .layer(axum::middleware::map_response(error::normalize))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    rest::routes(state).merge(ws)
}

/// A listener whose accepted connections use `TCP_NODELAY`; serve the router through it.
///
/// Live WebSocket events are small writes that must leave at once: with Nagle's algorithm a
/// write waits for the ACK of the previous one, which the peer may delay by up to 40 ms, and
/// under a steady stream of events every socket then stalls that long (webhook→WebSocket p90
/// 39 ms at 1,000 sockets × 500 events/s; 13 ms with this, docs/performance.md). The router
/// cannot set the option itself: axum hands it connections already accepted.
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn set(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    }
    axum::serve::ListenerExt::tap_io(listener, set as fn(&mut tokio::net::TcpStream))
}

/// Client address used for rate limiting, honouring `trust_proxy` hops of `X-Forwarded-For`.
pub fn client_ip(
    headers: &axum::http::HeaderMap,
    peer: Option<IpAddr>,
    trust_proxy: usize,
) -> Option<IpAddr> {
    if trust_proxy > 0
        && let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
    {
        let hops: Vec<&str> = xff
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if hops.len() >= trust_proxy
            && let Ok(ip) = hops[hops.len() - trust_proxy].parse()
        {
            return Some(ip);
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    /// `docs/embedding.md` shows `examples/embed.rs` verbatim (the example is compiled by
    /// `cargo test`, so the guide's code is too).
    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_acks() {
        use axum::serve::Listener;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = super::no_delay(listener);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn embedding_guide_shows_the_example() {
        let guide = include_str!("../../docs/embedding.md");
        let example = include_str!("../examples/embed.rs");
        let block = guide
            .split_once("```rust\n")
            .and_then(|(_, rest)| rest.split_once("\n```\n"))
            .map(|(code, _)| format!("{code}\n"))
            .expect("docs/embedding.md has a ```rust block");
        assert!(
            block == example,
            "docs/embedding.md's code differs from cti-axum/examples/embed.rs: copy the file into \
             the guide"
        );
    }

    #[test]
    fn client_ip_honours_trusted_hops() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(super::client_ip(&h, peer, 0), peer);
        assert_eq!(
            super::client_ip(&h, peer, 1),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            super::client_ip(&h, peer, 2),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(super::client_ip(&h, peer, 3), peer);
    }
}
