//! The fuzzing entry point for the one guest-facing parser of virtio-fs: the answers a dead
//! virtiofsd's queues get ([`super::orphan`]). Arbitrary bytes become the driver's side of a
//! queue in guest memory, and every chain is answered with `-EIO`. It must never panic.

use virtkit_virtio::testing::fuzz::queue_from_bytes;

use super::orphan::FuseErrorReplies;
use crate::vhost_user::{drain, OrphanedQueues};

pub fn fuzz_orphaned_queue(data: &[u8]) {
    let Some((memory, mut queue, _flags)) = queue_from_bytes(data) else {
        return;
    };
    let mut replies = FuseErrorReplies;
    for _ in 0..2 {
        drain(&mut queue, &memory, &mut |chain| replies.answer(chain, &memory));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pseudo_random_queues_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            let data: Vec<u8> = (0..len % 700)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            super::fuzz_orphaned_queue(&data);
        }
    }
}
