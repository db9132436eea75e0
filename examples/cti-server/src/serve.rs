//! `cti-server serve [--dev]`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cti_axum::AppState;
use cti_core::Cti;

use crate::config::{self, DevSecrets, ServerConfig};
use crate::storage;

/// Installs the JSON log subscriber (`LOG_LEVEL`, `JSON_LOGS=false` for plain text) on stderr.
pub fn init_logging() {
    let level = config::var("LOG_LEVEL").unwrap_or_else(|| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = config::var("JSON_LOGS")
        .map(|v| v != "false" && v != "0")
        .unwrap_or(true);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Prepares the `--dev` secrets (generated once, persisted 0600, reused).
fn dev_secrets() -> Result<DevSecrets, String> {
    if config::var("NODE_ENV").as_deref() == Some("production") {
        return Err("serve --dev is refused when NODE_ENV=production".into());
    }
    let url =
        config::var("DATABASE_URL").unwrap_or_else(|| config::DEFAULT_DATABASE_URL.to_string());
    if !url.starts_with("sqlite:") {
        eprintln!(
            "note: --dev with a non-SQLite DATABASE_URL; secrets file kept in the current directory"
        );
    }
    let path = config::dev_secrets_path(&url);
    let mut secrets = DevSecrets::load(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .unwrap_or_default();
    if secrets.fill_missing() {
        secrets
            .save(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("==============================================================");
    eprintln!("  DEV MODE — NOT FOR PRODUCTION");
    eprintln!("  Generated secrets (kept in {}):", path.display());
    for (name, value) in &secrets.values {
        if config::var(name).is_none() {
            eprintln!("    {name}={value}");
        }
    }
    eprintln!("==============================================================");
    Ok(secrets)
}

/// Runs the server until SIGTERM/SIGINT.
pub async fn run(dev: bool) -> ExitCode {
    init_logging();
    let secrets = if dev {
        match dev_secrets() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let cfg = match ServerConfig::from_env(secrets.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            tracing::error!(variable = e.variable, "invalid configuration");
            return ExitCode::from(1);
        }
    };
    match serve(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            tracing::error!(error = %e, "server failed");
            ExitCode::from(1)
        }
    }
}

async fn serve(cfg: ServerConfig) -> Result<(), String> {
    let opened = storage::open(&cfg.database_url, &cfg.database_schema, true).await?;
    let backend = opened.store.backend();
    let mut builder = Cti::builder().store(opened.store).config(cfg.cti.clone());
    if let Some(bus) = opened.bus {
        builder = builder.bus(bus);
    }
    let cti = builder.build();
    let running = cti.start();

    let state = AppState {
        limits: Arc::new(cti_axum::ratelimit::Limiter::new(&cfg.http.rate_limits)),
        cti: cti.clone(),
        config: Arc::new(cfg.http.clone()),
        started: Instant::now(),
        shutting_down: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let app = cti_axum::router_with_state(state.clone());
    let addr = SocketAddr::from(([0, 0, 0, 0], cfg.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // TCP_NODELAY: live events must not wait for delayed ACKs (see `cti_axum::no_delay`).
    let listener = cti_axum::no_delay(listener);
    println!(
        "cti-server listening on http://{local} (environment {}, storage {backend})",
        cfg.http.environment
    );
    tracing::info!(%local, backend, node_env = ?cfg.node_env, production = cfg.production(), "listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = cfg.shutdown_drain;
    let shutting_down = state.shutting_down.clone();
    let signals = tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, drain_ms = drain.as_millis() as u64, "shutting down");
        shutting_down.store(true, Ordering::Release);
        let _ = stop_tx.send(());
        // Hard exit when draining takes longer than the bound.
        tokio::spawn(async move {
            tokio::time::sleep(drain + Duration::from_secs(1)).await;
            tracing::warn!("drain timeout exceeded; exiting");
            std::process::exit(0);
        });
        running.shutdown(drain).await;
    });

    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    server.await.map_err(|e| format!("server error: {e}"))?;
    // The HTTP side is closed; wait for the engine to drain (closes WebSockets with 1001).
    let _ = signals.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}
