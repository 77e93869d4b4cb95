//! Which queue does what. The spec numbers the queues by the *negotiated* features: inflate 0,
//! deflate 1, then the stats queue if `STATS_VQ` was accepted, then the reporting queue if
//! `FREE_PAGE_REPORTING` was (Linux sets up only the queues of accepted features, packed in
//! that order). The device offers one queue per offered feature; the transport hands over the
//! queues the driver enabled, by index, and each gets its role from the accepted features.

use super::device::features::{FREE_PAGE_REPORTING, STATS_VQ};

/// What a queue carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The queues in index order for the feature bits `features` (offered or accepted).
pub fn queue_roles(features: u64) -> Vec<QueueRole> {
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if features & STATS_VQ != 0 {
        roles.push(QueueRole::Stats);
    }
    if features & FREE_PAGE_REPORTING != 0 {
        roles.push(QueueRole::Reporting);
    }
    roles
}

/// The role of queue `index` under the accepted features; `None` for a queue that has none
/// (enabled by a driver beyond what it negotiated: kept, never read).
pub fn role_of(index: u16, acked_features: u64) -> Option<QueueRole> {
    queue_roles(acked_features).get(usize::from(index)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporting_moves_down_when_stats_is_not_accepted() {
        let both = STATS_VQ | FREE_PAGE_REPORTING;
        assert_eq!(role_of(2, both), Some(QueueRole::Stats));
        assert_eq!(role_of(3, both), Some(QueueRole::Reporting));
        assert_eq!(role_of(2, FREE_PAGE_REPORTING), Some(QueueRole::Reporting));
        assert_eq!(role_of(3, FREE_PAGE_REPORTING), None);
        assert_eq!(role_of(2, 0), None);
        assert_eq!(role_of(0, 0), Some(QueueRole::Inflate));
        assert_eq!(role_of(1, 0), Some(QueueRole::Deflate));
    }
}
