//! Saving a paused machine to a state file and restoring it into a new, not yet started
//! machine built from the same configuration (docs/SAVE.md).
//!
//! What is saved: every vCPU (through its own thread, which owns it: see `vcpu::Control`), the
//! VM's in-kernel irqchip, PIT and clock, the platform devices, and guest memory. Virtio
//! devices are not this module's: their owner (the framework's device manager) hands their
//! state over as an opaque `devices` section, and gets it back on restore.

pub mod format;
mod memory;
mod platform;
mod write;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtkit_hypervisor::{HypervisorError, Vcpu, VcpuState, Vm, VmState};
use vm_memory::GuestMemoryMmap;

use crate::vcpu::{CaptureError, Control};
pub use format::{FormatError, Header, MemoryRange, Metadata, FORMAT_VERSION};
pub use memory::MemoryRestoreError;
pub(crate) use platform::PlatformDevices;
pub use platform::{PciFunctionState, PlatformState, PlatformStateError};

/// How long the parked vCPU threads get to hand over their state.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The machine's state besides its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// By vCPU index.
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub platform: PlatformState,
}

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveSummary {
    /// Guest pages (4 KiB) that were not all zeros and were written.
    pub memory_pages_written: u64,
    /// The state file's apparent size (its holes included).
    pub file_len: u64,
}

/// Why a machine's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("KVM would not give or take the VM's or a vCPU's state")]
    Hypervisor(#[from] HypervisorError),
    #[error("cannot encode the machine's state (a virtkit bug)")]
    Encode(#[source] serde_json::Error),
    #[error("the machine's state takes {len} bytes besides guest memory, more than the {max} a state file holds; nothing was written")]
    MetadataTooLarge { len: u64, max: u64 },
    #[error("cannot write the state file {path}; check that its directory exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the state file was saved from another configuration ({differences}); restore it into a virtual machine built from the configuration it was saved with")]
    ConfigurationMismatch { differences: String },
    #[error("a state can only be restored into a machine that has not started; build a new one from the same configuration")]
    AlreadyStarted,
    #[error(transparent)]
    Platform(#[from] PlatformStateError),
    #[error(transparent)]
    Memory(#[from] MemoryRestoreError),
}

/// What a machine keeps so that its state can be saved from any thread while it is paused.
#[derive(Clone)]
pub(crate) struct SaveParts {
    pub vm: Arc<Vm>,
    pub memory: GuestMemoryMmap,
    pub platform: PlatformDevices,
    pub control: Arc<Control>,
    pub vcpus: usize,
}

impl SaveParts {
    /// Saves the paused machine and `configuration` (the owner's description of what it was
    /// built from) to `path`, atomically.
    pub(crate) fn save(
        &self,
        path: &Path,
        configuration: &serde_json::Value,
        devices: &serde_json::Value,
    ) -> Result<SaveSummary, SnapshotError> {
        let vcpus = self.control.capture_vcpus(self.vcpus, CAPTURE_TIMEOUT)?;
        let vm = self.vm.save_state()?;
        let platform = self.platform.save();
        let metadata = Metadata {
            configuration: configuration.clone(),
            machine: MachineState { vcpus, vm, platform },
            memory: memory::ranges(&self.memory),
            devices: devices.clone(),
        };
        let summary = write::write_state_file(path, &metadata, &self.memory)?;
        tracing::info!(
            path = %path.display(),
            pages = summary.memory_pages_written,
            "machine state saved"
        );
        Ok(summary)
    }

    /// Reads and checks everything in `path` against this machine and `configuration`, then
    /// puts it in: memory, the VM, each of `vcpus`, the devices. Nothing changes when a check
    /// fails; a failure of KVM after that leaves a machine that must not be started. Returns
    /// the file's `devices` section for the owner.
    pub(crate) fn restore(
        &self,
        vcpus: &[Vcpu],
        path: &Path,
        configuration: &serde_json::Value,
    ) -> Result<serde_json::Value, SnapshotError> {
        let (file, header, metadata) = open_state_file(path)?;
        let mut differences = configuration_differences(&metadata.configuration, configuration);
        if metadata.machine.vcpus.len() != vcpus.len() {
            differences.push(format!(
                "vCPUs: {} in the file, {} here",
                metadata.machine.vcpus.len(),
                vcpus.len()
            ));
        }
        if metadata.memory != memory::ranges(&self.memory) {
            differences.push("guest memory layout: another size or layout in the file".to_owned());
        }
        if !differences.is_empty() {
            return Err(SnapshotError::ConfigurationMismatch {
                differences: differences.join("; "),
            });
        }
        self.platform.check(&metadata.machine.platform)?;

        memory::restore(&self.memory, &file, header.memory_offset)?;
        self.vm.restore_state(&metadata.machine.vm)?;
        for (vcpu, state) in vcpus.iter().zip(&metadata.machine.vcpus) {
            vcpu.restore_state(state)?;
        }
        self.platform.restore(&metadata.machine.platform)?;
        tracing::info!(path = %path.display(), "machine state restored");
        Ok(metadata.devices)
    }
}

/// Checks that `path` is a state file this virtkit reads, undamaged, saved with
/// `configuration`: what can be known before a machine is built, so an owner can refuse before
/// it spends anything (its console attachments) on a restore that cannot work. Returns the
/// metadata, so the owner can check its `devices` section too.
pub fn check_state_file(path: &Path, configuration: &serde_json::Value) -> Result<Metadata, SnapshotError> {
    let (_, _, metadata) = open_state_file(path)?;
    let differences = configuration_differences(&metadata.configuration, configuration);
    if differences.is_empty() {
        Ok(metadata)
    } else {
        Err(SnapshotError::ConfigurationMismatch {
            differences: differences.join("; "),
        })
    }
}

fn configuration_differences(saved: &serde_json::Value, current: &serde_json::Value) -> Vec<String> {
    let mut differences = Vec::new();
    describe_differences("", saved, current, &mut differences);
    differences
}

/// Opens `path` and checks its header, metadata and length.
pub fn open_state_file(path: &Path) -> Result<(File, Header, Metadata), SnapshotError> {
    let read_error = |source| SnapshotError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let mut page = vec![0u8; format::HEADER_LEN.min(len) as usize];
    file.read_exact_at(&mut page, 0).map_err(read_error)?;
    let header = Header::decode(&page)?;
    if len < header.metadata_offset + header.metadata_len {
        return Err(FormatError::Damaged {
            what: "the file ends inside the metadata",
        }
        .into());
    }
    let mut bytes = vec![0u8; header.metadata_len as usize];
    file.read_exact_at(&mut bytes, header.metadata_offset)
        .map_err(read_error)?;
    let metadata = header.parse_metadata(&bytes)?;
    if len < header.memory_offset + header.memory_len {
        return Err(FormatError::Damaged {
            what: "the file ends inside the memory section",
        }
        .into());
    }
    Ok((file, header, metadata))
}

/// Appends `path: saved in the file, current here` for every leaf where `saved` and `current`
/// differ (object members by name; anything else as a whole).
fn describe_differences(
    path: &str,
    saved: &serde_json::Value,
    current: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (saved, current) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                describe_differences(
                    &at,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {} in the file, {} here", short(a), short(b))),
        _ => {}
    }
}

fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests;
