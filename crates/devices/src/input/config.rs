//! The configuration space (`struct virtio_input_config`): the driver writes `select` and
//! `subsel`, then reads `size` and that many bytes of the answer. What each device answers is
//! fixed by its kind: its name, IDs, and the event codes it may send.

use super::event::{
    ABS_X, ABS_Y, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, EV_ABS, EV_KEY, EV_LED, EV_REL, EV_REP, LED_CAPSL,
    LED_NUML, LED_SCROLLL, REL_HWHEEL, REL_WHEEL,
};
use super::keys::all_keys;

/// Bytes of the configuration space: select, subsel, size, 5 reserved, a 128-byte answer.
pub const CONFIG_SIZE: usize = 136;
const ANSWER_OFFSET: usize = 8;
const ANSWER_SIZE: usize = 128;

/// What the driver asks (`select`).
const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

/// The tablet's axes run from 0 to this, whatever the screen's size (as QEMU's tablet).
pub const TABLET_MAX: u32 = 0x7fff;

/// The device IDs: `BUS_VIRTUAL` and QEMU's vendor and product numbers for its virtio input
/// devices, so a guest's rules for those match these.
const BUS_VIRTUAL: u16 = 0x06;
const VENDOR: u16 = 0x0627;
const VERSION: u16 = 0x0001;

/// Which input device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A keyboard: every key of a 105-key PC keyboard, auto-repeat by the guest, three LEDs.
    Keyboard,
    /// An absolute pointer: X and Y from 0 to [`TABLET_MAX`], three buttons and two wheels.
    Tablet,
}

impl InputKind {
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Keyboard => "virtkit keyboard",
            InputKind::Tablet => "virtkit tablet",
        }
    }

    fn product(self) -> u16 {
        match self {
            InputKind::Keyboard => 0x0001,
            InputKind::Tablet => 0x0003,
        }
    }

    /// The codes of event type `ev` this device sends.
    fn codes(self, ev: u8) -> Vec<u16> {
        match (self, u16::from(ev)) {
            (InputKind::Keyboard, EV_KEY) => all_keys().collect(),
            (InputKind::Keyboard, EV_LED) => vec![LED_NUML, LED_CAPSL, LED_SCROLLL],
            (InputKind::Tablet, EV_KEY) => vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE],
            (InputKind::Tablet, EV_REL) => vec![REL_HWHEEL, REL_WHEEL],
            (InputKind::Tablet, EV_ABS) => vec![ABS_X, ABS_Y],
            _ => Vec::new(),
        }
    }
}

/// The configuration space of one device: what the driver selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputConfig {
    kind: InputKind,
    pub select: u8,
    pub subsel: u8,
}

/// A bitmap of `codes`, as long as its last set byte.
fn bitmap(codes: &[u16]) -> Vec<u8> {
    let mut bytes = vec![0u8; ANSWER_SIZE];
    for &code in codes {
        if let Some(byte) = bytes.get_mut(usize::from(code / 8)) {
            *byte |= 1 << (code % 8);
        }
    }
    let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
    bytes.truncate(len);
    bytes
}

impl InputConfig {
    pub fn new(kind: InputKind) -> InputConfig {
        InputConfig {
            kind,
            select: 0,
            subsel: 0,
        }
    }

    /// The answer to the current `select`/`subsel` (empty: nothing there).
    fn answer(&self) -> Vec<u8> {
        let kind = self.kind;
        match (self.select, self.subsel) {
            (CFG_ID_NAME, 0) => kind.name().as_bytes().to_vec(),
            (CFG_ID_SERIAL, 0) => Vec::new(),
            (CFG_ID_DEVIDS, 0) => [BUS_VIRTUAL, VENDOR, kind.product(), VERSION]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            (CFG_PROP_BITS, 0) => Vec::new(),
            // The size alone says the keyboard repeats: the guest's input core does it.
            (CFG_EV_BITS, ev) if u16::from(ev) == EV_REP && kind == InputKind::Keyboard => vec![0],
            (CFG_EV_BITS, ev) => bitmap(&kind.codes(ev)),
            (CFG_ABS_INFO, axis)
                if kind == InputKind::Tablet && [ABS_X, ABS_Y].contains(&u16::from(axis)) =>
            {
                // min, max, fuzz, flat, resolution
                [0, TABLET_MAX, 0, 0, 0]
                    .iter()
                    .flat_map(|v: &u32| v.to_le_bytes())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// The whole configuration space as the driver sees it now.
    pub fn bytes(&self) -> [u8; CONFIG_SIZE] {
        let answer = self.answer();
        let len = answer.len().min(ANSWER_SIZE);
        let mut bytes = [0u8; CONFIG_SIZE];
        bytes[0] = self.select;
        bytes[1] = self.subsel;
        bytes[2] = len as u8;
        bytes[ANSWER_OFFSET..ANSWER_OFFSET + len].copy_from_slice(&answer[..len]);
        bytes
    }

    /// A driver's write: only `select` (offset 0) and `subsel` (1) are writable.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = byte,
                Some(1) => self.subsel = byte,
                _ => {}
            }
        }
    }
}
