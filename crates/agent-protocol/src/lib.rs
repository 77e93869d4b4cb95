//! The protocol between virtkit (the host) and `virtkit-agent` (the guest), documented in
//! `docs/AGENT.md`. One connection per operation: the client sends one JSON header line
//! ([`Request`], at most [`MAX_HEADER_BYTES`]), then both sides exchange [`Frame`]s (a type
//! byte, a 4-byte big-endian length of at most [`MAX_FRAME_PAYLOAD`], the payload).
//!
//! [`tree`] streams files, directories and symbolic links as frames for `cp`. [`fuzz_input`]
//! is the fuzz entry over the header and frame parsers.
#![forbid(unsafe_code)]

mod frame;
mod header;
pub mod tree;

pub use frame::{
    read_frame, write_frame, ErrorKind, ExitStatus, Frame, FrameError, FrameReader, FrameWriter, Stream,
    MAX_FRAME_PAYLOAD,
};
pub use header::{
    read_header, read_header_peeking, read_line, read_line_peeking, write_header, AgentInfo, HeaderError,
    Hello, Interface, InterfaceAddress, IpReport, Request, MAX_HEADER_BYTES,
};

/// The guest's vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// The host's vsock port (CID 2) the agent says hello to when it starts.
pub const HELLO_PORT: u32 = 1025;
/// The agent's version, as `version` and the hello report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The fuzz entry (`fuzz/fuzz_targets/agent_protocol.rs`): the first byte picks what `data`
/// is read as: a header line (then frames after it), or frames alone, or a tree received into
/// nothing. Never panics and never holds more than the bounds allow.
pub fn fuzz_input(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut input = rest;
    if selector & 1 == 0 {
        match read_header(&mut input) {
            Ok(request) => {
                // What parses must serialize and parse back the same.
                let mut line = Vec::new();
                write_header(&mut line, &request).expect("a parsed request serializes");
                assert!(line.len() <= MAX_HEADER_BYTES + 1);
                let again = read_header(&mut line.as_slice()).expect("a written request parses");
                assert_eq!(again, request);
            }
            Err(_) => return,
        }
    }
    let mut reader = FrameReader::new(input);
    for _ in 0..4096 {
        match reader.read() {
            Ok(Some(frame)) => {
                let mut bytes = Vec::new();
                write_frame(&mut bytes, &frame).expect("a parsed frame serializes");
                assert!(bytes.len() <= MAX_FRAME_PAYLOAD + 5);
                let back = read_frame(&mut bytes.as_slice()).expect("a written frame parses");
                assert_eq!(back, Some(frame));
                if let Frame::Entry(json) = &back.unwrap_or(Frame::End) {
                    let _ = tree::Entry::parse(json);
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz entry over pseudo-random inputs (xorshift), and over valid headers and frames
    /// with random bytes flipped, so that it runs in every `cargo test`.
    #[test]
    fn fuzz_entry_survives_pseudo_random_input() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = vec![0u8];
        write_header(
            &mut valid,
            &Request::Exec {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("A".into(), "B".into())],
                cwd: Some("/".into()),
                user: Some("root".into()),
                tty: true,
                cols: 80,
                rows: 24,
            },
        )
        .unwrap();
        for frame in [
            Frame::Stdin(b"abc".to_vec()),
            Frame::Resize { cols: 1, rows: 2 },
            Frame::Eof(Stream::Stdin),
            Frame::Signal(15),
            Frame::Exit(ExitStatus::Signal(9)),
            Frame::Error(ErrorKind::NotFound, "no".into()),
            Frame::Entry(br#"{"path":"a","kind":"file","mode":420,"size":1}"#.to_vec()),
        ] {
            write_frame(&mut valid, &frame).unwrap();
        }
        fuzz_input(&valid);
        for round in 0..3000 {
            let len = (next() % 600) as usize;
            let mut data: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut d = valid.clone();
                for _ in 0..(1 + next() % 8) {
                    let i = (next() as usize) % d.len();
                    d[i] = next() as u8;
                }
                d.truncate((next() as usize) % (d.len() + 1));
                d
            };
            if round % 3 == 0 && !data.is_empty() {
                data[0] = 1; // frames alone
            }
            fuzz_input(&data);
        }
    }
}
