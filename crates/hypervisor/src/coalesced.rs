//! Port writes KVM collects instead of exiting (`KVM_REGISTER_COALESCED_MMIO` with `pio = 1`).
//!
//! A write to a registered port range is appended to a ring in a page shared by the kernel and
//! the VMM, and the guest goes on without an exit; the VMM replays the ring, in order, before it
//! handles the next exit of any vCPU. That is only right for writes whose effect nobody can see
//! before that next exit: the CMOS index register (port 0x70) is the case, as in QEMU (which
//! coalesces the same port). Every CMOS access of a guest is an index write and a data access,
//! so this halves the CMOS exits of Linux's clock and RTC driver reads and SeaBIOS's; measured
//! on the `cmos_probe` test guest (`crates/machine/tests/io_exits.rs`): 192 → 64 writes
//! that exit for 128 index and 64 data writes.
//!
//! The ring is one page per VM, reached through each vCPU's file descriptor; the vCPUs of a VM
//! share a lock so that one of them at a time replays it. The page is also the third page of the
//! region kvm-ioctls maps for the vCPU, but the only way to it there is a pointer derived from
//! `VcpuFd::get_kvm_run()`'s `&mut kvm_run`, which Rust's aliasing rules confine to that struct:
//! it gets a mapping of its own, as kvm-ioctls' own `map_coalesced_mmio_ring` does.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};

/// Where a replayed write goes: the port and the bytes the guest wrote.
pub type CoalescedSink = Box<dyn FnMut(u16, &[u8]) + Send>;

/// This vCPU's mapping of its VM's ring.
pub(crate) struct CoalescedRing {
    page: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    /// Shared by the VM's vCPUs: one replays at a time.
    lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for CoalescedRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescedRing").finish_non_exhaustive()
    }
}

// SAFETY: the page is a shared mapping that lives as long as this value; every access to its
// entries happens under `lock`, and the indices are accessed atomically.
unsafe impl Send for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring page of the vCPU behind `fd`.
    pub(crate) fn map(fd: &impl AsRawFd, lock: Arc<Mutex<()>>) -> std::io::Result<CoalescedRing> {
        // SAFETY: sysconf has no memory effects.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(std::io::Error::last_os_error()),
        };
        // SAFETY: maps one page of a vCPU file descriptor at the offset KVM documents for the
        // coalesced ring; the result is checked, and only this value unmaps it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                (KVM_COALESCED_MMIO_PAGE_OFFSET as usize * page_size) as libc::off_t,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let page = NonNull::new(address.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(CoalescedRing {
            page,
            page_size,
            lock,
        })
    }

    /// How many entries the ring holds (KVM_COALESCED_MMIO_MAX).
    fn capacity(&self) -> u32 {
        ((self.page_size - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    fn index(&self, which: usize) -> &AtomicU32 {
        // SAFETY: `first` and `last` are the two u32 at the start of the mapped page, which
        // lives as long as `self`; the kernel writes `last` concurrently, hence atomics.
        unsafe { &*(self.page.as_ptr().cast::<AtomicU32>().add(which)) }
    }

    /// Replays every write in the ring, oldest first, into `sink`. Returns how many.
    pub(crate) fn drain(&self, sink: &mut CoalescedSink) -> usize {
        let (first, last) = (self.index(0), self.index(1));
        // Cheap when empty, as after nearly every exit: no lock.
        if first.load(Ordering::Relaxed) == last.load(Ordering::Acquire) {
            return 0;
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = self.capacity();
        let mut replayed = 0;
        loop {
            let at = first.load(Ordering::Relaxed);
            if at == last.load(Ordering::Acquire) {
                return replayed;
            }
            if at >= capacity {
                // Not something KVM writes; start over rather than read outside the page.
                tracing::warn!(at, capacity, "coalesced ring index out of range; ring reset");
                first.store(last.load(Ordering::Acquire) % capacity, Ordering::Release);
                return replayed;
            }
            // SAFETY: `at < capacity`, so the entry lies inside the mapped page, after the
            // header; the kernel finished writing it before it published `last` (Acquire above).
            let entry: kvm_coalesced_mmio = unsafe {
                std::ptr::read_volatile(
                    std::ptr::addr_of!((*self.page.as_ptr()).coalesced_mmio)
                        .cast::<kvm_coalesced_mmio>()
                        .add(at as usize),
                )
            };
            let len = (entry.len as usize).min(entry.data.len());
            if let Ok(port) = u16::try_from(entry.phys_addr) {
                sink(port, &entry.data[..len]);
            }
            first.store((at + 1) % capacity, Ordering::Release);
            replayed += 1;
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the page `map` mapped, once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}
