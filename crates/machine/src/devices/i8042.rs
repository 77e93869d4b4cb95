//! The i8042 keyboard controller: the CPU reset line, and a PS/2 keyboard when the machine has
//! one (a machine with a display: its keys come from the VNC server, [`KeyboardHandle`]).
//!
//! Without a keyboard the controller answers firmware's probes at once and says that none is
//! attached. A controller that never answers costs a boot dearly: SeaBIOS sends the controller
//! self-test (0xaa) and then polls the status port 10,000 times, 50 µs apart, for the reply
//! (10,005 port exits and ~0.5 s before its boot menu, counted with `virtkit run --stats`). So
//! the controller passes its self-test (0x55) and reports the keyboard interface test (0xab) as
//! failed (clock line stuck low: nothing is plugged in), which ends SeaBIOS's keyboard setup
//! there. Linux does not probe it: the DSDT has no PS/2 device and the FADT's 8042 flag is clear.
//!
//! With a keyboard, the keyboard answers the commands SeaBIOS's `ps2_keyboard_setup` and
//! Linux's atkbd send (reset with its self-test result, identify, scan-code set, LEDs, typematic
//! rate, enable and disable), as QEMU's does, and sends keys as set-1 scan codes (what the
//! controller's translation, which every guest turns on, makes of set 2) through the output
//! buffer, raising IRQ 1 for each byte when the guest enabled it.
//!
//! A machine with a display also has a PS/2 mouse on the auxiliary port ([`Ps2Mouse`]): the
//! guest writes it with 0xd4, its bytes are marked in the status register (bit 5) and raise
//! IRQ 12, and the VNC server's pointer moves it ([`MouseHandle`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::bus::BusDevice;

use super::ps2_mouse::{Ps2Mouse, Ps2MouseState};
use super::{GuestRequest, RequestSink};

/// Port offsets from 0x60: data at 0, command/status at 4.
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// Interface test result "clock line stuck low": no device on that port.
const INTERFACE_NO_DEVICE: u8 = 0x01;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Set once the controller passed its self-test (as after power-on on real hardware).
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
/// The last write was to the command port.
const STATUS_COMMAND: u8 = 1 << 3;
/// The byte in the output buffer is the mouse's.
const STATUS_AUX_DATA: u8 = 1 << 5;

/// Configuration byte bits.
const CONFIG_KBD_INTERRUPT: u8 = 1 << 0;
const CONFIG_AUX_INTERRUPT: u8 = 1 << 1;
const CONFIG_KBD_DISABLED: u8 = 1 << 4;
const CONFIG_AUX_DISABLED: u8 = 1 << 5;

/// Configuration byte at reset: keyboard and mouse interfaces disabled, translation on.
const INITIAL_CONFIG: u8 = 0x70;

/// Keyboard commands and answers.
const KBD_SET_LEDS: u8 = 0xed;
/// The LED bits of 0xed's argument: Scroll Lock, Num Lock, Caps Lock.
const KBD_LED_MASK: u8 = 0b111;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_RATE: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_RESET_DISABLE: u8 = 0xf5;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
/// A MF2 keyboard behind a translating controller.
const KBD_ID: [u8; 2] = [0xab, 0x41];

/// The most bytes waiting for the guest; keys beyond it are dropped (a guest that reads nothing).
const QUEUE_LIMIT: usize = 256;

/// Where the controller raises IRQ 1 (an irqfd in a machine).
pub trait KeyboardIrq: Send + Sync {
    fn pulse(&self);
}

impl KeyboardIrq for vmm_sys_util::eventfd::EventFd {
    fn pulse(&self) {
        let _ = self.write(1);
    }
}

pub struct I8042 {
    requests: RequestSink,
    /// The byte waiting in the output buffer, and whether it is the mouse's.
    output: Option<(u8, bool)>,
    /// The bytes after it, each with whether it is the mouse's.
    queued: VecDeque<(u8, bool)>,
    config: u8,
    status_flags: u8,
    /// A 0x60 command came: the next data byte is the configuration.
    config_write_pending: bool,
    /// A keyboard is plugged in (with its interrupt line).
    keyboard: Option<Arc<dyn KeyboardIrq>>,
    /// The keyboard waits for the argument of this command.
    keyboard_argument: Option<u8>,
    /// The keyboard sends keys (after 0xf4; not after 0xf5).
    scanning: bool,
    /// The LEDs the guest set with 0xed: bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock.
    leds: u8,
    /// A mouse is plugged in (with its interrupt line, IRQ 12).
    mouse: Option<(Ps2Mouse, Arc<dyn KeyboardIrq>)>,
    /// A 0xd4 command came: the next data byte is the mouse's.
    aux_write_pending: bool,
}

