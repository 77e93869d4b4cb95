//! Displays: each `graphics_devices` entry as a bochs-display (`virtkit_devices::display`), as
//! Apple's `VZVirtioGraphicsDeviceConfiguration` with one scanout. On a firmware boot SeaBIOS
//! gets the display's VGA BIOS (Debian's `vgabios-bochs-display.bin`) through fw_cfg as
//! `pci1234,1111.rom`, which it runs for that device and which draws its text console into the
//! framebuffer; Linux drives it with `bochs-drm`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtkit_devices::display::{BochsDisplay, DisplayHandle, DEVICE_ID, MAX_SIZE, MIN_SIZE, VENDOR_ID};
use virtkit_machine::pci::RamBar;
use virtkit_machine::Machine;

use super::{DeviceError, DeviceManager};
use crate::validate::Issues;

/// Where Debian's `seabios` package puts the display's VGA BIOS.
pub const DISPLAY_OPTION_ROM: &str = "/usr/share/seabios/vgabios-bochs-display.bin";

/// A display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GraphicsDeviceConfiguration {
    /// The screen's width and height in pixels: the mode the display offers as preferred
    /// (EDID), which the firmware and the guest's driver take.
    pub width: u16,
    pub height: u16,
    /// The VGA BIOS SeaBIOS runs for it on a firmware boot (default: [`DISPLAY_OPTION_ROM`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_rom: Option<PathBuf>,
}

impl GraphicsDeviceConfiguration {
    /// Parses the CLI form `WIDTHxHEIGHT` (e.g. `1280x800`).
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a display size; write WIDTHxHEIGHT, e.g. 1280x800");
        let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
        Ok(GraphicsDeviceConfiguration {
            width: w.trim().parse().map_err(|_| bad())?,
            height: h.trim().parse().map_err(|_| bad())?,
            option_rom: None,
        })
    }

    fn option_rom_path(&self) -> &Path {
        self.option_rom
            .as_deref()
            .unwrap_or(Path::new(DISPLAY_OPTION_ROM))
    }
}

/// An attached display: its PCI function (for its state) and what it shows.
pub(super) struct AttachedDisplay {
    pub slot: u8,
    pub device: Arc<Mutex<BochsDisplay>>,
    pub handle: DisplayHandle,
}

impl AttachedDisplay {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, BochsDisplay> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn validate(devices: &[GraphicsDeviceConfiguration], firmware_boot: bool, issues: &mut Issues) {
    if devices.len() > 1 {
        issues.add(
            "graphics_devices",
            format!(
                "{} displays given; a machine has at most one, so remove the others",
                devices.len()
            ),
        );
    }
    for (i, d) in devices.iter().enumerate() {
        if !(MIN_SIZE.0..=MAX_SIZE.0).contains(&d.width) || !(MIN_SIZE.1..=MAX_SIZE.1).contains(&d.height) {
            issues.add(
                &format!("graphics_devices[{i}]"),
                format!(
                    "a display of {}x{} is outside {}x{} to {}x{}; choose a size in that range, e.g. 1280x800",
                    d.width, d.height, MIN_SIZE.0, MIN_SIZE.1, MAX_SIZE.0, MAX_SIZE.1
                ),
            );
        }
        if firmware_boot && !d.option_rom_path().is_file() {
            issues.add(
                &format!("graphics_devices[{i}].option_rom"),
                format!(
                    "{} is missing; install Debian's `seabios` package or give the display's VGA BIOS as option_rom",
                    d.option_rom_path().display()
                ),
            );
        }
    }
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    devices: &[GraphicsDeviceConfiguration],
    firmware_boot: bool,
) -> Result<(), DeviceError> {
    for d in devices {
        let error = |message: String| DeviceError::Display { message };
        let memory = RamBar::new(machine.vm().clone(), BochsDisplay::memory_size(d.width, d.height))
            .map_err(|e| error(e.to_string()))?;
        let (display, handle) =
            BochsDisplay::new(d.width, d.height, Box::new(memory)).map_err(|e| error(e.to_string()))?;
        let device = Arc::new(Mutex::new(display));
        let slot = {
            let root = machine.pci_root();
            let mut root = root.lock().unwrap_or_else(|p| p.into_inner());
            let slot = root
                .free_slot()
                .ok_or_else(|| error("no free PCI slot for the display".into()))?;
            root.add_device(slot, device.clone())
                .map_err(|e| error(e.to_string()))?;
            slot
        };
        if firmware_boot {
            let path = d.option_rom_path();
            let rom =
                std::fs::read(path).map_err(|e| error(format!("cannot read {} ({e})", path.display())))?;
            machine
                .add_firmware_file(&format!("pci{VENDOR_ID:04x},{DEVICE_ID:04x}.rom"), rom)
                .map_err(|e| error(e.to_string()))?;
        }
        manager.add_display(AttachedDisplay { slot, device, handle });
        // A screen comes with the i8042's PS/2 keyboard and mouse, which firmware menus and text
        // consoles use (keys and the pointer from the VNC server); the machine was built with
        // them for a configuration with a display (`VirtualMachine`'s `MachineConfig`).
        let (keyboard, mouse) = machine
            .ps2_input()
            .ok_or_else(|| error("the machine was built without its PS/2 keyboard and mouse".into()))?;
        manager.set_keyboard(keyboard);
        manager.set_mouse(mouse);
    }
    Ok(())
}
