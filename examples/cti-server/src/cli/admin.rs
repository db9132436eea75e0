//! Admin subcommands working directly on the database: `migrate` (and the import of an
//! original Node-server database), `apps`, `keys`, `events`.
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

use cti_sqlx::PgStore;
use cti_sqlx::import::{self, ImportOptions};
use cti_sqlx::pg::PgOptions;

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

/// The engine over the configured database. With `bus` (key rotation/revocation, app
/// deactivation) it is connected to the PostgreSQL `LISTEN/NOTIFY` bus, so every running
/// instance closes the app's WebSockets (code 4001) at once. SQLite has no bus between
/// processes: a running server notices within `CtiConfig::key_recheck` (2 s), when it
/// re-checks the keys of its live sockets against the database.
async fn engine(bus: bool) -> Result<Cti, ExitCode> {
    let st = config::storage_from_env().map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })?;
    let opened = storage::open(&st.database_url, &st.database_schema, bus)
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
    let mut builder = Cti::builder().store(opened.store).config(cfg);
    if let Some(bus) = opened.bus {
        builder = builder.bus(bus);
    }
    Ok(builder.build())
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

/// `migrate …`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Also import the original Node.js server's database (PostgreSQL only): copies its tables
    /// from --source-schema into DATABASE_SCHEMA of the same database in one transaction,
    /// keeping ids; its bcrypt API keys keep working; the original tables are left untouched
    /// and running it again copies only new rows.
    #[arg(long)]
    pub from_original: bool,
    /// Schema holding the original tables.
    #[arg(long, default_value = "public", requires = "from_original")]
    pub source_schema: String,
    /// Time zone the original wrote its `TIMESTAMP WITHOUT TIME ZONE` values in.
    #[arg(long, default_value = "UTC", requires = "from_original")]
    pub source_time_zone: String,
}

/// `migrate [--from-original [--source-schema S] [--source-time-zone TZ]]`.
pub async fn migrate(args: MigrateArgs) -> ExitCode {
    let st = match config::storage_from_env() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if args.from_original {
        return import_original(&st, &args).await;
    }
    match storage::open(&st.database_url, &st.database_schema, false).await {
        Ok(_) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `migrate --from-original`: migrates the store's schema, then imports the original tables
/// (spec §7.1, §9.7) with [`cti_sqlx::import::from_original`] and prints what was copied.
async fn import_original(st: &config::StorageConfig, args: &MigrateArgs) -> ExitCode {
    if !storage::is_postgres(&st.database_url) {
        eprintln!(
            "migrate --from-original is not available on SQLite: the original server's data lives \
             in PostgreSQL. Set DATABASE_URL to that database (postgres://…); the tables are \
             copied from schema {:?} into schema {:?} of the same database.",
            args.source_schema, st.database_schema
        );
        return ExitCode::from(2);
    }
    let store = match PgStore::open(
        &st.database_url,
        PgOptions::with_schema(&st.database_schema),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open the PostgreSQL database: {e}")),
    };
    let opts = ImportOptions {
        source_schema: args.source_schema.clone(),
        source_time_zone: args.source_time_zone.clone(),
        cipher: st.cipher.as_ref(),
    };
    let r = match import::from_original(&store, &opts).await {
        Ok(r) => r,
        Err(e) => return fail(format!("import failed, nothing was written: {e}")),
    };
    if r.connections_skipped > 0 || r.webhook_secrets_skipped > 0 {
        eprintln!(
            "warning: DATA_ENCRYPTION_KEY is not set: {} Dialpad connection(s) were not imported \
             (re-connect OAuth) and {} webhook secret(s) were dropped (those webhooks are \
             verified with DIALPAD_WEBHOOK_SECRET). Set it and run the import again to copy them.",
            r.connections_skipped, r.webhook_secrets_skipped
        );
    }
    print(&json!({
        "migrations": "applied",
        "source_schema": args.source_schema,
        "target_schema": st.database_schema,
        "imported": {
            "apps": r.apps,
            "legacy_keys": r.legacy_keys,
            "audit_rows": r.audit_rows,
            "mappings": r.mappings,
            "calls": r.calls,
            "calls_status_remapped": r.calls_status_remapped,
            "messages": r.messages,
            "voicemails": r.voicemails,
            "voicemails_unlinked": r.voicemails_unlinked,
            "events_pending": r.events_pending,
            "events_done": r.events_done,
            "events_without_app": r.events_without_app,
            "connections": r.connections,
            "connections_skipped": r.connections_skipped,
            "connections_org_dropped": r.connections_org_dropped,
            "webhooks": r.webhooks,
            "webhook_secrets_encrypted": r.webhook_secrets_encrypted,
            "webhook_secrets_skipped": r.webhook_secrets_skipped,
            "dialpad_users_ignored": r.dialpad_users_ignored,
        },
    }));
    ExitCode::SUCCESS
}

/// `apps …`.
pub async fn apps(cmd: AppsCommand) -> ExitCode {
    let cti = match engine(matches!(cmd, AppsCommand::Deactivate { .. })).await {
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
    let cti = match engine(!matches!(cmd, KeysCommand::Status { .. })).await {
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
    let cti = match engine(false).await {
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
