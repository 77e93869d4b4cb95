//! The guest's memory statistics (virtio 1.x, 5.5.6.3): a buffer of 10-byte entries, each a
//! le16 tag and a le64 value, packed. Unknown tags and a short last entry are ignored.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Bytes of one `struct virtio_balloon_stat`.
pub const STAT_ENTRY_LEN: usize = 10;
/// Most bytes read from one statistics buffer (Linux sends 10 entries; room for growth).
pub const MAX_STATS_LEN: usize = 64 * STAT_ENTRY_LEN;

/// `VIRTIO_BALLOON_S_*` tags.
pub mod tags {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJOR_FAULTS: u16 = 2;
    pub const MINOR_FAULTS: u16 = 3;
    pub const FREE_MEMORY: u16 = 4;
    pub const TOTAL_MEMORY: u16 = 5;
    pub const AVAILABLE_MEMORY: u16 = 6;
    pub const DISK_CACHES: u16 = 7;
    pub const HUGETLB_ALLOCATIONS: u16 = 8;
    pub const HUGETLB_FAILURES: u16 = 9;
}

/// The last statistics the guest reported; a field is `None` when the guest left it out.
/// Memory amounts are in bytes, swap in/out in bytes too (Linux reports them in bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatistics {
    /// When the device received the report.
    pub updated_at: SystemTime,
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStatistics {
    /// Parses a statistics buffer received at `updated_at`.
    pub fn parse(bytes: &[u8], updated_at: SystemTime) -> BalloonStatistics {
        let mut stats = BalloonStatistics {
            updated_at,
            swap_in: None,
            swap_out: None,
            major_faults: None,
            minor_faults: None,
            free_memory: None,
            total_memory: None,
            available_memory: None,
            disk_caches: None,
            hugetlb_allocations: None,
            hugetlb_failures: None,
        };
        for entry in bytes.chunks_exact(STAT_ENTRY_LEN) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..]);
            let value = Some(u64::from_le_bytes(value));
            let field = match tag {
                tags::SWAP_IN => &mut stats.swap_in,
                tags::SWAP_OUT => &mut stats.swap_out,
                tags::MAJOR_FAULTS => &mut stats.major_faults,
                tags::MINOR_FAULTS => &mut stats.minor_faults,
                tags::FREE_MEMORY => &mut stats.free_memory,
                tags::TOTAL_MEMORY => &mut stats.total_memory,
                tags::AVAILABLE_MEMORY => &mut stats.available_memory,
                tags::DISK_CACHES => &mut stats.disk_caches,
                tags::HUGETLB_ALLOCATIONS => &mut stats.hugetlb_allocations,
                tags::HUGETLB_FAILURES => &mut stats.hugetlb_failures,
                _ => continue,
            };
            *field = value;
        }
        stats
    }
}
