//! axum adapter for [`cti_core`]: the documented CTI HTTP API (spec §1), Dialpad webhooks
//! (§2.7), the `/ws` WebSocket (§4.5), rate limits (§0.5), health and metrics.
//!
//! [`router`] returns a plain [`axum::Router`] that an application can serve directly or
//! `.nest("/cti", …)` inside its own router.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cti_core::Cti;
use cti_core::secrets::Secret;

pub mod error;
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

/// Builds the complete router (REST + webhooks + WebSocket), ready to serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` (the client address feeds the rate
/// limits; without `ConnectInfo` the limits key on `X-Forwarded-For`/a shared bucket).
pub fn router(cti: Cti, config: HttpConfig) -> axum::Router {
    let state = AppState {
        limits: Arc::new(ratelimit::Limiter::new(&config.rate_limits)),
        cti,
        config: Arc::new(config),
        started: Instant::now(),
        shutting_down: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    router_with_state(state)
}

/// Like [`router`] with a prepared state (lets the server keep a handle on `shutting_down`).
pub fn router_with_state(state: AppState) -> axum::Router {
    rest::routes(state.clone()).merge(ws::routes(state.clone()))
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
