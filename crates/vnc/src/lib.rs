//! virtkit's built-in VNC server (docs/VNC.md).
//!
//! It sits above the devices and knows none of them: a display device implements
//! [`Framebuffer`] (size, XRGB8888 pixels, a generation counter and the rectangles changed since
//! a generation), keyboard and pointer devices are reached through an [`InputSink`], and
//! [`VncServer`] serves the framebuffer to clients on Unix sockets and loopback TCP.
//!
//! The protocol is RFB 3.8 (3.7 and 3.3 clients too) with security types None and VNC
//! authentication, the Raw and ZRLE encodings, the DesktopSize pseudo-encoding and QEMU's
//! extended key events. Each client has its own thread, reads the framebuffer only when it asked
//! for an update, and holds a bounded amount of memory; every length it sends is checked before
//! use ([`fuzz_client_messages`] is the fuzz entry over the message parser).
#![forbid(unsafe_code)]

mod encode;
mod error;
mod framebuffer;
mod handshake;
mod protocol;
mod server;

pub use encode::Encoder;
pub use error::{ProtocolError, VncError};
pub use framebuffer::{
    Changes, Framebuffer, InputSink, KeyEvent, MemoryFramebuffer, NoInput, PointerEvent, Rect,
};
pub use handshake::{parse_version, server_handshake, vnc_auth_response, Handshake, Security, Version};
pub use protocol::{
    encoding, parse_client_message, ClientMessage, ClientReader, Parsed, PixelFormat, MAX_CUT_TEXT,
    MAX_ENCODINGS,
};
pub use server::{Spawner, VncServer, MAX_CLIENTS};

/// The fuzz entry (`fuzz/fuzz_targets/vnc_client_messages.rs`): `data` is a client's byte stream
/// after the handshake, fed to a [`ClientReader`] in chunks whose sizes come from the first
/// byte. It must never panic; what parses must be whole and within bounds, and a SetPixelFormat
/// that parses must be one the encoder can serve.
pub fn fuzz_client_messages(data: &[u8]) {
    let Some((&chunking, mut rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunking % 64) + 1;
    let mut reader = ClientReader::new();
    // Check the stateless parser agrees on a whole message at the start.
    if let Ok(Parsed::Message(_, used)) = parse_client_message(rest) {
        assert!(used <= rest.len());
    }
    let fb = MemoryFramebuffer::new(3, 2);
    fb.fill_rect(Rect::new(1, 0, 2, 2), 0x00ab_cdef);
    let mut encoder = Encoder::new();
    while !rest.is_empty() {
        let pushed = reader.push(&rest[..chunk.min(rest.len())]);
        rest = &rest[pushed..];
        loop {
            match reader.next_message() {
                Ok(Some(message)) => match message {
                    ClientMessage::SetEncodings(list) => assert!(list.len() <= usize::from(MAX_ENCODINGS)),
                    ClientMessage::ClientCutText { length } => assert!(length <= MAX_CUT_TEXT),
                    ClientMessage::SetPixelFormat(format) => {
                        format.validate().expect("a parsed pixel format is valid");
                        encoder.set_format(format);
                        let mut out = Vec::new();
                        encoder
                            .write_rect(&fb, Rect::full(3, 2), true, &mut out)
                            .expect("encodes");
                        out.clear();
                        encoder
                            .write_rect(&fb, Rect::full(3, 2), false, &mut out)
                            .expect("encodes");
                        assert_eq!(out.len(), 12 + 6 * format.bytes_per_pixel());
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if pushed == 0 {
            // The buffer is full and holds no whole message: impossible by construction.
            panic!("client reader stuck with a full buffer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz entry over pseudo-random inputs (xorshift) and over valid messages with bytes
    /// flipped, so that it runs in every `cargo test`.
    #[test]
    fn fuzz_entry_survives_pseudo_random_input() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = vec![7u8, 0, 0, 0, 0];
        valid.extend_from_slice(&PixelFormat::XRGB8888.to_bytes());
        valid.extend_from_slice(&[2, 0, 0, 2, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0x21]);
        valid.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 3, 0, 2]);
        valid.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x61, 5, 1, 0, 1, 0, 1]);
        valid.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        valid.extend_from_slice(&[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]);
        for round in 0..4000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 300) as usize;
                // Mostly known message types, so the parser gets past the first byte.
                (0..len)
                    .map(|i| {
                        let r = next() as u8;
                        if i % 9 == 1 {
                            [0, 2, 3, 4, 5, 6, 255][usize::from(r % 7)]
                        } else {
                            r
                        }
                    })
                    .collect()
            } else {
                let mut input = valid.clone();
                for _ in 0..(next() % 4) {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
                input.truncate((next() as usize) % (input.len() + 1));
                input
            };
            fuzz_client_messages(&input);
        }
        fuzz_client_messages(&valid);
    }
}
