//! Fixed-window rate limits (spec §0.5): four buckets keyed by client address, with the IETF
//! draft-6 `RateLimit-*` headers on every response of a limited route and `Retry-After` plus a
//! JSON `{"error": …}` body on `429`.
//!
//! `api` and `internal` count every request *before* it is handled (the internal bucket is
//! counted before authentication). `webhook` counts only rejected requests (`400/401/413`) so
//! verified Dialpad traffic is never throttled; `auth` counts only responses `>= 400`. Expired
//! windows are pruned so memory stays bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;

use crate::{AppState, RateLimits, Shared};

/// Entries above which a map is pruned even before a full window has elapsed.
const PRUNE_THRESHOLD: usize = 4096;

/// A rate-limit bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// `/webhooks/*` (60 s, rejected requests only).
    Webhook,
    /// `/api/*` (60 s, all requests; calls, messages and voicemails share it).
    Api,
    /// `/internal/*` (60 s, all requests, before authentication).
    Internal,
    /// `/auth/dialpad/*` (15 min, failures only).
    Auth,
}

impl Bucket {
    /// The `error` text of the bucket's `429` body (spec §0.5).
    pub fn message(self) -> &'static str {
        match self {
            Bucket::Webhook => "Too many webhook requests from this IP, please try again later.",
            Bucket::Api => "Too many API requests from this IP, please try again later.",
            Bucket::Internal => "Too many internal API requests, please try again later.",
            Bucket::Auth => "Too many OAuth attempts. Please try again later.",
        }
    }

    /// `true` when every request counts (before handling); `false` when only failures count.
    pub fn counts_all(self) -> bool {
        matches!(self, Bucket::Api | Bucket::Internal)
    }

    /// Whether a response with this status counts (only meaningful for failure buckets).
    pub fn counts_status(self, status: StatusCode) -> bool {
        match self {
            Bucket::Webhook => matches!(status.as_u16(), 400 | 401 | 413),
            Bucket::Auth => status.as_u16() >= 400,
            Bucket::Api | Bucket::Internal => true,
        }
    }
}

/// State of one key's window after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Max requests per window.
    pub limit: u32,
    /// Requests left in the window.
    pub remaining: u32,
    /// Time until the window resets.
    pub reset: Duration,
    /// Window length.
    pub window: Duration,
}

impl Quota {
    /// Whole seconds until reset, rounded up (at least 1 while the window is open).
    pub fn reset_secs(&self) -> u64 {
        let s = self.reset.as_secs() + u64::from(self.reset.subsec_nanos() > 0);
        s.max(1)
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    count: u32,
}

#[derive(Debug)]
struct Counters {
    map: HashMap<String, Window>,
    last_prune: Instant,
}

#[derive(Debug)]
struct BucketState {
    max: u32,
    window: Duration,
    counters: Mutex<Counters>,
}

impl BucketState {
    fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            counters: Mutex::new(Counters {
                map: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    fn prune(&self, c: &mut Counters, now: Instant) {
        let since = now.saturating_duration_since(c.last_prune);
        if since >= self.window
            || (c.map.len() > PRUNE_THRESHOLD && since >= Duration::from_secs(1))
        {
            let window = self.window;
            c.map
                .retain(|_, w| now.saturating_duration_since(w.started) < window);
            c.last_prune = now;
        }
    }

    /// Applies `add` to the key's current window and returns its count and quota.
    fn op(&self, key: &str, now: Instant, add: u32) -> (u32, Quota) {
        let mut c = self.counters.lock();
        self.prune(&mut c, now);
        let window = self.window;
        let count = if let Some(w) = c.map.get_mut(key) {
            if now.saturating_duration_since(w.started) >= window {
                *w = Window {
                    started: now,
                    count: 0,
                };
            }
            w.count = w.count.saturating_add(add);
            *w
        } else if add > 0 {
            let w = Window {
                started: now,
                count: add,
            };
            c.map.insert(key.to_string(), w);
            w
        } else {
            Window {
                started: now,
                count: 0,
            }
        };
        let reset = window.saturating_sub(now.saturating_duration_since(count.started));
        let quota = Quota {
            limit: self.max,
            remaining: self.max.saturating_sub(count.count),
            reset,
            window,
        };
        (count.count, quota)
    }
}

/// Outcome of [`Limiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Quota to report in the headers.
    pub quota: Quota,
    /// `true` when the request must be answered `429`.
    pub limited: bool,
}

/// The four buckets of one process.
#[derive(Debug)]
pub struct Limiter {
    webhook: BucketState,
    api: BucketState,
    internal: BucketState,
    auth: BucketState,
}

impl Limiter {
    /// Buckets with the configured maxima (windows: 60 s, auth 15 min).
    pub fn new(l: &RateLimits) -> Self {
        let min = Duration::from_secs(60);
        Self {
            webhook: BucketState::new(l.webhook_per_min, min),
            api: BucketState::new(l.api_per_min, min),
            internal: BucketState::new(l.internal_per_min, min),
            auth: BucketState::new(l.auth_per_15min, Duration::from_secs(15 * 60)),
        }
    }

