//! The state file's layout: a header page, the metadata (JSON, SHA-256-checked), and guest
//! memory from a page-aligned offset, one range after the other, so that it can be mapped.
//! docs/SAVE.md describes it byte by byte; this module only encodes and checks it, with no I/O,
//! so that the parser can be fuzzed on bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::MachineState;

/// The first 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VKSTATE\0";
/// The format this virtkit writes, and the newest it reads. Version 2 added the `devices`
/// section; a version 1 file (which has none) still restores.
pub const FORMAT_VERSION: u32 = 2;
/// Guest pages are saved and mapped in units of this.
pub const PAGE_SIZE: u64 = 4096;
/// The header occupies the first page; the metadata starts right after it.
pub const HEADER_LEN: u64 = PAGE_SIZE;
/// Metadata larger than this is not ours (it is a few KiB per vCPU).
pub const MAX_METADATA_LEN: u64 = 64 << 20;
/// Bytes of the header that carry fields; the rest of the page is zero.
const HEADER_FIELDS_LEN: usize = 80;

/// Where the parts of a state file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub metadata_offset: u64,
    pub metadata_len: u64,
    pub memory_offset: u64,
    pub memory_len: u64,
    pub metadata_sha256: [u8; 32],
}

/// One range of guest memory as saved: its bytes follow the previous range's in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRange {
    pub guest_address: u64,
    pub size: u64,
}

/// Everything in a state file but the memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The configuration the machine was built from, as its owner (the framework) described it.
    pub configuration: serde_json::Value,
    pub machine: MachineState,
    /// Guest memory, in file order from the header's memory offset.
    pub memory: Vec<MemoryRange>,
    /// The owner's devices (the framework's virtio devices with their transports), opaque to
    /// the machine: `null` when it has none, and in version 1 files.
    #[serde(default)]
    pub devices: serde_json::Value,
}

/// Why bytes are not a state file this virtkit can restore. Every message is one sentence that
/// says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the file is not a virtkit state file (it does not start with VKSTATE); give the path of a file save_machine_state wrote")]
    NotAStateFile,
    #[error("the state file has format version {found}, newer than version {FORMAT_VERSION} that this virtkit reads; restore it with the virtkit that saved it or a newer one")]
    NewerVersion { found: u32 },
    #[error("the state file has format version {found}, which no virtkit release wrote; the file is damaged, save the machine again")]
    UnknownVersion { found: u32 },
    #[error("the state file is damaged ({what}); it cannot be restored, save the machine again")]
    Damaged { what: &'static str },
}

