//! How a virtio-pci device interrupts the driver: through the MSI-X vector the driver chose for
//! the queue (or for configuration changes) when MSI-X is on, otherwise through the INTx line
//! and the ISR status register, which the driver reads to learn why and to lower the line.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtkit_machine::interrupt::LevelIrq;
use virtkit_machine::pci::msix::MsixShared;

use super::common_config::NO_VECTOR;
use crate::{warn_ratelimited, VirtioInterrupt};

/// ISR bit: a used ring changed.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// The transport's interrupt state, shared with the device's worker.
pub struct PciInterrupt {
    msix: Arc<MsixShared>,
    intx: Option<Arc<dyn LevelIrq>>,
    /// The ISR; the line is changed with this lock held so the two always agree.
    isr: Mutex<u8>,
    intx_disabled: AtomicBool,
    config_vector: AtomicU16,
    queue_vectors: Box<[AtomicU16]>,
    pub(super) config_generation: AtomicU8,
    pub(super) needs_reset: AtomicBool,
}

impl std::fmt::Debug for PciInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciInterrupt").field("msix", &self.msix).finish()
    }
}

impl PciInterrupt {
    pub fn new(msix: Arc<MsixShared>, intx: Option<Arc<dyn LevelIrq>>, queues: usize) -> PciInterrupt {
        PciInterrupt {
            msix,
            intx,
            isr: Mutex::new(0),
            intx_disabled: AtomicBool::new(false),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_generation: AtomicU8::new(0),
            needs_reset: AtomicBool::new(false),
        }
    }

    fn lock_isr(&self) -> std::sync::MutexGuard<'_, u8> {
        self.isr.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_line(&self, asserted: bool) {
        if let Some(line) = &self.intx {
            if let Err(e) = line.set_level(asserted && !self.intx_disabled.load(Ordering::Acquire)) {
                warn_ratelimited!("virtio-pci: cannot drive INTx: {e}");
            }
        }
    }

    fn raise(&self, vector: u16, isr_bit: u8) {
        if self.msix.enabled() {
            // With MSI-X on, a source without a vector does not interrupt at all.
            if vector != NO_VECTOR {
                if let Err(e) = self.msix.trigger(vector) {
                    warn_ratelimited!("virtio-pci: cannot send MSI-X vector {vector}: {e}");
                }
            }
            return;
        }
        let mut isr = self.lock_isr();
        *isr |= isr_bit;
        self.set_line(true);
    }

    /// Reads and clears the ISR, lowering INTx (a read of the ISR register).
    pub fn read_isr(&self) -> u8 {
        let mut isr = self.lock_isr();
        let value = std::mem::take(&mut *isr);
        self.set_line(false);
        value
    }

    /// Whether INTx is asserted now (the ISR is non-zero).
    pub fn isr_pending(&self) -> bool {
        *self.lock_isr() != 0
    }

    /// Follows the command register's INTx disable bit.
    pub fn set_intx_disabled(&self, disabled: bool) {
        let isr = self.lock_isr();
        self.intx_disabled.store(disabled, Ordering::Release);
        self.set_line(*isr != 0);
    }

    /// Takes the vector registers the driver wrote.
    pub fn set_vectors(&self, config: u16, queues: impl Iterator<Item = u16>) {
        self.config_vector.store(config, Ordering::Release);
        for (slot, vector) in self.queue_vectors.iter().zip(queues) {
            slot.store(vector, Ordering::Release);
        }
    }

    /// The ISR as it is, without the read's side effect (for a save).
    pub fn isr(&self) -> u8 {
        *self.lock_isr()
    }

    /// Puts back a saved ISR, DEVICE_NEEDS_RESET and configuration generation. The INTx line
    /// follows the ISR at the next [`PciInterrupt::set_intx_disabled`].
    pub fn restore(&self, isr: u8, needs_reset: bool, config_generation: u8) {
        *self.lock_isr() = isr & (ISR_QUEUE | ISR_CONFIG);
        self.needs_reset.store(needs_reset, Ordering::Release);
        self.config_generation.store(config_generation, Ordering::Release);
    }

    /// Device reset: no interrupt pending, the line low, no vectors.
    pub fn reset(&self) {
        let mut isr = self.lock_isr();
        *isr = 0;
        self.set_line(false);
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.needs_reset.store(false, Ordering::Release);
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_used_queue(&self, queue: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.raise(vector, ISR_QUEUE);
    }

    fn signal_config_changed(&self) {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }

    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.raise(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }

    fn queue_irqfd(&self, queue: u16) -> Option<&vmm_sys_util::eventfd::EventFd> {
        if !self.msix.enabled() {
            return None;
        }
        let vector = self
            .queue_vectors
            .get(usize::from(queue))?
            .load(Ordering::Acquire);
        if vector == NO_VECTOR {
            return None;
        }
        self.msix.irqfd(vector)
    }
}