    fn bucket(&self, b: Bucket) -> &BucketState {
        match b {
            Bucket::Webhook => &self.webhook,
            Bucket::Api => &self.api,
            Bucket::Internal => &self.internal,
            Bucket::Auth => &self.auth,
        }
    }

    /// Called before handling. Buckets that count every request increment here and limit
    /// once the count exceeds the maximum; failure-only buckets just look and limit once the
    /// recorded failures reached the maximum.
    pub fn check(&self, bucket: Bucket, key: &str, now: Instant) -> Decision {
        let b = self.bucket(bucket);
        if bucket.counts_all() {
            let (count, quota) = b.op(key, now, 1);
            Decision {
                quota,
                limited: count > b.max,
            }
        } else {
            let (count, quota) = b.op(key, now, 0);
            Decision {
                quota,
                limited: count >= b.max,
            }
        }
    }

    /// Records one failure for a failure-only bucket; returns the updated quota.
    pub fn record_failure(&self, bucket: Bucket, key: &str, now: Instant) -> Quota {
        self.bucket(bucket).op(key, now, 1).1
    }

    /// Number of keys currently tracked by a bucket (for tests and metrics).
    pub fn tracked_keys(&self, bucket: Bucket) -> usize {
        self.bucket(bucket).counters.lock().map.len()
    }
}

fn set(resp: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn apply_headers(resp: &mut Response, q: &Quota) {
    set(
        resp,
        "ratelimit-policy",
        format!("{};w={}", q.limit, q.window.as_secs()),
    );
    set(resp, "ratelimit-limit", q.limit.to_string());
    set(resp, "ratelimit-remaining", q.remaining.to_string());
    set(resp, "ratelimit-reset", q.reset_secs().to_string());
}

/// The rate-limit key of a request: the client address (trusted-proxy aware) or a shared key
/// when the server runs without `ConnectInfo` and no trusted `X-Forwarded-For` is present.
pub fn client_key(state: &AppState, req: &Request) -> String {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match crate::client_ip(req.headers(), peer, state.config.trust_proxy) {
        Some(ip) => ip.to_string(),
        None => "shared".to_string(),
    }
}

/// The `429` response of a bucket (headers included).
pub fn too_many(bucket: Bucket, q: &Quota) -> Response {
    let mut resp = crate::error::error(StatusCode::TOO_MANY_REQUESTS, bucket.message());
    let q = Quota { remaining: 0, ..*q };
    apply_headers(&mut resp, &q);
    set(&mut resp, "retry-after", q.reset_secs().to_string());
    resp
}

/// Runs a request through a bucket.
pub async fn enforce(state: &AppState, bucket: Bucket, req: Request, next: Next) -> Response {
    let key = client_key(state, &req);
    let d = state.limits.check(bucket, &key, Instant::now());
    if d.limited {
        return too_many(bucket, &d.quota);
    }
    let mut resp = next.run(req).await;
    let quota = if !bucket.counts_all() && bucket.counts_status(resp.status()) {
        state.limits.record_failure(bucket, &key, Instant::now())
    } else {
        d.quota
    };
    apply_headers(&mut resp, &quota);
    resp
}

/// Middleware of the webhook bucket.
pub async fn webhook_limit(State(state): State<Shared>, req: Request, next: Next) -> Response {
    enforce(&state, Bucket::Webhook, req, next).await
}

/// Middleware of the API bucket.
pub async fn api_limit(State(state): State<Shared>, req: Request, next: Next) -> Response {
    enforce(&state, Bucket::Api, req, next).await
}

/// Middleware of the internal bucket (mount outside the bearer check).
pub async fn internal_limit(State(state): State<Shared>, req: Request, next: Next) -> Response {
    enforce(&state, Bucket::Internal, req, next).await
}

/// Middleware of the OAuth bucket (for `/auth/dialpad/*`).
pub async fn auth_limit(State(state): State<Shared>, req: Request, next: Next) -> Response {
    enforce(&state, Bucket::Auth, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u32) -> Limiter {
        Limiter::new(&RateLimits {
            webhook_per_min: max,
            api_per_min: max,
            internal_per_min: max,
            auth_per_15min: max,
        })
    }

    #[test]
    fn counting_bucket_limits_after_max() {
        let l = limiter(3);
        let t = Instant::now();
        for i in 0..3 {
            let d = l.check(Bucket::Api, "a", t);
            assert!(!d.limited);
            assert_eq!(d.quota.remaining, 2 - i);
        }
        let d = l.check(Bucket::Api, "a", t);
        assert!(d.limited);
        assert_eq!(d.quota.remaining, 0);
        // other key unaffected
        assert!(!l.check(Bucket::Api, "b", t).limited);
        // window expiry resets
        assert!(
            !l.check(Bucket::Api, "a", t + Duration::from_secs(61))
                .limited
        );
    }

    #[test]
    fn failure_bucket_counts_only_recorded() {
        let l = limiter(2);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(!l.check(Bucket::Webhook, "k", t).limited);
        }
        assert_eq!(l.tracked_keys(Bucket::Webhook), 0);
        l.record_failure(Bucket::Webhook, "k", t);
        assert!(!l.check(Bucket::Webhook, "k", t).limited);
        let q = l.record_failure(Bucket::Webhook, "k", t);
        assert_eq!(q.remaining, 0);
        assert!(l.check(Bucket::Webhook, "k", t).limited);
        assert!(
            !l.check(Bucket::Webhook, "k", t + Duration::from_secs(60))
                .limited
        );
    }

    #[test]
    fn status_classification() {
        assert!(Bucket::Webhook.counts_status(StatusCode::UNAUTHORIZED));
        assert!(Bucket::Webhook.counts_status(StatusCode::PAYLOAD_TOO_LARGE));
        assert!(!Bucket::Webhook.counts_status(StatusCode::OK));
        assert!(!Bucket::Webhook.counts_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(Bucket::Auth.counts_status(StatusCode::NOT_FOUND));
        assert!(!Bucket::Auth.counts_status(StatusCode::FOUND));
    }

    #[test]
    fn expired_windows_are_pruned() {
        let l = limiter(5);
        let t = Instant::now();
        for i in 0..1000 {
            l.check(Bucket::Internal, &format!("k{i}"), t);
        }
        assert_eq!(l.tracked_keys(Bucket::Internal), 1000);
        l.check(Bucket::Internal, "late", t + Duration::from_secs(120));
        assert_eq!(l.tracked_keys(Bucket::Internal), 1);
    }

    #[test]
    fn reset_rounds_up() {
        let q = Quota {
            limit: 1,
            remaining: 0,
            reset: Duration::from_millis(1500),
            window: Duration::from_secs(60),
        };
        assert_eq!(q.reset_secs(), 2);
    }
}
