use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, OnceLock};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress as KvmIoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{ioctl, HypervisorError};
use crate::routing::GsiRoute;
use crate::teardown::TeardownKeeper;
use crate::vcpu::Vcpu;
use crate::Result;

/// Where a guest write signals an ioeventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// The memory slot numbers a VM uses. Numbers of removed slots are handed out again, so a
/// machine that remaps a range many times (PAM shadow RAM) never runs out.
#[derive(Debug, Default)]
struct SlotNumbers {
    in_use: BTreeSet<u32>,
}

impl SlotNumbers {
    /// The lowest free slot number below `max`.
    fn take(&mut self, max: usize) -> Option<u32> {
        let slot = (0..max as u32).find(|s| !self.in_use.contains(s))?;
        self.in_use.insert(slot);
        Some(slot)
    }
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct Vm {
    pub(crate) fd: VmFd,
    /// Holds a second reference to the VM so that KVM's teardown runs in that process, not in
    /// ours, once [`Vm::start_teardown_keeper`] has started it. Declared after `fd`: fields drop
    /// in order, so our reference goes first. Does its work by being dropped.
    teardown_keeper: OnceLock<TeardownKeeper>,
    max_memslots: usize,
    read_only_memory: bool,
    slots: Mutex<SlotNumbers>,
    msrs: std::sync::Arc<crate::vcpu_state::SaveableMsrs>,
    /// Set once a port range is coalesced: the lock its vCPUs replay the ring under.
    coalescing: OnceLock<std::sync::Arc<Mutex<()>>>,
}

impl Vm {
    /// `msr_list`: the MSRs `KVM_GET_MSR_INDEX_LIST` names, which vCPU state saves.
    pub(crate) fn new(fd: VmFd, max_memslots: usize, msr_list: Vec<u32>) -> Vm {
        let read_only_memory = fd.check_extension(Cap::ReadonlyMem);
        Vm {
            fd,
            teardown_keeper: OnceLock::new(),
            max_memslots,
            read_only_memory,
            slots: Mutex::new(SlotNumbers::default()),
            msrs: std::sync::Arc::new(crate::vcpu_state::SaveableMsrs::new(msr_list)),
            coalescing: OnceLock::new(),
        }
    }

    /// Starts the process that will run KVM's teardown of this VM when it is dropped (see
    /// `teardown`), unless it runs already; without one the teardown runs in this process.
    /// Call it once the guest runs: its creation (~0.15 ms here) kept the guest's first
    /// instruction waiting when `KVM_CREATE_VM` did it. From a thread without a seccomp filter
    /// (it clones a process).
    pub fn start_teardown_keeper(&self) {
        if self.teardown_keeper.get().is_none() {
            if let Some(keeper) = TeardownKeeper::start(self.fd.as_raw_fd()) {
                // Another thread's keeper won the race: this one is dropped, and exits.
                let _ = self.teardown_keeper.set(keeper);
            }
        }
    }

    /// The process that will run KVM's teardown of this VM, if there is one (see `teardown`).
    #[cfg(test)]
    pub(crate) fn teardown_keeper_pid(&self) -> Option<libc::pid_t> {
        self.teardown_keeper.get().map(TeardownKeeper::pid)
    }

    // A poisoned lock is still consistent: nothing that can panic runs between two changes.
    fn slot_numbers(&self) -> MutexGuard<'_, SlotNumbers> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether memory slots can be read-only (`KVM_CAP_READONLY_MEM`): guest reads hit the
    /// host memory, guest writes exit to the VMM as MMIO writes.
    pub fn read_only_memory_supported(&self) -> bool {
        self.read_only_memory
    }

    /// Sets up the x86 platform pieces KVM keeps in the kernel: the TSS and identity-map
    /// pages, the PIC/IOAPIC/LAPIC irqchip and the PIT.
    pub fn create_platform(&self, tss_address: u64, identity_map_address: u64) -> Result<()> {
        self.set_system_pages(tss_address, identity_map_address)?;
        self.create_interrupt_controllers()
    }

