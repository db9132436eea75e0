//! WebSocket mode.
//!
//! * **Delivery** (default): N clients connect to `/ws?api_key=…` (optionally on another server
//!   instance), then one `ringing` webhook per fresh call is posted at a fixed rate (open loop).
//!   The send instant of every webhook is recorded by call id; each client matches the
//!   `call_id` of every message it receives and records `receipt − send` in its histogram, and
//!   counts unique, duplicate and foreign messages. Every client must receive every accepted
//!   call exactly once.
//! * **Idle** (`idle`): N authenticated sockets that only answer heartbeats; the server's
//!   `VmRSS` (from `/proc/<pid>/status`) before and after gives its memory per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::wsclient::{self, Frame};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::control::{self, ResourceProbe, Resources};
use crate::http::Endpoint;
use crate::load::{self, LoadOptions, LoadReport, Rate};
use crate::payload::{AuthPath, EventTime, Mix};
use crate::stats::{self, LatencySummary};
use crate::webhook::{Preparation, SourceSpec, WebhookSource};
use crate::{Error, Result, Target};

/// Options of a WebSocket run.
#[derive(Clone, Debug)]
pub struct WsOptions {
    /// Server receiving the webhooks, and the tenant.
    pub target: Target,
    /// Base URL of the server the sockets connect to (`http://…`; another instance for a
    /// two-instance run). Defaults to `target.url`.
    pub ws_url: Option<String>,
    /// Number of sockets.
    pub clients: usize,
    /// Webhooks per second (delivery mode).
    pub rate: f64,
    /// Sending time (delivery mode).
    pub duration: Duration,
    /// Webhook auth path.
    pub auth: AuthPath,
    /// Cap on webhook connections in flight.
    pub connections: usize,
    /// Hold idle sockets and measure memory instead of sending.
    pub idle: bool,
    /// How long idle sockets are held after they are all connected.
    pub hold: Duration,
    /// The server process whose `VmRSS` (idle mode) and CPU time are read.
    pub server_pid: Option<u32>,
    /// Handshakes in flight while connecting.
    pub connect_concurrency: usize,
    /// How long to wait for the last deliveries after sending.
    pub delivery_timeout: Duration,
    /// Per-request timeout of the webhooks.
    pub timeout: Duration,
    /// Extra sockets (delivery mode) that connect with a 4 KiB receive buffer and never read
    /// while the webhooks are sent: the other clients' latency shows whether a stalled consumer
    /// delays them.
    pub stalled: usize,
}

impl WsOptions {
    /// Defaults for `target`: 10 clients, 50 webhooks/s for 2 s.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            ws_url: None,
            clients: 10,
            rate: 50.0,
            duration: Duration::from_secs(2),
            auth: AuthPath::Jwt,
            connections: 64,
            idle: false,
            hold: Duration::from_secs(2),
            server_pid: None,
            connect_concurrency: 128,
            delivery_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            stalled: 0,
        }
    }
}

/// Delivery counts over all clients.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryReport {
    /// Accepted calls, i.e. messages every client should get.
    pub expected_per_client: u64,
    /// Clients that got every expected message exactly once and nothing else of this run.
    pub clients_exactly_once: u64,
    /// Fewest unique messages a client got.
    pub min_received: u64,
    /// Most unique messages a client got.
    pub max_received: u64,
    /// Messages received twice or more (all clients).
    pub duplicates: u64,
    /// Expected messages never received (all clients).
    pub missing: u64,
    /// Messages not from this run (other calls of the app, pongs, …).
    pub foreign: u64,
    /// Time waited after sending for the last deliveries (s).
    pub wait_s: f64,
    /// Unique messages per client.
    pub per_client: Vec<u64>,
}

/// The sockets that never read (`stalled`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StalledReport {
    /// Requested.
    pub sockets: u64,
    /// Connected.
    pub connected: u64,
    /// Told `lagged` (or closed with 4008) by the server, as seen when they read afterwards.
    pub lagged: u64,
}

/// Server memory per idle socket.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleReport {
    /// Sockets held.
    pub sockets: u64,
    /// Server `VmRSS` before connecting (KiB).
    pub rss_before_kib: u64,
    /// Server `VmRSS` with every socket connected (KiB).
    pub rss_after_kib: u64,
    /// `(after − before) / sockets` in bytes.
    pub bytes_per_socket: f64,
    /// Server `VmRSS` after the sockets were closed (KiB).
    pub rss_after_close_kib: Option<u64>,
}

