//! Entropy devices: virtio-rng fed by the host's `getrandom`, as Apple's
//! `VZVirtioEntropyDeviceConfiguration`, with Firecracker's optional rate limit.

use serde::{Deserialize, Serialize};
use virtkit_devices::rng::{RateLimit, Rng, PCI_CLASS};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::validate::Issues;

/// A virtio entropy device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct EntropyDeviceConfiguration {
    /// At most this many bytes per second reach the guest (none: as fast as it reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl EntropyDeviceConfiguration {
    /// Parses the CLI form: empty (no limit), or `RATE[,burst=SIZE]` with sizes such as `8K`.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == "on" {
            return Ok(EntropyDeviceConfiguration::default());
        }
        let mut parts = text.split(',');
        let rate = parts.next().unwrap_or_default();
        let bytes_per_second = crate::size::parse_size(rate)
            .map_err(|e| format!("`{rate}` is not a rate in bytes per second ({e}); write e.g. 8K or 1M"))?;
        let mut burst_bytes = None;
        for option in parts {
            match option.split_once('=') {
                Some(("burst", size)) => {
                    burst_bytes =
                        Some(crate::size::parse_size(size).map_err(|e| {
                            format!("`{size}` is not a burst size ({e}); write e.g. burst=4K")
                        })?)
                }
                _ => {
                    return Err(format!(
                        "`{option}` is not an entropy option; write RATE[,burst=SIZE], e.g. 8K,burst=1K"
                    ))
                }
            }
        }
        Ok(EntropyDeviceConfiguration {
            rate_limit: Some(RateLimit {
                bytes_per_second,
                burst_bytes,
            }),
        })
    }
}

pub(super) fn validate(devices: &[EntropyDeviceConfiguration], issues: &mut Issues) {
    for (i, device) in devices.iter().enumerate() {
        let Some(limit) = device.rate_limit else { continue };
        if limit.bytes_per_second == 0 {
            issues.add(
                &format!("entropy_devices[{i}].rate_limit.bytes_per_second"),
                "a rate of 0 bytes per second starves the guest; give at least 1, or no rate_limit".into(),
            );
        }
        if limit.burst_bytes == Some(0) {
            issues.add(
                &format!("entropy_devices[{i}].rate_limit.burst_bytes"),
                "a burst of 0 bytes hands out nothing; give at least 1, or leave it out".into(),
            );
        }
    }
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    devices: &[EntropyDeviceConfiguration],
) -> Result<(), DeviceError> {
    for device in devices {
        let attached = attach_pci(machine, Rng::host(device.rate_limit), PCI_CLASS).map_err(|source| {
            DeviceError::Attach {
                what: "entropy device".into(),
                source,
            }
        })?;
        manager.add("rng", attached);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_form_parses_rate_and_burst() {
        assert_eq!(
            EntropyDeviceConfiguration::parse_cli("").unwrap().rate_limit,
            None
        );
        let limit = EntropyDeviceConfiguration::parse_cli("8K,burst=1K")
            .unwrap()
            .rate_limit
            .unwrap();
        assert_eq!((limit.bytes_per_second, limit.burst_bytes), (8192, Some(1024)));
        let err = EntropyDeviceConfiguration::parse_cli("8K,fast").unwrap_err();
        assert!(err.contains("`fast` is not an entropy option"), "{err}");
        assert!(EntropyDeviceConfiguration::parse_cli("lots").is_err());
    }

    #[test]
    fn json_uses_the_documented_names() {
        let d: EntropyDeviceConfiguration =
            serde_json::from_str(r#"{"rate_limit": {"bytes_per_second": 8192, "burst_bytes": 1024}}"#)
                .unwrap();
        assert_eq!(d.rate_limit.unwrap().burst(), 1024);
        assert!(serde_json::from_str::<EntropyDeviceConfiguration>(r#"{"rate": 1}"#).is_err());
    }
}
