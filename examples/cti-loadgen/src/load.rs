//! The request engine: open loop at a fixed rate, or closed loop flat out.
//!
//! * **Fixed rate** (open loop): request `i` is scheduled at `start + i / rate` regardless of how
//!   earlier requests fare; it takes an idle pooled connection (or opens one, up to
//!   `connections` in flight) and its latency is measured from the *scheduled* time, so a slow
//!   server cannot hide queueing delay by slowing the client down (coordinated omission).
//! * **Max** (closed loop): `connections` workers, each with its own keep-alive connection,
//!   send the next request as soon as the previous answer arrived; latency is per request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http::{Conn, Endpoint, Pool, Req, Resp};
use crate::stats::{self, LatencySummary};

/// How fast to send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// This many requests per second, open loop.
    Fixed(f64),
    /// As fast as the connections allow.
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::Fixed(r)),
            _ => Err(format!(
                "rate must be a positive number of requests/s or `max`, got {s:?}"
            )),
        }
    }
}

/// Engine options.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Rate.
    pub rate: Rate,
    /// Max: number of connections (workers). Fixed: cap on connections / requests in flight.
    pub connections: usize,
    /// Sending stops after this long.
    pub duration: Duration,
    /// Sending stops after this many requests (also bounded by the source).
    pub max_requests: Option<u64>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Also summarise each second of the run on its own ([`LoadReport::timeline`]).
    pub timeline: bool,
}

/// Produces request `i` and observes its response. `request` is called right before the
/// request is written (after a connection was obtained).
pub trait RequestSource: Send + Sync + 'static {
    /// Request `i`, or `None` when the source is exhausted.
    fn request(&self, i: u64) -> Option<Req>;
    /// Called with every response.
    fn on_response(&self, _i: u64, _resp: &Resp) {}
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// `"fixed"` or `"max"`.
    pub mode: &'static str,
    /// Target rate (fixed mode).
    pub target_rate: Option<f64>,
    /// Connections opened.
    pub connections: u64,
    /// Requests started.
    pub sent: u64,
    /// Responses received.
    pub completed: u64,
    /// Requests that failed without a response (connection errors, timeouts).
    pub errors: u64,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// From the first scheduled send to the last response (s).
    pub elapsed_s: f64,
    /// `completed / elapsed_s`.
    pub achieved_rate: f64,
    /// Latency (fixed mode: from the scheduled send time).
    pub latency: LatencySummary,
    /// Largest delay of the scheduler behind the schedule (fixed mode), ms.
    pub max_schedule_lag_ms: f64,
    /// The latency histogram (µs).
    #[serde(skip)]
    pub histogram: Histogram<u64>,
    /// With [`LoadOptions::timeline`]: one summary per second of the run, by the second each
    /// request was scheduled (fixed rate) or sent (max); empty otherwise.
    pub timeline: Vec<SecondSummary>,
}

/// One second of a run's [`LoadReport::timeline`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecondSummary {
    /// Seconds since the run's start.
    pub second: u64,
    /// Requests of that second that failed without a response.
    pub errors: u64,
    /// Latency of its answered requests (`count`: how many were answered).
    pub latency: LatencySummary,
}

/// Per-second latency histograms, shared by a run's tasks: shows *when* in a run a tail
/// happened (a stall of a few hundred milliseconds, say), which one histogram hides.
struct Timeline {
    start: Instant,
    /// Per second: histogram of answered requests (µs), failed requests.
    seconds: Mutex<Vec<(Histogram<u64>, u64)>>,
}

impl Timeline {
    fn new(start: Instant) -> Self {
        Timeline {
            start,
            seconds: Mutex::new(Vec::new()),
        }
    }

    /// Counts a request of second `at` (its scheduled or send time): answered after
    /// `latency`, or failed (`None`).
    fn record(&self, at: Instant, latency: Option<Duration>) {
        let second = at.saturating_duration_since(self.start).as_secs() as usize;
        let Ok(mut seconds) = self.seconds.lock() else {
            return;
        };
        while seconds.len() <= second {
            seconds.push((stats::coarse_histogram(), 0));
        }
        let (h, errors) = &mut seconds[second];
        match latency {
            Some(d) => stats::record(h, d),
            None => *errors += 1,
        }
    }

    fn summaries(&self) -> Vec<SecondSummary> {
        let Ok(seconds) = self.seconds.lock() else {
            return Vec::new();
        };
        seconds
            .iter()
            .enumerate()
            .map(|(i, (h, errors))| SecondSummary {
                second: i as u64,
                errors: *errors,
                latency: LatencySummary::from_histogram(h),
            })
            .collect()
    }
}