/// Everything a WebSocket run reports.
#[derive(Clone, Debug, Serialize)]
pub struct WsReport {
    /// Sockets requested.
    pub clients: u64,
    /// Sockets connected.
    pub connected: u64,
    /// Failed handshakes.
    pub connect_failures: u64,
    /// First failure text.
    pub connect_error: Option<String>,
    /// Time to connect them all (s).
    pub connect_s: f64,
    /// This process's `RLIMIT_NOFILE` soft limit after raising it.
    pub nofile_limit: Option<u64>,
    /// `websocket.connections_total` of the socket server once everything was connected.
    pub server_ws_connections: Option<u64>,
    /// Payload preparation (delivery mode).
    pub preparation: Option<Preparation>,
    /// Webhook load (delivery mode).
    pub webhook: Option<LoadReport>,
    /// CPU use and machine load while sending (delivery mode).
    pub resources: Option<Resources>,
    /// Delivery counts (delivery mode).
    pub delivery: Option<DeliveryReport>,
    /// Webhook→WebSocket latency, from the webhook's send instant to receipt (delivery mode).
    pub latency: Option<LatencySummary>,
    /// Memory per idle socket (idle mode with a server pid).
    pub idle: Option<IdleReport>,
    /// Sockets that never read while the webhooks were sent (delivery mode, `stalled` > 0).
    pub stalled: Option<StalledReport>,
}

impl WsReport {
    /// All sockets connected; in delivery mode every webhook answered `200` and every client
    /// received every accepted call exactly once.
    pub fn all_ok(&self) -> bool {
        let connected = self.connected == self.clients && self.connect_failures == 0;
        let webhooks = self
            .webhook
            .as_ref()
            .is_none_or(|l| l.errors == 0 && l.completed == l.sent && l.count(200) == l.completed);
        let delivered = self
            .delivery
            .as_ref()
            .is_none_or(|d| d.clients_exactly_once == self.clients);
        connected && webhooks && delivered
    }
}

/// The socket URL for `base` (`http` → `ws`) and `api_key`.
pub fn socket_url(base: &str, api_key: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/ws?api_key={api_key}")
}

