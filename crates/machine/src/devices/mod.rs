//! Legacy PC devices on the port I/O bus, and the CFI flash of OVMF's variables (`pflash`).

mod cmos;
pub mod fw_cfg;
mod i8042;
mod ovmf_shutdown;
pub mod pflash;
mod pm;
mod ps2_mouse;
mod pvpanic;
mod rtc_timer;
mod serial;

use std::sync::Arc;

pub use cmos::{Cmos, CmosState};
pub use i8042::{
    fuzz_input as i8042_fuzz_input, I8042State, KeyboardHandle, KeyboardIrq, MouseHandle, I8042,
};
pub use pm::{AcpiPm, IrqLevel, PmState, PM_IO_LEN};
pub use ps2_mouse::{Ps2Mouse, Ps2MouseState, BUTTON_LEFT, BUTTON_MIDDLE, BUTTON_RIGHT};

/// Length of the PM register range on the port bus.
pub fn pm_io_len() -> u64 {
    PM_IO_LEN
}
pub use ovmf_shutdown::{OvmfShutdown, OVMF_PM1_CNT_LEN, OVMF_PM1_CNT_PORT};
pub use pvpanic::{PvPanic, PVPANIC_PORT};
pub use serial::{spawn_serial_input, IrqTrigger, SerialDevice, SerialInputError, SerialState};

/// Something the guest asked the machine for through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// ACPI S5 through PM1_CNT.
    PowerOff,
    /// The i8042 reset line.
    Reset,
    /// The guest kernel said it panicked (pvpanic).
    Panic,
}

/// Where devices send guest requests.
pub type RequestSink = Arc<dyn Fn(GuestRequest) + Send + Sync>;
