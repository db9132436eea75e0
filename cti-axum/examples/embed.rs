//! An existing axum application with the CTI router nested under `/cti`.
//!
//! ```sh
//! cargo run -p cti-axum --example embed                     # memory store
//! CTI_DATABASE_URL=sqlite://embed.db cargo run -p cti-axum --example embed
//! ```
//!
//! The application keeps its own routes, state and session check; the CTI routes keep their
//! own authentication (`x-app-api-key`, internal bearer secret). Ctrl-C or SIGTERM shuts down
//! gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cti_axum::{AppState, HttpConfig};
use cti_core::secrets::Secret;
use cti_core::store::{MemoryStore, Store};
use cti_core::{Cti, CtiConfig};

/// The host application's own state.
#[derive(Clone)]
struct Host {
    /// Token its own routes require in `x-session` (stands in for real session handling).
    session: Arc<str>,
}

/// The host's authentication, applied to the host's routes only.
async fn require_session(State(host): State<Host>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get("x-session")
        .is_some_and(|v| v.as_bytes() == host.session.as_bytes());
    if ok {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "log in first").into_response()
    }
}

async fn home() -> &'static str {
    "the host application"
}

async fn dashboard(State(cti): State<Cti>) -> String {
    // Host code can use the same engine directly, e.g. to read the inbox counters.
    match cti.store().inbox_stats().await {
        Ok(s) => format!("CTI events waiting: {}", s.unprocessed),
        Err(e) => format!("CTI store unavailable: {e}"),
    }
}

/// Memory by default; SQLite with `CTI_DATABASE_URL=sqlite://…` (migrated on open).
async fn open_store() -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    Ok(match std::env::var("CTI_DATABASE_URL") {
        Ok(url) => Arc::new(cti_sqlx::SqliteStore::open(&url).await?),
        Err(_) => Arc::new(MemoryStore::new()),
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The engine: a store and the settings of spec §8 (secrets from your own configuration).
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
    let cti = Cti::builder()
        .store(open_store().await?)
        .config(CtiConfig {
            webhook_secret: Some(Secret::new(env(
                "DIALPAD_WEBHOOK_SECRET",
                "dev-webhook-secret",
            ))),
            ..CtiConfig::default()
        })
        .build();

    // 2. The processor: turns stored webhooks into calls, messages and live events.
    let running = cti.start();

    // 3. The CTI router; keep a clone of its state to signal the shutdown.
    let port: u16 = env("PORT", "3000").parse()?;
    let mut http = HttpConfig::new(env(
        "INTERNAL_API_SECRET",
        "dev-internal-secret-change-me-0123456789",
    ));
    http.port = port; // reported by /cti/health
    let state = AppState::new(cti.clone(), http);
    let cti_routes = cti_axum::router_with_state(state.clone());

    // 4. The host application: its own routes, state and auth, with the CTI routes under /cti.
    let host = Host {
        session: env("HOST_SESSION", "let-me-in").into(),
    };
    let dashboard_routes = Router::new()
        .route("/dashboard", get(dashboard))
        .with_state(cti);
    let app = Router::new()
        .merge(dashboard_routes)
        .route_layer(middleware::from_fn_with_state(host, require_session))
        .route("/", get(home))
        .nest("/cti", cti_routes);

    // 5. Serve. The client address feeds the CTI rate limits, hence `ConnectInfo`;
    //    `cti_axum::no_delay` turns Nagle's algorithm off (`TCP_NODELAY`), otherwise a live
    //    WebSocket event can wait up to 40 ms for the client's delayed ACK of the previous one.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let listener = cti_axum::no_delay(listener);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        // /cti/health answers 503 and new WebSockets are refused from now on; in-flight events
        // finish (at most 5 s) and live WebSockets close with 1001; then HTTP stops.
        state.begin_shutdown();
        running.shutdown(Duration::from_secs(5)).await;
        println!("CTI drained; stopping HTTP");
    })
    .await?;
    Ok(())
}