/// The controller's output buffer, configuration byte and status flags as saved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub output: Option<u8>,
    pub config: u8,
    pub status_flags: u8,
    pub config_write_pending: bool,
    #[serde(default)]
    pub queued: Vec<u8>,
    #[serde(default)]
    pub keyboard_argument: Option<u8>,
    #[serde(default)]
    pub scanning: bool,
    /// Whether the byte in the output buffer is the mouse's.
    #[serde(default)]
    pub output_from_mouse: bool,
    /// For each queued byte, whether it is the mouse's (empty in older saves: none is).
    #[serde(default)]
    pub queued_from_mouse: Vec<bool>,
    #[serde(default)]
    pub aux_write_pending: bool,
    #[serde(default)]
    pub mouse: Option<Ps2MouseState>,
    #[serde(default)]
    pub leds: u8,
}

impl I8042 {
    pub fn state(&self) -> I8042State {
        I8042State {
            output: self.output.map(|(b, _)| b),
            config: self.config,
            status_flags: self.status_flags,
            config_write_pending: self.config_write_pending,
            queued: self.queued.iter().map(|&(b, _)| b).collect(),
            keyboard_argument: self.keyboard_argument,
            scanning: self.scanning,
            output_from_mouse: self.output.is_some_and(|(_, aux)| aux),
            queued_from_mouse: self.queued.iter().map(|&(_, aux)| aux).collect(),
            aux_write_pending: self.aux_write_pending,
            mouse: self.mouse.as_ref().map(|(m, _)| m.state()),
            leds: self.leds,
        }
    }

