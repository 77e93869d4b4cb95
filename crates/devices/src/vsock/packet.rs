//! The packet header (virtio 1.2, 5.10.6: `struct virtio_vsock_hdr`, 44 bytes, little endian),
//! parsed from and written to plain bytes: every field is taken as the guest wrote it and
//! checked by the muxer, never trusted.

/// The host's CID: every packet the device sends comes from it.
pub const HOST_CID: u64 = 2;
/// Bytes of the header.
pub const HDR_LEN: usize = 44;
/// Most payload bytes the device takes or sends in one packet (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_LEN: usize = 64 << 10;

/// `type`: only stream sockets are offered (no `VIRTIO_VSOCK_F_SEQPACKET`).
pub const TYPE_STREAM: u16 = 1;

/// `op` values.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of a SHUTDOWN.
pub mod shutdown {
    /// The sender will receive no more.
    pub const RCV: u32 = 1;
    /// The sender will send no more.
    pub const SEND: u32 = 2;
    pub const BOTH: u32 = RCV | SEND;
}

/// `struct virtio_vsock_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            kind: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_through_its_bytes() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1025,
            dst_port: 5000,
            len: 7,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 99,
        };
        let bytes = hdr.to_bytes();
        assert_eq!(&bytes[0..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[30..32], &op::RW.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), hdr);
    }
}
