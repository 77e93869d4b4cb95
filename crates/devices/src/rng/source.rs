//! Where the device's bytes come from.

use std::io;

/// A source of random bytes for the guest.
pub trait EntropySource: Send {
    /// Fills `buf` completely.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's CSPRNG through `getrandom(2)` (no file descriptor, never blocks once the
/// host's pool is initialised, which it is long before a VMM runs).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRandom;

impl EntropySource for HostRandom {
    fn fill(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match rustix::rand::getrandom(&mut *buf, rustix::rand::GetRandomFlags::empty()) {
                Ok(n) => buf = &mut buf[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_random_fills_large_buffers_with_varied_bytes() {
        let mut buf = vec![0u8; 1 << 20];
        HostRandom.fill(&mut buf).unwrap();
        let mut seen = [false; 256];
        for &b in &buf {
            seen[usize::from(b)] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "1 MiB of getrandom output covers every byte value"
        );
    }
}
