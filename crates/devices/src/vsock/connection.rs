//! One stream connection between a guest port and a host stream: its state, the credit both
//! ways, and the bytes on their way to the host.
//!
//! Credit (virtio 1.2, 5.10.6.3): the guest may have at most `buf_alloc` bytes in flight to us
//! that we have not forwarded (`fwd_cnt`); we may send it at most its `buf_alloc` minus what it
//! has not consumed (`tx_cnt - peer_fwd_cnt`). Our buffer is [`CONN_BUF`] bytes per connection,
//! the only memory a connection holds besides its socket; a guest that sends beyond the credit
//! we gave is reset.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use super::host::HostStream;
use super::packet::{op, shutdown, Header, HOST_CID, MAX_PKT_LEN, TYPE_STREAM};

/// Bytes of guest data a connection holds for a slow host peer: the `buf_alloc` we advertise.
pub const CONN_BUF: u32 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: the REQUEST is sent (or about to be); waiting for the guest's RESPONSE
    /// until the deadline.
    Connecting {
        deadline: Instant,
    },
    Established,
}

/// Control packets a connection owes the guest (sent before or after its data, in this order).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Owed {
    pub request: bool,
    pub response: bool,
    pub shutdown: u32,
    pub credit_update: bool,
    pub credit_request: bool,
    /// An RST ends the connection once sent.
    pub rst: bool,
}

pub(crate) struct Connection<S> {
    pub stream: S,
    /// Our (host) port and the guest's.
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    pub owed: Owed,
    /// Bytes to the host before any guest data (the `OK <port>\n` answer); outside the credit.
    pub reply: Vec<u8>,
    /// Guest bytes not yet written to the host; at most [`CONN_BUF`].
    pub to_host: VecDeque<u8>,
    /// Guest bytes received and forwarded to the host.
    pub rx_cnt: u32,
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    pub fwd_cnt_sent: u32,
    /// Bytes sent to the guest, and its credit as it last said.
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Host bytes read before the connection was established (after the CONNECT line).
    pub prefix: Vec<u8>,
    /// SHUTDOWN flags the guest sent.
    pub guest_shut: u32,
    /// The host peer sent EOF; we shut its write side.
    pub host_eof: bool,
    pub host_write_shut: bool,
}

impl<S: HostStream> Connection<S> {
    pub fn new(stream: S, local_port: u32, peer_port: u32, state: State) -> Connection<S> {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            reply: Vec::new(),
            to_host: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            prefix: Vec::new(),
            guest_shut: 0,
            host_eof: false,
            host_write_shut: false,
        }
    }

    /// How many bytes the guest can take now.
    pub fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Takes the credit fields of any packet from the guest.
    pub fn take_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// A header from us to the guest on this connection, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.owed.credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Guest data for the host: false when it exceeds the credit we gave (the caller resets).
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > CONN_BUF as usize {
            return false;
        }
        self.to_host.extend(data);
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        true
    }

    /// Writes what it can of the reply and the guest's bytes to the host; `Err` when the host
    /// peer is gone. Owes a credit update when the guest ran low and room came back.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.reply.is_empty() {
            match self.stream.write(&self.reply) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.reply.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let unheard = self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent);
        // What the guest thinks it may still send.
        let guest_view = CONN_BUF.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt_sent));
        if unheard >= CONN_BUF / 4 || (unheard > 0 && guest_view < MAX_PKT_LEN as u32) {
            self.owed.credit_update = true;
        }
        if self.guest_shut & shutdown::SEND != 0 && self.to_host.is_empty() && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown_write();
        }
        Ok(())
    }

    /// Both sides are done: the connection is closed with an RST once the host has every byte.
    pub fn finished(&self) -> bool {
        self.to_host.is_empty()
            && self.reply.is_empty()
            && (self.guest_shut == shutdown::BOTH || (self.host_eof && self.guest_shut & shutdown::SEND != 0))
    }

    /// Whether host bytes may go to the guest now.
    pub fn may_read_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.guest_shut & shutdown::RCV == 0
            && !self.owed.rst
            && self.peer_free() > 0
    }

    /// The next control packet owed before data (REQUEST, RESPONSE).
    pub fn take_leading(&mut self, guest_cid: u64) -> Option<Header> {
        if std::mem::take(&mut self.owed.request) {
            return Some(self.header(guest_cid, op::REQUEST, 0, 0));
        }
        if std::mem::take(&mut self.owed.response) {
            return Some(self.header(guest_cid, op::RESPONSE, 0, 0));
        }
        None
    }

    /// The next control packet owed after data (SHUTDOWN, CREDIT_UPDATE, CREDIT_REQUEST).
    pub fn take_trailing(&mut self, guest_cid: u64) -> Option<Header> {
        let flags = std::mem::take(&mut self.owed.shutdown);
        if flags != 0 {
            return Some(self.header(guest_cid, op::SHUTDOWN, 0, flags));
        }
        if self.owed.credit_update {
            return Some(self.header(guest_cid, op::CREDIT_UPDATE, 0, 0));
        }
        if std::mem::take(&mut self.owed.credit_request) {
            return Some(self.header(guest_cid, op::CREDIT_REQUEST, 0, 0));
        }
        None
    }
}
