//! Rate limits (in progress).
/// Buckets.
pub struct Limiter;
impl Limiter {
    /// New limiter.
    pub fn new(_l: &crate::RateLimits) -> Self { Limiter }
}