    /// The first half of [`Vm::create_platform`]: where KVM keeps the TSS and the identity map.
    pub fn set_system_pages(&self, tss_address: u64, identity_map_address: u64) -> Result<()> {
        self.fd
            .set_identity_map_address(identity_map_address)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(tss_address as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))
    }

    /// The second half of [`Vm::create_platform`]: the in-kernel PIC/IOAPIC/LAPIC and the PIT.
    /// Map guest memory first where start time matters (see `Machine::new`).
    pub fn create_interrupt_controllers(&self) -> Result<()> {
        self.fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        // A dummy speaker port keeps port 0x61 in the kernel, as guests poll it in calibration.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// Maps `size` bytes of host memory at `host_address` into the guest at `guest_address`
    /// and returns the slot. With `read_only` the guest reads the memory but its writes exit as
    /// [`VcpuExit::MmioWrite`](crate::VcpuExit::MmioWrite) and leave it unchanged (that needs
    /// [`Vm::read_only_memory_supported`]). The range must not overlap another slot's.
    ///
    /// # Safety
    ///
    /// `host_address..host_address + size` must be a mapping that stays valid, and is not
    /// unmapped or remapped, until the slot is removed with [`Vm::unmap_memory`] or the VM is
    /// dropped.
    pub unsafe fn map_memory(
        &self,
        guest_address: u64,
        size: u64,
        host_address: u64,
        read_only: bool,
    ) -> Result<u32> {
        if read_only && !self.read_only_memory {
            return Err(HypervisorError::MissingCapability(
                "READONLY_MEM (read-only memory slots)",
            ));
        }
        let flags = if read_only { KVM_MEM_READONLY } else { 0 };
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.map_memory_with_flags(guest_address, size, host_address, flags) }
    }

