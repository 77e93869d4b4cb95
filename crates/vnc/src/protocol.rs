//! RFB wire formats: the pixel format, the client-to-server messages and their bounded parser
//! ([`ClientReader`]), and the constants of the server's messages.

use std::io::{self, Read};

use crate::error::ProtocolError;

/// Encoding numbers the server knows (RFC 6143 section 7.7 and the community registry).
pub mod encoding {
    /// Raw pixels.
    pub const RAW: i32 = 0;
    /// Copy a rectangle from elsewhere on the screen (not sent by this server).
    pub const COPY_RECT: i32 = 1;
    /// zlib-compressed run-length tiles.
    pub const ZRLE: i32 = 16;
    /// Pseudo-encoding: the framebuffer changed size.
    pub const DESKTOP_SIZE: i32 = -223;
    /// Pseudo-encoding: the client can send QEMU extended key events.
    pub const QEMU_EXTENDED_KEY_EVENT: i32 = -258;
    /// Pseudo-encoding (QEMU's): the keyboard's LEDs, one byte after the rectangle header:
    /// bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock.
    pub const LED_STATE: i32 = -261;
}

/// Longest ClientCutText the server accepts (and throws away); longer closes the connection.
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// Most encodings a SetEncodings may list: its `u16` count allows 65535 (262 KB); this bounds it
/// further and closes the connection above it.
pub const MAX_ENCODINGS: u16 = 1024;
/// The reader's buffer: the longest message it must hold whole (a SetEncodings of
/// [`MAX_ENCODINGS`]), plus room to read ahead.
const BUFFER_CAPACITY: usize = 4 + 4 * MAX_ENCODINGS as usize + 4096;

/// An RFB pixel format (RFC 6143 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits per pixel on the wire: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits in a pixel.
    pub depth: u8,
    /// Multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// True colour (the only kind this server serves; colour maps are refused).
    pub true_colour: bool,
    /// Largest red value (2^n - 1).
    pub red_max: u16,
    /// Largest green value.
    pub green_max: u16,
    /// Largest blue value.
    pub blue_max: u16,
    /// Shift of red in the pixel.
    pub red_shift: u8,
    /// Shift of green.
    pub green_shift: u8,
    /// Shift of blue.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's own format: 32 bpp, depth 24, little-endian XRGB (see
    /// [`Framebuffer`](crate::Framebuffer)).
    pub const XRGB8888: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// The 16 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Reads the 16 bytes of the wire format (not yet checked, see [`PixelFormat::validate`]).
    pub fn from_bytes(b: &[u8; 16]) -> PixelFormat {
        PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }

    /// Whether the server can produce pixels in this format: true colour at 8, 16 or 32 bpp,
    /// every channel's maximum and shift inside the pixel.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if !matches!(self.bits_per_pixel, 8 | 16 | 32) {
            return Err(ProtocolError::BadPixelFormat(
                "bits per pixel must be 8, 16 or 32",
            ));
        }
        if !self.true_colour {
            return Err(ProtocolError::BadPixelFormat(
                "colour-map formats are not supported",
            ));
        }
        let bits = u32::from(self.bits_per_pixel);
        for (max, shift) in [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ] {
            let width = 16 - max.leading_zeros();
            if max == 0 || u32::from(shift) + width > bits {
                return Err(ProtocolError::BadPixelFormat(
                    "a colour channel lies outside the pixel",
                ));
            }
        }
        Ok(())
    }

    /// Bytes per pixel on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// The client's pixel value of an XRGB pixel (any byte order; see [`PixelFormat::put`]).
    pub fn convert(&self, xrgb: u32) -> u32 {
        if self.red_max == 255 && self.green_max == 255 && self.blue_max == 255 {
            let (r, g, b) = ((xrgb >> 16) & 0xff, (xrgb >> 8) & 0xff, xrgb & 0xff);
            return (r << self.red_shift) | (g << self.green_shift) | (b << self.blue_shift);
        }
        let scale = |value: u32, max: u16| (value * u32::from(max) + 127) / 255;
        (scale((xrgb >> 16) & 0xff, self.red_max) << self.red_shift)
            | (scale((xrgb >> 8) & 0xff, self.green_max) << self.green_shift)
            | (scale(xrgb & 0xff, self.blue_max) << self.blue_shift)
    }

    /// Appends the pixel value in the client's byte order and size.
    pub fn put(&self, value: u32, out: &mut Vec<u8>) {
        match (self.bits_per_pixel, self.big_endian) {
            (32, false) => out.extend_from_slice(&value.to_le_bytes()),
            (32, true) => out.extend_from_slice(&value.to_be_bytes()),
            (16, false) => out.extend_from_slice(&(value as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(value as u16).to_be_bytes()),
            _ => out.push(value as u8),
        }
    }
}