fn damaged(what: &'static str) -> FormatError {
    FormatError::Damaged { what }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// `value` rounded up to a whole page.
pub fn page_align(value: u64) -> u64 {
    value.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl Header {
    /// The header for `metadata` followed by `memory_len` bytes of memory.
    pub fn for_metadata(metadata: &[u8], memory_len: u64) -> Header {
        let metadata_len = metadata.len() as u64;
        Header {
            version: FORMAT_VERSION,
            metadata_offset: HEADER_LEN,
            metadata_len,
            memory_offset: page_align(HEADER_LEN + metadata_len),
            memory_len,
            metadata_sha256: Sha256::digest(metadata).into(),
        }
    }

    /// The header page: the fields, then a SHA-256 of the fields, then zeros.
    pub fn encode(&self) -> Vec<u8> {
        let mut page = vec![0u8; HEADER_LEN as usize];
        page[0..8].copy_from_slice(&MAGIC);
        page[8..12].copy_from_slice(&self.version.to_le_bytes());
        // 12..16 reserved, zero.
        page[16..24].copy_from_slice(&self.metadata_offset.to_le_bytes());
        page[24..32].copy_from_slice(&self.metadata_len.to_le_bytes());
        page[32..40].copy_from_slice(&self.memory_offset.to_le_bytes());
        page[40..48].copy_from_slice(&self.memory_len.to_le_bytes());
        page[48..80].copy_from_slice(&self.metadata_sha256);
        let digest: [u8; 32] = Sha256::digest(&page[..HEADER_FIELDS_LEN]).into();
        page[HEADER_FIELDS_LEN..HEADER_FIELDS_LEN + 32].copy_from_slice(&digest);
        page
    }

    /// Reads and checks a header page: the magic, then the version (a newer file is told
    /// apart from a damaged one before the checksum, whose layout a newer version may change),
    /// then the checksum and that the parts are where this version puts them.
    pub fn decode(page: &[u8]) -> Result<Header, FormatError> {
        if page.len() < 8 || page[0..8] != MAGIC {
            return Err(FormatError::NotAStateFile);
        }
        if page.len() < HEADER_LEN as usize {
            return Err(damaged("the header is cut short"));
        }
        let version = u32_at(page, 8);
        if version > FORMAT_VERSION {
            return Err(FormatError::NewerVersion { found: version });
        }
        if version == 0 {
            return Err(FormatError::UnknownVersion { found: version });
        }
        let digest: [u8; 32] = Sha256::digest(&page[..HEADER_FIELDS_LEN]).into();
        if page[HEADER_FIELDS_LEN..HEADER_FIELDS_LEN + 32] != digest {
            return Err(damaged("the header's checksum does not match"));
        }
        let mut metadata_sha256 = [0; 32];
        metadata_sha256.copy_from_slice(&page[48..80]);
        let header = Header {
            version,
            metadata_offset: u64_at(page, 16),
            metadata_len: u64_at(page, 24),
            memory_offset: u64_at(page, 32),
            memory_len: u64_at(page, 40),
            metadata_sha256,
        };
        if header.metadata_offset != HEADER_LEN || header.metadata_len > MAX_METADATA_LEN {
            return Err(damaged("the metadata is not where the header says"));
        }
        let metadata_end = HEADER_LEN + header.metadata_len;
        if !header.memory_offset.is_multiple_of(PAGE_SIZE)
            || header.memory_offset < metadata_end
            || !header.memory_len.is_multiple_of(PAGE_SIZE)
            || header.memory_offset.checked_add(header.memory_len).is_none()
        {
            return Err(damaged(
                "the memory section is not page-aligned after the metadata",
            ));
        }
        Ok(header)
    }

    /// Checks `metadata` (the bytes at `metadata_offset`) against the header and parses it.
    pub fn parse_metadata(&self, metadata: &[u8]) -> Result<Metadata, FormatError> {
        if metadata.len() as u64 != self.metadata_len {
            return Err(damaged("the file ends inside the metadata"));
        }
        let digest: [u8; 32] = Sha256::digest(metadata).into();
        if digest != self.metadata_sha256 {
            return Err(damaged("the metadata's checksum does not match"));
        }
        let parsed: Metadata =
            serde_json::from_slice(metadata).map_err(|_| damaged("the metadata cannot be read"))?;
        let mut total: u64 = 0;
        for range in &parsed.memory {
            if !range.size.is_multiple_of(PAGE_SIZE) || !range.guest_address.is_multiple_of(PAGE_SIZE) {
                return Err(damaged("a memory range is not page-aligned"));
            }
            total = total
                .checked_add(range.size)
                .ok_or(damaged("the memory ranges add up past the file"))?;
        }
        if total != self.memory_len {
            return Err(damaged("the memory ranges do not add up to the memory section"));
        }
        Ok(parsed)
    }
}

/// Parses the start of a state file held in memory (the header page and the metadata; the
/// memory is not needed): what the fuzz target drives.
pub fn parse(bytes: &[u8]) -> Result<(Header, Metadata), FormatError> {
    let header = Header::decode(bytes)?;
    let start = header.metadata_offset as usize;
    let end = start
        .checked_add(header.metadata_len as usize)
        .filter(|&end| end <= bytes.len())
        .ok_or(damaged("the file ends inside the metadata"))?;
    let metadata = header.parse_metadata(&bytes[start..end])?;
    Ok((header, metadata))
}

/// The metadata's bytes as written.
pub fn encode_metadata(metadata: &Metadata) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(metadata)
}
