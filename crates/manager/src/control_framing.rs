//! The control protocol's line framing, apart from any socket so it can be tested and fuzzed
//! on plain bytes: bytes come in as the client sends them, complete request lines go out, and
//! a line longer than the bound ends the connection instead of growing a buffer without end.

use std::fmt::Write as _;

/// The longest request line the server reads, newline excluded. A request is a small JSON
/// object; 64 KiB is far more than any valid one and small enough to hold for every client.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the framer found next in a client's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One request line, without its newline.
    Line(Vec<u8>),
    /// The client sent more than the bound without a newline: answer once and close; the framer
    /// yields nothing more.
    TooLong,
}

/// Splits a byte stream into request lines of at most `max` bytes.
///
/// It holds at most `max` bytes of an unfinished line plus the last chunk given to
/// [`LineFramer::push`]: a caller that pushes chunks of at most `C` bytes and takes every
/// frame before the next push holds at most `max + C` bytes per client.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as lines.
    consumed: usize,
    /// Bytes of `buf` after `consumed` known to hold no newline (not scanned again).
    scanned: usize,
    max: usize,
    poisoned: bool,
}

impl LineFramer {
    pub fn new(max: usize) -> LineFramer {
        LineFramer {
            buf: Vec::new(),
            consumed: 0,
            scanned: 0,
            max,
            poisoned: false,
        }
    }

    /// Adds bytes as they came from the client. Nothing is kept once the framer said
    /// [`Frame::TooLong`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned {
            return;
        }
        // Drop what was handed out before growing, so the buffer holds only the open line.
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, [`Frame::TooLong`] once, or `None` until more bytes come.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.poisoned {
            return None;
        }
        let open = &self.buf[self.consumed..];
        match open[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let len = self.scanned + at;
                self.scanned = 0;
                if len > self.max {
                    return Some(self.poison());
                }
                let line = open[..len].to_vec();
                self.consumed += len + 1;
                Some(Frame::Line(line))
            }
            None if open.len() > self.max => Some(self.poison()),
            None => {
                self.scanned = open.len();
                None
            }
        }
    }

    fn poison(&mut self) -> Frame {
        self.poisoned = true;
        self.buf = Vec::new();
        self.consumed = 0;
        self.scanned = 0;
        Frame::TooLong
    }

    /// Bytes held now (for the bound's tests).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Whether part of a line is waiting for its newline.
    pub fn has_partial_line(&self) -> bool {
        !self.poisoned && self.buf.len() > self.consumed
    }
}

/// The answer to a line over the bound: one sentence with the bound and the fix.
pub fn too_long_error(max: usize) -> String {
    format!("request longer than {max} bytes; send one JSON object per line")
}

/// How much of a request line goes into the log.
pub const LOGGED_REQUEST_CHARS: usize = 100;

/// A request line as the log shows it: at most [`LOGGED_REQUEST_CHARS`] characters, escaped
/// (no control characters or invalid UTF-8 reach the log), with the full length when cut.
pub fn loggable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == LOGGED_REQUEST_CHARS {
            let _ = write!(out, "… ({} bytes)", line.len());
            return out;
        }
        out.extend(c.escape_debug());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut LineFramer) -> Vec<Frame> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    #[test]
    fn lines_come_out_whole_whatever_the_chunks() {
        let mut f = LineFramer::new(64);
        f.push(b"{\"command\":");
        assert_eq!(lines(&mut f), []);
        assert!(f.has_partial_line());
        f.push(b"\"state\"}\n{\"command\":\"pause\"}\n\n{\"com");
        assert_eq!(
            lines(&mut f),
            [
                Frame::Line(b"{\"command\":\"state\"}".to_vec()),
                Frame::Line(b"{\"command\":\"pause\"}".to_vec()),
                Frame::Line(Vec::new()),
            ]
        );
        f.push(b"mand\":\"stop\"}\n");
        assert_eq!(lines(&mut f), [Frame::Line(b"{\"command\":\"stop\"}".to_vec())]);
        assert!(!f.has_partial_line());
    }

    #[test]
    fn a_line_at_the_bound_passes_and_one_byte_more_ends_the_stream() {
        let mut f = LineFramer::new(8);
        f.push(b"12345678\n");
        assert_eq!(lines(&mut f), [Frame::Line(b"12345678".to_vec())]);
        f.push(b"123456789");
        assert_eq!(lines(&mut f), [Frame::TooLong]);
        f.push(b"\n{}\n");
        assert_eq!(lines(&mut f), [], "nothing after too long");
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn the_lines_before_an_overlong_one_are_answered_first() {
        let mut f = LineFramer::new(4);
        f.push(b"ab\nabcdefgh\ncd\n");
        assert_eq!(lines(&mut f), [Frame::Line(b"ab".to_vec()), Frame::TooLong]);
    }

    /// A client that never sends a newline costs at most the bound plus one chunk.
    #[test]
    fn a_line_without_end_is_held_only_up_to_the_bound() {
        let mut f = LineFramer::new(MAX_REQUEST_BYTES);
        let chunk = [b'x'; 4096];
        let mut pushed = 0;
        loop {
            f.push(&chunk);
            pushed += chunk.len();
            assert!(f.held() <= MAX_REQUEST_BYTES + chunk.len());
            match f.next_frame() {
                None => continue,
                Some(frame) => {
                    assert_eq!(frame, Frame::TooLong);
                    break;
                }
            }
        }
        assert!(pushed <= MAX_REQUEST_BYTES + chunk.len(), "{pushed}");
        assert_eq!(
            too_long_error(MAX_REQUEST_BYTES),
            "request longer than 65536 bytes; send one JSON object per line"
        );
    }

    #[test]
    fn logged_requests_are_short_and_escaped() {
        assert_eq!(loggable(br#"{"command":"state"}"#), r#"{\"command\":\"state\"}"#);
        assert_eq!(loggable(b"a\nb\x1b[2J\xff"), "a\\nb\\u{1b}[2J\u{fffd}");
        let long = loggable(&[b'y'; 100_000]);
        assert!(long.len() < 200, "{long}");
        assert!(long.ends_with("… (100000 bytes)"), "{long}");
    }
}
