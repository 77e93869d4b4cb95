//! The common configuration structure (virtio 1.x, 4.1.4.3): feature negotiation, device status
//! and the selected queue's registers. Pure register logic; what a status change means (activate,
//! reset) is the transport's.

use serde::{Deserialize, Serialize};

use crate::features::VERSION_1;
use crate::status;

/// Register offsets in the structure.
pub mod offsets {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const END: u64 = 0x38;
}

use offsets::*;

/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// One queue's registers as the driver set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegisters {
    pub max_size: u16,
    pub size: u16,
    pub msix_vector: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueRegisters {
    fn new(max_size: u16) -> QueueRegisters {
        QueueRegisters {
            max_size,
            size: max_size,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What a write to the structure asks the transport to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonConfigEvent {
    None,
    /// The driver wrote 0 to device_status.
    Reset,
    /// The driver set DRIVER_OK (with FEATURES_OK accepted).
    DriverOk,
    /// A vector register changed.
    VectorsChanged,
}

/// The common configuration registers.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub driver_features: u64,
    pub config_msix_vector: u16,
    pub status: u8,
    pub config_generation: u8,
    queue_select: u16,
    pub queues: Vec<QueueRegisters>,
    /// MSI-X vectors the function has; vector registers above it read back NO_VECTOR.
    msix_vectors: u16,
}

/// The registers the driver wrote, as a state file keeps them (what the device offers and how
/// many vectors it has come from the device, not the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommonConfigState {
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub config_msix_vector: u16,
    pub status: u8,
    pub queue_select: u16,
    pub queues: Vec<QueueRegisters>,
}

impl CommonConfig {
    /// The registers to save.
    pub fn state(&self) -> CommonConfigState {
        CommonConfigState {
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            config_msix_vector: self.config_msix_vector,
            status: self.status,
            queue_select: self.queue_select,
            queues: self.queues.clone(),
        }
    }

    /// Takes saved registers, refused (changing nothing) unless they fit this device: the same
    /// queues with the same maximum sizes, sizes within them, features it offers, vectors it
    /// has.
    pub fn restore_state(&mut self, state: &CommonConfigState) -> Result<(), &'static str> {
        if state.queues.len() != self.queues.len()
            || state
                .queues
                .iter()
                .zip(&self.queues)
                .any(|(saved, here)| saved.max_size != here.max_size)
        {
            return Err("the device's queues changed");
        }
        if state.queues.iter().any(|q| q.size == 0 || q.size > q.max_size) {
            return Err("a queue size is outside what the device allows");
        }
        if state.driver_features & !self.device_features != 0 {
            return Err("the driver accepted features this device does not offer");
        }
        let vector_ok = |v: u16| v == NO_VECTOR || v < self.msix_vectors;
        if !vector_ok(state.config_msix_vector) || !state.queues.iter().all(|q| vector_ok(q.msix_vector)) {
            return Err("an MSI-X vector this device does not have");
        }
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.driver_features = state.driver_features;
        self.config_msix_vector = state.config_msix_vector;
        self.status = state.status & !status::DEVICE_NEEDS_RESET;
        self.queue_select = state.queue_select;
        self.queues = state.queues.clone();
        Ok(())
    }

    pub fn new(device_features: u64, queue_max_sizes: &[u16], msix_vectors: u16) -> CommonConfig {
        CommonConfig {
            device_features: device_features | VERSION_1,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegisters::new(m)).collect(),
            msix_vectors,
        }
    }

    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Back to the state after power-on (device reset); queue sizes back to their maximum.
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = CommonConfig::new(self.device_features, &sizes, self.msix_vectors);
    }

    fn selected(&self) -> Option<&QueueRegisters> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn image(&self) -> [u8; END as usize] {
        let mut b = [0u8; END as usize];
        let put = |b: &mut [u8], offset: u64, bytes: &[u8]| {
            b[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(
            &mut b,
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        let features = match self.device_feature_select {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, DEVICE_FEATURE, &features.to_le_bytes());
        put(
            &mut b,
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        let driver = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, DRIVER_FEATURE, &driver.to_le_bytes());
        put(&mut b, CONFIG_MSIX_VECTOR, &self.config_msix_vector.to_le_bytes());
        put(&mut b, NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        b[DEVICE_STATUS as usize] = self.status;
        b[CONFIG_GENERATION as usize] = self.config_generation;
        put(&mut b, QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.selected() {
            put(&mut b, QUEUE_SIZE, &q.size.to_le_bytes());
            put(&mut b, QUEUE_MSIX_VECTOR, &q.msix_vector.to_le_bytes());
            put(&mut b, QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
            put(&mut b, QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(&mut b, QUEUE_DESC, &q.desc.to_le_bytes());
            put(&mut b, QUEUE_DRIVER, &q.driver.to_le_bytes());
            put(&mut b, QUEUE_DEVICE, &q.device.to_le_bytes());
        }
        b
    }

    /// Reads registers; bytes past the structure read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let image = self.image();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|at| image.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// Writes registers of any width: the bytes are merged into the current image, then every
    /// register they touched takes its new value.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonConfigEvent {
        let mut image = self.image();
        let end = offset.saturating_add(data.len() as u64).min(END);
        if offset >= end {
            return CommonConfigEvent::None;
        }
        image[offset as usize..end as usize].copy_from_slice(&data[..(end - offset) as usize]);
        let touched = |reg: u64, len: u64| offset < reg + len && reg < end;
        let u16_at = |reg: u64| u16::from_le_bytes([image[reg as usize], image[reg as usize + 1]]);
        let u32_at = |reg: u64| {
            let mut b = [0; 4];
            b.copy_from_slice(&image[reg as usize..reg as usize + 4]);
            u32::from_le_bytes(b)
        };
        let u64_at = |reg: u64| u64::from(u32_at(reg)) | u64::from(u32_at(reg + 4)) << 32;

        let mut event = CommonConfigEvent::None;
        if touched(DEVICE_FEATURE_SELECT, 4) {
            self.device_feature_select = u32_at(DEVICE_FEATURE_SELECT);
        }
        if touched(DRIVER_FEATURE_SELECT, 4) {
            self.driver_feature_select = u32_at(DRIVER_FEATURE_SELECT);
        }
        if touched(DRIVER_FEATURE, 4) && self.status & status::FEATURES_OK == 0 {
            let value = u64::from(u32_at(DRIVER_FEATURE));
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | value << 32,
                _ => {}
            }
        }
        if touched(CONFIG_MSIX_VECTOR, 2) {
            self.config_msix_vector = self.checked_vector(u16_at(CONFIG_MSIX_VECTOR));
            event = CommonConfigEvent::VectorsChanged;
        }
        if touched(QUEUE_SELECT, 2) {
            self.queue_select = u16_at(QUEUE_SELECT);
        }
        let vectors = self.msix_vectors;
        let driver_ok = self.status & status::DRIVER_OK != 0;
        if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
            // The spec forbids changing an enabled queue; such writes are ignored.
            if !q.enabled && !driver_ok {
                if touched(QUEUE_SIZE, 2) {
                    q.size = u16_at(QUEUE_SIZE);
                }
                if touched(QUEUE_DESC, 8) {
                    q.desc = u64_at(QUEUE_DESC);
                }
                if touched(QUEUE_DRIVER, 8) {
                    q.driver = u64_at(QUEUE_DRIVER);
                }
                if touched(QUEUE_DEVICE, 8) {
                    q.device = u64_at(QUEUE_DEVICE);
                }
                if touched(QUEUE_ENABLE, 2) && u16_at(QUEUE_ENABLE) == 1 {
                    q.enabled = true;
                }
            }
            if touched(QUEUE_MSIX_VECTOR, 2) {
                let v = u16_at(QUEUE_MSIX_VECTOR);
                q.msix_vector = if v < vectors { v } else { NO_VECTOR };
                event = CommonConfigEvent::VectorsChanged;
            }
        }
        if touched(DEVICE_STATUS, 1) {
            event = self.write_status(image[DEVICE_STATUS as usize]);
        }
        event
    }

    fn checked_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) -> CommonConfigEvent {
        if value == 0 {
            self.reset();
            return CommonConfigEvent::Reset;
        }
        let old = self.status;
        let mut new = value;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let acceptable =
                self.driver_features & !self.device_features == 0 && self.driver_features & VERSION_1 != 0;
            if !acceptable {
                // The driver reads FEATURES_OK back and gives up.
                new &= !status::FEATURES_OK;
            }
        }
        // Bits are only ever added until reset (DEVICE_NEEDS_RESET is the device's).
        new = (new | old) & !status::DEVICE_NEEDS_RESET | (old & status::DEVICE_NEEDS_RESET);
        self.status = new;
        let became_ok = new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0;
        if became_ok && new & status::FEATURES_OK != 0 {
            CommonConfigEvent::DriverOk
        } else {
            CommonConfigEvent::None
        }
    }
}
