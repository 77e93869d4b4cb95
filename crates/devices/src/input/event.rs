//! The events virtio-input carries (`struct virtio_input_event`: le16 type, le16 code, le32
//! value; Linux's evdev event without the time), and the Linux codes these devices use.

/// Event types.
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const EV_LED: u16 = 0x11;
pub const EV_REP: u16 = 0x14;

/// The end of one report: the guest's input core hands what came before it to readers.
pub const SYN_REPORT: u16 = 0;

/// Pointer buttons (`EV_KEY` codes).
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;

/// Relative axes: the wheels.
pub const REL_HWHEEL: u16 = 0x06;
pub const REL_WHEEL: u16 = 0x08;

/// Absolute axes.
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;

/// Keyboard LEDs (`EV_LED` codes), which the driver sends on the status queue.
pub const LED_NUML: u16 = 0x00;
pub const LED_CAPSL: u16 = 0x01;
pub const LED_SCROLLL: u16 = 0x02;

/// Size of one event in a queue buffer.
pub const EVENT_SIZE: usize = 8;

/// One input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    pub const fn new(kind: u16, code: u16, value: u32) -> InputEvent {
        InputEvent { kind, code, value }
    }

    /// The end of a report.
    pub const fn sync() -> InputEvent {
        InputEvent::new(EV_SYN, SYN_REPORT, 0)
    }

    /// A key or button pressed (`down`) or released.
    pub const fn key(code: u16, down: bool) -> InputEvent {
        InputEvent::new(EV_KEY, code, down as u32)
    }

    /// The event as the guest reads it from a buffer.
    pub fn to_bytes(self) -> [u8; EVENT_SIZE] {
        let mut bytes = [0; EVENT_SIZE];
        bytes[0..2].copy_from_slice(&self.kind.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.code.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }

    /// An event the driver wrote (the status queue).
    pub fn from_bytes(bytes: [u8; EVENT_SIZE]) -> InputEvent {
        InputEvent {
            kind: u16::from_le_bytes([bytes[0], bytes[1]]),
            code: u16::from_le_bytes([bytes[2], bytes[3]]),
            value: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }
}
