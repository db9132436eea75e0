//! Webhook mode: signed Dialpad call events at a fixed rate or flat out, with an optional
//! backlog watch (`/metrics`) and a check that every accepted call became a call record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use serde::Serialize;
use tokio::time::Instant;

use crate::control::{self, Gauges, ResourceProbe, Resources};
use crate::http::{Endpoint, Req, Resp};
use crate::load::{self, LoadOptions, LoadReport, Rate, RequestSource};
use crate::payload::{AuthPath, EventTime, Mix, Plan, SignedWebhook};
use crate::{Error, Result, Target};

/// Rate assumed for sizing a flat-out run when `requests` is not given (requests planned =
/// this × duration).
pub const MAX_RATE_ESTIMATE: f64 = 20_000.0;

/// Options of a webhook run.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Server and tenant.
    pub target: Target,
    /// JWT or API-key path.
    pub auth: AuthPath,
    /// Call shapes.
    pub mix: Mix,
    /// Where each event's `event_timestamp` comes from.
    pub event_time: EventTime,
    /// Fixed rate or max.
    pub rate: Rate,
    /// Connections (max: workers; fixed: cap in flight).
    pub connections: usize,
    /// Sending time bound (the measured part, after `warmup`).
    pub duration: Duration,
    /// Sending at the same rate before the measured part: its requests are checked like the
    /// others but left out of the latency, throughput and CPU figures (connection set-up,
    /// prepared statements and caches warm up there).
    pub warmup: Duration,
    /// Request count bound (flat out: the number of requests planned and pre-signed).
    pub requests: Option<u64>,
    /// Fraction of requests that repeat an earlier one byte for byte.
    pub duplicates: f64,
    /// Pre-sign all requests before the timed loop when they fit in this many MiB; otherwise
    /// render and sign each request right before it is sent.
    pub presign_mib: u64,
    /// Watch `/metrics` during and after the run and verify the calls.
    pub check: bool,
    /// `/metrics` polling interval.
    pub metrics_interval: Duration,
    /// How long to wait for the backlog to drain after sending.
    pub drain_timeout: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The server's pid, to report its CPU time per request.
    pub server_pid: Option<u32>,
    /// Summarise each second of the measured part on its own (the report's `timeline`).
    pub timeline: bool,
}

impl WebhookOptions {
    /// Defaults for `target`: JWT path, lifecycles, 200 req/s for 5 s, 64 connections, checks on.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            auth: AuthPath::Jwt,
            mix: Mix::Lifecycles,
            event_time: EventTime::SendOrder,
            rate: Rate::Fixed(200.0),
            connections: 64,
            duration: Duration::from_secs(5),
            warmup: Duration::ZERO,
            requests: None,
            duplicates: 0.0,
            presign_mib: 1536,
            check: true,
            metrics_interval: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            server_pid: None,
            timeline: false,
        }
    }

    /// Requests planned for this run.
    pub fn planned_requests(&self) -> u64 {
        let secs = (self.warmup + self.duration).as_secs_f64();
        let by_time = match self.rate {
            Rate::Fixed(r) => (secs * r).ceil() as u64,
            Rate::Max => (secs * MAX_RATE_ESTIMATE).ceil() as u64,
        };
        match (self.rate, self.requests) {
            (Rate::Max, Some(n)) => n,
            (_, Some(n)) => n.min(by_time),
            (_, None) => by_time,
        }
    }
}

/// The requests of a source from `.1` on: the measured part of a run continues the plan where
/// the warm-up stopped (its calls' next events, no repeats).
struct Offset(Arc<WebhookSource>, u64);

impl RequestSource for Offset {
    fn request(&self, i: u64) -> Option<Req> {
        self.0.request(self.1 + i)
    }
    fn on_response(&self, i: u64, resp: &Resp) {
        self.0.on_response(self.1 + i, resp)
    }
}

/// Produces the webhook requests of a run and tallies their answers.
pub struct WebhookSource {
    ep: Endpoint,
    path: String,
    auth: AuthPath,
    api_key: HeaderValue,
    plan: Plan,
    presigned: Option<Vec<SignedWebhook>>,
    n: u64,
    accepted_calls: Vec<AtomicBool>,
    duplicate_acks: AtomicU64,
    epoch: Instant,
    send_times: Option<Vec<AtomicU64>>,
}

