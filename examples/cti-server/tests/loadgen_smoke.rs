//! Smoke test of `cti-loadgen`: every mode for about a second at a low rate against the real
//! `cti-server` binary (SQLite), driven in-process through the loadgen's library.

use std::time::Duration;

use cti_e2e::{Server, ServerOptions, W};
use cti_loadgen::load::Rate;
use cti_loadgen::payload::{AuthPath, Mix};
use cti_loadgen::{Target, api, webhook, ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_modes_against_the_real_server() {
    let server = Server::start(env!("CARGO_BIN_EXE_cti-server"), ServerOptions::sqlite()).await;
    let (app_id, api_key) = server.create_app("loadgen-smoke").await;
    let target = Target {
        url: server.url.clone(),
        app_id,
        api_key,
        webhook_secret: W.to_string(),
    };

    // JWT path, open loop after a warm-up, with the backlog watch and the calls check.
    let mut opts = webhook::WebhookOptions::new(target.clone());
    opts.rate = Rate::Fixed(60.0);
    opts.warmup = Duration::from_millis(500);
    opts.duration = Duration::from_secs(1);
    opts.metrics_interval = Duration::from_millis(100);
    opts.drain_timeout = Duration::from_secs(20);
    opts.timeline = true;
    let r = match webhook::run(&opts).await {
        Ok(r) => r,
        Err(e) => panic!("webhook jwt: {e}"),
    };
    println!("{r}");
    assert!(r.load.sent >= 55, "{r}");
    assert_eq!(r.load.count(200), r.load.sent, "{r}");
    // The measured part continues the plan where the warm-up stopped: no request twice.
    let warm = r
        .warmup
        .as_ref()
        .map(|w| (w.sent >= 25, w.count(200) == w.sent));
    assert_eq!(warm, Some((true, true)), "{r}");
    // The timeline covers the measured part (60 requests scheduled within its first second),
    // not the warm-up.
    let seconds: Vec<(u64, u64, u64)> = r
        .load
        .timeline
        .iter()
        .map(|s| (s.second, s.latency.count, s.errors))
        .collect();
    assert_eq!(seconds, vec![(0, r.load.sent, 0)], "{r}");
    assert!(
        r.warmup.as_ref().is_some_and(|w| w.timeline.is_empty()),
        "{r}"
    );
    assert_eq!(r.duplicate_acks, 0, "{r}");
    assert!(r.all_ok(), "{r}");
    let calls = r.calls.as_ref().map(|c| (c.ok, c.expected));
    assert_eq!(calls, Some((true, r.preparation.calls)), "{r}");
    assert_eq!(r.backlog.as_ref().map(|b| b.final_backlog), Some(0), "{r}");

    // API-key path, flat out over 4 connections, with byte-identical duplicates.
    let mut opts = webhook::WebhookOptions::new(target.clone());
    opts.auth = AuthPath::ApiKey;
    opts.mix = Mix::Ringing;
    opts.rate = Rate::Max;
    opts.connections = 4;
    opts.requests = Some(200);
    opts.duplicates = 0.1;
    opts.drain_timeout = Duration::from_secs(20);
    opts.metrics_interval = Duration::from_millis(100);
    let r = match webhook::run(&opts).await {
        Ok(r) => r,
        Err(e) => panic!("webhook api-key: {e}"),
    };
    println!("{r}");
    assert!(r.all_ok(), "{r}");
    assert_eq!(r.load.sent, 200, "{r}");
    assert!(r.load.timeline.is_empty(), "no timeline asked for: {r}");
    assert!(r.preparation.duplicates_planned > 0, "{r}");
    assert_eq!(r.duplicate_acks, r.preparation.duplicates_planned, "{r}");

    // API mode.
    let mut opts = api::ApiOptions::new(target.clone());
    opts.rate = Rate::Fixed(30.0);
    opts.duration = Duration::from_secs(1);
    let r = match api::run(&opts).await {
        Ok(r) => r,
        Err(e) => panic!("api: {e}"),
    };
    println!("{r}");
    assert!(r.load.sent >= 25 && r.all_ok(), "{r}");

    // WebSocket delivery: every client gets every event exactly once.
    let mut opts = ws::WsOptions::new(target.clone());
    opts.clients = 5;
    opts.rate = 30.0;
    opts.duration = Duration::from_secs(1);
    opts.stalled = 1;
    let r = match ws::run(&opts).await {
        Ok(r) => r,
        Err(e) => panic!("ws: {e}"),
    };
    println!("{r}");
    assert!(r.all_ok(), "{r}");
    let d = r
        .delivery
        .as_ref()
        .map(|d| (d.expected_per_client, d.clients_exactly_once));
    assert_eq!(d, Some((30, 5)), "{r}");
    assert_eq!(r.latency.as_ref().map(|l| l.count), Some(150), "{r}");
    // The socket that never read was connected (30 small events fit its buffers: not lagged).
    let s = r
        .stalled
        .as_ref()
        .map(|s| (s.sockets, s.connected, s.lagged));
    assert_eq!(s, Some((1, 1, 0)), "{r}");

    // Idle sockets and the server's memory.
    let mut opts = ws::WsOptions::new(target);
    opts.idle = true;
    opts.clients = 20;
    opts.hold = Duration::from_millis(200);
    opts.server_pid = server.pid();
    let r = match ws::run(&opts).await {
        Ok(r) => r,
        Err(e) => panic!("ws idle: {e}"),
    };
    println!("{r}");
    assert!(r.all_ok(), "{r}");
    // The delivery clients above may still be closing: at least our 20 are counted.
    assert!(r.server_ws_connections.is_some_and(|c| c >= 20), "{r}");
    assert!(r.idle.as_ref().is_some_and(|i| i.rss_after_kib > 0), "{r}");
}
