//! `simulate`: replays the Dialpad fixture lifecycles as signed JWT webhooks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

include!("../../../../fixtures/dialpad/embedded.rs");

/// `simulate` arguments.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// Target app id (posted to `/webhooks/dialpad/<app_id>`).
    #[arg(long)]
    pub app_id: String,
    /// Webhook secret used to sign the JWTs (the app's secret or `DIALPAD_WEBHOOK_SECRET`).
    /// Default: `DIALPAD_WEBHOOK_SECRET`, else the `serve --dev` secrets file beside the
    /// `DATABASE_URL` SQLite database (`./cti.db.dev-secrets` by default, and for PostgreSQL).
    #[arg(long, env = "DIALPAD_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Only this lifecycle (default: all).
    #[arg(long)]
    pub lifecycle: Option<String>,
    /// Read fixtures from this directory instead of the embedded copies.
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// List the lifecycles and exit.
    #[arg(long)]
    pub list: bool,
}

/// One lifecycle of `lifecycles.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    /// Name.
    pub name: String,
    /// Event file names, in order.
    pub events: Vec<String>,
    /// Expected final call status, when stated.
    pub expected_status: Option<String>,
}

/// Parses `lifecycles.json`.
pub fn parse_lifecycles(text: &str) -> Result<Vec<Lifecycle>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("lifecycles.json: {e}"))?;
    let seqs = v
        .get("sequences")
        .and_then(Value::as_array)
        .ok_or("lifecycles.json: no \"sequences\" array")?;
    Ok(seqs
        .iter()
        .filter_map(|s| {
            Some(Lifecycle {
                name: s.get("name")?.as_str()?.to_string(),
                events: s
                    .get("events")?
                    .as_array()?
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect(),
                expected_status: s
                    .get("expected_status")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect())
}

/// The text of a fixture event file, from `dir` or the embedded copies.
pub fn event_text(dir: Option<&PathBuf>, name: &str) -> Result<String, String> {
    match dir {
        Some(d) => std::fs::read_to_string(d.join(name))
            .map_err(|e| format!("{}: {e}", d.join(name).display())),
        None => EVENT_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| (*t).to_string())
            .ok_or_else(|| format!("unknown fixture event {name:?}")),
    }
}

/// Signs a fixture payload as Dialpad would: the claims plus a fresh `iat`.
pub fn sign_event(payload: &str, secret: &[u8]) -> Result<String, String> {
    let mut claims: Value =
        serde_json::from_str(payload).map_err(|e| format!("invalid fixture JSON: {e}"))?;
    if let Some(obj) = claims.as_object_mut() {
        obj.insert("iat".into(), Value::from(chrono::Utc::now().timestamp()));
    }
    Ok(cti_core::verify::sign_jwt_hs256(&claims, secret))
}

/// `DIALPAD_WEBHOOK_SECRET` as the admin commands see it: the environment, or the `--dev`
/// secrets file (`crate::config::storage_from_env`).
fn dev_webhook_secret() -> Option<String> {
    crate::config::storage_from_env()
        .ok()?
        .webhook_secret
        .map(|s| s.expose().clone())
}

/// Runs `simulate`.
pub async fn run(args: SimulateArgs) -> ExitCode {
    let lifecycles_text = match &args.fixtures {
        Some(d) => match std::fs::read_to_string(d.join("lifecycles.json")) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", d.join("lifecycles.json").display());
                return ExitCode::from(1);
            }
        },
        None => LIFECYCLES.to_string(),
    };
    let lifecycles = match parse_lifecycles(&lifecycles_text) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if args.list {
        for l in &lifecycles {
            println!(
                "{} ({} events, expected {})",
                l.name,
                l.events.len(),
                l.expected_status.as_deref().unwrap_or("-")
            );
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<&Lifecycle> = match &args.lifecycle {
        Some(name) => lifecycles.iter().filter(|l| &l.name == name).collect(),
        None => lifecycles.iter().collect(),
    };
    if selected.is_empty() {
        eprintln!(
            "no lifecycle named {:?} (try --list)",
            args.lifecycle.as_deref().unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    let secret = match args.secret.clone().or_else(dev_webhook_secret) {
        Some(s) => s,
        None => {
            eprintln!(
                "no webhook secret: pass --secret, set DIALPAD_WEBHOOK_SECRET, or run from the \
                 directory of a `serve --dev` database"
            );
            return ExitCode::from(2);
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the HTTP client: {e}");
            return ExitCode::from(1);
        }
    };
    let endpoint = format!(
        "{}/webhooks/dialpad/{}",
        args.url.trim_end_matches('/'),
        args.app_id
    );
    let mut failures = 0usize;
    for l in selected {
        println!(
            "lifecycle {} (expected status {})",
            l.name,
            l.expected_status.as_deref().unwrap_or("-")
        );
        for name in &l.events {
            let token = match event_text(args.fixtures.as_ref(), name)
                .and_then(|t| sign_event(&t, secret.as_bytes()))
            {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("  {name}: {e}");
                    failures += 1;
                    continue;
                }
            };
            let res = client
                .post(&endpoint)
                .header("content-type", "application/jwt")
                .body(token)
                .send()
                .await;
            match res {
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    if !status.is_success() {
                        failures += 1;
                    }
                    println!("  {name}: {} {}", status.as_u16(), body.trim());
                }
                Err(e) => {
                    failures += 1;
                    println!("  {name}: request failed: {e}");
                }
            }
        }
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lifecycle_event_is_embedded() {
        let ls = parse_lifecycles(LIFECYCLES).unwrap_or_default();
        assert!(!ls.is_empty());
        for l in &ls {
            for e in &l.events {
                assert!(event_text(None, e).is_ok(), "{e} missing");
            }
        }
    }

    #[test]
    fn signed_events_are_jwts() {
        let t = sign_event(r#"{"call_id":1,"state":"ringing"}"#, b"W").unwrap_or_default();
        assert_eq!(t.split('.').count(), 3);
    }
}
