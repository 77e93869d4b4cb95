//! Where the device's frames go on the host: the [`NetBackend`] trait the worker drives, and
//! what a backend says about the header and offloads it handles.
//!
//! Every backend is non-blocking: the worker waits for [`NetBackend::fd`] in epoll and must
//! never block in `send` or `recv`, or a slow peer would stall the guest's other queue too.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

use virtio_bindings::virtio_net::{
    virtio_net_hdr_v1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
};

/// Bytes of `struct virtio_net_hdr_v1`: what precedes every frame on both queues under
/// VIRTIO_F_VERSION_1 (the only version the transport speaks), `num_buffers` included.
pub const VNET_HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();
/// Offset of `num_buffers` in the header.
pub(crate) const NUM_BUFFERS_OFFSET: usize = std::mem::offset_of!(virtio_net_hdr_v1, num_buffers);
/// Longest Ethernet frame (without the virtio-net header) the device moves either way: the
/// largest IP packet (what TSO produces) in an Ethernet frame, with a VLAN tag. Bounds every
/// host buffer a guest or a peer can make the device fill.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;

/// The offloads a backend handles when it takes and gives frames with a virtio-net header
/// ([`NetBackend::vnet_hdr_len`] is [`VNET_HDR_LEN`]): it completes partial checksums and
/// segments large frames the guest sends, and may hand the guest such frames. The device
/// offers the matching features only then; a backend of plain frames cannot honour them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Partial checksums (`VIRTIO_NET_F_CSUM`, `VIRTIO_NET_F_GUEST_CSUM`).
    pub checksum: bool,
    /// TCP segmentation over IPv4 (`HOST_TSO4`, `GUEST_TSO4`); needs `checksum`.
    pub tso4: bool,
    /// TCP segmentation over IPv6 (`HOST_TSO6`, `GUEST_TSO6`); needs `checksum`.
    pub tso6: bool,
    /// TSO with ECN (`HOST_ECN`, `GUEST_ECN`); needs `tso4` or `tso6`.
    pub ecn: bool,
}

impl Offloads {
    /// The feature bits these offloads stand for, both directions; the dependencies the
    /// specification sets (5.1.3.1) are honoured by leaving out what lacks its base.
    pub fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut features = 0;
        if !self.checksum {
            return 0;
        }
        features |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
        if self.tso4 {
            features |= bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO4);
        }
        if self.tso6 {
            features |= bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        if self.ecn && (self.tso4 || self.tso6) {
            features |= bit(VIRTIO_NET_F_HOST_ECN) | bit(VIRTIO_NET_F_GUEST_ECN);
        }
        features
    }
}

/// The host side of one rx/tx queue pair, driven by the device's worker thread.
///
/// Frames are whole Ethernet frames, preceded by the virtio-net header when
/// [`NetBackend::vnet_hdr_len`] says the backend takes it (a TAP device with `IFF_VNET_HDR`);
/// otherwise the device strips the header on tx and writes one on rx.
pub trait NetBackend: Send {
    /// Readable when a frame may wait, writable when a refused send may go on. The worker
    /// watches it only for what it wants now (level-triggered epoll).
    fn fd(&self) -> BorrowedFd<'_>;
    /// Sends one frame, given in pieces. `Ok`: the backend took all of it (it may still be
    /// writing it out; see [`NetBackend::flush`]). `ErrorKind::WouldBlock`: it took none of it;
    /// the worker keeps the frame and tries again when [`NetBackend::fd`] is writable. Any other
    /// error: the frame is lost.
    fn send(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()>;
    /// Writes out what a backend took and has not finished (a stream's partial write);
    /// `ErrorKind::WouldBlock` while some is left. Backends that never hold a frame need not
    /// implement it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Receives one frame into `buf` (at least `vnet_hdr_len() + MAX_FRAME_LEN` bytes) and
    /// returns its length; `ErrorKind::WouldBlock` when none waits. `ErrorKind::UnexpectedEof`
    /// says the peer is gone for good and `ErrorKind::InvalidData` that its framing is broken:
    /// the worker stops reading then.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// 0: plain Ethernet frames. [`VNET_HDR_LEN`]: frames with the virtio-net header, as the
    /// guest writes it.
    fn vnet_hdr_len(&self) -> usize {
        0
    }
    /// The offloads the backend handles (only looked at with a header).
    fn offloads(&self) -> Offloads {
        Offloads::default()
    }
    /// The driver accepted `features` (the device's bits): a backend that segments or checks
    /// frames for the guest (TAP's `TUNSETOFFLOAD`) turns on only what the guest took.
    fn negotiated(&mut self, _features: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an I/O error means "try again later".
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
