//! The fuzzing entry point for the entropy queue loop: arbitrary bytes become the driver's side
//! of a queue in guest memory ([`queue_from_bytes`]), and the device answers whatever is there,
//! with and without a rate limit. It must never panic; `fuzz/` runs it under libFuzzer and a
//! unit test runs it over pseudo-random inputs.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtkit_virtio::testing::fuzz::queue_from_bytes;

use super::handler::{process_queue, EntropyHandler};
use super::limiter::{RateLimit, TokenBucket};
use super::metrics::RngMetrics;
use super::source::EntropySource;

/// A fast, deterministic source: the fuzzer is after the queue logic, not the host's CSPRNG.
struct Counting(u8);

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

/// Lays `data` out as a queue (flag bit 1: a rate limit of 100 bytes/s with a 64-byte burst)
/// and answers it twice, the second time a second later.
pub fn fuzz_queue(data: &[u8]) {
    let Some((mem, mut queue, flags)) = queue_from_bytes(data) else {
        return;
    };
    let now = Instant::now();
    let limiter = (flags & 2 != 0).then(|| {
        TokenBucket::new(
            RateLimit {
                bytes_per_second: 100,
                burst_bytes: Some(64),
            },
            now,
        )
    });
    let metrics = Arc::new(RngMetrics::default());
    let mut handler = EntropyHandler::new(Counting(0), limiter, metrics.clone());
    for pass in 0..2u64 {
        let _ = process_queue(&mut queue, &mem, &mut handler, now + Duration::from_secs(pass));
    }
    if flags & 2 != 0 {
        assert!(
            RngMetrics::get(&metrics.bytes) <= 64 + 100,
            "the limit holds whatever the queue says"
        );
    }
}
