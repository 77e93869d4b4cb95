//! MSI-X: the capability, the vector table and the pending bit array, in a form any PCI device
//! can embed.
//!
//! The table lives here and is changed by vCPU threads (with the device locked). What the
//! interrupt path needs, whether MSI-X is on and which vectors are masked, is mirrored in
//! [`MsixShared`] with atomics, so a device's worker thread can interrupt the guest without
//! taking the device's lock. A masked vector's interrupt sets its pending bit and is delivered
//! when the vector is unmasked, as the spec asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::interrupt::{InterruptError, MsiMessage, MsiVectors};

/// MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X is enabled.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: every vector is masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Length of the capability body after the id and next pointer.
pub const CAPABILITY_BODY_LEN: usize = 10;

/// Table size in bytes for `count` vectors.
pub fn table_size(count: u16) -> u64 {
    u64::from(count) * ENTRY_SIZE
}

/// Pending bit array size in bytes for `count` vectors (whole qwords).
pub fn pba_size(count: u16) -> u64 {
    u64::from(count).div_ceil(64) * 8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Entry = Entry {
        address: 0,
        data: 0,
        control: VECTOR_MASKED,
    };

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Entry {
        let mut address = [0; 8];
        address.copy_from_slice(&b[0..8]);
        let mut data = [0; 4];
        data.copy_from_slice(&b[8..12]);
        let mut control = [0; 4];
        control.copy_from_slice(&b[12..16]);
        Entry {
            address: u64::from_le_bytes(address),
            data: u32::from_le_bytes(data),
            // Only the mask bit is defined; the rest is reserved and reads as zero.
            control: u32::from_le_bytes(control) & VECTOR_MASKED,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: self.address,
            data: self.data,
        }
    }
}

/// One table entry as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntryState {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

/// A device's MSI-X state as saved: message control, the table and the pending bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    pub enabled: bool,
    pub function_masked: bool,
    pub entries: Vec<MsixEntryState>,
    pub pending: Vec<bool>,
}

/// Why a saved MSI-X state does not fit a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the saved MSI-X state has {saved} vectors, this device {here}")]
pub struct MsixStateError {
    pub saved: usize,
    pub here: usize,
}

/// What the interrupt path reads without the device's lock.
pub struct MsixShared {
    enabled: AtomicBool,
    function_masked: AtomicBool,
    masked: Box<[AtomicBool]>,
    pending: Box<[AtomicBool]>,
    vectors: Arc<dyn MsiVectors>,
}

impl std::fmt::Debug for MsixShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixShared")
            .field("enabled", &self.enabled())
            .field("vectors", &self.masked.len())
            .finish()
    }
}

impl MsixShared {
    /// Whether the guest turned MSI-X on; when it has not, the device uses INTx.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn vector_count(&self) -> u16 {
        // Built from a u16 count.
        self.masked.len() as u16
    }

    fn is_masked(&self, vector: usize) -> bool {
        self.function_masked.load(Ordering::Acquire) || self.masked[vector].load(Ordering::Acquire)
    }

    /// Sends `vector`, or marks it pending while it is masked.
    pub fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        let index = usize::from(vector);
        if index >= self.masked.len() {
            return Err(InterruptError::NoSuchVector {
                vector,
                count: self.vector_count(),
            });
        }
        if self.is_masked(index) {
            self.pending[index].store(true, Ordering::Release);
            // Unmasked meanwhile: the unmask may have missed our pending bit, so deliver it.
            if self.is_masked(index) || !self.pending[index].swap(false, Ordering::AcqRel) {
                return Ok(());
            }
        }
        self.vectors.trigger(vector)
    }

    /// `vector`'s irqfd, for a backend that interrupts the guest without us. Its signals
    /// bypass the mask bits (KVM's irqfd knows nothing of them): a masked vector may still
    /// interrupt, which virtio drivers tolerate (they check the used ring).
    pub fn irqfd(&self, vector: u16) -> Option<&vmm_sys_util::eventfd::EventFd> {
        self.vectors.irqfd(vector)
    }

    /// Whether `vector` is waiting for its mask to clear.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .is_some_and(|p| p.load(Ordering::Acquire))
    }

    /// Delivers `vector` if it is pending and no longer masked.
    fn deliver_pending(&self, vector: usize) -> Result<(), InterruptError> {
        if !self.is_masked(vector) && self.pending[vector].swap(false, Ordering::AcqRel) {
            // In range: `vector` indexes `pending`.
            return self.vectors.trigger(vector as u16);
        }
        Ok(())
    }
}