    pub fn restore_state(&mut self, state: &I8042State) {
        self.output = state.output.map(|b| (b, state.output_from_mouse));
        self.config = state.config;
        self.status_flags = state.status_flags;
        self.config_write_pending = state.config_write_pending;
        self.queued = state
            .queued
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, state.queued_from_mouse.get(i).copied().unwrap_or(false)))
            .collect();
        self.keyboard_argument = state.keyboard_argument;
        self.scanning = state.scanning;
        self.aux_write_pending = state.aux_write_pending;
        self.leds = state.leds & KBD_LED_MASK;
        if let (Some((mouse, _)), Some(saved)) = (self.mouse.as_mut(), state.mouse.as_ref()) {
            mouse.restore_state(saved);
        }
    }

    pub fn new(requests: RequestSink) -> I8042 {
        I8042 {
            requests,
            output: None,
            queued: VecDeque::new(),
            config: INITIAL_CONFIG,
            status_flags: STATUS_SYSTEM_FLAG,
            config_write_pending: false,
            keyboard: None,
            keyboard_argument: None,
            scanning: true,
            leds: 0,
            mouse: None,
            aux_write_pending: false,
        }
    }

    /// Plugs a mouse into the auxiliary port, which raises `irq` (IRQ 12). Before the guest
    /// runs.
    pub fn attach_mouse(&mut self, irq: Arc<dyn KeyboardIrq>) {
        self.mouse = Some((Ps2Mouse::new(), irq));
    }

    /// Plugs a keyboard in, which raises `irq` (IRQ 1). Before the guest runs.
    pub fn attach_keyboard(&mut self, irq: Arc<dyn KeyboardIrq>) {
        self.keyboard = Some(irq);
    }

    fn status(&self) -> u8 {
        self.status_flags
            | match self.output {
                Some((_, false)) => STATUS_OUTPUT_FULL,
                Some((_, true)) => STATUS_OUTPUT_FULL | STATUS_AUX_DATA,
                None => 0,
            }
    }

    /// Puts a keyboard or controller `byte` behind what waits; raises IRQ 1 if it is the one
    /// now readable.
    fn push(&mut self, byte: u8) {
        self.push_from(byte, false);
    }

    /// Puts `byte` (the mouse's when `aux`) behind what waits; raises its interrupt if it is
    /// the one now readable.
    fn push_from(&mut self, byte: u8, aux: bool) {
        if self.output.is_none() {
            self.output = Some((byte, aux));
            self.interrupt();
        } else if self.queued.len() < QUEUE_LIMIT {
            self.queued.push_back((byte, aux));
        }
    }

    /// IRQ 1 for a keyboard byte, IRQ 12 for a mouse byte, each when the guest enabled it.
    fn interrupt(&self) {
        match self.output {
            Some((_, false)) => {
                if let Some(irq) = &self.keyboard {
                    if self.config & CONFIG_KBD_INTERRUPT != 0 {
                        irq.pulse();
                    }
                }
            }
            Some((_, true)) => {
                if let Some((_, irq)) = &self.mouse {
                    if self.config & CONFIG_AUX_INTERRUPT != 0 {
                        irq.pulse();
                    }
                }
            }
            None => {}
        }
    }

    /// The guest read the output buffer: the next byte moves up.
    fn take_output(&mut self) -> u8 {
        let byte = self.output.take().map(|(b, _)| b).unwrap_or(0);
        if let Some(next) = self.queued.pop_front() {
            self.output = Some(next);
            self.interrupt();
        }
        byte
    }

    /// A byte the guest wrote to the mouse (after 0xd4); its answers queue as the mouse's.
    fn mouse_byte(&mut self, byte: u8) {
        let Some((mouse, _)) = self.mouse.as_mut() else {
            return;
        };
        let mut answer = Vec::new();
        mouse.command(byte, &mut |b| answer.push(b));
        for b in answer {
            self.push_from(b, true);
        }
    }

    /// The pointer moved by (`dx`, `dy`) (`dy` grows upwards) with `buttons` held (bit 0 left,
    /// 1 right, 2 middle): packets for the guest, if a mouse is attached and reporting and its
    /// port enabled.
    pub fn mouse_moved(&mut self, dx: i32, dy: i32, buttons: u8) {
        let aux_off = self.config & CONFIG_AUX_DISABLED != 0;
        let Some((mouse, _)) = self.mouse.as_mut() else {
            return;
        };
        let mut packets = Vec::new();
        mouse.movement(dx, dy, buttons, &mut |b| packets.push(b));
        if aux_off || packets.is_empty() {
            return;
        }
        if self.queued.len() + packets.len() > QUEUE_LIMIT {
            crate::warn_ratelimited!("the guest reads no mouse packets: a move is dropped");
            return;
        }
        for b in packets {
            self.push_from(b, true);
        }
    }

    fn command(&mut self, command: u8) {
        self.status_flags |= STATUS_COMMAND;
        self.config_write_pending = false;
        self.aux_write_pending = false;
        match command {
            CMD_RESET_CPU => (self.requests)(GuestRequest::Reset),
            CMD_SELF_TEST => {
                self.status_flags |= STATUS_SYSTEM_FLAG;
                self.output = Some((SELF_TEST_PASSED, false));
            }
            CMD_KBD_TEST => self.output = Some((interface_test(self.keyboard.is_some()), false)),
            CMD_AUX_TEST => self.output = Some((interface_test(self.mouse.is_some()), false)),
            CMD_READ_CONFIG => self.output = Some((self.config, false)),
            CMD_WRITE_AUX => self.aux_write_pending = true,
            CMD_WRITE_CONFIG => self.config_write_pending = true,
            CMD_KBD_DISABLE => self.config |= CONFIG_KBD_DISABLED,
            CMD_KBD_ENABLE => self.config &= !CONFIG_KBD_DISABLED,
            CMD_AUX_DISABLE => self.config |= CONFIG_AUX_DISABLED,
            CMD_AUX_ENABLE => self.config &= !CONFIG_AUX_DISABLED,
            // Output port writes, pulses other than reset, the mouse port: nothing attached
            // changes.
            _ => {}
        }
    }

    /// A byte the guest wrote to the keyboard.
    fn keyboard_byte(&mut self, byte: u8) {
        if self.keyboard.is_none() {
            return;
        }
        if let Some(command) = self.keyboard_argument.take() {
            if command == KBD_SET_LEDS {
                self.leds = byte & KBD_LED_MASK;
            }
            self.push(KBD_ACK);
            if command == KBD_SCANCODE_SET && byte == 0 {
                // "Which set?": set 2, as the controller translates it.
                self.push(0x41);
            }
            return;
        }
        match byte {
            KBD_RESET => {
                self.queued.clear();
                self.output = None;
                self.scanning = true;
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_PASSED);
            }
            KBD_GET_ID => {
                self.push(KBD_ACK);
                self.push(KBD_ID[0]);
                self.push(KBD_ID[1]);
            }
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_SET_RATE => {
                self.keyboard_argument = Some(byte);
                self.push(KBD_ACK);
            }
            KBD_ENABLE => {
                self.scanning = true;
                self.push(KBD_ACK);
            }
            KBD_RESET_DISABLE => {
                self.scanning = false;
                self.push(KBD_ACK);
            }
            _ => self.push(KBD_ACK),
        }
    }

    /// Scan codes of a key press or release (set 1, with their 0xe0 prefixes), if a keyboard is
    /// attached and sending.
    pub fn key(&mut self, scancodes: &[u8]) {
        if self.keyboard.is_none() || !self.scanning || self.config & CONFIG_KBD_DISABLED != 0 {
            return;
        }
        if self.queued.len() + scancodes.len() > QUEUE_LIMIT {
            crate::warn_ratelimited!("the guest reads no keys: a key is dropped");
            return;
        }
        for &code in scancodes {
            self.push(code);
        }
    }
}

