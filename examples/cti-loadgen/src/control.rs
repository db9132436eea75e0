//! Control-plane calls outside the timed loop (reqwest): creating an app, reading `/metrics`,
//! counting calls, reading a process's resident memory, loading `serve --dev` secrets.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Error, Result};

/// A reqwest client for control calls (10 s timeout).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// Creates an app through `POST /internal/apps`; returns `(app_id, api_key)`.
pub async fn create_app(
    base_url: &str,
    internal_secret: &str,
    name: &str,
) -> Result<(String, String)> {
    let url = format!("{}/internal/apps", base_url.trim_end_matches('/'));
    let res = client()
        .post(&url)
        .bearer_auth(internal_secret)
        .json(&json!({ "name": name }))
        .send()
        .await
        .map_err(|e| Error::new(format!("POST {url}: {e}")))?;
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if status != 201 {
        return Err(Error::new(format!("POST {url}: {status} {v}")));
    }
    match (v["app_id"].as_str(), v["api_key"].as_str()) {
        (Some(id), Some(key)) => Ok((id.to_string(), key.to_string())),
        _ => Err(Error::new(format!("POST {url}: unexpected body {v}"))),
    }
}

/// The inbox and socket gauges of `GET /metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Gauges {
    /// `events.unprocessed` (pending + waiting for a retry).
    pub unprocessed: u64,
    /// `events.processing` (claimed by a worker).
    pub processing: u64,
    /// `events.dead_lettered`.
    pub dead_lettered: u64,
    /// `websocket.connections_total`.
    pub ws_connections: u64,
}

impl Gauges {
    /// Events not yet applied.
    pub fn backlog(&self) -> u64 {
        self.unprocessed + self.processing
    }
}

/// Reads `GET /metrics`.
pub async fn gauges(client: &reqwest::Client, base_url: &str) -> Result<Gauges> {
    let url = format!("{}/metrics", base_url.trim_end_matches('/'));
    let v: Value = client
        .get(&url)
        .send()
        .await
        .map_err(|e| Error::new(format!("GET {url}: {e}")))?
        .json()
        .await
        .map_err(|e| Error::new(format!("GET {url}: {e}")))?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok(Gauges {
        unprocessed: n("/events/unprocessed"),
        processing: n("/events/processing"),
        dead_lettered: n("/events/dead_lettered"),
        ws_connections: n("/websocket/connections_total"),
    })
}

/// `pagination.total` of `GET /api/calls?limit=1` for `api_key`.
pub async fn calls_total(base_url: &str, api_key: &str) -> Result<u64> {
    let url = format!("{}/api/calls?limit=1", base_url.trim_end_matches('/'));
    let res = client()
        .get(&url)
        .header("x-app-api-key", api_key)
        .send()
        .await
        .map_err(|e| Error::new(format!("GET {url}: {e}")))?;
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(Error::new(format!("GET {url}: {status} {v}")));
    }
    v.pointer("/pagination/total")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::new(format!("GET {url}: no pagination.total in {v}")))
}

/// `VmRSS` of process `pid` in KiB (Linux `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::new(format!("{path}: {e}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::new(format!("{path}: no VmRSS")))
}

/// The variables of a `serve --dev` secrets file (`<database file>.dev-secrets`).
pub fn dev_secrets(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    Ok(v.get("values")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Kernel clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU time of process `pid` in seconds (Linux `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::new(format!("{path}: {e}")))?;
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error::new(format!("{path}: unexpected format")))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => Ok((u + s) as f64 / USER_HZ),
        _ => Err(Error::new(format!("{path}: no utime/stime"))),
    }
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().filter_map(|v| v.parse().ok());
    Some([it.next()?, it.next()?, it.next()?])
}

/// CPU time of this process and of the server, and the machine load, around a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Resources {
    /// Load averages when the run started.
    pub load_avg_before: Option<[f64; 3]>,
    /// Load averages when it ended.
    pub load_avg_after: Option<[f64; 3]>,
    /// CPU seconds used by the load generator.
    pub client_cpu_s: f64,
    /// CPU seconds used by the server (with its pid).
    pub server_cpu_s: Option<f64>,
    /// Client CPU per completed request (µs).
    pub client_cpu_us_per_request: f64,
    /// Server CPU per completed request (µs).
    pub server_cpu_us_per_request: Option<f64>,
    /// The machine's speed, measured before the load ([`crate::calibrate::measure_once`]).
    pub machine: Option<crate::calibrate::MachineSpeed>,
}

/// Starts measuring [`Resources`].
#[derive(Clone, Debug)]
pub struct ResourceProbe {
    load: Option<[f64; 3]>,
    client: f64,
    server: Option<(u32, f64)>,
}

impl ResourceProbe {
    /// Samples now; `server_pid` adds the server's CPU time.
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            load: load_average(),
            client: cpu_seconds(std::process::id()).unwrap_or(0.0),
            server: server_pid.and_then(|p| cpu_seconds(p).ok().map(|c| (p, c))),
        }
    }

    /// Samples again; per-request figures over `requests`.
    pub fn finish(&self, requests: u64) -> Resources {
        let client = cpu_seconds(std::process::id()).unwrap_or(0.0) - self.client;
        let server = self
            .server
            .and_then(|(p, c0)| cpu_seconds(p).ok().map(|c| c - c0));
        let per = |s: f64| {
            if requests > 0 {
                s * 1e6 / requests as f64
            } else {
                0.0
            }
        };
        Resources {
            load_avg_before: self.load,
            load_avg_after: load_average(),
            client_cpu_s: client,
            server_cpu_s: server,
            client_cpu_us_per_request: per(client),
            server_cpu_us_per_request: server.map(per),
            machine: crate::calibrate::measured(),
        }
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let la = |l: Option<[f64; 3]>| {
            l.map_or("?".to_string(), |l| {
                format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
            })
        };
        write!(
            f,
            "  cpu: client {:.2} s ({:.1} µs/req)",
            self.client_cpu_s, self.client_cpu_us_per_request
        )?;
        if let (Some(s), Some(p)) = (self.server_cpu_s, self.server_cpu_us_per_request) {
            write!(f, ", server {s:.2} s ({p:.1} µs/req)")?;
        }
        write!(
            f,
            "; load average {} → {}",
            la(self.load_avg_before),
            la(self.load_avg_after)
        )?;
        match &self.machine {
            Some(m) => write!(f, "\n  machine: {m}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_positive() {
        assert!(rss_kib(std::process::id()).unwrap_or(0) > 0);
    }

    #[test]
    fn own_cpu_time_and_load_are_readable() {
        assert!(cpu_seconds(std::process::id()).is_ok());
        assert!(load_average().is_some());
        let probe = ResourceProbe::start(Some(std::process::id()));
        let r = probe.finish(10);
        assert!(r.server_cpu_s.is_some());
    }
}
