//! VNC clients' keys and pointer for the VM's input devices. Keys: X11 keysyms (or QEMU's
//! extended key events' XT scan codes, when the client sends them) as PC keys. A keysym that
//! needs Shift on a US layout ('H', '!') is sent with Shift around it unless the client already
//! holds Shift, since clients such as vncdotool send the shifted keysym alone.
//!
//! Where events go, as QEMU's input routing does: to the virtio keyboard and tablet once the
//! guest's driver of them is up (Linux), else to the PS/2 keyboard and mouse (the firmware,
//! a text console, a guest without virtio-input). Never to both, or the guest would see each
//! key twice. A release goes where its press went, even if the route changed in between (the
//! virtio driver came up while a key was held), and the pointer stays with the device that got
//! a button press until every button is up: else the first device would keep a key or button
//! down for good. The pointer's position is scaled to the tablet's 0..=32767 over the screen the
//! guest set; VNC's buttons 1, 2, 3 are left, middle, right, 4 and 5 the wheel (a tablet's
//! wheel steps; PS/2 has none without the IntelliMouse extension).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

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
    /// Which device each held key and the pointer go to.
    router: Mutex<Router>,
}

/// Where an input event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Virtio,
    Ps2,
}

/// The routing decisions, kept apart from the devices: a new press goes to the virtio device
/// if its driver is up, else to PS/2; a release goes where its press went; the pointer stays
/// where a button press went until every button is up.
#[derive(Debug, Default)]
pub struct Router {
    /// Each key held down, and the route its press took.
    held_keys: HashMap<Code, Route>,
    /// The pointer's route while a button is held.
    pointer: Option<Route>,
}

impl Router {
    /// The route of a press (`down`) or release of `code`; `virtio` says whether the virtio
    /// keyboard can take it now (its driver is up and it has the key).
    pub fn key(&mut self, code: Code, down: bool, virtio: bool) -> Route {
        let now = if virtio { Route::Virtio } else { Route::Ps2 };
        if down {
            *self.held_keys.entry(code).or_insert(now)
        } else {
            self.held_keys.remove(&code).unwrap_or(now)
        }
    }

