//! How a balloon is set up: which optional features it offers and how often it asks the guest
//! for statistics.

use serde::{Deserialize, Serialize};

/// Default interval between statistics requests, in seconds.
pub const DEFAULT_STATS_INTERVAL_SECS: u64 = 5;

/// A virtio-balloon device's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalloonConfig {
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may take pages back from the balloon
    /// when it runs out of memory, whatever the target says.
    pub deflate_on_oom: bool,
    /// Offer `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`: the guest reports free memory, which the
    /// host discards.
    pub free_page_reporting: bool,
    /// Seconds between statistics requests from the device's worker; 0 turns the polling off
    /// (statistics are then only requested through `BalloonHandle::request_stats`).
    pub stats_interval_secs: u64,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            deflate_on_oom: false,
            free_page_reporting: false,
            stats_interval_secs: DEFAULT_STATS_INTERVAL_SECS,
        }
    }
}
