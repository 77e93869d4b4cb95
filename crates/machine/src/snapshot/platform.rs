//! The platform devices' state: COM1, ACPI PM, i8042, the CMOS, the configuration space of the
//! PCI host bridge (with its PAM registers) and the ISA bridge, and fw_cfg's selection on a
//! firmware boot.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::devices::fw_cfg::{FwCfg, FwCfgState};
use crate::devices::{AcpiPm, Cmos, CmosState, I8042State, PmState, SerialDevice, SerialState, I8042};
use crate::pci::{PciRoot, ISA_BRIDGE_SLOT, PAM_COUNT, PAM_START};

/// Slots of the platform's own PCI functions, whose configuration is saved.
const PLATFORM_PCI_SLOTS: [u8; 2] = [0, ISA_BRIDGE_SLOT];
/// Bytes of conventional configuration space.
const PCI_CONFIG_LEN: usize = 256;

/// One PCI function's configuration space as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunctionState {
    pub slot: u8,
    pub config: Vec<u8>,
}

/// Every platform device's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformState {
    pub serial: SerialState,
    pub pm: PmState,
    pub i8042: I8042State,
    pub cmos: CmosState,
    pub pci: Vec<PciFunctionState>,
    /// On a firmware boot only.
    pub fw_cfg: Option<FwCfgState>,
}

/// The platform devices a machine keeps handles on for saving.
#[derive(Clone)]
pub(crate) struct PlatformDevices {
    pub serial: Arc<Mutex<SerialDevice>>,
    pub pm: Arc<Mutex<AcpiPm>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub pci: Arc<Mutex<PciRoot>>,
    pub fw_cfg: Option<Arc<Mutex<FwCfg>>>,
}

// A poisoned device lock still holds consistent registers: nothing that can panic runs between
// two of their changes.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the platform's saved state does not fit this machine.
#[derive(Debug, thiserror::Error)]
pub enum PlatformStateError {
    #[error("the saved {0} state does not fit this machine's device; the state file is damaged")]
    Misfit(&'static str),
    #[error("the saved serial port state cannot be restored")]
    Serial(#[source] std::io::Error),
}

impl PlatformDevices {
    pub(crate) fn save(&self) -> PlatformState {
        let root = lock(&self.pci);
        let pci = PLATFORM_PCI_SLOTS
            .iter()
            .filter_map(|&slot| {
                let device = root.device(slot)?;
                let config = lock(&device).configuration().bytes(0, PCI_CONFIG_LEN).to_vec();
                Some(PciFunctionState { slot, config })
            })
            .collect();
        PlatformState {
            serial: lock(&self.serial).state(),
            pm: lock(&self.pm).state(),
            i8042: lock(&self.i8042).state(),
            cmos: lock(&self.cmos).state(),
            pci,
            fw_cfg: self.fw_cfg.as_ref().map(|f| lock(f).state()),
        }
    }

    /// Checks that `state` fits before any device changes, so a refusal changes nothing.
    pub(crate) fn check(&self, state: &PlatformState) -> Result<(), PlatformStateError> {
        if state.cmos.ram.len() != 128 {
            return Err(PlatformStateError::Misfit("CMOS"));
        }
        let slots: Vec<u8> = state.pci.iter().map(|f| f.slot).collect();
        if slots != PLATFORM_PCI_SLOTS || state.pci.iter().any(|f| f.config.len() != PCI_CONFIG_LEN) {
            return Err(PlatformStateError::Misfit("PCI host and ISA bridge"));
        }
        if state.fw_cfg.is_some() != self.fw_cfg.is_some() {
            return Err(PlatformStateError::Misfit("fw_cfg (firmware boot)"));
        }
        Ok(())
    }

    /// Puts `state` (checked with [`PlatformDevices::check`]) into the devices.
    pub(crate) fn restore(&self, state: &PlatformState) -> Result<(), PlatformStateError> {
        self.check(state)?;
        lock(&self.serial)
            .restore_state(&state.serial)
            .map_err(PlatformStateError::Serial)?;
        lock(&self.pm).restore_state(&state.pm);
        lock(&self.i8042).restore_state(&state.i8042);
        if !lock(&self.cmos).restore_state(&state.cmos) {
            return Err(PlatformStateError::Misfit("CMOS"));
        }
        if let (Some(device), Some(saved)) = (&self.fw_cfg, &state.fw_cfg) {
            lock(device).restore_state(saved);
        }
        let root = lock(&self.pci);
        for function in &state.pci {
            let Some(device) = root.device(function.slot) else {
                return Err(PlatformStateError::Misfit("PCI host and ISA bridge"));
            };
            let mut device = lock(&device);
            device.configuration_mut().set_bytes(0, &function.config);
            if function.slot == 0 {
                // Written as the firmware wrote them, so the shadow RAM follows the PAM bytes.
                device.write_config(PAM_START, &function.config[PAM_START..PAM_START + PAM_COUNT]);
            }
        }
        Ok(())
    }
}