    /// The route of a pointer event with VNC `buttons` held; `virtio` says whether the tablet's
    /// driver is up.
    pub fn pointer(&mut self, buttons: u8, virtio: bool) -> Route {
        let now = if virtio { Route::Virtio } else { Route::Ps2 };
        let route = self.pointer.unwrap_or(now);
        self.pointer = (buttons & 0x07 != 0).then_some(route);
        route
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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
            router: Mutex::new(Router::default()),
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

    /// Whether the virtio keyboard can take `code` now: its driver is up and it has the key.
    fn virtio_takes(&self, code: Code) -> bool {
        self.virtio_keyboard.as_ref().is_some_and(InputHandle::is_ready)
            && linux_key(code.make, code.extended).is_some()
    }

    /// Sends `code` to the virtio keyboard.
    fn virtio_key(&self, code: Code, down: bool, add_shift: bool) {
        let (Some(keyboard), Some(key)) = (&self.virtio_keyboard, linux_key(code.make, code.extended)) else {
            return;
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
    }

    fn ps2_key(&self, code: Code, down: bool, add_shift: bool) {
        let Some(keyboard) = &self.keyboard else { return };
        if add_shift {
            keyboard.key(&[LEFT_SHIFT]);
        }
        keyboard.key(&scancodes(code, down));
        if add_shift {
            keyboard.key(&[LEFT_SHIFT | 0x80]);
        }
    }

    /// Sends the pointer to the tablet.
    fn tablet_pointer(&self, event: PointerEvent) {
        let Some(tablet) = &self.tablet else { return };
        let (width, height) = self.screen_size();
        let mut report = vec![
            InputEvent::new(EV_ABS, ABS_X, scale(event.x, width)),
            InputEvent::new(EV_ABS, ABS_Y, scale(event.y, height)),
        ];
        // Every button's state each time (the guest's input core drops what did not change),
        // so a report dropped on the way leaves no button wrong for long.
        let before = self.tablet_buttons.swap(event.buttons, Ordering::Relaxed);
        for (bit, code) in [(0, BTN_LEFT), (1, BTN_MIDDLE), (2, BTN_RIGHT)] {
            report.push(InputEvent::key(code, event.buttons & (1 << bit) != 0));
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
    }
}

/// A position out of `size` pixels as the tablet's 0..=TABLET_MAX.
pub fn scale(position: u16, size: u32) -> u32 {
    let last = size.saturating_sub(1);
    if last == 0 {
        return 0;
    }
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
        let route = lock(&self.router).key(code, event.down, self.virtio_takes(code));
        match route {
            Route::Virtio => self.virtio_key(code, event.down, add_shift),
            Route::Ps2 => self.ps2_key(code, event.down, add_shift),
        }
    }

    fn pointer(&self, event: PointerEvent) {
        let tablet_up = self.tablet.as_ref().is_some_and(InputHandle::is_ready);
        let route = lock(&self.router).pointer(event.buttons, tablet_up);
        match route {
            Route::Virtio => self.tablet_pointer(event),
            Route::Ps2 => {
                if let Some(mouse) = &self.mouse {
                    mouse.pointer(event.x, event.y, ps2_buttons(event.buttons));
                }
            }
        }
    }

    /// The LEDs of the keyboard keys go to: the virtio keyboard's once its driver is up, else
    /// the PS/2 keyboard's.
    fn leds(&self) -> Option<u8> {
        match (&self.virtio_keyboard, &self.keyboard) {
            (Some(virtio), _) if virtio.is_ready() => Some(vnc_leds_of_linux(virtio.leds())),
            (_, Some(ps2)) => Some(ps2.leds()),
            (Some(virtio), None) => Some(vnc_leds_of_linux(virtio.leds())),
            (None, None) => None,
        }
    }
}

/// Linux's LED bits (bit n for `LED_*` code n: 0 Num Lock, 1 Caps Lock, 2 Scroll Lock) as
/// QEMU's LED-state pseudo-encoding and PS/2's 0xed have them (0 Scroll, 1 Num, 2 Caps).
pub fn vnc_leds_of_linux(linux: u8) -> u8 {
    let bit = |n: u8| (linux >> n) & 1;
    bit(2) | bit(0) << 1 | bit(1) << 2
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    fn a_release_goes_where_its_press_went_when_the_virtio_driver_comes_up_between() {
        let mut router = Router::default();
        let shift = Code {
            make: 0x2a,
            extended: false,
        };
        let a = Code {
            make: 0x1e,
            extended: false,
        };
        // Shift pressed while only PS/2 is up; the virtio driver comes up; A is typed.
        assert_eq!(router.key(shift, true, false), Route::Ps2);
        assert_eq!(router.key(a, true, true), Route::Virtio);
        assert_eq!(router.key(a, false, true), Route::Virtio);
        // Shift's release still goes to PS/2, where it is held; later presses go to virtio.
        assert_eq!(router.key(shift, false, true), Route::Ps2);
        assert_eq!(router.key(shift, true, true), Route::Virtio);
        // A repeated press (the client's auto-repeat) keeps its route.
        assert_eq!(router.key(shift, true, false), Route::Virtio);
        assert_eq!(router.key(shift, false, false), Route::Virtio);
    }

    #[test]
    fn the_pointer_stays_with_the_device_that_got_a_button_press() {
        let mut router = Router::default();
        assert_eq!(router.pointer(0, false), Route::Ps2);
        assert_eq!(router.pointer(1, false), Route::Ps2, "left down on PS/2");
        assert_eq!(
            router.pointer(1, true),
            Route::Ps2,
            "the tablet came up: still held"
        );
        assert_eq!(
            router.pointer(0, true),
            Route::Ps2,
            "the release goes to PS/2 too"
        );
        assert_eq!(router.pointer(0, true), Route::Virtio, "then the tablet");
        assert_eq!(router.pointer(8, true), Route::Virtio, "wheel bits hold nothing");
        assert_eq!(router.pointer(0, false), Route::Ps2);
    }

    #[test]
    fn linux_leds_become_the_vnc_led_state_bits() {
        assert_eq!(vnc_leds_of_linux(0), 0);
        assert_eq!(vnc_leds_of_linux(1 << 0), 0b010, "Num Lock");
        assert_eq!(vnc_leds_of_linux(1 << 1), 0b100, "Caps Lock");
        assert_eq!(vnc_leds_of_linux(1 << 2), 0b001, "Scroll Lock");
        assert_eq!(vnc_leds_of_linux(0xff), 0b111, "other LEDs are left out");
    }

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
