//! Time source: [`SystemClock`] in production, [`ManualClock`] in tests.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, UTC.
    fn now(&self) -> Timestamp;
}

/// The system wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// ```
/// use cti_core::clock::{Clock, ManualClock};
/// let c = ManualClock::new("2026-01-29T12:00:00Z".parse().unwrap());
/// c.advance(std::time::Duration::from_secs(5));
/// assert_eq!(c.now().to_rfc3339(), "2026-01-29T12:00:05+00:00");
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock frozen at `t`.
    pub fn new(t: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: std::time::Duration) {
        let mut g = self.0.lock();
        *g += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        *self.0.lock() = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock()
    }
}