/// Extracts the Dialpad `call_id` of a message (`"call_id":"123"` or `"call_id":123`).
pub fn message_call_id(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"call_id\":";
    let at = memchr::memmem::find(text, KEY)?;
    let rest = text[at + KEY.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// What one client saw.
struct ClientResult {
    connected: bool,
    error: Option<String>,
    unique: u64,
    duplicates: u64,
    foreign: u64,
    /// Latencies in microseconds, merged into one histogram at the end: a histogram per client
    /// (~280 kB each at this precision) made every record a cache miss, and a thousand of them
    /// cost the measured machine page faults and memory bandwidth. Allocated and written once
    /// before the run ([`LatencyLog`]).
    latency_us: LatencyLog,
}

/// One client's latency samples in a buffer sized and written before the run. A growing `Vec`
/// doubles at the same sample count in every client — a thousand clients reallocating and
/// page-faulting at the same instant stalled the load generator for tens of milliseconds at
/// 512, 1,024, 2,048 and 4,096 messages, which showed up as delivery latency.
struct LatencyLog {
    samples: Vec<u32>,
    len: usize,
}

impl LatencyLog {
    fn new(capacity: usize) -> Self {
        // A non-zero fill is written page by page now (zeroed memory would be mapped lazily
        // and fault during the run).
        Self {
            samples: vec![u32::MAX; capacity],
            len: 0,
        }
    }

    fn record(&mut self, us: u32) {
        if let Some(slot) = self.samples.get_mut(self.len) {
            *slot = us;
            self.len += 1;
        }
    }

    fn recorded(&self) -> &[u32] {
        &self.samples[..self.len]
    }
}

/// Shared by the clients: how to map a message to a request.
struct Matcher {
    call_id_base: u64,
    n: u64,
    source: Option<Arc<WebhookSource>>,
    unique_total: AtomicU64,
}

async fn client(
    url: String,
    seed: u64,
    gate: Arc<Semaphore>,
    ready: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    matcher: Arc<Matcher>,
    mut stop: watch::Receiver<bool>,
) -> ClientResult {
    let mut r = ClientResult {
        connected: false,
        error: None,
        unique: 0,
        duplicates: 0,
        foreign: 0,
        latency_us: LatencyLog::new(matcher.n as usize),
    };
    let permit = gate.acquire_owned().await;
    let connected = wsclient::Client::connect(&url, seed).await;
    drop(permit);
    let mut socket = match connected {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(e);
            failed.fetch_add(1, Ordering::Relaxed);
            return r;
        }
    };
    r.connected = true;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut seen = vec![0u64; (matcher.n as usize).div_ceil(64)];
    // One stop future for the whole loop (not a new waiter registration per message), and the
    // socket polled first: at hundreds of thousands of messages per second, the client's own
    // per-message overhead takes CPU from the server it measures on the same cores.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            frame = socket.next() => match frame {
                Ok(Some(Frame::Text(range))) => {
                    let now = Instant::now();
                    let idx = message_call_id(socket.payload(range))
                        .and_then(|id| id.checked_sub(matcher.call_id_base))
                        .filter(|i| *i < matcher.n);
                    let Some(i) = idx else {
                        r.foreign += 1;
                        continue;
                    };
                    let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                    if seen[word] & bit != 0 {
                        r.duplicates += 1;
                        continue;
                    }
                    seen[word] |= bit;
                    r.unique += 1;
                    matcher.unique_total.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = matcher.source.as_ref().and_then(|s| s.send_time(i)) {
                        let us = now.saturating_duration_since(sent).as_micros();
                        r.latency_us.record(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
                Ok(Some(Frame::Closed(code))) => {
                    r.error = Some(format!("server closed the socket: code {code:?}"));
                    return r;
                }
                Ok(Some(Frame::Other)) => {}
                Err(e) => {
                    r.error = Some(e);
                    return r;
                }
                Ok(None) => return r,
            },
            _ = &mut stopped => break,
        }
    }
    socket.close().await;
    r
}

/// The runtime the socket clients run on, apart from the webhook sender's: a thousand busy
/// client tasks in the sender's run queue would make its sends late, and the open-loop latency
/// (measured from the scheduled send time) would then include the load generator's own
/// queueing. Separate runtimes leave the sharing of the cores to the kernel, as separate
/// client machines would.
struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    fn start() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ws-client")
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("cannot start the client runtime: {e}")))?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime present until drop")
            .handle()
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this one's tasks have all finished or been awaited.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A socket that does not read while the run lasts, then reads (bounded) what piled up;
/// `(connected, told lagged)`.
async fn stalled_client(url: String, seed: u64, mut stop: watch::Receiver<bool>) -> (bool, bool) {
    let Ok(mut socket) = wsclient::Client::connect_with(&url, seed, Some(4096)).await else {
        return (false, false);
    };
    let _ = stop.changed().await;
    let lagged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Ok(Some(Frame::Text(range))) => {
                    let text = socket.payload(range);
                    if memchr::memmem::find(text, br#""type":"lagged""#).is_some() {
                        return true;
                    }
                }
                Ok(Some(Frame::Closed(code))) => return code == Some(4008),
                Ok(Some(Frame::Other)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    (true, lagged)
}

/// Starts `n` clients and waits (bounded) until each connected or failed.
async fn connect_all(
    opts: &WsOptions,
    clients: &tokio::runtime::Handle,
    matcher: Arc<Matcher>,
    stop: &watch::Receiver<bool>,
) -> (
    Vec<tokio::task::JoinHandle<ClientResult>>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    f64,
) {
    let base = opts.ws_url.as_deref().unwrap_or(&opts.target.url);
    let url = socket_url(base, &opts.target.api_key);
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let ready = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..opts.clients)
        .map(|seed| {
            clients.spawn(client(
                url.clone(),
                seed as u64,
                gate.clone(),
                ready.clone(),
                failed.clone(),
                matcher.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = t0 + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < opts.clients as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    (handles, ready, failed, connect_s)
}

/// Runs WebSocket mode.
pub async fn run(opts: &WsOptions) -> Result<WsReport> {
    let nofile_limit = crate::raise_nofile_limit().ok();
    if opts.idle {
        return run_idle(opts, nofile_limit).await;
    }
    let ep = Endpoint::parse(&opts.target.url).await?;
    let n = (opts.rate * opts.duration.as_secs_f64()).ceil() as u64;
    let spec = SourceSpec {
        auth: opts.auth,
        mix: Mix::Ringing,
        event_time: EventTime::SendOrder,
        duplicates: 0.0,
        requests: n,
        presign_mib: 1024,
        record_send_times: true,
    };
    let (source, preparation) = WebhookSource::prepare(ep.clone(), &opts.target, &spec)?;
    let source = Arc::new(source);
    let matcher = Arc::new(Matcher {
        call_id_base: source.plan().call_id_base,
        n,
        source: Some(source.clone()),
        unique_total: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients = ClientRuntime::start()?;
    let (handles, ready, failed, connect_s) =
        connect_all(opts, clients.handle(), matcher.clone(), &stop_rx).await;
    let ws_base = opts
        .ws_url
        .clone()
        .unwrap_or_else(|| opts.target.url.clone());
    let server_ws_connections = control::gauges(&control::client(), &ws_base)
        .await
        .ok()
        .map(|g| g.ws_connections);
    let stalled: Vec<_> = (0..opts.stalled)
        .map(|i| {
            clients.handle().spawn(stalled_client(
                socket_url(&ws_base, &opts.target.api_key),
                (opts.clients + i) as u64,
                stop_rx.clone(),
            ))
        })
        .collect();

    let load_opts = LoadOptions {
        rate: Rate::Fixed(opts.rate),
        connections: opts.connections,
        duration: opts.duration,
        max_requests: Some(n),
        timeout: opts.timeout,
        timeline: false,
    };
    let probe = ResourceProbe::start(opts.server_pid);
    let webhook = load::run(&ep, source.clone(), &load_opts).await;

    // Wait for the last deliveries.
    let connected = ready.load(Ordering::Relaxed);
    let expected = source.accepted_calls();
    let t_wait = Instant::now();
    let deadline = t_wait + opts.delivery_timeout;
    while matcher.unique_total.load(Ordering::Relaxed) < expected * connected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wait_s = t_wait.elapsed().as_secs_f64();
    let resources = probe.finish(webhook.completed);
    let _ = stop_tx.send(true);

    let mut latency = stats::histogram();
    let mut delivery = DeliveryReport {
        expected_per_client: expected,
        wait_s,
        min_received: u64::MAX,
        ..DeliveryReport::default()
    };
    let mut connect_error = None;
    for h in handles {
        let Ok(r) = h.await else { continue };
        if !r.connected {
            connect_error = connect_error.or(r.error);
            continue;
        }
        for us in r.latency_us.recorded() {
            stats::record(&mut latency, Duration::from_micros(u64::from(*us)));
        }
        delivery.per_client.push(r.unique);
        delivery.min_received = delivery.min_received.min(r.unique);
        delivery.max_received = delivery.max_received.max(r.unique);
        delivery.duplicates += r.duplicates;
        delivery.foreign += r.foreign;
        delivery.missing += expected.saturating_sub(r.unique);
        if r.unique == expected && r.duplicates == 0 {
            delivery.clients_exactly_once += 1;
        }
    }
    if delivery.per_client.is_empty() {
        delivery.min_received = 0;
    }
    let stalled = if stalled.is_empty() {
        None
    } else {
        let mut report = StalledReport {
            sockets: stalled.len() as u64,
            ..StalledReport::default()
        };
        for h in stalled {
            if let Ok((connected, lagged)) = h.await {
                report.connected += u64::from(connected);
                report.lagged += u64::from(lagged);
            }
        }
        Some(report)
    };
    Ok(WsReport {
        clients: opts.clients as u64,
        connected,
        connect_failures: failed.load(Ordering::Relaxed),
        connect_error,
        connect_s,
        nofile_limit,
        server_ws_connections,
        preparation: Some(preparation),
        webhook: Some(webhook),
        resources: Some(resources),
        delivery: Some(delivery),
        latency: Some(LatencySummary::from_histogram(&latency)),
        idle: None,
        stalled,
    })
}

async fn run_idle(opts: &WsOptions, nofile_limit: Option<u64>) -> Result<WsReport> {
    let rss = |pid: Option<u32>| -> Result<Option<u64>> { pid.map(control::rss_kib).transpose() };
    let before = rss(opts.server_pid)?;
    let matcher = Arc::new(Matcher {
        call_id_base: 0,
        n: 0,
        source: None,
        unique_total: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients = ClientRuntime::start()?;
    let (handles, ready, failed, connect_s) =
        connect_all(opts, clients.handle(), matcher, &stop_rx).await;
    // Let the server settle (allocator, task stacks) before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(opts.server_pid)?;
    let ws_base = opts
        .ws_url
        .clone()
        .unwrap_or_else(|| opts.target.url.clone());
    let server_ws_connections = control::gauges(&control::client(), &ws_base)
        .await
        .ok()
        .map(|g| g.ws_connections);
    tokio::time::sleep(opts.hold).await;
    let _ = stop_tx.send(true);
    let mut connect_error = None;
    for h in handles {
        if let Ok(r) = h.await
            && !r.connected
        {
            connect_error = connect_error.or(r.error);
        }
    }
    let connected = ready.load(Ordering::Relaxed);
    let idle = match (before, after) {
        (Some(b), Some(a)) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(IdleReport {
                sockets: connected,
                rss_before_kib: b,
                rss_after_kib: a,
                bytes_per_socket: if connected > 0 {
                    (a as f64 - b as f64) * 1024.0 / connected as f64
                } else {
                    0.0
                },
                rss_after_close_kib: rss(opts.server_pid).ok().flatten(),
            })
        }
        _ => None,
    };
    if opts.server_pid.is_some() && idle.is_none() {
        return Err(Error::new("could not read the server's VmRSS"));
    }
    Ok(WsReport {
        clients: opts.clients as u64,
        connected,
        connect_failures: failed.load(Ordering::Relaxed),
        connect_error,
        connect_s,
        nofile_limit,
        server_ws_connections,
        preparation: None,
        webhook: None,
        resources: None,
        delivery: None,
        latency: None,
        idle,
        stalled: None,
    })
}

impl std::fmt::Display for WsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "websocket: {}/{} sockets connected in {:.2} s ({} failed{}), server reports {} connections, nofile limit {}",
            self.connected,
            self.clients,
            self.connect_s,
            self.connect_failures,
            self.connect_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            self.server_ws_connections
                .map_or("?".to_string(), |c| c.to_string()),
            self.nofile_limit.map_or("?".to_string(), |c| c.to_string()),
        )?;
        if let Some(w) = &self.webhook {
            writeln!(f, "  webhooks:\n{w}")?;
        }
        if let Some(r) = &self.resources {
            writeln!(f, "{r} (including socket delivery)")?;
        }
        if let Some(d) = &self.delivery {
            writeln!(
                f,
                "  delivery: {} expected per client; {} clients exactly once; unique min {} max {}; duplicates {}, missing {}, foreign {} (waited {:.2} s after sending)",
                d.expected_per_client,
                d.clients_exactly_once,
                d.min_received,
                d.max_received,
                d.duplicates,
                d.missing,
                d.foreign,
                d.wait_s
            )?;
        }
        if let Some(l) = &self.latency {
            writeln!(f, "  webhook→websocket latency {l}")?;
        }
        if let Some(s) = &self.stalled {
            writeln!(
                f,
                "  stalled sockets (never read during the run): {} of {} connected, {} told `lagged` by the server",
                s.connected, s.sockets, s.lagged
            )?;
        }
        if let Some(i) = &self.idle {
            writeln!(
                f,
                "  idle: server VmRSS {} KiB → {} KiB with {} sockets = {:.0} bytes/socket (after close: {} KiB)",
                i.rss_before_kib,
                i.rss_after_kib,
                i.sockets,
                i.bytes_per_socket,
                i.rss_after_close_kib
                    .map_or("?".to_string(), |v| v.to_string())
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_from_messages() {
        assert_eq!(
            message_call_id(br#"{"event":"call.ring","call_id":"1234567890123456","seq":3}"#),
            Some(1_234_567_890_123_456)
        );
        assert_eq!(message_call_id(br#"{"call_id": 42}"#), Some(42));
        assert_eq!(message_call_id(br#"{"type":"pong"}"#), None);
        assert_eq!(message_call_id(br#"{"call_id":null}"#), None);
    }

    #[test]
    fn socket_urls() {
        assert_eq!(
            socket_url("http://127.0.0.1:4000/", "raw_x"),
            "ws://127.0.0.1:4000/ws?api_key=raw_x"
        );
    }
}
