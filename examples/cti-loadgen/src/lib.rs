//! `cti-loadgen`: a load generator for a running `cti-server`.
//!
//! Three modes, each usable from the `cti-loadgen` binary or in-process through this library
//! (the smoke test in `examples/cti-server/tests/loadgen_smoke.rs` does the latter):
//!
//! * [`webhook`]: signed Dialpad webhooks — HS256 JWTs on `POST /webhooks/dialpad/<app_id>` or
//!   JSON + HMAC with the app's `x-app-api-key` on `POST /webhooks/dialpad` — at a fixed rate
//!   (open loop, latency measured from the *scheduled* send time so coordinated omission is
//!   avoided) or flat out over N keep-alive connections; optionally watches the inbox backlog
//!   through `/metrics` and verifies that every accepted call became a call record.
//! * [`api`]: `GET /api/calls` with the app key, fixed rate or flat out.
//! * [`ws`]: N WebSocket clients on `/ws` while webhooks are posted at a fixed rate, measuring
//!   webhook→WebSocket latency and exactly-once delivery per client; or N idle sockets and the
//!   server's resident memory per connection.
//!
//! The load path uses raw hyper HTTP/1.1 connections ([`http`]) so the client stays cheap; the
//! payloads are rendered from templates of the Dialpad fixtures and signed before the timed loop
//! ([`payload`]). Every report carries the machine's speed on the server's hot path
//! ([`calibrate`]), measured before the load, so figures from different days can be compared.

pub mod api;
pub mod calibrate;
pub mod control;
pub mod http;
pub mod load;
pub mod payload;
pub mod stats;
pub mod webhook;
pub mod ws;
pub mod wsclient;

use std::fmt;

/// A load-generator failure (set-up, connection or protocol), as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The server and tenant a run talks to.
#[derive(Clone, Debug)]
pub struct Target {
    /// Base URL of the server receiving webhooks and API calls, e.g. `http://127.0.0.1:4000`.
    pub url: String,
    /// The tenant app id (UUID).
    pub app_id: String,
    /// The app's API key (`raw_…`).
    pub api_key: String,
    /// The secret that signs webhooks: the app's webhook secret, or the server's
    /// `DIALPAD_WEBHOOK_SECRET` when the app has none (always the global secret on the legacy
    /// `POST /webhooks/dialpad` route used by the API-key path).
    pub webhook_secret: String,
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to the hard limit; returns the new soft
/// limit (or the error text).
pub fn raise_nofile_limit() -> std::result::Result<u64, String> {
    rlimit::increase_nofile_limit(u64::MAX).map_err(|e| e.to_string())
}
