//! `cti-server`: the reference Dialpad CTI server and its admin tools.
//!
//! `cti-server` (= `cti-server serve`) reads the environment (spec §8.1/§8.7) and serves the
//! HTTP API, webhooks and WebSocket; `serve --dev` is a zero-setup local run. The other
//! subcommands administer the same database (`migrate`, `apps`, `keys`, `events`) or replay the
//! Dialpad fixture lifecycles against a running server (`simulate`).

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the request path allocates many small JSON
/// values (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

mod cli;
mod config;
mod serve;
mod storage;

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "cti-server", version, about = "Dialpad CTI server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Serve HTTP (the default).
    Serve {
        /// Zero-setup local mode: SQLite, generated secrets kept beside the database file.
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit (optionally import an original server's database).
    Migrate(cli::admin::MigrateArgs),
    /// Manage tenant apps.
    Apps {
        #[command(subcommand)]
        command: cli::admin::AppsCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: cli::admin::KeysCommand,
    },
    /// Inspect and redrive webhook events.
    Events {
        #[command(subcommand)]
        command: cli::admin::EventsCommand,
    },
    /// Replay the Dialpad fixture lifecycles as signed JWT webhooks against a running server.
    Simulate(cli::simulate::SimulateArgs),
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
    let command = cli.command.unwrap_or(Command::Serve { dev: false });
    runtime.block_on(async move {
        match command {
            Command::Serve { dev } => serve::run(dev).await,
            Command::Migrate(args) => cli::admin::migrate(args).await,
            Command::Apps { command } => cli::admin::apps(command).await,
            Command::Keys { command } => cli::admin::keys(command).await,
            Command::Events { command } => cli::admin::events(command).await,
            Command::Simulate(args) => cli::simulate::run(args).await,
        }
    })
}
