//! VNC clients' keys for the VM's PS/2 keyboard: X11 keysyms (or QEMU's extended key events'
//! XT scan codes, when the client sends them) as set-1 scan codes. A keysym that needs Shift on
//! a US layout ('H', '!') is sent with Shift around it unless the client already holds Shift,
//! since clients such as vncdotool send the shifted keysym alone. The pointer moves the PS/2 mouse
//! (VNC's buttons 1, 2, 3 are left, middle, right; the wheel's 4 and 5 have no PS/2 bits).

use std::sync::atomic::{AtomicBool, Ordering};

use virtkit_machine::devices::{KeyboardHandle, MouseHandle, BUTTON_LEFT, BUTTON_MIDDLE, BUTTON_RIGHT};
use virtkit_vnc::{InputSink, KeyEvent, PointerEvent};

const LEFT_SHIFT: u8 = 0x2a;
const E0: u8 = 0xe0;

/// The VM's keyboard as the VNC server's input.
pub struct KeyboardInput {
    keyboard: KeyboardHandle,
    mouse: Option<MouseHandle>,
    /// The client holds a Shift key.
    shift_held: AtomicBool,
}

impl KeyboardInput {
    pub fn new(keyboard: KeyboardHandle, mouse: Option<MouseHandle>) -> KeyboardInput {
        KeyboardInput {
            keyboard,
            mouse,
            shift_held: AtomicBool::new(false),
        }
    }
}

impl InputSink for KeyboardInput {
    fn key(&self, event: KeyEvent) {
        if matches!(event.keysym, 0xffe1 | 0xffe2) {
            self.shift_held.store(event.down, Ordering::Relaxed);
        }
        let (code, shifted) = match event.scancode {
            // QEMU's extended key event: the key itself, whatever the layout.
            Some(xt) if xt != 0 => (xt_code(xt), false),
            _ => match keysym_code(event.keysym) {
                Some(found) => found,
                None => {
                    tracing::debug!(keysym = event.keysym, "a VNC key with no PC key");
                    return;
                }
            },
        };
        let add_shift = shifted && event.down && !self.shift_held.load(Ordering::Relaxed);
        if add_shift {
            self.keyboard.key(&[LEFT_SHIFT]);
        }
        self.keyboard.key(&scancodes(code, event.down));
        if add_shift {
            self.keyboard.key(&[LEFT_SHIFT | 0x80]);
        }
    }

    fn pointer(&self, event: PointerEvent) {
        if let Some(mouse) = &self.mouse {
            mouse.pointer(event.x, event.y, ps2_buttons(event.buttons));
        }
    }
}

/// VNC's button mask (bit 0 left, 1 middle, 2 right) as PS/2's (bit 0 left, 1 right, 2 middle).
pub fn ps2_buttons(vnc: u8) -> u8 {
    let mut b = 0;
    if vnc & 1 != 0 {
        b |= BUTTON_LEFT;
    }
    if vnc & 2 != 0 {
        b |= BUTTON_MIDDLE;
    }
    if vnc & 4 != 0 {
        b |= BUTTON_RIGHT;
    }
    b
}

/// A key: its set-1 make code and whether it has the 0xe0 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub make: u8,
    pub extended: bool,
}

/// The bytes of a press (make) or release (break) of `code`.
pub fn scancodes(code: Code, down: bool) -> Vec<u8> {
    let byte = if down { code.make } else { code.make | 0x80 };
    if code.extended {
        vec![E0, byte]
    } else {
        vec![byte]
    }
}

fn xt_code(xt: u32) -> Code {
    // QEMU's encoding: 0xe0-prefixed keys have bit 7 of the low byte set (or 0xe0 in the high
    // byte, as some clients send).
    let extended = xt & 0x80 != 0 || (xt >> 8) & 0xff == 0xe0;
    Code {
        make: (xt & 0x7f) as u8,
        extended,
    }
}

