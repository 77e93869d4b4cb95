//! The fuzz harness of the control protocol's reading side (`fuzz/fuzz_targets/
//! control_request_lines.rs`): arbitrary bytes, cut into arbitrary chunks, through the line
//! framer and the request parser, checking the framer's promises on every step.

use crate::control::parse_request;
use crate::control_framing::{loggable, Frame, LineFramer, LOGGED_REQUEST_CHARS};

/// Runs one input. The first two bytes choose the chunk size (1..=256) and the line bound
/// (1..=256, small so that inputs reach it); the rest is what a client sends.
pub fn fuzz_lines(data: &[u8]) {
    let [chunk_seed, max_seed, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk_seed) + 1;
    let max = usize::from(*max_seed) + 1;
    let mut framer = LineFramer::new(max);
    let mut rebuilt = Vec::new();
    let mut too_long = false;
    for piece in stream.chunks(chunk) {
        framer.push(piece);
        assert!(
            framer.held() <= max + chunk,
            "holds {} > {max} + {chunk}",
            framer.held()
        );
        while let Some(frame) = framer.next_frame() {
            assert!(!too_long, "a frame after TooLong");
            match frame {
                Frame::Line(line) => {
                    assert!(line.len() <= max, "a line of {} > {max}", line.len());
                    assert!(!line.contains(&b'\n'));
                    if let Ok(text) = std::str::from_utf8(&line) {
                        if let Err(response) = parse_request(text) {
                            assert!(!response.ok && response.error.is_some());
                        }
                    }
                    // Escapes take at most 10 bytes a character (`\u{10ffff}`), plus the length.
                    assert!(loggable(&line).len() <= LOGGED_REQUEST_CHARS * 10 + 40);
                    rebuilt.extend_from_slice(&line);
                    rebuilt.push(b'\n');
                }
                Frame::TooLong => too_long = true,
            }
        }
    }
    if !too_long {
        // Every byte up to the last newline came out as lines, in order, none lost or added.
        let end = stream.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        assert_eq!(rebuilt, stream[..end]);
    } else {
        assert!(rebuilt.len() <= stream.len());
        assert_eq!(rebuilt, stream[..rebuilt.len()]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seed_inputs_pass() {
        super::fuzz_lines(b"\x03\x40{\"command\":\"state\"}\n{\"command\":\"balloon\",\"target_bytes\":1}\n");
        super::fuzz_lines(b"\x00\x04abcdefgh\nxy\n");
        super::fuzz_lines(b"\xff\xff\xff\xfe\n\n\r\n{}");
    }
}
