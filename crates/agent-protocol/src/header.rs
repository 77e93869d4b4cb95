//! The header line a client opens each connection with, and the agent's JSON answers.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The longest header line, newline excluded.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What a connection asks of the agent: its first line, one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Run a program; stdin, stdout, stderr, resize, eof and signal frames follow, and the
    /// agent ends with `exit` (or `error` if it could not start it).
    Exec {
        argv: Vec<String>,
        /// Added to (or replacing in) the default environment: PATH, HOME, USER, LOGNAME,
        /// SHELL, and TERM on a pty.
        #[serde(default)]
        env: Vec<(String, String)>,
        /// The working directory; the user's home when absent.
        #[serde(default)]
        cwd: Option<String>,
        /// A user name (or numeric uid) from the guest's /etc/passwd; the agent's own when absent.
        #[serde(default)]
        user: Option<String>,
        /// On a pseudo-terminal of `cols` × `rows` (stdout then carries both outputs).
        #[serde(default)]
        tty: bool,
        #[serde(default)]
        cols: u16,
        #[serde(default)]
        rows: u16,
    },
    /// The client sends a tree (`entry` and `data` frames, then `end`) to put at `dest`.
    CopyIn { dest: String },
    /// The agent sends the tree at `src` (`entry` and `data` frames, then `end`).
    CopyOut { src: String },
    /// The guest's interfaces and addresses, as one `reply` frame ([`IpReport`]).
    Ip,
    /// Set the guest's CLOCK_REALTIME to this time (the host's, when it sent it).
    /// Nanoseconds since the Unix epoch. A u64 (good until 2554): a u128 cannot go through
    /// serde's internally tagged enums (it failed as "u128 is not supported").
    SetTime { unix_nanos: u64 },
    /// Power the guest off (or reboot it); the agent answers `exit` 0 first.
    Shutdown {
        #[serde(default)]
        reboot: bool,
    },
    /// The agent's version and the guest's name, as one `reply` frame ([`AgentInfo`]).
    Version,
}

impl Request {
    /// The operation's name, as in the header.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::CopyIn { .. } => "copy-in",
            Request::CopyOut { .. } => "copy-out",
            Request::Ip => "ip",
            Request::SetTime { .. } => "set-time",
            Request::Shutdown { .. } => "shutdown",
            Request::Version => "version",
        }
    }
}

/// The answer to `version`, and what the hello carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub hostname: String,
    #[serde(default)]
    pub kernel: String,
}

/// The line the agent sends to the host's port 1025 when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub hello: AgentInfo,
}

/// The answer to `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpReport {
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    pub up: bool,
    pub loopback: bool,
    pub addresses: Vec<InterfaceAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddress {
    /// `10.0.2.15`, `fe80::1`.
    pub address: String,
    pub prefix_len: u8,
}

/// Why a header (or another line) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection closed before a whole line")]
    Closed,
    #[error("the line is longer than {0} bytes")]
    TooLong(usize),
    #[error("the header is not a request: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot read or write the header")]
    Io(#[from] io::Error),
}