/// The key for an X11 keysym on a US layout, and whether it needs Shift.
pub fn keysym_code(keysym: u32) -> Option<(Code, bool)> {
    let plain = |make| {
        Some((
            Code {
                make,
                extended: false,
            },
            false,
        ))
    };
    let shifted = |make| {
        Some((
            Code {
                make,
                extended: false,
            },
            true,
        ))
    };
    let extended = |make| Some((Code { make, extended: true }, false));
    if let Ok(byte) = u8::try_from(keysym) {
        if byte.is_ascii_lowercase() {
            return plain(LETTERS[(byte - b'a') as usize]);
        }
        if byte.is_ascii_uppercase() {
            return shifted(LETTERS[(byte - b'A') as usize]);
        }
        const UNSHIFTED: &[u8] = b"1234567890-=[];'`\\,./ ";
        const SHIFTED: &[u8] = b"!@#$%^&*()_+{}:\"~|<>?";
        const UNSHIFTED_CODES: [u8; 22] = [
            0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1a, 0x1b, 0x27, 0x28,
            0x29, 0x2b, 0x33, 0x34, 0x35, 0x39,
        ];
        if let Some(i) = UNSHIFTED.iter().position(|&c| c == byte) {
            return plain(UNSHIFTED_CODES[i]);
        }
        if let Some(i) = SHIFTED.iter().position(|&c| c == byte) {
            // The same keys as the unshifted row, in the same order (space has no shifted form).
            return shifted(UNSHIFTED_CODES[i]);
        }
    }
    match keysym {
        0xff08 => plain(0x0e), // BackSpace
        0xff09 => plain(0x0f), // Tab
        0xff0d => plain(0x1c), // Return
        0xff1b => plain(0x01), // Escape
        0xffe1 => plain(0x2a), // Shift_L
        0xffe2 => plain(0x36), // Shift_R
        0xffe3 => plain(0x1d), // Control_L
        0xffe4 => extended(0x1d),
        0xffe9 | 0xffe7 => plain(0x38), // Alt_L, Meta_L
        0xffea | 0xffe8 => extended(0x38),
        0xffe5 => plain(0x3a),                                    // Caps_Lock
        0xffbe..=0xffc7 => plain(0x3b + (keysym - 0xffbe) as u8), // F1..F10
        0xffc8 => plain(0x57),                                    // F11
        0xffc9 => plain(0x58),                                    // F12
        0xff50 => extended(0x47),                                 // Home
        0xff51 => extended(0x4b),                                 // Left
        0xff52 => extended(0x48),                                 // Up
        0xff53 => extended(0x4d),                                 // Right
        0xff54 => extended(0x50),                                 // Down
        0xff55 => extended(0x49),                                 // Page_Up
        0xff56 => extended(0x51),                                 // Page_Down
        0xff57 => extended(0x4f),                                 // End
        0xff63 => extended(0x52),                                 // Insert
        0xffff => extended(0x53),                                 // Delete
        0xff8d => extended(0x1c),                                 // KP_Enter
        0xffeb | 0xffec => extended(0x5b),                        // Super
        _ => None,
    }
}

/// a..z.
const LETTERS: [u8; 26] = [
    0x1e, 0x30, 0x2e, 0x20, 0x12, 0x21, 0x22, 0x23, 0x17, 0x24, 0x25, 0x26, 0x32, 0x31, 0x18, 0x19, 0x10,
    0x13, 0x1f, 0x14, 0x16, 0x2f, 0x11, 0x2d, 0x15, 0x2c,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysyms_map_to_us_layout_keys() {
        let code = |k| keysym_code(k).map(|(c, s)| (c.make, c.extended, s));
        assert_eq!(code(u32::from(b'a')), Some((0x1e, false, false)));
        assert_eq!(code(u32::from(b'H')), Some((0x23, false, true)));
        assert_eq!(code(u32::from(b'!')), Some((0x02, false, true)));
        assert_eq!(code(u32::from(b'?')), Some((0x35, false, true)));
        assert_eq!(code(u32::from(b' ')), Some((0x39, false, false)));
        assert_eq!(code(0xff0d), Some((0x1c, false, false)));
        assert_eq!(code(0xff52), Some((0x48, true, false)));
        assert_eq!(code(0x1234), None);
        assert_eq!(
            scancodes(
                Code {
                    make: 0x48,
                    extended: true
                },
                false
            ),
            [0xe0, 0xc8]
        );
        assert_eq!(
            xt_code(0x9d),
            Code {
                make: 0x1d,
                extended: true
            }
        );
    }
}
