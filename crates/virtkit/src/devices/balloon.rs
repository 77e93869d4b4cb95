//! The memory balloon: virtio-balloon, as Apple's `VZVirtioTraditionalMemoryBalloonDevice`
//! (the host sets a target, the guest gives that much memory back), with statistics and free
//! page reporting so the host gets back what the guest frees.

use serde::{Deserialize, Serialize};
use virtkit_devices::balloon::{Balloon, BalloonConfig, BalloonStatistics, PCI_CLASS};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::validate::Issues;

/// A memory balloon device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct MemoryBalloonConfiguration {
    /// The guest may take pages back from the balloon when it runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// The guest reports the memory it frees; the host gives it back to the system.
    #[serde(default = "yes")]
    pub free_page_reporting: bool,
    /// Seconds between the guest's statistics reports (0: only when asked).
    #[serde(default = "default_interval")]
    pub statistics_interval_seconds: u64,
}

fn yes() -> bool {
    true
}

fn default_interval() -> u64 {
    virtkit_devices::balloon::DEFAULT_STATS_INTERVAL_SECS
}

impl Default for MemoryBalloonConfiguration {
    fn default() -> Self {
        MemoryBalloonConfiguration {
            deflate_on_oom: false,
            free_page_reporting: true,
            statistics_interval_seconds: default_interval(),
        }
    }
}

/// What the host asked of the balloon and what the guest did, with its last statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatus {
    /// Memory the host asked the guest to give back.
    pub target_bytes: u64,
    /// Memory the guest has given back.
    pub actual_bytes: u64,
    /// The guest's last memory statistics, once it sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<BalloonStatistics>,
}

pub(super) fn validate(balloons: &[MemoryBalloonConfiguration], issues: &mut Issues) {
    if balloons.len() > 1 {
        issues.add(
            "memory_balloon_devices",
            format!(
                "{} memory balloons given; a machine has at most one, so keep one",
                balloons.len()
            ),
        );
    }
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    balloons: &[MemoryBalloonConfiguration],
) -> Result<(), DeviceError> {
    for balloon in balloons {
        let device = Balloon::new(BalloonConfig {
            deflate_on_oom: balloon.deflate_on_oom,
            free_page_reporting: balloon.free_page_reporting,
            stats_interval_secs: balloon.statistics_interval_seconds,
        })
        .map_err(|source| DeviceError::Balloon { source })?;
        let handle = device.handle();
        let attached = attach_pci(machine, device, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: "memory balloon".into(),
            source,
        })?;
        manager.add("balloon", attached);
        manager.set_balloon(handle);
    }
    Ok(())
}
