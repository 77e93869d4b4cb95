//! Turning a descriptor chain into a virtio-blk request, checking everything the driver
//! controls: descriptor order and direction, lengths, guest addresses, sector ranges and
//! overflow. Nothing here does I/O, so hostile chains are tested and fuzzed cheaply.
//!
//! A request is a 16-byte header (type, reserved, sector) in device-readable memory, then data
//! (device-readable for writes, device-writable for reads), then one device-writable status byte
//! at the very end. Virtio 1.x lets the driver split these across descriptors any way it likes.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

pub const SECTOR_SIZE: u64 = 512;
pub const SECTOR_SHIFT: u32 = 9;
const HEADER_LEN: u64 = 16;
/// `struct virtio_blk_discard_write_zeroes`.
const RANGE_LEN: u64 = 16;
/// Bytes of a `GET_ID` answer.
pub const ID_BYTES: usize = 20;

/// Request types (`VIRTIO_BLK_T_*`).
pub mod types {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status values (`VIRTIO_BLK_S_*`).
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
const FLAG_UNMAP: u32 = 1;

/// A guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain the device cannot answer with a status: it is returned with nothing written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the descriptor chain is empty (bad head index or indirect table)")]
    Empty,
    #[error("the descriptor chain is cut short (a bad next index, a loop, or a bad indirect table)")]
    Truncated,
    #[error("the chain does not end in a device-writable byte for the status")]
    NoStatus,
    #[error("the status byte at {0:#x} is not in guest memory")]
    StatusOutOfRange(u64),
}

/// A request answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the request header is {0} bytes, less than 16")]
    ShortHeader(u64),
    #[error("buffer {addr:#x}+{len:#x} is not in guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("{0} bytes of data are not a whole number of sectors")]
    NotSectorMultiple(u64),
    #[error("sectors {sector}+{count} go beyond the disk's {capacity} sectors")]
    BeyondCapacity { sector: u64, count: u64, capacity: u64 },
    #[error("request type {0} has data in the wrong direction")]
    WrongDirection(u32),
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("{0} bytes of discard/write-zeroes ranges are not whole 16-byte ranges within the limit")]
    BadRanges(u64),
    #[error("a discard/write-zeroes range of {0} sectors is over the limit")]
    RangeTooLarge(u32),
    #[error("discard/write-zeroes flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    #[error("GET_ID has no buffer for the answer")]
    NoIdBuffer,
}

impl RequestError {
    /// The status the driver gets.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedFlags(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// A chain split by direction, the status byte taken off the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub readable: Vec<Segment>,
    /// Device-writable buffers before the status byte.
    pub writable: Vec<Segment>,
    pub status: GuestAddress,
    /// A device-readable descriptor came after a device-writable one.
    pub misordered: bool,
}

/// Walks a chain. The chain iterator stops at a loop (it visits at most the queue size), an
/// out-of-range next index or a bad indirect table; a chain whose last descriptor still says
/// "next" was cut short that way and is refused whole, since its real last byte is unknown.
pub fn walk_chain<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Chain, ChainError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut readable = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    let mut misordered = false;
    let mut last_has_next = false;
    let mut last_writable = false;
    let mut any = false;
    for desc in chain {
        any = true;
        last_has_next = desc.has_next();
        last_writable = desc.is_write_only();
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else {
            misordered |= !writable.is_empty();
            readable.push(segment);
        }
    }
    if !any {
        return Err(ChainError::Empty);
    }
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    // The status is the chain's very last byte: the last descriptor must be device-writable
    // and not empty.
    let last = writable
        .last_mut()
        .filter(|_| last_writable)
        .ok_or(ChainError::NoStatus)?;
    if last.len == 0 {
        return Err(ChainError::NoStatus);
    }
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(ChainError::StatusOutOfRange(last.addr.raw_value()))?;
    if !mem.address_in_range(status) {
        return Err(ChainError::StatusOutOfRange(status.raw_value()));
    }
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    Ok(Chain {
        readable,
        writable,
        status,
        misordered,
    })
}

/// What the disk allows, for checking requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub max_discard_sectors: u32,
    pub max_discard_segments: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_segments: u32,
}

/// One discard or write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub sector: u64,
    pub sectors: u32,
    pub unmap: bool,
}

/// A checked request, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read from `sector` into the buffers.
    Read {
        sector: u64,
        data: Vec<Segment>,
    },
    /// Write the buffers at `sector`.
    Write {
        sector: u64,
        data: Vec<Segment>,
    },
    Flush,
    /// Write the serial into the buffers (at most [`ID_BYTES`]).
    GetId {
        data: Vec<Segment>,
    },
    Discard(Vec<Range>),
    WriteZeroes(Vec<Range>),
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Splits `segments` after `at` bytes. A segment split past the end of the address space cannot
/// be guest memory: it is refused here rather than wrapping (found by `cargo fuzz`).
fn split_at(segments: &[Segment], mut at: u64) -> Result<(Vec<Segment>, Vec<Segment>), RequestError> {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for s in segments {
        let len = u64::from(s.len);
        if at >= len {
            head.push(*s);
            at -= len;
        } else if at == 0 {
            tail.push(*s);
        } else {
            // `at` < `len` <= u32::MAX.
            let first = at as u32;
            let rest = s.addr.checked_add(at).ok_or(RequestError::OutOfRange {
                addr: s.addr.raw_value(),
                len: s.len,
            })?;
            head.push(Segment {
                addr: s.addr,
                len: first,
            });
            tail.push(Segment {
                addr: rest,
                len: s.len - first,
            });
            at = 0;
        }
    }
    Ok((head, tail))
}