impl LoadReport {
    /// Responses with status `code`.
    pub fn count(&self, code: u16) -> u64 {
        self.status.get(&code).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct Agg {
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

impl Agg {
    fn merge(&mut self, o: Agg) {
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
    fn error(&mut self, e: &crate::Error) {
        // Keep the kind short: the first 80 characters of the message.
        let kind: String = e.0.chars().take(80).collect();
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// Runs `source` against `ep`.
pub async fn run<S: RequestSource>(
    ep: &Endpoint,
    source: Arc<S>,
    opts: &LoadOptions,
) -> LoadReport {
    match opts.rate {
        Rate::Max => run_max(ep, source, opts).await,
        Rate::Fixed(r) => run_fixed(ep, source, opts, r).await,
    }
}

async fn run_max<S: RequestSource>(
    ep: &Endpoint,
    source: Arc<S>,
    opts: &LoadOptions,
) -> LoadReport {
    let next = Arc::new(AtomicU64::new(0));
    let limit = opts.max_requests.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut workers = Vec::new();
    let opened = Arc::new(AtomicU64::new(0));
    let timeline = opts.timeline.then(|| Arc::new(Timeline::new(start)));
    for _ in 0..opts.connections.max(1) {
        let ep = ep.clone();
        let source = source.clone();
        let next = next.clone();
        let opened = opened.clone();
        let timeline = timeline.clone();
        let timeout = opts.timeout;
        workers.push(tokio::spawn(async move {
            let mut h = stats::histogram();
            let mut agg = Agg::default();
            let mut sent = 0u64;
            let mut conn: Option<Conn> = None;
            let mut last = Instant::now();
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                if conn.is_none() {
                    match Conn::connect(&ep).await {
                        Ok(c) => {
                            opened.fetch_add(1, Ordering::Relaxed);
                            conn = Some(c);
                        }
                        Err(e) => {
                            agg.error(&e);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let Some(req) = source.request(i) else {
                    break;
                };
                let Some(c) = conn.as_mut() else { continue };
                sent += 1;
                let t0 = Instant::now();
                let answered = match tokio::time::timeout(timeout, c.send(req)).await {
                    Ok(Ok(resp)) => {
                        last = Instant::now();
                        stats::record(&mut h, last - t0);
                        *agg.status.entry(resp.status).or_default() += 1;
                        source.on_response(i, &resp);
                        Some(last - t0)
                    }
                    Ok(Err(e)) => {
                        agg.error(&e);
                        conn = None;
                        None
                    }
                    Err(_) => {
                        agg.error(&crate::Error::new("timeout"));
                        conn = None;
                        None
                    }
                };
                if let Some(t) = &timeline {
                    t.record(t0, answered);
                }
            }
            (h, agg, sent, last)
        }));
    }
    let mut h = stats::histogram();
    let mut agg = Agg::default();
    let mut sent = 0;
    let mut last = start;
    for w in workers {
        if let Ok((wh, wagg, wsent, wlast)) = w.await {
            let _ = h.add(&wh);
            agg.merge(wagg);
            sent += wsent;
            last = last.max(wlast);
        }
    }
    finish(
        "max",
        None,
        opened.load(Ordering::Relaxed),
        sent,
        h,
        agg,
        start,
        last,
        0.0,
        timeline.as_deref(),
    )
}

async fn run_fixed<S: RequestSource>(
    ep: &Endpoint,
    source: Arc<S>,
    opts: &LoadOptions,
    rate: f64,
) -> LoadReport {
    let pool = Arc::new(Pool::new(ep.clone()));
    let inflight = Arc::new(Semaphore::new(opts.connections.max(1)));
    let shared = Arc::new(Mutex::new((stats::histogram(), Agg::default())));
    let last_done = Arc::new(Mutex::new(None::<Instant>));
    let by_duration = (opts.duration.as_secs_f64() * rate).ceil() as u64;
    let n = opts
        .max_requests
        .map_or(by_duration, |m| m.min(by_duration));
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let timeline = opts.timeline.then(|| Arc::new(Timeline::new(start)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut max_lag = Duration::ZERO;
    let mut sent = 0u64;
    let mut i = 0u64;
    while i < n {
        let at = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if at > now {
            tokio::time::sleep_until(at).await;
            continue;
        }
        max_lag = max_lag.max(now - at);
        sent += 1;
        let (pool, inflight, shared, source, last_done, timeline) = (
            pool.clone(),
            inflight.clone(),
            shared.clone(),
            source.clone(),
            last_done.clone(),
            timeline.clone(),
        );
        let timeout = opts.timeout;
        let idx = i;
        tasks.spawn(async move {
            let _permit = inflight.acquire_owned().await;
            let outcome = async {
                let mut conn = pool.get().await?;
                let req = source
                    .request(idx)
                    .ok_or_else(|| crate::Error::new("source exhausted"))?;
                match tokio::time::timeout(timeout, conn.send(req)).await {
                    Ok(Ok(resp)) => {
                        pool.put(conn);
                        Ok(resp)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(crate::Error::new("timeout")),
                }
            }
            .await;
            let done = Instant::now();
            if let Ok(resp) = &outcome {
                source.on_response(idx, resp);
            }
            if let Ok(mut g) = shared.lock() {
                let (h, agg) = &mut *g;
                match &outcome {
                    Ok(resp) => {
                        stats::record(h, done - at);
                        *agg.status.entry(resp.status).or_default() += 1;
                    }
                    Err(e) => agg.error(e),
                }
            }
            if let Some(t) = &timeline {
                t.record(at, outcome.as_ref().ok().map(|_| done - at));
            }
            if let Ok(mut l) = last_done.lock() {
                *l = Some(l.map_or(done, |x| x.max(done)));
            }
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    let _ = tokio::time::timeout(opts.timeout + Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let last = last_done
        .lock()
        .ok()
        .and_then(|l| *l)
        .unwrap_or_else(Instant::now);
    let (h, agg) = match shared.lock() {
        Ok(mut g) => std::mem::replace(&mut *g, (stats::histogram(), Agg::default())),
        Err(_) => (stats::histogram(), Agg::default()),
    };
    finish(
        "fixed",
        Some(rate),
        pool.opened(),
        sent,
        h,
        agg,
        start,
        last,
        max_lag.as_secs_f64() * 1000.0,
        timeline.as_deref(),
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    mode: &'static str,
    target_rate: Option<f64>,
    connections: u64,
    sent: u64,
    histogram: Histogram<u64>,
    agg: Agg,
    start: Instant,
    last: Instant,
    max_schedule_lag_ms: f64,
    timeline: Option<&Timeline>,
) -> LoadReport {
    let mut agg = agg;
    let answered: u64 = agg.status.values().sum::<u64>() + agg.errors.values().sum::<u64>();
    if sent > answered {
        // Requests still waiting for a connection or an answer when the run's grace period
        // ended (fixed rate: timeout + 5 s after the last scheduled send); they were aborted.
        *agg.errors
            .entry("unfinished when the run ended".to_string())
            .or_default() += sent - answered;
    }
    let completed: u64 = agg.status.values().sum();
    let errors: u64 = agg.errors.values().sum();
    let elapsed = last.saturating_duration_since(start).as_secs_f64();
    LoadReport {
        mode,
        target_rate,
        connections,
        sent,
        completed,
        errors,
        error_kinds: agg.errors,
        status: agg.status,
        elapsed_s: elapsed,
        achieved_rate: if elapsed > 0.0 {
            completed as f64 / elapsed
        } else {
            0.0
        },
        latency: LatencySummary::from_histogram(&histogram),
        max_schedule_lag_ms,
        histogram,
        timeline: timeline.map(Timeline::summaries).unwrap_or_default(),
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = self
            .target_rate
            .map(|r| format!(" (target {r} req/s)"))
            .unwrap_or_default();
        writeln!(
            f,
            "  mode {}{target}, {} connections",
            self.mode, self.connections
        )?;
        writeln!(
            f,
            "  sent {}, completed {}, errors {} in {:.2} s → {:.0} req/s",
            self.sent, self.completed, self.errors, self.elapsed_s, self.achieved_rate
        )?;
        let codes: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(f, "  status {{{}}}", codes.join(", "))?;
        for (k, v) in &self.error_kinds {
            writeln!(f, "  error ×{v}: {k}")?;
        }
        write!(f, "  latency {}", self.latency)?;
        if self.mode == "fixed" {
            write!(
                f,
                "\n  scheduler max lag {:.3} ms",
                self.max_schedule_lag_ms
            )?;
        }
        if !self.timeline.is_empty() {
            let by = if self.mode == "fixed" {
                "scheduled"
            } else {
                "sent"
            };
            write!(f, "\n  timeline (by the second each request was {by}):")?;
            for s in &self.timeline {
                let l = &s.latency;
                write!(
                    f,
                    "\n    {:>4} s: {} answered, {} errors, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                    s.second, l.count, s.errors, l.p50_ms, l.p99_ms, l.max_ms
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_summarises_each_second_by_send_time() {
        let start = Instant::now();
        let t = Timeline::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        t.record(at(100), Some(Duration::from_millis(2)));
        t.record(at(900), Some(Duration::from_millis(4)));
        // Second 1 sends nothing; second 2 has a failure and a slow answer.
        t.record(at(2_200), None);
        t.record(at(2_500), Some(Duration::from_millis(300)));
        let s = t.summaries();
        let rows: Vec<(u64, u64, u64)> = s
            .iter()
            .map(|s| (s.second, s.latency.count, s.errors))
            .collect();
        assert_eq!(rows, vec![(0, 2, 0), (1, 0, 0), (2, 1, 1)]);
        assert!((s[0].latency.max_ms - 4.0).abs() < 0.1, "{s:?}");
        assert!((s[2].latency.p99_ms - 300.0).abs() < 3.0, "{s:?}");
        assert_eq!(s[1].latency, LatencySummary::default());
    }
}
