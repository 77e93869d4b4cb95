//! One console client's connection: a non-blocking socket and the output it has yet to take, in
//! a bounded buffer. A client that stops reading loses output beyond the bound (counted) rather
//! than holding up the guest; when it reads again it is told how much it missed, at the place in
//! the stream where the gap is.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{recv, send, RecvFlags, SendFlags};

/// Bytes of output a client may have pending (beyond what its socket buffer holds) before new
/// output for it is dropped: a few seconds of a fast console, enough that a client which merely
/// lags (a slow terminal, a scroll-back) loses nothing, small enough that 16 stalled clients
/// cost 4 MiB. The socket's send buffer is left at the kernel's default (`SO_SNDBUF`, about
/// 208 KiB, charged to the server): it too is bounded, and a serial port's output comes a byte
/// at a time, each send its own buffer, so far less output than that sits in it.
pub(super) const PENDING_LIMIT: usize = 256 * 1024;

/// The line a reader (`"this client"`, `"this terminal"`) gets where output it did not take in
/// time was dropped.
pub(super) fn dropped_notice(bytes: u64, reader: &str) -> String {
    format!(
        "\r\n[virtkit: {bytes} bytes of console output were dropped: {reader} did not read them in time]\r\n"
    )
}

pub(super) struct Client {
    socket: OwnedFd,
    pending: VecDeque<u8>,
    /// Output dropped since the last notice (or the start).
    dropped: u64,
    /// The client shut down its sending side (or `recv` said 0): it still gets output.
    pub(super) input_closed: bool,
}

/// What reading a client's input found.
pub(super) enum Input {
    /// Bytes were read into the buffer (maybe none: nothing was there).
    Read(usize),
    /// The client will send no more.
    Ended,
}

impl Client {
    pub(super) fn new(socket: OwnedFd) -> Client {
        Client {
            socket,
            pending: VecDeque::new(),
            dropped: 0,
            input_closed: false,
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn room(&self) -> usize {
        PENDING_LIMIT.saturating_sub(self.pending.len())
    }

    /// Queues `bytes` for the client, or drops them (all of them: a chunk is never cut) when
    /// they do not fit.
    pub(super) fn queue(&mut self, bytes: &[u8]) {
        self.queue_notice();
        // While a notice is owed, nothing may go after the gap before it.
        if self.dropped == 0 && self.room() >= bytes.len() {
            self.pending.extend(bytes);
        } else {
            self.dropped += bytes.len() as u64;
        }
    }

    /// Queues the notice of dropped output once there is room for it.
    fn queue_notice(&mut self) {
        if self.dropped == 0 {
            return;
        }
        let notice = dropped_notice(self.dropped, "this client");
        if self.room() >= notice.len() {
            self.pending.extend(notice.as_bytes());
            self.dropped = 0;
        }
    }

    /// Sends what the socket takes without blocking. An error means the client is gone.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match send(&self.socket, front, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.queue_notice();
        Ok(())
    }

    /// Reads what the client sent, at most `buf.len()` bytes, without blocking. An error means
    /// the client is gone.
    pub(super) fn read_input(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        let asked = !buf.is_empty();
        loop {
            return match recv(&self.socket, &mut *buf, RecvFlags::empty()) {
                Ok((0, _)) if asked => {
                    self.input_closed = true;
                    Ok(Input::Ended)
                }
                Ok((n, _)) => Ok(Input::Read(n)),
                Err(Errno::AGAIN) => Ok(Input::Read(0)),
                Err(Errno::INTR) => continue,
                Err(e) => Err(e.into()),
            };
        }
    }
}
