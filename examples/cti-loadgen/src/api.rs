//! API mode: `GET /api/calls?<query>` with the app key, at a fixed rate or flat out.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::header::HeaderValue;
use serde::Serialize;

use crate::control::{ResourceProbe, Resources};
use crate::http::{Endpoint, Req};
use crate::load::{self, LoadOptions, LoadReport, Rate, RequestSource};
use crate::{Error, Result, Target};

/// Options of an API run.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Server and tenant (only `url` and `api_key` are used).
    pub target: Target,
    /// Query string of `GET /api/calls` (without `?`).
    pub query: String,
    /// Fixed rate or max.
    pub rate: Rate,
    /// Connections.
    pub connections: usize,
    /// Time bound.
    pub duration: Duration,
    /// Request count bound.
    pub requests: Option<u64>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The server's pid, to report its CPU time per request.
    pub server_pid: Option<u32>,
    /// Summarise each second of the measured part on its own (the report's `timeline`).
    pub timeline: bool,
}

impl ApiOptions {
    /// Defaults for `target`: `limit=50`, 100 req/s for 5 s, 16 connections.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            query: "limit=50".into(),
            rate: Rate::Fixed(100.0),
            connections: 16,
            duration: Duration::from_secs(5),
            requests: None,
            timeout: Duration::from_secs(10),
            server_pid: None,
            timeline: false,
        }
    }
}

struct ApiSource {
    ep: Endpoint,
    path: String,
    key: HeaderValue,
}

impl RequestSource for ApiSource {
    fn request(&self, _i: u64) -> Option<Req> {
        self.ep
            .request(hyper::Method::GET, &self.path)
            .header("x-app-api-key", self.key.clone())
            .body(Full::new(bytes::Bytes::new()))
            .ok()
    }
}

/// What an API run reports.
#[derive(Clone, Debug, Serialize)]
pub struct ApiReport {
    /// The path requested.
    pub path: String,
    /// The load.
    pub load: LoadReport,
    /// CPU use and machine load.
    pub resources: Resources,
}

impl ApiReport {
    /// Every request answered `200`.
    pub fn all_ok(&self) -> bool {
        self.load.errors == 0
            && self.load.completed == self.load.sent
            && self.load.count(200) == self.load.completed
    }
}

impl std::fmt::Display for ApiReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "api: GET {}", self.path)?;
        writeln!(f, "{}", self.load)?;
        writeln!(f, "{}", self.resources)
    }
}

/// Runs API mode.
pub async fn run(opts: &ApiOptions) -> Result<ApiReport> {
    let ep = Endpoint::parse(&opts.target.url).await?;
    let path = if opts.query.is_empty() {
        "/api/calls".to_string()
    } else {
        format!("/api/calls?{}", opts.query.trim_start_matches('?'))
    };
    let key = HeaderValue::from_str(&opts.target.api_key)
        .map_err(|_| Error::new("the API key is not a valid header value"))?;
    let source = Arc::new(ApiSource {
        ep: ep.clone(),
        path: path.clone(),
        key,
    });
    let load_opts = LoadOptions {
        rate: opts.rate,
        connections: opts.connections,
        duration: opts.duration,
        max_requests: opts.requests,
        timeout: opts.timeout,
        timeline: opts.timeline,
    };
    let probe = ResourceProbe::start(opts.server_pid);
    let load = load::run(&ep, source, &load_opts).await;
    let resources = probe.finish(load.completed);
    Ok(ApiReport {
        path,
        load,
        resources,
    })
}
