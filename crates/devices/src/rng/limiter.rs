//! A token bucket over bytes: `bytes_per_second` refill, up to `burst_bytes` saved up. The
//! device hands out only what the bucket holds and, when it is empty, sleeps on a timer until
//! the next byte is due, so a guest reading `/dev/hwrng` in a loop gets the configured rate and
//! no more.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RateLimit {
    /// Sustained rate, at least 1.
    pub bytes_per_second: u64,
    /// Bytes that may be saved up and handed out at once, at least 1 (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

impl RateLimit {
    pub fn burst(&self) -> u64 {
        self.burst_bytes.unwrap_or(self.bytes_per_second).max(1)
    }
}

/// The bucket's state.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens in nanosecond-bytes (tokens × 1e9), so refills of under a byte are not lost.
    nano_tokens: u128,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        let burst = limit.burst();
        TokenBucket {
            rate: limit.bytes_per_second.max(1),
            burst,
            nano_tokens: u128::from(burst) * NANOS,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        let cap = u128::from(self.burst) * NANOS;
        self.nano_tokens = self
            .nano_tokens
            .saturating_add(elapsed.saturating_mul(u128::from(self.rate)))
            .min(cap);
    }

    /// Takes up to `want` bytes; returns how many it may hand out now (0 when empty).
    pub fn take(&mut self, want: u64, now: Instant) -> u64 {
        self.refill(now);
        let whole = u64::try_from(self.nano_tokens / NANOS).unwrap_or(u64::MAX);
        let got = whole.min(want);
        self.nano_tokens -= u128::from(got) * NANOS;
        got
    }

    /// The smallest grant worth waking up for: 20 ms of the rate (at most 50 wake-ups a second
    /// however small the guest's buffers), never more than the burst.
    pub fn min_grant(&self) -> u64 {
        (self.rate / 50).clamp(1, self.burst)
    }

    /// Like [`TokenBucket::take`], but takes nothing unless [`TokenBucket::min_grant`] bytes (or
    /// `want`, if smaller) are there.
    pub fn take_grant(&mut self, want: u64, now: Instant) -> u64 {
        self.refill(now);
        let whole = u64::try_from(self.nano_tokens / NANOS).unwrap_or(u64::MAX);
        if whole < self.min_grant().min(want) {
            return 0;
        }
        self.take(want, now)
    }

    /// Returns `n` bytes taken and not used (never beyond the burst).
    pub fn put_back(&mut self, n: u64) {
        let cap = u128::from(self.burst) * NANOS;
        self.nano_tokens = self.nano_tokens.saturating_add(u128::from(n) * NANOS).min(cap);
    }

    /// How long until the bucket holds `bytes` (capped at the burst); zero if it does.
    pub fn time_until(&self, bytes: u64) -> Duration {
        let target = u128::from(bytes.min(self.burst)) * NANOS;
        let missing = target.saturating_sub(self.nano_tokens);
        // missing nano-tokens at `rate` tokens per second: missing / rate nanoseconds.
        let nanos = missing.div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long until the next grant ([`TokenBucket::min_grant`]) is in the bucket.
    pub fn time_to_next_grant(&self) -> Duration {
        self.time_until(self.min_grant())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u64, burst: u64) -> RateLimit {
        RateLimit {
            bytes_per_second: rate,
            burst_bytes: Some(burst),
        }
    }

    #[test]
    fn starts_full_and_empties() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(1000, 100), t0);
        assert_eq!(b.take(60, t0), 60);
        assert_eq!(b.take(60, t0), 40);
        assert_eq!(b.take(60, t0), 0);
    }

    #[test]
    fn refills_at_the_rate_and_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(1000, 100), t0);
        assert_eq!(b.take(100, t0), 100);
        // 50 ms at 1000 B/s is 50 bytes.
        assert_eq!(b.take(1000, t0 + Duration::from_millis(50)), 50);
        // An hour later the bucket holds the burst, not an hour's worth.
        assert_eq!(b.take(u64::MAX, t0 + Duration::from_secs(3600)), 100);
    }

    #[test]
    fn fractions_of_a_byte_accumulate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(3, 10), t0);
        assert_eq!(b.take(10, t0), 10);
        let got: u64 = (1..=4000)
            .map(|ms| b.take(1, t0 + Duration::from_millis(ms)))
            .sum();
        assert_eq!(got, 12, "3 B/s taken a byte at a time every ms for 4 s");
    }

    #[test]
    fn grants_wait_for_twenty_milliseconds_of_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(8192, 8192), t0);
        assert_eq!(b.min_grant(), 163);
        assert_eq!(b.take(8192, t0), 8192);
        assert_eq!(
            b.take_grant(4096, t0 + Duration::from_millis(10)),
            0,
            "81 bytes: too few"
        );
        let wait = b.time_to_next_grant();
        assert!(
            wait > Duration::from_millis(9) && wait < Duration::from_millis(11),
            "{wait:?}"
        );
        assert_eq!(b.take_grant(4096, t0 + Duration::from_millis(20)), 163);
        assert_eq!(
            b.take_grant(10, t0 + Duration::from_millis(22)),
            10,
            "a small buffer needs less"
        );
    }

    #[test]
    fn time_until_a_byte_is_what_the_rate_says() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(8192, 1), t0);
        assert_eq!(b.take(1, t0), 1);
        let wait = b.time_until(1);
        assert!(
            wait <= Duration::from_micros(123) && wait >= Duration::from_micros(121),
            "{wait:?}"
        );
        assert_eq!(b.take(1, t0 + wait), 1);
    }

    #[test]
    fn zero_rate_and_burst_are_treated_as_one() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(0, 0), t0);
        assert_eq!(b.take(10, t0), 1);
        assert_eq!(b.time_to_next_grant(), Duration::from_secs(1));
    }
}