/// A message from the client, once its whole length was read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Type 0: the pixel format the client wants (validated).
    SetPixelFormat(PixelFormat),
    /// Type 2: the encodings the client understands, in its order of preference.
    SetEncodings(Vec<i32>),
    /// Type 3: please send this region, only what changed if `incremental`.
    FramebufferUpdateRequest {
        /// Only the changes since the last update.
        incremental: bool,
        /// Left column.
        x: u16,
        /// Top row.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// Type 4: a key by keysym.
    KeyEvent {
        /// Pressed.
        down: bool,
        /// X11 keysym.
        keysym: u32,
    },
    /// Type 5: the pointer.
    PointerEvent {
        /// Buttons held.
        buttons: u8,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
    },
    /// Type 6: the client's clipboard text; its length only, the text is skipped.
    ClientCutText {
        /// Length of the text thrown away.
        length: u32,
    },
    /// Type 255 subtype 0: QEMU's extended key event (keysym and XT scancode).
    QemuExtendedKeyEvent {
        /// Pressed.
        down: bool,
        /// X11 keysym.
        keysym: u32,
        /// XT scancode (0xE0-prefixed keys with the high bit set).
        scancode: u32,
    },
}

/// Reads client messages from a byte stream with bounded memory: a fixed buffer holds at most
/// one message plus some read-ahead, and ClientCutText's text is skipped as it arrives.
#[derive(Debug)]
pub struct ClientReader {
    buffer: Vec<u8>,
    /// Bytes of cut text still to throw away.
    skip: u64,
}

impl Default for ClientReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientReader {
    /// An empty reader.
    pub fn new() -> Self {
        ClientReader {
            buffer: Vec::with_capacity(BUFFER_CAPACITY),
            skip: 0,
        }
    }

    /// Reads once from `source` into the free part of the buffer. `Ok(0)` is the end of the
    /// stream. Never grows the buffer past its capacity.
    pub fn read_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        let start = self.buffer.len();
        let room = BUFFER_CAPACITY - start;
        if room == 0 {
            // Cannot happen: `next` always consumes a full buffer's first message.
            return Err(io::Error::other("client message buffer full"));
        }
        self.buffer.resize(BUFFER_CAPACITY, 0);
        let result = source.read(&mut self.buffer[start..]);
        let read = *result.as_ref().unwrap_or(&0);
        self.buffer.truncate(start + read);
        result
    }

    /// Appends bytes (tests and the fuzz entry); returns how many fitted.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(BUFFER_CAPACITY - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..take]);
        take
    }

    /// The next whole message in the buffer, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<ClientMessage>, ProtocolError> {
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(self.buffer.len());
            self.buffer.drain(..n);
            self.skip -= n as u64;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        match parse_client_message(&self.buffer)? {
            Parsed::Incomplete => Ok(None),
            Parsed::Message(message, used) => {
                self.buffer.drain(..used);
                if let ClientMessage::ClientCutText { length } = message {
                    self.skip = u64::from(length);
                }
                Ok(Some(message))
            }
        }
    }
}

/// What [`parse_client_message`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole message yet.
    Incomplete,
    /// A message and how many bytes it took (a ClientCutText's text not included).
    Message(ClientMessage, usize),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the message at the start of `buf`. Every length is checked before it is used.
