//! The i8042 keyboard controller, as far as guests use it on a VM: the CPU reset line.

use crate::bus::BusDevice;

use super::{GuestRequest, RequestSink};

const CMD_RESET_CPU: u8 = 0xfe;
/// Port offsets from 0x60: data at 0, command/status at 4.
const COMMAND_OFFSET: u64 = 4;

/// Reads as an idle controller with nothing attached; a 0xfe command resets the machine.
pub struct I8042 {
    requests: RequestSink,
}

impl I8042 {
    pub fn new(requests: RequestSink) -> I8042 {
        I8042 { requests }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty: nothing to read, ready for commands.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            (self.requests)(GuestRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn fe_on_the_command_port_resets_and_nothing_else_does() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut dev = I8042::new(Arc::new(move |r| sink.lock().unwrap().push(r)));
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(4, &[0xd1]); // write output port command
        assert!(seen.lock().unwrap().is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
    }
}
