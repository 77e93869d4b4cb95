//! The PS/2 mouse behind the i8042's auxiliary port: the commands SeaBIOS's int 15h C2 services
//! and Linux's psmouse send (reset, identify, status, sample rate, resolution, scaling, stream
//! mode, enable and disable reporting), answered as QEMU's mouse does, and 3-byte movement
//! packets (buttons and sign bits, X, Y; Y grows upwards) while reporting is on. The controller
//! (`i8042`) carries its bytes and raises IRQ 12.

/// Commands and answers.
const SET_SCALING_1_1: u8 = 0xe6;
const SET_SCALING_2_1: u8 = 0xe7;
const SET_RESOLUTION: u8 = 0xe8;
const STATUS_REQUEST: u8 = 0xe9;
const SET_STREAM_MODE: u8 = 0xea;
const READ_DATA: u8 = 0xeb;
const SET_REMOTE_MODE: u8 = 0xf0;
const GET_ID: u8 = 0xf2;
const SET_SAMPLE_RATE: u8 = 0xf3;
const ENABLE_REPORTING: u8 = 0xf4;
const DISABLE_REPORTING: u8 = 0xf5;
const SET_DEFAULTS: u8 = 0xf6;
const RESET: u8 = 0xff;
pub const ACK: u8 = 0xfa;
const SELF_TEST_PASSED: u8 = 0xaa;
/// A standard PS/2 mouse, no wheel.
const MOUSE_ID: u8 = 0x00;

const DEFAULT_SAMPLE_RATE: u8 = 100;
/// 4 counts per millimetre.
const DEFAULT_RESOLUTION: u8 = 2;

/// First packet byte: always-one bit, sign bits.
const PACKET_ALWAYS_ONE: u8 = 1 << 3;
const PACKET_X_NEGATIVE: u8 = 1 << 4;
const PACKET_Y_NEGATIVE: u8 = 1 << 5;
/// Status byte: remote mode, reporting on, 2:1 scaling.
const STATUS_REMOTE: u8 = 1 << 6;
const STATUS_REPORTING: u8 = 1 << 5;
const STATUS_SCALING_2_1: u8 = 1 << 4;

/// Buttons, as the first packet byte has them.
pub const BUTTON_LEFT: u8 = 1 << 0;
pub const BUTTON_RIGHT: u8 = 1 << 1;
pub const BUTTON_MIDDLE: u8 = 1 << 2;

/// The mouse's settings as saved.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Ps2MouseState {
    pub reporting: bool,
    pub argument: Option<u8>,
    pub sample_rate: u8,
    pub resolution: u8,
    pub scaling_2_1: bool,
    pub remote: bool,
    pub buttons: u8,
}

#[derive(Debug, Clone)]
pub struct Ps2Mouse {
    state: Ps2MouseState,
}

impl Default for Ps2Mouse {
    fn default() -> Self {
        Ps2Mouse::new()
    }
}

impl Ps2Mouse {
    /// A mouse as after power-on: reporting off, until the guest enables it.
    pub fn new() -> Ps2Mouse {
        let mut mouse = Ps2Mouse {
            state: Ps2MouseState::default(),
        };
        mouse.set_defaults();
        mouse
    }

    pub fn state(&self) -> Ps2MouseState {
        self.state.clone()
    }

    pub fn restore_state(&mut self, state: &Ps2MouseState) {
        self.state = state.clone();
    }

    fn set_defaults(&mut self) {
        self.state.reporting = false;
        self.state.argument = None;
        self.state.sample_rate = DEFAULT_SAMPLE_RATE;
        self.state.resolution = DEFAULT_RESOLUTION;
        self.state.scaling_2_1 = false;
        self.state.remote = false;
    }

    /// Whether movement makes packets now.
    pub fn reporting(&self) -> bool {
        self.state.reporting && !self.state.remote
    }

    /// A byte the guest sent the mouse (after the controller's 0xd4); its answer goes to `out`.
    pub fn command(&mut self, byte: u8, out: &mut dyn FnMut(u8)) {
        if let Some(command) = self.state.argument.take() {
            match command {
                SET_SAMPLE_RATE => self.state.sample_rate = byte,
                _ => self.state.resolution = byte.min(3),
            }
            out(ACK);
            return;
        }
        out(ACK);
        match byte {
            SET_SCALING_1_1 => self.state.scaling_2_1 = false,
            SET_SCALING_2_1 => self.state.scaling_2_1 = true,
            SET_RESOLUTION | SET_SAMPLE_RATE => self.state.argument = Some(byte),
            STATUS_REQUEST => {
                let mut status = self.state.buttons & 0x07;
                if self.state.remote {
                    status |= STATUS_REMOTE;
                }
                if self.state.reporting {
                    status |= STATUS_REPORTING;
                }
                if self.state.scaling_2_1 {
                    status |= STATUS_SCALING_2_1;
                }
                out(status);
                out(self.state.resolution);
                out(self.state.sample_rate);
            }
            SET_STREAM_MODE => self.state.remote = false,
            SET_REMOTE_MODE => self.state.remote = true,
            READ_DATA => {
                for b in packet(0, 0, self.state.buttons) {
                    out(b);
                }
            }
            GET_ID => out(MOUSE_ID),
            ENABLE_REPORTING => self.state.reporting = true,
            DISABLE_REPORTING => self.state.reporting = false,
            SET_DEFAULTS => {
                let buttons = self.state.buttons;
                self.set_defaults();
                self.state.buttons = buttons;
            }
            RESET => {
                self.set_defaults();
                out(SELF_TEST_PASSED);
                out(MOUSE_ID);
            }
            // Wrap mode, echo, the rest: acknowledged, nothing changes.
            _ => {}
        }
    }

