//! Admin subcommands working directly on the database: `migrate`, `apps`, `keys`, `events`.
//!
//! They read `DATABASE_URL`, `API_KEY_PEPPER` and `DATA_ENCRYPTION_KEY` like `serve` (or the
//! `--dev` secrets file beside a SQLite database) and print JSON on stdout.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use cti_core::Cti;
use cti_core::model::{AppId, AuditContext, PageRequest};
use cti_core::store::AppPatch;
use serde_json::json;

use crate::config;
use crate::storage;

/// `apps …`.
#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Create an app and print its first API key (shown once).
    Create {
        /// Display name.
        name: String,
    },
    /// List apps.
    List,
    /// Deactivate an app (its keys stop working, live sockets are closed).
    Deactivate {
        /// App id.
        id: String,
    },
}

/// `keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Issue a new key (rotation); prints it once.
    Rotate {
        /// App id.
        app_id: String,
        /// Keep the previous key working for this many seconds.
        #[arg(long)]
        grace_seconds: Option<u64>,
    },
    /// Revoke the app's key.
    Revoke {
        /// App id.
        app_id: String,
    },
    /// Show whether the app has a key, its hint and issue time.
    Status {
        /// App id.
        app_id: String,
    },
}

/// `events …`.
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Inbox counters.
    Stats,
    /// Put a failed or dead-lettered event back in the queue.
    Retry {
        /// Inbox event id.
        event_id: String,
    },
}

fn cli_ctx() -> AuditContext {
    AuditContext {
        actor: Some("cli".into()),
        request_ip: None,
        user_agent: None,
    }
}

async fn engine() -> Result<Cti, ExitCode> {
    let st = config::storage_from_env().map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })?;
    let opened = storage::open(&st.database_url, &st.database_schema, false)
        .await
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(1)
        })?;
    let cfg = cti_core::CtiConfig {
        webhook_secret: st.webhook_secret,
        api_key_pepper: st.pepper,
        data_cipher: st.cipher,
        ..Default::default()
    };
    Ok(Cti::builder().store(opened.store).config(cfg).build())
}

fn app_id(text: &str) -> Result<AppId, ExitCode> {
    text.parse().map_err(|_| {
        eprintln!("not a valid app id (UUID): {text:?}");
        ExitCode::from(2)
    })
}

fn print(v: &serde_json::Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("cannot format output: {e}"),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// `migrate [--from-original]`.
pub async fn migrate(from_original: bool) -> ExitCode {
    if from_original {
        eprintln!(
            "migrate --from-original is not available in this build (cti_sqlx::import::from_original does not exist yet)"
        );
        return ExitCode::from(2);
    }
    let st = match config::storage_from_env() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match storage::open(&st.database_url, &st.database_schema, false).await {
        Ok(_) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `apps …`.
pub async fn apps(cmd: AppsCommand) -> ExitCode {
    let cti = match engine().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        AppsCommand::Create { name } => {
            if name.trim().is_empty() {
                eprintln!("the app name must not be empty");
                return ExitCode::from(2);
            }
            match cti.create_app(&name, cli_ctx()).await {
                Ok((app, key)) => {
                    print(&json!({ "app": app, "api_key": key.expose() }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        AppsCommand::List => {
            let mut offset = 0u64;
            let mut all = Vec::new();
            loop {
                match cti.store().list_apps(PageRequest::new(100, offset)).await {
                    Ok(page) => {
                        let n = page.items.len() as u64;
                        all.extend(page.items);
                        offset += n;
                        if n == 0 || offset >= page.total {
                            break;
                        }
                    }
                    Err(e) => return fail(e),
                }
            }
            print(&json!({ "apps": all, "total": all.len() }));
            ExitCode::SUCCESS
        }
        AppsCommand::Deactivate { id } => {
            let id = match app_id(&id) {
                Ok(id) => id,
                Err(c) => return c,
            };
            match cti
                .update_app(
                    id,
                    AppPatch {
                        name: None,
                        is_active: Some(false),
                    },
                )
                .await
            {
                Ok(app) => {
                    print(&json!({ "app": app }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// `keys …`.
pub async fn keys(cmd: KeysCommand) -> ExitCode {
    let cti = match engine().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        KeysCommand::Rotate {
            app_id: id,
            grace_seconds,
        } => {
            let id = match app_id(&id) {
                Ok(id) => id,
                Err(c) => return c,
            };
            let grace = grace_seconds.filter(|s| *s > 0).map(Duration::from_secs);
            match cti.issue_key(id, grace, cli_ctx()).await {
                Ok((out, key)) => {
                    print(&json!({ "app": out.app, "api_key": key.expose(), "audit": out.audit }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::Revoke { app_id: id } => {
            let id = match app_id(&id) {
                Ok(id) => id,
                Err(c) => return c,
            };
            match cti.revoke_key(id, cli_ctx()).await {
                Ok(out) => {
                    print(&json!({ "app": out.app, "audit": out.audit }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::Status { app_id: id } => {
            let id = match app_id(&id) {
                Ok(id) => id,
                Err(c) => return c,
            };
            match cti.store().get_app(id).await {
                Ok(Some(app)) => {
                    print(&json!({
                        "app_id": app.id,
                        "has_api_key": app.has_key,
                        "api_key_hint": app.api_key_hint,
                        "api_key_issued_at": app.api_key_issued_at,
                        "is_active": app.is_active,
                    }));
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("app not found");
                    ExitCode::from(1)
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// `events …`.
pub async fn events(cmd: EventsCommand) -> ExitCode {
    let cti = match engine().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        EventsCommand::Stats => match cti.store().inbox_stats().await {
            Ok(stats) => {
                print(&json!(stats));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        EventsCommand::Retry { event_id } => {
            let id = match uuid::Uuid::parse_str(&event_id) {
                Ok(id) => id,
                Err(_) => {
                    eprintln!("not a valid event id (UUID): {event_id:?}");
                    return ExitCode::from(2);
                }
            };
            match cti.store().inbox_redrive(None, id, cti.now()).await {
                Ok(true) => {
                    println!("event {id} queued for retry");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!("event {id} not found or not in a failed/dead state");
                    ExitCode::from(1)
                }
                Err(e) => fail(e),
            }
        }
    }
}
