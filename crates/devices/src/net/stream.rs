//! [`StreamBackend`]: frames over a connected Unix stream socket, each preceded by its length
//! as 4 bytes big-endian. This is passt's `--fd`/socket protocol and QEMU's `-netdev stream`.
//!
//! A stream carries no frame boundaries, so both directions keep a partial frame across calls:
//! a send the socket took only part of is finished by [`NetBackend::flush`] before another is
//! taken, and a frame read in pieces waits in the backend until it is whole.
//!
//! Frames sent in one pass of the device go out together: [`NetBackend::send`] gathers them
//! behind their prefixes and [`NetBackend::flush`], which the device calls at the end of each tx
//! pass, writes the batch with one `send` (or as soon as it holds [`OUT_BATCH`] bytes). One
//! system call per frame is what a guest's small frames (1514 bytes at the usual MTU) would
//! otherwise cost, on both sides of the socket; a lone frame still leaves at once, at the end of
//! its pass. Both buffers are bounded: output by a batch and one frame, input by two frames.
//!
//! A listening backend ([`StreamBackend::listen`], QEMU's `-netdev stream,server=on`) has no
//! peer until one connects: until then [`NetBackend::fd`] is the listening socket, a receive
//! accepts the peer (the worker then watches the new descriptor), and frames the guest sends
//! are dropped, as on a cable plugged into nothing.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use rustix::net::{accept_with, send, SendFlags, SocketFlags};

use super::backend::{would_block, NetBackend, MAX_FRAME_LEN};

const PREFIX_LEN: usize = 4;
/// Longest frame the length prefix may announce (no virtio-net header on this transport).
const MAX_LEN: usize = MAX_FRAME_LEN;
/// Input buffer: two whole frames, so one read can bring the rest of one and much of the next.
const IN_CAPACITY: usize = 2 * (PREFIX_LEN + MAX_LEN);
/// Bytes of gathered frames that make `send` write them out without waiting for the end of the
/// pass.
const OUT_BATCH: usize = 64 << 10;

#[derive(Debug)]
pub struct StreamBackend {
    /// The peer; `None` while a listening backend waits for one.
    socket: Option<UnixStream>,
    /// Where a listening backend waits for its peer.
    listener: Option<UnixListener>,
    /// The frames being written (prefixes included) and how much of them went.
    out: Vec<u8>,
    out_done: usize,
    /// What `out` holds was gathered and not tried yet (a batch), rather than left by a socket
    /// that would block (which must go before another frame is taken).
    gathering: bool,
    /// Bytes read and not yet handed out: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
}

impl StreamBackend {
    /// A backend over `socket` (made non-blocking), connected to the peer.
    pub fn new(socket: UnixStream) -> io::Result<StreamBackend> {
        socket.set_nonblocking(true)?;
        Ok(StreamBackend::with(Some(socket), None))
    }

    /// A backend that waits on `listener` (made non-blocking) for its one peer.
    pub fn listen(listener: UnixListener) -> io::Result<StreamBackend> {
        listener.set_nonblocking(true)?;
        Ok(StreamBackend::with(None, Some(listener)))
    }

    fn with(socket: Option<UnixStream>, listener: Option<UnixListener>) -> StreamBackend {
        StreamBackend {
            socket,
            listener,
            out: Vec::with_capacity(OUT_BATCH + PREFIX_LEN + MAX_LEN),
            out_done: 0,
            gathering: false,
            input: vec![0; IN_CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Whether the peer is there (always, unless listening for it).
    pub fn connected(&self) -> bool {
        self.socket.is_some()
    }

    /// Takes the peer waiting on the listening socket, if one is. It is non-blocking and
    /// close-on-exec from `accept4` itself, so the worker needs no `fcntl`.
    fn accept(&mut self) -> io::Result<()> {
        let Some(listener) = &self.listener else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        loop {
            match accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    self.socket = Some(UnixStream::from(fd));
                    return Ok(());
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Connects to a peer listening on `path` (passt's `--socket`, QEMU's `-netdev stream,server`).
    pub fn connect(path: impl AsRef<Path>) -> io::Result<StreamBackend> {
        StreamBackend::new(UnixStream::connect(path)?)
    }

    /// The whole frame at the front of the input, if it is there: its length.
    fn buffered_frame(&self) -> io::Result<Option<usize>> {
        let have = &self.input[self.start..self.end];
        let Some(prefix) = have.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_LEN {
            // Nothing after it can be trusted to start on a frame.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer announced a frame of {len} bytes; at most {MAX_LEN}"),
            ));
        }
        Ok((have.len() >= PREFIX_LEN + len).then_some(len))
    }
}

impl NetBackend for StreamBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        match (&self.socket, &self.listener) {
            (Some(socket), _) => socket.as_fd(),
            (None, Some(listener)) => listener.as_fd(),
            (None, None) => unreachable!("a stream backend has a socket or a listener"),
        }
    }

    fn send(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        if self.socket.is_none() {
            // No peer yet: the frame goes nowhere, as on an unplugged cable.
            return Ok(());
        }
        let len: usize = frame.iter().map(|s| s.len()).sum();
        if len > MAX_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {len} bytes; at most {MAX_LEN}"),
            ));
        }
        if !self.gathering {
            // What a full socket left goes first; while it cannot, this frame is not taken.
            self.flush()?;
        }
        // One copy into the staging buffer, behind the frames gathered so far: one `send`
        // carries them all (prefixes and frames), and what the socket does not take now stays
        // here for `flush`.
        self.out.extend_from_slice(&(len as u32).to_be_bytes());
        for piece in frame {
            self.out.extend_from_slice(piece);
        }
        self.gathering = true;
        if self.out.len() - self.out_done < OUT_BATCH {
            return Ok(());
        }
        match self.flush() {
            Err(e) if would_block(&e) => Ok(()),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Whatever is left after this call is a remainder the socket refused, not a batch.
        self.gathering = false;
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        while self.out_done < self.out.len() {
            // MSG_NOSIGNAL: a peer gone away is EPIPE here, never a SIGPIPE that kills the VMM.
            match send(socket, &self.out[self.out_done..], SendFlags::NOSIGNAL) {
                Ok(0) => {
                    self.out.clear();
                    self.out_done = 0;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => self.out_done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    let e = io::Error::from(e);
                    if !would_block(&e) {
                        // The rest cannot go; the stream is unusable anyway.
                        self.out.clear();
                        self.out_done = 0;
                    }
                    return Err(e);
                }
            }
        }
        self.out.clear();
        self.out_done = 0;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.socket.is_none() {
            // A peer, if one is waiting; the worker watches its descriptor from the next pass.
            self.accept()?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            while let Some(len) = self.buffered_frame()? {
                let at = self.start + PREFIX_LEN;
                self.start = at + len;
                if len == 0 {
                    continue;
                }
                let Some(dest) = buf.get_mut(..len) else {
                    return Err(io::Error::other(format!(
                        "a frame of {len} bytes does not fit {}",
                        buf.len()
                    )));
                };
                dest.copy_from_slice(&self.input[at..at + len]);
                return Ok(len);
            }
            // Keep the partial frame at the front, so the rest of it always fits.
            if self.start > 0 {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let Some(mut socket) = self.socket.as_ref() else {
                return Err(io::ErrorKind::NotConnected.into());
            };
            match socket.read(&mut self.input[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
