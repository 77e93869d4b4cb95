//! Rate-limited logging for paths a guest can trigger at will: at most one message per second
//! per call site, with the count of the ones left out. Every layer above uses it (devices get it
//! through `virtkit_virtio`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One call site's limiter.
#[derive(Debug)]
pub struct RateLimit {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            last_second: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(number left out since the last one)` when this message may be logged.
    pub fn check(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.last_second.swap(now, Ordering::Relaxed) == now {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        }
    }
}

/// `tracing::warn!`, at most once a second per call site.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            $crate::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_message_in_the_same_second_is_suppressed_and_counted() {
        let limit = RateLimit::new();
        assert_eq!(limit.check(), Some(0));
        // Two checks in a row can straddle a second boundary; one of three must be suppressed.
        let results = [limit.check(), limit.check()];
        assert!(results.contains(&None));
    }
}