/// What [`WebhookSource::prepare`] builds.
#[derive(Clone, Copy, Debug)]
pub struct SourceSpec {
    /// JWT or API-key path.
    pub auth: AuthPath,
    /// Call shapes.
    pub mix: Mix,
    /// Where each event's `event_timestamp` comes from.
    pub event_time: EventTime,
    /// Fraction of duplicate requests.
    pub duplicates: f64,
    /// Requests to plan.
    pub requests: u64,
    /// Pre-sign budget (MiB).
    pub presign_mib: u64,
    /// Keep the send instant of every request (WebSocket latency).
    pub record_send_times: bool,
}

/// How the payloads were prepared.
#[derive(Clone, Debug, Serialize)]
pub struct Preparation {
    /// Requests planned.
    pub requests: u64,
    /// Distinct calls among them (upper bound).
    pub calls: u64,
    /// Whether every request was signed before the timed loop.
    pub presigned: bool,
    /// Time spent pre-signing (s).
    pub presign_s: f64,
    /// Rendering + signing cost per request measured on a sample (µs, one core).
    pub sign_us_per_request: f64,
    /// Mean body size (bytes).
    pub mean_body_bytes: u64,
    /// Requests that repeat an earlier one.
    pub duplicates_planned: u64,
}

impl WebhookSource {
    /// Plans `spec.requests` requests for `target`; pre-signs them when they fit in
    /// `spec.presign_mib`.
    pub fn prepare(
        ep: Endpoint,
        target: &Target,
        spec: &SourceSpec,
    ) -> Result<(Self, Preparation)> {
        let SourceSpec {
            auth,
            mix,
            event_time,
            duplicates,
            requests: n,
            presign_mib,
            record_send_times,
        } = *spec;
        let plan = Plan::new(mix, auth, target.webhook_secret.as_bytes(), duplicates)?
            .with_event_time(event_time);
        let path = match auth {
            AuthPath::Jwt => format!("/webhooks/dialpad/{}", target.app_id),
            AuthPath::ApiKey => "/webhooks/dialpad".to_string(),
        };
        let api_key = HeaderValue::from_str(&target.api_key)
            .map_err(|_| Error::new("the API key is not a valid header value"))?;
        // Measure the per-request cost on a sample.
        let sample = n.clamp(1, 2000);
        let t0 = std::time::Instant::now();
        let mut bytes = 0u64;
        for i in 0..sample {
            bytes += plan.render(i).body.len() as u64;
        }
        let sign_us = t0.elapsed().as_secs_f64() * 1e6 / sample as f64;
        let mean = bytes / sample;
        let fits = n.saturating_mul(mean + 128) <= presign_mib.saturating_mul(1024 * 1024);
        let t1 = std::time::Instant::now();
        let presigned = fits.then(|| presign(&plan, n));
        let presign_s = t1.elapsed().as_secs_f64();
        let duplicates_planned = match &presigned {
            Some(v) => v.iter().filter(|w| w.duplicate).count() as u64,
            None => 0,
        };
        let calls = plan.calls_upper_bound(n);
        let source = Self {
            ep,
            path,
            auth,
            api_key,
            plan,
            presigned,
            n,
            accepted_calls: (0..calls).map(|_| AtomicBool::new(false)).collect(),
            duplicate_acks: AtomicU64::new(0),
            epoch: Instant::now(),
            send_times: record_send_times.then(|| (0..n).map(|_| AtomicU64::new(0)).collect()),
        };
        let prep = Preparation {
            requests: n,
            calls,
            presigned: source.presigned.is_some(),
            presign_s,
            sign_us_per_request: sign_us,
            mean_body_bytes: mean,
            duplicates_planned,
        };
        Ok((source, prep))
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Calls with at least one accepted (`200`) request.
    pub fn accepted_calls(&self) -> u64 {
        self.accepted_calls
            .iter()
            .filter(|a| a.load(Ordering::Relaxed))
            .count() as u64
    }

    /// Whether call `call_no` had an accepted request.
    pub fn call_accepted(&self, call_no: u64) -> bool {
        self.accepted_calls
            .get(call_no as usize)
            .is_some_and(|a| a.load(Ordering::Relaxed))
    }

    /// `200` answers that said `"duplicate": true`.
    pub fn duplicate_acks(&self) -> u64 {
        self.duplicate_acks.load(Ordering::Relaxed)
    }

    /// The instant request `i` was handed to its connection, if it was.
    pub fn send_time(&self, i: u64) -> Option<Instant> {
        let t = self
            .send_times
            .as_ref()?
            .get(i as usize)?
            .load(Ordering::Acquire);
        (t > 0).then(|| self.epoch + Duration::from_nanos(t))
    }

    fn build(&self, w: SignedWebhook) -> Option<Req> {
        let ct = match self.auth {
            AuthPath::Jwt => "application/jwt",
            AuthPath::ApiKey => "application/json",
        };
        let mut b = self
            .ep
            .request(hyper::Method::POST, &self.path)
            .header(hyper::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        if self.auth == AuthPath::ApiKey {
            b = b.header("x-app-api-key", self.api_key.clone());
            if let Some(sig) = &w.signature {
                b = b.header("x-dialpad-signature", sig.as_str());
            }
        }
        b.body(Full::new(w.body)).ok()
    }
}

fn presign(plan: &Plan, n: u64) -> Vec<SignedWebhook> {
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .clamp(1, 8) as u64;
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let lo = (t * chunk).min(n);
                    let hi = ((t + 1) * chunk).min(n);
                    (lo..hi).map(|i| plan.render(i)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

impl RequestSource for WebhookSource {
    fn request(&self, i: u64) -> Option<Req> {
        if i >= self.n {
            return None;
        }
        let w = match &self.presigned {
            Some(v) => v.get(i as usize)?.clone(),
            None => self.plan.render(i),
        };
        let req = self.build(w);
        if let Some(times) = &self.send_times
            && let Some(slot) = times.get(i as usize)
        {
            let ns = self.epoch.elapsed().as_nanos() as u64;
            slot.store(ns.max(1), Ordering::Release);
        }
        req
    }

    fn on_response(&self, i: u64, resp: &Resp) {
        if resp.status != 200 {
            return;
        }
        let call_no = match &self.presigned {
            Some(v) => v.get(i as usize).map(|w| w.call_no),
            None => Some(self.plan.call_no(i)),
        };
        if let Some(c) = call_no.and_then(|c| self.accepted_calls.get(c as usize)) {
            c.store(true, Ordering::Relaxed);
        }
        if contains(&resp.body, b"\"duplicate\"") {
            self.duplicate_acks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn contains(hay: &Bytes, needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The inbox backlog seen through `/metrics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BacklogReport {
    /// Largest `unprocessed + processing` seen.
    pub max_backlog: u64,
    /// When it was seen (s after the first request).
    pub max_backlog_at_s: f64,
    /// Backlog at the end of sending.
    pub backlog_at_end_of_sending: u64,
    /// Time from the end of sending until the backlog was first seen at zero (s); `None` when
    /// it did not drain within the timeout.
    pub drain_s: Option<f64>,
    /// Backlog at the last sample.
    pub final_backlog: u64,
    /// Server CPU seconds spent while draining (with its pid).
    pub server_cpu_drain_s: Option<f64>,
    /// Growth of `events.dead_lettered` during the run.
    pub dead_lettered_delta: u64,
    /// `/metrics` samples taken.
    pub samples: u64,
    /// `(seconds since the first request, backlog)` per sample.
    pub timeline: Vec<(f64, u64)>,
    /// Failed `/metrics` reads.
    pub errors: u64,
}

/// Result of the calls check.
#[derive(Clone, Debug, Serialize)]
pub struct CallsCheck {
    /// `GET /api/calls` total before the run.
    pub before: u64,
    /// Total after the backlog drained.
    pub after: u64,
    /// Distinct calls with at least one accepted request.
    pub expected: u64,
    /// `after - before == expected`.
    pub ok: bool,
}

/// Everything a webhook run reports.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookReport {
    /// Auth path.
    pub auth: AuthPath,
    /// Call shapes.
    pub mix: Mix,
    /// Where each event's `event_timestamp` came from.
    pub event_time: EventTime,
    /// Payload preparation.
    pub preparation: Preparation,
    /// `200 {"duplicate":true}` answers.
    pub duplicate_acks: u64,
    /// Distinct calls accepted.
    pub accepted_calls: u64,
    /// The warm-up (`--warmup`), not part of the measured figures.
    pub warmup: Option<LoadReport>,
    /// The load itself (after the warm-up).
    pub load: LoadReport,
    /// CPU use and machine load while sending (after the warm-up).
    pub resources: Resources,
    /// Backlog watch (with `check`).
    pub backlog: Option<BacklogReport>,
    /// Calls check (with `check`).
    pub calls: Option<CallsCheck>,
}

impl WebhookReport {
    /// Every request answered `200`, and (when checked) every accepted call became a record.
    pub fn all_ok(&self) -> bool {
        let warm_ok = self
            .warmup
            .as_ref()
            .is_none_or(|w| w.errors == 0 && w.completed == w.sent);
        warm_ok
            && self.load.errors == 0
            && self.load.completed == self.load.sent
            && self.load.count(200) == self.load.completed
            && self.calls.as_ref().is_none_or(|c| c.ok)
    }
}

/// Polls `/metrics` in the background.
pub(crate) struct BacklogWatch {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(BacklogReport, Gauges)>,
}

impl BacklogWatch {
    pub(crate) fn start(base_url: String, interval: Duration, epoch: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let client = control::client();
            let mut r = BacklogReport::default();
            let mut first: Option<Gauges> = None;
            let mut last = Gauges::default();
            while !flag.load(Ordering::Relaxed) {
                match control::gauges(&client, &base_url).await {
                    Ok(g) => {
                        let t = epoch.elapsed().as_secs_f64();
                        first.get_or_insert(g);
                        r.samples += 1;
                        r.timeline.push((t, g.backlog()));
                        if g.backlog() > r.max_backlog {
                            r.max_backlog = g.backlog();
                            r.max_backlog_at_s = t;
                        }
                        last = g;
                    }
                    Err(_) => r.errors += 1,
                }
                tokio::time::sleep(interval).await;
            }
            let base = first.unwrap_or_default();
            r.dead_lettered_delta = last.dead_lettered.saturating_sub(base.dead_lettered);
            (r, base)
        });
        Self { stop, handle }
    }

    /// Stops polling; returns the report and the first sample.
    pub(crate) async fn stop(self) -> (BacklogReport, Gauges) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
}

/// Waits until the backlog is zero (bounded); returns the seconds it took.
async fn drain(
    base_url: &str,
    interval: Duration,
    timeout: Duration,
    epoch: Instant,
    report: &mut BacklogReport,
) -> Option<f64> {
    let client = control::client();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut first = true;
    loop {
        if let Ok(g) = control::gauges(&client, base_url).await {
            let t = epoch.elapsed().as_secs_f64();
            report.samples += 1;
            report.timeline.push((t, g.backlog()));
            if first {
                report.backlog_at_end_of_sending = g.backlog();
                first = false;
            }
            if g.backlog() > report.max_backlog {
                report.max_backlog = g.backlog();
                report.max_backlog_at_s = t;
            }
            report.final_backlog = g.backlog();
            if g.backlog() == 0 {
                return Some(start.elapsed().as_secs_f64());
            }
        } else {
            report.errors += 1;
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs webhook mode.
pub async fn run(opts: &WebhookOptions) -> Result<WebhookReport> {
    let ep = Endpoint::parse(&opts.target.url).await?;
    let n = opts.planned_requests();
    let spec = SourceSpec {
        auth: opts.auth,
        mix: opts.mix,
        event_time: opts.event_time,
        duplicates: opts.duplicates,
        requests: n,
        presign_mib: opts.presign_mib,
        record_send_times: false,
    };
    let (source, preparation) = WebhookSource::prepare(ep.clone(), &opts.target, &spec)?;
    let source = Arc::new(source);
    let before = if opts.check {
        Some(control::calls_total(&opts.target.url, &opts.target.api_key).await?)
    } else {
        None
    };
    let epoch = Instant::now();
    let watch = opts
        .check
        .then(|| BacklogWatch::start(opts.target.url.clone(), opts.metrics_interval, epoch));
    let mut load_opts = LoadOptions {
        rate: opts.rate,
        connections: opts.connections,
        duration: opts.warmup,
        max_requests: Some(n),
        timeout: opts.timeout,
        timeline: false,
    };
    let mut warmup = None;
    let mut offset = 0;
    if !opts.warmup.is_zero() {
        let w = load::run(&ep, Arc::new(Offset(source.clone(), 0)), &load_opts).await;
        offset = w.sent;
        warmup = Some(w);
    }
    load_opts.duration = opts.duration;
    load_opts.max_requests = Some(n - offset);
    load_opts.timeline = opts.timeline;
    let probe = ResourceProbe::start(opts.server_pid);
    let load = load::run(&ep, Arc::new(Offset(source.clone(), offset)), &load_opts).await;
    let resources = probe.finish(load.completed);
    let mut backlog = None;
    let mut calls = None;
    if let (Some(watch), Some(before)) = (watch, before) {
        let (mut r, _) = watch.stop().await;
        let poll = opts.metrics_interval.min(Duration::from_millis(200));
        let drain_probe = ResourceProbe::start(opts.server_pid);
        r.drain_s = drain(&opts.target.url, poll, opts.drain_timeout, epoch, &mut r).await;
        r.server_cpu_drain_s = drain_probe.finish(0).server_cpu_s;
        let after = control::calls_total(&opts.target.url, &opts.target.api_key).await?;
        let expected = source.accepted_calls();
        calls = Some(CallsCheck {
            before,
            after,
            expected,
            ok: after.saturating_sub(before) == expected,
        });
        backlog = Some(r);
    }
    Ok(WebhookReport {
        auth: opts.auth,
        mix: opts.mix,
        event_time: opts.event_time,
        duplicate_acks: source.duplicate_acks(),
        accepted_calls: source.accepted_calls(),
        preparation,
        warmup,
        load,
        resources,
        backlog,
        calls,
    })
}

impl std::fmt::Display for WebhookReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.preparation;
        writeln!(
            f,
            "webhooks ({:?} path, {:?} mix, {:?} event times): {} requests planned for {} calls, mean body {} B",
            self.auth, self.mix, self.event_time, p.requests, p.calls, p.mean_body_bytes
        )?;
        writeln!(
            f,
            "  signing {:.2} µs/request; {}",
            p.sign_us_per_request,
            if p.presigned {
                format!("pre-signed before the timed loop in {:.2} s", p.presign_s)
            } else {
                "signed on the fly (over the pre-sign memory budget)".to_string()
            }
        )?;
        if let Some(w) = &self.warmup {
            writeln!(
                f,
                "  warm-up (not measured): sent {}, completed {}, errors {} in {:.2} s, p99 {:.3} ms",
                w.sent, w.completed, w.errors, w.elapsed_s, w.latency.p99_ms
            )?;
        }
        writeln!(f, "{}", self.load)?;
        writeln!(f, "{}", self.resources)?;
        writeln!(
            f,
            "  accepted calls {}, duplicate acks {} (planned {})",
            self.accepted_calls, self.duplicate_acks, p.duplicates_planned
        )?;
        if let Some(b) = &self.backlog {
            writeln!(
                f,
                "  backlog: max {} at {:.1} s, {} at end of sending, drained {}, dead-lettered +{} ({} samples)",
                b.max_backlog,
                b.max_backlog_at_s,
                b.backlog_at_end_of_sending,
                b.drain_s
                    .map(|s| format!("in {s:.2} s"))
                    .unwrap_or_else(|| format!("NOT (final backlog {})", b.final_backlog)),
                b.dead_lettered_delta,
                b.samples
            )?;
            if let Some(c) = b.server_cpu_drain_s {
                writeln!(f, "  server cpu while draining {c:.2} s")?;
            }
        }
        if let Some(c) = &self.calls {
            writeln!(
                f,
                "  calls: {} → {} (+{}), expected +{}: {}",
                c.before,
                c.after,
                c.after.saturating_sub(c.before),
                c.expected,
                if c.ok { "OK" } else { "MISMATCH" }
            )?;
        }
        Ok(())
    }
}