/// Reads the bytes of `segments` (all of them) from guest memory.
fn read_segments(mem: &GuestMemoryMmap, segments: &[Segment], out: &mut Vec<u8>) -> Result<(), RequestError> {
    for s in segments {
        let start = out.len();
        out.resize(start + s.len as usize, 0);
        mem.read_slice(&mut out[start..], s.addr)
            .map_err(|_| RequestError::OutOfRange {
                addr: s.addr.raw_value(),
                len: s.len,
            })?;
    }
    Ok(())
}

fn check_in_memory(mem: &GuestMemoryMmap, segments: &[Segment]) -> Result<(), RequestError> {
    for s in segments {
        if s.len > 0 && !GuestMemoryBackend::check_range(mem, s.addr, s.len as usize) {
            return Err(RequestError::OutOfRange {
                addr: s.addr.raw_value(),
                len: s.len,
            });
        }
    }
    Ok(())
}

fn check_sectors(sector: u64, bytes: u64, limits: &DiskLimits) -> Result<(), RequestError> {
    if !bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::NotSectorMultiple(bytes));
    }
    let count = bytes >> SECTOR_SHIFT;
    match sector.checked_add(count) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::BeyondCapacity {
            sector,
            count,
            capacity: limits.capacity_sectors,
        }),
    }
}

fn parse_ranges(
    mem: &GuestMemoryMmap,
    payload: &[Segment],
    limits: &DiskLimits,
    max_segments: u32,
    max_sectors: u32,
    discard: bool,
) -> Result<Vec<Range>, RequestError> {
    let len = total(payload);
    if len == 0 || !len.is_multiple_of(RANGE_LEN) || len / RANGE_LEN > u64::from(max_segments) {
        return Err(RequestError::BadRanges(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    read_segments(mem, payload, &mut bytes)?;
    let mut ranges = Vec::new();
    for raw in bytes.chunks_exact(RANGE_LEN as usize) {
        let sector = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let sectors = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
        // Discard takes no flags (unmap included); write-zeroes takes only unmap.
        let allowed = if discard { 0 } else { FLAG_UNMAP };
        if flags & !allowed != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        if sectors > max_sectors {
            return Err(RequestError::RangeTooLarge(sectors));
        }
        check_sectors(sector, u64::from(sectors) << SECTOR_SHIFT, limits)?;
        ranges.push(Range {
            sector,
            sectors,
            unmap: flags & FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

/// Checks a walked chain and says what to do.
pub fn parse_request(
    chain: &Chain,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<Request, RequestError> {
    if chain.misordered {
        return Err(RequestError::ReadableAfterWritable);
    }
    let readable_len = total(&chain.readable);
    if readable_len < HEADER_LEN {
        return Err(RequestError::ShortHeader(readable_len));
    }
    let (header, readable) = split_at(&chain.readable, HEADER_LEN)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN as usize);
    read_segments(mem, &header, &mut bytes)?;
    let kind = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    check_in_memory(mem, &readable)?;
    check_in_memory(mem, &chain.writable)?;
    let writable = &chain.writable;
    let no_readable = || total(&readable) == 0;
    let no_writable = || total(writable) == 0;

    match kind {
        types::IN => {
            if !no_readable() {
                return Err(RequestError::WrongDirection(kind));
            }
            check_sectors(sector, total(writable), limits)?;
            Ok(Request::Read {
                sector,
                data: writable.clone(),
            })
        }
        types::OUT => {
            if !no_writable() {
                return Err(RequestError::WrongDirection(kind));
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            check_sectors(sector, total(&readable), limits)?;
            Ok(Request::Write {
                sector,
                data: readable,
            })
        }
        types::FLUSH => Ok(Request::Flush),
        types::GET_ID => {
            if !no_readable() {
                return Err(RequestError::WrongDirection(kind));
            }
            if no_writable() {
                return Err(RequestError::NoIdBuffer);
            }
            Ok(Request::GetId {
                data: writable.clone(),
            })
        }
        types::DISCARD | types::WRITE_ZEROES => {
            if !no_writable() {
                return Err(RequestError::WrongDirection(kind));
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            if kind == types::DISCARD {
                let ranges = parse_ranges(
                    mem,
                    &readable,
                    limits,
                    limits.max_discard_segments,
                    limits.max_discard_sectors,
                    true,
                )?;
                Ok(Request::Discard(ranges))
            } else {
                let ranges = parse_ranges(
                    mem,
                    &readable,
                    limits,
                    limits.max_write_zeroes_segments,
                    limits.max_write_zeroes_sectors,
                    false,
                )?;
                Ok(Request::WriteZeroes(ranges))
            }
        }
        other => Err(RequestError::Unsupported(other)),
    }
}
