//! `cti-loadgen`: drives a running `cti-server` with signed webhooks, API calls and WebSocket
//! clients, and prints latency histograms (see the crate's README).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cti_loadgen::load::Rate;
use cti_loadgen::payload::{AuthPath, EventTime, Mix};
use cti_loadgen::{Target, api, calibrate, control, webhook, ws};

/// The same allocator as `cti-server`, so the client costs as little CPU as it can.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "cti-loadgen", version, about = "Load generator for cti-server")]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Pid of the server (same machine): its CPU time per request is reported, and its VmRSS
    /// in `ws --idle`.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

/// Where to send and as which tenant.
#[derive(Args, Debug)]
struct TargetArgs {
    /// Base URL of the server (webhooks and API).
    #[arg(long, global = true, default_value = "http://127.0.0.1:4000")]
    url: String,
    /// App id; with --api-key. Without both, a fresh app is created with the internal secret.
    #[arg(long, global = true)]
    app_id: Option<String>,
    /// The app's API key.
    #[arg(long, global = true, env = "CTI_APP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Webhook signing secret (the app's, else the server's DIALPAD_WEBHOOK_SECRET).
    #[arg(
        long,
        global = true,
        env = "DIALPAD_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// The server's INTERNAL_API_SECRET, to create a fresh app for the run.
    #[arg(
        long,
        global = true,
        env = "INTERNAL_API_SECRET",
        hide_env_values = true
    )]
    internal_secret: Option<String>,
    /// A `serve --dev` secrets file (`<database>.dev-secrets`): fills --secret and
    /// --internal-secret.
    #[arg(long, global = true)]
    dev_secrets: Option<PathBuf>,
}

/// Shared load options.
#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Requests per second (open loop), or `max` (closed loop over --connections).
    #[arg(long, default_value = "200")]
    rate: Rate,
    /// Max: connections (workers). Fixed rate: cap on connections in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Sending time bound, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Request count bound (flat-out webhooks: the number planned and pre-signed).
    #[arg(long)]
    requests: Option<u64>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Also print p50 / p99 / max for each second of the measured part (by the second each
    /// request was scheduled at a fixed rate, or sent flat out): shows when a tail happened.
    #[arg(long)]
    timeline: bool,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Signed webhooks; with --check also the backlog and the calls they became.
    Webhook {
        #[command(flatten)]
        load: LoadArgs,
        /// Authentication path.
        #[arg(long, value_enum, default_value = "jwt")]
        auth: AuthPath,
        /// Call shapes.
        #[arg(long, value_enum, default_value = "lifecycles")]
        mix: Mix,
        /// Where each event's `event_timestamp` comes from: the send order, as live traffic's
        /// (default), or the fixtures' real offsets from the call's start.
        #[arg(long, value_enum, default_value = "send-order")]
        event_time: EventTime,
        /// Fraction of requests that repeat an earlier request byte for byte (0..1).
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Pre-sign every request before the timed loop when they fit in this many MiB.
        #[arg(long, default_value_t = 1536)]
        presign_mib: u64,
        /// Send at the same rate for this many seconds before the measured --duration; the
        /// warm-up's requests are checked but not measured.
        #[arg(long, default_value_t = 0.0)]
        warmup: f64,
        /// Poll /metrics for the inbox backlog, wait for it to drain and check that every
        /// accepted call became a call record.
        #[arg(long)]
        check: bool,
        /// /metrics polling interval, ms.
        #[arg(long, default_value_t = 500)]
        metrics_interval_ms: u64,
        /// Drain wait bound, seconds.
        #[arg(long, default_value_t = 60.0)]
        drain_timeout: f64,
    },
    /// GET /api/calls with the app key.
    Api {
        #[command(flatten)]
        load: LoadArgs,
        /// Query string.
        #[arg(long, default_value = "limit=50")]
        query: String,
    },
    /// WebSocket clients: webhook→WebSocket latency and delivery, or idle memory.
    Ws {
        /// Number of sockets.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Webhooks per second (one `ringing` event per fresh call).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Sending time, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Webhook auth path.
        #[arg(long, value_enum, default_value = "jwt")]
        auth: AuthPath,
        /// Base URL the sockets connect to (another instance); default --url.
        #[arg(long)]
        ws_url: Option<String>,
        /// Cap on webhook connections in flight.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Only hold idle authenticated sockets and measure the server's memory.
        #[arg(long)]
        idle: bool,
        /// Idle: seconds to hold the sockets once connected.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
        /// Handshakes in flight while connecting.
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        /// Seconds to wait for the last deliveries after sending.
        #[arg(long, default_value_t = 10.0)]
        delivery_timeout: f64,
        /// Extra sockets that connect with a 4 KiB receive buffer and never read while the
        /// webhooks are sent (a stalled consumer must not delay the other clients).
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// Only the machine's speed on the server's hot path (verify + normalize of one call-event
    /// JWT on one core); every other command reports it too. Needs no server.
    Calibrate,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

async fn resolve_target(t: &TargetArgs, need_secret: bool) -> Result<Target, String> {
    let dev = match &t.dev_secrets {
        Some(p) => control::dev_secrets(p).map_err(|e| e.to_string())?,
        None => Default::default(),
    };
    let secret = t
        .secret
        .clone()
        .or_else(|| dev.get("DIALPAD_WEBHOOK_SECRET").cloned());
    let internal = t
        .internal_secret
        .clone()
        .or_else(|| dev.get("INTERNAL_API_SECRET").cloned());
    if need_secret && secret.is_none() {
        return Err(
            "a webhook secret is needed: --secret, DIALPAD_WEBHOOK_SECRET or --dev-secrets".into(),
        );
    }
    let (app_id, api_key) = match (&t.app_id, &t.api_key) {
        (Some(id), Some(key)) => (id.clone(), key.clone()),
        _ => {
            let Some(internal) = internal else {
                return Err("give --app-id and --api-key, or --internal-secret / --dev-secrets to create an app".into());
            };
            let name = format!("loadgen-{}", cti_loadgen::payload::now_ms());
            let (id, key) = control::create_app(&t.url, &internal, &name)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("created app {id} ({name})");
            (id, key)
        }
    };
    Ok(Target {
        url: t.url.trim_end_matches('/').to_string(),
        app_id,
        api_key,
        webhook_secret: secret.unwrap_or_default(),
    })
}

fn emit<T: serde::Serialize + std::fmt::Display>(json: bool, report: &T) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot format the report: {e}"),
        }
    } else {
        println!("{report}");
    }
}

