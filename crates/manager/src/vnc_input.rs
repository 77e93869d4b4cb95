//! VNC clients' keys and pointer for the VM's input devices. Keys: X11 keysyms (or QEMU's
//! extended key events' XT scan codes, when the client sends them) as PC keys. A keysym that
//! needs Shift on a US layout ('H', '!') is sent with Shift around it unless the client already
//! holds Shift, since clients such as vncdotool send the shifted keysym alone.
//!
//! Where events go, as QEMU's input routing does: to the virtio keyboard and tablet once the
//! guest's driver of them is up (Linux), else to the PS/2 keyboard and mouse (the firmware,
//! a text console, a guest without virtio-input). Never to both, or the guest would see each
//! key twice. The pointer's position is scaled to the tablet's 0..=32767 over the screen the
//! guest set; VNC's buttons 1, 2, 3 are left, middle, right, 4 and 5 the wheel (a tablet's
//! wheel steps; PS/2 has none without the IntelliMouse extension).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use virtkit_devices::display::DisplayHandle;
use virtkit_devices::input::event::{
    ABS_X, ABS_Y, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, EV_ABS, EV_REL, REL_HWHEEL, REL_WHEEL,
};
use virtkit_devices::input::keys::linux_key;
use virtkit_devices::input::{InputEvent, InputHandle, TABLET_MAX};
use virtkit_machine::devices::{KeyboardHandle, MouseHandle, BUTTON_LEFT, BUTTON_MIDDLE, BUTTON_RIGHT};
use virtkit_vnc::{InputSink, KeyEvent, PointerEvent};

const LEFT_SHIFT: u8 = 0x2a;
const E0: u8 = 0xe0;

/// The VM's input devices, as the VNC server's input.
pub struct VmInput {
    keyboard: Option<KeyboardHandle>,
    mouse: Option<MouseHandle>,
    virtio_keyboard: Option<InputHandle>,
    tablet: Option<InputHandle>,
    /// The screen, for the size the pointer's position is scaled over.
    display: Option<(DisplayHandle, u32, u32)>,
    /// The client holds a Shift key.
    shift_held: AtomicBool,
    /// The VNC buttons last sent to the tablet.
    tablet_buttons: AtomicU8,
}

impl VmInput {
    pub fn new(keyboard: Option<KeyboardHandle>, mouse: Option<MouseHandle>) -> VmInput {
        VmInput {
            keyboard,
            mouse,
            virtio_keyboard: None,
            tablet: None,
            display: None,
            shift_held: AtomicBool::new(false),
            tablet_buttons: AtomicU8::new(0),
        }
    }

    /// Adds the virtio keyboard and tablet, and the display whose size (or, before the guest
    /// sets a mode, the configured `width` × `height`) the pointer is scaled over.
    pub fn with_virtio(
        mut self,
        keyboard: Option<InputHandle>,
        tablet: Option<InputHandle>,
        display: Option<(DisplayHandle, u32, u32)>,
    ) -> VmInput {
        self.virtio_keyboard = keyboard;
        self.tablet = tablet;
        self.display = display;
        self
    }

    fn screen_size(&self) -> (u32, u32) {
        match &self.display {
            Some((display, width, height)) => display
                .mode()
                .map_or((*width, *height), |mode| (mode.width, mode.height)),
            None => (1, 1),
        }
    }

    /// Sends `code` to the virtio keyboard if its driver is up; `false` if it is not.
    fn virtio_key(&self, code: Code, down: bool, add_shift: bool) -> bool {
        let Some(keyboard) = self.virtio_keyboard.as_ref().filter(|k| k.is_ready()) else {
            return false;
        };
        let Some(key) = linux_key(code.make, code.extended) else {
            return true;
        };
        let shift = linux_key(LEFT_SHIFT, false).unwrap_or(42);
        let mut report = Vec::with_capacity(6);
        if add_shift {
            report.extend([InputEvent::key(shift, true), InputEvent::sync()]);
        }
        report.extend([InputEvent::key(key, down), InputEvent::sync()]);
        if add_shift {
            report.extend([InputEvent::key(shift, false), InputEvent::sync()]);
        }
        keyboard.send(&report);
        true
    }

    /// Sends the pointer to the tablet if its driver is up; `false` if it is not.
    fn tablet_pointer(&self, event: PointerEvent) -> bool {
        let Some(tablet) = self.tablet.as_ref().filter(|t| t.is_ready()) else {
            return false;
        };
        let (width, height) = self.screen_size();
        let mut report = vec![
            InputEvent::new(EV_ABS, ABS_X, scale(event.x, width)),
            InputEvent::new(EV_ABS, ABS_Y, scale(event.y, height)),
        ];
        let before = self.tablet_buttons.swap(event.buttons, Ordering::Relaxed);
        for (bit, code) in [(0, BTN_LEFT), (1, BTN_MIDDLE), (2, BTN_RIGHT)] {
            let mask = 1 << bit;
            if (before ^ event.buttons) & mask != 0 {
                report.push(InputEvent::key(code, event.buttons & mask != 0));
            }
        }
        // The wheel: a press of button 4 (5) is one step up (down); 6 and 7 left and right.
        let pressed = event.buttons & !before;
        for (bit, axis, step) in [
            (3, REL_WHEEL, 1i32),
            (4, REL_WHEEL, -1),
            (5, REL_HWHEEL, -1),
            (6, REL_HWHEEL, 1),
        ] {
            if pressed & (1 << bit) != 0 {
                report.push(InputEvent::new(EV_REL, axis, step as u32));
            }
        }
        report.push(InputEvent::sync());
        tablet.send(&report);
        true
    }
}

/// A position out of `size` pixels as the tablet's 0..=TABLET_MAX.
pub fn scale(position: u16, size: u32) -> u32 {
    let last = size.saturating_sub(1).max(1);
    (u32::from(position).min(last) * TABLET_MAX + last / 2) / last
}

impl InputSink for VmInput {
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
        if self.virtio_key(code, event.down, add_shift) {
            return;
        }
        let Some(keyboard) = &self.keyboard else { return };
        if add_shift {
            keyboard.key(&[LEFT_SHIFT]);
        }
        keyboard.key(&scancodes(code, event.down));
        if add_shift {
            keyboard.key(&[LEFT_SHIFT | 0x80]);
        }
    }

    fn pointer(&self, event: PointerEvent) {
        if self.tablet_pointer(event) {
            return;
        }
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
    fn pointer_positions_scale_over_the_screen() {
        assert_eq!(scale(0, 1280), 0);
        assert_eq!(scale(1279, 1280), TABLET_MAX);
        assert_eq!(scale(5000, 1280), TABLET_MAX, "clamped");
        assert_eq!(scale(640, 1281), TABLET_MAX / 2 + 1);
        assert_eq!(scale(3, 1), 0);
    }

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