    /// [`Vm::map_memory`] (writable) with KVM's dirty log on: [`Vm::dirty_pages`] then says
    /// which of the slot's pages the guest wrote since it last asked.
    ///
    /// # Safety
    ///
    /// As for [`Vm::map_memory`].
    pub unsafe fn map_memory_logged(&self, guest_address: u64, size: u64, host_address: u64) -> Result<u32> {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.map_memory_with_flags(guest_address, size, host_address, KVM_MEM_LOG_DIRTY_PAGES) }
    }

    /// The pages of `slot` (made by [`Vm::map_memory_logged`], `size` bytes) the guest wrote
    /// since the last call (or since the slot was made), one bit per 4 KiB page, and clears
    /// them (`KVM_GET_DIRTY_LOG`).
    pub fn dirty_pages(&self, slot: u32, size: u64) -> Result<Vec<u64>> {
        let size = usize::try_from(size)
            .map_err(|_| HypervisorError::MissingCapability("a slot size that fits usize"))?;
        self.fd
            .get_dirty_log(slot, size)
            .map_err(ioctl("KVM_GET_DIRTY_LOG"))
    }

    /// # Safety
    ///
    /// As for [`Vm::map_memory`].
    unsafe fn map_memory_with_flags(
        &self,
        guest_address: u64,
        size: u64,
        host_address: u64,
        flags: u32,
    ) -> Result<u32> {
        // Held until KVM has answered, so that the set always says what KVM has.
        let mut slots = self.slot_numbers();
        let slot = slots
            .take(self.max_memslots)
            .ok_or(HypervisorError::MissingCapability(
                "enough memory slots for this memory layout",
            ))?;
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: guest_address,
            memory_size: size,
            userspace_addr: host_address,
        };
        // SAFETY: the caller guarantees the host range stays mapped while the slot exists; the
        // slot number is free, so this creates a slot and replaces no other mapping.
        if let Err(e) = unsafe { self.fd.set_user_memory_region(region) } {
            slots.in_use.remove(&slot);
            return Err(ioctl("KVM_SET_USER_MEMORY_REGION")(e));
        }
        Ok(slot)
    }

    /// Removes a slot [`Vm::map_memory`] made: its guest range has no memory behind it any more
    /// (accesses exit as MMIO) and its number may be handed out again.
    pub fn unmap_memory(&self, slot: u32) -> Result<()> {
        let mut slots = self.slot_numbers();
        if !slots.in_use.contains(&slot) {
            return Err(HypervisorError::NoSuchSlot(slot));
        }
        // A size of zero deletes the slot; KVM ignores the other fields then.
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: deleting a slot maps nothing; the host memory it pointed to is no longer
        // reachable by the guest afterwards.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION (delete)"))?;
        slots.in_use.remove(&slot);
        Ok(())
    }

    /// Sets the level of an interrupt line on the in-kernel PIC and IOAPIC.
    pub fn set_irq_line(&self, irq: u32, active: bool) -> Result<()> {
        self.fd.set_irq_line(irq, active).map_err(ioctl("KVM_IRQ_LINE"))
    }

    /// Makes a write to `event` inject an edge on `gsi`.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(event, gsi).map_err(ioctl("KVM_IRQFD"))
    }

    /// Makes a guest write to `address` signal `event` without leaving the kernel.
    pub fn register_ioevent(&self, event: &EventFd, address: IoEventAddress) -> Result<()> {
        let address = match address {
            IoEventAddress::Pio(a) => KvmIoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => KvmIoEventAddress::Mmio(a),
        };
        self.fd
            .register_ioevent(event, &address, kvm_ioctls::NoDatamatch)
            .map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Stops `event` from injecting on `gsi`.
    pub fn unregister_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(event, gsi)
            .map_err(ioctl("KVM_IRQFD (deassign)"))
    }

    /// Stops guest writes to `address` from signalling `event`.
    pub fn unregister_ioevent(&self, event: &EventFd, address: IoEventAddress) -> Result<()> {
        let address = match address {
            IoEventAddress::Pio(a) => KvmIoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => KvmIoEventAddress::Mmio(a),
        };
        self.fd
            .unregister_ioevent(event, &address, kvm_ioctls::NoDatamatch)
            .map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }

    /// Replaces the whole GSI routing table with `routes`. Include
    /// [`GsiRoute::default_irqchip_routes`] to keep the PIC and I/O APIC lines working.
    pub fn set_gsi_routing(&self, routes: &[GsiRoute]) -> Result<()> {
        let entries: Vec<_> = routes.iter().map(|r| r.to_kvm()).collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| HypervisorError::MissingCapability("room for this many GSI routes"))?;
        self.fd
            .set_gsi_routing(&routing)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))
    }

    /// Makes guest writes of `len` bytes within `port..port + len` go to a ring instead of
    /// exiting (see `coalesced`); each vCPU created afterwards replays them into the sink given
    /// to [`Vcpu::set_coalesced_sink`] before it reports its next exit. Only for writes whose
    /// effect no one observes before the next exit. `Ok(false)`: this KVM cannot
    /// (`KVM_CAP_COALESCED_PIO`), and the writes exit as before. Call before creating vCPUs.
    pub fn coalesce_port_writes(&self, port: u16, len: u32) -> Result<bool> {
        if !self.fd.check_extension(Cap::CoalescedPio) {
            return Ok(false);
        }
        self.fd
            .register_coalesced_mmio(KvmIoEventAddress::Pio(u64::from(port)), len)
            .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO"))?;
        self.coalescing.get_or_init(Default::default);
        Ok(true)
    }

    /// Creates vCPU `id` (its initial APIC ID).
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(id).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let ring = match self.coalescing.get() {
            Some(lock) => Some(crate::coalesced::CoalescedRing::map(&fd, lock.clone()).map_err(
                |source| HypervisorError::Ioctl {
                    op: "mmap of the vCPU's coalesced-write ring",
                    source,
                },
            )?),
            None => None,
        };
        Ok(Vcpu::new(fd, self.msrs.clone(), ring))
    }
}

#[cfg(test)]
mod tests {
    use super::SlotNumbers;

    #[test]
    fn slot_numbers_are_the_lowest_free_and_stop_at_the_limit() {
        let mut slots = SlotNumbers::default();
        assert_eq!(slots.take(3), Some(0));
        assert_eq!(slots.take(3), Some(1));
        assert_eq!(slots.take(3), Some(2));
        assert_eq!(slots.take(3), None, "KVM's limit");
        slots.in_use.remove(&1);
        assert_eq!(slots.take(3), Some(1), "a removed slot's number comes back");
    }
}