/// An interface test's result: a device is plugged in, or the clock line is stuck (none is).
fn interface_test(device: bool) -> u8 {
    if device {
        INTERFACE_OK
    } else {
        INTERFACE_NO_DEVICE
    }
}

/// The VMM's side of the mouse: an absolute pointer (a VNC client's) turned into moves.
#[derive(Clone)]
pub struct MouseHandle {
    i8042: Arc<Mutex<I8042>>,
    /// The pointer's last position, from which the next move is counted.
    last: Arc<Mutex<Option<(u16, u16)>>>,
}

impl MouseHandle {
    pub(crate) fn new(i8042: Arc<Mutex<I8042>>) -> MouseHandle {
        MouseHandle {
            i8042,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The pointer is at (`x`, `y`) on the screen (y grows downwards) with `buttons` held (bit
    /// 0 left, 1 right, 2 middle): the move since the last position reaches the guest. The
    /// first position only sets where moves count from.
    pub fn pointer(&self, x: u16, y: u16, buttons: u8) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (dx, dy) = match *last {
            Some((lx, ly)) => (i32::from(x) - i32::from(lx), i32::from(ly) - i32::from(y)),
            None => (0, 0),
        };
        *last = Some((x, y));
        self.i8042
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mouse_moved(dx, dy, buttons);
    }
}

/// The VMM's side of the keyboard: key presses and releases for the guest.
#[derive(Clone)]
pub struct KeyboardHandle(Arc<Mutex<I8042>>);

impl KeyboardHandle {
    pub(crate) fn new(i8042: Arc<Mutex<I8042>>) -> KeyboardHandle {
        KeyboardHandle(i8042)
    }

    /// Sends set-1 scan codes (a make or break code with its 0xe0 prefix).
    pub fn key(&self, scancodes: &[u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).key(scancodes);
    }

    /// The LEDs the guest last set (0xed): bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock.
    pub fn leds(&self) -> u8 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).leds
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == COMMAND_OFFSET {
            self.status()
        } else {
            self.take_output()
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
            } else if std::mem::take(&mut self.aux_write_pending) {
                // Writing to the mouse enables its interface, as on real controllers.
                self.config &= !CONFIG_AUX_DISABLED;
                self.mouse_byte(byte);
            } else {
                // Writing to the keyboard enables its interface, as on real controllers.
                self.config &= !CONFIG_KBD_DISABLED;
                self.keyboard_byte(byte);
            }
        }
    }
}