/// A device's MSI-X table and control state.
#[derive(Debug)]
pub struct Msix {
    entries: Vec<Entry>,
    shared: Arc<MsixShared>,
}

impl Msix {
    /// MSI-X with one table entry per vector in `vectors`, all masked, MSI-X off.
    pub fn new(vectors: Arc<dyn MsiVectors>) -> Msix {
        let count = usize::from(vectors.count());
        let flags = || (0..count).map(|_| AtomicBool::new(false)).collect::<Box<[_]>>();
        let shared = Arc::new(MsixShared {
            enabled: AtomicBool::new(false),
            function_masked: AtomicBool::new(false),
            masked: (0..count).map(|_| AtomicBool::new(true)).collect(),
            pending: flags(),
            vectors,
        });
        Msix {
            entries: vec![Entry::RESET; count],
            shared,
        }
    }

    pub fn shared(&self) -> Arc<MsixShared> {
        self.shared.clone()
    }

    pub fn vector_count(&self) -> u16 {
        self.shared.vector_count()
    }

    /// The capability body to pass to `PciConfiguration::add_capability`, and its write mask
    /// (only the enable and function-mask bits of message control are writable).
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> ([u8; 10], [u8; 2]) {
        let mut body = [0; CAPABILITY_BODY_LEN];
        let table_size_field = self.vector_count().saturating_sub(1) & 0x7ff;
        body[0..2].copy_from_slice(&table_size_field.to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar & 7)).to_le_bytes());
        let writable = (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes();
        (body, writable)
    }

    /// Takes the new message control value after a configuration write to it.
    pub fn set_message_control(&mut self, control: u16) {
        let enable = control & CONTROL_ENABLE != 0;
        let function_mask = control & CONTROL_FUNCTION_MASK != 0;
        let was_enabled = self.shared.enabled.swap(enable, Ordering::AcqRel);
        self.shared
            .function_masked
            .store(function_mask, Ordering::Release);
        if enable && !was_enabled {
            for vector in 0..self.entries.len() {
                self.update_route(vector);
            }
        }
        if enable && !function_mask {
            for vector in 0..self.entries.len() {
                self.log_error(self.shared.deliver_pending(vector));
            }
        }
    }

    fn log_error(&self, result: Result<(), InterruptError>) {
        if let Err(e) = result {
            crate::warn_ratelimited!("MSI-X: {e}");
        }
    }

    fn update_route(&self, vector: usize) {
        let entry = self.entries[vector];
        if entry.control & VECTOR_MASKED == 0 {
            // In range: `vector` indexes `entries`, built from a u16 count.
            self.log_error(
                self.shared
                    .vectors
                    .set_route(vector as u16, Some(entry.message())),
            );
        }
    }

    /// Reads the table; bytes beyond it read as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = self
                .entries
                .get((at / ENTRY_SIZE) as usize)
                .map(|e| e.to_bytes()[(at % ENTRY_SIZE) as usize])
                .unwrap_or(0);
        }
    }

    /// Writes the table (the driver uses dword or qword accesses; any size works).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let first = offset / ENTRY_SIZE;
        let last = (offset + data.len() as u64).saturating_sub(1) / ENTRY_SIZE;
        for index in first..=last {
            let Some(old) = self.entries.get(index as usize).copied() else {
                tracing::trace!(offset, "MSI-X table write beyond the table");
                return;
            };
            let mut bytes = old.to_bytes();
            let entry_start = index * ENTRY_SIZE;
            for (i, &value) in data.iter().enumerate() {
                let at = offset + i as u64;
                if (entry_start..entry_start + ENTRY_SIZE).contains(&at) {
                    bytes[(at - entry_start) as usize] = value;
                }
            }
            let new = Entry::from_bytes(bytes);
            let vector = index as usize;
            self.entries[vector] = new;
            let masked = new.control & VECTOR_MASKED != 0;
            self.shared.masked[vector].store(masked, Ordering::Release);
            let unmasked_now = !masked && old.control & VECTOR_MASKED != 0;
            if !masked && (unmasked_now || new.message() != old.message()) {
                self.update_route(vector);
            }
            if unmasked_now {
                self.log_error(self.shared.deliver_pending(vector));
            }
        }
    }

    /// Reads the pending bit array; writes to it are ignored (it is read-only).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let first_vector = (offset + i as u64) * 8;
            let mut value = 0u8;
            for bit in 0..8u64 {
                let vector = first_vector + bit;
                if vector < u64::from(self.vector_count()) && self.shared.is_pending(vector as u16) {
                    value |= 1 << bit;
                }
            }
            *byte = value;
        }
    }

    /// The state to save.
    pub fn state(&self) -> MsixState {
        MsixState {
            enabled: self.shared.enabled(),
            function_masked: self.shared.function_masked.load(Ordering::Acquire),
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    address: e.address,
                    data: e.data,
                    masked: e.control & VECTOR_MASKED != 0,
                })
                .collect(),
            pending: self
                .shared
                .pending
                .iter()
                .map(|p| p.load(Ordering::Acquire))
                .collect(),
        }
    }

    /// Takes a saved state (of as many vectors as this device has); the routes are left to
    /// [`Msix::restore_routes`], which talks to KVM, so a refusal here changes nothing outside.
    pub fn restore_state(&mut self, state: &MsixState) -> Result<(), MsixStateError> {
        let here = self.entries.len();
        if state.entries.len() != here || state.pending.len() != here {
            return Err(MsixStateError {
                saved: state.entries.len(),
                here,
            });
        }
        self.shared.enabled.store(state.enabled, Ordering::Release);
        self.shared
            .function_masked
            .store(state.function_masked, Ordering::Release);
        for (vector, saved) in state.entries.iter().enumerate() {
            self.entries[vector] = Entry {
                address: saved.address,
                data: saved.data,
                control: if saved.masked { VECTOR_MASKED } else { 0 },
            };
            self.shared.masked[vector].store(saved.masked, Ordering::Release);
            self.shared.pending[vector].store(state.pending[vector], Ordering::Release);
        }
        Ok(())
    }

    /// Sets the GSI route of every unmasked vector of a restored, enabled MSI-X (what the
    /// guest's writes had set before the save).
    pub fn restore_routes(&self) {
        if !self.shared.enabled() {
            return;
        }
        for vector in 0..self.entries.len() {
            self.update_route(vector);
        }
    }

    /// Back to the reset state: every vector masked, no message, nothing pending, MSI-X off.
    pub fn reset(&mut self) {
        self.shared.enabled.store(false, Ordering::Release);
        self.shared.function_masked.store(false, Ordering::Release);
        for (vector, entry) in self.entries.iter_mut().enumerate() {
            *entry = Entry::RESET;
            self.shared.masked[vector].store(true, Ordering::Release);
            self.shared.pending[vector].store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records routes and triggers instead of talking to KVM.
    #[derive(Default)]
    pub(crate) struct RecordingVectors {
        pub count: u16,
        pub routes: Mutex<Vec<(u16, Option<MsiMessage>)>>,
        pub triggered: Mutex<Vec<u16>>,
    }

    impl MsiVectors for RecordingVectors {
        fn count(&self) -> u16 {
            self.count
        }
        fn set_route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError> {
            self.routes.lock().unwrap().push((vector, message));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
            self.triggered.lock().unwrap().push(vector);
            Ok(())
        }
    }

    fn msix(count: u16) -> (Msix, Arc<RecordingVectors>) {
        let vectors = Arc::new(RecordingVectors {
            count,
            ..Default::default()
        });
        (Msix::new(vectors.clone()), vectors)
    }

    fn write_entry(m: &mut Msix, vector: u64, address: u64, data: u32, control: u32) {
        let base = vector * ENTRY_SIZE;
        m.write_table(base, &(address as u32).to_le_bytes());
        m.write_table(base + 4, &((address >> 32) as u32).to_le_bytes());
        m.write_table(base + 8, &data.to_le_bytes());
        m.write_table(base + 12, &control.to_le_bytes());
    }

    #[test]
    fn capability_reports_table_size_and_locations() {
        let (m, _) = msix(3);
        let (body, writable) = m.capability(0, 0x4000, 0, 0x6000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2);
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x6000);
        assert_eq!(writable, [0x00, 0xc0]);
        assert_eq!(table_size(3), 48);
        assert_eq!(pba_size(3), 8);
        assert_eq!(pba_size(65), 16);
    }

    #[test]
    fn table_writes_read_back_and_reserved_control_bits_read_zero() {
        let (mut m, _) = msix(2);
        write_entry(&mut m, 1, 0xfee0_0000, 0x4021, 0xffff_fffe);
        let mut b = [0; 16];
        m.read_table(16, &mut b);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0xfee0_0000);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 0x4021);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 0);
        let mut outside = [0xff; 4];
        m.read_table(32, &mut outside);
        assert_eq!(outside, [0; 4]);
        m.write_table(0x1000, &[1, 2, 3, 4]);
    }

    #[test]
    fn unmasking_routes_the_vector_and_triggers_reach_it() {
        let (mut m, v) = msix(2);
        m.set_message_control(CONTROL_ENABLE);
        write_entry(&mut m, 0, 0xfee0_0000, 0x30, 0);
        let shared = m.shared();
        assert!(shared.enabled());
        shared.trigger(0).unwrap();
        assert_eq!(*v.triggered.lock().unwrap(), vec![0]);
        assert_eq!(
            v.routes.lock().unwrap().last(),
            Some(&(
                0,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x30
                })
            ))
        );
        assert!(shared.trigger(2).is_err());
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        let (mut m, v) = msix(1);
        m.set_message_control(CONTROL_ENABLE);
        let shared = m.shared();
        shared.trigger(0).unwrap();
        assert!(v.triggered.lock().unwrap().is_empty());
        assert!(shared.is_pending(0));
        let mut pba = [0; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        write_entry(&mut m, 0, 0xfee0_0000, 0x31, 0);
        assert_eq!(*v.triggered.lock().unwrap(), vec![0]);
        assert!(!shared.is_pending(0));
    }

    #[test]
    fn a_saved_table_restores_into_a_new_device_with_its_routes() {
        let (mut m, _) = msix(3);
        m.set_message_control(CONTROL_ENABLE);
        write_entry(&mut m, 0, 0xfee0_0000, 0x30, 0);
        write_entry(&mut m, 2, 0xfee0_1000, 0x32, VECTOR_MASKED);
        m.shared().trigger(2).unwrap();
        let state = m.state();
        assert!(state.enabled && state.pending[2] && state.entries[2].masked);

        let (mut restored, v) = msix(3);
        restored.restore_state(&state).unwrap();
        assert!(
            v.routes.lock().unwrap().is_empty(),
            "routes wait for restore_routes"
        );
        restored.restore_routes();
        assert_eq!(
            *v.routes.lock().unwrap(),
            vec![(
                0,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x30
                })
            )],
            "only the unmasked vector is routed"
        );
        assert_eq!(restored.state(), state);
        // The pending vector is delivered once the guest unmasks it, as before the save.
        write_entry(&mut restored, 2, 0xfee0_1000, 0x32, 0);
        assert_eq!(*v.triggered.lock().unwrap(), vec![2]);

        let (mut smaller, _) = msix(2);
        let e = smaller.restore_state(&state).unwrap_err();
        assert_eq!(e, MsixStateError { saved: 3, here: 2 });
        assert_eq!(smaller.state(), msix(2).0.state(), "a refusal changes nothing");
    }

    #[test]
    fn function_mask_holds_every_vector_and_reset_clears_everything() {
        let (mut m, v) = msix(1);
        m.set_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        write_entry(&mut m, 0, 0xfee0_0000, 0x31, 0);
        m.shared().trigger(0).unwrap();
        assert!(v.triggered.lock().unwrap().is_empty());
        m.set_message_control(CONTROL_ENABLE);
        assert_eq!(*v.triggered.lock().unwrap(), vec![0]);
        m.reset();
        assert!(!m.shared().enabled());
        let mut b = [0; 4];
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), VECTOR_MASKED);
    }
}
