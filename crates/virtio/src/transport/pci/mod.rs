//! The virtio-pci transport, virtio 1.x ("modern") only: a PCI function with one 32-bit memory
//! BAR holding the common configuration, ISR, device configuration, notification area and MSI-X
//! table, described by vendor-specific capabilities (plus the PCI configuration access
//! capability, which firmware may use instead of the BAR).
//!
//! Queue notifications are ioeventfds at the notification addresses, registered wherever the BAR
//! is mapped, so a driver's kick wakes the device's worker without a vCPU exit reaching us. The
//! transport never names a device type: the PCI device ID is 0x1040 plus the virtio device ID,
//! and the class code comes from whoever builds the device.

mod attach;
mod common_config;
mod interrupt;
pub mod layout;
mod managed;
mod persist;
#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtkit_machine::interrupt::{LevelIrq, MsiVectors};
use virtkit_machine::ioevent::{IoEventAddress, IoEvents};
use virtkit_machine::pci::msix::{self, Msix};
use virtkit_machine::pci::{
    BarKind, BarRegion, PciConfigError, PciConfiguration, PciDevice, PciHeader, COMMAND_INTX_DISABLE,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use attach::{attach, AttachError, AttachedDevice};
pub use common_config::{CommonConfig, CommonConfigEvent, CommonConfigState, QueueRegisters, NO_VECTOR};
pub use interrupt::{PciInterrupt, ISR_CONFIG, ISR_QUEUE};
use layout::*;
pub use managed::{ManagedDevice, SharedManagedDevice};
pub use persist::{QueueProgress, VirtioPciState};

use crate::features::RING_EVENT_IDX;
use crate::{warn_ratelimited, DeviceQueue, VirtioDevice};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device ID.
pub const VIRTIO_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of modern virtio devices (what QEMU uses).
const VIRTIO_SUBSYSTEM_ID: u16 = 0x1100;

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("the device has {0} queues; the virtio-pci layout has room for {MAX_QUEUES}")]
    TooManyQueues(usize),
    #[error("the device needs {needed} MSI-X vectors (one per queue and one for configuration changes), got {got}")]
    VectorCount { needed: u16, got: u16 },
    #[error("cannot lay out the PCI configuration space")]
    Config(#[from] PciConfigError),
    #[error("cannot create a queue notification eventfd")]
    EventFd(#[source] std::io::Error),
}

/// What the builder knows about the device that PCI needs: its class code and INTx wiring.
#[derive(Clone)]
pub struct VirtioPciOptions {
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    /// The INTx line (INTA#) and the interrupt line number firmware would report.
    pub intx: Option<(Arc<dyn LevelIrq>, u8)>,
}

/// A virtio device on PCI.
pub struct VirtioPciDevice<D: VirtioDevice> {
    device: D,
    config: PciConfiguration,
    common: CommonConfig,
    msix: Msix,
    msix_cap: usize,
    pci_cfg_cap: usize,
    interrupt: Arc<PciInterrupt>,
    queue_events: Vec<EventFd>,
    ioevents: Arc<dyn IoEvents>,
    memory: GuestMemoryMmap,
    /// Where the notification ioeventfds are registered (the BAR's address).
    notify_bar: Option<u64>,
    active: bool,
    /// While the device manager has the device asleep: the queues its worker handed back.
    slept: Option<Option<Vec<DeviceQueue>>>,
    /// Between the two steps of a restore (`persist`).
    pending_restore: Option<persist::PendingRestore>,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPciDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device", &self.device.name())
            .field("status", &self.common.status)
            .field("active", &self.active)
            .finish()
    }
}

