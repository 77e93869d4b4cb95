//! glibc's allocator, returning memory from a thread's heap (`free` → `heap_trim` →
//! `shrink_heap`), once per process reads `/proc/sys/vm/overcommit_memory`: an `openat` that no
//! role allows. The sandbox makes it happen before any filter exists, so a filtered thread that
//! frees large buffers (a console client's output, say) is not killed for it. Its own binary:
//! nothing else in the process has freed memory that way first.

use virtkit_sandbox::{set_policy, spawn, SeccompAction, ThreadRole};

#[test]
fn a_filtered_thread_may_free_large_buffers() {
    set_policy(SeccompAction::Kill);
    let worker = spawn("big-frees", ThreadRole::ConsoleSocket, || {
        // Below the mmap threshold (128 KiB at first), so they come from the thread's heap and
        // freeing them all leaves a top chunk worth trimming.
        for _ in 0..4 {
            let blocks: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 100 * 1024]).collect();
            std::hint::black_box(&blocks);
            drop(blocks);
        }
    })
    .unwrap();
    worker.join().unwrap();
}
