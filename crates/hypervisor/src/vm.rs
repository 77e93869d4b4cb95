use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress as KvmIoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{ioctl, HypervisorError};
use crate::routing::GsiRoute;
use crate::vcpu::Vcpu;
use crate::Result;

/// Where a guest write signals an ioeventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    max_memslots: usize,
    next_slot: u32,
}

impl Vm {
    pub(crate) fn new(fd: VmFd, max_memslots: usize) -> Vm {
        Vm {
            fd,
            max_memslots,
            next_slot: 0,
        }
    }

    /// Sets up the x86 platform pieces KVM keeps in the kernel: the TSS and identity-map
    /// pages, the PIC/IOAPIC/LAPIC irqchip and the PIT.
    pub fn create_platform(&self, tss_address: u64, identity_map_address: u64) -> Result<()> {
        self.fd
            .set_identity_map_address(identity_map_address)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(tss_address as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        self.fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        // A dummy speaker port keeps port 0x61 in the kernel, as guests poll it in calibration.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// Maps `size` bytes of host memory at `host_address` into the guest at `guest_address`.
    ///
    /// # Safety
    ///
    /// `host_address..host_address + size` must be a mapping that stays valid, and is not
    /// unmapped or remapped, for as long as this VM exists.
    pub unsafe fn map_memory(
        &mut self,
        guest_address: u64,
        size: u64,
        host_address: u64,
        read_only: bool,
    ) -> Result<u32> {
        if self.next_slot as usize >= self.max_memslots {
            return Err(HypervisorError::MissingCapability(
                "enough memory slots for this memory layout",
            ));
        }
        let slot = self.next_slot;
        let region = kvm_userspace_memory_region {
            slot,
            flags: if read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: guest_address,
            memory_size: size,
            userspace_addr: host_address,
        };
        // SAFETY: the caller guarantees the host range stays mapped for the VM's lifetime; the
        // region is a fresh slot so it replaces no other mapping.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        self.next_slot += 1;
        Ok(slot)
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

    /// Creates vCPU `id` (its initial APIC ID).
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(id).map_err(ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd))
    }
}