fn overlaps(offset: usize, len: usize, start: usize, size: usize) -> bool {
    offset < start + size && start < offset + len
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// MSI-X vectors a device needs: one per queue and one for configuration changes.
    pub fn vectors_needed(device: &D) -> u16 {
        device.queue_max_sizes().len().min(MAX_QUEUES) as u16 + 1
    }

    pub fn new(
        device: D,
        memory: GuestMemoryMmap,
        vectors: Arc<dyn MsiVectors>,
        ioevents: Arc<dyn IoEvents>,
        options: VirtioPciOptions,
    ) -> Result<VirtioPciDevice<D>, VirtioPciError> {
        let queue_count = device.queue_max_sizes().len();
        if queue_count > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues(queue_count));
        }
        let needed = Self::vectors_needed(&device);
        if vectors.count() < needed {
            return Err(VirtioPciError::VectorCount {
                needed,
                got: vectors.count(),
            });
        }
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VIRTIO_VENDOR_ID,
            // Virtio device IDs are small; a bogus one just makes a device no driver binds.
            device_id: VIRTIO_DEVICE_ID_BASE.wrapping_add(device.device_type() as u16),
            revision_id: 1,
            class: options.class,
            subclass: options.subclass,
            prog_if: options.prog_if,
            subsystem_vendor_id: VIRTIO_VENDOR_ID,
            subsystem_id: VIRTIO_SUBSYSTEM_ID,
        });
        config.add_bar(usize::from(BAR_INDEX), BAR_SIZE, BarKind::Memory32, false)?;
        let msix = Msix::new(vectors);
        let (body, writable) = msix.capability(
            BAR_INDEX,
            MSIX_TABLE_OFFSET as u32,
            BAR_INDEX,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability(msix::CAPABILITY_ID, &body, &writable)?;
        let notify_len = NOTIFY_OFF_MULTIPLIER * (queue_count.max(1) as u32);
        for (cfg_type, offset, length, extra) in [
            (CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_SIZE as u32, &[][..]),
            (CAP_ISR_CFG, ISR_OFFSET, ISR_SIZE as u32, &[][..]),
            (CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE as u32, &[][..]),
            (
                CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes()[..],
            ),
        ] {
            let body = capability_body(cfg_type, offset as u32, length, extra);
            config.add_capability(VENDOR_CAPABILITY, &body, &[])?;
        }
        let body = capability_body(CAP_PCI_CFG, 0, 0, &[0; 4]);
        let pci_cfg_cap = config.add_capability(VENDOR_CAPABILITY, &body, &pci_cfg::WRITABLE)?;
        let (intx, line) = match options.intx {
            Some((irq, line)) => (Some(irq), line),
            None => (None, 0),
        };
        config.set_interrupt(if intx.is_some() { 1 } else { 0 }, line);

        let queue_events = (0..queue_count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let interrupt = Arc::new(PciInterrupt::new(msix.shared(), intx, queue_count));
        let common = CommonConfig::new(device.features(), device.queue_max_sizes(), needed);
        Ok(VirtioPciDevice {
            device,
            config,
            common,
            msix,
            msix_cap,
            pci_cfg_cap,
            interrupt,
            queue_events,
            ioevents,
            memory,
            notify_bar: None,
            active: false,
            slept: None,
            pending_restore: None,
        })
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u8 {
        let needs_reset = self
            .interrupt
            .needs_reset
            .load(std::sync::atomic::Ordering::Acquire);
        self.common.status
            | if needs_reset {
                crate::status::DEVICE_NEEDS_RESET
            } else {
                0
            }
    }

    /// Whether the device was activated (DRIVER_OK) and not reset since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let mut common = self.common.clone();
        common.status = self.status();
        common.config_generation = self
            .interrupt
            .config_generation
            .load(std::sync::atomic::Ordering::Acquire);
        common.read(offset, data);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            CommonConfigEvent::None => {}
            CommonConfigEvent::VectorsChanged => self.interrupt.set_vectors(
                self.common.config_msix_vector,
                self.common.queues.iter().map(|q| q.msix_vector),
            ),
            CommonConfigEvent::Reset => self.reset_device(),
            CommonConfigEvent::DriverOk => self.activate(),
        }
    }

    fn build_queues(&self) -> Result<Vec<DeviceQueue>, String> {
        let event_idx = self.common.driver_features & RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, regs) in self.common.queues.iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let mut queue = Queue::new(regs.max_size).map_err(|e| format!("queue {index}: {e}"))?;
            queue
                .try_set_size(regs.size)
                .map_err(|e| format!("queue {index} size: {e}"))?;
            queue
                .try_set_desc_table_address(GuestAddress(regs.desc))
                .map_err(|e| format!("queue {index} descriptor table: {e}"))?;
            queue
                .try_set_avail_ring_address(GuestAddress(regs.driver))
                .map_err(|e| format!("queue {index} available ring: {e}"))?;
            queue
                .try_set_used_ring_address(GuestAddress(regs.device))
                .map_err(|e| format!("queue {index} used ring: {e}"))?;
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            if !queue.is_valid(&self.memory) {
                return Err(format!("queue {index} rings are not in guest memory"));
            }
            let event = self.queue_events[index]
                .try_clone()
                .map_err(|e| format!("queue {index} eventfd: {e}"))?;
            queues.push(DeviceQueue {
                index: index as u16,
                queue,
                event,
            });
        }
        Ok(queues)
    }

    fn activate(&mut self) {
        if self.active {
            return;
        }
        self.interrupt.set_vectors(
            self.common.config_msix_vector,
            self.common.queues.iter().map(|q| q.msix_vector),
        );
        let result = self.build_queues().and_then(|queues| {
            self.device
                .activate(
                    self.memory.clone(),
                    self.interrupt.clone(),
                    queues,
                    self.common.driver_features,
                )
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => self.active = true,
            Err(e) => {
                warn_ratelimited!(device = self.device.name(), "virtio-pci: activation failed: {e}");
                crate::VirtioInterrupt::signal_needs_reset(&*self.interrupt);
            }
        }
    }

    fn reset_device(&mut self) {
        // The queues come back; the transport's registers were reset already.
        self.slept = None;
        self.pending_restore = None;
        drop(self.device.reset());
        self.active = false;
        self.interrupt.reset();
        for event in &self.queue_events {
            // Drop notifications the stopped worker never saw.
            let _ = event.read();
        }
    }

    fn notify_address(base: u64, queue: usize) -> IoEventAddress {
        IoEventAddress::Mmio(base + NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * queue as u64)
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|end| end <= start + size)
        };
        if within(COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.read_common(offset - COMMON_CFG_OFFSET, data);
        } else if within(ISR_OFFSET, ISR_SIZE) {
            if offset == ISR_OFFSET {
                data[0] = self.interrupt.read_isr();
            }
        } else if within(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, msix::table_size(self.msix.vector_count())) {
            self.msix.read_table(offset - MSIX_TABLE_OFFSET, data);
        } else if within(MSIX_PBA_OFFSET, msix::pba_size(self.msix.vector_count())) {
            self.msix.read_pba(offset - MSIX_PBA_OFFSET, data);
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|end| end <= start + size)
        };
        let notify_size = u64::from(NOTIFY_OFF_MULTIPLIER) * self.queue_events.len() as u64;
        if within(COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.write_common(offset - COMMON_CFG_OFFSET, data);
        } else if within(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(NOTIFY_OFFSET, notify_size) {
            // Reached only when no ioeventfd caught the write (none registered, or the driver
            // went through the PCI configuration access capability): kick the worker ourselves.
            let queue = ((offset - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
            if let Err(e) = self.queue_events[queue].write(1) {
                warn_ratelimited!("virtio-pci: cannot signal queue {queue}: {e}");
            }
        } else if within(MSIX_TABLE_OFFSET, msix::table_size(self.msix.vector_count())) {
            self.msix.write_table(offset - MSIX_TABLE_OFFSET, data);
        } else {
            tracing::trace!(offset, len, "virtio-pci: write to nothing in the BAR");
        }
    }

    /// The PCI configuration access capability: the BAR access its fields describe, if valid.
    fn pci_cfg_access(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.bytes(cap + pci_cfg::BAR, 1)[0];
        let mut b = [0u8; 4];
        b.copy_from_slice(self.config.bytes(cap + pci_cfg::OFFSET, 4));
        let offset = u64::from(u32::from_le_bytes(b));
        b.copy_from_slice(self.config.bytes(cap + pci_cfg::LENGTH, 4));
        let length = u32::from_le_bytes(b) as usize;
        let valid = bar == BAR_INDEX
            && matches!(length, 1 | 2 | 4)
            && offset.is_multiple_of(length as u64)
            && offset + length as u64 <= BAR_SIZE;
        valid.then_some((offset, length))
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPciDevice<D> {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }

    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + pci_cfg::DATA;
        if overlaps(offset, data.len(), window, 4) {
            if let Some((bar_offset, length)) = self.pci_cfg_access() {
                let mut value = [0u8; 4];
                self.bar_read(bar_offset, &mut value[..length]);
                self.config.set_bytes(window, &value);
            }
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_cap + 2;
        if overlaps(offset, data.len(), control, 2) {
            let bytes = self.config.bytes(control, 2);
            self.msix
                .set_message_control(u16::from_le_bytes([bytes[0], bytes[1]]));
        }
        if overlaps(offset, data.len(), virtkit_machine::pci::header::COMMAND, 2) {
            self.interrupt
                .set_intx_disabled(self.config.command() & COMMAND_INTX_DISABLE != 0);
        }
        let window = self.pci_cfg_cap + pci_cfg::DATA;
        if overlaps(offset, data.len(), window, 4) {
            if let Some((bar_offset, length)) = self.pci_cfg_access() {
                let value = self.config.bytes(window, length).to_vec();
                self.bar_write(bar_offset, &value);
            }
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == BAR_INDEX {
            self.bar_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == BAR_INDEX {
            self.bar_write(offset, data);
        }
    }

    fn bar_moved(&mut self, bar: &BarRegion, _old: Option<u64>, new: Option<u64>) {
        if bar.index != BAR_INDEX {
            return;
        }
        if let Some(base) = self.notify_bar.take() {
            for (queue, event) in self.queue_events.iter().enumerate() {
                if let Err(e) = self.ioevents.unregister(event, Self::notify_address(base, queue)) {
                    tracing::warn!("virtio-pci: {e}");
                }
            }
        }
        let Some(base) = new else { return };
        let mut registered = true;
        for (queue, event) in self.queue_events.iter().enumerate() {
            if let Err(e) = self.ioevents.register(event, Self::notify_address(base, queue)) {
                // Notifications still work, through a vCPU exit and `bar_write`.
                tracing::warn!("virtio-pci: {e}");
                registered = false;
            }
        }
        if registered {
            self.notify_bar = Some(base);
        } else {
            for (queue, event) in self.queue_events.iter().enumerate() {
                let _ = self.ioevents.unregister(event, Self::notify_address(base, queue));
            }
        }
    }
}

impl<D: VirtioDevice> Drop for VirtioPciDevice<D> {
    fn drop(&mut self) {
        drop(self.device.reset());
        if let Some(base) = self.notify_bar.take() {
            for (queue, event) in self.queue_events.iter().enumerate() {
                let _ = self.ioevents.unregister(event, Self::notify_address(base, queue));
            }
        }
    }
}