async fn run(cli: Cli) -> Result<bool, String> {
    // Before any load, on a quiet client: every report carries the figure.
    let machine = calibrate::measure_once().map_err(|e| e.to_string())?;
    match cli.command {
        Command::Calibrate => {
            emit(cli.json, &machine);
            Ok(true)
        }
        Command::Webhook {
            load,
            auth,
            mix,
            event_time,
            duplicates,
            presign_mib,
            warmup,
            check,
            metrics_interval_ms,
            drain_timeout,
        } => {
            let target = resolve_target(&cli.target, true).await?;
            let opts = webhook::WebhookOptions {
                target,
                auth,
                mix,
                event_time,
                rate: load.rate,
                connections: load.connections,
                duration: secs(load.duration),
                warmup: secs(warmup),
                requests: load.requests,
                duplicates,
                presign_mib,
                check,
                metrics_interval: Duration::from_millis(metrics_interval_ms.max(10)),
                drain_timeout: secs(drain_timeout),
                timeout: secs(load.timeout),
                server_pid: cli.server_pid,
                timeline: load.timeline,
            };
            let report = webhook::run(&opts).await.map_err(|e| e.to_string())?;
            emit(cli.json, &report);
            Ok(report.all_ok())
        }
        Command::Api { load, query } => {
            let target = resolve_target(&cli.target, false).await?;
            let opts = api::ApiOptions {
                target,
                query,
                rate: load.rate,
                connections: load.connections,
                duration: secs(load.duration),
                requests: load.requests,
                timeout: secs(load.timeout),
                server_pid: cli.server_pid,
                timeline: load.timeline,
            };
            let report = api::run(&opts).await.map_err(|e| e.to_string())?;
            emit(cli.json, &report);
            Ok(report.all_ok())
        }
        Command::Ws {
            clients,
            rate,
            duration,
            auth,
            ws_url,
            connections,
            idle,
            hold,
            connect_concurrency,
            delivery_timeout,
            stalled,
        } => {
            let target = resolve_target(&cli.target, !idle).await?;
            let opts = ws::WsOptions {
                target,
                ws_url,
                clients,
                rate,
                duration: secs(duration),
                auth,
                connections,
                idle,
                hold: secs(hold),
                server_pid: cli.server_pid,
                connect_concurrency,
                delivery_timeout: secs(delivery_timeout),
                timeout: Duration::from_secs(10),
                stalled,
            };
            let report = ws::run(&opts).await.map_err(|e| e.to_string())?;
            emit(cli.json, &report);
            Ok(report.all_ok())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some requests failed or some checks did not hold (see the report)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