/// The controller with a keyboard and a mouse on arbitrary sequences of guest port accesses,
/// keys and pointer moves (cargo fuzz target `i8042_ports`): 3-byte records, the first byte's
/// low two bits choosing a write (bit 2: the command port) or read of a port, a pointer move
/// (the next two bytes signed, times 4, bits 5..7 the buttons), or a key.
pub fn fuzz_input(data: &[u8]) {
    struct NoIrq;
    impl KeyboardIrq for NoIrq {
        fn pulse(&self) {}
    }
    let mut i8042 = I8042::new(Arc::new(|_| {}));
    i8042.attach_keyboard(Arc::new(NoIrq));
    i8042.attach_mouse(Arc::new(NoIrq));
    for record in data.chunks_exact(3) {
        let (op, a, b) = (record[0], record[1], record[2]);
        let port = if op & 4 != 0 { COMMAND_OFFSET } else { 0 };
        match op & 3 {
            0 => i8042.write(port, &[a]),
            1 => {
                let mut byte = [0u8];
                i8042.read(port, &mut byte);
            }
            2 => i8042.mouse_moved(i32::from(a as i8) * 4, i32::from(b as i8) * 4, op >> 5),
            _ => i8042.key(&[a, b]),
        }
        assert!(i8042.queued.len() <= QUEUE_LIMIT);
    }
    let state = i8042.state();
    let mut other = I8042::new(Arc::new(|_| {}));
    other.attach_mouse(Arc::new(NoIrq));
    other.restore_state(&state);
    assert_eq!(other.state(), state);
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

    struct CountingIrq(std::sync::atomic::AtomicUsize);
    impl KeyboardIrq for CountingIrq {
        fn pulse(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// SeaBIOS's `ps2_keyboard_setup`, then keys.
    #[test]
    fn a_keyboard_answers_seabios_setup_and_sends_keys_with_irq_1() {
        let (mut dev, _) = controller();
        let irq = Arc::new(CountingIrq(Default::default()));
        dev.attach_keyboard(irq.clone());
        dev.write(4, &[CMD_KBD_DISABLE]);
        dev.write(4, &[CMD_AUX_DISABLE]);
        dev.write(4, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, 0), SELF_TEST_PASSED);
        dev.write(4, &[CMD_KBD_TEST]);
        assert_eq!(read(&mut dev, 0), INTERFACE_OK);
        // Interrupts off while it talks to the keyboard.
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[0x30]);
        dev.write(0, &[KBD_RESET]);
        assert_eq!(read(&mut dev, 0), KBD_ACK);
        assert_ne!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, 0), KBD_SELF_TEST_PASSED);
        dev.write(0, &[KBD_RESET_DISABLE]);
        assert_eq!(read(&mut dev, 0), KBD_ACK);
        dev.write(0, &[KBD_SCANCODE_SET]);
        assert_eq!(read(&mut dev, 0), KBD_ACK);
        dev.write(0, &[2]);
        assert_eq!(read(&mut dev, 0), KBD_ACK);
        dev.key(&[0x1e]);
        assert_eq!(
            read(&mut dev, 4) & STATUS_OUTPUT_FULL,
            0,
            "no keys while disabled"
        );
        dev.write(0, &[KBD_GET_ID]);
        assert_eq!(
            [read(&mut dev, 0), read(&mut dev, 0), read(&mut dev, 0)],
            [KBD_ACK, 0xab, 0x41]
        );
        dev.write(0, &[KBD_ENABLE]);
        assert_eq!(read(&mut dev, 0), KBD_ACK);
        assert_eq!(
            irq.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "interrupts were off"
        );
        // Keyboard interrupt on, translation on: 'a' pressed and released.
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[0x61]);
        dev.key(&[0x1e]);
        dev.key(&[0x9e]);
        assert_eq!(irq.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(read(&mut dev, 0), 0x1e);
        assert_eq!(
            irq.0.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the next byte raises it again"
        );
        assert_eq!(read(&mut dev, 0), 0x9e);
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        // Echo and LEDs.
        dev.write(0, &[KBD_ECHO]);
        assert_eq!(read(&mut dev, 0), KBD_ECHO);
        dev.write(0, &[KBD_SET_LEDS]);
        dev.write(0, &[0xff]);
        assert_eq!([read(&mut dev, 0), read(&mut dev, 0)], [KBD_ACK, KBD_ACK]);
        assert_eq!(dev.leds, 0b111, "only the three LED bits are kept");
        dev.write(0, &[KBD_SET_LEDS]);
        dev.write(0, &[0b100]);
        assert_eq!(dev.leds, 0b100, "Caps Lock alone");
        assert_eq!(dev.state().leds, 0b100, "saved with the controller");
        // A scan-code-set argument is not an LED byte.
        dev.write(0, &[KBD_SCANCODE_SET]);
        dev.write(0, &[0x02]);
        assert_eq!(dev.leds, 0b100);
    }

    #[test]
    fn a_guest_that_reads_nothing_loses_keys_but_not_memory() {
        let (mut dev, _) = controller();
        dev.attach_keyboard(Arc::new(CountingIrq(Default::default())));
        for _ in 0..10_000 {
            dev.key(&[0xe0, 0x48]);
        }
        assert!(dev.queued.len() <= QUEUE_LIMIT);
        let state = dev.state();
        let (mut other, _) = controller();
        other.restore_state(&state);
        assert_eq!(other.state(), state);
    }

    /// SeaBIOS's int 15h C2 path: the aux test, 0xd4 commands answered as the mouse's (status
    /// bit 5) with IRQ 12 once the guest enables it, and packets from the pointer.
    #[test]
    fn a_mouse_answers_through_the_aux_port_with_irq_12() {
        let (mut dev, _) = controller();
        dev.write(4, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut dev, 0), INTERFACE_NO_DEVICE, "no mouse yet");
        let (kbd, aux) = (
            Arc::new(CountingIrq(Default::default())),
            Arc::new(CountingIrq(Default::default())),
        );
        dev.attach_keyboard(kbd.clone());
        dev.attach_mouse(aux.clone());
        dev.write(4, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut dev, 0), INTERFACE_OK);
        // Interrupts on for both ports (config 0x03, translation on).
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[0x43]);
        // Reset through 0xd4: ACK, self-test passed, ID, each marked as the mouse's.
        dev.write(4, &[CMD_WRITE_AUX]);
        dev.write(0, &[0xff]);
        let mut got = Vec::new();
        while read(&mut dev, 4) & STATUS_OUTPUT_FULL != 0 {
            assert_ne!(read(&mut dev, 4) & STATUS_AUX_DATA, 0);
            got.push(read(&mut dev, 0));
        }
        assert_eq!(got, [0xfa, 0xaa, 0x00]);
        assert_eq!(
            aux.0.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "IRQ 12 per byte"
        );
        assert_eq!(kbd.0.load(std::sync::atomic::Ordering::SeqCst), 0, "no IRQ 1");
        // A byte without 0xd4 goes to the keyboard.
        dev.write(0, &[0xf2]);
        assert_eq!(read(&mut dev, 4) & STATUS_AUX_DATA, 0);
        assert_eq!(
            [read(&mut dev, 0), read(&mut dev, 0), read(&mut dev, 0)],
            [0xfa, 0xab, 0x41]
        );
        // Enable reporting; a move arrives as a packet.
        dev.write(4, &[CMD_WRITE_AUX]);
        dev.write(0, &[0xf4]);
        assert_eq!(read(&mut dev, 0), 0xfa);
        dev.mouse_moved(50, -20, 0);
        assert_eq!(
            [read(&mut dev, 0), read(&mut dev, 0), read(&mut dev, 0)],
            [0x28, 50, 0xec]
        );
        // With the aux port disabled, moves are dropped.
        dev.write(4, &[CMD_AUX_DISABLE]);
        dev.mouse_moved(1, 1, 0);
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        // Saved and restored with the mouse's settings and the bytes' owners.
        dev.write(4, &[CMD_AUX_ENABLE]);
        dev.mouse_moved(1, 1, 0);
        let state = dev.state();
        assert!(state.output_from_mouse);
        assert_eq!(state.queued_from_mouse, [true, true]);
        let (mut other, _) = controller();
        other.attach_mouse(Arc::new(CountingIrq(Default::default())));
        other.restore_state(&state);
        assert_eq!(other.state(), state);
        assert_ne!(read(&mut other, 4) & STATUS_AUX_DATA, 0);
    }

    #[test]
    fn the_handle_turns_absolute_positions_into_moves() {
        let (mut dev, _) = controller();
        dev.attach_mouse(Arc::new(CountingIrq(Default::default())));
        dev.write(4, &[CMD_WRITE_AUX]);
        dev.write(0, &[0xf4]);
        let shared = Arc::new(Mutex::new(dev));
        let handle = MouseHandle::new(shared.clone());
        let bytes = || {
            let mut dev = shared.lock().unwrap();
            let mut out = Vec::new();
            while read(&mut dev, 4) & STATUS_OUTPUT_FULL != 0 {
                out.push(read(&mut dev, 0));
            }
            out
        };
        assert_eq!(bytes(), [0xfa]);
        handle.pointer(10, 10, 0);
        assert!(bytes().is_empty(), "the first position only sets the origin");
        // Right 50, down 20 on the screen: PS/2's Y grows upwards.
        handle.pointer(60, 30, 0);
        assert_eq!(bytes(), [0x28, 50, 0xec]);
        handle.pointer(60, 30, 1);
        assert_eq!(bytes(), [0x09, 0, 0], "a left press");
    }

    #[test]
    fn fuzz_entry_survives_pseudo_random_input() {
        let mut x: u32 = 0x1234_5678;
        let data: Vec<u8> = (0..30_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        fuzz_input(&data);
    }
}