    /// The pointer moved by (`dx`, `dy`) counts (`dy` grows upwards) with `buttons` held: the
    /// packets that say so while reporting is on (a move beyond a packet's ±255 is split),
    /// none otherwise. The buttons are remembered either way.
    pub fn movement(&mut self, mut dx: i32, mut dy: i32, buttons: u8, out: &mut dyn FnMut(u8)) {
        let buttons = buttons & 0x07;
        let changed = buttons != self.state.buttons;
        self.state.buttons = buttons;
        if !self.reporting() || (dx == 0 && dy == 0 && !changed) {
            return;
        }
        loop {
            let (x, y) = (dx.clamp(-255, 255), dy.clamp(-255, 255));
            for b in packet(x, y, buttons) {
                out(b);
            }
            dx -= x;
            dy -= y;
            if dx == 0 && dy == 0 {
                break;
            }
        }
    }
}

/// One 3-byte packet: buttons, sign bits, always-one; then X and Y as 9-bit two's complement
/// with their sign bits in the first byte.
fn packet(dx: i32, dy: i32, buttons: u8) -> [u8; 3] {
    let mut first = PACKET_ALWAYS_ONE | (buttons & 0x07);
    if dx < 0 {
        first |= PACKET_X_NEGATIVE;
    }
    if dy < 0 {
        first |= PACKET_Y_NEGATIVE;
    }
    [first, dx as u8, dy as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(mouse: &mut Ps2Mouse, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            mouse.command(b, &mut |x| out.push(x));
        }
        out
    }

    fn moved(mouse: &mut Ps2Mouse, dx: i32, dy: i32, buttons: u8) -> Vec<u8> {
        let mut out = Vec::new();
        mouse.movement(dx, dy, buttons, &mut |x| out.push(x));
        out
    }

    #[test]
    fn seabios_int15_c2_setup_and_linux_psmouse_probe_are_answered() {
        let mut m = Ps2Mouse::new();
        // C205h (initialize): reset.
        assert_eq!(send(&mut m, &[RESET]), [ACK, SELF_TEST_PASSED, MOUSE_ID]);
        // psmouse: get ID, set resolution 3, sample rate 200/100/80 (the IntelliMouse knock:
        // the ID stays 0, so no wheel), status.
        assert_eq!(send(&mut m, &[GET_ID]), [ACK, MOUSE_ID]);
        assert_eq!(send(&mut m, &[SET_RESOLUTION, 3]), [ACK, ACK]);
        assert_eq!(
            send(
                &mut m,
                &[SET_SAMPLE_RATE, 200, SET_SAMPLE_RATE, 100, SET_SAMPLE_RATE, 80]
            ),
            [ACK; 6]
        );
        assert_eq!(send(&mut m, &[GET_ID]), [ACK, MOUSE_ID]);
        assert_eq!(
            send(&mut m, &[SET_SCALING_2_1, STATUS_REQUEST]),
            [ACK, ACK, STATUS_SCALING_2_1, 3, 80]
        );
        // C200h BH=1 (enable).
        assert_eq!(send(&mut m, &[ENABLE_REPORTING]), [ACK]);
        assert_eq!(
            send(&mut m, &[STATUS_REQUEST]),
            [ACK, STATUS_REPORTING | STATUS_SCALING_2_1, 3, 80]
        );
        assert_eq!(
            send(&mut m, &[SET_DEFAULTS, STATUS_REQUEST]),
            [ACK, ACK, 0, 2, 100]
        );
    }

    #[test]
    fn movement_makes_packets_only_while_reporting() {
        let mut m = Ps2Mouse::new();
        assert!(
            moved(&mut m, 5, 5, 0).is_empty(),
            "reporting is off after power-on"
        );
        send(&mut m, &[ENABLE_REPORTING]);
        // Right and down (negative Y): X sign clear, Y sign set.
        assert_eq!(moved(&mut m, 50, -20, 0), [0x28, 50, 0xec]);
        assert_eq!(moved(&mut m, -1, 1, BUTTON_LEFT), [0x19, 0xff, 1]);
        assert_eq!(moved(&mut m, 0, 0, BUTTON_LEFT), [] as [u8; 0], "nothing changed");
        assert_eq!(moved(&mut m, 0, 0, 0), [0x08, 0, 0], "the release");
        // A long move is split into packets of at most 255.
        assert_eq!(moved(&mut m, 300, 0, 0), [0x08, 255, 0, 0x08, 45, 0]);
        send(&mut m, &[DISABLE_REPORTING]);
        assert!(moved(&mut m, 5, 5, BUTTON_RIGHT).is_empty());
        assert_eq!(
            send(&mut m, &[READ_DATA]),
            [ACK, 0x08 | BUTTON_RIGHT, 0, 0],
            "buttons kept"
        );
    }

    #[test]
    fn remote_mode_stops_the_stream() {
        let mut m = Ps2Mouse::new();
        send(&mut m, &[ENABLE_REPORTING, SET_REMOTE_MODE]);
        assert!(moved(&mut m, 5, 5, 0).is_empty());
        send(&mut m, &[SET_STREAM_MODE]);
        assert_eq!(moved(&mut m, 5, 5, 0), [0x08, 5, 5]);
    }
}