pub fn parse_client_message(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some(&kind) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    let fixed = match kind {
        0 => 20,
        2 => 4,
        3 => 10,
        4 => 8,
        5 => 6,
        6 => 8,
        255 => 2,
        other => return Err(ProtocolError::UnknownMessage(other)),
    };
    if buf.len() < fixed {
        return Ok(Parsed::Incomplete);
    }
    let message = match kind {
        0 => {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&buf[4..20]);
            let format = PixelFormat::from_bytes(&bytes);
            format.validate()?;
            ClientMessage::SetPixelFormat(format)
        }
        2 => {
            let count = be16(buf, 2);
            if count > MAX_ENCODINGS {
                return Err(ProtocolError::TooManyEncodings(count));
            }
            let total = 4 + 4 * usize::from(count);
            if buf.len() < total {
                return Ok(Parsed::Incomplete);
            }
            let encodings = buf[4..total]
                .chunks_exact(4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            return Ok(Parsed::Message(
                ClientMessage::SetEncodings(encodings.collect()),
                total,
            ));
        }
        3 => ClientMessage::FramebufferUpdateRequest {
            incremental: buf[1] != 0,
            x: be16(buf, 2),
            y: be16(buf, 4),
            width: be16(buf, 6),
            height: be16(buf, 8),
        },
        4 => ClientMessage::KeyEvent {
            down: buf[1] != 0,
            keysym: be32(buf, 4),
        },
        5 => ClientMessage::PointerEvent {
            buttons: buf[1],
            x: be16(buf, 2),
            y: be16(buf, 4),
        },
        6 => {
            // A negative length is the extended clipboard's; its absolute value is the length.
            let length = (be32(buf, 4) as i32).unsigned_abs();
            if length > MAX_CUT_TEXT {
                return Err(ProtocolError::CutTextTooLong(length));
            }
            ClientMessage::ClientCutText { length }
        }
        _ => {
            // 255: QEMU client message; only subtype 0 (extended key event, 12 bytes).
            if buf[1] != 0 {
                return Err(ProtocolError::UnknownQemuMessage(buf[1]));
            }
            if buf.len() < 12 {
                return Ok(Parsed::Incomplete);
            }
            let message = ClientMessage::QemuExtendedKeyEvent {
                down: be16(buf, 2) != 0,
                keysym: be32(buf, 4),
                scancode: be32(buf, 8),
            };
            return Ok(Parsed::Message(message, 12));
        }
    };
    Ok(Parsed::Message(message, fixed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<ClientMessage> {
        let mut reader = ClientReader::new();
        let mut out = Vec::new();
        // Byte by byte: every message must wait for its last byte.
        for &b in bytes {
            assert_eq!(reader.push(&[b]), 1);
            while let Some(message) = reader.next_message().unwrap() {
                out.push(message);
            }
        }
        out
    }

    #[test]
    fn each_client_message_parses() {
        let mut bytes = vec![0, 0, 0, 0];
        bytes.extend_from_slice(&PixelFormat::XRGB8888.to_bytes());
        bytes.extend_from_slice(&[2, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21]);
        bytes.extend_from_slice(&[3, 1, 0, 1, 0, 2, 0, 3, 0, 4]);
        bytes.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x61]);
        bytes.extend_from_slice(&[5, 5, 1, 0, 0, 200]);
        bytes.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        bytes.extend_from_slice(&[255, 0, 0, 1, 0, 0, 0xff, 0x0d, 0, 0, 0, 0x1c]);
        assert_eq!(
            parse_all(&bytes),
            vec![
                ClientMessage::SetPixelFormat(PixelFormat::XRGB8888),
                ClientMessage::SetEncodings(vec![16, 0, encoding::DESKTOP_SIZE]),
                ClientMessage::FramebufferUpdateRequest {
                    incremental: true,
                    x: 1,
                    y: 2,
                    width: 3,
                    height: 4
                },
                ClientMessage::KeyEvent {
                    down: true,
                    keysym: 0x61
                },
                ClientMessage::PointerEvent {
                    buttons: 5,
                    x: 256,
                    y: 200
                },
                ClientMessage::ClientCutText { length: 3 },
                ClientMessage::QemuExtendedKeyEvent {
                    down: true,
                    keysym: 0xff0d,
                    scancode: 0x1c
                },
            ]
        );
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert_eq!(parse_client_message(&[7]), Err(ProtocolError::UnknownMessage(7)));
        assert_eq!(
            parse_client_message(&[255, 1]),
            Err(ProtocolError::UnknownQemuMessage(1))
        );
        assert!(parse_client_message(&[2, 0, 0xff, 0xff]).is_err());
        assert_eq!(
            parse_client_message(&[6, 0, 0, 0, 0x7f, 0, 0, 0]),
            Err(ProtocolError::CutTextTooLong(0x7f00_0000))
        );
        let mut bad = PixelFormat::XRGB8888;
        bad.bits_per_pixel = 24;
        assert!(bad.validate().is_err());
        bad = PixelFormat::XRGB8888;
        bad.red_shift = 25;
        assert!(bad.validate().is_err());
        bad = PixelFormat::XRGB8888;
        bad.true_colour = false;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn cut_text_is_skipped_in_pieces() {
        let mut reader = ClientReader::new();
        reader.push(&[6, 0, 0, 0, 0, 0, 0x10, 0]);
        assert_eq!(
            reader.next_message().unwrap(),
            Some(ClientMessage::ClientCutText { length: 4096 })
        );
        reader.push(&[b'x'; 4000]);
        assert_eq!(reader.next_message().unwrap(), None);
        reader.push(&[b'x'; 96]);
        reader.push(&[4, 0, 0, 0, 0, 0, 0, 0x62]);
        assert_eq!(
            reader.next_message().unwrap(),
            Some(ClientMessage::KeyEvent {
                down: false,
                keysym: 0x62
            })
        );
    }

    #[test]
    fn pixel_conversion_honours_shifts_depth_and_order() {
        let rgb565 = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            true_colour: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        rgb565.validate().unwrap();
        assert_eq!(rgb565.convert(0x00ff_0000), 0xf800);
        assert_eq!(rgb565.convert(0x0000_ff00), 0x07e0);
        let mut out = Vec::new();
        rgb565.put(0xf800, &mut out);
        assert_eq!(out, vec![0xf8, 0]);
        let bgr = PixelFormat {
            red_shift: 0,
            blue_shift: 16,
            big_endian: true,
            ..PixelFormat::XRGB8888
        };
        assert_eq!(bgr.convert(0x0011_2233), 0x0033_2211);
        let bgr233 = PixelFormat {
            bits_per_pixel: 8,
            depth: 8,
            big_endian: false,
            true_colour: true,
            red_max: 7,
            green_max: 7,
            blue_max: 3,
            red_shift: 0,
            green_shift: 3,
            blue_shift: 6,
        };
        bgr233.validate().unwrap();
        assert_eq!(bgr233.convert(0x00ff_ffff), 0xff);
    }
}
