//! How fast this machine is today, in the unit of the server's own hot path.
//!
//! Shared development machines are not equally fast from one day to the next (on the project's
//! 2-core machine the same build has measured 4.6 µs and 9.3 µs for the same benchmark on
//! different days, with nothing else running), so a throughput figure means little without the
//! speed of the machine it was measured on. Every report therefore carries one figure: the time
//! one core takes to verify an HS256 webhook JWT of a realistic call event and normalise it —
//! the same work as the `verify_jwt_and_normalize` benchmark of `cti-core`
//! (`cargo bench -p cti-core --bench verify`), measured in-process for a fraction of a second
//! before the load starts. Compare it with the figure recorded next to a result in
//! `docs/performance.md` before comparing the results.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cti_core::clock::{Clock, SystemClock};
use cti_core::normalize::normalize_json;
use cti_core::verify::{WebhookVerifier, sign_jwt_hs256};

use crate::payload::fixture_text;
use crate::{Error, Result};

/// The fixture the `cti-core` verify benchmark uses.
const FIXTURE: &str = "call_inbound_03_connected.json";

/// A secret of the benchmark's length.
const SECRET: &[u8] = b"bench-webhook-secret-0123456789abcdef";

/// Rounds of a measurement; the median round is reported.
const ROUNDS: u32 = 7;

/// The machine's speed on the server's hot path.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MachineSpeed {
    /// Verify + normalise one call-event JWT on one core, µs (median of the rounds).
    pub verify_normalize_us: f64,
}

impl std::fmt::Display for MachineSpeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verify + normalize {:.2} µs/event on one core",
            self.verify_normalize_us
        )
    }
}

/// Measures for about `budget` on the calling thread. Errors only if the benchmark token does
/// not verify (a broken build).
pub fn measure(budget: Duration) -> Result<MachineSpeed> {
    let text = fixture_text(FIXTURE)?;
    let claims: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::new(format!("{FIXTURE}: {e}")))?;
    let token = sign_jwt_hs256(&claims, SECRET);
    let verifier = WebhookVerifier::default();
    let now = SystemClock.now();
    let once = || {
        verifier
            .verify_jwt_text(black_box(token.as_bytes()), &[SECRET], now)
            .map(|payload| normalize_json(&payload, now))
    };
    if let Err(e) = once() {
        return Err(Error::new(format!(
            "the calibration token does not verify: {e}"
        )));
    }
    let round = budget / (ROUNDS + 1);
    // The first round warms caches and the allocator and is not counted.
    let mut rounds: Vec<f64> = (0..=ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            loop {
                for _ in 0..32 {
                    black_box(once().is_ok());
                }
                n += 32;
                let spent = start.elapsed();
                if spent >= round {
                    break spent.as_secs_f64() * 1e6 / n as f64;
                }
            }
        })
        .skip(1)
        .collect();
    rounds.sort_by(f64::total_cmp);
    Ok(MachineSpeed {
        verify_normalize_us: rounds[rounds.len() / 2],
    })
}

static MEASURED: OnceLock<MachineSpeed> = OnceLock::new();

/// Measures once per process (about 0.4 s; later calls return the first figure). The binary
/// calls it before any load, so the figure is taken on a quiet client.
pub fn measure_once() -> Result<MachineSpeed> {
    if let Some(m) = MEASURED.get() {
        return Ok(*m);
    }
    let m = measure(Duration::from_millis(400))?;
    Ok(*MEASURED.get_or_init(|| m))
}

/// The figure of [`measure_once`], if it ran.
pub fn measured() -> Option<MachineSpeed> {
    MEASURED.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_hot_path_and_remembers_the_first_figure() {
        let m = measure(Duration::from_millis(40)).expect("the calibration token verifies");
        // One verify + normalize is a few µs; anything outside (0, 10 ms) is a broken probe.
        assert!(
            m.verify_normalize_us > 0.0 && m.verify_normalize_us < 10_000.0,
            "{m:?}"
        );
        assert!(m.to_string().contains("µs/event"));
        let first = measure_once().expect("measures");
        assert_eq!(measured(), Some(first));
        assert_eq!(measure_once().expect("cached"), first);
    }
}
