//! The i8042 keyboard controller, as far as guests use it on a VM: the CPU reset line, and a
//! controller that answers firmware's probes at once and says that no keyboard is attached.
//!
//! A controller that never answers costs a boot dearly: SeaBIOS sends the controller self-test
//! (0xaa) and then polls the status port 10,000 times, 50 µs apart, for the reply (10,005 port
//! exits and ~0.5 s before its boot menu, counted with `virtkit run --stats`). So the controller
//! passes its self-test (0x55) and reports the keyboard interface test (0xab) as failed (clock
//! line stuck low: nothing is plugged in), which ends SeaBIOS's keyboard setup there. Linux does
//! not probe it: the DSDT has no PS/2 device and the FADT's 8042 flag is clear.

use crate::bus::BusDevice;

use super::{GuestRequest, RequestSink};

/// Port offsets from 0x60: data at 0, command/status at 4.
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
/// Interface test result "clock line stuck low": no device on that port.
const INTERFACE_NO_DEVICE: u8 = 0x01;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Set once the controller passed its self-test (as after power-on on real hardware).
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
/// The last write was to the command port.
const STATUS_COMMAND: u8 = 1 << 3;

/// Configuration byte at reset: keyboard and mouse interfaces disabled, translation on.
const INITIAL_CONFIG: u8 = 0x70;

pub struct I8042 {
    requests: RequestSink,
    /// The byte waiting in the output buffer.
    output: Option<u8>,
    config: u8,
    status_flags: u8,
    /// A 0x60 command came: the next data byte is the configuration.
    config_write_pending: bool,
}

/// The controller's output buffer, configuration byte and status flags as saved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub output: Option<u8>,
    pub config: u8,
    pub status_flags: u8,
    pub config_write_pending: bool,
}

impl I8042 {
    pub fn state(&self) -> I8042State {
        I8042State {
            output: self.output,
            config: self.config,
            status_flags: self.status_flags,
            config_write_pending: self.config_write_pending,
        }
    }

    pub fn restore_state(&mut self, state: &I8042State) {
        self.output = state.output;
        self.config = state.config;
        self.status_flags = state.status_flags;
        self.config_write_pending = state.config_write_pending;
    }

    pub fn new(requests: RequestSink) -> I8042 {
        I8042 {
            requests,
            output: None,
            config: INITIAL_CONFIG,
            status_flags: STATUS_SYSTEM_FLAG,
            config_write_pending: false,
        }
    }

    fn status(&self) -> u8 {
        self.status_flags
            | if self.output.is_some() {
                STATUS_OUTPUT_FULL
            } else {
                0
            }
    }

    fn command(&mut self, command: u8) {
        self.status_flags |= STATUS_COMMAND;
        self.config_write_pending = false;
        match command {
            CMD_RESET_CPU => (self.requests)(GuestRequest::Reset),
            CMD_SELF_TEST => {
                self.status_flags |= STATUS_SYSTEM_FLAG;
                self.output = Some(SELF_TEST_PASSED);
            }
            CMD_KBD_TEST | CMD_AUX_TEST => self.output = Some(INTERFACE_NO_DEVICE),
            CMD_READ_CONFIG => self.output = Some(self.config),
            CMD_WRITE_CONFIG => self.config_write_pending = true,
            // Enable/disable ports, output port writes, pulses other than reset: nothing
            // attached changes.
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == COMMAND_OFFSET {
            self.status()
        } else {
            self.output.take().unwrap_or(0)
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        if offset == COMMAND_OFFSET {
            self.command(byte);
        } else {
            self.status_flags &= !STATUS_COMMAND;
            if std::mem::take(&mut self.config_write_pending) {
                self.config = byte;
            }
            // Any other data byte is for a keyboard that is not there.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn controller() -> (I8042, Arc<Mutex<Vec<GuestRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (I8042::new(Arc::new(move |r| sink.lock().unwrap().push(r))), seen)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn fe_on_the_command_port_resets_and_nothing_else_does() {
        let (mut dev, seen) = controller();
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(4, &[0xd1]); // write output port command
        assert!(seen.lock().unwrap().is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
    }

    #[test]
    fn the_self_test_passes_and_the_keyboard_test_says_nothing_is_attached() {
        let (mut dev, _) = controller();
        assert_eq!(
            read(&mut dev, 4) & STATUS_OUTPUT_FULL,
            0,
            "nothing to read at first"
        );
        dev.write(4, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, 0), SELF_TEST_PASSED);
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0, "read once");
        dev.write(4, &[CMD_KBD_TEST]);
        assert_eq!(read(&mut dev, 0), INTERFACE_NO_DEVICE);
        assert_ne!(read(&mut dev, 4) & STATUS_SYSTEM_FLAG, 0);
    }

    #[test]
    fn the_configuration_byte_is_written_and_read_back() {
        let (mut dev, _) = controller();
        dev.write(4, &[CMD_READ_CONFIG]);
        assert_eq!(read(&mut dev, 0), INITIAL_CONFIG);
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[0x45]);
        dev.write(0, &[0x99]); // a keyboard byte: goes nowhere
        dev.write(4, &[CMD_READ_CONFIG]);
        assert_eq!(read(&mut dev, 0), 0x45);
        // Odd sizes never panic.
        dev.read(4, &mut []);
        dev.write(4, &[]);
        let mut two = [0xffu8; 2];
        dev.read(4, &mut two);
        assert_eq!(two[1], 0);
    }
}
