//! Memory cost of idle, authenticated `/ws` connections.
//!
//! ```text
//! cargo bench -p cti-axum --bench ws_idle -- [--sockets 10000] [--heartbeat-ms 1000]
//! ```
//!
//! The binary re-executes itself as a child process that serves the real [`cti_axum::router`]
//! (in-memory store, one app) on a loopback port. The parent then opens `--sockets` WebSocket
//! connections with that app's key, keeps reading them (so the clients answer the server's
//! heartbeat pings, as real idle clients do), waits until the server's `/metrics` counts them
//! all and every socket has been through at least one ping/pong, and reports the growth of the
//! **server process's** resident set (`VmRSS` of `/proc/<pid>/status`) divided by the number of
//! sockets. Client memory is never mixed into the figure.
//!
//! Both processes need a file descriptor per socket: when the soft `ulimit -n` is too low the
//! binary re-executes itself under `sh -c 'ulimit -n …'` (up to the hard limit); if the hard
//! limit is too low it says so and measures fewer sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

/// Set in the environment of the re-executed process (raised fd limit) to avoid a loop.
const REEXEC_MARK: &str = "CTI_WS_IDLE_REEXEC";
/// File descriptors kept free besides the sockets (stdio, listener, epoll, files).
const FD_SPARE: u64 = 256;

struct Args {
    sockets: u64,
    heartbeat_ms: u64,
    concurrency: usize,
    serve: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        sockets: 10_000,
        heartbeat_ms: 1_000,
        concurrency: 64,
        serve: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--sockets" => args.sockets = num("--sockets"),
            "--heartbeat-ms" => args.heartbeat_ms = num("--heartbeat-ms").max(10),
            "--concurrency" => args.concurrency = num("--concurrency").max(1) as usize,
            "--serve" => args.serve = true,
            // `cargo bench` passes `--bench`; filters and unknown flags are ignored.
            _ => {}
        }
    }
    args
}

/// `(soft, hard)` limit of open files of this process, from `/proc/self/limits`.
fn fd_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| match s? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((parse(nums.next())?, parse(nums.next())?))
}

/// A `kB` field (`VmRSS`, `RssAnon`, …) of `/proc/<pid>/status`.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> ExitCode {
    let args = parse_args();
    if args.serve {
        serve(args.heartbeat_ms);
        return ExitCode::SUCCESS;
    }
    let need = args.sockets + FD_SPARE;
    let mut sockets = args.sockets;
    if let Some((soft, hard)) = fd_limits()
        && soft < need
    {
        if hard >= need && std::env::var_os(REEXEC_MARK).is_none() {
            return reexec_with_fd_limit(need);
        }
        sockets = soft.min(hard).saturating_sub(FD_SPARE);
        eprintln!(
            "warning: `ulimit -n` is {soft} (hard {hard}); measuring {sockets} sockets instead \
             of {}. Raise the limit (e.g. `ulimit -n {need}`) for the full run.",
            args.sockets
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(measure(Args { sockets, ..args }))
}

/// Runs this binary again with the same arguments under a raised soft fd limit.
fn reexec_with_fd_limit(limit: u64) -> ExitCode {
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args(std::env::args().skip(1))
        .env(REEXEC_MARK, "1")
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("re-executed benchmark failed: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot re-execute under `sh` to raise `ulimit -n`: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Child process: the router on a loopback port; prints `READY <port> <key>`, exits when its
/// stdin closes (the parent is gone).
fn serve(heartbeat_ms: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let cti = cti_core::Cti::builder()
            .store(Arc::new(cti_core::store::MemoryStore::new()))
            .build();
        let _running = cti.start();
        let (_app, key) = cti
            .create_app("ws idle bench", Default::default())
            .await
            .expect("create app");
        let mut http = cti_axum::HttpConfig::new("bench-internal-secret-0123456789abcdef");
        http.ws_heartbeat = Duration::from_millis(heartbeat_ms);
        let router = cti_axum::router(cti.clone(), http);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        println!("READY {port} {}", key.expose());
        let _ = std::io::stdout().flush();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        // Parent gone (or done) → stdin reaches EOF.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        })
        .await;
    });
}

struct ServerProcess {
    child: Child,
    port: u16,
    key: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(heartbeat_ms: u64) -> ServerProcess {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("--serve")
        .arg("--heartbeat-ms")
        .arg(heartbeat_ms.to_string())
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server process");
    let stdout = child.stdout.take().expect("child stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read READY line");
    let mut parts = line.split_whitespace();
    assert_eq!(
        parts.next(),
        Some("READY"),
        "unexpected child output {line:?}"
    );
    let port = parts.next().and_then(|p| p.parse().ok()).expect("port");
    let key = parts.next().expect("key").to_string();
    ServerProcess { child, port, key }
}

/// `websocket.connections_total` of the server's `/metrics` (plain HTTP/1.1, no client crate).
async fn server_connections(port: u16) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    let _ = tcp.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["websocket"]["connections_total"].as_u64())
        .unwrap_or(0)
}

