//! Frames: a type byte, a 4-byte big-endian payload length (at most [`MAX_FRAME_PAYLOAD`]),
//! the payload.

use std::io::{self, Read, Write};

/// The largest payload a frame may carry.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;

/// One of a program's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// What kind of failure an `error` frame reports, so the host can pick its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Other = 0,
    /// The command (or a path) does not exist.
    NotFound = 1,
    /// The command exists but cannot be run (permissions, not executable).
    NotExecutable = 2,
    /// The user is not in the guest's /etc/passwd.
    NoSuchUser = 3,
    /// A directory to work in or copy into does not exist.
    NoSuchDirectory = 4,
    /// The header or a frame made no sense.
    BadRequest = 5,
}

impl ErrorKind {
    fn from_byte(b: u8) -> ErrorKind {
        match b {
            1 => ErrorKind::NotFound,
            2 => ErrorKind::NotExecutable,
            3 => ErrorKind::NoSuchUser,
            4 => ErrorKind::NoSuchDirectory,
            5 => ErrorKind::BadRequest,
            _ => ErrorKind::Other,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Type 1: bytes for the program's standard input (client → agent).
    Stdin(Vec<u8>),
    /// Type 2: the program's standard output (the pty's output with a tty).
    Stdout(Vec<u8>),
    /// Type 3: the program's standard error.
    Stderr(Vec<u8>),
    /// Type 4: the terminal's new size: columns, rows (2 bytes each).
    Resize { cols: u16, rows: u16 },
    /// Type 5: the end of a stream (1 byte: 0 stdin, 1 stdout, 2 stderr).
    Eof(Stream),
    /// Type 6: a signal for the program (4 bytes, the guest's signal number).
    Signal(i32),
    /// Type 7: how the program ended (1 byte: 0 exit code, 1 signal; 4 bytes: the number).
    Exit(ExitStatus),
    /// Type 8: the operation failed: 1 byte [`ErrorKind`], then a sentence in UTF-8.
    Error(ErrorKind, String),
    /// Type 9: a tree entry for `cp` (JSON, [`crate::tree::Entry`]).
    Entry(Vec<u8>),
    /// Type 10: file contents for `cp`, after the file's entry.
    Data(Vec<u8>),
    /// Type 11: the end of a tree.
    End,
    /// Type 12: a JSON answer (`ip`, `version`).
    Reply(Vec<u8>),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("a frame of {0} bytes is longer than the {MAX_FRAME_PAYLOAD} allowed")]
    TooLong(u32),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("a frame of type {0} has a payload of the wrong size ({1} bytes)")]
    BadPayload(u8, usize),
    #[error("cannot read a frame")]
    Io(#[from] io::Error),
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Stdin(_) => 1,
            Frame::Stdout(_) => 2,
            Frame::Stderr(_) => 3,
            Frame::Resize { .. } => 4,
            Frame::Eof(_) => 5,
            Frame::Signal(_) => 6,
            Frame::Exit(_) => 7,
            Frame::Error(..) => 8,
            Frame::Entry(_) => 9,
            Frame::Data(_) => 10,
            Frame::End => 11,
            Frame::Reply(_) => 12,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Frame::Stdin(b)
            | Frame::Stdout(b)
            | Frame::Stderr(b)
            | Frame::Entry(b)
            | Frame::Data(b)
            | Frame::Reply(b) => b.clone(),
            Frame::Resize { cols, rows } => [cols.to_be_bytes(), rows.to_be_bytes()].concat(),
            Frame::Eof(s) => vec![*s as u8],
            Frame::Signal(n) => n.to_be_bytes().to_vec(),
            Frame::Exit(ExitStatus::Code(c)) => [&[0u8][..], &c.to_be_bytes()].concat(),
            Frame::Exit(ExitStatus::Signal(s)) => [&[1u8][..], &s.to_be_bytes()].concat(),
            Frame::Error(kind, text) => {
                let mut p = vec![*kind as u8];
                // A sentence longer than a frame is cut (at a character boundary).
                let mut end = text.len().min(MAX_FRAME_PAYLOAD - 1);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                p.extend_from_slice(&text.as_bytes()[..end]);
                p
            }
            Frame::End => Vec::new(),
        }
    }

    fn parse(kind: u8, p: Vec<u8>) -> Result<Frame, FrameError> {
        let bad = |p: &Vec<u8>| FrameError::BadPayload(kind, p.len());
        let be32 = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        Ok(match kind {
            1 => Frame::Stdin(p),
            2 => Frame::Stdout(p),
            3 => Frame::Stderr(p),
            4 if p.len() == 4 => Frame::Resize {
                cols: u16::from_be_bytes([p[0], p[1]]),
                rows: u16::from_be_bytes([p[2], p[3]]),
            },
            5 if p.len() == 1 => Frame::Eof(match p[0] {
                0 => Stream::Stdin,
                1 => Stream::Stdout,
                2 => Stream::Stderr,
                _ => return Err(bad(&p)),
            }),
            6 if p.len() == 4 => Frame::Signal(be32(&p)),
            7 if p.len() == 5 && p[0] <= 1 => {
                let n = be32(&p[1..]);
                Frame::Exit(if p[0] == 0 {
                    ExitStatus::Code(n)
                } else {
                    ExitStatus::Signal(n)
                })
            }
            8 if !p.is_empty() => Frame::Error(
                ErrorKind::from_byte(p[0]),
                String::from_utf8_lossy(&p[1..]).into_owned(),
            ),
            9 => Frame::Entry(p),
            10 => Frame::Data(p),
            11 if p.is_empty() => Frame::End,
            12 => Frame::Reply(p),
            4..=8 | 11 => return Err(bad(&p)),
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

/// Writes one frame (payloads longer than [`MAX_FRAME_PAYLOAD`] are refused: split them).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let payload = frame.payload();
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame payload of {} bytes is over {MAX_FRAME_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(payload.len() + 5);
    bytes.push(frame.kind());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&payload);
    w.write_all(&bytes)?;
    w.flush()
}

/// Reads one frame; `None` when the connection closed cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len as usize > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Frame::parse(head[0], payload).map(Some)
}

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader { inner }
    }

    /// The next frame; `None` at a clean end.
    pub fn read(&mut self) -> Result<Option<Frame>, FrameError> {
        read_frame(&mut self.inner)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes frames to a stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter { inner }
    }

    pub fn write(&mut self, frame: &Frame) -> io::Result<()> {
        write_frame(&mut self.inner, frame)
    }

    /// Writes `bytes` as frames made by `make`, each at most [`MAX_FRAME_PAYLOAD`].
    pub fn write_split(&mut self, bytes: &[u8], make: fn(Vec<u8>) -> Frame) -> io::Result<()> {
        for chunk in bytes.chunks(MAX_FRAME_PAYLOAD) {
            self.write(&make(chunk.to_vec()))?;
        }
        Ok(())
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn every_frame_round_trips_over_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let frames = vec![
            Frame::Stdin(b"in".to_vec()),
            Frame::Stdout(vec![7; MAX_FRAME_PAYLOAD]),
            Frame::Stderr(Vec::new()),
            Frame::Resize { cols: 132, rows: 43 },
            Frame::Eof(Stream::Stdin),
            Frame::Eof(Stream::Stderr),
            Frame::Signal(2),
            Frame::Exit(ExitStatus::Code(-1)),
            Frame::Exit(ExitStatus::Signal(9)),
            Frame::Error(ErrorKind::NoSuchUser, "no user `x`".into()),
            Frame::Entry(b"{}".to_vec()),
            Frame::Data(b"d".to_vec()),
            Frame::End,
            Frame::Reply(b"[]".to_vec()),
        ];
        let sent = frames.clone();
        let writer = std::thread::spawn(move || {
            let mut w = FrameWriter::new(a);
            for f in &sent {
                w.write(f).unwrap();
            }
        });
        let mut r = FrameReader::new(b);
        for f in frames {
            assert_eq!(r.read().unwrap(), Some(f));
        }
        writer.join().unwrap();
        assert_eq!(r.read().unwrap(), None, "a clean end");
    }

    #[test]
    fn hostile_frames_are_refused() {
        assert!(matches!(
            read_frame(&mut &[2u8, 0, 1, 0, 1][..]),
            Err(FrameError::TooLong(65537))
        ));
        assert!(matches!(
            read_frame(&mut &[99u8, 0, 0, 0, 0][..]),
            Err(FrameError::UnknownType(99))
        ));
        assert!(matches!(
            read_frame(&mut &[4u8, 0, 0, 0, 1, 0][..]),
            Err(FrameError::BadPayload(4, 1))
        ));
        assert!(matches!(
            read_frame(&mut &[2u8, 0, 0, 0, 9, 1][..]),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[2u8, 0][..]),
            Err(FrameError::Truncated)
        ));
        assert!(write_frame(&mut Vec::new(), &Frame::Stdout(vec![0; MAX_FRAME_PAYLOAD + 1])).is_err());
    }
}
