//! `hardware-model.json`: the machine model and host CPU a VM was created with, so a later run
//! can tell when the VM moved to a host that differs.

use serde::{Deserialize, Serialize};

/// The hardware model format this build writes and reads.
pub const HARDWARE_MODEL_VERSION: u32 = 1;

/// The machine model every virtkit VM has today: an i440FX-style PC with ACPI, PCI (ECAM) and
/// virtio-pci devices.
pub const MACHINE_MODEL: &str = "virtkit-pc-1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct HardwareModel {
    pub version: u32,
    /// The platform the guest sees (chipset, buses, firmware interface).
    pub machine: String,
    /// The host CPU's vendor and model name when the VM was created.
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// The host CPU's feature flags (as /proc/cpuinfo names them) when the VM was created.
    pub cpu_features: Vec<String>,
}

impl HardwareModel {
    /// This host's model, read from /proc/cpuinfo.
    pub fn of_this_host() -> HardwareModel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == name).then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let mut cpu_features: Vec<String> = field("flags").split_whitespace().map(str::to_owned).collect();
        cpu_features.sort();
        HardwareModel {
            version: HARDWARE_MODEL_VERSION,
            machine: MACHINE_MODEL.to_owned(),
            cpu_vendor: field("vendor_id"),
            cpu_model: field("model name"),
            cpu_features,
        }
    }

    /// The features this model has that `host` lacks.
    pub fn missing_on(&self, host: &HardwareModel) -> Vec<String> {
        self.cpu_features
            .iter()
            .filter(|f| host.cpu_features.binary_search(f).is_err())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_a_model_and_lacks_nothing_of_itself() {
        let here = HardwareModel::of_this_host();
        assert_eq!(here.machine, MACHINE_MODEL);
        assert!(!here.cpu_vendor.is_empty());
        assert!(
            here.cpu_features.iter().any(|f| f == "lm"),
            "{:?}",
            here.cpu_features
        );
        assert!(here.missing_on(&here).is_empty());
        let mut fancier = here.clone();
        fancier.cpu_features.push("zz_future".into());
        assert_eq!(fancier.missing_on(&here), vec!["zz_future".to_owned()]);
    }
}