/// Opens one client and keeps reading it (answering pings) until `stop` fires.
async fn idle_client(url: String, stop: tokio::sync::watch::Receiver<bool>) -> bool {
    // Small client buffers: only the server's memory is measured, but 10,000 clients with the
    // 128 KiB defaults would need over a gigabyte.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), true).await
    else {
        return false;
    };
    tokio::spawn(async move {
        let mut stop = stop;
        loop {
            tokio::select! {
                msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return },
                _ = stop.changed() => { let _ = ws.close(None).await; return },
            }
        }
    });
    true
}

/// Waits until the server counts `n` connections (or `limit` passes).
async fn wait_connections(port: u16, n: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let got = server_connections(port).await;
        if got == n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Server RSS once it stops moving (three equal-ish readings 200 ms apart).
async fn settled_rss(pid: u32) -> (u64, u64) {
    let mut last = status_kb(pid, "VmRSS");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = status_kb(pid, "VmRSS");
        if now.abs_diff(last) <= 64 {
            return (now, status_kb(pid, "RssAnon"));
        }
        last = now;
    }
    (last, status_kb(pid, "RssAnon"))
}

async fn open(
    url: &str,
    n: u64,
    concurrency: usize,
    stop: &tokio::sync::watch::Sender<bool>,
) -> u64 {
    let opened = futures::stream::iter(0..n)
        .map(|_| idle_client(url.to_string(), stop.subscribe()))
        .buffer_unordered(concurrency)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    opened as u64
}

async fn measure(args: Args) -> ExitCode {
    let server = spawn_server(args.heartbeat_ms);
    let pid = server.child.id();
    let url = format!("ws://127.0.0.1:{}/ws?api_key={}", server.port, server.key);
    let heartbeat = Duration::from_millis(args.heartbeat_ms);

    // Warm-up: the runtime, allocator arenas and first-use state of the server reach their
    // steady size; those sockets are closed again before the baseline.
    let (warm_stop, _) = tokio::sync::watch::channel(false);
    let warm = args.sockets.clamp(1, 200);
    open(&url, warm, args.concurrency, &warm_stop).await;
    wait_connections(server.port, warm, Duration::from_secs(10)).await;
    let _ = warm_stop.send(true);
    wait_connections(server.port, 0, Duration::from_secs(10)).await;
    let (base_rss, base_anon) = settled_rss(pid).await;

    let started = Instant::now();
    let (stop, _) = tokio::sync::watch::channel(false);
    let opened = open(&url, args.sockets, args.concurrency, &stop).await;
    let counted = wait_connections(server.port, opened, Duration::from_secs(60)).await;
    let connect_time = started.elapsed();
    // Let every socket go through at least two heartbeat rounds (ping, pong read).
    tokio::time::sleep(heartbeat * 2 + Duration::from_millis(500)).await;
    let (rss, anon) = settled_rss(pid).await;
    let load = loadavg();
    let client_rss = status_kb(std::process::id(), "VmRSS");

    let _ = stop.send(true);
    let after_close = wait_connections(server.port, 0, Duration::from_secs(30)).await;
    let (closed_rss, _) = settled_rss(pid).await;

    let per_socket = |kb: u64, base: u64| {
        if opened == 0 {
            0.0
        } else {
            kb.saturating_sub(base) as f64 * 1024.0 / opened as f64
        }
    };
    println!("ws_idle: idle authenticated WebSocket connections, server process memory");
    println!("  sockets opened / counted by server : {opened} / {counted}");
    println!(
        "  connect time                       : {:.2} s ({:.0} sockets/s)",
        connect_time.as_secs_f64(),
        opened as f64 / connect_time.as_secs_f64().max(1e-9)
    );
    println!(
        "  heartbeat                          : {} ms",
        args.heartbeat_ms
    );
    println!("  server VmRSS baseline → with sockets: {base_rss} kB → {rss} kB");
    println!(
        "  RSS per idle socket                : {:.0} bytes (RssAnon: {:.0} bytes)",
        per_socket(rss, base_rss),
        per_socket(anon, base_anon)
    );
    println!(
        "  server VmRSS after closing all      : {closed_rss} kB ({after_close} still counted)"
    );
    println!("  client process VmRSS (not counted) : {client_rss} kB");
    println!("  load average at measurement        : {load}");
    if counted != opened || opened != args.sockets {
        eprintln!("warning: not every socket was opened/counted");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