/// Reads one line of at most `max` bytes (newline excluded), a byte at a time so that nothing
/// after it is taken from `reader`.
pub fn read_line(reader: &mut impl Read, max: usize) -> Result<Vec<u8>, HeaderError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match reader.read(&mut byte) {
            Ok(0) => return Err(HeaderError::Closed),
            Ok(_) if byte[0] == b'\n' => return Ok(line),
            Ok(_) => {
                if line.len() >= max {
                    return Err(HeaderError::TooLong(max));
                }
                line.push(byte[0]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`read_line`] for a socket that can peek (`recv(MSG_PEEK)`, given as `peek`): looks at what
/// has arrived and reads up to the newline in one call, not a call per byte (a header of a few
/// hundred bytes was as many system calls on each side); nothing after the newline is taken.
pub fn read_line_peeking<S: Read>(
    stream: &mut S,
    max: usize,
    mut peek: impl FnMut(&S, &mut [u8]) -> io::Result<usize>,
) -> Result<Vec<u8>, HeaderError> {
    let mut line = Vec::new();
    let mut buf = vec![0u8; (max + 1).min(4096)];
    loop {
        let n = loop {
            match peek(stream, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let newline = buf[..n].iter().position(|&b| b == b'\n');
        let take = newline.map_or(n, |i| i + 1);
        let keep = newline.unwrap_or(n);
        if line.len() + keep > max {
            return Err(HeaderError::TooLong(max));
        }
        // What was peeked is there to read.
        stream.read_exact(&mut buf[..take]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                HeaderError::Closed
            } else {
                HeaderError::Io(e)
            }
        })?;
        line.extend_from_slice(&buf[..keep]);
        if newline.is_some() {
            return Ok(line);
        }
    }
}

/// Reads the header line and parses it.
pub fn read_header(reader: &mut impl Read) -> Result<Request, HeaderError> {
    let line = read_line(reader, MAX_HEADER_BYTES)?;
    Ok(serde_json::from_slice(&line)?)
}

/// [`read_header`] with [`read_line_peeking`].
pub fn read_header_peeking<S: Read>(
    stream: &mut S,
    peek: impl FnMut(&S, &mut [u8]) -> io::Result<usize>,
) -> Result<Request, HeaderError> {
    let line = read_line_peeking(stream, MAX_HEADER_BYTES, peek)?;
    Ok(serde_json::from_slice(&line)?)
}

/// Writes `request` as one line (refused if longer than [`MAX_HEADER_BYTES`]).
pub fn write_header(writer: &mut impl Write, request: &Request) -> Result<(), HeaderError> {
    let mut line = serde_json::to_vec(request)?;
    if line.len() > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLong(MAX_HEADER_BYTES));
    }
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_one_json_line_and_nothing_after_it_is_read() {
        let mut bytes = Vec::new();
        write_header(&mut bytes, &Request::CopyOut { src: "/etc".into() }).unwrap();
        assert_eq!(bytes, b"{\"op\":\"copy-out\",\"src\":\"/etc\"}\n");
        bytes.extend_from_slice(b"rest");
        let mut input = bytes.as_slice();
        assert_eq!(
            read_header(&mut input).unwrap(),
            Request::CopyOut { src: "/etc".into() }
        );
        assert_eq!(input, b"rest");
    }

    /// A peek over a byte slice: what a socket shows, at most `chunk` bytes at a time (a header
    /// split across packets).
    fn peek_chunks(chunk: usize) -> impl FnMut(&&[u8], &mut [u8]) -> io::Result<usize> {
        move |s: &&[u8], b: &mut [u8]| {
            let n = s.len().min(b.len()).min(chunk);
            b[..n].copy_from_slice(&s[..n]);
            Ok(n)
        }
    }

    #[test]
    fn a_peeking_read_takes_the_line_and_nothing_after_it() {
        let mut bytes = Vec::new();
        write_header(&mut bytes, &Request::CopyOut { src: "/etc".into() }).unwrap();
        bytes.extend_from_slice(b"rest");
        for chunk in [1, 3, 4096] {
            let mut input = bytes.as_slice();
            assert_eq!(
                read_header_peeking(&mut input, peek_chunks(chunk)).unwrap(),
                Request::CopyOut { src: "/etc".into() }
            );
            assert_eq!(input, b"rest", "chunk {chunk}");
        }
        let mut input = &b"OK 1024\nxy"[..];
        assert_eq!(
            read_line_peeking(&mut input, 256, peek_chunks(4096)).unwrap(),
            b"OK 1024"
        );
        assert_eq!(input, b"xy");
        assert!(matches!(
            read_line_peeking(&mut &b"OK 10"[..], 256, peek_chunks(2)),
            Err(HeaderError::Closed)
        ));
        let long = vec![b' '; MAX_HEADER_BYTES + 1];
        assert!(matches!(
            read_header_peeking(&mut long.as_slice(), peek_chunks(4096)),
            Err(HeaderError::TooLong(_))
        ));
        assert!(matches!(
            read_line_peeking(&mut &b"12345\n"[..], 4, peek_chunks(4096)),
            Err(HeaderError::TooLong(4))
        ));
    }

    #[test]
    fn exec_defaults_and_bad_headers() {
        let r = read_header(&mut &b"{\"op\":\"exec\",\"argv\":[\"true\"]}\n"[..]).unwrap();
        assert!(matches!(r, Request::Exec { tty: false, ref env, .. } if env.is_empty()));
        assert!(matches!(
            read_header(&mut &b"{\"op\":\"jump\"}\n"[..]),
            Err(HeaderError::Json(_))
        ));
        assert!(matches!(
            read_header(&mut &b"{\"op\":\"copy-in\",\"dest\":\"/\",\"x\":1}\n"[..]),
            Err(HeaderError::Json(_))
        ));
        assert!(matches!(
            read_header(&mut &b"{\"op\""[..]),
            Err(HeaderError::Closed)
        ));
        let long = vec![b' '; MAX_HEADER_BYTES + 1];
        assert!(matches!(
            read_header(&mut long.as_slice()),
            Err(HeaderError::TooLong(_))
        ));
    }
}
